"""Gradual magnitude pruning (Zhu & Gupta 2017): the cubic schedule, exact counts at every update,
pruned weights 0.0 for good, no dense gradient, and a study run with KD."""

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd import config as config_lib
from lottery_kd.config.defaults import get_config
from lottery_kd.config.identity import ADDED_KEYS
from lottery_kd.sparsity import dynamic, gradual, masks as masks_lib
from lottery_kd.sparsity.distributions import num_to_prune, split_keep
from lottery_kd.sparsity.gradual import GradualPruning, cubic_sparsity, keep_target
from lottery_kd.study import lottery
from lottery_kd.study.study import Study
from lottery_kd.training import optim
from lottery_kd.training.callbacks import MaskUpdates
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config


# ---- the schedule (pure functions) ---------------------------------------------------------
def test_the_schedule_is_cubic_from_zero_and_ends_exactly_at_the_target():
    start, end, final = 10, 50, 0.8
    assert cubic_sparsity(0, start, end, final) == 0.0
    assert cubic_sparsity(start, start, end, final) == 0.0
    assert cubic_sparsity(30, start, end, final) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(20, start, end, final) == pytest.approx(0.8 * (1 - 0.75 ** 3))
    for step in range(start, end):  # (s_f - s_t) / (s_f - s_i) = (1 - progress)^3
        progress = (step - start) / (end - start)
        assert (final - cubic_sparsity(step, start, end, final)) / final == \
            pytest.approx((1 - progress) ** 3, abs=1e-12)
    values = [cubic_sparsity(step, start, end, final) for step in range(60)]
    assert values == sorted(values)  # never less sparse later
    assert cubic_sparsity(end, start, end, final) == final  # exactly, not approximately
    assert cubic_sparsity(end + 7, start, end, final) == final
    assert cubic_sparsity(5, 5, 5, 0.9) == 0.9  # start == end: all at once


def test_start_and_end_resolve_to_steps_with_the_end_before_training_ends():
    assert gradual.pruning_steps(0.25, 0.75, 100) == (25, 75)
    assert gradual.pruning_steps(0.5, 1.0, 40) == (20, 39)  # the last step still prunes
    assert gradual.pruning_steps(0.0, 0.5, 1) == (0, 0)


@pytest.mark.parametrize("start,end,delta_t,expected", [
    (10, 47, 10, [20, 30, 40, 47]),  # (end - start) not a multiple of delta_t: 47 too
    (10, 50, 10, [20, 30, 40, 50]),
    (0, 12, 100, [12]),  # delta_t longer than the schedule: one update, at the end
    (7, 7, 5, [7]),
])
def test_updates_come_every_delta_t_and_at_the_end_step(start, end, delta_t, expected):
    update = GradualPruning(0.8, delta_t, start, end)
    assert update.update_steps() == expected
    assert [step for step in range(end + 50) if update.due(step)] == expected
    assert not update.needs_grads and update.method == "gmp" == gradual.NAME


def test_the_kept_count_rounds_as_every_masking_function():
    assert keep_target(1000, 0.8) == 200
    assert keep_target(1000, 0.07) == 930  # 0.07 x 1000 is 70, not 71 (float noise)
    assert keep_target(999, 0.8) == 999 - math.ceil(0.8 * 999)


# ---- the masks -----------------------------------------------------------------------------
def _tree():
    rng = np.random.default_rng(0)
    params = {"stem": {"kernel": rng.standard_normal((3, 3, 1, 8))},
              "conv": {"kernel": rng.standard_normal((3, 3, 8, 16))},
              "fc": {"kernel": rng.standard_normal((16, 10)), "bias": rng.standard_normal(10)},
              "bn": {"scale": np.ones(16)}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return params, masks_lib.create(params)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_each_update_keeps_exactly_the_scheduled_count_of_the_largest_weights(distribution):
    params, masks = _tree()
    update = GradualPruning(0.9, 4, 3, 21, distribution=distribution)
    total = masks_lib.count(masks)[1]
    assert total == 72 + 1152  # the conv scope: both convolutions, not fc
    shapes = [np.shape(leaf) for name, leaf in masks_lib.named_leaves(masks)
              if masks_lib.is_prunable(name, np.shape(leaf))]  # tree order: conv, stem
    for step in update.update_steps():
        remaining = [kept for kept, _ in masks_lib.layer_counts(masks).values()]
        new = update.new_masks(step, params, masks)
        kept = masks_lib.count(new)[0]
        assert kept == total - num_to_prune(total, update.sparsity_at(step))  # integer-exact
        layers = [kept for kept, _ in masks_lib.layer_counts(new).values()]
        assert layers == split_keep(distribution, shapes, remaining, kept)
        if distribution == "uniform":  # each layer within one weight of the same density
            assert all(abs(k - kept * math.prod(s) / total) < 1 for k, s in zip(layers, shapes))
        for (name, old_leaf), new_leaf, weight in zip(masks_lib.named_leaves(masks),
                                                      jax.tree.leaves(new),
                                                      jax.tree.leaves(params)):
            old_leaf, new_leaf = np.asarray(old_leaf), np.asarray(new_leaf)
            assert not (new_leaf & ~old_leaf).any(), name  # never revives
            if not masks_lib.is_prunable(name, old_leaf.shape):
                assert new_leaf.all(), name
            pruned_now = old_leaf & ~new_leaf
            if pruned_now.any():  # the smallest of what was alive go
                magnitude = np.abs(np.asarray(weight))
                assert magnitude[pruned_now].max() <= magnitude[new_leaf].min(), name
        masks = new
        params = masks_lib.apply(params, masks)
    assert masks_lib.count(masks)[0] == keep_target(total, 0.9)
    assert masks_lib.sparsity(masks) == pytest.approx(0.9, abs=1 / total)


def test_pruned_weights_become_zero_and_lose_their_momentum():
    params, masks = _tree()
    optimizer = optim.sgd_direction(0.9, 0.0)
    opt_state = jax.tree.map(jnp.ones_like, optimizer.init(params))
    new = GradualPruning(0.5, 1, 0, 1, distribution="uniform").new_masks(1, params, masks)
    new_params, new_state = dynamic.reset_grown(optimizer, opt_state, params, masks, new)
    for name in ("stem", "conv"):
        alive = np.asarray(new[name]["kernel"])
        assert not alive.all() and alive.any()
        assert np.all(np.asarray(new_params[name]["kernel"])[~alive] == 0.0)
        assert np.all(np.asarray(new_state[1].trace[name]["kernel"])[~alive] == 0.0)
        np.testing.assert_array_equal(np.asarray(new_params[name]["kernel"])[alive],
                                      np.asarray(params[name]["kernel"])[alive])


def test_the_flop_schedule_replays_the_counts_of_every_update():
    params, masks = _tree()
    update = GradualPruning(0.8, 5, 5, 27, distribution="erk")
    stretches = update.count_schedule(masks, 0, 40)
    assert [(first, steps) for first, steps, _ in stretches] == \
        [(0, 10), (10, 5), (15, 5), (20, 5), (25, 2), (27, 13)]
    assert stretches[0][2] == {"conv/kernel": [1152, 1152], "stem/kernel": [72, 72]}  # dense
    for (first, _, counts), (_, _, before) in zip(stretches[1:], stretches):  # as new_masks
        masks = update.new_masks(first, masks_lib.apply(params, masks), masks)
        assert counts == {name: list(c) for name, c in masks_lib.layer_counts(masks).items()}
        assert all(counts[name][0] <= before[name][0] for name in counts)
    assert sum(kept for kept, _ in stretches[-1][2].values()) == keep_target(72 + 1152, 0.8)
    assert update.count_schedule(masks, 12, 10) == [(12, 3, stretches[1][2]),
                                                    (15, 5, stretches[2][2]),
                                                    (20, 2, stretches[3][2])]


# ---- config and a study --------------------------------------------------------------------
def test_gmp_settings_are_validated_by_name():
    config = get_config()
    config.dynamic.method = "gmp"
    config_lib.validate(config)
    config.dynamic.init = "sparse"
    with pytest.raises(config_lib.ConfigError, match=r"dynamic.init='sparse' is invalid: not "
                                                     r"with dynamic.method='gmp'"):
        config_lib.validate(config)
    config.dynamic.init = "dense"
    config.dynamic.start_fraction = 0.75
    with pytest.raises(config_lib.ConfigError, match=r"dynamic.start_fraction=0.75 is invalid: "
                                                     r"below dynamic.end_fraction=0.75"):
        config_lib.validate(config)
    config.dynamic.start_fraction = -0.1
    with pytest.raises(config_lib.ConfigError, match=r"dynamic.start_fraction=-0.1 .*\[0, 1\]"):
        config_lib.validate(config)
    config = get_config()
    config.dynamic.method = "rigl"
    config.dynamic.start_fraction = 0.1
    with pytest.raises(config_lib.ConfigError, match=r"dynamic.start_fraction=0.1 is invalid: "
                                                     r"applies to dynamic.method='gmp' only"):
        config_lib.validate(config)
    assert ADDED_KEYS["dynamic.start_fraction"] == get_config().dynamic.start_fraction


class UpdateSpy:
    """Wraps MaskUpdates.on_step_begin: before each update, the weights pruned so far are still
    exactly 0.0; after it, (step, kept count, masks) are recorded and the new masks revive none."""

    def __init__(self, monkeypatch):
        self.updates, original = [], MaskUpdates.on_step_begin

        def spy(callback, loop):
            before = [np.asarray(m) for m in jax.tree.leaves(loop.masks)]
            for p, m in zip(jax.tree.leaves(loop.state.params), before):
                assert np.all(np.asarray(p)[~m] == 0.0)  # stayed zero through training
            original(callback, loop)
            after = [np.asarray(m) for m in jax.tree.leaves(loop.masks)]
            if any(not np.array_equal(x, y) for x, y in zip(before, after)):
                assert all(not (y & ~x).any() for x, y in zip(before, after))  # no revival
                for p, m in zip(jax.tree.leaves(loop.state.params), after):
                    assert np.all(np.asarray(p)[~m] == 0.0)  # pruned: 0.0 at once
                self.updates.append((loop.global_step, masks_lib.count(loop.masks)[0]))
        monkeypatch.setattr(MaskUpdates, "on_step_begin", spy)
        monkeypatch.setattr(Trainer, "dense_gradient",
                            lambda *_: pytest.fail("gmp asked for a dense gradient"))


def test_a_gmp_study_with_kd_prunes_on_schedule_to_the_target_sparsity(tmp_path, monkeypatch):
    """One epoch of 19 steps: pruning from step 4 to 14 every 3 steps (7, 10, 13) and at 14,
    each update to the scheduled count; the row at exactly the target count, named gmp_kd."""
    config = make_tiny_config()
    config.train.epochs = 1
    config.dynamic.method = "gmp"
    config.dynamic.sparsity = 0.8
    config.dynamic.delta_t = 3
    config.dynamic.distill = True
    config.dynamic.distribution = "uniform"
    assert Study.dynamic_name(SimpleNamespace(config=config)) == "gmp_kd"
    spy = UpdateSpy(monkeypatch)
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "gmp_kd")]
    dense, gmp = rows
    total = gmp["prunable_weights"]
    assert dense["steps"] == gmp["steps"] == 19
    schedule = GradualPruning(0.8, 3, *gradual.pruning_steps(0.25, 0.75, 19))
    assert schedule.update_steps() == [7, 10, 13, 14]
    assert spy.updates == [(step, keep_target(total, schedule.sparsity_at(step)))
                           for step in (7, 10, 13, 14)]
    assert gmp["remaining_weights"] == keep_target(total, 0.8) == spy.updates[-1][1]
    assert gmp["sparsity"] == 1 - keep_target(total, 0.8) / total == pytest.approx(0.8, abs=1e-3)
    assert gmp["distill"]
    # dense until the first update, so more than a run at 80% throughout, less than dense
    assert 0.2 * dense["train_flops_sparse"] < gmp["train_flops_sparse"] < \
        gmp["train_flops_dense"]
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    final = run.snapshots.restore("level_1_gmp_kd", run.snapshot_template())
    for p, m in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(final["masks"])):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
    config.dynamic.distill = False
    assert Study.dynamic_name(SimpleNamespace(config=config)) == "gmp"
