"""Damage every file a study reads, rerun the same study, and get either a clear error naming the
file or the rows of an undamaged run, never a lost row; and one study per workdir at a time.

Two studies are built once per module (a tiny digits study: 2 epochs, iterative levels 1-2,
variants lt and kd_rewind, a resume checkpoint every 4 steps): a finished one, and one stopped
inside level 1 kd_rewind (dense and level 1 lt done, resume checkpoints at steps 28 and 30). Each
case copies one, damages one file (truncated to half its bytes, zeroed, random bytes, a garbage
line inserted in a JSON-lines file, or deleted), reruns it with experiments.launch.run_study in
process and checks the outcome the table below expects for that case.

By default a representative subset runs (one case per kind of file); the whole matrix is slow:
`python -m pytest -q -m slow tests/test_damage.py`. The double-launch test (by default) and the
SIGKILL test (slow) run the real command in subprocesses, next to one run of it alone.
"""

import dataclasses
import gc
import json
import logging
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from experiments import launch
from lottery_kd.study import jsonlines, lottery, results
from lottery_kd.training.errors import TrainingInterrupted
from tests.conftest import REPO, make_tiny_config
from tests.test_reliability import StopAfter

SNAPSHOTS = ("init", "rewind", "level_0_dense", "level_1_lt")
RESUME_RUN = "level_1_kd_rewind"  # the run the half-finished study was stopped in
# Polls of stop_requested before the stop: dense 38 steps, 1 between runs, level 1 lt 38
# steps, 1 between runs, then 11 of level 1 kd_rewind's steps (it starts at the rewind step 19).
STOP_AFTER_POLLS = 38 + 1 + 38 + 1 + 11
STOPPED_AT_STEP = 30
JSON_LINES_FIELDS = {"results.jsonl": results.ROW_FIELDS,
                     "epoch_times.jsonl": results.EPOCH_TIME_FIELDS, "environment.jsonl": {}}
KINDS = ("truncated", "zeroed", "garbage", "missing")


def _config():
    config = make_tiny_config()
    config.lottery.variants = "lt,kd_rewind"  # kd_rewind needs the rewind snapshot and teacher
    config.checkpoint.every_steps = 4
    config.log.tensorboard = False
    return config


def _keyed(rows: list[dict]) -> dict:
    """{(level, variant): row without its timing}; two rows for one key are an error. (A run
    trained again appends its row at the end: the order of the lines is not compared.)"""
    keyed = {(r["level"], r["variant"]): {k: v for k, v in r.items() if k != "seconds"}
             for r in rows}
    assert len(keyed) == len(rows), f"two rows for one run: {[r['variant'] for r in rows]}"
    return keyed


def _rows(workdir: Path) -> dict:
    return _keyed(results.read_rows(workdir / "results.jsonl"))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """{"finished": workdir, "half": workdir, "rows": the finished study's keyed rows}."""
    base = tmp_path_factory.mktemp("damage_studies")
    finished, half = base / "finished", base / "half"
    rows = lottery.run(_config(), finished, log=lambda *_: None)
    with pytest.raises(TrainingInterrupted) as stopped:
        lottery.run(_config(), half, log=lambda *_: None,
                    stop_requested=StopAfter(STOP_AFTER_POLLS))
    assert "level 1, variant kd_rewind" in str(stopped.value)
    assert stopped.value.step == STOPPED_AT_STEP
    assert sorted(_rows(half)) == [(0, "dense"), (1, "lt")]
    assert _resume_steps(half) == [28, STOPPED_AT_STEP]
    assert sorted(p.name for p in (half / "checkpoints" / "snapshots").iterdir()) == \
        sorted(SNAPSHOTS)
    return {"finished": finished, "half": half, "rows": _keyed(rows)}


def _resume_dir(workdir: Path) -> Path:
    return workdir / "checkpoints" / "resume" / RESUME_RUN


def _resume_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in _resume_dir(workdir).iterdir() if p.name.isdigit())


# --------------------------------------------------------------------------------------------
# the cases


@dataclasses.dataclass(frozen=True)
class Case:
    study: str  # "finished" or "half"
    target: str  # a file name, "snapshot:NAME:PART" or "resume:newest|all:PART"
    kind: str  # truncated, zeroed, garbage, garbage_line, missing
    exit_code: int  # 0: the rows of the undamaged study; 2 or 4: an error naming the file

    @property
    def id(self) -> str:
        return f"{self.study}-{self.target.replace(':', '-')}-{self.kind}"


def _expected_exit(study: str, target: str, kind: str) -> int:
    """What a rerun must do after `kind` damage to `target` in the `study`."""
    if target == "config.json":
        # The study's identity: unreadable -> refused, naming it (SavedConfigError, exit 2).
        # Missing: the same command writes it again (its settings are the command's) and
        # finds everything done as before. (Another command: see the test after this one.)
        return 0 if kind == "missing" else 2
    if target in ("plan.json", *JSON_LINES_FIELDS):
        # plan.json is rewritten by every start and read by analysis.status only; the JSON-lines
        # files' unreadable lines go to FILE.damaged and a lost row's run is trained again.
        return 0
    if target.startswith("resume:"):
        # A damaged newest resume checkpoint is set aside and the one before used; with none
        # left the run starts again from its start. Training is deterministic: same rows.
        return 0
    _, name, part = target.split(":")
    if part == "checkpoint_metadata":
        # Orbax's own step metadata (times, item names): a restore does not need it, and the
        # arrays and their fingerprint (meta/metadata) are intact: the checkpoint is sound.
        return 0
    if study == "finished":
        # Every run has its row and snapshot: no snapshot is read again. A missing snapshot
        # (the folder) means its run is trained again (init: not needed by anything left).
        return 0
    if part == "folder":
        # rewind or level_0_dense missing: the dense run is trained again; level_1_lt missing:
        # it is trained again; init missing: made again from the seed (it is a pure function
        # of it), bit for bit, so level 2 lt starts where it would have.
        return 0
    # The half-finished study still needs every snapshot: init (level 2 lt starts from it),
    # rewind (kd_rewind starts from it), level_0_dense (level 1 masks, the KD teacher) and
    # level_1_lt (level 2 lt's masks). Damage to any part of one is refused, naming it.
    return 4


def _targets(study: str) -> list[tuple[str, tuple[str, ...]]]:
    targets = [("config.json", KINDS), ("plan.json", KINDS)]
    targets += [(name, KINDS + ("garbage_line",)) for name in JSON_LINES_FIELDS]
    for name in SNAPSHOTS:
        for part in ("data", "metadata", "checkpoint_metadata"):
            targets.append((f"snapshot:{name}:{part}", ("truncated", "zeroed", "garbage")))
        targets.append((f"snapshot:{name}:folder", ("missing",)))
    if study == "half":
        for part in ("data", "metadata", "checkpoint_metadata"):
            targets.append((f"resume:newest:{part}", ("truncated", "zeroed", "garbage")))
        targets += [("resume:newest:folder", ("missing",)),
                    ("resume:all:data", ("truncated", "zeroed", "garbage")),
                    ("resume:all:folder", ("missing",))]
    return targets


CASES = [Case(study, target, kind, _expected_exit(study, target, kind))
         for study in ("finished", "half") for target, kinds in _targets(study) for kind in kinds]
# Run by default: one case per kind of file (the whole matrix is slow).
DEFAULT = {"finished-results.jsonl-garbage_line", "finished-config.json-truncated",
           "finished-plan.json-zeroed", "finished-environment.jsonl-truncated",
           "finished-epoch_times.jsonl-garbage", "half-snapshot-level_0_dense-data-garbage",
           "half-resume-newest-data-truncated"}
assert DEFAULT <= {case.id for case in CASES}


# --------------------------------------------------------------------------------------------
# damage


def _checkpoint_part(checkpoint: Path, part: str) -> Path:
    if part == "data":  # the largest array file of the checkpoint
        files = [f for f in (checkpoint / "state").rglob("*") if f.is_file()]
        return max(files, key=lambda f: f.stat().st_size)
    if part == "metadata":
        return checkpoint / "meta" / "metadata"
    if part == "checkpoint_metadata":
        return checkpoint / "_CHECKPOINT_METADATA"
    assert part == "folder"
    return checkpoint


def _paths(workdir: Path, target: str) -> list[Path]:
    """The files (or folders) that `target` names in `workdir`."""
    if target.startswith("snapshot:"):
        _, name, part = target.split(":")
        return [_checkpoint_part(workdir / "checkpoints" / "snapshots" / name, part)]
    if target.startswith("resume:"):
        _, which, part = target.split(":")
        if which == "all" and part == "folder":
            return [_resume_dir(workdir)]
        steps = _resume_steps(workdir)
        steps = steps[-1:] if which == "newest" else steps
        return [_checkpoint_part(_resume_dir(workdir) / str(step), part) for step in steps]
    return [workdir / target]


def _garbage_line(rng: random.Random) -> bytes:
    return ('{"garbage": ' + "".join(rng.choice(string.ascii_letters + string.punctuation)
                                      for _ in range(60)) + "\n").encode()


def _damage(path: Path, kind: str, rng: random.Random) -> None:
    assert path.exists(), path
    if kind == "missing":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    data = path.read_bytes()
    assert data, f"{path} is empty: nothing to damage"
    if kind == "truncated":
        damaged = data[: len(data) // 2]
    elif kind == "zeroed":
        damaged = bytes(len(data))
    elif kind == "garbage":
        damaged = rng.randbytes(len(data))
    else:
        assert kind == "garbage_line"
        lines = data.splitlines(keepends=True)
        assert lines, f"{path} has no line"  # environment.jsonl: one line per start
        damaged = b"".join(lines[: len(lines) // 2] + [_garbage_line(rng)]
                           + lines[len(lines) // 2:])
    path.write_bytes(damaged)


# --------------------------------------------------------------------------------------------
# the test


def _check_no_lost_row(after: dict, before: dict, reference: dict) -> None:
    lost = sorted(set(before) - set(after))
    assert not lost, f"rows lost: {lost}"
    for key, row in after.items():
        assert row == reference[key], f"row {key} differs from the undamaged study's"


class _LoggedTracebacks(logging.Handler):
    """Log records with a traceback that mention `workdir` (asyncio's "Task exception was never
    retrieved" for a task a failed restore left behind, say): the command prints them."""

    def __init__(self, workdir: Path):
        super().__init__(logging.WARNING)
        self.workdir, self.found = str(workdir), []

    def emit(self, record: logging.LogRecord) -> None:
        text = logging.Formatter().format(record)
        if "Traceback" in text and self.workdir in text:
            self.found.append(f"logged: {' '.join(text.split())[:200]}")


def _run_study(workdir: Path) -> tuple[int, list[str]]:
    """run_study's exit code, and the tracebacks about `workdir` it left for the command to
    print on stderr: exceptions that reached sys.unraisablehook ("Exception ignored in ...
    Traceback ...", e.g. from a coroutine a failed restore abandoned) and logged ones. Those
    objects report when the garbage collector finalizes them, which in the command may be
    during the rest of the study or at exit; here a collection at the end reports the rest."""
    stray = []

    def record(unraisable) -> None:
        text = f"{unraisable.exc_type.__name__}: {unraisable.exc_value}"
        if str(workdir) in text:
            stray.append(f"in {unraisable.object!r}: {' '.join(text.split())[:200]}")

    gc.collect()  # what earlier cases left behind reports before this one
    logged = _LoggedTracebacks(workdir)
    logging.getLogger().addHandler(logged)
    previous, sys.unraisablehook = sys.unraisablehook, record
    try:
        code = launch.run_study(_config(), str(workdir))
        for _ in range(3):  # background reads of a failed restore may hold on a moment longer
            gc.collect()
            time.sleep(0.05)
    finally:
        sys.unraisablehook = previous
        logging.getLogger().removeHandler(logged)
    return code, stray + logged.found


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=() if case.id in DEFAULT else pytest.mark.slow)
    for case in CASES])
def test_a_damaged_file_gives_a_clear_error_or_the_undamaged_rows(studies, case, tmp_path,
                                                                  capsys):
    workdir = tmp_path / "study"
    shutil.copytree(studies[case.study], workdir)
    reference = studies["rows"]
    before = _rows(workdir)  # the valid rows before the damage
    paths = _paths(workdir, case.target)
    rng = random.Random(zlib.crc32(case.id.encode()))
    for path in paths:
        _damage(path, case.kind, rng)
    damaged_lines = []
    if case.target in JSON_LINES_FIELDS:
        damaged_lines = jsonlines.scan(workdir / case.target, JSON_LINES_FIELDS[case.target])[1]
        assert (case.kind == "missing") == (not damaged_lines) or case.kind == "truncated"
    capsys.readouterr()

    code, stray = _run_study(workdir)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert not stray, f"{len(stray)} stray traceback(s) on stderr:\n" + "\n".join(stray[:3])
    after = _rows(workdir)
    _check_no_lost_row(after, before, reference)
    if case.exit_code:
        assert code == case.exit_code, (code, err[-3000:])
        if case.target == "config.json":
            named = str(workdir / "config.json")
        else:
            named = (f"snapshot {case.target.split(':')[1]!r} in "
                     f"{workdir / 'checkpoints' / 'snapshots'}")
        assert named in err, err[-3000:]
        return

    assert code == 0, (code, err[-3000:])
    assert after == reference, "the rerun's rows differ from the undamaged study's"
    if damaged_lines:  # every unreadable line was kept aside, as it was
        side = workdir / (case.target + ".damaged")
        kept = side.read_bytes().decode("utf-8", errors="replace").splitlines()
        assert all(line.text in kept for line in damaged_lines), side
        assert not jsonlines.scan(workdir / case.target, JSON_LINES_FIELDS[case.target])[1]
    if case.target == "plan.json":  # rewritten by the start
        assert json.loads((workdir / "plan.json").read_text()) == \
            json.loads((studies[case.study] / "plan.json").read_text())
    if case.target == "config.json":  # written again, as it was
        assert json.loads((workdir / "config.json").read_text()) == \
            json.loads((studies[case.study] / "config.json").read_text())
    if case.target.startswith("resume:"):
        aside = _resume_dir(workdir).with_name(RESUME_RUN + ".damaged")
        if case.kind == "missing" or case.target.endswith("checkpoint_metadata"):
            assert not aside.exists()  # nothing unusable: none set aside
        else:  # the damaged ones were set aside, and an earlier one (or none) used
            steps = [STOPPED_AT_STEP] if case.target.startswith("resume:newest") else [28, 30]
            assert sorted(int(p.name.split(".")[0]) for p in aside.iterdir()) == steps, \
                list(aside.iterdir())
            assert f"resume checkpoint at step {STOPPED_AT_STEP} in" in out
        assert not _resume_dir(workdir).exists()  # the finished run's checkpoints are gone

def test_a_missing_config_json_does_not_pass_the_rows_off_as_another_configs(studies, tmp_path,
                                                                           capsys):
    """The study's identity is gone, and the rerun has another seed: its rows and snapshots were
    made with the old settings (the snapshots' fingerprints say so). Taking the new settings as
    the study's would label every row with a config that never made it: refused, naming
    config.json (or the snapshot that comes from another config)."""
    workdir = tmp_path / "study"
    shutil.copytree(studies["finished"], workdir)
    (workdir / "config.json").unlink()
    config = _config()
    config.seed += 1
    capsys.readouterr()
    code = launch.run_study(config, str(workdir))
    err = capsys.readouterr().err
    assert code in (2, 4), (code, err[-3000:])
    assert str(workdir / "config.json") in err or "another config" in err, err[-3000:]
    assert "Traceback" not in err
    assert _rows(workdir) == studies["rows"]

# --------------------------------------------------------------------------------------------
# one study per workdir: the real command, twice


FLAGS = ["--config.train.epochs=3", "--config.prune.levels=7", "--config.prune.first_level=7",
         "--config.lottery.variants=lt,kd", "--config.log.progress=lines"]


def _command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.quickstart", f"--workdir={workdir}", *FLAGS]


def _start(workdir: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as handle:  # a file, not a pipe: nothing blocks on a full pipe
        return subprocess.Popen(_command(workdir), cwd=REPO, stdout=handle,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_lock(workdir: Path, process: subprocess.Popen, log: Path,
                   timeout: float = 120) -> dict:
    """The lock file's contents once it names `process` (it holds the lock then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            info = json.loads((workdir / "study.lock").read_text())
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == process.pid:
            return info
        time.sleep(0.05)
    raise AssertionError(f"no lock by pid {process.pid} after {timeout} s: "
                         f"{log.read_text()[-3000:]}")


def _finish(process: subprocess.Popen, log: Path) -> str:
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return log.read_text()


@pytest.fixture(scope="module")
def command_rows(tmp_path_factory):
    """The rows of the command run alone (no second launch, no kill)."""
    workdir = tmp_path_factory.mktemp("alone") / "study"
    run = subprocess.run(_command(workdir), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return _rows(workdir)


def test_a_second_launch_is_refused_at_once_and_the_first_finishes_undisturbed(
        tmp_path, command_rows):
    workdir = tmp_path / "study"
    first_log = tmp_path / "first.log"
    first = _start(workdir, first_log)
    try:
        info = _wait_for_lock(workdir, first, first_log)
        began = time.monotonic()
        second = subprocess.run(_command(workdir), cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        elapsed = time.monotonic() - began
        assert first.poll() is None, "the first finished before the second was refused"
    finally:
        output = _finish(first, first_log)
    message = second.stdout + second.stderr
    assert second.returncode == 2, message[-3000:]
    # "At once" means before any training: no run of the second printed a line, and it was refused
    # while the first still ran (above). The wall-clock bound is loose on purpose: on two cores
    # shared with a training job and the other test worker, its imports alone took 23 s.
    assert "[level" not in message and "[study]" not in message, message[-3000:]
    assert elapsed < 60, f"refused only after {elapsed:.1f} s"
    assert f"another process (pid {first.pid} on {info['host']}" in message, message
    assert f"running this study in {workdir}" in message, message
    assert "Traceback" not in message
    assert first.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert _rows(workdir) == command_rows


@pytest.mark.slow
def test_a_launch_after_the_holder_was_killed_takes_the_lock_over(tmp_path, command_rows):
    workdir = tmp_path / "study"
    killed_log, again_log = tmp_path / "killed.log", tmp_path / "again.log"
    killed = _start(workdir, killed_log)
    try:
        _wait_for_lock(workdir, killed, killed_log)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        _finish(killed, killed_log)
    again = _start(workdir, again_log)
    try:
        _wait_for_lock(workdir, again, again_log)
    finally:
        output = _finish(again, again_log)
    assert again.returncode == 0, output[-3000:]
    assert "another process" not in output and "Traceback" not in output
    assert _rows(workdir) == command_rows
