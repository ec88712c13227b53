"""Masked convolutions on CPU that skip pruned weights: a native kernel (sparse_conv_cpu.cc).

Why: a lottery ticket at density ~0.1 needs a tenth of the dense network's multiply-adds, but
XLA's convolution (and conv3x3's dense kernel) cannot skip the zeros. `masked_conv` computes
conv(x, kernel * mask) with a custom VJP whose passes (forward; input gradient and filter gradient
at the mask's positions only, in one call) go to a kernel that loops over the nonzero weights and
vectorises over pixels (see the .cc file). Each call measures the layer's density and runs the
dense kernel above a crossover density, so callers need no trace-time knowledge of the mask.

Covered: float32 activations, NHWC or NCHW (`layout`), HWIO kernels of size 1 or 3, padding
0 .. size-1, stride 1 or 2, any channel counts, on a single CPU device (an opaque custom call, like
conv3x3's). The kernel's loops read each channel's pixels contiguously, so an NCHW call copies
rows where an NHWC call transposes every image in and out: 14-16 % of a pass on 32x32x16
layers, nothing measurable on smaller maps (benchmarks/results/
sparse_conv_cpu_nchw_idle_2026-12-03.json). The
mask is a constant: its cotangent is zero. Only first-order gradients go through the kernel
(the VJP's own passes are not differentiable again). Results are deterministic and independent
of the thread count; they differ from XLA's only by float32 summation order.

Environment: as conv3x3 (LOTTERY_KD_CACHE, LOTTERY_KD_NATIVE_CONV=0, LOTTERY_KD_CONV_THREADS)
plus LOTTERY_KD_MARCH (the -march of the build, default native; x86-64-v3 for AVX2 only).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lottery_kd.kernels import build
from lottery_kd.kernels.build import NativeKernelError

_SOURCE = "sparse_conv_cpu.cc"
_TARGETS = (("lottery_kd_sparse_conv_forward", "LotteryKdSparseConvForward"),
            ("lottery_kd_sparse_conv_input_grad", "LotteryKdSparseConvInputGrad"),
            ("lottery_kd_sparse_conv_filter_grad", "LotteryKdSparseConvFilterGrad"),
            ("lottery_kd_sparse_conv_backward", "LotteryKdSparseConvBackward"))
_NHWC = ("NHWC", "HWIO", "NHWC")
LAYOUTS: dict[str, int] = {"NHWC": 0, "NCHW": 1}  # the activations' layout, as the kernel reads it
# How a call chooses its path: by the layer's density (the kernel's crossover constants), or
# forced (benchmarks and tests); "dense" falls back to sparse where the dense kernel does not apply
# (1x1 kernels, output channels not a multiple of 16, the stride-2 input gradient).
PATHS: dict[str, int] = {"auto": 0, "dense": 1, "sparse": 2}


def _load() -> tuple[bool, str]:
    """Build, load and register the FFI targets once per process; (ok, reason if not)."""
    return build.load(_SOURCE, _TARGETS)


def native_available() -> bool:
    """Whether the native kernel is built and registered (building it on first call)."""
    return _load()[0]


def out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output rows (or columns) of the convolution."""
    return (size + 2 * padding - kernel_size) // stride + 1


def _ffi(name: str, out_shape, *operands: jnp.ndarray, stride: int, padding: int, path: str,
         layout: str):
    """The custom call `name`: out_shape one shape (an array back) or a list of shapes (a list)."""
    ok, reason = _load()  # builds and registers the targets on first use
    if not ok:
        raise NativeKernelError(f"the native masked convolution is unavailable: {reason}")
    result = (jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32) if isinstance(out_shape, tuple)
              else [jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for shape in out_shape])
    call = jax.ffi.ffi_call(f"lottery_kd_sparse_conv_{name}", result, vmap_method="sequential")
    return call(*operands, stride=np.int64(stride), padding=np.int64(padding),
                path=np.int64(PATHS[path]), layout=np.int64(LAYOUTS[layout]))


def _channels(x: jnp.ndarray, layout: str) -> int:
    return x.shape[1] if layout == "NCHW" else x.shape[-1]


def _check(x: jnp.ndarray, kernel: jnp.ndarray, mask: jnp.ndarray, stride: int,
           padding: int, path: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"masked_conv: layout {layout!r} must be one of {', '.join(LAYOUTS)}")
    if x.ndim != 4 or kernel.ndim != 4 or _channels(x, layout) != kernel.shape[2]:
        raise ValueError(f"masked_conv: x {x.shape} must be {layout} and kernel {kernel.shape} "
                         "HWIO with the same input channels")
    if mask.shape != kernel.shape:
        raise ValueError(f"masked_conv: mask {mask.shape} must have the kernel's shape")
    size = kernel.shape[0]
    if kernel.shape[1] != size or size not in (1, 3) or not 0 <= padding < size:
        raise ValueError(f"masked_conv: kernel {kernel.shape[:2]} / padding {padding}: need a 1x1 "
                         "or 3x3 kernel and 0 <= padding < size")
    if stride not in (1, 2) or path not in PATHS:
        raise ValueError(f"masked_conv: stride {stride} must be 1 or 2, path {path!r} one of "
                         f"{', '.join(PATHS)}")


def masked_conv(x: jnp.ndarray, kernel: jnp.ndarray, mask: jnp.ndarray, stride: int,
                padding: int, path: str = "auto", layout: str = "NHWC") -> jnp.ndarray:
    """conv(x, kernel * mask) through the native kernel: x [N,H,W,C] f32 ([N,C,H,W] with
    layout "NCHW", and the output likewise), kernel and mask [R,R,C,K] (mask: bool or float,
    nonzero = kept), R = 1 or 3. The kernel's gradient is dw * mask (computed only where the mask
    is set); the mask gets none."""
    _check(x, kernel, mask, stride, padding, path, layout)
    m = lax.stop_gradient(jnp.asarray(mask).astype(jnp.float32))
    return _masked_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), m, stride, padding,
                        path, layout)


def reference_masked_conv(x: jnp.ndarray, kernel: jnp.ndarray, mask: jnp.ndarray, stride: int,
                          padding: int, layout: str = "NHWC") -> jnp.ndarray:
    """The same function in pure XLA: conv(x, kernel * mask), whose kernel gradient is dw * mask."""
    w = kernel * lax.stop_gradient(jnp.asarray(mask).astype(kernel.dtype))
    return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                    dimension_numbers=(layout, "HWIO", layout))


def _out_shape(x_shape: Sequence[int], w: jnp.ndarray, stride: int, padding: int,
               layout: str) -> tuple[int, ...]:
    size, k = w.shape[0], w.shape[-1]
    if layout == "NCHW":
        n, _, h, wd = x_shape
        return (n, k, out_size(h, size, stride, padding), out_size(wd, size, stride, padding))
    n, h, wd, _ = x_shape
    return (n, out_size(h, size, stride, padding), out_size(wd, size, stride, padding), k)


def forward(x: jnp.ndarray, w: jnp.ndarray, stride: int, padding: int,
            path: str = "auto", layout: str = "NHWC") -> jnp.ndarray:
    """conv(x, w) for an already masked w: the kernel skips w's zeros."""
    return _ffi("forward", _out_shape(x.shape, w, stride, padding, layout), x, w, stride=stride,
                padding=padding, path=path, layout=layout)


def _xla_strided_1x1(w: jnp.ndarray, stride: int, path: str, layout: str) -> bool:
    """Whether an NHWC strided 1x1 layer's input gradient goes to XLA: it is a small matmul
    scattered to every s-th pixel, where the kernel's per-pixel transposes lost to XLA at every
    density (0.46-0.83x, benchmarks/results/sparse_conv_cpu_under_load_2026-12-03.json). NCHW
    has no transposes to lose by, and a forced "sparse" path stays in the kernel."""
    return w.shape[0] == 1 and stride > 1 and path != "sparse" and layout == "NHWC"


def input_grad(dy: jnp.ndarray, w: jnp.ndarray, stride: int, padding: int,
               x_shape: Sequence[int], path: str = "auto", layout: str = "NHWC") -> jnp.ndarray:
    """d(conv(x, w))/dx applied to dy, skipping w's zeros (see _xla_strided_1x1)."""
    if _xla_strided_1x1(w, stride, path, layout):
        return _xla_input_grad(dy, w, stride, padding, x_shape)
    return _ffi("input_grad", tuple(x_shape), dy, w, stride=stride, padding=padding, path=path,
                layout=layout)


def _xla_input_grad(dy: jnp.ndarray, w: jnp.ndarray, stride: int, padding: int,
                    x_shape: Sequence[int]) -> jnp.ndarray:
    def conv(x):
        return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=_NHWC)

    transpose = jax.linear_transpose(conv, jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32))
    return transpose(dy)[0]


def filter_grad(x: jnp.ndarray, dy: jnp.ndarray, mask: jnp.ndarray, stride: int, padding: int,
                path: str = "auto", layout: str = "NHWC") -> jnp.ndarray:
    """d(conv(x, w))/dw applied to dy, computed where mask != 0 only (zeros elsewhere)."""
    return _ffi("filter_grad", mask.shape, x, dy, mask, stride=stride, padding=padding, path=path,
                layout=layout)


def backward(x: jnp.ndarray, dy: jnp.ndarray, w: jnp.ndarray, mask: jnp.ndarray, stride: int,
             padding: int, path: str = "auto",
             layout: str = "NHWC") -> tuple[jnp.ndarray, jnp.ndarray]:
    """(input_grad, filter_grad) in one call: where both run the sparse loops, one pass over the
    images moves dy once for both (the same results as the two calls, bit for bit)."""
    if _xla_strided_1x1(w, stride, path, layout):
        return (input_grad(dy, w, stride, padding, x.shape, path),
                filter_grad(x, dy, mask, stride, padding, path))
    dx, dw = _ffi("backward", [x.shape, w.shape], x, dy, w, mask, stride=stride, padding=padding,
                  path=path, layout=layout)
    return dx, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _masked_conv(x: jnp.ndarray, kernel: jnp.ndarray, mask: jnp.ndarray, stride: int,
                 padding: int, path: str, layout: str) -> jnp.ndarray:
    return forward(x, jnp.where(mask != 0, kernel, 0.0), stride, padding, path, layout)


def _masked_conv_fwd(x, kernel, mask, stride, padding, path, layout):
    w = jnp.where(mask != 0, kernel, 0.0)
    return forward(x, w, stride, padding, path, layout), (x, w, mask)


def _masked_conv_bwd(stride, padding, path, layout, residuals, dy):
    x, w, mask = residuals
    return (*backward(x, dy, w, mask, stride, padding, path, layout), jnp.zeros_like(mask))


_masked_conv.defvjp(_masked_conv_fwd, _masked_conv_bwd)
