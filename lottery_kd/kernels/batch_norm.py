"""Training-mode BatchNorm (+ residual + ReLU) on CPU through a native kernel (batch_norm_cpu.cc).

Why: XLA:CPU runs BatchNorm + ReLU of the CIFAR ResNets as ~8 passes over the activations per
layer; the kernel does it in two passes forward and two backward (see the .cc file). It covers
float32 channels-last activations with a multiple of 16 channels on a single CPU device;
lottery_kd.models.batch_norm uses it there for `model.norm_impl="fused"` and its own jnp code
elsewhere. Sums run over fixed row blocks, so results do not depend on the thread count.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.kernels import build

_SOURCE = "batch_norm_cpu.cc"
_TARGETS = (("lottery_kd_batch_norm_forward", "LotteryKdBatchNormForward"),
            ("lottery_kd_batch_norm_backward", "LotteryKdBatchNormBackward"))


def applies(y: jnp.ndarray) -> bool:
    """Whether the kernel covers y here (building it on the first call)."""
    return (y.dtype == jnp.float32 and y.ndim >= 2 and y.shape[-1] % 16 == 0 and y.size > 0
            and build.single_cpu_device() and build.load(_SOURCE, _TARGETS)[0])


def _stand_in(x: Optional[jnp.ndarray]) -> jnp.ndarray:
    return jnp.zeros((), jnp.float32) if x is None else x


def forward(y: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
            residual: Optional[jnp.ndarray], epsilon: float,
            relu: bool) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(relu)(batch_norm(y) + residual) -> (out, batch mean, batch variance (biased))."""
    channels = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
    call = jax.ffi.ffi_call("lottery_kd_batch_norm_forward",
                            (jax.ShapeDtypeStruct(y.shape, jnp.float32), channels, channels),
                            vmap_method="sequential")
    return call(y, scale, bias, _stand_in(residual), epsilon=np.float32(epsilon), relu=relu,
                has_residual=residual is not None)


def backward(g: jnp.ndarray, out: Optional[jnp.ndarray], y: jnp.ndarray, scale: jnp.ndarray,
             mean: jnp.ndarray, var: jnp.ndarray, g_mean: jnp.ndarray, g_var: jnp.ndarray,
             epsilon: float, relu: bool, has_residual: bool
             ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray]]:
    """Cotangents (dy, dscale, dbias, dresidual or None) of `forward` for the output cotangent g
    and the cotangents g_mean, g_var of its batch statistics; `out` (the forward output) is the
    ReLU mask, unused without the ReLU."""
    full = jax.ShapeDtypeStruct(y.shape, jnp.float32)
    channels = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
    call = jax.ffi.ffi_call(
        "lottery_kd_batch_norm_backward",
        (full, channels, channels, full if has_residual else jax.ShapeDtypeStruct((), jnp.float32)),
        vmap_method="sequential")
    dy, dscale, dbias, dresidual = call(g, _stand_in(out), y, scale, mean, var, g_mean, g_var,
                                        epsilon=np.float32(epsilon), relu=relu,
                                        has_residual=has_residual)
    return dy, dscale, dbias, dresidual if has_residual else None
