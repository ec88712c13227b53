"""The native 3x3 convolution (lottery_kd.kernels.conv3x3) against XLA's, to every order used."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lottery_kd.training.steps import Distillation, TrainState, init_variables, make_train_step
from lottery_kd.kernels import conv3x3 as conv_lib
from lottery_kd.models import get_model
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not conv_lib.native_available() and conv_lib._compiler() is None,
    reason="no C++ compiler: the native kernel is optional and conv_impl='auto' uses XLA")

NHWC = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, kernel, stride):
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                    dimension_numbers=NHWC)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


# (batch, height, width, in channels, out channels, stride): the CIFAR ResNet shapes plus odd
# sizes, non-square images, and widths that leave partial register tiles; the last five are
# wider rows through the fixed-shape forward tiles, so rows have one tile (left and right border
# at once) or interior tiles without either border.
SHAPES = [(3, 32, 32, 3, 16, 1), (2, 32, 32, 16, 16, 1), (2, 16, 16, 32, 32, 1),
          (2, 8, 8, 64, 64, 1), (2, 32, 32, 16, 32, 2), (2, 16, 16, 32, 64, 2),
          (1, 7, 11, 5, 48, 1), (3, 9, 13, 16, 16, 2), (17, 5, 5, 32, 128, 1),
          (2, 16, 16, 16, 16, 1), (1, 5, 64, 16, 16, 1), (1, 6, 32, 32, 32, 1),
          (1, 5, 48, 16, 32, 2), (1, 4, 12, 64, 64, 1),
          # one pixel wide at stride 2: the filter gradient's last tap lies outside every row
          (4, 5, 1, 16, 16, 2), (3, 1, 1, 16, 32, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_xla(shape):
    n, h, w, c, k, stride = shape
    x = jax.random.normal(jax.random.key(0), (n, h, w, c))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, c, k)) * 0.2

    def loss(conv):
        return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel, stride)))

    assert relative_error(xla_conv(x, kernel, stride), conv_lib.conv3x3(x, kernel, stride)) < 1e-5
    want = jax.grad(loss(xla_conv), (0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss(conv_lib.conv3x3), (0, 1)))(x, kernel)
    for a, b in zip(want, got):
        assert relative_error(a, b) < 1e-5


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4], SHAPES[6]])
def test_second_order_gradients_match_xla(shape):
    """GraSP differentiates the gradient again: grad(|grad|^2) must match through the kernel."""
    n, h, w, c, k, stride = shape
    x = jax.random.normal(jax.random.key(2), (n, h, w, c))
    kernel = jax.random.normal(jax.random.key(3), (3, 3, c, k)) * 0.2

    def grad_norm(conv):
        def inner(x, kernel):
            return jnp.sum(jnp.tanh(conv(x, kernel, stride)))
        return lambda x, kernel: sum(jnp.sum(g ** 2) for g in jax.grad(inner, (0, 1))(x, kernel))

    want = jax.grad(grad_norm(xla_conv), (0, 1))(x, kernel)
    got = jax.jit(jax.grad(grad_norm(conv_lib.conv3x3), (0, 1)))(x, kernel)
    for a, b in zip(want, got):
        assert relative_error(a, b) < 1e-4


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    x = jax.random.normal(jax.random.key(4), (24, 16, 16, 32))
    dy = jax.random.normal(jax.random.key(5), (24, 16, 16, 32))
    outputs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("LOTTERY_KD_CONV_THREADS", threads)
        outputs.append(np.asarray(conv_lib.filter_grad(x, dy, 1)))
    assert os.environ["LOTTERY_KD_CONV_THREADS"] == "3"
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_dispatch_uses_the_kernel_only_where_it_applies():
    conv = conv_lib.make_conv_general_dilated("native")
    x = jnp.ones((2, 8, 8, 16))

    def primitives(fn, *args):
        return {str(e.primitive) for e in jax.make_jaxpr(fn)(*args).eqns}

    native = lambda x, k, **kw: conv(x, k, (1, 1), [(1, 1), (1, 1)],  # noqa: E731
                                     dimension_numbers=NHWC, **kw)
    assert "custom_vjp_call" in primitives(native, x, jnp.ones((3, 3, 16, 16)))
    # not 3x3 / not a multiple of 16 outputs / bfloat16 / other padding: XLA's convolution
    for args in [(x, jnp.ones((3, 3, 16, 8))), (x.astype(jnp.bfloat16),
                                                jnp.ones((3, 3, 16, 16), jnp.bfloat16))]:
        assert "conv_general_dilated" in primitives(native, *args)
    five = lambda x, k: conv(x, k, (1, 1), [(2, 2), (2, 2)], dimension_numbers=NHWC)  # noqa: E731
    assert "conv_general_dilated" in primitives(five, x, jnp.ones((5, 5, 16, 16)))
    assert conv_lib.make_conv_general_dilated("xla") is None
    with pytest.raises(ValueError, match=r"model.conv_impl='fast' is invalid: allowed: auto, xla"):
        conv_lib.make_conv_general_dilated("fast")


def test_native_build_failure_is_clear_for_native_and_silent_for_auto(monkeypatch, tmp_path):
    monkeypatch.setattr(conv_lib, "_load", lambda: (False, "no C++ compiler found"))
    with pytest.raises(conv_lib.NativeKernelError, match="conv_impl='native' is unavailable: no C"):
        conv_lib.make_conv_general_dilated("native")
    conv = conv_lib.make_conv_general_dilated("auto")
    x, kernel = jnp.ones((1, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
    eqns = jax.make_jaxpr(lambda x, k: conv(x, k, (1, 1), [(1, 1), (1, 1)],
                                            dimension_numbers=NHWC))(x, kernel).eqns
    assert [str(e.primitive) for e in eqns] == ["conv_general_dilated"]


def test_resnet20_train_step_matches_xla():
    """The whole masked + KD train step: same loss and updated weights with either convolution."""
    from lottery_kd.sparsity import masks as masks_lib, pruning
    from lottery_kd.training import optim

    results = []
    for conv_impl in ("xla", "native"):
        model = get_model("resnet20", 10, conv_impl=conv_impl)
        params, batch_stats = init_variables(model, jax.random.key(0), (32, 32, 3))
        masks = pruning.get("magnitude_global")(params, masks_lib.create(params), 0.5)
        optimizer = optim.sgd_direction(0.9, 1e-4)
        step = make_train_step(model, optimizer, Distillation(4.0, 0.5, "mean"),
                                     normalization=((120.0,) * 3, (64.0,) * 3))
        state = TrainState(jnp.asarray(0), masks_lib.apply(params, masks),
                                 jax.tree.map(jnp.copy, batch_stats), optimizer.init(params))
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
        labels = jnp.asarray(rng.integers(0, 10, 16).astype(np.int32))
        teacher = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
        for _ in range(2):
            state, metrics = step(state, masks, images, labels, jnp.float32(0.1), teacher)
        results.append((state.params, metrics))
    (xla_params, xla_metrics), (native_params, native_metrics) = results
    assert abs(float(xla_metrics["loss"]) - float(native_metrics["loss"])) < 1e-4
    # float32 summation order differs: conv kernels agree to 1e-4 of their norm; BatchNorm biases
    # (sums of nearly cancelling gradients, ~1e-2 after two steps) and all weights to 5e-5 absolute
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(xla_params),
                            jax.tree.leaves(native_params)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if "kernel" in jax.tree_util.keystr(path):
            assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a), path
        assert np.max(np.abs(a - b)) < 5e-5, path


def test_the_kernel_refuses_shapes_it_does_not_cover_with_a_clear_error():
    x = jnp.ones((1, 8, 8, 16))
    with pytest.raises(Exception, match="output channels must be a multiple of 16"):
        jax.block_until_ready(conv_lib.conv3x3(x, jnp.ones((3, 3, 16, 8)), 1))
    with pytest.raises(Exception, match="stride must be 1 or 2"):
        jax.block_until_ready(conv_lib.conv3x3(x, jnp.ones((3, 3, 16, 16)), 3))


def test_with_several_devices_auto_uses_xla_and_native_refuses():
    """A sharded batch would be gathered onto every device around an opaque custom call."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from lottery_kd.kernels import conv3x3 as k\n"
        "from lottery_kd.models import get_model\n"
        "model = get_model('resnet20', 10, conv_impl='auto')\n"
        "init = lambda x: model.init(jax.random.key(0), x)\n"
        "jaxpr = jax.make_jaxpr(init)(jnp.ones((2, 8, 8, 3)))\n"
        "assert 'custom_vjp_call' not in str(jaxpr), 'native kernel used on 2 devices'\n"
        "try:\n"
        "    k.make_conv_general_dilated('native')\n"
        "except k.NativeKernelError as error:\n"
        "    print(error)\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runs on one device, but there are 2" in done.stdout


def test_the_kernel_cache_tells_cpus_apart_where_proc_cpuinfo_is_masked(monkeypatch):
    """The build cache key names the CPU: from /proc/cpuinfo's flags, else from the macros the
    compiler defines for -march=native (not the bare "x86_64", which would let an AVX2 machine
    load an AVX-512 build from a shared cache); the compiler's and jaxlib's versions too."""
    import pathlib
    import platform

    from lottery_kd.kernels import build
    real = pathlib.Path.read_text

    def masked(self, *args, **kwargs):
        if str(self) == "/proc/cpuinfo":
            raise OSError("masked in this container")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "read_text", masked)
    signature = build.cpu_signature(build.compiler())
    assert signature != (platform.processor() or platform.machine())
    assert "#define __" in signature  # the target's feature macros
    assert build.compiler_version(build.compiler()) and build.jaxlib_version()
