"""lottery_kd.huge_pages: the entry points restart once with glibc's huge-page malloc tunable."""

import subprocess
import sys

import pytest

from lottery_kd import huge_pages
from tests.conftest import REPO

PRINT_TUNABLES = ("from lottery_kd.huge_pages import reexec_with_huge_pages; "
                  "reexec_with_huge_pages(); import os, sys; "
                  "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")


def test_the_tunable_joins_the_others_and_counts_as_active():
    environ = huge_pages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
    assert environ == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
                       "A": "b"}
    assert huge_pages.active(environ) and not huge_pages.wanted(environ)
    assert not huge_pages.wanted({huge_pages.OPT_OUT: "0"})


@pytest.mark.skipif(not huge_pages.wanted({}), reason="needs Linux, glibc >= 2.35 and THP on")
def test_an_entry_point_restarts_once_with_the_tunable_and_its_arguments():
    done = subprocess.run([sys.executable, "-c", PRINT_TUNABLES, "--flag", "x y"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "glibc.malloc.hugetlb=1 ['--flag', 'x y']"


def test_opting_out_leaves_the_process_alone():
    done = subprocess.run([sys.executable, "-c", PRINT_TUNABLES], cwd=REPO, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               huge_pages.OPT_OUT: "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
