"""The training loop: `Trainer` (compiled steps for one model, data set and optimizer) and its
`fit`, which runs the train step over a range of global steps and leaves everything else
(evaluation, resume checkpoints, stop requests, mask updates, progress, logging) to callbacks
(training.callbacks, whose docstring says when each hook runs).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.data.inputs import EvalInput, InputData
from lottery_kd.runtime.parallel import DataParallel
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.training import optim, precision as precision_lib
from lottery_kd.training.callbacks import (BestValidation, Callback, CallbackList, Evaluate, Loop,
                                           NonFiniteCheck)
from lottery_kd.training.errors import TrainingInterrupted
from lottery_kd.training.steps import (Distillation, TrainState, make_dense_gradient,
                                       make_eval_step, make_teacher_forward, make_train_step)
from lottery_kd.training.teacher_cache import TeacherLogitsCache

PyTree = Any


@dataclasses.dataclass
class FitResult:
    """What one training run produced (accuracies are fractions in [0, 1])."""

    state: TrainState
    masks: PyTree
    test_accuracy: float
    best_val_accuracy: Optional[float]
    test_accuracy_at_best_val: Optional[float]
    best_val_epoch: Optional[int]
    epochs: float
    steps: int
    seconds: float
    history: list[dict]


class Trainer:
    """Compiled steps for one model, data set and optimizer; `fit` runs the training loop."""

    def __init__(self, model: flax.linen.Module, data: InputData, *, batch_size: int,
                 momentum: float, weight_decay: float, distillation: Optional[Distillation],
                 parallel: Optional[DataParallel] = None, batch_norm: str = "global",
                 dense_model: Optional[flax.linen.Module] = None,
                 precision: str = precision_lib.FLOAT32):
        """`precision` (train.precision): the dtype every step computes in (training.precision);
        the state and the update are float32 either way."""
        if data.train.num_examples < batch_size:
            raise ValueError(f"train.batch_size={batch_size} is larger than the training set "
                             f"({data.train.num_examples} examples)")
        self.parallel = parallel or DataParallel.create()
        self.parallel.check_batch_size(batch_size, "train.batch_size")
        for split in (data.val, data.test):
            if split is not None:
                self.parallel.check_batch_size(split.batch_size, "data.eval_batch_size")
        self.model = model
        self.dense_model = dense_model or model  # for gradients needed at pruned weights too
        self.data = data
        self.batch_size = batch_size
        self.steps_per_epoch = data.train.num_examples // batch_size
        self.optimizer = optim.sgd_direction(momentum, weight_decay)
        common = dict(normalization=(data.mean, data.std), parallel=self.parallel,
                      batch_norm=batch_norm, precision=precision)
        self.train_step_ce = make_train_step(model, self.optimizer, None, **common)
        self.train_step_kd = (make_train_step(model, self.optimizer, distillation, **common)
                              if distillation is not None else None)
        self._eval_step = make_eval_step(model, data.mean, data.std, self.parallel, precision)
        self._distillation = distillation
        self._common = common
        self._dense_gradients: dict[bool, Callable] = {}
        self._from_logits: Optional[tuple[Callable, Callable]] = None

    def kd_from_logits(self) -> tuple[Callable, Callable]:
        """(teacher forward, KD train step fed the teacher's logits), compiled on first use: the
        two halves of train_step_kd for runs whose teacher logits are cached."""
        if self._from_logits is None:
            common = self._common
            self._from_logits = (
                make_teacher_forward(self.model, normalization=common["normalization"],
                                     parallel=self.parallel, precision=common["precision"]),
                make_train_step(self.model, self.optimizer, self._distillation,
                                teacher_input="logits", **common))
        return self._from_logits

    def teacher_logits(self, cache: TeacherLogitsCache, loop: Loop) -> jax.Array:
        """The teacher's logits on the loop's batch: the cache's, or computed and stored."""
        stored = cache.lookup(loop.global_step)
        if stored is not None:
            return jax.device_put(stored, self.parallel.batch)
        logits = self.kd_from_logits()[0](loop.teacher, loop.images)
        cache.store(loop.global_step, logits)
        return logits

    def dense_gradient(self, distill: bool) -> Callable:
        """The (compiled on first use) dense-gradient function for dynamic mask updates."""
        if distill not in self._dense_gradients:
            self._dense_gradients[distill] = make_dense_gradient(
                self.dense_model, self._distillation if distill else None, **self._common)
        return self._dense_gradients[distill]

    def init_state(self, params: PyTree, batch_stats: PyTree, masks: PyTree,
                   step: int = 0) -> TrainState:
        """A fresh optimizer state around masked params, positioned at schedule step `step`.

        The state owns fresh copies (the train step donates its input state, and the caller's
        snapshots must survive).
        """
        params = jax.device_get(masks_lib.apply(params, masks))
        state = TrainState(np.asarray(step, np.int32), params, jax.device_get(batch_stats),
                           jax.device_get(self.optimizer.init(params)))
        return self.parallel.replicate(state)

    def evaluate(self, params: PyTree, batch_stats: PyTree, masks: PyTree,
                 split: EvalInput) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on an evaluation input, in inference mode."""
        correct, nll = jnp.zeros((), jnp.int32), jnp.zeros(())
        for local in split.batches():
            images, labels, valid = self.parallel.shard(local, split.batch_size)
            batch_correct, batch_nll = self._eval_step(params, batch_stats, masks, images,
                                                       labels, valid)
            correct, nll = correct + batch_correct, nll + batch_nll
        count = split.num_examples
        return float(correct) / count, float(nll) / count

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The training batch at global `step` (pure in (seed, step))."""
        return self.data.train.batch(step, self.batch_size)

    def device_batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The global batch at `step`, sharded over the mesh from this process's rows."""
        return self.parallel.shard(self.batch(step), self.batch_size)

    def fit(self, state: TrainState, masks: PyTree, *, num_steps: int,
            schedule: optim.Schedule, teacher: Optional[PyTree] = None,
            kd_stop_step: Optional[int] = None,
            on_step: Optional[Mapping[int, Callable[[TrainState], None]]] = None,
            callbacks: Sequence[Callback] = (),
            teacher_cache: Optional[TeacherLogitsCache] = None) -> FitResult:
        """Train `num_steps` steps from `state.step`, evaluating at every epoch boundary.

        `schedule(global_step)` gives the learning rate; `teacher` switches the KD loss on (until
        global step `kd_stop_step`, the release's early-stopped KD); `on_step[s](state)` runs just
        before global step s (used to snapshot the rewind point). Every fit checks the loss is
        finite (NonFiniteLossError names the first bad step), evaluates at each epoch end and
        tracks the best validation accuracy and the test accuracy at that epoch; `callbacks`
        (see training.callbacks and its `standard_callbacks`) add resume checkpoints, stop
        requests (TrainingInterrupted), dynamic mask updates, progress and scalar logging.
        With `teacher_cache` the KD steps read the teacher's logits from it, computing and
        storing those it lacks (training.teacher_cache).
        """
        if teacher is not None and self.train_step_kd is None:
            raise ValueError("this Trainer was built without distillation settings")
        first = int(state.step)
        loop = Loop(self, state, self.parallel.replicate(masks),
                    self.parallel.replicate(teacher) if teacher is not None else None,
                    first=first, end=first + num_steps)
        cached = [teacher_cache] if teacher is not None and teacher_cache is not None else []
        hooks = CallbackList([NonFiniteCheck(), Evaluate(), BestValidation(), *callbacks,
                              *cached])
        hooks.on_resume(loop)
        loop.start, loop.began = int(loop.state.step), time.perf_counter()
        hooks.on_fit_start(loop)
        # One batch ahead: the host prepares step s+1 while the device runs step s (dispatch is
        # asynchronous), which keeps streamed inputs off the critical path.
        upcoming = self.device_batch(loop.start) if num_steps > 0 else None
        for global_step in range(loop.start, loop.end):
            if on_step and global_step in on_step:
                on_step[global_step](loop.state)
            distill = teacher is not None and (kd_stop_step is None or global_step < kd_stop_step)
            loop.begin_step(global_step, *upcoming, distill)
            hooks.on_step_begin(loop)
            step_fn, teacher_input = ((self.train_step_kd, loop.teacher) if distill
                                      else (self.train_step_ce, {}))
            if distill and cached:
                step_fn, teacher_input = (self.kd_from_logits()[1],
                                          self.teacher_logits(teacher_cache, loop))
            loop.lr = schedule(global_step)
            loop.state, metrics = step_fn(loop.state, loop.masks, loop.images, loop.labels,
                                          jnp.asarray(loop.lr, jnp.float32), teacher_input)
            if global_step + 1 < loop.end:
                upcoming = self.device_batch(global_step + 1)
            loop.pending.append(metrics)
            loop.mark_boundaries()
            hooks.on_step_end(loop)
            if loop.epoch_done or loop.checkpoint_due or loop.stopping:
                _boundary(loop, hooks)
        hooks.on_fit_end(loop)
        best_val, best_test, best_epoch = loop.best
        return FitResult(loop.state, loop.masks,
                         loop.history[-1]["test_accuracy"] if loop.history else float("nan"),
                         best_val, best_test, best_epoch, num_steps / self.steps_per_epoch,
                         num_steps, loop.seconds(), loop.history)


def _boundary(loop: Loop, hooks: Callback) -> None:
    """An epoch end, save point or stop: the metrics on the host and checked, the epoch's row
    made (and evaluated), the run saved, and a stop before the last step raised."""
    loop.pending = _host_metrics(loop.pending)
    hooks.on_metrics(loop)
    if loop.epoch_done:
        row = loop.close_epoch()
        hooks.on_epoch_end(loop, row)
        loop.history.append(row)
    if loop.checkpoint_due or loop.stopping:
        hooks.on_checkpoint(loop)
    if loop.stopping and loop.done < loop.end:
        raise TrainingInterrupted(loop.done)


def _host_metrics(metrics: list[dict]) -> list[dict]:
    """Per-step metrics as Python floats (exact float32 values, so they survive JSON)."""
    fetched = jax.device_get(metrics)
    return [{key: float(value) for key, value in m.items()} for m in fetched]
