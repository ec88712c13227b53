"""TrainState, the jitted train and eval steps, and the epoch loop.

`make_train_step` builds one pure step: forward with params * masks, CE or KD loss (the teacher in
inference mode on the same augmented batch, no gradient), masked SGD update after which pruned
weights are exactly 0.0. The learning rate is an argument, so one compiled step serves every retrain
whatever schedule step it enters at.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery_kd import dynamic, losses, masks as masks_lib, optim
from lottery_kd.data.augment import normalize
from lottery_kd.data.inputs import EvalInput, InputData
from lottery_kd.checkpoints import CheckpointError, ResumeStore
from lottery_kd.parallel import BATCH_NORM_MODES, DataParallel

PyTree = Any
# With several processes a stop request (SIGTERM reaches each worker at its own moment) is
# agreed every this many steps, and at epoch ends and checkpoints: an all-gather of one flag,
# so no process enters a collective checkpoint save while another runs the next step.
STOP_POLL_STEPS = 10


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `step` is the global schedule step."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree


@dataclasses.dataclass(frozen=True)
class Distillation:
    """KD loss settings (contract: distillation)."""

    temperature: float
    alpha: float
    reduction: str = "batchmean"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf (`step` is the first global step where it did)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT); a resume checkpoint at `step` was saved (step None:
    the stop came between two runs, and every finished run is saved)."""

    def __init__(self, step: Optional[int], where: str = ""):
        at = f"at global step {step}" if step is not None else "(every finished run is saved)"
        super().__init__(f"stopped {where + ' ' if where else ''}{at}")
        self.step = step
        self.where = where


def init_variables(model: flax.linen.Module, rng: jax.Array,
                   input_shape: Sequence[int]) -> tuple[PyTree, PyTree]:
    """(params, batch_stats) of a freshly initialised model for inputs of `input_shape` (HWC)."""
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, *input_shape)), train=False))(rng)
    return variables["params"], variables.get("batch_stats", {})


def _apply_per_device(model, variables: PyTree, images: jax.Array, groups: int):
    """Training-mode forward with BatchNorm statistics per group of the batch (one group per
    device), running statistics averaged over groups, as a pmap without cross-replica BN."""
    grouped = images.reshape(groups, images.shape[0] // groups, *images.shape[1:])
    logits, updates = jax.vmap(
        lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"]))(grouped)
    batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), updates["batch_stats"])
    return logits.reshape(images.shape[0], -1), {"batch_stats": batch_stats}


def _training_loss(model, distillation: Optional[Distillation],
                   parallel: Optional[DataParallel], batch_norm: str) -> Callable:
    """loss(weights, batch_stats, images, labels, teacher) -> (loss, (logits, new batch_stats)):
    the training-mode loss (CE, or KD from the teacher in inference mode) at `weights`, with
    BatchNorm statistics over the global batch or per device."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"parallel.batch_norm={batch_norm!r}; allowed: "
                         f"{', '.join(BATCH_NORM_MODES)}")
    groups = parallel.batch_norm_groups(batch_norm) if parallel is not None else 1

    def loss(weights, batch_stats, images, labels, teacher):
        variables = {"params": weights, "batch_stats": batch_stats}
        if groups > 1:
            logits, updates = _apply_per_device(model, variables, images, groups)
        else:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        if distillation is None:
            value = losses.cross_entropy(logits, labels)
        else:
            teacher_logits = model.apply(teacher, images, train=False)
            value = losses.kd_loss(logits, teacher_logits, labels,
                                   temperature=distillation.temperature,
                                   alpha=distillation.alpha, reduction=distillation.reduction)
        return value, (logits, updates["batch_stats"])

    return loss


def make_dense_gradient(model: flax.linen.Module, distillation: Optional[Distillation], *,
                        normalization: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                        parallel: Optional[DataParallel] = None,
                        batch_norm: str = "global") -> Callable:
    """jit(grad(params, batch_stats, masks, images, labels, teacher) -> grads): the gradient of
    the training loss with respect to the masked weights, pruned positions included (what RigL
    grows by). Nothing is updated."""
    loss_of = _training_loss(model, distillation, parallel, batch_norm)

    def dense_gradient(params, batch_stats, masks, images, labels, teacher):
        if normalization is not None:
            images = normalize(images, *normalization)
        return jax.grad(lambda w: loss_of(w, batch_stats, images, labels, teacher)[0])(
            masks_lib.apply(params, masks))

    if parallel is None:
        return jax.jit(dense_gradient)
    replicated, batch = parallel.replicated, parallel.batch
    return jax.jit(dense_gradient, in_shardings=(replicated,) * 3 + (batch, batch, replicated),
                   out_shardings=replicated)


def make_train_step(model: flax.linen.Module, optimizer: optax.GradientTransformation,
                    distillation: Optional[Distillation], *,
                    normalization: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                    parallel: Optional[DataParallel] = None,
                    batch_norm: str = "global") -> Callable:
    """jit(step(state, masks, images, labels, lr, teacher) -> (state, metrics)).

    `teacher` is {"params", "batch_stats"} of the teacher network (same architecture) and is only
    read when `distillation` is set; pass {} otherwise. With `normalization=(mean, std)` the step
    takes uint8 images and normalises them itself. With `parallel`, the step runs over its mesh:
    state, masks, lr and teacher replicated, images and labels sharded on the batch axis; the loss
    is the global-batch mean (so gradients are averaged over devices) and BatchNorm statistics
    are global, or per device with batch_norm="per_device".
    """
    loss_of = _training_loss(model, distillation, parallel, batch_norm)

    def step(state: TrainState, masks: PyTree, images: jax.Array, labels: jax.Array,
             lr: jax.Array, teacher: PyTree):
        if normalization is not None:
            images = normalize(images, *normalization)

        def loss_fn(params):
            return loss_of(masks_lib.apply(params, masks), state.batch_stats, images, labels,
                           teacher)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
        # Pruned weights have zero gradient and zero weight decay; the select makes them exactly
        # 0.0 whatever the optimizer state holds.
        params = jax.tree.map(lambda p, d, m: jnp.where(m, p - lr * d, jnp.zeros((), p.dtype)),
                              state.params, direction, masks)
        metrics = {"loss": loss,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                   "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    if parallel is None:
        return jax.jit(step, donate_argnums=(0,))
    replicated, batch = parallel.replicated, parallel.batch
    return jax.jit(step, donate_argnums=(0,),
                   in_shardings=(replicated, replicated, batch, batch, replicated, replicated),
                   out_shardings=(replicated, replicated))


def make_eval_step(model: flax.linen.Module, mean: Sequence[float], std: Sequence[float],
                   parallel: Optional[DataParallel] = None) -> Callable:
    """jit(eval_step(params, batch_stats, masks, images, labels, valid) -> (correct, nll_sum)).

    Inference mode (BatchNorm running statistics) on masked params; padding rows (valid=False)
    count for nothing. With `parallel` the batch is sharded over its mesh.
    """

    def eval_step(params, batch_stats, masks, images, labels, valid):
        variables = {"params": masks_lib.apply(params, masks), "batch_stats": batch_stats}
        logits = model.apply(variables, normalize(images, mean, std), train=False)
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(correct), jnp.sum(jnp.where(valid, nll, 0.0))

    if parallel is None:
        return jax.jit(eval_step)
    replicated, batch = parallel.replicated, parallel.batch
    return jax.jit(eval_step, in_shardings=(replicated,) * 3 + (batch,) * 3,
                   out_shardings=replicated)


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
    """Compiled steps for one model, data set and optimizer; `fit` runs the epoch loop."""

    def __init__(self, model: flax.linen.Module, data: InputData, *, batch_size: int,
                 momentum: float, weight_decay: float, distillation: Optional[Distillation],
                 parallel: Optional[DataParallel] = None, batch_norm: str = "global"):
        if data.train.num_examples < batch_size:
            raise ValueError(f"train.batch_size={batch_size} is larger than the training set "
                             f"({data.train.num_examples} examples)")
        self.parallel = parallel or DataParallel.create()
        self.parallel.check_batch_size(batch_size, "train.batch_size")
        for split in (data.val, data.test):
            if split is not None:
                self.parallel.check_batch_size(split.batch_size, "data.eval_batch_size")
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.steps_per_epoch = data.train.num_examples // batch_size
        self.optimizer = optim.sgd_direction(momentum, weight_decay)
        common = dict(normalization=(data.mean, data.std), parallel=self.parallel,
                      batch_norm=batch_norm)
        self.train_step_ce = make_train_step(model, self.optimizer, None, **common)
        self.train_step_kd = (make_train_step(model, self.optimizer, distillation, **common)
                              if distillation is not None else None)
        self._eval_step = make_eval_step(model, data.mean, data.std, self.parallel)
        self._distillation = distillation
        self._common = common
        self._dense_gradients: dict[bool, Callable] = {}

    def dense_gradient(self, distill: bool) -> Callable:
        """The (compiled on first use) dense-gradient function for dynamic mask updates."""
        if distill not in self._dense_gradients:
            self._dense_gradients[distill] = make_dense_gradient(
                self.model, self._distillation if distill else None, **self._common)
        return self._dense_gradients[distill]

    def _update_masks(self, update: dynamic.MaskUpdate, step: int, state: TrainState,
                      masks: PyTree, images, labels, teacher: Optional[PyTree]):
        """A dynamic sparse update before global `step`: new masks, dropped weights zeroed,
        grown weights at 0.0 with fresh momentum."""
        grads = self.dense_gradient(teacher is not None)(state.params, state.batch_stats, masks,
                                                         images, labels, teacher or {})
        new_masks = update.new_masks(step, state.params, masks, grads)
        params, opt_state = dynamic.reset_grown(self.optimizer, state.opt_state, state.params,
                                                masks, new_masks)
        return (self.parallel.replicate(state.replace(params=params, opt_state=opt_state)),
                self.parallel.replicate(new_masks))

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
            on_step: Mapping[int, Callable[[TrainState], None]] = {},  # noqa: B006 (read only)
            progress: Optional["Progress"] = None,
            log_scalars: Optional[Callable[[int, dict], None]] = None,
            resume: Optional[ResumeStore] = None, checkpoint_every: int = 0,
            stop_requested: Callable[[], bool] = lambda: False,
            mask_update: Optional[dynamic.MaskUpdate] = None) -> FitResult:
        """Train `num_steps` steps from `state.step`, evaluating at every epoch boundary.

        `schedule(global_step)` gives the learning rate; `teacher` switches the KD loss on (until
        global step `kd_stop_step`, the release's early-stopped KD); `on_step[s](state)` runs just
        before global step s (used to snapshot the rewind point). Tracks the best validation
        accuracy and the test accuracy at that epoch.

        With `resume`, training continues from its newest readable checkpoint, and the whole
        training state is saved there every `checkpoint_every` steps (0: every epoch), at the end,
        and when `stop_requested()` turns true (then TrainingInterrupted is raised). The batch at
        a step is a pure function of the step, so a resumed run ends bitwise equal to an
        uninterrupted one. A non-finite loss raises NonFiniteLossError naming the step; nothing is
        saved after it.

        With `mask_update` (dynamic sparse training) the masks change during training: before
        every step it says is due, its method replaces them at a constant active count.
        """
        first = int(state.step)
        end = first + num_steps
        if teacher is not None and self.train_step_kd is None:
            raise ValueError("this Trainer was built without distillation settings")
        masks = self.parallel.replicate(masks)
        teacher = self.parallel.replicate(teacher) if teacher is not None else None
        history: list[dict] = []
        best_val = best_test = best_epoch = None
        pending: list[dict] = []
        seconds_before = 0.0
        if resume is not None:
            restored = resume.restore_latest({"state": state, "masks": masks},
                                             self.parallel.replicated)
            if restored is not None:
                tree, meta = restored
                if mask_update is None and not all(np.array_equal(a, b) for a, b in zip(
                        jax.tree.leaves(jax.device_get(tree["masks"])),
                        jax.tree.leaves(jax.device_get(masks)))):
                    raise CheckpointError(f"resume checkpoint in {resume.directory} was made "
                                          "with other masks than this run's")
                state, masks = tree["state"], tree["masks"]
                history, pending = meta["history"], meta["pending"]
                best_val, best_test, best_epoch = meta["best"]
                seconds_before = meta["seconds"]
        start = int(state.step)
        every = checkpoint_every or self.steps_per_epoch
        began = time.perf_counter()

        def save_resume(at_step: int) -> None:
            if resume is None:
                return
            meta = {"history": history, "pending": pending,
                    "best": [best_val, best_test, best_epoch],
                    "seconds": seconds_before + time.perf_counter() - began}
            resume.save(at_step, {"state": state, "masks": masks}, meta)

        # Wall time and steps since the previous epoch end (or this process's first step) for
        # log_scalars only: history stays a pure function of the run, so resumes match.
        last_epoch_end = (start, began)
        if progress is not None:
            progress.start(end - first, done=start - first)
        # One batch ahead: the host prepares step s+1 while the device runs step s (dispatch is
        # asynchronous), which keeps streamed inputs off the critical path.
        upcoming = self.device_batch(start) if num_steps > 0 else None
        multi_process, local_stop = self.parallel.process_count > 1, False
        for global_step in range(start, end):
            if global_step in on_step:
                on_step[global_step](state)
            images, labels = upcoming
            distill = teacher is not None and (kd_stop_step is None or global_step < kd_stop_step)
            if mask_update is not None and mask_update.due(global_step):
                state, masks = self._update_masks(mask_update, global_step, state, masks, images,
                                                  labels, teacher if distill else None)
            step_fn = self.train_step_kd if distill else self.train_step_ce
            lr = schedule(global_step)
            state, metrics = step_fn(state, masks, images, labels, jnp.asarray(lr, jnp.float32),
                                     teacher if distill else {})
            if global_step + 1 < end:
                upcoming = self.device_batch(global_step + 1)
            pending.append(metrics)
            done_steps = global_step + 1
            epoch_done = done_steps % self.steps_per_epoch == 0 or done_steps == end
            checkpoint_due = done_steps % every == 0 or done_steps == end
            stopping = stop_requested()
            if multi_process:  # a stop (a signal to one worker) is acted on by all, together
                local_stop = local_stop or stopping
                stopping = ((done_steps % STOP_POLL_STEPS == 0 or epoch_done or checkpoint_due)
                            and self.parallel.any_process(local_stop))
            if progress is not None:
                progress.advance(1)
            if not (epoch_done or checkpoint_due or stopping):
                continue
            pending = _host_metrics(pending)
            _check_finite(pending, done_steps - len(pending))
            if not epoch_done:
                if checkpoint_due or stopping:
                    save_resume(done_steps)
                if stopping:
                    raise TrainingInterrupted(done_steps)
                continue
            train_metrics = {key: float(np.mean([m[key] for m in pending]))
                             for key in pending[0]}
            pending = []
            epoch = (global_step + 1) / self.steps_per_epoch
            row = {"step": global_step + 1, "epoch": epoch, "lr": float(lr),
                   "distill": distill, **{f"train_{k}": v for k, v in train_metrics.items()}}
            test_accuracy, test_loss = self.evaluate(state.params, state.batch_stats, masks,
                                                     self.data.test)
            row.update(test_accuracy=test_accuracy, test_loss=test_loss)
            if self.data.val is not None:
                val_accuracy, val_loss = self.evaluate(state.params, state.batch_stats, masks,
                                                       self.data.val)
                row.update(val_accuracy=val_accuracy, val_loss=val_loss)
                if best_val is None or val_accuracy > best_val:
                    best_val, best_test, best_epoch = val_accuracy, test_accuracy, epoch
            history.append(row)
            if progress is not None:
                progress.epoch_end(row)
            now = time.perf_counter()
            timing = {"epoch_seconds": now - last_epoch_end[1],
                      "epoch_steps": done_steps - last_epoch_end[0]}
            last_epoch_end = (done_steps, now)
            if log_scalars is not None:
                log_scalars(global_step + 1, {**row, **timing})
            if checkpoint_due or stopping:
                save_resume(done_steps)
            if stopping and done_steps < end:
                raise TrainingInterrupted(done_steps)
        if progress is not None:
            progress.close()
        return FitResult(state, masks, history[-1]["test_accuracy"] if history else float("nan"),
                         best_val, best_test, best_epoch,
                         num_steps / self.steps_per_epoch, num_steps,
                         seconds_before + time.perf_counter() - began, history)


def _host_metrics(metrics: list[dict]) -> list[dict]:
    """Per-step metrics as Python floats (exact float32 values, so they survive JSON)."""
    fetched = jax.device_get(metrics)
    return [{key: float(value) for key, value in m.items()} for m in fetched]


def _check_finite(metrics: list[dict], first_step: int) -> None:
    for offset, m in enumerate(metrics):
        if not all(math.isfinite(v) for v in m.values()):
            raise NonFiniteLossError(
                f"non-finite training loss or gradient at global step {first_step + offset} "
                f"({m}); lower train.lr or check the data", first_step + offset)


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (CI logs, nohup)."""

    def __init__(self, description: str, *, enabled: Optional[bool] = None, stream=None):
        self.description = description
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if enabled is None else enabled
        self._bar = None
        self._total = 0
        self._done = 0
        self._began = 0.0

    @classmethod
    def for_mode(cls, description: str, mode: str) -> "Progress":
        """A Progress for config.log.progress: 'bar', 'lines', or 'auto' (bar on a terminal)."""
        return cls(description, enabled=None if mode == "auto" else mode == "bar")

    def start(self, total: int, done: int = 0) -> None:
        self._total, self._done, self._began = total, done, time.perf_counter()
        if self.use_bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=done, desc=self.description, file=self.stream,
                             leave=False, unit="step", dynamic_ncols=True)

    def advance(self, steps: int) -> None:
        self._done += steps
        if self._bar is not None:
            self._bar.update(steps)

    def epoch_end(self, row: dict) -> None:
        fields = {"loss": f"{row['train_loss']:.3f}", "train": f"{row['train_accuracy']:.3f}",
                  "test": f"{row['test_accuracy']:.3f}", "lr": f"{row['lr']:.3g}"}
        if "val_accuracy" in row:
            fields["val"] = f"{row['val_accuracy']:.3f}"
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=True)
        else:
            elapsed = time.perf_counter() - self._began
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            print(f"{self.description} epoch {row['epoch']:.4g} step {self._done}/{self._total} "
                  f"{text} ({elapsed:.0f}s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
