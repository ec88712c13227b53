"""SNIP, GraSP, SynFlow and the layer-wise distributions against hand computations on tiny
networks whose gradients and Hessians are known in closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.sparsity import criteria, distributions, masks as masks_lib, pruning
from lottery_kd.models import get_model
from lottery_kd.training.steps import init_variables

RNG = np.random.default_rng(0)
X = RNG.standard_normal((5, 3)).astype(np.float32)       # 5 examples, 3 inputs
Y = RNG.standard_normal((5, 2)).astype(np.float32)       # 2 outputs
W = RNG.standard_normal((3, 2)).astype(np.float32)


def quadratic_loss(params):
    """0.5 ||X W - Y||^2 with W stored as a 1x1 conv kernel [1, 1, 3, 2]."""
    weights = params["layer"]["kernel"].reshape(3, 2)
    return 0.5 * jnp.sum((jnp.asarray(X) @ weights - jnp.asarray(Y)) ** 2)


def linear_params():
    return {"layer": {"kernel": jnp.asarray(W.reshape(1, 1, 3, 2))}}


def test_snip_scores_are_abs_weight_times_gradient():
    gradient = X.T @ (X @ W - Y)                        # d/dW 0.5||XW - Y||^2
    scores = criteria.snip_scores(quadratic_loss, linear_params())["layer"]["kernel"]
    np.testing.assert_allclose(np.asarray(scores).reshape(3, 2), np.abs(W * gradient),
                               rtol=1e-5)


def test_grasp_scores_are_weight_times_hessian_gradient_product():
    gradient = X.T @ (X @ W - Y)
    hessian_gradient = X.T @ X @ gradient               # H acts on W's columns as X^T X
    scores = criteria.grasp_scores(quadratic_loss, linear_params())["layer"]["kernel"]
    np.testing.assert_allclose(np.asarray(scores).reshape(3, 2), W * hessian_gradient,
                               rtol=1e-4)


def test_grasp_removes_the_largest_minus_w_hg_and_snip_the_smallest_sensitivity():
    params, masks = linear_params(), masks_lib.create(linear_params())
    gradient = X.T @ (X @ W - Y)
    grasp_s = -(W * (X.T @ X @ gradient)).reshape(-1)    # GraSP's S = -w * Hg
    kept = np.asarray(criteria.grasp(params, masks, 0.5, loss_fn=quadratic_loss)
                      ["layer"]["kernel"]).reshape(-1)
    assert set(np.flatnonzero(~kept)) == set(np.argsort(-grasp_s)[:3])
    snip_s = np.abs(W * gradient).reshape(-1)
    kept = np.asarray(criteria.snip(params, masks, 0.5, loss_fn=quadratic_loss)
                      ["layer"]["kernel"]).reshape(-1)
    assert set(np.flatnonzero(~kept)) == set(np.argsort(snip_s)[:3])


W1 = RNG.standard_normal((3, 4)).astype(np.float32)
W2 = RNG.standard_normal((4, 2)).astype(np.float32)


def two_layer_params():
    return {"a": {"kernel": jnp.asarray(W1.reshape(1, 1, 3, 4))},
            "b": {"kernel": jnp.asarray(W2.reshape(1, 1, 4, 2))}}


def two_layer_forward(params):
    """A linear two-layer network on the all-ones input."""
    return jnp.ones((1, 3)) @ params["a"]["kernel"].reshape(3, 4) @ \
        params["b"]["kernel"].reshape(4, 2)


def test_synflow_scores_are_path_products_through_each_weight():
    a, b = np.abs(W1), np.abs(W2)
    expected_a = a * b.sum(axis=1)[None, :]              # |W1_ij| * sum_k |W2_jk|
    expected_b = b * a.sum(axis=0)[:, None]              # |W2_jk| * sum_i |W1_ij|
    scores = criteria.synflow_scores(two_layer_forward, two_layer_params())
    np.testing.assert_allclose(np.asarray(scores["a"]["kernel"]).reshape(3, 4), expected_a,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(scores["b"]["kernel"]).reshape(4, 2), expected_b,
                               rtol=1e-5)


@pytest.mark.parametrize("rounds", [1, 100])
def test_synflow_removes_exactly_the_contract_count_and_one_round_is_one_shot(rounds):
    params, masks = two_layer_params(), masks_lib.create(two_layer_params())
    new = criteria.synflow(params, masks, 0.6, forward_fn=two_layer_forward,
                           synflow_rounds=rounds)
    assert masks_lib.count(new) == (20 - math.ceil(0.6 * 20), 20)
    if rounds == 1:
        scores = criteria.synflow_scores(two_layer_forward, params)
        expected = pruning.prune_by_scores(scores, masks, 0.6)
        for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(x, y)


def test_synflow_is_data_free_and_runs_on_a_batchnorm_convnet():
    model = get_model("digits_convnet", 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.create(params)
    new = pruning.get("synflow")(params, masks, 0.9, model=model, batch_stats=batch_stats,
                                 input_shape=(8, 8, 1), synflow_rounds=20)
    remaining, total = masks_lib.count(new)
    assert total - remaining == math.ceil(0.9 * total)
    assert all(r > 0 for r, _ in masks_lib.layer_counts(new).values())  # no layer collapses


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_criteria_score_a_real_batch_through_the_model(method):
    model = get_model("digits_convnet", 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    images = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    labels = jnp.arange(16) % 10
    context = dict(model=model, batch_stats=batch_stats, batch=(images, labels))
    new = pruning.get(method)(params, masks_lib.create(params), 0.3, **context)
    remaining, total = masks_lib.count(new)
    assert total - remaining == math.ceil(0.3 * total)
    other = pruning.get(method)(params, masks_lib.create(params), 0.3,
                                **{**context, "batch": (images[::-1], labels)})
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(new),
                                                         jax.tree.leaves(other)))
    with pytest.raises(ValueError, match="context\\['batch'\\]"):
        pruning.get(method)(params, masks_lib.create(params), 0.3, model=model)


# --------------------------------------------------------------------------------------------
# distributions

SHAPES = [(3, 3, 1, 16), (3, 3, 16, 32), (3, 3, 32, 64)]  # digits_convnet's conv kernels


def test_erk_densities_by_hand():
    # raw density = sum(dims) / prod(dims): 23/144 = 0.16, 54/4608, 102/18432.
    # Keep half of 23184: epsilon * 0.16 > 1 makes conv1 dense (144 kept), then
    # epsilon = (11592 - 144) / (54 + 102) = 73.38..., so conv2 keeps 54 eps, conv3 102 eps.
    densities = distributions.erk_densities(SHAPES, 0.5)
    epsilon = (11592 - 144) / (54 + 102)
    assert densities[0] == 1.0
    assert densities[1] == pytest.approx(epsilon * 54 / 4608)
    assert densities[2] == pytest.approx(epsilon * 102 / 18432)
    # At low density no layer is made dense and all share one epsilon.
    low = distributions.erk_densities(SHAPES, 0.02)
    epsilon = 0.02 * 23184 / (23 + 54 + 102)
    assert low == pytest.approx([epsilon * 23 / 144, epsilon * 54 / 4608, epsilon * 102 / 18432])


def test_erk_keep_counts_are_exact_integers_within_what_is_left():
    keep = distributions.keep_counts("erk", SHAPES, [144, 4608, 18432], 11592, 0.5)
    assert keep == [144, 3963, 7485] and sum(keep) == 11592
    # A later level never asks a layer for more than it still has.
    keep = distributions.keep_counts("erk", SHAPES, [100, 4000, 7000], 11100 - 5000, 0.5)
    assert sum(keep) == 5000 and all(k <= r for k, r in zip(keep, [100, 4000, 7000]))


def test_uniform_removes_the_same_fraction_of_every_layer():
    assert distributions.keep_counts("uniform", SHAPES, [144, 4608, 18432], 0, 0.3) == \
        [144 - math.ceil(0.3 * 144), 4608 - math.ceil(0.3 * 4608), 18432 - math.ceil(0.3 * 18432)]
    assert distributions.keep_counts("global", SHAPES, [1, 2, 3], 1, 0.3) is None


@pytest.mark.parametrize("method", ["magnitude_global", "random", "snip"])
def test_every_criterion_follows_the_erk_distribution(method):
    model = get_model("digits_convnet", 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    images = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    new = pruning.get(method)(params, masks_lib.create(params), 0.5, rng=jax.random.key(3),
                              distribution="erk", model=model, batch_stats=batch_stats,
                              batch=(images, jnp.arange(16) % 10))
    kept = [r for r, _ in masks_lib.layer_counts(new).values()]
    assert kept == [144, 3963, 7485]


def test_unknown_distribution_names_the_allowed_ones():
    with pytest.raises(ValueError, match="prune.distribution.*global, uniform, erk"):
        pruning.prune_by_scores(linear_params(), masks_lib.create(linear_params()), 0.5,
                                distribution="lognormal")
