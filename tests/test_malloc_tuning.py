"""lottery_kd.runtime.malloc_tuning: the entry points restart once with glibc's malloc tunables."""

import subprocess
import sys

import pytest

from lottery_kd.runtime import malloc_tuning
from tests.conftest import REPO

PRINT_TUNABLES = ("from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning; "
                  "reexec_with_malloc_tuning(); import os, sys; "
                  "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")


def _run(code: str, *args: str, **environ: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **environ})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_tunables_join_the_users_and_never_override_them():
    environ = malloc_tuning.with_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:x.y=1",
                                           "A": "b"})
    assert environ == {"A": "b", "GLIBC_TUNABLES": (
        "glibc.malloc.arena_max=2:x.y=1:glibc.malloc.mmap_max=0:"
        "glibc.malloc.trim_threshold=4294967295:glibc.malloc.hugetlb=1")}
    assert malloc_tuning.active(environ) == (
        "glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:"
        "glibc.malloc.hugetlb=1")
    assert not malloc_tuning.wanted(environ)
    assert not malloc_tuning.wanted({malloc_tuning.OPT_OUT: "0"})
    assert malloc_tuning.active({}) == ""


@pytest.mark.skipif(not malloc_tuning.tunables(), reason="needs Linux with glibc >= 2.26")
def test_an_entry_point_restarts_once_with_the_tunables_and_its_arguments():
    assert _run(PRINT_TUNABLES, "--flag", "x y") == (
        ":".join(malloc_tuning.tunables()) + " ['--flag', 'x y']")


@pytest.mark.skipif(not malloc_tuning.tunables(), reason="needs Linux with glibc >= 2.26")
def test_the_tuned_malloc_keeps_freed_blocks_mapped():
    """The point of the tunables: a large block freed and allocated again costs no page faults
    (glibc's defaults unmap it and fault it in afresh: ~64 MB / 4 KB = 16k faults)."""
    code = ("from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning; "
            "reexec_with_malloc_tuning(); import ctypes, resource; "
            "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "libc.free.argtypes = [ctypes.c_void_p]; size = 64 << 20\n"
            "def touch():\n"
            "    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)\n"
            "touch(); before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(3): touch()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    assert int(_run(code)) < 100
    assert int(_run(code, **{malloc_tuning.OPT_OUT: "0"})) > 3 * 10_000


def test_benchmark_children_get_each_malloc_setting_and_keep_other_tunables(monkeypatch):
    from benchmarks.common import malloc_environment, malloc_settings
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4:glibc.cpu.x86_ibt=on")
    monkeypatch.setattr(malloc_tuning, "tunables",
                        lambda: malloc_tuning.KEEP_MAPPED + (malloc_tuning.HUGE_PAGES,))
    tuned = malloc_environment("tuned")
    assert tuned["GLIBC_TUNABLES"] == ":".join(("glibc.cpu.x86_ibt=on",) + malloc_tuning.KEEP_MAPPED
                                               + (malloc_tuning.HUGE_PAGES,))
    assert malloc_environment("huge_pages")["GLIBC_TUNABLES"] == (
        "glibc.cpu.x86_ibt=on:" + malloc_tuning.HUGE_PAGES)
    assert malloc_environment("glibc")["GLIBC_TUNABLES"] == "glibc.cpu.x86_ibt=on"
    assert tuned[malloc_tuning.OPT_OUT] == "0"  # the child must not restart with other tunables
    assert malloc_settings("tuned,glibc") == ["tuned", "glibc"]
    with pytest.raises(SystemExit, match="--mallocs: \\['jemalloc'\\] not allowed; choose "
                                         "from tuned, huge_pages, glibc"):
        malloc_settings("tuned,jemalloc")


def test_opting_out_leaves_the_process_alone():
    assert _run(PRINT_TUNABLES, **{malloc_tuning.OPT_OUT: "0"}) == "[]"


def test_accelerators_are_told_from_jax_platforms_or_a_device_node_with_its_plugin(tmp_path):
    present = malloc_tuning.accelerator_present
    assert present({"JAX_PLATFORMS": "cuda,cpu"}, tmp_path, set())
    assert not present({"JAX_PLATFORMS": "cpu"}, tmp_path, {"jax_cuda12_plugin"})
    assert not present({}, tmp_path, {"jax_cuda12_plugin"})  # no device node: the CPU
    (tmp_path / "nvidia0").touch()
    assert not present({}, tmp_path, {"jax", "numpy"})  # a GPU, but a CPU-only JAX
    assert present({}, tmp_path, {"jax", "jax_cuda13_plugin"})
    assert present({}, tmp_path, {"jax_plugins"})
    assert not present({"JAX_PLATFORMS": " cpu "}, tmp_path, {"jax_plugins"})
    (tmp_path / "nvidia0").unlink()
    (tmp_path / "accel0").touch()
    assert present({}, tmp_path, {"libtpu"}) and not present({}, tmp_path, {"jax_plugins"})


def test_no_restart_where_jax_computes_on_an_accelerator():
    """The tunables slow a GPU host's compiles 3-4x (module docstring): none there."""
    assert not malloc_tuning.wanted({"JAX_PLATFORMS": "cuda"})
    assert _run(PRINT_TUNABLES, JAX_PLATFORMS="cuda") == "[]"
