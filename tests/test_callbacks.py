"""Tests for lottery_kd.training.callbacks: each callback alone on a tiny Loop with a fake
trainer, and `Trainer.fit`'s order of hooks with a fake train step (no model, no compilation).
The real training loop is covered by tests/test_reliability.py, test_kill_resume.py and
test_lottery.py."""

import io
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.runtime.parallel import DataParallel
from lottery_kd.sparsity import dynamic, masks as masks_lib
from lottery_kd.study.checkpoints import CheckpointError, ResumeStore
from lottery_kd.training import optim
from lottery_kd.training.callbacks import (STOP_POLL_STEPS, BestValidation, Callback, Evaluate,
                                           LogScalars, Loop, MaskUpdates, NonFiniteCheck,
                                           ResumeCheckpoints, ShowProgress, StopRequest,
                                           standard_callbacks)
from lottery_kd.training.errors import NonFiniteLossError, TrainingInterrupted
from lottery_kd.training.progress import Progress
from lottery_kd.training.steps import TrainState
from lottery_kd.training.trainer import Trainer

PARALLEL = DataParallel.create()


def _state(step=0, value=0.0):
    return TrainState(np.asarray(step, np.int32), {"w": np.full(3, value, np.float32)},
                      {"mean": np.zeros(2, np.float32)}, {"trace": np.ones(3, np.float32)})


def _loop(*, trainer=None, first=0, end=40, steps_per_epoch=10, state=None, masks=None):
    trainer = trainer or SimpleNamespace(parallel=PARALLEL, steps_per_epoch=steps_per_epoch)
    masks = masks if masks is not None else {"w": np.array([True, False, True])}
    return Loop(trainer, state or _state(first), masks, None, first=first, end=end)


def _at(loop, global_step):
    """`loop` just after `global_step` ran (its boundaries marked, as fit does)."""
    loop.begin_step(global_step, None, None, False)
    loop.mark_boundaries()
    return loop


# ---- Loop ----------------------------------------------------------------------------------
def test_boundaries_come_at_epoch_ends_save_points_and_the_last_step():
    loop = _loop(end=25, steps_per_epoch=10)
    loop.checkpoint_every = 4
    marks = {s + 1: (_at(loop, s).epoch_done, loop.checkpoint_due) for s in range(25)}
    assert [d for d, (epoch, _) in marks.items() if epoch] == [10, 20, 25]
    assert [d for d, (_, save) in marks.items() if save] == [4, 8, 12, 16, 20, 24, 25]
    loop.checkpoint_every = 0  # save points at epoch ends
    assert [s + 1 for s in range(25) if _at(loop, s).checkpoint_due] == [10, 20, 25]


def test_an_epoch_row_averages_the_epochs_step_metrics_and_starts_a_new_epoch():
    loop = _at(_loop(steps_per_epoch=4), 7)
    loop.lr, loop.distill = jnp.float32(0.1), True
    loop.pending = [{"loss": 1.0, "accuracy": 0.25}, {"loss": 2.0, "accuracy": 0.75}]
    row = loop.close_epoch()
    assert row == {"step": 8, "epoch": 2.0, "lr": float(jnp.float32(0.1)), "distill": True,
                   "train_loss": 1.5, "train_accuracy": 0.5}
    assert loop.pending == []


# ---- NonFiniteCheck ------------------------------------------------------------------------
def test_the_non_finite_check_names_the_first_bad_step():
    loop = _at(_loop(), 9)  # steps 6..9 pending
    loop.pending = [{"loss": 1.0}, {"loss": 2.0}, {"loss": math.nan}, {"loss": math.inf}]
    with pytest.raises(NonFiniteLossError, match="at global step 8 ") as error:
        NonFiniteCheck().on_metrics(loop)
    assert error.value.step == 8


def test_the_non_finite_check_also_watches_the_gradient_norm_and_passes_finite_metrics():
    loop = _at(_loop(), 3)
    loop.pending = [{"loss": 1.0, "grad_norm": 2.0}] * 4
    NonFiniteCheck().on_metrics(loop)
    loop.pending[1] = {"loss": 1.0, "grad_norm": math.inf}
    with pytest.raises(NonFiniteLossError) as error:
        NonFiniteCheck().on_metrics(loop)
    assert error.value.step == 1


# ---- Evaluate and BestValidation -----------------------------------------------------------
def _evaluating_trainer(with_val=True):
    splits = SimpleNamespace(test="test", val="val" if with_val else None)
    scores = {"test": (0.5, 1.5), "val": (0.25, 2.5)}
    return SimpleNamespace(parallel=PARALLEL, steps_per_epoch=10, data=splits,
                           evaluate=lambda params, batch_stats, masks, split: scores[split])


def test_evaluate_adds_test_then_validation_scores_to_the_row():
    row = {"step": 10}
    Evaluate().on_epoch_end(_loop(trainer=_evaluating_trainer()), row)
    assert list(row.items()) == [("step", 10), ("test_accuracy", 0.5), ("test_loss", 1.5),
                                 ("val_accuracy", 0.25), ("val_loss", 2.5)]
    row = {"step": 10}
    Evaluate().on_epoch_end(_loop(trainer=_evaluating_trainer(with_val=False)), row)
    assert row == {"step": 10, "test_accuracy": 0.5, "test_loss": 1.5}


def test_best_validation_keeps_the_test_accuracy_of_the_first_best_validation_epoch():
    loop, best = _loop(), BestValidation()
    for epoch, val, test in [(1, 0.5, 0.40), (2, 0.7, 0.60), (3, 0.7, 0.90), (4, 0.6, 0.95)]:
        best.on_epoch_end(loop, {"epoch": epoch, "val_accuracy": val, "test_accuracy": test})
    assert loop.best == (0.7, 0.60, 2)


def test_best_validation_stays_empty_without_a_validation_split():
    loop = _loop()
    BestValidation().on_epoch_end(loop, {"epoch": 1, "test_accuracy": 0.9})
    assert loop.best == (None, None, None)


# ---- ResumeCheckpoints ---------------------------------------------------------------------
def _saved_loop(tmp_path, every=5):
    loop = _at(_loop(state=_state(12, 3.0)), 11)
    loop.history, loop.pending = [{"step": 10, "test_accuracy": 0.5}], [{"loss": 1.25}]
    loop.best, loop.seconds_before, loop.began = (0.5, 0.5, 1.0), 7.0, 0.0
    store = ResumeStore(tmp_path, keep=2, fingerprint={"model": "fake"}, log=lambda *_: None)
    ResumeCheckpoints(store, every=every).on_checkpoint(loop)
    store.close()
    return loop


def test_the_resume_callback_restores_what_it_saved(tmp_path):
    saved = _saved_loop(tmp_path)
    loop = _loop(state=_state(0, 0.0))
    store = ResumeStore(tmp_path, keep=2, fingerprint={"model": "fake"})
    ResumeCheckpoints(store, every=5).on_resume(loop)
    assert loop.checkpoint_every == 5
    assert int(loop.state.step) == 12
    np.testing.assert_array_equal(np.asarray(loop.state.params["w"]), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(np.asarray(loop.masks["w"]), [True, False, True])
    assert (loop.history, loop.pending, loop.best) == (saved.history, saved.pending, saved.best)
    assert loop.seconds_before > 7.0  # the saving process's seconds, counted on
    assert store.steps() == [12]


def test_the_resume_callback_starts_fresh_without_a_checkpoint(tmp_path):
    loop = _loop()
    ResumeCheckpoints(ResumeStore(tmp_path / "none"), every=3).on_resume(loop)
    assert (int(loop.state.step), loop.history, loop.best, loop.seconds_before) == \
        (0, [], (None, None, None), 0.0)
    assert loop.checkpoint_every == 3


def test_the_resume_callback_refuses_other_masks_unless_the_masks_may_change(tmp_path):
    _saved_loop(tmp_path)
    other = {"w": np.array([True, True, True])}
    with pytest.raises(CheckpointError, match="other masks"):
        ResumeCheckpoints(ResumeStore(tmp_path, fingerprint={"model": "fake"})).on_resume(
            _loop(masks=other))
    loop = _loop(masks=other)  # a dynamic sparse run: the saved masks win
    ResumeCheckpoints(ResumeStore(tmp_path, fingerprint={"model": "fake"}),
                      check_masks=False).on_resume(loop)
    np.testing.assert_array_equal(np.asarray(loop.masks["w"]), [True, False, True])


# ---- StopRequest ---------------------------------------------------------------------------
def test_the_stop_callback_polls_once_per_step_and_stops_when_asked():
    polls = []
    stop = StopRequest(lambda: polls.append(1) or len(polls) >= 3)
    loop = _loop()
    stop.on_fit_start(loop)
    seen = []
    for step in range(4):
        stop.on_step_end(_at(loop, step))
        seen.append(loop.stopping)
    assert seen == [False, False, True, True] and len(polls) == 4


class _Pod:
    """A fake DataParallel of two processes; the other process asks to stop from `other_at`."""

    process_count = 2

    def __init__(self, other_at):
        self.other_at, self.votes, self.step = other_at, [], 0

    def any_process(self, flag):
        self.votes.append(self.step)
        return flag or self.step >= self.other_at


def test_with_several_processes_the_stop_is_agreed_only_at_poll_steps_and_boundaries():
    pod = _Pod(other_at=3)
    loop = _loop(trainer=SimpleNamespace(parallel=pod, steps_per_epoch=15), end=40)
    stop = StopRequest(lambda: False)
    stop.on_fit_start(loop)
    stopped_at = None
    for step in range(40):
        pod.step = step + 1
        stop.on_step_end(_at(loop, step))
        if loop.stopping:
            stopped_at = step + 1
            break
    assert pod.votes == [STOP_POLL_STEPS] and stopped_at == STOP_POLL_STEPS
    # a request of this process is kept until the next vote
    pod, asked = _Pod(other_at=99), iter([False, True] + [False] * 40)
    loop = _loop(trainer=SimpleNamespace(parallel=pod, steps_per_epoch=4), end=40)
    stop = StopRequest(lambda: next(asked))
    stop.on_fit_start(loop)
    for step in range(4):
        pod.step = step + 1
        stop.on_step_end(_at(loop, step))
    assert pod.votes == [4] and loop.stopping  # an epoch end: voted, and the flag was kept


# ---- MaskUpdates ---------------------------------------------------------------------------
def test_mask_updates_change_the_masks_before_due_steps_only_at_a_constant_count():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)}}
    masks = {"conv": {"kernel": jnp.asarray(rng.random((3, 3, 2, 4)) < 0.4)}}
    params = masks_lib.apply(params, masks)
    optimizer = optim.sgd_direction(0.9, 0.0)
    state = TrainState(np.asarray(5, np.int32), params, {},
                       jax.tree.map(jnp.ones_like, optimizer.init(params)))
    asked = []
    trainer = SimpleNamespace(
        parallel=PARALLEL, steps_per_epoch=10, optimizer=optimizer,
        dense_gradient=lambda distill: (asked.append(distill) or (lambda *a: jax.tree.map(
            lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params))))
    loop = _loop(trainer=trainer, state=state, masks=masks)
    update = MaskUpdates(dynamic.MaskUpdate("set", delta_t=5, alpha=0.3, end_step=30))
    loop.begin_step(4, None, None, False)
    update.on_step_begin(loop)
    assert loop.masks is masks and not asked  # not due
    loop.begin_step(5, None, None, False)
    update.on_step_begin(loop)
    assert asked == [False]
    old, new = np.asarray(masks["conv"]["kernel"]), np.asarray(loop.masks["conv"]["kernel"])
    assert new.sum() == old.sum() and (new != old).any()
    kernel = np.asarray(loop.state.params["conv"]["kernel"])
    assert np.all(kernel[~new] == 0.0) and np.all(kernel[new & ~old] == 0.0)


# ---- ShowProgress and LogScalars -----------------------------------------------------------
def test_progress_counts_resumed_steps_as_done_and_shows_each_epoch_row():
    stream = io.StringIO()
    show = ShowProgress(Progress("[run]", enabled=False, stream=stream))
    loop = _loop(first=5, end=45)
    loop.start = 25  # resumed
    show.on_fit_start(loop)
    for step in range(25, 30):
        show.on_step_end(_at(loop, step))
    show.on_epoch_end(loop, {"epoch": 3, "lr": 0.1, "train_loss": 1.0, "train_accuracy": 0.5,
                             "test_accuracy": 0.25})
    show.on_fit_end(loop)
    assert stream.getvalue().startswith("[run] epoch 3 step 25/40 loss 1.000 train 0.500 "
                                        "test 0.250 lr 0.1")


def test_scalars_get_the_row_with_epoch_timing_which_stays_out_of_the_row():
    logged = []
    log = LogScalars(lambda step, values: logged.append((step, values)))
    loop = _loop(steps_per_epoch=10)
    loop.start, loop.began = 7, 0.0  # resumed mid-epoch
    log.on_fit_start(loop)
    row = {"step": 10, "test_accuracy": 0.5}
    log.on_epoch_end(_at(loop, 9), row)
    log.on_epoch_end(_at(loop, 19), {"step": 20})
    assert row == {"step": 10, "test_accuracy": 0.5}
    (step1, first), (step2, second) = logged
    assert (step1, first["epoch_steps"], step2, second["epoch_steps"]) == (10, 3, 20, 10)
    assert first["test_accuracy"] == 0.5 and first["epoch_seconds"] > 0.0


def test_the_standard_set_runs_in_order_and_lets_a_dynamic_run_resume_with_new_masks(tmp_path):
    store = ResumeStore(tmp_path)
    update = dynamic.MaskUpdate("set", delta_t=5, alpha=0.3, end_step=30)
    callbacks = standard_callbacks(resume=store, stop_requested=lambda: False,
                                   mask_update=update, progress=Progress("x", enabled=False),
                                   log_scalars=lambda *_: None)
    assert [type(c) for c in callbacks] == [ResumeCheckpoints, StopRequest, MaskUpdates,
                                            ShowProgress, LogScalars]
    assert not callbacks[0].check_masks
    assert standard_callbacks() == []


# ---- Trainer.fit's order of hooks, on a fake train step -------------------------------------
class _Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_step_end(self, loop):
        self.calls.append(("step", loop.done))

    def on_metrics(self, loop):
        self.calls.append(("metrics", loop.done, len(loop.pending)))

    def on_epoch_end(self, loop, row):
        self.calls.append(("epoch", loop.done, "test_accuracy" in row))

    def on_checkpoint(self, loop):
        self.calls.append(("checkpoint", loop.done, len(loop.history)))

    def on_fit_end(self, loop):
        self.calls.append(("end", loop.done))


def _fake_trainer(steps_per_epoch=4):
    """A Trainer whose step adds lr to every weight: no model, nothing compiled."""
    trainer = Trainer.__new__(Trainer)

    def step(state, masks, images, labels, lr, teacher):
        params = jax.tree.map(lambda p: p + lr, state.params)
        return state.replace(step=state.step + 1, params=params), {
            "loss": jnp.float32(images), "accuracy": jnp.float32(0.5)}

    trainer.parallel, trainer.steps_per_epoch = PARALLEL, steps_per_epoch
    trainer.train_step_ce, trainer.train_step_kd = step, None
    trainer.device_batch = lambda s: (s, s)
    trainer.evaluate = lambda params, batch_stats, masks, split: (0.5, 1.0)
    trainer.data = SimpleNamespace(test="test", val=None)
    return trainer


def test_fit_checks_evaluates_then_saves_at_each_boundary():
    trainer, recorder = _fake_trainer(), _Recorder()
    fit = trainer.fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)}, num_steps=6,
                      schedule=lambda s: 0.5, callbacks=[recorder])
    assert recorder.calls == [("step", 1), ("step", 2), ("step", 3), ("step", 4),
                              ("metrics", 4, 4), ("epoch", 4, True), ("checkpoint", 4, 1),
                              ("step", 5), ("step", 6),
                              ("metrics", 6, 2), ("epoch", 6, True), ("checkpoint", 6, 2),
                              ("end", 6)]
    assert [row["train_loss"] for row in fit.history] == [1.5, 4.5]  # mean of steps 0..3, 4..5
    np.testing.assert_array_equal(np.asarray(fit.state.params["w"]), [3.0, 3.0, 3.0])


def test_a_stop_at_an_epoch_end_saves_that_epoch_then_raises(tmp_path):
    trainer, recorder = _fake_trainer(), _Recorder()
    polls = iter([False] * 7 + [True])
    store = ResumeStore(tmp_path, log=lambda *_: None)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)}, num_steps=12,
                    schedule=lambda s: 0.5, callbacks=[
                        ResumeCheckpoints(store, every=3), StopRequest(lambda: next(polls)),
                        recorder])
    assert stopped.value.step == 8
    assert store.steps() == [6, 8]
    assert recorder.calls[-2:] == [("epoch", 8, True), ("checkpoint", 8, 2)]
    resumed = trainer.fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)},
                          num_steps=12, schedule=lambda s: 0.5,
                          callbacks=[ResumeCheckpoints(ResumeStore(tmp_path), every=3)])
    straight = _fake_trainer().fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)},
                                   num_steps=12, schedule=lambda s: 0.5)
    assert resumed.history == straight.history
    np.testing.assert_array_equal(np.asarray(resumed.state.params["w"]),
                                  np.asarray(straight.state.params["w"]))


def test_a_stop_mid_epoch_saves_the_pending_metrics_and_the_resumed_epoch_averages_them(tmp_path):
    trainer = _fake_trainer()
    polls = iter([False] * 5 + [True])
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)}, num_steps=8,
                    schedule=lambda s: 0.5,
                    callbacks=[ResumeCheckpoints(ResumeStore(tmp_path)),
                               StopRequest(lambda: next(polls))])
    assert stopped.value.step == 6
    resumed = trainer.fit(PARALLEL.replicate(_state()), {"w": np.ones(3, bool)}, num_steps=8,
                          schedule=lambda s: 0.5,
                          callbacks=[ResumeCheckpoints(ResumeStore(tmp_path))])
    assert [row["train_loss"] for row in resumed.history] == [1.5, 5.5]  # steps 4..7
