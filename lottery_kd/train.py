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

from lottery_kd import losses, masks as masks_lib, optim
from lottery_kd.data import Dataset
from lottery_kd.data.augment import DeviceSplit, normalize, train_batch

PyTree = Any


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
    """The training loss became NaN or Inf."""


def init_variables(model, rng: jax.Array, input_shape: Sequence[int]) -> tuple[PyTree, PyTree]:
    """(params, batch_stats) of a freshly initialised model for inputs of `input_shape` (HWC)."""
    variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, *input_shape)), train=False))(rng)
    return variables["params"], variables.get("batch_stats", {})


def make_train_step(model, optimizer: optax.GradientTransformation,
                    distillation: Optional[Distillation]) -> Callable:
    """jit(step(state, masks, images, labels, lr, teacher) -> (state, metrics)).

    `teacher` is {"params", "batch_stats"} of the teacher network (same architecture) and is only
    read when `distillation` is set; pass {} otherwise.
    """

    def step(state: TrainState, masks: PyTree, images: jax.Array, labels: jax.Array,
             lr: jax.Array, teacher: PyTree):
        def loss_fn(params):
            variables = {"params": masks_lib.apply(params, masks),
                         "batch_stats": state.batch_stats}
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
            if distillation is None:
                loss = losses.cross_entropy(logits, labels)
            else:
                teacher_logits = model.apply(teacher, images, train=False)
                loss = losses.kd_loss(logits, teacher_logits, labels,
                                      temperature=distillation.temperature,
                                      alpha=distillation.alpha,
                                      reduction=distillation.reduction)
            return loss, (logits, updates["batch_stats"])

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

    return jax.jit(step, donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """A split padded to whole evaluation batches: images [B, b, H, W, C], labels/valid [B, b]."""

    images: jax.Array
    labels: jax.Array
    valid: jax.Array
    size: int

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, batch_size: int) -> "EvalSplit":
        size = len(labels)
        batch_size = max(1, min(batch_size, size))
        num_batches = math.ceil(size / batch_size)
        pad = num_batches * batch_size - size
        padded_images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        padded_labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        valid = np.arange(num_batches * batch_size) < size
        reshape = lambda a: a.reshape(num_batches, batch_size, *a.shape[1:])  # noqa: E731
        return cls(jnp.asarray(reshape(padded_images)), jnp.asarray(reshape(padded_labels)),
                   jnp.asarray(reshape(valid)), size)


def make_evaluate(model) -> Callable:
    """jit(evaluate(params, batch_stats, masks, images, labels, valid, mean, std) -> (acc, loss))."""

    def evaluate(params, batch_stats, masks, images, labels, valid, mean, std):
        variables = {"params": masks_lib.apply(params, masks), "batch_stats": batch_stats}

        def one_batch(totals, batch):
            batch_images, batch_labels, batch_valid = batch
            logits = model.apply(variables, normalize(batch_images, mean, std), train=False)
            log_probs = jax.nn.log_softmax(logits)
            nll = -jnp.take_along_axis(log_probs, batch_labels[:, None], axis=-1)[:, 0]
            correct = (jnp.argmax(logits, -1) == batch_labels) & batch_valid
            return (totals[0] + jnp.sum(correct), totals[1] + jnp.sum(nll * batch_valid)), None

        (correct, nll), _ = jax.lax.scan(one_batch, (jnp.zeros((), jnp.int32), jnp.zeros(())),
                                         (images, labels, valid))
        count = jnp.sum(valid)
        return correct / count, nll / count

    return jax.jit(evaluate)


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """A Dataset placed on device for training (train) and evaluation (val, test)."""

    train: DeviceSplit
    val: Optional[EvalSplit]
    test: EvalSplit
    mean: jax.Array
    std: jax.Array
    augment: bool
    image_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def from_dataset(cls, dataset: Dataset, eval_batch_size: int = 1000) -> "DeviceData":
        val = (EvalSplit.from_numpy(dataset.val_images, dataset.val_labels, eval_batch_size)
               if len(dataset.val_labels) else None)
        return cls(DeviceSplit.from_numpy(dataset.train_images, dataset.train_labels), val,
                   EvalSplit.from_numpy(dataset.test_images, dataset.test_labels, eval_batch_size),
                   jnp.asarray(dataset.mean, jnp.float32), jnp.asarray(dataset.std, jnp.float32),
                   dataset.augment, tuple(dataset.train_images.shape[1:]), dataset.num_classes)


@dataclasses.dataclass
class FitResult:
    """What one training run produced (accuracies are fractions in [0, 1])."""

    state: TrainState
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

    def __init__(self, model, data: DeviceData, *, batch_size: int, momentum: float,
                 weight_decay: float, distillation: Optional[Distillation], seed: int):
        if data.train.size < batch_size:
            raise ValueError(f"train.batch_size={batch_size} is larger than the training set "
                             f"({data.train.size} examples)")
        self.model = model
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = data.train.size // batch_size
        self.optimizer = optim.sgd_direction(momentum, weight_decay)
        self.train_step_ce = make_train_step(model, self.optimizer, None)
        self.train_step_kd = (make_train_step(model, self.optimizer, distillation)
                              if distillation is not None else None)
        self._evaluate = make_evaluate(model)

    def init_state(self, params: PyTree, batch_stats: PyTree, masks: PyTree,
                   step: int = 0) -> TrainState:
        """A fresh optimizer state around masked params, positioned at schedule step `step`.

        The state owns fresh copies (the train step donates its input state, and the caller's
        snapshots must survive).
        """
        params = masks_lib.apply(params, masks)
        batch_stats = jax.tree.map(jnp.copy, batch_stats)
        return TrainState(jnp.asarray(step, jnp.int32), params, batch_stats,
                          self.optimizer.init(params))

    def evaluate(self, params: PyTree, batch_stats: PyTree, masks: PyTree,
                 split: EvalSplit) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) on a split, in inference mode."""
        accuracy, loss = self._evaluate(params, batch_stats, masks, split.images, split.labels,
                                        split.valid, self.data.mean, self.data.std)
        return float(accuracy), float(loss)

    def batch(self, step: int) -> tuple[jax.Array, jax.Array]:
        """The training batch at global `step` (pure in (seed, step))."""
        return train_batch(self.data.train.images, self.data.train.labels,
                           jnp.asarray(self.seed, jnp.uint32), jnp.asarray(step, jnp.int32),
                           self.data.mean, self.data.std, batch_size=self.batch_size,
                           augment=self.data.augment)

    def fit(self, state: TrainState, masks: PyTree, *, num_steps: int,
            schedule: optim.Schedule, teacher: Optional[PyTree] = None,
            kd_stop_step: Optional[int] = None,
            on_step: Mapping[int, Callable[[TrainState], None]] = {},  # noqa: B006 (read only)
            progress: Optional["Progress"] = None,
            log_scalars: Optional[Callable[[int, dict], None]] = None) -> FitResult:
        """Train `num_steps` steps from `state.step`, evaluating at every epoch boundary.

        `schedule(global_step)` gives the learning rate; `teacher` switches the KD loss on (until
        global step `kd_stop_step`, the release's early-stopped KD); `on_step[s](state)` runs just
        before global step s (used to snapshot the rewind point). Tracks the best validation
        accuracy and the test accuracy at that epoch.
        """
        start = int(state.step)
        end = start + num_steps
        if teacher is not None and self.train_step_kd is None:
            raise ValueError("this Trainer was built without distillation settings")
        began = time.perf_counter()
        history: list[dict] = []
        best_val = best_test = best_epoch = None
        pending: list[dict] = []
        if progress is not None:
            progress.start(num_steps)
        for global_step in range(start, end):
            if global_step in on_step:
                on_step[global_step](state)
            images, labels = self.batch(global_step)
            distill = teacher is not None and (kd_stop_step is None or global_step < kd_stop_step)
            step_fn = self.train_step_kd if distill else self.train_step_ce
            lr = schedule(global_step)
            state, metrics = step_fn(state, masks, images, labels, jnp.asarray(lr, jnp.float32),
                                     teacher if distill else {})
            pending.append(metrics)
            epoch_done = (global_step + 1) % self.steps_per_epoch == 0 or global_step + 1 == end
            if progress is not None:
                progress.advance(1)
            if not epoch_done:
                continue
            train_metrics = _mean_metrics(pending)
            pending = []
            if not all(math.isfinite(v) for v in train_metrics.values()):
                raise NonFiniteLossError(
                    f"non-finite training loss/gradient ({train_metrics}) before global step "
                    f"{global_step + 1}; lower train.lr or check the data")
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
            if log_scalars is not None:
                log_scalars(global_step + 1, row)
        if progress is not None:
            progress.close()
        return FitResult(state, history[-1]["test_accuracy"] if history else float("nan"),
                         best_val, best_test, best_epoch,
                         num_steps / self.steps_per_epoch, num_steps,
                         time.perf_counter() - began, history)


def _mean_metrics(metrics: list[dict]) -> dict[str, float]:
    stacked = jax.device_get(metrics)
    return {key: float(np.mean([m[key] for m in stacked])) for key in stacked[0]}


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

    def start(self, total: int) -> None:
        self._total, self._done, self._began = total, 0, time.perf_counter()
        if self.use_bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, desc=self.description, file=self.stream, leave=False,
                             unit="step", dynamic_ncols=True)

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
