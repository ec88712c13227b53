"""Misuse a hostile new user tries: damaged JSON-lines files, two launches on one workdir,
signals at awkward moments, and the stray Orbax messages after a damaged checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from experiments import launch
from lottery_kd.study import checkpoints, jsonlines, lottery, results, workdir_lock
from lottery_kd.analysis import report, status
from lottery_kd.training.errors import TrainingInterrupted
from lottery_kd.training.trainer import Trainer
from tests.conftest import REPO, make_tiny_config
from tests.test_reliability import StopAfter


def _tiny():
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt,kd"
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    rows = lottery.run(_tiny(), workdir, log=lambda *_: None)
    return workdir, rows


# ---- JSON-lines files -----------------------------------------------------------------------

def test_an_unreadable_line_anywhere_skips_only_that_line(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [{"level": 0, "variant": "dense", "sparsity": 0.0, "test_accuracy": 0.5},
            {"level": 1, "variant": "lt", "sparsity": 0.2, "test_accuracy": 0.4},
            {"level": 1, "variant": "kd", "sparsity": 0.2, "test_accuracy": 0.45}]
    path.write_text(json.dumps(rows[0]) + "\ngarbage{\n" + json.dumps(rows[1]) + "\n"
                    + json.dumps({"level": "x"}) + "\n" + json.dumps(rows[2]) + "\n"
                    + '{"level": 2, "vari')  # a torn last line
    valid, damaged = results.scan_rows(path)
    assert valid == rows
    assert [d.line for d in damaged] == [2, 4, 6]
    assert "results.jsonl: skipped 3 unreadable line(s) (line 2, 4, 6" in \
        jsonlines.describe(damaged)
    messages = []
    assert jsonlines.set_aside(path, results.ROW_FIELDS, messages.append) == rows
    assert results.scan_rows(path) == (rows, [])  # rewritten with the valid rows only
    side = (tmp_path / "results.jsonl.damaged").read_text()
    assert "garbage{" in side and '{"level": "x"}' in side and '{"level": 2, "vari' in side
    assert "moved them to" in messages[0] and "kept all 3 valid record(s)" in messages[0]
    # a row appended after a damaged line keeps every earlier row and sets the line aside
    path.write_text(json.dumps(rows[0]) + "\nbroken\n" + json.dumps(rows[1]) + "\n")
    results.append_row(path, rows[2])
    assert results.read_rows(path) == rows
    # a run trained again replaces its row, and the earlier one is kept beside, not lost
    redone = {**rows[1], "test_accuracy": 0.5}
    results.append_row(path, redone)
    assert results.read_rows(path) == [rows[0], rows[2], redone]
    replaced = (tmp_path / "results.jsonl.replaced").read_text().splitlines()
    assert [json.loads(line) for line in replaced] == [rows[1]]


def test_a_garbage_line_in_a_finished_study_retrains_nothing_and_keeps_every_row(
        finished, tmp_path, monkeypatch, capsys):
    source, rows = finished
    workdir = tmp_path / "study"
    subprocess.run(["cp", "-r", str(source), str(workdir)], check=True)
    lines = (workdir / "results.jsonl").read_text().splitlines()
    lines.insert(1, "not a row at all")
    (workdir / "results.jsonl").write_text("\n".join(lines) + "\n")
    text = status.describe(status.study_status(workdir))  # readers say they skipped it
    assert "warning:" in text and "results.jsonl: skipped 1 unreadable line(s) (line 2" in text
    assert report.load_run(workdir)["notes"][0].startswith(f"{workdir}/results.jsonl: skipped")
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = lottery.run(_tiny(), workdir, log=print)
    assert again == rows
    assert "not a row at all" in (workdir / "results.jsonl.damaged").read_text()
    assert "moved them to" in capsys.readouterr().out


# ---- one study per workdir ------------------------------------------------------------------

def test_the_lock_refuses_a_second_holder_and_readers_see_who_holds_it(tmp_path):
    assert workdir_lock.holder(tmp_path) is None
    with workdir_lock.WorkdirLock(tmp_path):
        info = workdir_lock.holder(tmp_path)
        assert info["pid"] == os.getpid()
        assert workdir_lock.running_note(tmp_path).startswith(f"still running (pid {os.getpid()}")
        with pytest.raises(workdir_lock.WorkdirBusy) as error:
            workdir_lock.WorkdirLock(tmp_path).acquire()
        assert f"another process (pid {os.getpid()} on " in str(error.value)
        assert str(tmp_path) in str(error.value)
    assert workdir_lock.holder(tmp_path) is None  # released


def test_a_lock_won_on_a_file_unlinked_meanwhile_is_taken_again_on_the_new_one(tmp_path,
                                                                           monkeypatch):
    """A launch refused before it wrote a study unlinks its lock file as it lets go; one that
    was waiting wins the flock on the unlinked file, which locks nothing: it must open the path
    again, so that a third launch is refused instead of running beside it."""
    lock_path = tmp_path / "study.lock"
    real_flock, unlinked = workdir_lock.fcntl.flock, []

    def flock_after_an_unlink(fd, operation):
        if operation & workdir_lock.fcntl.LOCK_EX and not unlinked:
            lock_path.unlink()  # the first holder's cleanup, between our open and our flock
            unlinked.append(True)
        return real_flock(fd, operation)
    monkeypatch.setattr(workdir_lock.fcntl, "flock", flock_after_an_unlink)
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    monkeypatch.setattr(workdir_lock.fcntl, "flock", real_flock)
    try:
        assert unlinked and lock_path.is_file()
        assert workdir_lock.holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(workdir_lock.WorkdirBusy):
            workdir_lock.WorkdirLock(tmp_path).acquire()
    finally:
        lock.release()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    code = ("import sys, time; from lottery_kd.study.workdir_lock import WorkdirLock; "
            f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert workdir_lock.holder(tmp_path)["pid"] == holder.pid
        with pytest.raises(workdir_lock.WorkdirBusy):
            workdir_lock.WorkdirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert workdir_lock.holder(tmp_path) is None
    workdir_lock.WorkdirLock(tmp_path).acquire().release()


def test_a_running_study_is_marked_in_the_report_and_in_status(finished, tmp_path):
    source, _ = finished
    half = tmp_path / "half"
    subprocess.run(["cp", "-r", str(source), str(half)], check=True)
    lines = (half / "results.jsonl").read_text().splitlines()
    (half / "results.jsonl").write_text(lines[0] + "\n")  # only the dense row so far
    with workdir_lock.WorkdirLock(half):
        notes = report.load_run(half)["notes"]
        assert notes == [f"{half} is unfinished: 1 of 3 planned runs have a row; still running "
                         f"(pid {os.getpid()}" + notes[0].split(f"(pid {os.getpid()}")[1]]
        summary = report.write_report([half], tmp_path / "report", overlap=False)
        assert summary["notes"] == notes
        assert "**Note:** " + notes[0] in (tmp_path / "report" / "report.md").read_text()
        assert ", still running (pid" in status.describe(status.study_status(half))
    assert "not running: rerun the study's command" in status.describe(status.study_status(half))


def test_a_second_run_on_a_locked_workdir_exits_2_before_any_compute(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(lottery.LotteryRun, "__init__",
                        lambda *a, **k: pytest.fail("built the study despite the lock"))
    with workdir_lock.WorkdirLock(tmp_path):
        assert launch.run_study(_tiny(), str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: another process (pid {os.getpid()} on ")
    assert "Traceback" not in err


def test_a_workdir_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert launch.run_study(_tiny(), str(tmp_path / "file")) == 2
    assert f"--workdir='{tmp_path / 'file'}' is a file, not a folder" in capsys.readouterr().err


def test_an_empty_workdir_is_refused_instead_of_running_in_the_current_folder(
        tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert launch.run_study(_tiny(), "") == 2
    assert "--workdir is empty: give the study its own folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_run_refused_at_its_start_leaves_no_workdir_behind(tmp_path, capsys):
    """A data.dir that holds no data and a rewind point past the run are refused when the
    study starts, after the lock is taken: the lock file and the folder it made go too, so a
    later carry restore or run into that path does not find 'another study' there."""
    config = _tiny()
    config.lottery.variants, config.lottery.rewind = "lt,weight_rewind", "999ep"
    assert launch.run_study(config, str(tmp_path / "new")) == 2
    assert "lottery.rewind='999ep'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert launch.run_study(config, str(tmp_path / "kept")) == 2
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]

def test_a_config_json_that_cannot_be_read_is_named(finished, tmp_path, capsys):
    source, _ = finished
    workdir = tmp_path / "study"
    subprocess.run(["cp", "-r", str(source), str(workdir)], check=True)
    (workdir / "config.json").write_text('{"seed": 0, "model": {')
    assert launch.run_study(_tiny(), str(workdir)) == 2
    err = capsys.readouterr().err
    assert f"{workdir / 'config.json'} cannot be read" in err and "Traceback" not in err


# ---- signals ----------------------------------------------------------------------------------

def test_a_stop_between_two_runs_starts_no_new_run(tmp_path):
    steps = 38  # the dense run of the tiny study; its last step polls once more
    study = lottery.LotteryRun(_tiny(), tmp_path, log=lambda *_: None,
                               stop_requested=StopAfter(steps + 1))
    with pytest.raises(TrainingInterrupted) as stopped:
        study.run()
    assert stopped.value.step is None and "before level 1 lt" in str(stopped.value)
    assert [r["variant"] for r in results.read_rows(tmp_path / "results.jsonl")] == ["dense"]
    assert not (tmp_path / "checkpoints" / "resume" / "level_1_lt").exists()


def test_a_stop_as_the_last_run_finishes_exits_with_the_signals_code(tmp_path, capsys,
                                                                     monkeypatch):
    def finishing_run(config, workdir, *, stop_requested, **_):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the last run saves its row
        return []
    monkeypatch.setattr(lottery, "run", finishing_run)
    assert launch.run_study(_tiny(), str(tmp_path)) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "the study is complete" in err and "Traceback" not in err


def test_a_second_signal_stops_at_once_with_the_first_signals_code(tmp_path, capsys,
                                                                   monkeypatch):
    def twice(config, workdir, *, stop_requested, **_):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # raises KeyboardInterrupt in the handler
        pytest.fail("the second signal did not stop at once")
    monkeypatch.setattr(lottery, "run", twice)
    assert launch.run_study(_tiny(), str(tmp_path)) == 128 + signal.SIGTERM == 143
    err = capsys.readouterr().err
    assert "stopped at once" in err and "Resume with the same command" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_only_a_failed_restores_stray_messages_are_silenced(monkeypatch):
    import logging
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable))
    checkpoints.quiet_failed_restores()
    checkpoints.quiet_failed_restores()  # idempotent: one wrapper

    def unraisable(error, traceback=None, source=None):
        return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                     exc_traceback=traceback, object=source)

    def orbax_frame():  # a traceback whose frame's file is Orbax's
        code = compile("raise ValueError('damaged')", "/x/orbax/checkpoint/read.py", "exec")
        try:
            exec(code)
        except ValueError as error:
            return error, error.__traceback__
    closed = RuntimeError("Event loop is closed")
    other = RuntimeError("something else")
    damaged, traceback = orbax_frame()
    for item in (unraisable(closed), unraisable(other), unraisable(damaged, traceback)):
        sys.unraisablehook(item)
    assert [u.exc_value for u in seen] == [other]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("asyncio").addHandler(handler)
    try:
        log = logging.getLogger("asyncio")
        log.error("Task exception was never retrieved", exc_info=(ValueError, damaged,
                                                                   traceback))
        log.error("a real asyncio problem")
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a real asyncio problem"]
