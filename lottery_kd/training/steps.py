"""The jitted training arithmetic: TrainState, the training loss, the train, eval and
dense-gradient steps.

`make_train_step` builds one pure step: forward with params * masks, CE or KD loss (the teacher in
inference mode on the same augmented batch, no gradient), masked SGD update after which pruned
weights are exactly 0.0. The learning rate is an argument, so one compiled step serves every retrain
whatever schedule step it enters at. The loop that calls these steps is training.trainer.
`precision` (train.precision, training.precision) is the dtype the network computes in; the
state, the update and the losses are float32 either way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from lottery_kd.data.augment import normalize
from lottery_kd.runtime.parallel import BATCH_NORM_MODES, DataParallel
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.training import losses, precision as precision_lib

PyTree = Any
TEACHER_INPUTS: tuple[str, ...] = ("params", "logits")  # what a KD step's `teacher` argument is


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
                   parallel: Optional[DataParallel], batch_norm: str,
                   precision: str = precision_lib.FLOAT32,
                   teacher_input: str = "params") -> Callable:
    """loss(weights, batch_stats, images, labels, teacher) -> (loss, (logits, new batch_stats)):
    the training-mode loss (CE, or KD from the teacher in inference mode) at `weights`, with
    BatchNorm statistics over the global batch or per device. The student's and the teacher's
    weights and the images are cast to `precision`'s compute dtype here (batch statistics stay
    float32); the logits are float32 before the loss. teacher_input="logits": `teacher` is the
    teacher's float32 logits on this batch (make_teacher_forward's, e.g. from a cache)."""
    if teacher_input not in TEACHER_INPUTS:
        raise ValueError(f"teacher_input={teacher_input!r}; allowed: {', '.join(TEACHER_INPUTS)}")
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"parallel.batch_norm={batch_norm!r}; allowed: "
                         f"{', '.join(BATCH_NORM_MODES)}")
    precision_lib.check(precision)
    groups = parallel.batch_norm_groups(batch_norm) if parallel is not None else 1
    compute = functools.partial(precision_lib.to_compute, precision=precision)

    def loss(weights, batch_stats, images, labels, teacher):
        variables = {"params": compute(weights), "batch_stats": batch_stats}
        images = compute(images)
        if groups > 1:
            logits, updates = _apply_per_device(model, variables, images, groups)
        else:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        logits = precision_lib.to_float32(logits)
        if distillation is None:
            value = losses.cross_entropy(logits, labels)
        else:
            teacher_logits = teacher if teacher_input == "logits" \
                else _teacher_logits(model, teacher, images, compute)
            value = losses.kd_loss(logits, teacher_logits, labels,
                                   temperature=distillation.temperature,
                                   alpha=distillation.alpha, reduction=distillation.reduction)
        return value, (logits, updates["batch_stats"])

    return loss


def _teacher_logits(model, teacher: PyTree, images: jax.Array, compute: Callable) -> jax.Array:
    """The teacher's float32 logits in inference mode on normalised `images` (already cast)."""
    teacher = {**teacher, "params": compute(teacher["params"])}
    return precision_lib.to_float32(model.apply(teacher, images, train=False))


def make_teacher_forward(model: flax.linen.Module, *,
                         normalization: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                         parallel: Optional[DataParallel] = None,
                         precision: str = precision_lib.FLOAT32) -> Callable:
    """jit(forward(teacher, images) -> float32 logits): the KD teacher's output on a training
    batch as the train step computes it (normalised, in `precision`), on its own, so that the
    logits can be stored once and fed to every KD run on the same batches
    (training.teacher_cache; make_train_step(teacher_input="logits"))."""
    compute = functools.partial(precision_lib.to_compute, precision=precision)

    def forward(teacher, images):
        if normalization is not None:
            images = normalize(images, *normalization)
        return _teacher_logits(model, teacher, compute(images), compute)

    if parallel is None:
        return jax.jit(forward)
    return jax.jit(forward, in_shardings=(parallel.replicated, parallel.batch),
                   out_shardings=parallel.batch)


def make_dense_gradient(model: flax.linen.Module, distillation: Optional[Distillation], *,
                        normalization: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                        parallel: Optional[DataParallel] = None,
                        batch_norm: str = "global",
                        precision: str = precision_lib.FLOAT32) -> Callable:
    """jit(grad(params, batch_stats, masks, images, labels, teacher) -> grads): the gradient of
    the training loss with respect to the masked weights, pruned positions included (what RigL
    grows by), in `precision` as the train step (float32 gradients). Nothing is updated."""
    loss_of = _training_loss(model, distillation, parallel, batch_norm, precision)

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
                    batch_norm: str = "global",
                    precision: str = precision_lib.FLOAT32,
                    teacher_input: str = "params") -> Callable:
    """jit(step(state, masks, images, labels, lr, teacher) -> (state, metrics)).

    `teacher` is {"params", "batch_stats"} of the teacher network (same architecture) and is only
    read when `distillation` is set; pass {} otherwise. With `normalization=(mean, std)` the step
    takes uint8 images and normalises them itself. With `parallel`, the step runs over its mesh:
    state, masks, lr and teacher replicated, images and labels sharded on the batch axis; the loss
    is the global-batch mean (so gradients are averaged over devices) and BatchNorm statistics
    are global, or per device with batch_norm="per_device". `precision` (training.precision):
    the dtype the student and the teacher compute in; params, optimizer state, the update and
    the loss are float32 whatever it is. teacher_input="logits": `teacher` is the teacher's
    logits on this batch (make_teacher_forward's), sharded like the labels.
    """
    loss_of = _training_loss(model, distillation, parallel, batch_norm, precision, teacher_input)

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
    teacher_sharding = batch if teacher_input == "logits" else replicated
    return jax.jit(step, donate_argnums=(0,),
                   in_shardings=(replicated, replicated, batch, batch, replicated,
                                 teacher_sharding),
                   out_shardings=(replicated, replicated))


def make_eval_step(model: flax.linen.Module, mean: Sequence[float], std: Sequence[float],
                   parallel: Optional[DataParallel] = None,
                   precision: str = precision_lib.FLOAT32) -> Callable:
    """jit(eval_step(params, batch_stats, masks, images, labels, valid) -> (correct, nll_sum)).

    Inference mode (BatchNorm running statistics) on masked params, computing in `precision` as
    the train step does (the NLL in float32); padding rows (valid=False) count for nothing. With
    `parallel` the batch is sharded over its mesh.
    """
    compute = functools.partial(precision_lib.to_compute, precision=precision)

    def eval_step(params, batch_stats, masks, images, labels, valid):
        variables = {"params": compute(masks_lib.apply(params, masks)),
                     "batch_stats": batch_stats}
        logits = precision_lib.to_float32(
            model.apply(variables, compute(normalize(images, mean, std)), train=False))
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(correct), jnp.sum(jnp.where(valid, nll, 0.0))

    if parallel is None:
        return jax.jit(eval_step)
    replicated, batch = parallel.replicated, parallel.batch
    return jax.jit(eval_step, in_shardings=(replicated,) * 3 + (batch,) * 3,
                   out_shardings=replicated)
