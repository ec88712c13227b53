"""lottery_kd.study.carry: a stopped study copied to another folder (another machine) and resumed
there ends as an uninterrupted one; damaged, partial or mixed copies are refused."""

import json

import pytest

from lottery_kd.study import carry, lottery, results
from lottery_kd.study.workdir_lock import WorkdirLock
from lottery_kd.training.errors import TrainingInterrupted
from tests.conftest import make_tiny_config


def _fake_study(root):
    """A workdir's shape without training: two resume steps, an unfinished Orbax write, a
    damaged folder and the lock beside the files a resume needs."""
    files = {"config.json": "{}", "results.jsonl": '{"level": 0}\n',
             "checkpoints/snapshots/init/state/d/abc": "init weights",
             "checkpoints/resume/level_1_lt/20/state/d/x": "older step",
             "checkpoints/resume/level_1_lt/130/state/d/y": "newest step",
             "checkpoints/resume/level_1_lt/140.orbax-checkpoint-tmp-7/d/z": "half written",
             "checkpoints/snapshots/rewind.damaged/d/q": "set aside", "study.lock": "{}"}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_copy_holds_what_a_resume_needs_and_nothing_else(tmp_path):
    study = _fake_study(tmp_path / "study")
    assert carry.carried_files(study) == [
        "checkpoints/resume/level_1_lt/130/state/d/y", "checkpoints/snapshots/init/state/d/abc",
        "config.json", "results.jsonl"]


def test_the_copy_keeps_the_newest_resume_step_whose_metadata_reads(tmp_path):
    """A newest step torn by a power loss (its metadata unreadable) is not the one carried:
    the newest readable one is, so the copy still resumes."""
    study = _fake_study(tmp_path / "study")
    run = study / "checkpoints" / "resume" / "level_1_lt"
    for step, text in ((20, '{"fingerprint": {"model": "m"}}'), (130, '{"fingerpr')):
        (run / str(step) / "meta").mkdir(parents=True)
        (run / str(step) / "meta" / "metadata").write_text(text)
    carried = carry.carried_files(study)
    assert "checkpoints/resume/level_1_lt/20/state/d/x" in carried
    assert not any("/130/" in name for name in carried)


def test_save_then_restore_gives_the_same_files_and_a_resave_drops_stale_ones(tmp_path):
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    carry.save(study, copy)
    assert carry.restore(copy, tmp_path / "elsewhere") == 4
    for name in carry.carried_files(study):
        assert (tmp_path / "elsewhere" / name).read_bytes() == (study / name).read_bytes()
    assert not list(tmp_path.glob(".elsewhere.restoring-*"))  # the scratch folder was renamed

    newest = study / "checkpoints/resume/level_1_lt/150/state/d/w"  # training went on
    newest.parent.mkdir(parents=True)
    newest.write_text("a later step")
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n')
    manifest = carry.save(study, copy)
    assert sorted(manifest["files"]) == sorted(carry.carried_files(study))
    assert not (copy / "checkpoints/resume/level_1_lt/130").exists()  # no stale step lingers
    assert (copy / "results.jsonl").read_text().count("\n") == 2


def test_save_refuses_a_running_study_and_a_folder_that_is_no_copy(tmp_path):
    study = _fake_study(tmp_path / "study")
    with WorkdirLock(study):
        with pytest.raises(carry.CarryError, match="a study is running .* stop it with SIGTERM"):
            carry.save(study, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(carry.CarryError, match="holds no carry.json"):
        carry.save(study, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"  # nothing was removed
    with pytest.raises(carry.CarryError, match="overlap"):
        carry.save(study, study / "copy")
    with pytest.raises(carry.CarryError, match="no config.json"):
        carry.save(tmp_path / "notes", tmp_path / "copy")


def test_save_refuses_to_replace_another_studys_copy_or_roll_this_ones_back(tmp_path):
    """Saving over an earlier copy replaces it: another study's copy, or a copy further along
    than the workdir (an older workdir saved over a newer copy), would be lost."""
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    carry.save(study, copy)
    other = _fake_study(tmp_path / "other")
    (other / "config.json").write_text('{"seed": 1}')
    with pytest.raises(carry.CarryError, match="holds a copy of another study .* saving would "
                                               "replace it"):
        carry.save(other, copy)
    older = _fake_study(tmp_path / "older")
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n')  # the study went on
    carry.save(study, copy)
    with pytest.raises(carry.CarryError, match=r"older \(1 result rows, resume step 130\) is "
                                               r"behind the copy .* roll the copy back"):
        carry.save(older, copy)
    assert (copy / "results.jsonl").read_text().count("\n") == 2  # the copy is as it was
    assert json.loads((copy / "carry.json").read_text())["study"] == str(study)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(carry.CarryError, match="afile is a file, not a folder"):
        carry.save(study, tmp_path / "afile")
    with pytest.raises(carry.CarryError, match="afile is a file, not a folder"):
        carry.restore(copy, tmp_path / "afile")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / ".keep").write_text("")
    with pytest.raises(carry.CarryError, match="kept is not empty and holds no study"):
        carry.restore(copy, tmp_path / "kept")


def test_restore_refuses_a_damaged_or_partial_copy_and_a_workdir_in_use(tmp_path, capsys):
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    carry.save(study, copy)
    assert carry.restore(copy, study) == 0  # the study itself: as far as the copy, left alone
    other = _fake_study(tmp_path / "other")
    (other / "config.json").write_text('{"seed": 1}')
    with pytest.raises(carry.CarryError, match="holds another study"):
        carry.restore(copy, other)
    behind = tmp_path / "behind"
    carry.restore(copy, behind)
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n')  # the study went on
    carry.save(study, copy)
    assert carry.progress(copy) == (2, 130) and carry.progress(behind) == (1, 130)
    with pytest.raises(carry.CarryError, match="is behind the copy .* move .* away"):
        carry.restore(copy, behind)

    (copy / "checkpoints/snapshots/init/state/d/abc").write_text("init weightz")
    assert carry.main(["restore", str(copy), str(tmp_path / "new")]) == 2
    message = capsys.readouterr().err
    assert "differs from what carry.json records" in message and "Traceback" not in message
    assert not (tmp_path / "new").exists()  # nothing half-restored

    (copy / "carry.json").unlink()  # as a save interrupted midway leaves it
    with pytest.raises(carry.CarryError, match="not a whole copy"):
        carry.restore(copy, tmp_path / "new")
    (copy / "carry.json").write_text(json.dumps({"files": {"../outside": {"sha256": "0"}}}))
    with pytest.raises(carry.CarryError, match="outside the copy"):
        carry.restore(copy, tmp_path / "new")


def test_a_stopped_study_carried_to_another_folder_resumes_to_the_uninterrupted_results(tmp_path):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt"
    config.checkpoint.every_steps = 3
    quiet = lambda *_: None  # noqa: E731

    def ticket_steps(workdir, stop_at=None):
        """A stop_requested (one poll per step) counting the steps trained after the dense
        network's row, and stopping at the `stop_at`-th of them."""
        steps = []

        def poll():
            if (workdir / "results.jsonl").exists():
                steps.append(1)
            return len(steps) == stop_at
        return poll, steps
    poll, reference_steps = ticket_steps(tmp_path / "reference")
    reference = lottery.run(config, tmp_path / "reference", log=quiet, stop_requested=poll)
    poll, _ = ticket_steps(tmp_path / "first", stop_at=len(reference_steps) // 2)
    with pytest.raises(TrainingInterrupted):  # stopped inside the lt run
        lottery.run(config, tmp_path / "first", log=quiet, stop_requested=poll)
    assert len(results.read_rows(tmp_path / "first" / "results.jsonl")) == 1

    carry.save(tmp_path / "first", tmp_path / "copy")
    assert (tmp_path / "copy" / "checkpoints" / "resume" / "level_1_lt").is_dir()
    carry.restore(tmp_path / "copy", tmp_path / "second")
    poll, resumed_steps = ticket_steps(tmp_path / "second")
    rows = lottery.run(config, tmp_path / "second", log=quiet, stop_requested=poll)
    assert len(resumed_steps) < len(reference_steps) // 2 + 3  # resumed, not redone
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(reference)


def test_a_copy_saved_onward_restores_and_an_interrupted_save_is_finished_by_a_rerun(
        tmp_path, monkeypatch):
    """A copy (holding carry.json) saved onward leaves its manifest out, so the new copy
    restores; a save interrupted midway over an earlier copy (or into a new folder) is marked,
    and rerunning it finishes the copy, while another study's save into it is refused."""
    study, first = _fake_study(tmp_path / "study"), tmp_path / "first"
    carry.save(study, first)
    onward = tmp_path / "onward"
    assert "carry.json" not in carry.save(first, onward)["files"]
    assert carry.restore(onward, tmp_path / "restored") == len(carry.carried_files(study))
    original = carry.shutil.copyfile
    calls = []

    def interrupted(source, target):
        calls.append(target)
        if len(calls) == 1:  # the first file the save writes
            raise KeyboardInterrupt
        return original(source, target)
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n')
    for dest in (first, tmp_path / "fresh"):
        calls.clear()
        monkeypatch.setattr(carry.shutil, "copyfile", interrupted)
        with pytest.raises(KeyboardInterrupt):
            carry.save(study, dest)
        monkeypatch.setattr(carry.shutil, "copyfile", original)
        assert (dest / "carry.json.saving").is_file() and not (dest / "carry.json").exists()
        with pytest.raises(carry.CarryError, match="has no carry.json"):
            carry.restore(dest, tmp_path / f"from_{dest.name}")
        other = _fake_study(tmp_path / f"other_{dest.name}")
        (other / "config.json").write_text('{"seed": 1}')
        with pytest.raises(carry.CarryError, match="interrupted save of another study"):
            carry.save(other, dest)
        carry.save(study, dest)  # the rerun finishes it
        assert not (dest / "carry.json.saving").exists()
        assert carry.restore(dest, tmp_path / f"whole_{dest.name}") > 0
        assert (tmp_path / f"whole_{dest.name}" / "results.jsonl").read_text().count("\n") == 2


def test_a_study_started_afresh_does_not_replace_an_interrupted_copy_further_along(
        tmp_path, monkeypatch):
    """A save interrupted over a copy with two rows, then the same command's study started
    afresh (one row, same config.json): saving it would roll the copy back, so it is refused."""
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n')
    carry.save(study, copy)
    original = carry.shutil.copyfile

    def interrupted(source, target):
        raise KeyboardInterrupt
    monkeypatch.setattr(carry.shutil, "copyfile", interrupted)
    (study / "results.jsonl").write_text('{"level": 0}\n{"level": 1}\n{"level": 2}\n')
    with pytest.raises(KeyboardInterrupt):
        carry.save(study, copy)
    monkeypatch.setattr(carry.shutil, "copyfile", original)
    assert not (copy / "carry.json").exists()
    (study / "results.jsonl").write_text('{"level": 0}\n')  # started afresh
    with pytest.raises(carry.CarryError, match="behind the copy"):
        carry.save(study, copy)
    assert (copy / "results.jsonl").read_text().count("\n") == 2  # the copy is kept


def test_an_interrupted_restore_leaves_no_scratch_folder(tmp_path, monkeypatch):
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    carry.save(study, copy)
    original = carry.shutil.copyfile

    def interrupted(source, target):
        raise KeyboardInterrupt
    monkeypatch.setattr(carry.shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        carry.restore(copy, tmp_path / "workdir")
    monkeypatch.setattr(carry.shutil, "copyfile", original)
    assert not list(tmp_path.glob(".workdir.restoring-*"))
    assert carry.restore(copy, tmp_path / "workdir") > 0


HOLDER = """
import signal, sys, time
from lottery_kd.study.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
def stop(*_):  # as a study does: a resume checkpoint takes a moment, then it exits
    time.sleep(0.5)
    (__import__("pathlib").Path(sys.argv[1]) / "results.jsonl").write_text('{"stopped": 1}\\n')
    sys.exit(0)
if sys.argv[2] == "obeys":
    signal.signal(signal.SIGTERM, stop)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("holding", flush=True)
time.sleep(120)
"""


def _holder(study, how):
    import subprocess
    import sys

    from tests.conftest import REPO
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(study), how], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_save_stop_stops_the_running_study_then_copies_what_it_saved(tmp_path, capsys):
    """`save --stop`: SIGTERM to the lock's holder, a wait for its exit, then the copy, which
    holds what the study wrote while stopping; a holder that ignores SIGTERM is waited for
    --wait seconds, then named, and nothing is copied."""
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    (study / "study.lock").unlink()
    stubborn = _holder(study, "ignores")
    try:
        assert carry.main(["save", "--stop", "--wait", "1", str(study), str(copy)]) == 2
        err = capsys.readouterr().err
        assert f"pid {stubborn.pid} still runs the study in {study} after 1 s" in err
        assert not copy.exists() and stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()
    obedient = _holder(study, "obeys")
    assert carry.main(["save", "--stop", str(study), str(copy)]) == 0
    assert obedient.wait(timeout=30) == 0
    out = capsys.readouterr().out
    assert f"sent SIGTERM to pid {obedient.pid}" in out and "stopped; rerun its command" in out
    assert (copy / "results.jsonl").read_text() == '{"stopped": 1}\n'
    assert carry.main(["save", "--stop", str(study), str(copy)]) == 0  # nothing runs: a save
    with pytest.raises(SystemExit):
        carry.main(["save", "--stop", "--wait", "0", str(study), str(copy)])
    assert "--wait 0: give a number of seconds above 0" in capsys.readouterr().err


def test_save_stop_leaves_a_study_on_another_host_alone(tmp_path, capsys):
    """A shared filesystem's study run by another host: no signal sent, its host named."""
    study = _fake_study(tmp_path / "study")
    with WorkdirLock(study):
        (study / "study.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
        assert carry.main(["save", "--stop", str(study), str(tmp_path / "copy")]) == 2
    assert "runs as pid 1 on elsewhere, not on this host; stop it there" in \
        capsys.readouterr().err
    assert not (tmp_path / "copy").exists()


def test_run_full_refuses_an_interrupted_copy_it_cannot_finish(tmp_path):
    """docs/results/run_full.sh with no workdir and a copy without carry.json (a save cut off
    at a sitting's end): it stops with a message instead of starting the study afresh."""
    import subprocess
    from tests.conftest import REPO
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "carry.json.saving").write_text("{}")
    done = subprocess.run(["bash", str(REPO / "docs/results/run_full.sh")], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "runs"),
                               "CARRIED": str(copy), "DATA": str(tmp_path / "no_data")})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "holds an interrupted copy (no carry.json)" in done.stderr
    assert not (tmp_path / "runs" / "resnet20_renda_seed0").exists()


def test_a_study_launched_while_a_copy_is_saved_is_refused(tmp_path, monkeypatch):
    """save holds the study's lock while it copies: a launch in the middle is refused (it would
    change files the copy has half taken), and the lock is free again after."""
    from lottery_kd.study import workdir_lock
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    original, refused = carry.shutil.copyfile, []

    def copy_while_a_study_starts(source, target):
        try:
            workdir_lock.WorkdirLock(study).acquire().release()
        except workdir_lock.WorkdirBusy:
            refused.append(target)
        return original(source, target)
    monkeypatch.setattr(carry.shutil, "copyfile", copy_while_a_study_starts)
    carry.save(study, copy)
    assert refused and len(refused) == len(carry.carried_files(study))
    assert workdir_lock.holder(study) is None


def test_two_restores_at_once_give_one_whole_workdir(tmp_path, monkeypatch):
    """Two launches of run_full.sh restore the same copy at the same moment: one copies, the
    other waits for it and finds the study restored (it had removed the first one's scratch
    folder mid-copy, leaving a partial workdir)."""
    import threading
    import time
    study, copy = _fake_study(tmp_path / "study"), tmp_path / "copy"
    carry.save(study, copy)
    original = carry.shutil.copyfile

    def slow(source, target):
        time.sleep(0.05)
        return original(source, target)
    monkeypatch.setattr(carry.shutil, "copyfile", slow)
    counts, errors = [], []

    def restore():
        try:
            counts.append(carry.restore(copy, tmp_path / "workdir"))
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)
    threads = [threading.Thread(target=restore) for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(counts) == [0, len(carry.carried_files(study))]
    assert carry.carried_files(tmp_path / "workdir") == carry.carried_files(study)
