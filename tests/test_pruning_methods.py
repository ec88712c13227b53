"""sparsity.pruning's built-in methods: magnitude_global, magnitude_layerwise and random.

Exact counts, order and ties, level after level, by hand and as property tests. Expected values
are computed by hand / with plain numpy, never with the code under test.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity import pruning
from tests.sparsity_helpers import (CONV_FC_LEAVES, CONV_LEAVES, ceil_frac, flat_named,
                                    in_scope_vectors, small_params)


# --------------------------------------------------------------------------------------------
# magnitude_global


@pytest.mark.parametrize("scope,names", [("conv", CONV_LEAVES), ("conv_fc", CONV_FC_LEAVES)])
def test_magnitude_global_successive_levels(scope, names):
    params = small_params(3)
    fn = pruning.get("magnitude_global")
    mask = masks_lib.create(params, scope)
    total = sum(flat_named(params)[n].size for n in names)
    remaining = total
    for level in range(1, 6):
        w, alive = in_scope_vectors(params, mask, names)
        assert int(alive.sum()) == remaining
        new_mask = fn(params, mask, 0.2, scope=scope)
        _, new_alive = in_scope_vectors(params, new_mask, names)

        k = ceil_frac(2, 10, remaining)  # ceil(0.2 * remaining)
        # the k smallest |w| among the alive in-scope weights (numpy argsort over all of them)
        alive_idx = np.flatnonzero(alive)
        expected_removed = alive_idx[np.argsort(np.abs(w[alive_idx]), kind="stable")[:k]]
        expected_alive = alive.copy()
        expected_alive[expected_removed] = False
        np.testing.assert_array_equal(new_alive, expected_alive)
        assert int(alive.sum() - new_alive.sum()) == k
        assert not np.any(new_alive & ~alive)  # never revived

        # out-of-scope leaves stay all-true, dtypes/shapes unchanged
        for name, leaf in flat_named(new_mask).items():
            assert leaf.dtype == np.bool_
            assert leaf.shape == flat_named(params)[name].shape
            if name not in names:
                assert leaf.all(), name
        masks_lib.validate(new_mask, params, scope)

        remaining -= k
        mask = new_mask
        # Make the pruned weights the largest of all: they must still not come back.
        params = jax.tree.map(lambda p, m: jnp.where(m, p, 1e6), params, mask)
    # 92 -> 73 -> 58 -> 46 -> 36 -> 28 for conv (hand-computed ceil(0.2 r) chain)
    if scope == "conv":
        assert remaining == 28


def test_magnitude_global_is_global_not_layerwise():
    """conv_a all tiny, conv_b all large: a global ranking prunes only conv_a."""
    params = small_params(4)
    params["conv_a"]["kernel"] = params["conv_a"]["kernel"] * 1e-3
    new = pruning.get("magnitude_global")(params, masks_lib.create(params), 0.5)
    flat = flat_named(new)
    assert int((~flat["conv_a/kernel"]).sum()) == 46  # ceil(0.5 * 92)
    assert flat["conv_b/kernel"].all()


def test_magnitude_global_float_noise_does_not_add_one():
    """0.07 * 100 is 7.000000000000001 in floating point; the rule means ceil(7) = 7."""
    assert 0.07 * 100 > 7  # the float trap this test is about
    kernel = np.arange(1, 101, dtype=np.float32).reshape(1, 1, 10, 10)
    params = {"c": {"kernel": jnp.asarray(kernel)}}
    new = pruning.get("magnitude_global")(params, masks_lib.create(params), 0.07)
    removed = ~np.asarray(new["c"]["kernel"]).reshape(-1)
    assert int(removed.sum()) == 7
    assert np.flatnonzero(removed).tolist() == list(range(7))
    new = pruning.get("magnitude_layerwise")(params, masks_lib.create(params), 0.29)
    assert int((~np.asarray(new["c"]["kernel"])).sum()) == 29


def test_magnitude_global_ties_deterministic_by_position():
    params = small_params(5, distinct=False)  # every |w| == 1, random signs
    fn = pruning.get("magnitude_global")
    first = fn(params, masks_lib.create(params), 0.3)
    second = fn(params, masks_lib.create(params), 0.3)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # k = ceil(0.3 * 92) = 28: the first 28 positions in tree order (conv_a then conv_b)
    flat = flat_named(first)
    joined = np.concatenate([flat[n].reshape(-1) for n in CONV_LEAVES])
    expected = np.ones(92, bool)
    expected[:28] = False
    np.testing.assert_array_equal(joined, expected)
    # with an existing mask: ties among the *alive* ones, again by position
    mask = masks_lib.create(params)
    a = np.ones((3, 3, 2, 4), bool)
    a.reshape(-1)[::2] = False  # 36 alive in conv_a at odd positions
    mask["conv_a"]["kernel"] = jnp.asarray(a)
    new = flat_named(fn(params, mask, 0.5))  # remaining 56 -> prune 28
    new_a = new["conv_a/kernel"].reshape(-1)
    assert np.flatnonzero(new_a).tolist() == list(range(57, 72, 2))  # odd positions >= 56
    assert new["conv_b/kernel"].all()


# --------------------------------------------------------------------------------------------
# magnitude_layerwise and random


def test_magnitude_layerwise_each_layer_loses_its_fraction():
    params = small_params(6)
    fn = pruning.get("magnitude_layerwise")
    mask = masks_lib.create(params)
    remaining = {"conv_a/kernel": 72, "conv_b/kernel": 20}
    for _ in range(3):
        new = fn(params, mask, 0.3)
        flat_old, flat_new, flat_p = flat_named(mask), flat_named(new), flat_named(params)
        for name in CONV_LEAVES:
            old_alive, new_alive = flat_old[name].reshape(-1), flat_new[name].reshape(-1)
            w = np.abs(flat_p[name].reshape(-1))
            k = ceil_frac(3, 10, remaining[name])
            assert int(old_alive.sum() - new_alive.sum()) == k
            idx = np.flatnonzero(old_alive)
            expected = old_alive.copy()
            expected[idx[np.argsort(w[idx], kind="stable")[:k]]] = False
            np.testing.assert_array_equal(new_alive, expected)
            remaining[name] -= k
        for name in ("conv_b/bias", "dense/kernel", "dense/bias", "norm/scale", "norm/bias"):
            assert flat_new[name].all()
        mask = new
    # 72 -> 50 -> 35 -> 24 ; 20 -> 14 -> 9 -> 6
    assert remaining == {"conv_a/kernel": 24, "conv_b/kernel": 6}


def test_random_pruning_exact_count_and_rng():
    params = small_params(7)
    fn = pruning.get("random")
    mask = masks_lib.create(params)
    with pytest.raises(ValueError, match="rng"):
        fn(params, mask, 0.2)
    a = fn(params, mask, 0.2, rng=jax.random.key(0))
    b = fn(params, mask, 0.2, rng=jax.random.key(0))
    c = fn(params, mask, 0.2, rng=jax.random.key(1))
    _, alive_a = in_scope_vectors(params, a, CONV_LEAVES)
    _, alive_b = in_scope_vectors(params, b, CONV_LEAVES)
    _, alive_c = in_scope_vectors(params, c, CONV_LEAVES)
    assert int((~alive_a).sum()) == 19  # ceil(0.2 * 92)
    assert int((~alive_c).sum()) == 19
    np.testing.assert_array_equal(alive_a, alive_b)
    assert not np.array_equal(alive_a, alive_c)
    for name, leaf in flat_named(a).items():
        if name not in CONV_LEAVES:
            assert leaf.all()
    # second level from a: exact count, subset
    a2 = fn(params, a, 0.2, rng=jax.random.key(2))
    _, alive_a2 = in_scope_vectors(params, a2, CONV_LEAVES)
    assert int(alive_a.sum() - alive_a2.sum()) == 15  # ceil(0.2 * 73)
    assert not np.any(alive_a2 & ~alive_a)


# --------------------------------------------------------------------------------------------
# property tests


@st.composite
def tree_and_mask(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_layers = draw(st.integers(1, 3))
    params, mask = {}, {}
    for i in range(num_layers):
        shape = tuple(draw(st.integers(1, 3)) for _ in range(4))
        density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        params[f"layer{i}"] = {
            "kernel": jnp.asarray(rng.standard_normal(shape).astype(np.float32)),
            "bias": jnp.asarray(rng.standard_normal(shape[-1]).astype(np.float32))}
        mask[f"layer{i}"] = {"kernel": jnp.asarray(rng.random(shape) < density),
                             "bias": jnp.ones(shape[-1], bool)}
    params["fc"] = {"kernel": jnp.asarray(rng.standard_normal((3, 2)).astype(np.float32))}
    mask["fc"] = {"kernel": jnp.ones((3, 2), bool)}
    return params, mask


@settings(max_examples=30, deadline=None)
@given(tree_and_mask(), st.integers(101, 9499))
def test_magnitude_global_property(tree_mask, numerator):
    params, mask = tree_mask
    fraction = numerator / 10000  # in (0.01, 0.95); exact decimal so the ceiling is exact
    names = [n for n in flat_named(params) if n.endswith("kernel") and n != "fc/kernel"]
    new = pruning.get("magnitude_global")(params, mask, fraction)
    w, alive = in_scope_vectors(params, mask, names)
    _, new_alive = in_scope_vectors(params, new, names)
    remaining = int(alive.sum())
    assert not np.any(new_alive & ~alive)  # subset of the old mask
    assert int(remaining - new_alive.sum()) == ceil_frac(numerator, 10000, remaining)
    removed = alive & ~new_alive
    if removed.any() and new_alive.any():
        assert np.abs(w[removed]).max() <= np.abs(w[new_alive]).min()
    for name, leaf in flat_named(new).items():
        if name not in names:
            assert leaf.all()
    assert math.isclose(masks_lib.count(new)[0], int(new_alive.sum()))


@settings(max_examples=25, deadline=None)
@given(tree_and_mask(), st.sampled_from(["magnitude_global", "magnitude_layerwise", "random"]),
       st.lists(st.integers(101, 9499), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_every_builtin_method_over_levels_only_loses_weights_by_the_contract_count(
        tree_mask, method, numerators, seed):
    """A chain of levels: each mask is a subset of the one before, out-of-scope leaves stay
    all-true, and every level removes exactly ceil(fraction x remaining) (layer-wise: per layer)."""
    params, mask = tree_mask
    names = [n for n in flat_named(params) if n.endswith("kernel") and n != "fc/kernel"]
    prune = pruning.get(method)
    for level, numerator in enumerate(numerators):
        new = prune(params, mask, numerator / 10000, rng=jax.random.key(seed + level))
        _, alive = in_scope_vectors(params, mask, names)
        _, new_alive = in_scope_vectors(params, new, names)
        assert not np.any(new_alive & ~alive), f"level {level}: a pruned weight came back"
        if method == "magnitude_layerwise":
            for name in names:
                before = int(np.asarray(flat_named(mask)[name]).sum())
                after = int(np.asarray(flat_named(new)[name]).sum())
                assert before - after == ceil_frac(numerator, 10000, before), name
        else:
            assert int(alive.sum() - new_alive.sum()) == ceil_frac(numerator, 10000,
                                                                   int(alive.sum()))
        for name, leaf in flat_named(new).items():
            if name not in names:
                assert np.asarray(leaf).all(), f"{name} is out of scope but was pruned"
        mask = new
