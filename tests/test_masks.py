"""sparsity.masks: create, apply and count masks, and the prune scopes (conv, conv_fc, a callable).

Expected values are computed by hand / with plain numpy, never with the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity import pruning
from lottery_kd.models import get_model
from tests.sparsity_helpers import flat_named, small_params


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
