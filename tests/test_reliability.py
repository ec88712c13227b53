"""Reliability: resume checkpoints, graceful stop, checkpoint integrity, the non-finite guard and
an unusable workdir. The SIGKILL-at-random-moments trial is tests/test_kill_resume.py (slow)."""

import errno
import json
import os
import shlex
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import launch
from lottery_kd.study import lottery, results
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study.checkpoints import CheckpointError, ResumeStore, SnapshotStore
from lottery_kd.data import load_dataset
from lottery_kd.data.inputs import InputData
from lottery_kd.models import get_model
from lottery_kd.training.callbacks import ResumeCheckpoints, StopRequest
from lottery_kd.training.errors import NonFiniteLossError, TrainingInterrupted
from lottery_kd.training.steps import init_variables
from lottery_kd.training.trainer import Trainer
from tests.conftest import REPO, make_tiny_config

SCHEDULE = lambda step: 0.05  # noqa: E731


def _trainer():
    model = get_model("digits_convnet", 10)
    data = InputData.from_dataset(load_dataset("digits"), seed=3, eval_batch_size=360)
    return Trainer(model, data, batch_size=64, momentum=0.9, weight_decay=5e-4,
                   distillation=None), model


def _start(trainer, model):
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.create(params)
    return trainer.init_state(params, batch_stats, masks, 0), masks


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


class StopAfter:
    """stop_requested() that turns true after `calls` polls (one poll per training step)."""

    def __init__(self, calls):
        self.calls, self.polls = calls, 0

    def __call__(self):
        self.polls += 1
        return self.polls >= self.calls


# --------------------------------------------------------------------------------------------
# resume checkpoints and graceful stop (in process)


@pytest.mark.parametrize("stop_at", [7, 19])  # mid-epoch, and exactly at an epoch boundary
def test_a_stopped_fit_resumes_to_the_uninterrupted_result(tmp_path, stop_at):
    trainer, model = _trainer()
    assert trainer.steps_per_epoch == 19
    state, masks = _start(trainer, model)
    total = 2 * trainer.steps_per_epoch + 4
    straight = trainer.fit(state, masks, num_steps=total, schedule=SCHEDULE)

    store = ResumeStore(tmp_path / "resume", keep=2, fingerprint={"model": "digits_convnet"})
    state, masks = _start(trainer, model)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit(state, masks, num_steps=total, schedule=SCHEDULE,
                    callbacks=[ResumeCheckpoints(store, every=5), StopRequest(StopAfter(stop_at))])
    assert stopped.value.step == stop_at
    assert store.steps()[-1] == stop_at and len(store.steps()) <= 2

    again, _ = _trainer()  # a new process
    state, masks = _start(again, model)
    resumed = again.fit(state, masks, num_steps=total, schedule=SCHEDULE,
                        callbacks=[ResumeCheckpoints(ResumeStore(
                            tmp_path / "resume", keep=2, fingerprint={"model": "digits_convnet"}),
                            every=5)])
    _assert_trees_equal(resumed.state, straight.state)
    assert resumed.history == straight.history
    assert (resumed.test_accuracy, resumed.best_val_accuracy, resumed.best_val_epoch) == \
        (straight.test_accuracy, straight.best_val_accuracy, straight.best_val_epoch)


def test_a_damaged_newest_resume_checkpoint_falls_back_to_the_previous_one(tmp_path):
    trainer, model = _trainer()
    state, masks = _start(trainer, model)
    logged = []
    store = ResumeStore(tmp_path / "resume", keep=3, log=logged.append)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(state, masks, num_steps=30, schedule=SCHEDULE,
                    callbacks=[ResumeCheckpoints(store, every=4), StopRequest(StopAfter(10))])
    assert store.steps() == [4, 8, 10]
    newest = tmp_path / "resume" / "10"
    for array_file in (newest / "state").rglob("*"):
        if array_file.is_file() and array_file.stat().st_size > 0 and "metadata" not in \
                array_file.name:
            array_file.write_bytes(array_file.read_bytes()[: array_file.stat().st_size // 2])
    restored = ResumeStore(tmp_path / "resume", keep=3, log=logged.append).restore_latest(
        {"state": state, "masks": masks})
    assert restored is not None
    assert int(restored[0]["state"].step) == 8
    assert any("step 10" in line and "trying an earlier one" in line for line in logged), logged


def test_a_resume_checkpoint_with_other_masks_is_refused(tmp_path):
    trainer, model = _trainer()
    state, masks = _start(trainer, model)
    store = ResumeStore(tmp_path / "resume", keep=2)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(state, masks, num_steps=30, schedule=SCHEDULE,
                    callbacks=[ResumeCheckpoints(store, every=4), StopRequest(StopAfter(4))])
    state, masks = _start(trainer, model)  # the first state was donated to the train step
    other = jax.tree.map(lambda m: m.at[(0,) * m.ndim].set(False) if m.ndim == 4 else m, masks)
    with pytest.raises(CheckpointError, match="other masks"):
        trainer.fit(state, other, num_steps=30, schedule=SCHEDULE,
                    callbacks=[ResumeCheckpoints(ResumeStore(tmp_path / "resume"))])


def test_a_resume_checkpoint_of_another_config_stops_the_resume_instead_of_restarting(tmp_path):
    """Not damage: a readable resume checkpoint written under another config digest (or state
    layout) stops the resume with a message naming it; none is set aside, nothing restarts."""
    from lottery_kd.study.checkpoints import ForeignCheckpoint
    ResumeStore(tmp_path / "resume", fingerprint={"config_digest": "aaaa"}).save(
        12, _tree(), {"step": 12})
    assert ResumeStore(tmp_path / "resume", fingerprint={"config_digest": "aaaa"}).restore_latest(
        _tree()) is not None
    with pytest.raises(ForeignCheckpoint, match=r"another config.*move .*resume away"):
        ResumeStore(tmp_path / "resume", fingerprint={"config_digest": "bbbb"}).restore_latest(
            _tree())
    assert not (tmp_path / "resume.damaged").exists()
    assert ResumeStore(tmp_path / "resume").steps() == [12]


# --------------------------------------------------------------------------------------------
# snapshot integrity


def _tree(shape=(3, 3, 2, 4)):
    kernel = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return {"params": {"conv": {"kernel": kernel}},
            "masks": {"conv": {"kernel": kernel > 5}}}


def test_a_snapshot_from_another_model_or_config_is_refused(tmp_path):
    SnapshotStore(tmp_path, {"model": "resnet20", "config_digest": "aaaa"}).save("init", _tree())
    assert SnapshotStore(tmp_path, {"model": "resnet20", "config_digest": "aaaa"}).restore(
        "init", _tree())["params"]["conv"]["kernel"][0, 0, 0, 1] == 1.0
    with pytest.raises(CheckpointError, match="another model: model 'resnet20' there, "
                                              "'resnet56' in this run"):
        SnapshotStore(tmp_path, {"model": "resnet56", "config_digest": "aaaa"}).restore(
            "init", _tree())
    with pytest.raises(CheckpointError, match="another config"):
        SnapshotStore(tmp_path, {"model": "resnet20", "config_digest": "bbbb"}).restore(
            "init", _tree())


def test_masks_that_do_not_match_the_params_shapes_are_refused(tmp_path):
    store = SnapshotStore(tmp_path, {"model": "m"})
    store.save("init", _tree())
    expected = _tree()
    expected["masks"]["conv"]["kernel"] = np.ones((3, 3, 2, 8), bool)
    with pytest.raises(CheckpointError, match=r"other shapes.*masks"):
        store.restore("init", expected)


def test_a_truncated_snapshot_is_refused_not_loaded(tmp_path):
    store = SnapshotStore(tmp_path, {"model": "m"})
    store.save("init", _tree((32, 32, 16, 16)))
    damaged = [f for f in (tmp_path / "init" / "state").rglob("*")
               if f.is_file() and f.stat().st_size > 1000]
    assert damaged
    for f in damaged:
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="snapshot 'init'.*damaged"):
        store.restore("init", _tree((32, 32, 16, 16)))
    (tmp_path / "init" / "meta" / "metadata").write_text('{"fingerprint": ')
    with pytest.raises(CheckpointError, match="metadata cannot be read"):
        store.restore("init", _tree((32, 32, 16, 16)))


# --------------------------------------------------------------------------------------------
# the non-finite guard


def test_a_non_finite_loss_names_the_step_and_saves_nothing_after_it(tmp_path):
    trainer, model = _trainer()
    state, masks = _start(trainer, model)
    store = ResumeStore(tmp_path / "resume", keep=5)
    exploding = lambda step: 0.05 if step < 12 else 1e30  # noqa: E731
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(state, masks, num_steps=40, schedule=exploding,
                    callbacks=[ResumeCheckpoints(store, every=5)])
    assert 12 < error.value.step < 19 and f"global step {error.value.step}" in str(error.value)
    assert store.steps() == [5, 10]  # the last good ones stay; nothing after the blow-up


def test_a_study_whose_loss_blows_up_stops_naming_level_variant_and_step(tmp_path, capsys):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt"
    config.train.lr = 1e30
    assert launch.run_study(config, str(tmp_path)) == 3
    message = capsys.readouterr().err
    assert "level 0, variant dense: non-finite loss at global step" in message
    assert "No result row was written" in message
    assert not (tmp_path / "results.jsonl").exists()


def test_a_damaged_snapshot_the_study_needs_stops_it_with_exit_code_4(tmp_path, capsys):
    config = make_tiny_config()
    config.train.epochs = 1
    config.prune.levels = 1
    config.lottery.variants = "lt"
    assert launch.run_study(config, str(tmp_path)) == 0
    rows = results.read_rows(tmp_path / "results.jsonl")
    (tmp_path / "results.jsonl").write_text(json.dumps(rows[0]) + "\n")  # lt must be redone
    (tmp_path / "checkpoints" / "snapshots" / "init" / "meta" / "metadata").write_text("{")
    capsys.readouterr()
    assert launch.run_study(config, str(tmp_path)) == 4
    message = capsys.readouterr().err
    assert "snapshot 'init'" in message and "Move the damaged checkpoint away" in message
    assert "Traceback" not in message
    assert len(results.read_rows(tmp_path / "results.jsonl")) == 1  # nothing half-written


# --------------------------------------------------------------------------------------------
# an unusable workdir


def test_a_workdir_that_cannot_be_created_is_refused_before_any_compute(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert launch.run_study(make_tiny_config(), str(blocker / "run")) == 5
    message = capsys.readouterr().err
    assert f"workdir {blocker / 'run'} cannot be written" in message
    assert "Traceback" not in message


def test_a_full_disk_mid_study_stops_cleanly_and_the_rerun_completes(tmp_path, monkeypatch,
                                                                     capsys):
    config = make_tiny_config()
    config.train.epochs = 1
    config.prune.levels = 1
    config.lottery.variants = "lt,kd"
    reference = lottery.run(config, tmp_path / "reference", log=lambda *_: None)

    original = results.append_row
    writes = []

    def append_row_until_full(path, row):
        writes.append(row["variant"])
        if row["variant"] == "lt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(path, row)

    monkeypatch.setattr(results, "append_row", append_row_until_full)
    workdir = tmp_path / "run"
    assert launch.run_study(config, str(workdir)) == 5
    assert "No space left on device" in capsys.readouterr().err
    assert [r["variant"] for r in results.read_rows(workdir / "results.jsonl")] == ["dense"]
    monkeypatch.setattr(results, "append_row", original)
    rows = lottery.run(config, workdir, log=lambda *_: None)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(reference)


# --------------------------------------------------------------------------------------------
# SIGTERM, as a preemption sends it, to the real command


@pytest.mark.slow  # 36 s: the stop-and-resume path runs by default (stopped fits above,
# test_damage's half study); the signal's wiring to it here and in test_kill_resume (slow)
def test_sigterm_saves_a_resume_checkpoint_and_the_same_command_finishes_the_study(tmp_path):
    args = [sys.executable, "-m", "experiments.quickstart", "--config.train.epochs=3",
            "--config.prune.levels=1", "--config.prune.first_level=1",
            "--config.lottery.variants=lt", "--config.log.progress=lines",
            "--config.log.tensorboard=False",
            "--config.checkpoint.every_steps=3"]
    reference = subprocess.run(args + [f"--workdir={tmp_path / 'reference'}"], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]

    workdir = tmp_path / "run"
    process = subprocess.Popen(args + [f"--workdir={workdir}"], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:  # wait until the dense run has finished its first epoch
        lines.append(line)
        if "[level 0 dense] epoch 1" in line:
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "received SIGTERM: saving a resume checkpoint" in output
    assert "Resume with the same command" in output
    saved = sorted((workdir / "checkpoints" / "resume" / "level_0_dense").iterdir())
    assert saved, "no resume checkpoint was written"

    printed = output.split("Resume with the same command:\n", 1)[1].splitlines()[0]
    assert shlex.split(printed) == args + [f"--workdir={workdir}"]  # runnable as printed
    again = subprocess.run(shlex.split(printed), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[level 0 dense] epoch 1 " not in again.stdout + again.stderr  # resumed, not redone
    strip = lambda path: [{k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                          for r in results.read_rows(path / "results.jsonl")]
    assert strip(workdir) == strip(tmp_path / "reference")
    assert not (workdir / "checkpoints" / "resume" / "level_1_lt").exists()  # cleaned up


def test_the_first_signal_requests_a_stop_and_a_second_one_stops_at_once(capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with launch.StopOnSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # handled before os.kill returns (main thread)
        assert stop() and stop.signum == signal.SIGTERM
        assert "received SIGTERM: saving a resume checkpoint" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGTERM  # the first signal decides the exit code
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_study_stopped_by_sigint_exits_130_and_prints_the_resume_command(tmp_path, capsys,
                                                                            monkeypatch):
    def interrupted_run(config, workdir, *, stop_requested, **_):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while training
        assert stop_requested()
        raise TrainingInterrupted(42, "in level 0 dense")

    monkeypatch.setattr(lottery, "run", interrupted_run)
    assert launch.run_study(make_tiny_config(), str(tmp_path)) == 128 + signal.SIGINT == 130
    err = capsys.readouterr().err
    assert "received SIGINT" in err
    assert "stopped in level 0 dense at global step 42" in err
    assert "Resume with the same command" in err


def test_a_finished_dense_network_is_not_trained_again_under_finished_tickets(tmp_path):
    """The tickets of a study were pruned from and distilled from its dense network: a lost
    'rewind' snapshot of a finished dense run, or a lost dense snapshot whose row records
    another conv_impl than a retrain would take, stops the study with a message instead of
    training another dense network under the finished rows."""
    import shutil
    config = make_tiny_config()
    config.prune.levels, config.lottery.variants = 1, "lt"
    workdir = tmp_path / "study"
    lottery.run(config, workdir, log=lambda *_: None)
    snapshots = workdir / "checkpoints" / "snapshots"
    shutil.move(snapshots / "rewind", tmp_path / "rewind")
    with pytest.raises(CheckpointError, match=r"snapshot 'rewind'.*1 finished run\(s\).*"
                                              r"level_1_lt.*carry restore"):
        lottery.run(config, workdir, log=lambda *_: None)
    shutil.move(tmp_path / "rewind", snapshots / "rewind")
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    rows[0]["conv_impl"] = "xla" if rows[0]["conv_impl"] != "xla" else "native"
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(snapshots / "level_0_dense")
    with pytest.raises(CheckpointError, match="another conv_impl than a retrain would"):
        lottery.run(config, workdir, log=lambda *_: None)
    assert not (snapshots / "level_0_dense").exists()  # nothing was trained
