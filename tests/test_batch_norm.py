"""FusedBatchNorm (lottery_kd.models.batch_norm) and its native kernel against flax's BatchNorm."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lottery_kd.sparsity import masks as masks_lib

from lottery_kd.training import optim
from lottery_kd.training.steps import TrainState, init_variables, make_train_step
from lottery_kd.kernels import batch_norm as native, build
from lottery_kd.models import get_model
from lottery_kd.models.batch_norm import FusedBatchNorm

NATIVE_LOAD = (build.load("batch_norm_cpu.cc", native._TARGETS) if build.compiler()
               else (False, "no C++ compiler"))
HAVE_NATIVE = NATIVE_LOAD[0]
PATHS = ["native", "jnp"] if HAVE_NATIVE else ["jnp"]


def test_the_native_kernel_builds_wherever_a_compiler_is_found():
    """Its tests are skipped without the kernel; that must mean no compiler (or switched off
    on purpose), never a kernel that stopped compiling."""
    if build.compiler() and os.environ.get("LOTTERY_KD_NATIVE_CONV", "1") != "0":
        assert HAVE_NATIVE, f"batch_norm_cpu.cc did not build: {NATIVE_LOAD[1]}"


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Run a test through the native kernel and through the jnp math."""
    if request.param == "jnp":
        monkeypatch.setattr(native, "applies", lambda y: False)
    return request.param


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def _data(shape, seed=0, offset=1.0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(shape, np.float32) * 2 + offset),
            jnp.asarray(rng.standard_normal(shape, np.float32)),
            jnp.asarray(rng.standard_normal(shape, np.float32)))


def _variables(channels, seed=1):
    rng = np.random.default_rng(seed)
    return {"params": {"scale": jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32),
                       "bias": jnp.asarray(rng.standard_normal(channels), jnp.float32)},
            "batch_stats": {"mean": jnp.asarray(rng.standard_normal(channels), jnp.float32),
                            "var": jnp.asarray(rng.uniform(0.5, 2, channels), jnp.float32)}}


def _losses(y_shape, with_residual, relu):
    """The same scalar through flax's BatchNorm (+ residual, ReLU) and through FusedBatchNorm;
    it also reads the updated running statistics, so their cotangents are not zero."""
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(y_shape), jnp.float32)
    reference = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    fused = FusedBatchNorm(use_running_average=False)

    def finish(out, updated):
        stats = updated["batch_stats"]
        return jnp.sum(jnp.sin(out) * weights) + jnp.sum(3 * stats["mean"] + 2 * stats["var"])

    def flax_loss(variables, y, residual):
        out, updated = reference.apply(variables, y, mutable=["batch_stats"])
        if with_residual:
            out = out + residual
        return finish(jnp.where(out > 0, out, 0) if relu else out, updated)

    def fused_loss(variables, y, residual):
        out, updated = fused.apply(variables, y, residual if with_residual else None, relu,
                                   mutable=["batch_stats"])
        return finish(out, updated)
    return flax_loss, fused_loss


@pytest.mark.parametrize("shape", [(4, 6, 6, 16), (3, 5, 7, 32), (2, 4, 4, 64)])
@pytest.mark.parametrize("with_residual,relu", [(False, False), (False, True), (True, True),
                                                (True, False)])
def test_values_and_gradients_match_flax(path, shape, with_residual, relu):
    y, residual, _ = _data(shape)
    variables = _variables(shape[-1])
    flax_loss, fused_loss = _losses(shape, with_residual, relu)
    assert relative_error(flax_loss(variables, y, residual), fused_loss(variables, y, residual)) \
        < 1e-5
    want = jax.grad(flax_loss, (0, 1, 2))(variables, y, residual)
    got = jax.jit(jax.grad(fused_loss, (0, 1, 2)))(variables, y, residual)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert relative_error(a, b) < 1e-4


def test_second_order_gradients_match_flax(path):
    """GraSP differentiates the gradient again: through the kernel it goes via the jnp math."""
    shape = (2, 4, 4, 16)
    y, residual, _ = _data(shape)
    variables = _variables(16)
    flax_loss, fused_loss = _losses(shape, True, True)

    def gradient_norm(loss):
        return lambda y: jnp.sum(jax.grad(loss, 1)(variables, y, residual) ** 2)
    assert relative_error(jax.grad(gradient_norm(flax_loss))(y),
                          jax.jit(jax.grad(gradient_norm(fused_loss)))(y)) < 1e-4


def test_running_statistics_and_eval_mode_match_flax(path):
    y, _, _ = _data((4, 5, 5, 32))
    variables = _variables(32)
    _, want = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5).apply(
        variables, y, mutable=["batch_stats"])
    _, got = FusedBatchNorm(use_running_average=False).apply(variables, y,
                                                             mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        assert relative_error(a, b) < 1e-5
    reference = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(variables, y)
    assert relative_error(reference, FusedBatchNorm(use_running_average=True).apply(variables, y)) \
        < 1e-6
    init = FusedBatchNorm(use_running_average=False).init(jax.random.key(0), y)
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, nn.BatchNorm(
        use_running_average=False).init(jax.random.key(0), y))


@pytest.mark.skipif(not HAVE_NATIVE, reason="no C++ compiler: the native kernel is optional")
def test_native_statistics_survive_a_large_mean():
    """E[y^2] - E[y]^2 in float32 cancels when |mean| >> std; the kernel sums y - (first row)."""
    y = jnp.asarray(1000 + np.random.default_rng(0).standard_normal((64, 8, 8, 16), np.float32))
    _, mean, var = native.forward(y, jnp.ones(16), jnp.zeros(16), None, 1e-5, False)
    exact = np.asarray(y, np.float64).reshape(-1, 16)
    assert relative_error(exact.mean(0), mean) < 1e-6
    assert relative_error(exact.var(0), var) < 1e-4


@pytest.mark.skipif(not HAVE_NATIVE, reason="no C++ compiler: the native kernel is optional")
def test_native_results_do_not_depend_on_the_thread_count(monkeypatch):
    y, residual, g = _data((16, 8, 8, 32))
    scale, bias = jnp.full(32, 1.3), jnp.full(32, 0.2)

    def run():
        out, mean, var = native.forward(y, scale, bias, residual, 1e-5, True)
        grads = native.backward(g, out, y, scale, mean, var, jnp.zeros(32), jnp.zeros(32),
                                1e-5, True, True)
        return [np.asarray(x) for x in (out, mean, var, *grads)]
    monkeypatch.setenv("LOTTERY_KD_CONV_THREADS", "1")
    single = run()
    monkeypatch.setenv("LOTTERY_KD_CONV_THREADS", str(max(2, os.cpu_count() or 2)))
    for a, b in zip(single, run()):
        np.testing.assert_array_equal(a, b)


def test_native_kernel_is_used_only_where_it_applies():
    assert not native.applies(jnp.zeros((4, 4, 4, 24)))  # channels not a multiple of 16
    assert not native.applies(jnp.zeros((4, 4, 4, 16), jnp.bfloat16))
    assert native.applies(jnp.zeros((4, 4, 4, 16))) == (HAVE_NATIVE and jax.device_count() == 1)


@pytest.mark.slow  # 21 s; the per-shape value and gradient checks above run by default
def test_resnet_train_step_with_fused_norm_matches_flax():
    """A whole masked ResNet-20 step: same variables, loss and updated state either way."""
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8))
    labels = jnp.arange(8) % 10
    states, models = [], {}
    for norm_impl in ("flax", "fused"):
        model = get_model("resnet20", 10, norm_impl=norm_impl)
        params, batch_stats = init_variables(model, jax.random.key(0), (32, 32, 3))
        optimizer = optim.sgd_direction(0.9, 2e-4)
        masks = masks_lib.create(params)
        step = jax.jit(make_train_step(model, optimizer, None,
                                             normalization=((120.0,) * 3, (60.0,) * 3)))
        state = TrainState(jnp.asarray(0), params, batch_stats, optimizer.init(params))
        state, metrics = step(state, masks, images, labels, jnp.float32(0.1), {})
        states.append(state)
        models[norm_impl] = model
    flax_state, fused_state = states
    assert jax.tree.structure(flax_state) == jax.tree.structure(fused_state)
    for a, b in zip(jax.tree.leaves(flax_state), jax.tree.leaves(fused_state)):
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_norm_impl_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError,
                       match="model.norm_impl='bogus' is invalid: allowed: flax, fused"):
        get_model("resnet20", 10, norm_impl="bogus")



@pytest.mark.slow  # 15 s of subprocesses; run it before resuming a long study
def test_step_fingerprint_is_reproducible_and_tells_the_norms_apart():
    """benchmarks.step_fingerprint vouches that a change kept training bit for bit: the same
    settings hash the same twice, and the two BatchNorms' (1e-7 apart) hash differently."""
    from benchmarks.step_fingerprint import fingerprint
    fused = fingerprint("resnet20", "auto", "fused", steps=2, batch_size=8)
    assert fingerprint("resnet20", "auto", "fused", steps=2, batch_size=8) == fused
    assert fingerprint("resnet20", "auto", "flax", steps=2, batch_size=8) != fused
