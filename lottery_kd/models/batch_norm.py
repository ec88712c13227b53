"""BatchNorm with the residual add and the ReLU fused in, and a hand-written backward pass.

Why: with flax.linen.BatchNorm followed by a ReLU, XLA:CPU materialises y - mean and dz and
reduces, masks and rescales in separate passes over the activations. Here the forward pass is
the batch statistics plus one affine pass (y * a + b, + residual, ReLU) and the backward pass one
set of per-channel sums plus one affine pass over (dz, y); on a single CPU device both run in the
native kernel (lottery_kd.kernels.batch_norm), elsewhere as the same math in jnp. Same parameter
and batch_stats trees and update rule as nn.BatchNorm (biased batch variance), so checkpoints
load either way; results differ from Flax's by float32 rounding (~1e-7 relative).

Other input dtypes (bfloat16 under train.precision=bfloat16; the kernel is float32-only) take
the jnp path: the batch mean and variance and the normalisation are computed in float32, the
output (and the input's cotangent) come back in the input's dtype, and the running statistics
stay float32.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from lottery_kd.kernels import batch_norm as native
from lottery_kd.models.layers import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM


def _affine(y: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray, residual: Optional[jnp.ndarray],
            relu: bool) -> jnp.ndarray:
    z = y * a + b
    if residual is not None:
        z = z + residual
    return jnp.where(z > 0, z, 0) if relu else z  # a select: see layers.relu_select


def _statistics(y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """float32 batch mean and (biased) variance, whatever y's dtype."""
    y = y.astype(jnp.float32)  # a no-op on float32
    axes = tuple(range(y.ndim - 1))
    mean = jnp.mean(y, axes)
    return mean, jnp.maximum(jnp.mean(y * y, axes) - mean * mean, 0.0)


def _none() -> jnp.ndarray:
    """Stands in for an absent residual, ReLU mask or residual cotangent (a scalar zero)."""
    return jnp.zeros((), jnp.float32)


def batch_norm_train(y: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                     residual: Optional[jnp.ndarray] = None, *, epsilon: float,
                     relu: bool) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Training-mode BatchNorm over all but the last axis of y, then `+ residual` (None: none)
    and a ReLU (`relu`). Returns (output in y's dtype, float32 batch mean, float32 batch
    variance). Runs the native kernel (lottery_kd.kernels.batch_norm) where it applies, else the
    same math in jnp."""
    has_residual = residual is not None
    # one dtype per role, so the custom VJP's cotangents match (no-ops when all are float32)
    bias = bias.astype(scale.dtype)
    residual = residual.astype(y.dtype) if has_residual else None
    return _batch_norm(y, scale, bias, residual if has_residual else _none(), epsilon, relu,
                       has_residual)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _batch_norm(y, scale, bias, residual, epsilon, relu, has_residual):
    return _forward(y, scale, bias, residual, epsilon, relu, has_residual)[0]


def _forward(y, scale, bias, residual, epsilon, relu, has_residual):
    operands = (y, scale, bias, residual)
    if native.applies(y):
        out, mean, var = _native_forward(*operands, epsilon, relu, has_residual)
    else:
        out, mean, var = _forward_math(*operands, epsilon, relu, has_residual)
    # the output stands in for the ReLU mask: the next layer keeps it alive anyway
    return (out, mean, var), (y, out if relu else _none(), scale, mean, var)


def _forward_math(y, scale, bias, residual, epsilon, relu, has_residual):
    """(out, mean, var) in jnp: the kernel's reference and its derivative."""
    mean, var = _statistics(y)
    a = scale * lax.rsqrt(var + epsilon)
    out = _affine(y, a, bias - mean * a, residual if has_residual else None, relu)
    return out.astype(y.dtype), mean, var  # float32 math, y's dtype out (no-op on float32)


def _backward(epsilon, relu, has_residual, saved, cotangents):
    y, out, scale, mean, var = saved
    g_out, g_mean, g_var = cotangents
    operands = (g_out, out, y, scale, mean, var, g_mean, g_var)
    if native.applies(y):
        return _native_backward(*operands, epsilon, relu, has_residual)
    return _backward_math(*operands, epsilon, relu, has_residual)


def _backward_math(g_out, out, y, scale, mean, var, g_mean, g_var, epsilon, relu, has_residual):
    """(dy, dscale, dbias, dresidual) in jnp: the kernel's reference and its derivative.
    Computed in float32; each cotangent returned in its operand's dtype (no-ops on float32)."""
    dtype, param_dtype = y.dtype, scale.dtype
    g_out, y = g_out.astype(jnp.float32), y.astype(jnp.float32)
    axes = tuple(range(y.ndim - 1))
    count = y.size // y.shape[-1]
    rstd = lax.rsqrt(var + epsilon)
    dz = jnp.where(out > 0, g_out, 0) if relu else g_out
    centred = y - mean
    sum_dz = jnp.sum(dz, axes)
    sum_dz_xhat = jnp.sum(dz * centred, axes) * rstd  # = d loss / d scale
    a = scale * rstd
    # dy = a * (dz - mean(dz) - xhat * mean(dz * xhat)) + d mean/dy g_mean + d var/dy g_var,
    # with d mean/dy = 1/count and d var/dy = 2 (y - mean)/count: an affine map of (dz, y - mean)
    slope = (2.0 * g_var - a * rstd * sum_dz_xhat) / count
    offset = (g_mean - a * sum_dz) / count
    dy = a * dz + slope * centred + offset
    return (dy.astype(dtype), sum_dz_xhat.astype(param_dtype), sum_dz.astype(param_dtype),
            dz.astype(dtype) if has_residual else _none())


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _native_backward(g_out, out, y, scale, mean, var, g_mean, g_var, epsilon, relu,
                     has_residual):
    """The kernel's backward pass; differentiating it again (GraSP) goes through the jnp math."""
    dy, dscale, dbias, dresidual = native.backward(
        g_out, out if relu else None, y, scale, mean, var, g_mean, g_var, epsilon, relu,
        has_residual)
    return dy, dscale, dbias, dresidual if has_residual else _none()


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _native_forward(y, scale, bias, residual, epsilon, relu, has_residual):
    """The kernel's forward pass; differentiating it (as GraSP's second derivative does, through
    the backward pass's residuals) goes through the jnp math."""
    return native.forward(y, scale, bias, residual if has_residual else None, epsilon, relu)


def _math_derivative(kernel: Callable, math: Callable, operand_count: int) -> None:
    """Give `kernel` (a custom VJP with three trailing settings) the VJP of its jnp twin."""
    def forward_rule(*operands_and_settings):
        return kernel(*operands_and_settings), operands_and_settings[:operand_count]

    def backward_rule(epsilon, relu, has_residual, operands, cotangents):
        twin = functools.partial(math, epsilon=epsilon, relu=relu, has_residual=has_residual)
        return jax.vjp(twin, *operands)[1](cotangents)
    kernel.defvjp(forward_rule, backward_rule)


_math_derivative(_native_forward, _forward_math, 4)
_math_derivative(_native_backward, _backward_math, 8)
_batch_norm.defvjp(_forward, _backward)


class FusedBatchNorm(nn.Module):
    """nn.BatchNorm (same variables and update rule) with an optional residual and ReLU:
    `norm(y, residual=r, relu=True)` is relu(batch_norm(y) + r)."""

    use_running_average: bool
    momentum: float = BATCH_NORM_MOMENTUM
    epsilon: float = BATCH_NORM_EPSILON

    @nn.compact
    def __call__(self, y: jnp.ndarray, residual: Optional[jnp.ndarray] = None,
                 relu: bool = False) -> jnp.ndarray:
        features = (y.shape[-1],)
        running_mean = self.variable("batch_stats", "mean",
                                     lambda s: jnp.zeros(s, jnp.float32), features)
        running_var = self.variable("batch_stats", "var",
                                    lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            a = scale * lax.rsqrt(running_var.value + self.epsilon)
            return _affine(y, a, bias - running_mean.value * a, residual, relu).astype(y.dtype)
        out, mean, var = batch_norm_train(y, scale, bias, residual, epsilon=self.epsilon,
                                          relu=relu)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return out
