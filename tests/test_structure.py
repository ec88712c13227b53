"""Structured masks (prune.structure): N:M and block:B through every score-based criterion,
RigL and SET, config validation and a study."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd import config as config_lib
from lottery_kd.config.errors import ConfigError
from lottery_kd.models import get_model
from lottery_kd.sparsity import dynamic, masks as masks_lib, pruning, structure
from lottery_kd.study import lottery
from lottery_kd.training.steps import init_variables
from tests.conftest import make_tiny_config


@pytest.fixture(scope="module")
def resnet20():
    """ResNet-20's parameter tree (shapes from the model, values drawn here: no compile)."""
    shapes = jax.eval_shape(lambda: init_variables(get_model("resnet20", 10), jax.random.key(0),
                                                   (32, 32, 3)))[0]
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)


def _kernels(masks, scope="conv"):
    return [(name, np.asarray(m)) for name, m in masks_lib.named_leaves(masks)
            if masks_lib.is_prunable(name, np.shape(m), scope)]


def _rows_of_four(kernel):
    """[kh, kw, c_in, c_out] -> rows of 4 consecutive input channels."""
    return np.swapaxes(kernel, -1, -2).reshape(-1, 4)


def test_two_of_four_keeps_the_two_largest_of_every_four_input_channels(resnet20):
    new = pruning.magnitude_global(resnet20, masks_lib.create(resnet20), 0.5, scope="conv",
                                   structure="2:4")
    weights = dict(_kernels(resnet20))
    for name, mask in _kernels(new):
        if mask.shape[2] % 4:  # the stem (3 input channels) is out of structure: dense
            assert name.startswith("stem") and mask.all(), name
            continue
        rows, scores = _rows_of_four(mask), np.abs(_rows_of_four(weights[name]))
        assert (rows.sum(axis=1) == 2).all(), name
        assert (np.where(rows, scores, np.inf).min(1) >= np.where(rows, -np.inf, scores).max(1)
                ).all(), name  # every kept weight outranks every pruned one of its row


def test_n_of_m_never_revives_and_refuses_another_fraction(resnet20):
    rng = np.random.default_rng(0)
    start = jax.tree.map(lambda m: jnp.asarray(rng.random(np.shape(m)) < 0.4) if np.ndim(m) == 4
                         else m, masks_lib.create(resnet20))
    new = pruning.magnitude_global(resnet20, start, 0.5, structure="2:4")
    for (name, mask), (_, old) in zip(_kernels(new), _kernels(start)):
        assert not (mask & ~old).any(), name
        if mask.shape[2] % 4 == 0:
            np.testing.assert_array_equal(_rows_of_four(mask).sum(1),
                                          np.minimum(_rows_of_four(old).sum(1), 2))
    with pytest.raises(ValueError, match="prune.fraction=0.5"):
        pruning.magnitude_global(resnet20, masks_lib.create(resnet20), 0.3, structure="2:4")


def test_block16_prunes_whole_blocks_ranked_by_their_summed_magnitude(resnet20):
    masks = masks_lib.create(resnet20)
    new = pruning.magnitude_global(resnet20, masks, 0.7, scope="conv", structure="block:16")
    weights = dict(_kernels(resnet20))
    kept_scores, pruned_scores, blocks, pruned = [], [], 0, 0
    for name, mask in _kernels(new):
        rows = mask.reshape(-1, 16)
        assert np.isin(rows.sum(axis=1), (0, 16)).all(), name  # whole blocks only
        score = np.abs(weights[name]).reshape(-1, 16).sum(axis=1)
        kept_scores += list(score[rows.all(1)])
        pruned_scores += list(score[~rows.any(1)])
        blocks, pruned = blocks + len(rows), pruned + int((~rows.any(1)).sum())
    assert pruned == math.ceil(0.7 * blocks)  # counted in blocks
    assert min(kept_scores) >= max(pruned_scores)
    again = pruning.magnitude_global(resnet20, new, 0.5, scope="conv", structure="block:16")
    assert all(not (m & ~o).any() for (_, m), (_, o) in zip(_kernels(again), _kernels(new)))


def test_block16_under_erk_gives_each_layer_the_erk_density_of_its_kernel(resnet20):
    """ERK scores a layer by its kernel's dimensions (kh + kw + I + O) / (kh kw I O); counted in
    blocks, the layer's grid (kh, kw, I, O/16) would move the densities (the stem 1.00 -> 0.75)."""
    from lottery_kd.sparsity.distributions import erk_densities
    masks = masks_lib.create(resnet20)
    new = pruning.get("magnitude_global")(resnet20, masks, 0.9, scope="conv",
                                          distribution="erk", structure="block:16")
    kernels = _kernels(new)
    expected = erk_densities([m.shape for _, m in kernels], 0.1)
    for (name, mask), density in zip(kernels, expected):
        assert abs(mask.mean() - density) <= 16 / mask.size + 1e-9, (name, mask.mean(), density)
    blocks = sum(m.size // 16 for _, m in kernels)
    assert sum(int(m.sum()) for _, m in kernels) == 16 * (blocks - math.ceil(0.9 * blocks))


@pytest.mark.parametrize("text", ["2:4", "block:16"])
@pytest.mark.parametrize("method", ["magnitude_layerwise", "snip", "synflow",
                                    pytest.param("random", marks=pytest.mark.slow),
                                    pytest.param("grasp", marks=pytest.mark.slow)])
def test_every_score_criterion_keeps_the_structure(method, text):
    model = get_model("digits_convnet", 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    images = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    context = dict(model=model, batch_stats=batch_stats, batch=(images, jnp.arange(16) % 10),
                   input_shape=(8, 8, 1), synflow_rounds=5, structure=text,
                   rng=jax.random.key(2))
    masks = masks_lib.create(params)
    new = pruning.get(method)(params, masks, 0.5, **context)
    pruning.check_result(method, new, masks, params, "conv", text)
    shape = structure.parse(text)
    structured = [m for _, m in _kernels(new) if shape.applies(m.shape)]
    assert len(structured) >= 2 and all(structure.violations(shape, m) == 0
                                        for m in structured)
    assert 0.4 < masks_lib.sparsity(new) < 0.6


def test_check_result_names_a_function_that_ignores_the_structure(resnet20):
    masks = masks_lib.create(resnet20)
    unstructured = pruning.magnitude_global(resnet20, masks, 0.5)
    with pytest.raises(ValueError, match="broke prune.structure=block:16"):
        pruning.check_result("mine", unstructured, masks, resnet20, "conv", "block:16")


@pytest.mark.parametrize("text", ["2:4", "block:16"])
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_rigl_and_set_keep_the_structure_and_the_count(resnet20, method, text):
    masks = pruning.get("random")(resnet20, masks_lib.create(resnet20), 0.5,
                                  rng=jax.random.key(0), structure=text, distribution="uniform")
    params = masks_lib.apply(resnet20, masks)
    rng = np.random.default_rng(3)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(np.shape(p))), params)
    new = dynamic.get(method)(params, masks, grads, 0.3, rng=jax.random.key(1), structure=text)
    shape = structure.parse(text)
    assert masks_lib.layer_counts(new) == masks_lib.layer_counts(masks)
    moved = 0
    for (name, mask), (_, old) in zip(_kernels(new), _kernels(masks)):
        assert structure.violations(shape, mask) == 0, name
        if shape.kind == "nm" and shape.applies(mask.shape):
            assert (_rows_of_four(mask).sum(1) == 2).all(), name
        moved += int((mask != old).sum())
    assert moved > 0


def test_unknown_structures_and_inconsistent_settings_are_refused_by_name():
    for text in ("2:2", "4:2", "block:1", "block16", "nm"):
        with pytest.raises(ValueError, match="prune.structure"):
            structure.parse(text)
    config = make_tiny_config()
    config.prune.structure = "2:4"  # iterative 0.2 x 2 levels: not 1 - 2/4
    with pytest.raises(ConfigError, match="prune.fraction.*prune.structure=2:4"):
        config_lib.validate(config)
    config.prune.fraction, config.prune.levels = 0.5, 1
    config_lib.validate(config)
    config.prune.method = "magnitude_filter"
    config.prune.structure = "block:16"
    with pytest.raises(ConfigError, match="prune.structure.*magnitude_filter"):
        config_lib.validate(config)
    config = make_tiny_config()
    config.prune.structure, config.dynamic.method = "2:4", "rigl"
    with pytest.raises(ConfigError, match="dynamic.sparsity") as error:
        config_lib.validate(config)
    assert "dynamic.distribution" in str(error.value)


def test_a_block_study_trains_block_tickets(tmp_path):
    """IMP with block:16 masks end to end on the digits: every ticket's mask is whole blocks
    (the 16-, 32- and 64-wide convs), the first conv included."""
    config = make_tiny_config()
    config.train.epochs = 1
    config.prune.levels, config.prune.fraction = 1, 0.5
    config.lottery.variants, config.lottery.rewind = "lt", "0it"
    config.prune.structure = "block:16"
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "lt")]
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    ticket = run.snapshots.restore("level_1_lt", run.snapshot_template())
    shape = structure.parse("block:16")
    kernels = _kernels(ticket["masks"])
    assert len(kernels) == 3 and all(structure.violations(shape, m) == 0 for _, m in kernels)
    assert rows[1]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_gradual_pruning_with_blocks_prunes_whole_blocks_to_its_target(resnet20):
    from lottery_kd.sparsity.gradual import GradualPruning
    schedule = GradualPruning(0.8, 10, 0, 30, distribution="uniform", structure="block:16")
    masks, shape = masks_lib.create(resnet20), structure.parse("block:16")
    for step in schedule.update_steps():
        new = schedule.new_masks(step, masks_lib.apply(resnet20, masks), masks)
        assert all(not (m & ~o).any() for (_, m), (_, o) in zip(_kernels(new), _kernels(masks)))
        assert all(structure.violations(shape, m) == 0 for _, m in _kernels(new))
        assert masks_lib.sparsity(new) == pytest.approx(schedule.sparsity_at(step), abs=0.01)
        masks = new
    assert masks_lib.sparsity(masks) == pytest.approx(0.8, abs=0.01)
    config = make_tiny_config()
    config.prune.structure, config.dynamic.method = "2:4", "gmp"
    with pytest.raises(ConfigError, match="prune.structure.*gmp"):
        config_lib.validate(config)


def test_a_structure_that_fits_no_layer_is_refused_before_training_and_misfits_are_named(
        tmp_path):
    """block:128 on the digits network (16-, 32- and 64-wide convs) would prune nothing: every
    ticket a dense network. Refused before the dense run, naming the channel counts; block:32
    fits two of the three convs, and the study's log names the one left as it is."""
    config = make_tiny_config()
    config.prune.levels, config.prune.fraction = 1, 0.5
    config.lottery.variants, config.lottery.rewind = "lt", "0it"
    config.prune.structure = "block:128"
    with pytest.raises(ConfigError, match=r"prune.structure='block:128' is invalid for "
                                          r".*fits none of the 3 layers in scope: their output "
                                          r"channels \(16, 32, 64\) are not multiples of 128"):
        lottery.run(config, tmp_path / "none", log=lambda *_: None)
    assert not (tmp_path / "none" / "results.jsonl").exists()
    config.prune.structure = "block:32"
    run = lottery.LotteryRun(config, tmp_path / "some", log=(messages := []).append)
    run.preflight()
    assert any("block:32: 1 of 3 layers in scope do not fit it and stay as they are:" in m
               for m in messages)
