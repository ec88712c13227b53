"""The masked native convolution (kernels.sparse_conv) against XLA's conv(x, w * mask)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.kernels import build, sparse_conv as sc
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not sc.native_available() and build.compiler() is None,
    reason="no C++ compiler: the native kernels are optional")

# (height = width, in channels, out channels, stride, kernel size): the CIFAR ResNet layers (3x3
# after the stem, the 1x1 projection shortcuts, bottleneck 1x1s), then odd sizes and channels
SHAPES = [(32, 16, 16, 1, 3), (32, 16, 32, 2, 3), (16, 32, 32, 1, 3), (16, 32, 64, 2, 3),
          (8, 64, 64, 1, 3), (32, 16, 32, 2, 1), (16, 32, 64, 2, 1), (32, 3, 16, 1, 3),
          (8, 64, 256, 1, 1), (16, 128, 32, 1, 1), (9, 5, 7, 2, 3), (7, 20, 16, 2, 1)]
DENSITIES = (1.0, 0.5, 0.1, 0.02, 0.0)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def layer(shape: tuple, density: float, batch: int = 2, seed: int = 0):
    """x, kernel, a random unstructured mask at `density`, stride and padding of one layer."""
    hw, c, k, stride, size = shape
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (batch, hw, hw, c))
    kernel = jax.random.normal(keys[1], (size, size, c, k))
    mask = jax.random.uniform(keys[2], kernel.shape) < density
    return x, kernel, mask, stride, (size - 1) // 2


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def outputs_and_grads(x, kernel, mask, stride: int, padding: int, path: str):
    """conv(x, kernel * mask) and the gradients of sum(sin(conv)) for x and kernel, through the
    native kernel (path) or XLA (path=None); the mask is an argument, so densities share one
    compilation."""
    def conv(x, w):
        if path is None:
            return sc.reference_masked_conv(x, w, mask, stride, padding)
        return sc.masked_conv(x, w, mask, stride, padding, path)

    return conv(x, kernel), jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1))(x, kernel)


def check_against_xla(shape: tuple, density: float, path: str) -> None:
    x, kernel, mask, stride, padding = layer(shape, density)
    want = outputs_and_grads(x, kernel, mask, stride, padding, None)
    got = outputs_and_grads(x, kernel, mask, stride, padding, path)
    assert relative_error(want[0], got[0]) < 1e-5
    for a, b in zip(want[1], got[1]):
        assert relative_error(a, b) < 1e-5
    assert not np.any(np.asarray(got[1][1])[~np.asarray(mask)])  # no gradient where pruned


@pytest.mark.parametrize("shape", SHAPES[:7])
@pytest.mark.parametrize("density", DENSITIES)
def test_matches_xla_by_density(shape, density):
    """The call's own choice (dense kernel above the crossover, sparse loops below)."""
    check_against_xla(shape, density, "auto")


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES[7:])
@pytest.mark.parametrize("density", DENSITIES)
def test_other_shapes_match_xla_by_density(shape, density):
    """The stem, bottleneck 1x1s and odd sizes: compiling them doubles this file's time."""
    check_against_xla(shape, density, "auto")


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[5]])
@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_each_path_matches_xla_at_half_density(shape, path):
    check_against_xla(shape, 0.5, path)


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    x, kernel, mask, stride, padding = layer((16, 32, 32, 1, 3), 0.1, batch=24)
    dy = jax.random.normal(jax.random.key(9), (24, 16, 16, 32))
    w = jnp.where(mask, kernel, 0.0)
    m = mask.astype(jnp.float32)
    outputs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("LOTTERY_KD_CONV_THREADS", threads)
        outputs.append([np.asarray(v) for v in (
            sc.forward(x, w, stride, padding, "sparse"),
            sc.input_grad(dy, w, stride, padding, x.shape, "sparse"),
            sc.filter_grad(x, dy, m, stride, padding, "sparse"))])
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[4], SHAPES[5], SHAPES[10]])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_one_backward_call_equals_the_two_gradient_calls(shape, density):
    """The fused pass (dy transposed once, read by both gradients) changes no bit."""
    x, kernel, mask, stride, padding = layer(shape, density)
    w = jnp.where(mask, kernel, 0.0)
    m = mask.astype(jnp.float32)
    y_shape = sc.forward(x, w, stride, padding).shape
    dy = jax.random.normal(jax.random.key(5), y_shape)
    for path in ("sparse", "auto"):
        fused = sc.backward(x, dy, w, m, stride, padding, path)
        apart = (sc.input_grad(dy, w, stride, padding, x.shape, path),
                 sc.filter_grad(x, dy, m, stride, padding, path))
        for a, b in zip(fused, apart):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strided_1x1_input_grad_goes_to_xla_unless_forced():
    x, kernel, _, stride, padding = layer((16, 32, 64, 2, 1), 0.1)
    dy = jnp.zeros((2, 8, 8, 64))

    def calls(path):
        jaxpr = jax.make_jaxpr(lambda d: sc.input_grad(d, kernel, stride, padding, x.shape,
                                                       path))(dy)
        return str(jaxpr).count("ffi_call")

    assert calls("auto") == calls("dense") == 0
    assert calls("sparse") == 1


def test_invalid_layers_are_refused_by_name():
    x, kernel, mask, _, _ = layer((8, 16, 16, 1, 3), 0.5)
    with pytest.raises(ValueError, match="stride 3 must be 1 or 2"):
        sc.masked_conv(x, kernel, mask, 3, 1)
    with pytest.raises(ValueError, match="need a 1x1 or 3x3 kernel"):
        sc.masked_conv(x, kernel, mask, 1, 3)
    with pytest.raises(ValueError, match="mask .* must have the kernel's shape"):
        sc.masked_conv(x, kernel, mask[0], 1, 1)


def nchw(a):
    return jnp.transpose(a, (0, 3, 1, 2))


def nhwc(a):
    return jnp.transpose(a, (0, 2, 3, 1))


def passes_both_layouts(shape: tuple, density: float, path: str, batch: int = 2):
    """Every pass of one layer in NHWC, and in NCHW with its activations transposed back."""
    x, kernel, mask, stride, padding = layer(shape, density, batch)
    w = jnp.where(mask, kernel, 0.0)
    m = mask.astype(jnp.float32)
    y_shape = sc.forward(x, w, stride, padding, path).shape
    dy = jax.random.normal(jax.random.key(5), y_shape)
    last = [sc.forward(x, w, stride, padding, path),
            sc.input_grad(dy, w, stride, padding, x.shape, path),
            sc.filter_grad(x, dy, m, stride, padding, path),
            *sc.backward(x, dy, w, m, stride, padding, path)]
    xc, dyc = nchw(x), nchw(dy)
    first = [nhwc(sc.forward(xc, w, stride, padding, path, "NCHW")),
             nhwc(sc.input_grad(dyc, w, stride, padding, xc.shape, path, "NCHW")),
             sc.filter_grad(xc, dyc, m, stride, padding, path, "NCHW")]
    dx, dw = sc.backward(xc, dyc, w, m, stride, padding, path, "NCHW")
    return last, first + [nhwc(dx), dw]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", ["sparse", "auto", "dense"])
def test_nchw_activations_give_the_nhwc_results_bit_for_bit(shape, path):
    """The channel-major layout only moves data differently: every pass sums the same products
    in the same order (the dense path runs the same kernel on transposed copies), at odd sizes
    and channel counts too, where rows are shorter than a vector."""
    for density in (0.5, 0.1):
        last, first = passes_both_layouts(shape, density, path)
        for name, a, b in zip(("forward", "input_grad", "filter_grad", "backward dx",
                               "backward dw"), last, first):
            # NHWC's strided 1x1 input gradient is XLA's (auto, dense): equal to rounding there
            if name in ("input_grad", "backward dx") and shape[4] == 1 and shape[3] == 2 \
                    and path != "sparse":
                assert relative_error(a, b) < 1e-5, name
            else:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[5], SHAPES[10]])
def test_nchw_masked_conv_and_its_gradients_match_xla(shape):
    x, kernel, mask, stride, padding = layer(shape, 0.1)

    @jax.jit
    def both(x, kernel):
        def loss(conv):
            return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
        native = lambda x, w: sc.masked_conv(x, w, mask, stride, padding, layout="NCHW")  # noqa
        xla = lambda x, w: sc.reference_masked_conv(x, w, mask, stride, padding, "NCHW")  # noqa
        return [(f(x, kernel), jax.grad(loss(f), (0, 1))(x, kernel)) for f in (native, xla)]

    (got, got_grads), (want, want_grads) = both(nchw(x), kernel)
    assert got.shape == want.shape and got.shape[1] == kernel.shape[-1]
    assert relative_error(want, got) < 1e-5
    for a, b in zip(want_grads, got_grads):
        assert relative_error(a, b) < 1e-5
    assert not np.any(np.asarray(got_grads[1])[~np.asarray(mask)])


def test_a_bad_layout_is_refused_by_name():
    x, kernel, mask, _, _ = layer((8, 16, 16, 1, 3), 0.5)
    with pytest.raises(ValueError, match="layout 'NWHC' must be one of NHWC, NCHW"):
        sc.masked_conv(x, kernel, mask, 1, 1, layout="NWHC")
    with pytest.raises(ValueError, match="must be NCHW"):
        sc.masked_conv(x, kernel, mask, 1, 1, layout="NCHW")  # x is NHWC: 8 channels, not 16


# A subprocess's check of a build for AVX2 only (x86-64-v3), with its own cache: every pass of
# every CIFAR layer shape at density 0.1, forced dense and sparse.
AVX2_CHECK = """
import sys
sys.path.insert(0, {repo!r})
from tests.test_sparse_conv import SHAPES, check_against_xla
from tests.test_sparse_conv import passes_both_layouts
import numpy as np
for shape in SHAPES[:7]:
    for path in ("sparse", "dense"):
        check_against_xla(shape, 0.1, path)
for shape in SHAPES:
    last, first = passes_both_layouts(shape, 0.1, "sparse")
    for a, b in zip(last, first):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(build.compiler() is None or os.uname().machine != "x86_64",
                    reason="needs a C++ compiler for x86-64")
def test_an_avx2_build_matches_xla(tmp_path: Path):
    env = {**os.environ, "LOTTERY_KD_MARCH": "x86-64-v3", "LOTTERY_KD_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", AVX2_CHECK.format(repo=str(REPO))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    assert list(tmp_path.rglob("sparse_conv_cpu_*.so")), "the x86-64-v3 build was not used"


# The register tiles are sized per instruction set (cpu_common.h: kLanes), so the branch this
# machine does not run must still compile: both, type-checked for every kernel source (fast: no
# code generation). The x86-64-v3 build is also run against XLA above (slow).
@pytest.mark.skipif(build.compiler() is None or os.uname().machine != "x86_64",
                    reason="needs a C++ compiler for x86-64")
@pytest.mark.parametrize("march", ["x86-64-v4", "x86-64-v3"])
def test_every_kernel_source_compiles_for_avx512_and_for_avx2(march: str):
    for source in ("conv3x3_cpu.cc", "sparse_conv_cpu.cc", "batch_norm_cpu.cc"):
        done = subprocess.run(
            [build.compiler(), "-fsyntax-only", f"-march={march}", "-std=c++17", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{build.KERNEL_DIR}",
             str(build.KERNEL_DIR / source)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{source} for {march}:\n{done.stderr[-3000:]}"


def _avx512_build() -> bool:
    """Whether the kernels here compile their AVX-512 branch (-march=native on an AVX-512 CPU)."""
    march = os.environ.get("LOTTERY_KD_MARCH") or "native"
    return march == "native" and " avx512f" in build.cpu_signature()


# (shape, density, which path "auto" takes: on AVX-512, on AVX2) around the filter gradient's
# crossovers in sparse_conv_cpu.cc: AVX-512 0.25, AVX2 0.3, and 0.5 on AVX2 for 16-channel layers
CHOICES = [((32, 16, 16, 1, 3), 0.45, "dense", "sparse"),
           ((16, 32, 32, 1, 3), 0.28, "dense", "sparse"),
           ((16, 32, 32, 1, 3), 0.35, "dense", "dense"),
           ((8, 64, 64, 1, 3), 0.2, "sparse", "sparse")]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the crossovers measured are x86's")
@pytest.mark.parametrize("shape,density,on_avx512,on_avx2", CHOICES)
def test_auto_takes_the_path_its_instruction_sets_crossover_names(shape, density, on_avx512,
                                                                  on_avx2):
    """The per-layer choice, bit for bit: the filter gradient on "auto" equals the path its
    crossover picks and differs from the other one (their sums over pixels run in other
    orders; the forward passes of both add the nonzero taps in one order, so bits cannot tell
    them apart)."""
    hw, c, k, stride, size = shape
    order = np.argsort(np.asarray(jax.random.uniform(jax.random.key(2), (size * size * c * k,))))
    mask = np.zeros(order.size, np.float32)
    mask[order[:round(density * order.size)]] = 1.0  # exactly `density`
    mask = jnp.asarray(mask.reshape(size, size, c, k))
    x = jax.random.normal(jax.random.key(3), (4, hw, hw, c))
    dy = jax.random.normal(jax.random.key(4), (4, hw // stride, hw // stride, k))
    out = {path: np.asarray(sc.filter_grad(x, dy, mask, stride, 1, path)) for path in sc.PATHS}
    expected = on_avx512 if _avx512_build() else on_avx2
    assert out["dense"].tobytes() != out["sparse"].tobytes()
    assert out["auto"].tobytes() == out[expected].tobytes()
