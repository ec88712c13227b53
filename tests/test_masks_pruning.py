"""Tests for sparsity.masks and sparsity.pruning (contracts: masks, masking functions).

Expected values are computed by hand / with plain numpy, never with the code under test.
"""

from __future__ import annotations

import math
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lottery_kd.sparsity.pruning
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity import pruning
from lottery_kd.models import get_model

# --------------------------------------------------------------------------------------------
# helpers


def ceil_frac(numerator: int, denominator: int, remaining: int) -> int:
    """ceil(numerator / denominator * remaining) in exact integer arithmetic."""
    return -(-numerator * remaining // denominator)


def flat_named(tree) -> dict[str, np.ndarray]:
    """{'a/b/kernel': numpy array} in tree order (dicts flatten by sorted key)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(k.key) for k in path)
        out[name] = np.asarray(leaf)
    return out


def small_params(seed: int = 0, distinct: bool = True) -> dict:
    """A hand-made params tree: two conv layers (4-D kernels), a dense layer, a BatchNorm.

    With distinct=True all |w| are distinct (a shuffled arithmetic progression with random signs),
    so the magnitude order is unambiguous.
    """
    rng = np.random.default_rng(seed)
    shapes = {
        "conv_a/kernel": (3, 3, 2, 4),   # 72  prunable (conv)
        "conv_b/kernel": (1, 1, 4, 5),   # 20  prunable (conv)
        "conv_b/bias": (5,),
        "dense/kernel": (5, 3),          # 15  prunable only under conv_fc
        "dense/bias": (3,),
        "norm/scale": (5,),
        "norm/bias": (5,),
    }
    total = sum(int(np.prod(s)) for s in shapes.values())
    magnitudes = (np.arange(total) + 1.0) / total if distinct else np.ones(total)
    magnitudes = rng.permutation(magnitudes)
    signs = rng.choice([-1.0, 1.0], size=total)
    values = (magnitudes * signs).astype(np.float32)
    tree: dict = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        layer, leaf = name.split("/")
        tree.setdefault(layer, {})[leaf] = jnp.asarray(values[offset:offset + size].reshape(shape))
        offset += size
    return tree


CONV_LEAVES = ["conv_a/kernel", "conv_b/kernel"]
CONV_FC_LEAVES = ["conv_a/kernel", "conv_b/kernel", "dense/kernel"]


@pytest.fixture(scope="module")
def resnet_params():
    """resnet20 params as abstract shapes (no compute), the layout the scopes are defined on."""
    model = get_model("resnet20", 10)
    variables = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))
    return variables["params"]


RESNET20_CONV_KERNELS = sorted(
    ["stem_conv/kernel"]
    + [f"stage{s}_block{b}/conv{c}/kernel" for s in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2)]
    + ["stage2_block1/shortcut_conv/kernel", "stage3_block1/shortcut_conv/kernel"])


# --------------------------------------------------------------------------------------------
# masks: create / apply / counts


def test_create_all_true_bool_with_param_shapes(resnet_params):
    for scope in ("conv", "conv_fc"):
        m = masks_lib.create(resnet_params, scope)
        assert jax.tree.structure(m) == jax.tree.structure(resnet_params)
        flat_m = flat_named(m)
        flat_p = {n: leaf for n, leaf in zip(flat_m, jax.tree.leaves(resnet_params))}
        assert len(flat_m) == len(jax.tree.leaves(resnet_params)) == 65
        for name, leaf in flat_m.items():
            assert leaf is not None
            assert leaf.dtype == np.bool_, name
            assert leaf.shape == tuple(flat_p[name].shape), name
            assert leaf.all(), name


def test_create_no_none_leaves_with_is_leaf():
    params = small_params()
    m = masks_lib.create(params)
    leaves = jax.tree.leaves(m, is_leaf=lambda x: x is None)
    assert all(leaf is not None for leaf in leaves)
    assert len(leaves) == 7


def test_apply_zeroes_exactly_false_entries():
    params = small_params(1)
    rng = np.random.default_rng(1)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.5), params)
    out = masks_lib.apply(params, mask)
    for (name, p), m, o in zip(flat_named(params).items(), jax.tree.leaves(mask),
                               jax.tree.leaves(out)):
        p, m, o = np.asarray(p), np.asarray(m), np.asarray(o)
        assert o.dtype == p.dtype
        assert np.all(o[~m] == 0.0), name
        np.testing.assert_array_equal(o[m], p[m])  # untouched, bit for bit
        assert np.all(p != 0.0)  # so the zeroes really come from the mask


def test_count_sparsity_layer_counts_hand_built():
    conv_a = np.ones((3, 3, 2, 4), bool)           # 72
    conv_a.reshape(-1)[[0, 5, 7, 70]] = False       # 4 pruned -> 68 remaining
    conv_b = np.zeros((1, 1, 4, 5), bool)          # 20
    conv_b.reshape(-1)[:6] = True                   # 6 remaining
    dense = np.ones((5, 3), bool)                   # 15
    dense.reshape(-1)[[1, 2, 3]] = False            # 12 remaining
    mask = {"conv_a": {"kernel": jnp.asarray(conv_a)},
            "conv_b": {"kernel": jnp.asarray(conv_b), "bias": jnp.ones(5, bool)},
            "dense": {"kernel": jnp.asarray(dense), "bias": jnp.ones(3, bool)},
            "norm": {"scale": jnp.ones(5, bool), "bias": jnp.ones(5, bool)}}

    assert masks_lib.layer_counts(mask, "conv") == {"conv_a/kernel": (68, 72),
                                                    "conv_b/kernel": (6, 20)}
    assert masks_lib.layer_counts(mask, "conv_fc") == {"conv_a/kernel": (68, 72),
                                                       "conv_b/kernel": (6, 20),
                                                       "dense/kernel": (12, 15)}
    assert masks_lib.count(mask, "conv") == (74, 92)
    assert masks_lib.count(mask, "conv_fc") == (86, 107)
    assert masks_lib.sparsity(mask, "conv") == pytest.approx(18 / 92, abs=1e-12)
    assert masks_lib.sparsity(mask, "conv_fc") == pytest.approx(21 / 107, abs=1e-12)
    assert masks_lib.sparsity(masks_lib.create(small_params()), "conv") == 0.0


# --------------------------------------------------------------------------------------------
# scopes


def test_conv_scope_selects_exactly_4d_kernels(resnet_params):
    names = masks_lib.prunable_names(resnet_params, "conv")
    assert sorted(names) == RESNET20_CONV_KERNELS
    assert len(names) == 21
    assert "fc/kernel" not in names
    assert not any(n.endswith("/bias") or n.endswith("/scale") for n in names)
    counts = masks_lib.layer_counts(masks_lib.create(resnet_params), "conv")
    assert sorted(counts) == RESNET20_CONV_KERNELS
    # resnet20 conv weights: stem 3*3*3*16; stage1 6 x 3*3*16*16; stage2 3*3*16*32 + 1x1 16*32
    # + 5 x 3*3*32*32; stage3 3*3*32*64 + 1x1 32*64 + 5 x 3*3*64*64
    expected_total = 432 + 6 * 2304 + (4608 + 512 + 5 * 9216) + (18432 + 2048 + 5 * 36864)
    assert masks_lib.count(masks_lib.create(resnet_params), "conv") == (expected_total,
                                                                        expected_total)


def test_conv_fc_scope_adds_fc_kernel_only(resnet_params):
    names = masks_lib.prunable_names(resnet_params, "conv_fc")
    assert sorted(names) == sorted(RESNET20_CONV_KERNELS + ["fc/kernel"])
    assert "fc/bias" not in names


def test_callable_scope(resnet_params):
    only_shortcuts = lambda name, shape: "shortcut" in name  # noqa: E731
    assert sorted(masks_lib.prunable_names(resnet_params, only_shortcuts)) == [
        "stage2_block1/shortcut_conv/kernel", "stage3_block1/shortcut_conv/kernel"]
    # A predicate accepting everything still never selects biases or BatchNorm parameters.
    everything = lambda name, shape: True  # noqa: E731
    assert sorted(masks_lib.prunable_names(resnet_params, everything)) == sorted(
        RESNET20_CONV_KERNELS + ["fc/kernel"])
    # The predicate receives the shape.
    only_1x1 = lambda name, shape: len(shape) == 4 and shape[:2] == (1, 1)  # noqa: E731
    assert sorted(masks_lib.prunable_names(resnet_params, only_1x1)) == [
        "stage2_block1/shortcut_conv/kernel", "stage3_block1/shortcut_conv/kernel"]


def test_callable_scope_in_pruning():
    params = small_params(2)
    only_b = lambda name, shape: name.startswith("conv_b")  # noqa: E731
    new = pruning.get("magnitude_global")(params, masks_lib.create(params), 0.5, scope=only_b)
    flat = flat_named(new)
    assert flat["conv_a/kernel"].all()
    assert int((~flat["conv_b/kernel"]).sum()) == 10
    assert all(flat[n].all() for n in flat if n != "conv_b/kernel")


@pytest.mark.parametrize("call", [
    lambda p: masks_lib.create(p, "dense"),
    lambda p: masks_lib.sparsity(masks_lib.create(p), "all"),
    lambda p: masks_lib.layer_counts(masks_lib.create(p), "convs"),
    lambda p: pruning.get("magnitude_global")(p, masks_lib.create(p), 0.2, scope="fc"),
])
def test_unknown_scope_raises(call):
    with pytest.raises(ValueError) as info:
        call(small_params())
    message = str(info.value)
    assert "prune.scope" in message
    assert "conv" in message and "conv_fc" in message


# --------------------------------------------------------------------------------------------
# magnitude_global


def in_scope_vectors(params, mask, names):
    flat_p, flat_m = flat_named(params), flat_named(mask)
    w = np.concatenate([flat_p[n].reshape(-1).astype(np.float64) for n in names])
    alive = np.concatenate([flat_m[n].reshape(-1) for n in names])
    return w, alive


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
# registry and argument errors


def test_get_unknown_method():
    with pytest.raises(ValueError) as info:
        pruning.get("magnitude")
    message = str(info.value)
    assert "prune.method" in message
    for name in ("magnitude_global", "magnitude_layerwise", "random"):
        assert name in message


@pytest.mark.parametrize("method", ["magnitude_global", "magnitude_layerwise", "random"])
@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, 0.0, 1.0])
def test_bad_fraction(method, fraction):
    params = small_params()
    with pytest.raises(ValueError, match=r"prune\.fraction"):
        pruning.get(method)(params, masks_lib.create(params), fraction, rng=jax.random.key(0))


@pytest.mark.parametrize("fraction", [np.float32(0.2), jnp.float32(0.2)],
                         ids=["np.float32", "jnp.float32"])
def test_float32_fraction_accepted(fraction):
    params = small_params(9)
    new = pruning.get("magnitude_global")(params, masks_lib.create(params), fraction)
    assert masks_lib.count(new) == (73, 92)


def test_register_readme_example():
    name = f"test_squared_{uuid.uuid4().hex}"

    @lottery_kd.sparsity.pruning.register(name)
    def my_criterion(params, masks, fraction, *, rng=None, scope="conv", **context):
        scores = jax.tree.map(lambda w: jnp.abs(w) ** 2, params)
        return lottery_kd.sparsity.pruning.prune_by_scores(scores, masks, fraction, scope=scope)

    assert pruning.get(name) is my_criterion
    assert name in pruning.names()
    params = small_params(8)
    mask = masks_lib.create(params)
    new = pruning.get(name)(params, mask, 0.25, batch=None)  # extra context is accepted
    w, _ = in_scope_vectors(params, mask, CONV_LEAVES)
    _, alive = in_scope_vectors(params, new, CONV_LEAVES)
    expected = np.ones(92, bool)
    expected[np.argsort(np.abs(w), kind="stable")[:23]] = False  # ceil(0.25 * 92) = 23
    np.testing.assert_array_equal(alive, expected)

    def other(params, masks, fraction, **kwargs):
        return masks

    with pytest.raises(ValueError, match=name):
        lottery_kd.sparsity.pruning.register(name)(other)
    assert pruning.get(name) is my_criterion  # the first registration is kept


def test_register_builtin_name_again_raises():
    with pytest.raises(ValueError):
        pruning.register("magnitude_global")(lambda params, masks, fraction, **kw: masks)
    assert pruning.get("magnitude_global") is pruning.magnitude_global


# --------------------------------------------------------------------------------------------
# property test


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


@pytest.mark.parametrize("remaining, fraction, expected", [
    (100, 0.07, 7), (100_000_000, 0.07, 7_000_000), (1_700_000, 0.2, 340_000),
    (3, 0.2, 1), (1, 0.5, 1), (10, 0.999, 10)])
def test_num_to_prune_is_exact_ceil_at_any_size(remaining, fraction, expected):
    assert pruning.num_to_prune(remaining, fraction) == expected


@pytest.mark.parametrize("fraction", [True, "0.2", np.array([0.2, 0.3]), float("nan")])
def test_non_scalar_or_non_real_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match=r"prune\.fraction"):
        pruning.check_fraction(fraction)


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


def test_every_registry_refuses_a_second_entry_under_a_taken_name():
    from lottery_kd.sparsity import dynamic
    from lottery_kd.study import variants
    with pytest.raises(ValueError, match="a different dynamic sparse method named 'rigl'"):
        dynamic.register("rigl")(lambda *args, **kwargs: None)
    with pytest.raises(ValueError, match="a different variant named 'lt'"):
        variants.register(variants.RetrainVariant("lt", weights="rewind", schedule="zero"))
    variants.register(variants.get("lt"))  # the same entry again is fine
    with pytest.raises(ValueError, match="dynamic.method: unknown dynamic sparse method 'x'"):
        dynamic.get("x")


def test_check_result_refuses_revived_weights_and_bad_masks():
    params = {"conv": {"kernel": np.ones((1, 1, 1, 4), np.float32)},
              "bn": {"scale": np.ones(2, np.float32)}}
    old = {"conv": {"kernel": np.array([True, True, False, False]).reshape(1, 1, 1, 4)},
           "bn": {"scale": np.ones(2, bool)}}
    fewer = {"conv": {"kernel": np.array([True, False, False, False]).reshape(1, 1, 1, 4)},
             "bn": {"scale": np.ones(2, bool)}}
    pruning.check_result("mine", fewer, old, params, "conv")  # removes only: fine
    revived = {"conv": {"kernel": np.array([True, False, True, False]).reshape(1, 1, 1, 4)},
               "bn": {"scale": np.ones(2, bool)}}
    with pytest.raises(ValueError, match="'mine' revived 1 pruned weight.* of conv/kernel"):
        pruning.check_result("mine", revived, old, params, "conv")
    scale_pruned = {"conv": fewer["conv"], "bn": {"scale": np.array([True, False])}}
    with pytest.raises(ValueError, match="'mine' returned invalid masks: .*out-of-scope"):
        pruning.check_result("mine", scale_pruned, old, params, "conv")


def test_a_study_refuses_a_masking_function_that_breaks_the_contract(tmp_path):
    """A user's function returning float masks stops the study naming it, before the level."""
    from lottery_kd.study import lottery
    from tests.conftest import make_tiny_config

    @pruning.register("test_float_masks")
    def float_masks(params, masks, fraction, *, rng=None, scope="conv", **context):
        return jax.tree.map(lambda m: jnp.ones(np.shape(m), jnp.float32), masks)

    config = make_tiny_config()
    config.prune.levels, config.lottery.variants = 1, "lt"
    config.prune.method = "test_float_masks"
    with pytest.raises(ValueError, match="'test_float_masks' returned invalid masks: .*dtype "
                                         "float32, expected bool"):
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "checkpoints" / "snapshots" / "level_1_lt").exists()
