"""The experiment modules as a user runs them: `python -m experiments.NAME ...`."""

import json
import subprocess
import sys

from tests.conftest import REPO


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_quickstart_command_writes_a_study_and_resumes(tmp_path):
    args = ["experiments.quickstart", f"--workdir={tmp_path}", "--config.train.epochs=2",
            "--config.prune.levels=1", "--config.prune.first_level=1",
            "--config.lottery.variants=lt,kd", "--config.log.progress=lines"]
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "lt"), (1, "kd")]
    assert "[level 1 kd] epoch 2" in first.stderr + first.stdout
    assert list((tmp_path / "tensorboard" / "level_1_kd").glob("events.out.tfevents.*"))
    again = _run(*args)
    assert again.returncode == 0
    assert "[level 1 kd] epoch" not in again.stderr + again.stdout  # nothing retrained
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 3


def test_bad_settings_exit_with_one_line_per_problem(tmp_path):
    out = _run("experiments.quickstart", f"--workdir={tmp_path}", "--config.model.name=resnet21",
               "--config.prune.fraction=1.5", "--config.lottery.variants=lt,bogus")
    assert out.returncode == 2
    assert "model.name='resnet21' is invalid" in out.stderr
    assert "prune.fraction=1.5 is invalid" in out.stderr
    assert "unknown bogus; allowed: lt, reinit, weight_rewind" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "config.json").exists()


def test_a_conv_impl_this_machine_cannot_run_is_refused_before_the_workdir_is_written(tmp_path):
    """model.conv_impl=native on two devices: exit 2 naming the setting, no config.json (which
    would pin the workdir to the setting that cannot run). A CIFAR ResNet on the digits: the
    only models the native kernels serve."""
    import os
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-m", "experiments.quickstart", f"--workdir={tmp_path}",
                          "--config.model.name=resnet20", "--config.model.conv_impl=native"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.conv_impl='native' runs on one device, but there are 2" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "config.json").exists()


def test_a_url_workdir_is_refused_naming_what_works(tmp_path):
    out = _run("experiments.quickstart", "--workdir=gs://bucket/run")
    assert out.returncode == 2
    assert "--workdir='gs://bucket/run': a URL" in out.stderr and "Traceback" not in out.stderr
    assert not (REPO / "gs:").exists()


def test_every_entry_points_help_prints_its_docstring_unchanged():
    """absl's --help formats the __main__ docstring with `%`: a "99.2 % sparsity" there printed
    the program's path in place of "% s". Every module users run must survive that formatting."""
    import ast
    from pathlib import Path
    entry_points = sorted((REPO / "experiments").glob("*.py"))  # the modules absl runs
    assert len(entry_points) > 5
    for path in entry_points:
        doc = ast.get_docstring(ast.parse(Path(path).read_text()), clean=False) or ""
        count = doc.count("%") - 2 * doc.count("%%")
        try:
            shown = doc % (("PROGRAM",) * count)
        except (OverflowError, TypeError, ValueError):
            shown = doc  # absl prints it as it is
        assert "PROGRAM" not in shown, f"{path}: `%` in the docstring turns into the program path"


def test_an_os_error_blames_the_workdir_only_when_it_is_the_workdirs(tmp_path):
    import errno
    import os
    from experiments.launch import _os_error_message
    workdir = tmp_path / "study"
    inside = OSError(errno.EACCES, os.strerror(errno.EACCES), str(workdir / "results.jsonl"))
    assert _os_error_message(inside, str(workdir)).startswith(f"cannot write to workdir {workdir}")
    elsewhere = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/xla_cache/entry")
    message = _os_error_message(elsewhere, str(workdir))
    assert "workdir" not in message and "/tmp/xla_cache/entry" in message
    unnamed = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert "cannot write to workdir" in _os_error_message(unnamed, str(workdir))
