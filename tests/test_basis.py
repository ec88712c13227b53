"""Lottery tickets in another basis (DCT, random orthogonal) and structured filter pruning."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from lottery_kd.study import lottery

from lottery_kd.sparsity import masks as masks_lib, pruning
from lottery_kd.models import get_model
from lottery_kd.models.basis import BasisModel, dct_matrix, random_orthogonal, transform
from lottery_kd.training.steps import init_variables
from tests.conftest import make_tiny_config


@pytest.mark.parametrize("n", [1, 3, 16])
def test_bases_are_orthonormal(n):
    np.testing.assert_allclose(dct_matrix(n) @ dct_matrix(n).T, np.eye(n), atol=1e-6)
    q = random_orthogonal(n, 7)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-5)
    assert np.array_equal(q, random_orthogonal(n, 7))


def test_dct_coefficients_are_scipys_orthonormal_dct_over_kh_kw_cin():
    kernel = np.random.default_rng(0).standard_normal((3, 3, 16, 8)).astype(np.float32)
    coefficients = np.asarray(transform(jnp.asarray(kernel), "dct", 0))
    expected = scipy.fft.dctn(kernel.astype(np.float64), type=2, axes=(0, 1, 2), norm="ortho")
    np.testing.assert_allclose(coefficients, expected, atol=1e-5)
    back = np.asarray(transform(jnp.asarray(coefficients), "dct", 0, inverse=True))
    np.testing.assert_allclose(back, kernel, atol=1e-5)


def test_random_basis_round_trips_and_preserves_the_norm():
    kernel = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 4, 5)), jnp.float32)
    coefficients = transform(kernel, "random", 3)
    assert float(jnp.linalg.norm(coefficients)) == pytest.approx(float(jnp.linalg.norm(kernel)),
                                                                 rel=1e-5)
    np.testing.assert_allclose(transform(coefficients, "random", 3, inverse=True), kernel,
                               atol=1e-5)


@pytest.mark.parametrize("basis", ["dct", "random"])
def test_a_wrapped_model_starts_as_the_same_function(basis):
    base = get_model("digits_convnet", 10)
    wrapped = get_model("digits_convnet", 10, basis=basis)
    assert isinstance(wrapped, BasisModel)
    params, stats = init_variables(base, jax.random.key(0), (8, 8, 1))
    coefficients, stats_w = init_variables(wrapped, jax.random.key(0), (8, 8, 1))
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    expected = base.apply({"params": params, "batch_stats": stats}, images, train=False)
    got = wrapped.apply({"params": coefficients, "batch_stats": stats_w}, images, train=False)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(coefficients["conv2"]["kernel"], params["conv2"]["kernel"])


def test_unknown_basis_names_the_allowed_ones():
    with pytest.raises(ValueError, match="model.basis.*dct, random"):
        get_model("digits_convnet", 10, basis="wavelet")


@pytest.mark.slow  # 12 s; test_a_wrapped_model_starts_as_the_same_function runs by default
def test_a_dct_ticket_at_half_sparsity_trains_and_its_weights_are_the_inverse_dct(tmp_path):
    config = make_tiny_config()
    config.train.epochs = 6
    config.model.basis = "dct"
    config.prune.levels = 1
    config.prune.schedule = "oneshot"
    config.prune.fraction = 0.5
    config.lottery.variants = "lt,kd"
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["dense", "lt", "kd"]
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert rows[0]["test_accuracy"] > 0.9 and rows[1]["test_accuracy"] > 0.8, rows
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    final = run.snapshots.restore("level_1_kd", run.snapshot_template())
    masked = masks_lib.apply(final["params"], final["masks"])
    weights = run.model.to_weights(masked)
    for name in ("conv1", "conv2", "conv3"):
        coefficients = np.asarray(masked[name]["kernel"], np.float64)
        assert np.all(coefficients[~np.asarray(final["masks"][name]["kernel"])] == 0.0)
        expected = scipy.fft.idctn(coefficients, type=2, axes=(0, 1, 2), norm="ortho")
        np.testing.assert_allclose(weights[name]["kernel"], expected, atol=1e-5)
        assert np.count_nonzero(np.abs(expected) > 1e-6) > np.count_nonzero(coefficients)
    # The network computes with exactly those weights.
    images = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    base = get_model("digits_convnet", 10)
    expected = base.apply({"params": weights, "batch_stats": final["batch_stats"]}, images,
                          train=False)
    got = run.model.apply({"params": masked, "batch_stats": final["batch_stats"]}, images,
                          train=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_magnitude_filter_removes_whole_filters_by_l2_norm():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 10)).astype(np.float32)
    kernel[..., 4] *= 0.01
    kernel[..., 7] *= 0.02
    kernel[..., 1] *= 0.03
    params = {"conv": {"kernel": jnp.asarray(kernel)}, "fc": {"kernel": jnp.ones((10, 3))}}
    masks = masks_lib.create(params)
    new = pruning.get("magnitude_filter")(params, masks, 0.25)
    mask = np.asarray(new["conv"]["kernel"])
    removed = [unit for unit in range(10) if not mask[..., unit].any()]
    assert removed == [1, 4, 7]  # ceil(0.25 x 10) = 3 filters, the smallest norms
    assert all(mask[..., unit].all() for unit in range(10) if unit not in removed)
    assert np.asarray(new["fc"]["kernel"]).all()
    again = pruning.get("magnitude_filter")(params, new, 0.25)
    remaining = sum(np.asarray(again["conv"]["kernel"])[..., u].any() for u in range(10))
    assert remaining == 7 - math.ceil(0.25 * 7)
