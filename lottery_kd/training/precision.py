"""train.precision: the dtype the network computes in, decided in one place.

"float32" (the default, and every run before the key existed): nothing is cast; the steps are
bit for bit what they were (benchmarks/step_fingerprint checks it). "bfloat16": mixed precision.
Parameters, optimizer state, BatchNorm running statistics and the masked update stay float32
(the master copy); inside the loss the masked weights, the teacher's weights and the normalised
images are cast to bfloat16, so the forward and backward passes run in bfloat16 and the gradient
comes back float32 through the cast. The logits are cast to float32 before any softmax, so the
cross-entropy and KD terms (and eval's NLL) are float32. Pruned weights stay exactly 0.0 (0.0 is
exact in bfloat16, and the update's select is float32). BatchNorm computes its batch mean and
variance in float32 (models.batch_norm, and Flax's BatchNorm upcasts its reductions) and
normalises in float32 before casting its output back to bfloat16.

The native CPU kernels (kernels.conv3x3, kernels.sparse_conv, kernels.batch_norm) are
float32-only: in bfloat16 model.conv_impl='auto' runs XLA's convolution (conv_impl_for),
'native' and 'sparse' are refused by config validation, and the fused BatchNorm runs its jnp
math. On CPU that is correct but slow (XLA:CPU has no fast bfloat16 convolution); bfloat16 is
for accelerators.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
FLOAT32, BFLOAT16 = "float32", "bfloat16"
PRECISIONS: tuple[str, ...] = (FLOAT32, BFLOAT16)
# conv_impl values whose kernels are float32-only (refused with bfloat16)
FLOAT32_ONLY_CONV_IMPLS: tuple[str, ...] = ("native", "sparse")


def check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is invalid: allowed: "
                         f"{', '.join(PRECISIONS)}")


def compute_dtype(precision: str) -> jnp.dtype:
    """The dtype the forward and backward passes run in."""
    check(precision)
    return jnp.dtype(jnp.bfloat16 if precision == BFLOAT16 else jnp.float32)


def to_compute(tree: PyTree, precision: str) -> PyTree:
    """`tree` (weights, a teacher's variables, images) with its floating leaves in the compute
    dtype. float32: `tree` itself, untouched (no op is added to the step)."""
    dtype = compute_dtype(precision)
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree)


def to_float32(logits: jax.Array) -> jax.Array:
    """Logits as float32, for the softmax, losses and metrics (a no-op on float32 logits)."""
    return logits.astype(jnp.float32)


def conv_impl_for(conv_impl: str, precision: str) -> str:
    """The model.conv_impl the model is built with: 'auto' is XLA's convolution in bfloat16 (the
    native kernels are float32-only); every other value as given (validation refuses
    native/sparse with bfloat16)."""
    check(precision)
    auto = conv_impl in ("auto", "auto-xla-shortcuts")  # the latter: resumed, conv3x3.CONV_ROUTING
    return "xla" if precision == BFLOAT16 and auto else conv_impl
