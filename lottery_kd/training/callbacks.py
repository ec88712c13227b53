"""The callbacks of `Trainer.fit`: everything its loop does besides running the train step.

`Trainer.fit` (training.trainer) keeps one `Loop`, the run as its callbacks see and change it,
and calls each hook on the built-in callbacks (NonFiniteCheck, Evaluate, BestValidation) and then
on the ones it is given, in list order:

    on_resume(loop)          once, first: may load a saved run into the loop (state, masks,
                             history, pending, best, seconds_before) and set
                             loop.checkpoint_every. Then fit sets loop.start and loop.began.
    on_fit_start(loop)       once, before the first step.
    on_step_begin(loop)      before each step, after fit's `on_step` hook; loop.global_step,
                             images, labels and distill are the step's. May replace loop.state
                             and loop.masks (dynamic mask updates).
    on_step_end(loop)        after each step is dispatched (its metrics appended to loop.pending,
                             still on the device), with loop.epoch_done and loop.checkpoint_due
                             set for it. May set loop.stopping.
  At a boundary (epoch_done, checkpoint_due or stopping), in this order:
    on_metrics(loop)         loop.pending holds the metrics since the last epoch end as floats.
    on_epoch_end(loop, row)  at an epoch end: `row` is the new history row (step, epoch, lr,
                             distill, train metrics); callbacks add to it, and fit appends it to
                             loop.history after the last one. loop.pending is empty again.
    on_checkpoint(loop)      at a save point (checkpoint_due) and on a stop.
  Then a stop before the last step raises TrainingInterrupted(loop.done).
    on_fit_end(loop)         after the last step (not after an exception).

A save point comes every `loop.checkpoint_every` steps (0: at each epoch end) and after the last
step. `standard_callbacks` builds a study run's set in the order they must run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import jax
import numpy as np

from lottery_kd.sparsity import dynamic, masks as masks_lib
from lottery_kd.study.checkpoints import CheckpointError, ResumeStore
from lottery_kd.training.errors import NonFiniteLossError
from lottery_kd.training.progress import Progress
from lottery_kd.training.steps import TrainState

if TYPE_CHECKING:
    from lottery_kd.training.trainer import Trainer

PyTree = Any
# With several processes a stop request (SIGTERM reaches each worker at its own moment) is
# agreed every this many steps, and at epoch ends and checkpoints: an all-gather of one flag,
# so no process enters a collective checkpoint save while another runs the next step.
STOP_POLL_STEPS = 10


@dataclasses.dataclass(eq=False)
class Loop:
    """One running `Trainer.fit`, as its callbacks see and change it.

    The run's fields (saved in resume checkpoints) are state, masks, history, pending (per-step
    metrics since the last epoch end), best ((best validation accuracy, test accuracy at that
    epoch, that epoch), Nones without a validation split) and seconds_before (training time of
    the processes before a resume). The step's fields are set by fit before each step.
    """

    trainer: "Trainer"
    state: TrainState
    masks: PyTree
    teacher: Optional[PyTree]
    first: int  # the global step fit was called at
    end: int  # the global step it trains up to (exclusive)
    start: int = 0  # the global step this process starts at (after a resume)
    began: float = 0.0  # time.perf_counter() at `start`
    seconds_before: float = 0.0
    checkpoint_every: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    pending: list[dict] = dataclasses.field(default_factory=list)
    best: tuple = (None, None, None)
    # the step's
    global_step: int = 0
    images: Any = None
    labels: Any = None
    distill: bool = False
    lr: Any = 0.0
    epoch_done: bool = False
    checkpoint_due: bool = False
    stopping: bool = False

    @property
    def done(self) -> int:
        """Global steps done once the current step has run."""
        return self.global_step + 1

    def seconds(self) -> float:
        """Training wall time of the run so far, resumed processes included."""
        return self.seconds_before + time.perf_counter() - self.began

    def begin_step(self, global_step: int, images: Any, labels: Any, distill: bool) -> None:
        """Set the step's fields before its hooks run."""
        self.global_step, self.images, self.labels, self.distill = (global_step, images, labels,
                                                                    distill)

    def mark_boundaries(self) -> None:
        """After the step: whether it ends an epoch or is a save point (the last step is both);
        no stop yet (callbacks set one)."""
        per_epoch, done = self.trainer.steps_per_epoch, self.done
        every = self.checkpoint_every or per_epoch
        self.epoch_done = done % per_epoch == 0 or done == self.end
        self.checkpoint_due = done % every == 0 or done == self.end
        self.stopping = False

    def close_epoch(self) -> dict:
        """The history row of the epoch that ends now: the train metrics averaged over the
        epoch's steps (loop.pending, which starts again empty)."""
        train = {key: float(np.mean([m[key] for m in self.pending])) for key in self.pending[0]}
        self.pending = []
        return {"step": self.done, "epoch": self.done / self.trainer.steps_per_epoch,
                "lr": float(self.lr), "distill": self.distill,
                **{f"train_{k}": v for k, v in train.items()}}


class Callback:
    """A hook for every moment of `Trainer.fit` (see the module docstring), each a no-op here:
    subclasses override those they need."""

    def on_resume(self, loop: Loop) -> None:
        """Once, first: load a saved run into the loop."""

    def on_fit_start(self, loop: Loop) -> None:
        """Once, before the first step."""

    def on_step_begin(self, loop: Loop) -> None:
        """Before each step."""

    def on_step_end(self, loop: Loop) -> None:
        """After each step is dispatched."""

    def on_metrics(self, loop: Loop) -> None:
        """At a boundary, with loop.pending on the host."""

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        """At an epoch end, with its history row."""

    def on_checkpoint(self, loop: Loop) -> None:
        """At a save point, and on a stop."""

    def on_fit_end(self, loop: Loop) -> None:
        """After the last step."""


class CallbackList(Callback):
    """Several callbacks as one: each hook runs on each of them, in list order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_resume(self, loop: Loop) -> None:
        self._each("on_resume", loop)

    def on_fit_start(self, loop: Loop) -> None:
        self._each("on_fit_start", loop)

    def on_step_begin(self, loop: Loop) -> None:
        self._each("on_step_begin", loop)

    def on_step_end(self, loop: Loop) -> None:
        self._each("on_step_end", loop)

    def on_metrics(self, loop: Loop) -> None:
        self._each("on_metrics", loop)

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        self._each("on_epoch_end", loop, row)

    def on_checkpoint(self, loop: Loop) -> None:
        self._each("on_checkpoint", loop)

    def on_fit_end(self, loop: Loop) -> None:
        self._each("on_fit_end", loop)


# ---- built into every fit ------------------------------------------------------------------
class NonFiniteCheck(Callback):
    """A NaN or Inf loss, accuracy or gradient norm raises NonFiniteLossError naming the first
    step where it appeared, before anything of that step is evaluated or saved."""

    def on_metrics(self, loop: Loop) -> None:
        first_step = loop.done - len(loop.pending)
        for offset, m in enumerate(loop.pending):
            if not all(math.isfinite(v) for v in m.values()):
                raise NonFiniteLossError(
                    f"non-finite training loss or gradient at global step {first_step + offset} "
                    f"({m}); lower train.lr or check the data", first_step + offset)


class Evaluate(Callback):
    """Test accuracy and loss, then validation accuracy and loss (with a validation split), of
    the current weights into every epoch's row."""

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        trainer, state = loop.trainer, loop.state
        accuracy, loss = trainer.evaluate(state.params, state.batch_stats, loop.masks,
                                          trainer.data.test)
        row.update(test_accuracy=accuracy, test_loss=loss)
        if trainer.data.val is not None:
            accuracy, loss = trainer.evaluate(state.params, state.batch_stats, loop.masks,
                                              trainer.data.val)
            row.update(val_accuracy=accuracy, val_loss=loss)


class BestValidation(Callback):
    """loop.best: the highest validation accuracy so far (the first epoch that reached it), the
    test accuracy at that epoch, and the epoch (runs after Evaluate)."""

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        if "val_accuracy" not in row:
            return
        best_val = loop.best[0]
        if best_val is None or row["val_accuracy"] > best_val:
            loop.best = (row["val_accuracy"], row["test_accuracy"], row["epoch"])


# ---- chosen per run ------------------------------------------------------------------------
class ResumeCheckpoints(Callback):
    """Resume from the newest readable checkpoint in `store`, and save the whole run there at
    every save point (every `every` steps, 0: each epoch end; the last step) and on a stop.

    The batch at a step is a pure function of the step, so a resumed run ends bitwise equal to
    an uninterrupted one. With `check_masks`, a checkpoint made with other masks than the
    loop's is refused (a dynamic sparse run changes its masks, so it passes False).
    """

    def __init__(self, store: ResumeStore, *, every: int = 0, check_masks: bool = True):
        self.store, self.every, self.check_masks = store, every, check_masks

    def on_resume(self, loop: Loop) -> None:
        loop.checkpoint_every = self.every
        restored = self.store.restore_latest({"state": loop.state, "masks": loop.masks},
                                             loop.trainer.parallel.replicated)
        if restored is None:
            return
        tree, meta = restored
        if self.check_masks and not all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(jax.device_get(tree["masks"])),
                jax.tree.leaves(jax.device_get(loop.masks)))):
            raise CheckpointError(f"resume checkpoint in {self.store.directory} was made "
                                  "with other masks than this run's")
        loop.state, loop.masks = tree["state"], tree["masks"]
        loop.history, loop.pending = meta["history"], meta["pending"]
        best_val, best_test, best_epoch = meta["best"]
        loop.best = (best_val, best_test, best_epoch)
        loop.seconds_before = meta["seconds"]

    def on_checkpoint(self, loop: Loop) -> None:
        meta = {"history": loop.history, "pending": loop.pending, "best": list(loop.best),
                "seconds": loop.seconds()}
        self.store.save(loop.done, {"state": loop.state, "masks": loop.masks}, meta)


class StopRequest(Callback):
    """Stop when `requested()` (polled once per step: a signal handler's flag) turns true; fit
    then saves (on_checkpoint) and raises TrainingInterrupted unless it was the last step.

    With several processes the request of any one is acted on by all at the same step: the
    flag is agreed (a collective) every STOP_POLL_STEPS steps, at epoch ends and at save points.
    """

    def __init__(self, requested: Callable[[], bool]):
        self.requested = requested
        self._local = False  # a request seen by this process, not yet agreed

    def on_fit_start(self, loop: Loop) -> None:
        self._local = False

    def on_step_end(self, loop: Loop) -> None:
        stopping = self.requested()
        parallel = loop.trainer.parallel
        if parallel.process_count > 1:
            self._local = self._local or stopping
            stopping = ((loop.done % STOP_POLL_STEPS == 0 or loop.epoch_done
                         or loop.checkpoint_due) and parallel.any_process(self._local))
        if stopping:
            loop.stopping = True


class MaskUpdates(Callback):
    """Dynamic sparse training: before every step `update` says is due, its new masks (from the
    dense gradient of the step's batch and loss when update.needs_grads: RigL; GMP and the like
    get None and no gradient is computed). Dropped weights become 0.0 and lose their momentum;
    grown weights start at 0.0 with fresh momentum. Every epoch row gets the masks' sparsity."""

    def __init__(self, update: dynamic.MaskSchedule):
        self.update = update

    def on_step_begin(self, loop: Loop) -> None:
        if not self.update.due(loop.global_step):
            return
        trainer, state, masks = loop.trainer, loop.state, loop.masks
        grads = None
        if self.update.needs_grads:
            teacher = loop.teacher if loop.distill else None
            grads = trainer.dense_gradient(teacher is not None)(
                state.params, state.batch_stats, masks, loop.images, loop.labels, teacher or {})
        new_masks = self.update.new_masks(loop.global_step, state.params, masks, grads)
        params, opt_state = dynamic.reset_grown(trainer.optimizer, state.opt_state, state.params,
                                                masks, new_masks)
        loop.state = trainer.parallel.replicate(state.replace(params=params, opt_state=opt_state))
        loop.masks = trainer.parallel.replicate(new_masks)

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        row["sparsity"] = masks_lib.sparsity(loop.masks, self.update.scope)


class ShowProgress(Callback):
    """Drives a Progress: started at the run's first step (counting resumed steps as done),
    advanced every step, showing every epoch row, closed at the end."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_fit_start(self, loop: Loop) -> None:
        self.progress.start(loop.end - loop.first, done=loop.start - loop.first)

    def on_step_end(self, loop: Loop) -> None:
        self.progress.advance(1)

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        self.progress.epoch_end(row)

    def on_fit_end(self, loop: Loop) -> None:
        self.progress.close()


class LogScalars(Callback):
    """`log_scalars(step, values)` at every epoch end: the history row plus epoch_seconds and
    epoch_steps, the wall time and steps since the previous epoch end (or this process's first
    step). Timing stays out of the history, a pure function of the run, so resumes match."""

    def __init__(self, log_scalars: Callable[[int, dict], None]):
        self.log_scalars = log_scalars
        self._last = (0, 0.0)  # (step, time.perf_counter()) of the previous epoch end

    def on_fit_start(self, loop: Loop) -> None:
        self._last = (loop.start, loop.began)

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        now = time.perf_counter()
        timing = {"epoch_seconds": now - self._last[1], "epoch_steps": loop.done - self._last[0]}
        self._last = (loop.done, now)
        self.log_scalars(loop.done, {**row, **timing})


def standard_callbacks(*, resume: Optional[ResumeStore] = None, checkpoint_every: int = 0,
                       stop_requested: Optional[Callable[[], bool]] = None,
                       mask_update: Optional[dynamic.MaskSchedule] = None,
                       progress: Optional[Progress] = None,
                       log_scalars: Optional[Callable[[int, dict], None]] = None
                       ) -> list[Callback]:
    """The callbacks of a study's training run, for those of its parts that are given, in the
    order they run: resume checkpoints, the stop request, mask updates, progress, scalars."""
    callbacks: list[Callback] = []
    if resume is not None:
        callbacks.append(ResumeCheckpoints(resume, every=checkpoint_every,
                                           check_masks=mask_update is None))
    if stop_requested is not None:
        callbacks.append(StopRequest(stop_requested))
    if mask_update is not None:
        callbacks.append(MaskUpdates(mask_update))
    if progress is not None:
        callbacks.append(ShowProgress(progress))
    if log_scalars is not None:
        callbacks.append(LogScalars(log_scalars))
    return callbacks
