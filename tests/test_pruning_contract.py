"""sparsity.pruning's contract: the registry, the fraction argument and the masks returned.

A masking function's result is checked, and a study refuses one that breaks the contract.
Expected values are computed by hand / with plain numpy, never with the code under test.
"""

from __future__ import annotations

import uuid
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lottery_kd.sparsity.pruning
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity import pruning
from tests.sparsity_helpers import CONV_LEAVES, in_scope_vectors, small_params


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


@pytest.mark.parametrize("remaining, fraction, expected", [
    (100, 0.07, 7), (100_000_000, 0.07, 7_000_000), (1_700_000, 0.2, 340_000),
    (3, 0.2, 1), (1, 0.5, 1), (10, 0.999, 10)])
def test_num_to_prune_is_exact_ceil_at_any_size(remaining, fraction, expected):
    assert pruning.num_to_prune(remaining, fraction) == expected


def test_num_to_prune_reads_numpy_and_jax_scalars_in_their_own_precision():
    # float(np.float32(0.2)) is 0.20000000298023224, which would prune 21 of 100
    assert pruning.num_to_prune(100, np.float32(0.2)) == 20
    assert pruning.num_to_prune(100, jnp.float32(0.2)) == 20
    assert pruning.num_to_prune(100, np.float64(0.07)) == 7


def test_oneshot_fractions_are_the_decimals_they_stand_for():
    """1 - (1 - 0.3) is 0.30000000000000004 in floats, whose ceil at 1,000 weights is 301;
    one-shot level L removes exactly 1 - (1 - p)^L, as iterative level 1 does for L = 1."""
    from lottery_kd.sparsity.distributions import oneshot_fraction
    assert pruning.num_to_prune(1000, 1.0 - (1.0 - 0.3) ** 1) == 301  # the float noise
    assert pruning.num_to_prune(1000, oneshot_fraction(0.3, 1)) == 300
    assert oneshot_fraction(0.2, 8) == 0.83222784 and oneshot_fraction(0.2, 10) == 0.8926258176
    for p in (0.05, 0.15, 0.2, 0.3, 0.36, 0.4):
        for level in range(1, 8):
            exact = 1 - (1 - Fraction(str(p))) ** level
            for n in (1000, 4321, 267_696):
                expected = min(n, -(-exact.numerator * n // exact.denominator))
                assert pruning.num_to_prune(n, oneshot_fraction(p, level)) == expected


@pytest.mark.parametrize("fraction", [True, "0.2", np.array([0.2, 0.3]), float("nan")])
def test_non_scalar_or_non_real_fraction_is_refused(fraction):
    with pytest.raises(ValueError, match=r"prune\.fraction"):
        pruning.check_fraction(fraction)


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


# --------------------------------------------------------------------------------------------
# what a masking function returns


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
    from lottery_kd.config import ConfigError
    with pytest.raises(ConfigError, match="prune.method='test_float_masks': masking function "
                                          "'test_float_masks' returned invalid masks: .*dtype "
                                          "float32, expected bool"):
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "checkpoints" / "snapshots" / "level_1_lt").exists()


def test_a_function_registered_plainly_is_refused_a_distribution_or_structure_it_ignores():
    """register's defaults declare only what a function honours without trying: the global
    distribution, unstructured masks. ERK or block:16 with such a function is refused by
    validation, before the dense run, instead of pruning globally and unstructured (ERK) or
    failing at level 1 (a structure); the built-ins that pass both on declare them."""
    from lottery_kd.config import ConfigError, validate
    from tests.conftest import make_tiny_config

    if "test_plain_squared" not in pruning.names():
        @pruning.register("test_plain_squared")
        def plain(params, masks, fraction, *, rng=None, scope="conv", **context):
            return pruning.prune_by_scores(jax.tree.map(jnp.square, params), masks, fraction,
                                           scope=scope)
    config = make_tiny_config()
    config.prune.method = "test_plain_squared"
    validate(config)
    config.prune.distribution = "erk"
    with pytest.raises(ConfigError, match="prune.distribution='erk'.*test_plain_squared"):
        validate(config)
    config.prune.distribution, config.prune.structure = "global", "block:16"
    with pytest.raises(ConfigError, match="prune.structure.*test_plain_squared.*does not keep"):
        validate(config)
    for name in ("magnitude_global", "random", "snip", "grasp", "synflow"):
        assert pruning.entry(name).structured and "erk" in pruning.entry(name).distributions
