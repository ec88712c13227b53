"""3x3 convolutions on CPU through a native kernel (conv3x3_cpu.cc), as a drop-in for Flax.

Why: on CPU, XLA runs the 16-64 channel convolutions of CIFAR ResNets slowly; its filter gradient
alone is ~40% of a ResNet-20 train step (benchmarks/conv3x3.py measures every layer shape). The
kernel is compiled on first use with the system C++ compiler (`$CXX`, else c++/g++) for this CPU
and cached under `$LOTTERY_KD_CACHE` (default ~/.cache/lottery_kd). Without a compiler the
package still works: `conv_impl="auto"` then uses XLA, and only `conv_impl="native"` fails, with
a message that says why.

The native path covers float32 NHWC/HWIO 3x3 convolutions with padding 1, stride 1 or 2 and a
multiple of 16 output channels; every other convolution goes to `lax.conv_general_dilated`.
Gradients of every order are convolutions again (custom VJPs all the way down), so GraSP's
Hessian-gradient product runs through the kernel too. Results are deterministic and independent
of the thread count; they differ from XLA's only by float32 summation order (~1e-6 relative).

Environment: LOTTERY_KD_CACHE (build cache root), LOTTERY_KD_NATIVE_CONV=0 (never build or use
the kernel, whatever the config says for "auto"), LOTTERY_KD_CONV_THREADS (threads per call;
default: the CPUs this process may run on).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lottery_kd.kernels import build
from lottery_kd.kernels.build import NativeKernelError  # noqa: F401  (re-exported)

CONV_IMPLS: tuple[str, ...] = ("auto", "xla", "native", "sparse")
# How the convolutions that flax pads by name ('SAME': the 1x1 projection shortcuts) are routed,
# by generation. A run records the generation it started on (execution_record) and resumes on it
# (resumed_conv_impl, study.Study.run_conv_impl), so its arithmetic never changes halfway; the
# older routings are execution values a resume may take, never config values.
#   1: on XLA on every path. XLA's 1x1 stride-2 filter gradient took 22-31 ms a shortcut of a
#      ResNet-20 step on a Zen 1 EPYC (45-50 ms of 425-580), 4-5 ms of ~112 on an AVX-512 EPYC.
#   2 (2026-12-03): "sparse" runs them on the masked kernel.
#   3 (2026-12-04): "native", and "auto" where it runs the native kernel, run them as a strided
#      slice and a matmul (_pointwise_conv): 4-5 ms where XLA's took 26-36, differentiable to
#      every order (GraSP).
CONV_ROUTING = 3
SPARSE_XLA_SHORTCUTS = "sparse-xla-shortcuts"  # "sparse" at routing 1
NATIVE_XLA_SHORTCUTS = "native-xla-shortcuts"  # "native" at routings 1-2
AUTO_XLA_SHORTCUTS = "auto-xla-shortcuts"  # "auto" at routings 1-2
# A sparse model's dense twin (what needs gradients at pruned weights: RigL's growth, SNIP,
# GraSP): the dense kernels with the shortcuts on XLA, as the twin always ran them, so routing 3
# changes no sparse run's arithmetic halfway.
DENSE_TWIN_IMPL = NATIVE_XLA_SHORTCUTS
XLA_SHORTCUTS: dict[str, str] = {SPARSE_XLA_SHORTCUTS: "sparse", NATIVE_XLA_SHORTCUTS: "native",
                                 AUTO_XLA_SHORTCUTS: "auto"}
SPARSE_IMPLS: tuple[str, ...] = ("sparse", SPARSE_XLA_SHORTCUTS)


def base_conv_impl(conv_impl: str) -> str:
    """The config value an execution value runs as, routing aside ("native-xla-shortcuts" ->
    "native")."""
    return XLA_SHORTCUTS.get(conv_impl, conv_impl)


def execution_record(conv_impl: str) -> dict:
    """What a run's resume checkpoints record of how it computes (read by resumed_conv_impl),
    and whether its 3x3 convolutions ran on the kernel here ("native": "auto" falls back to
    XLA's where the kernel does not build or there are several devices)."""
    return {"conv_impl": conv_impl, "conv_routing": CONV_ROUTING,
            "native": native_enabled(conv_impl)}


def path_change_note(recorded: dict | None, conv_impl: str, label: str) -> str:
    """A warning where a run resumes with its 3x3 convolutions on another path than its
    checkpoints record (a machine without a compiler, another device count): the run goes on,
    but its arithmetic changes at the resume step, so it will not match an uninterrupted run
    bit for bit. '' where nothing changed or the checkpoint predates the record."""
    if not recorded or "native" not in recorded:
        return ""
    now = native_enabled(conv_impl)
    if now == recorded["native"]:
        return ""
    names = {True: "the native kernel", False: "XLA's convolution"}
    return (f"warning: {label} trained its 3x3 convolutions on {names[recorded['native']]} and "
            f"resumes on {names[now]} (model.conv_impl={conv_impl}): from this step its "
            "arithmetic differs, so it will not match an uninterrupted run bit for bit; resume "
            "it where it started to keep it exact")


def resumed_conv_impl(record: dict) -> str:
    """The conv_impl a run resumes on, from its checkpoint's execution_record: a run recorded
    before the routing it would get now resumes on the routing it began with (CONV_ROUTING).
    Checkpoints of routing 2 recorded only "sparse_routing" (on "sparse" runs)."""
    conv_impl = record["conv_impl"]
    routing = record.get("conv_routing", record.get("sparse_routing", 1))
    if conv_impl == "sparse" and routing < 2:
        return SPARSE_XLA_SHORTCUTS
    if conv_impl in ("native", "auto") and routing < 3:
        return {"native": NATIVE_XLA_SHORTCUTS, "auto": AUTO_XLA_SHORTCUTS}[conv_impl]
    return conv_impl


_SOURCE = "conv3x3_cpu.cc"
_TARGETS = (("lottery_kd_conv3x3_forward", "LotteryKdConv3x3Forward"),
            ("lottery_kd_conv3x3_filter_grad", "LotteryKdConv3x3FilterGrad"))
_NHWC = ("NHWC", "HWIO", "NHWC")


def _compiler() -> str | None:
    return build.compiler()


def _load() -> tuple[bool, str]:
    """Build, load and register the FFI targets once per process; (ok, reason if not)."""
    return build.load(_SOURCE, _TARGETS)


def native_available() -> bool:
    """Whether the native kernel is built and registered (building it on first call)."""
    return _load()[0]


def _ffi(name: str, out_shape: Sequence[int], *operands: jnp.ndarray, stride: int) -> jnp.ndarray:
    ok, reason = _load()  # builds and registers the targets on first use
    if not ok:
        raise NativeKernelError(f"the native 3x3 convolution is unavailable: {reason}")
    call = jax.ffi.ffi_call(f"lottery_kd_conv3x3_{name}",
                            jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32),
                            vmap_method="sequential")
    return call(*operands, stride=np.int64(stride))


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _xla_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                    dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
    """3x3 convolution, padding 1: x [N,H,W,C] f32, kernel [3,3,C,K] f32 with K % 16 == 0."""
    n, h, w, _ = x.shape
    return _ffi("forward", (n, _out_size(h, stride), _out_size(w, stride), kernel.shape[-1]),
                x, kernel, stride=stride)


def _keep_operands(fn: Callable) -> Callable:
    """The custom-VJP forward rule of a bilinear fn(a, b, stride): both operands are residuals."""
    return lambda a, b, stride: (fn(a, b, stride), (a, b))


def _conv3x3_bwd(stride, residuals, dy):
    x, kernel = residuals
    return input_grad(dy, kernel, stride, x.shape), filter_grad(x, dy, stride)


conv3x3.defvjp(_keep_operands(conv3x3), _conv3x3_bwd)


def input_grad(dy: jnp.ndarray, kernel: jnp.ndarray, stride: int,
               x_shape: Sequence[int]) -> jnp.ndarray:
    """d(conv3x3)/dx applied to dy. Stride 1 is a forward conv with the flipped, transposed kernel
    (native when the input has a multiple of 16 channels); stride 2 is XLA's transposed conv."""
    if stride == 1 and x_shape[-1] % 16 == 0:
        return conv3x3(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), 1)
    spec = jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype)
    return jax.linear_transpose(lambda x: _xla_conv(x, kernel, stride), spec)(dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def filter_grad(x: jnp.ndarray, dy: jnp.ndarray, stride: int) -> jnp.ndarray:
    """d(conv3x3)/dkernel applied to dy: dw[a,b,c,k] = sum x[n, s*i+a-1, s*j+b-1, c] dy[n,i,j,k]."""
    return _ffi("filter_grad", (3, 3, x.shape[-1], dy.shape[-1]), x, dy, stride=stride)


def _filter_grad_bwd(stride, residuals, ct):
    # dw is bilinear in (x, dy), like the conv itself: its cotangents are the conv's two products.
    x, dy = residuals
    return input_grad(dy, ct, stride, x.shape), conv3x3(x, ct, stride)


filter_grad.defvjp(_keep_operands(filter_grad), _filter_grad_bwd)


def _native_applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count) -> bool:
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if tuple(rhs.shape[:2]) != (3, 3) or rhs.shape[-1] % 16 or feature_group_count != 1:
        return False
    strides = tuple(window_strides)
    if strides not in ((1, 1), (2, 2)):
        return False
    if isinstance(padding, str) or [tuple(p) for p in padding] != [(1, 1), (1, 1)]:
        return False
    if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return False
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == expected


def make_conv_general_dilated(conv_impl: str) -> Callable[..., jnp.ndarray] | None:
    """The `conv_general_dilated` to give flax.linen.Conv for `model.conv_impl`.

    "xla" -> None (Flax's default). "native" -> the kernel wherever it applies; "sparse" -> the
    masked kernel (kernels.sparse_conv) for every 1x1 and 3x3 convolution, skipping the zero
    weights, the dense kernel wherever a layer is denser than its crossover. Both raise
    NativeKernelError now if it cannot be built, JAX is not on CPU, or there are several devices
    (the kernel is an opaque custom call: XLA's SPMD partitioner would gather the sharded batch
    onto every device). "auto" -> the kernel on a single CPU device when it builds, else XLA.
    The XLA_SHORTCUTS values (resumed runs only) -> their config value with the convolutions
    padded by name on XLA (CONV_ROUTING).
    """
    if conv_impl not in CONV_IMPLS + tuple(XLA_SHORTCUTS):
        raise ValueError(f"model.conv_impl={conv_impl!r} is invalid: allowed: "
                         f"{', '.join(CONV_IMPLS)}")
    base = base_conv_impl(conv_impl)
    if base == "xla":
        return None
    if base in ("native", "sparse"):
        if jax.default_backend() != "cpu":
            raise NativeKernelError(f"model.conv_impl={conv_impl!r} is a CPU kernel, but JAX runs "
                                    f"on {jax.default_backend()}; use 'auto' or 'xla'")
        if jax.device_count() > 1:
            raise NativeKernelError(
                f"model.conv_impl={conv_impl!r} runs on one device, but there are "
                f"{jax.device_count()}: XLA's partitioner cannot split the kernel over a sharded "
                "batch; use 'auto' (XLA's convolution there) or 'xla'")
        ok, reason = _load()
        if ok and base == "sparse":
            from lottery_kd.kernels import sparse_conv
            ok, reason = sparse_conv._load()
        if not ok:
            raise NativeKernelError(f"model.conv_impl={conv_impl!r} is unavailable: {reason}")
    return functools.partial(conv_general_dilated, conv_impl=conv_impl)


def native_enabled(conv_impl: str) -> bool:
    """Whether `conv_impl` sends the 3x3 convolutions it covers to the kernel here: "native"
    always (make_conv_general_dilated has checked it can), "auto" on a single CPU device when
    the kernel builds, "xla" never. The one rule the dispatch and the study's record share."""
    conv_impl = base_conv_impl(conv_impl)
    if conv_impl == "xla":
        return False
    if conv_impl == "auto" and not build.single_cpu_device():
        return False
    return native_available()


def _sparse_padding(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, by_name: bool = True) -> int | None:
    """The symmetric padding of a 1x1 or 3x3 NHWC/HWIO float32 convolution with stride 1 or 2
    that the masked kernel covers, or None where it does not apply. Padding given by name
    ('SAME', 'VALID') counts by the pads it stands for, unless `by_name` is False."""
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or lhs.ndim != 4 or rhs.ndim != 4:
        return None
    size = rhs.shape[0]
    if size not in (1, 3) or rhs.shape[1] != size or feature_group_count != 1:
        return None
    if tuple(window_strides) not in ((1, 1), (2, 2)):
        return None
    if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return None
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != expected:
        return None
    if isinstance(padding, str):
        if not by_name:
            return None
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = {p for pair in padding for p in pair}
    if len(pads) != 1 or not 0 <= next(iter(pads)) < size:
        return None
    return next(iter(pads))


def _pointwise_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int,
                    precision: Any = None) -> jnp.ndarray:
    """An unpadded NHWC 1x1 convolution as a strided slice and a matmul: XLA's CPU convolution
    took 26-36 ms for the 1x1 stride-2 filter gradient of a ResNet-20 shortcut that its matmul
    does in 4-5 ms (Zen 1). Plain JAX, so differentiable to every order."""
    x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape
    y = jnp.matmul(x.reshape(n * h * w, c), kernel.reshape(c, -1), precision=precision)
    return y.reshape(n, h, w, -1)


def conv_general_dilated(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Any = None, rhs_dilation: Any = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, *, conv_impl: str = "auto",
                         **kwargs: Any) -> jnp.ndarray:
    """`lax.conv_general_dilated`, routed to the native 3x3 kernel where it applies (and the
    unpadded 1x1 convolutions to a matmul, CONV_ROUTING 3), or with conv_impl="sparse" to the
    masked kernel, whose mask is the kernel's nonzeros: the training step hands the model
    params * masks, so the zeros are the pruned weights (an unpruned weight that is exactly 0.0
    gets no gradient; the dense paths are for what needs one everywhere)."""
    base, old_routing = base_conv_impl(conv_impl), conv_impl in XLA_SHORTCUTS
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count)
    if base == "sparse" and not kwargs:
        pad = _sparse_padding(*args, by_name=not old_routing)
        if pad is not None:
            from lottery_kd.kernels import sparse_conv
            return sparse_conv.masked_conv(lhs, rhs, rhs != 0, int(window_strides[0]), pad)
    if not kwargs and native_enabled(base):
        if _native_applies(*args):
            return conv3x3(lhs, rhs, int(window_strides[0]))
        if base != "sparse" and not old_routing and rhs.shape[0] == 1 \
                and _sparse_padding(*args) == 0:
            return _pointwise_conv(lhs, rhs, int(window_strides[0]), precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)
