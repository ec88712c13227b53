"""Training FLOPs of a run: what the masked dense step computes, and what skipping the pruned
weights would compute (RigL's accounting, Evci et al. 2020, appendix H).

Counted: the multiply-adds (2 FLOPs each) of every kernel, convolution and fully connected
(a ViT's patch embedding, query/key/value/out, MLP and head Dense layers included, each over its
tokens). Not counted: BatchNorm and LayerNorm, activations, residual additions, the loss and the
optimizer (a few per cent of a ResNet step), nor evaluation; nor a ViT's two products of
activations by activations in every attention (queries x keys and weights x values, 4 T^2 D
FLOPs per block and example for T tokens of width D, no weights to prune: 29.2 MFLOPs beside
vit_tiny's 346.2 counted, 8.4 %). Per training example, a layer of forward cost f at density d
costs

    dense-equivalent:  3 f       forward, input gradient, filter gradient, as the masked step runs
    sparse:            3 d f     each pass over the unpruned weights only

plus, with KD, one dense forward of the teacher (f per layer), and for RigL the dense filter
gradient (f - d f per layer) on every mask-update step, which grows by gradient. A ticket in
another basis (model.basis) has dense kernels in pixel space: its sparse count is its dense one.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from lottery_kd.models.basis import BasisModel
from lottery_kd.sparsity.masks import named_leaves


def layer_flops(model: Any, image_shape: Sequence[int]) -> dict[str, int]:
    """{kernel path: forward FLOPs per example} for every kernel of `model` (e.g.
    'stage1_block1/conv1/kernel'): 2 x the kernel's size x the output's spatial positions."""
    base = model.base if isinstance(model, BasisModel) else model
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda key: base.init(key, x, train=False), jax.random.key(0))
    _, state = jax.eval_shape(
        lambda v: base.apply(v, x, train=False, capture_intermediates=True,
                             mutable=["intermediates"]), variables)
    outputs = dict(named_leaves(state["intermediates"]))
    flops = {}
    for name, kernel in named_leaves(variables["params"]):
        if not name.endswith("kernel"):
            continue
        output = outputs.get(name[:-len("kernel")] + "__call__/[0]")
        if output is None:
            raise ValueError(f"{name}: no module output found to count its FLOPs")
        flops[name] = 2 * math.prod(kernel.shape) * math.prod(output.shape[1:-1])
    return flops


def layer_densities(flops: Mapping[str, int],
                    layer_counts: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The density of every kernel: remaining / total from a row's layer_counts, 1.0 for the
    kernels outside the pruning scope (they stay dense)."""
    return {name: (layer_counts[name][0] / layer_counts[name][1]
                   if name in layer_counts and layer_counts[name][1] else 1.0)
            for name in flops}


def train_flops(flops: Mapping[str, int], layer_counts: Mapping[str, Sequence[int]], *,
                steps: int, batch_size: int, teacher_steps: int = 0, dense_grad_steps: int = 0,
                basis: bool = False) -> dict[str, float]:
    """{"dense": ..., "sparse": ...}: the training FLOPs of a run of `steps` steps of
    `batch_size` examples (see the module docstring). `teacher_steps`: the steps with the KD
    loss (a dense teacher forward each); `dense_grad_steps`: RigL's mask-update steps, whose
    filter gradient is dense."""
    density = layer_densities(flops, layer_counts)
    forward = sum(flops.values())
    sparse_forward = forward if basis else sum(f * density[n] for n, f in flops.items())
    teacher = teacher_steps * batch_size * forward
    dense = steps * batch_size * 3 * forward + teacher
    sparse = steps * batch_size * 3 * sparse_forward + teacher
    sparse += dense_grad_steps * batch_size * (forward - sparse_forward)
    return {"dense": float(dense), "sparse": float(sparse)}


def steps_below(start_step: int, steps: int, stop: Optional[int]) -> int:
    """How many of the run's global steps [start_step, start_step + steps) lie before `stop`
    (None: all): the steps that distil when KD stops at kd.stop_epoch."""
    end = start_step + steps if stop is None else min(start_step + steps, stop)
    return max(0, end - start_step)


def rigl_update_steps(start_step: int, steps: int, delta_t: int, end_step: int) -> int:
    """How many of the run's steps update RigL's masks: 0 < step < end_step, step % delta_t == 0
    (sparsity.dynamic.MaskUpdate.due)."""
    if delta_t <= 0:
        return 0
    last = min(start_step + steps, end_step)
    return sum(1 for step in range(start_step, last) if step > 0 and step % delta_t == 0)


def row_flops(flops: Mapping[str, int], row: Mapping[str, Any], *, batch_size: int,
              kd_stop_step: Optional[int] = None, rigl: Optional[tuple[int, int]] = None,
              basis: bool = False) -> dict[str, float]:
    """{"train_flops_dense", "train_flops_sparse"} of a results row, from its layer_counts,
    start_step, steps and distill. `rigl`: (delta_t, end_step) when the row is a RigL run."""
    start, steps = row["start_step"], row["steps"]
    counted = train_flops(
        flops, row["layer_counts"], steps=steps, batch_size=batch_size,
        teacher_steps=steps_below(start, steps, kd_stop_step) if row["distill"] else 0,
        dense_grad_steps=rigl_update_steps(start, steps, *rigl) if rigl else 0, basis=basis)
    return {"train_flops_dense": counted["dense"], "train_flops_sparse": counted["sparse"]}
