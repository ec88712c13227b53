"""Dynamic sparse training (RigL, SET, a user's method) and sparse-aware initialisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.sparsity import dynamic, masks as masks_lib, pruning, sparse_init

from lottery_kd.study import lottery, results
from lottery_kd.data import load_dataset
from lottery_kd.data.inputs import InputData
from lottery_kd.models import get_model
from lottery_kd.training.steps import Distillation, init_variables
from lottery_kd.training.callbacks import MaskUpdates
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tiny_tree():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)},
              "bn": {"scale": jnp.ones(4)}}
    mask = rng.random((3, 3, 2, 4)) < 0.4
    masks = {"conv": {"kernel": jnp.asarray(mask)}, "bn": {"scale": jnp.ones(4, bool)}}
    return params, masks


def test_cosine_drop_fraction():
    assert dynamic.cosine_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert dynamic.cosine_drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert dynamic.cosine_drop_fraction(100, 0.3, 100) == 0.0
    assert dynamic.cosine_drop_fraction(150, 0.3, 100) == 0.0


def test_rigl_drops_the_smallest_and_grows_where_the_gradient_is_largest():
    params, masks = _tiny_tree()
    masks = jax.tree.map(lambda m: m, masks)
    weights = np.asarray(masks_lib.apply(params, masks)["conv"]["kernel"]).reshape(-1)
    alive = np.asarray(masks["conv"]["kernel"]).reshape(-1)
    grads = np.random.default_rng(1).standard_normal(alive.size)
    new = dynamic.rigl(masks_lib.apply(params, masks), masks,
                       {"conv": {"kernel": jnp.asarray(grads.reshape(3, 3, 2, 4))},
                        "bn": {"scale": jnp.ones(4)}}, 0.25)
    new_alive = np.asarray(new["conv"]["kernel"]).reshape(-1)
    k = int(0.25 * alive.sum())  # RigL's int(n_ones * drop_fraction): floor, not round
    assert k != round(0.25 * alive.sum())  # the tree's count tells the two apart
    active = np.flatnonzero(alive)
    dropped = set(active[np.argsort(np.abs(weights[active]), kind="stable")[:k]])
    after_drop = alive.copy()
    after_drop[list(dropped)] = False
    candidates = np.flatnonzero(~after_drop)
    grown = set(candidates[np.argsort(-np.abs(grads[candidates]), kind="stable")[:k]])
    expected = after_drop.copy()
    expected[list(grown)] = True
    np.testing.assert_array_equal(new_alive, expected)
    assert new_alive.sum() == alive.sum()
    assert np.asarray(new["bn"]["scale"]).all()


def test_set_grows_at_random_with_the_same_count_and_is_seeded():
    params, masks = _tiny_tree()
    grads = jax.tree.map(jnp.zeros_like, params)
    a = dynamic.get("set")(params, masks, grads, 0.3, rng=jax.random.key(0))
    b = dynamic.get("set")(params, masks, grads, 0.3, rng=jax.random.key(0))
    c = dynamic.get("set")(params, masks, grads, 0.3, rng=jax.random.key(1))
    assert masks_lib.count(a) == masks_lib.count(masks)
    assert np.array_equal(a["conv"]["kernel"], b["conv"]["kernel"])
    assert not np.array_equal(a["conv"]["kernel"], c["conv"]["kernel"])


def _trainer(distillation=None):
    model = get_model("digits_convnet", 10)
    data = InputData.from_dataset(load_dataset("digits"), seed=0, eval_batch_size=360)
    return Trainer(model, data, batch_size=64, momentum=0.9, weight_decay=5e-4,
                   distillation=distillation), model


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_the_active_count_is_exact_at_every_step_and_pruned_weights_stay_zero(method):
    trainer, model = _trainer(Distillation(4.0, 0.9))
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = pruning.get("random")(params, masks_lib.create(params), 0.8, rng=jax.random.key(1),
                                  distribution="erk")
    expected = masks_lib.count(masks)
    seen, layouts, original = [], [], trainer.train_step_kd

    def spy(state, step_masks, *args):
        seen.append(masks_lib.layer_counts(step_masks))
        layouts.append((int(state.step), b"".join(np.asarray(m).tobytes()
                                                   for m in jax.tree.leaves(step_masks))))
        new_state, metrics = original(state, step_masks, *args)
        for p, m in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(step_masks)):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
        return new_state, metrics

    trainer.train_step_kd = spy
    update = dynamic.MaskUpdate(method, delta_t=5, alpha=0.3, end_step=30, seed=0)
    teacher = {"params": params, "batch_stats": batch_stats}
    fit = trainer.fit(trainer.init_state(params, batch_stats, masks, 0), masks, num_steps=38,
                      schedule=lambda s: 0.05, teacher=teacher,
                      callbacks=[MaskUpdates(update)])
    assert len(seen) == 38
    assert all(counts == seen[0] for counts in seen)  # per layer, at every step
    assert masks_lib.count(fit.masks) == expected
    changed = sum(int(np.sum(np.asarray(a) != np.asarray(b)))
                  for a, b in zip(jax.tree.leaves(fit.masks), jax.tree.leaves(masks)))
    assert changed > 0  # the masks really moved
    # ... only before the due steps: every delta_t = 5 steps, from step 5 until end_step = 30
    moved_at = [step for (step, now), (_, before) in zip(layouts[1:], layouts) if now != before]
    assert moved_at and set(moved_at) <= {5, 10, 15, 20, 25}
    if method == "set":  # random growth moves the masks at every update
        assert moved_at == [5, 10, 15, 20, 25]


def test_grown_weights_start_at_zero_with_fresh_momentum():
    """Dropped weights become 0.0, grown ones 0.0 (they were pruned) with zero momentum; the
    weights kept through the update keep their values and their momentum."""
    params, masks = _tiny_tree()
    from lottery_kd.training import optim
    optimizer = optim.sgd_direction(0.9, 0.0)
    params = masks_lib.apply(params, masks)  # as in training: pruned weights are 0.0
    opt_state = jax.tree.map(lambda x: jnp.ones_like(x), optimizer.init(params))
    old = np.asarray(masks["conv"]["kernel"])
    flip = np.random.default_rng(3).random(old.shape) < 0.3  # swap a third of the positions
    new = np.where(flip, ~old, old)
    assert (new & ~old).any() and (old & ~new).any() and (old & new).any()
    new_masks = {"conv": {"kernel": jnp.asarray(new)}, "bn": masks["bn"]}
    new_params, new_state = dynamic.reset_grown(optimizer, opt_state, params, masks, new_masks)
    weights = np.asarray(new_params["conv"]["kernel"])
    before = np.asarray(params["conv"]["kernel"])
    trace = np.asarray(new_state[1].trace["conv"]["kernel"])
    assert np.all(weights[~new] == 0.0)  # dropped and never alive: zero
    assert np.all(weights[new & ~old] == 0.0) and np.all(trace[new & ~old] == 0.0)  # grown
    assert np.all(trace[old & ~new] == 0.0)  # dropped: its momentum goes too
    np.testing.assert_array_equal(weights[old & new], before[old & new])  # kept: untouched
    assert np.all(trace[old & new] == 1.0)
    assert np.all(np.asarray(new_state[1].trace["bn"]["scale"]) == 1.0)


def test_rigl_with_kd_on_digits_at_80_percent_stays_within_2_points_of_dense(tmp_path):
    config = make_tiny_config()
    config.train.epochs = 12
    config.dynamic.method = "rigl"
    config.dynamic.delta_t = 20
    config.dynamic.distill = True
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "rigl_kd")]
    dense, rigl = rows
    assert rigl["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert rigl["test_accuracy"] >= dense["test_accuracy"] - 0.02, (rigl, dense)
    # The final snapshot holds the moved masks, at the same count.
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    final = run.snapshots.restore("level_1_rigl_kd", run.snapshot_template())
    assert masks_lib.count(final["masks"])[0] == rigl["remaining_weights"]
    assert results.read_rows(tmp_path / "results.jsonl") == rows


def test_set_with_uniform_layers_and_sparse_init_runs_through_a_study(tmp_path, monkeypatch):
    """SET, a uniform layer-wise distribution and the sparse-aware start, end to end: the run
    starts from sparse_aware_init(init, its random mask), without a teacher, each in-scope layer
    at the same density; the masks move and keep every layer's count."""
    config = make_tiny_config()
    config.dynamic.method = "set"
    config.dynamic.distribution = "uniform"
    config.dynamic.init = "sparse"
    config.dynamic.sparsity = 0.7
    config.dynamic.delta_t = 5
    starts, original = [], Trainer.fit

    def record(trainer, state, masks, **kwargs):
        updates = [c.update for c in kwargs["callbacks"] if isinstance(c, MaskUpdates)]
        starts.append((jax.device_get(state.params), jax.device_get(masks),
                       kwargs.get("teacher"), updates[0] if updates else None))
        return original(trainer, state, masks, **kwargs)

    monkeypatch.setattr(Trainer, "fit", record)
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    rows = run.run()
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "set_sparse_init")]
    params, masks, teacher, update = starts[1]
    assert teacher is None and update.method == "set" and update.delta_t == 5
    init = run.load_snapshot("init")
    expected_masks = pruning.get("random")(
        init["params"], init["masks"], 0.7, rng=lottery.derived_key(config.seed, "dynamic",
                                                                     "masks"),
        scope=run.scope, distribution="uniform")
    assert _leaves_equal(masks, expected_masks)
    expected = sparse_init.sparse_aware_init(
        init["params"], masks, lottery.derived_key(config.seed, "dynamic", "sparse_init"),
        scope=run.scope)
    assert _leaves_equal(params, expected) and not _leaves_equal(params, init["params"])
    start_counts = masks_lib.layer_counts(masks, run.scope)
    densities = [kept / total for kept, total in start_counts.values()]
    assert len(densities) >= 2 and max(densities) - min(densities) < 0.02, start_counts
    final = run.snapshots.restore("level_1_set_sparse_init", run.snapshot_template())
    assert masks_lib.layer_counts(final["masks"], run.scope) == start_counts  # every layer
    assert not _leaves_equal(final["masks"], masks)  # SET moved them
    assert rows[1]["sparsity"] == pytest.approx(0.7, abs=0.01)


# --------------------------------------------------------------------------------------------
# sparse-aware initialisation


def test_sparse_aware_init_scales_each_unit_by_its_sparse_fan_in():
    shape = (3, 3, 64, 8)
    rng = np.random.default_rng(0)
    densities = np.array([1.0, 0.5, 0.25, 0.1, 0.05, 0.5, 0.02, 0.0])
    mask = rng.random(shape) < densities  # a different density per output unit
    params = {"conv": {"kernel": jnp.zeros(shape)}, "bn": {"scale": jnp.full(8, 3.0)}}
    masks = {"conv": {"kernel": jnp.asarray(mask)}, "bn": {"scale": jnp.ones(8, bool)}}
    out = sparse_init.sparse_aware_init(params, masks, jax.random.key(0))
    kernel = np.asarray(out["conv"]["kernel"]).reshape(-1, 8)
    flat_mask = mask.reshape(-1, 8)
    fan_in = flat_mask.sum(axis=0)
    np.testing.assert_array_equal(sparse_init.sparse_fan_in(mask), fan_in)
    assert np.all(kernel[~flat_mask] == 0.0)
    for unit in range(8):
        if fan_in[unit] >= 50:  # enough samples to check the standard deviation
            std = kernel[flat_mask[:, unit], unit].std()
            assert std == pytest.approx(math.sqrt(2.0 / fan_in[unit]), rel=0.25), unit
    assert np.all(kernel[:, 7] == 0.0)  # no inputs: stays at zero
    np.testing.assert_array_equal(out["bn"]["scale"], params["bn"]["scale"])
    # Versus the dense He init, a unit at 10% density starts ~sqrt(10)x larger per weight.
    assert kernel[flat_mask[:, 3], 3].std() > 2 * math.sqrt(2.0 / (9 * 64))


def test_sparse_init_variants_run_in_a_study_and_log_the_gradient_norm(tmp_path, monkeypatch):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "lt,sparse_init,kd_sparse_init"
    config.log.tensorboard = True
    starts, original = [], Trainer.fit

    def record(trainer, state, masks, **kwargs):
        starts.append((jax.device_get(state.params), jax.device_get(masks),
                       jax.device_get(kwargs.get("teacher"))))
        return original(trainer, state, masks, **kwargs)

    monkeypatch.setattr(Trainer, "fit", record)
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    rows = run.run()
    assert [r["variant"] for r in rows] == ["dense", "lt", "sparse_init", "kd_sparse_init"]
    init, dense = run.load_snapshot("init"), run.load_snapshot("level_0_dense")
    for index, variant in ((2, "sparse_init"), (3, "kd_sparse_init")):
        params, masks, teacher = starts[index]
        expected = sparse_init.sparse_aware_init(  # fresh weights from (seed, level, name)
            init["params"], masks, lottery.derived_key(config.seed, "sparse_init", 1, variant),
            scope=config.prune.scope)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert (teacher is not None) == (variant == "kd_sparse_init")
        if teacher is not None:
            for a, b in zip(jax.tree.leaves(teacher["params"]), jax.tree.leaves(dense["params"])):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(starts[2][0]), jax.tree.leaves(starts[3][0])))  # own seeds
    assert rows[2]["test_accuracy"] != rows[1]["test_accuracy"] or \
        rows[2]["best_val_accuracy"] != rows[1]["best_val_accuracy"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tensorboard" / "level_1_sparse_init"))
    events.Reload()
    grad_norms = [e.value for e in events.Scalars("train_grad_norm")]
    assert len(grad_norms) == 2 and all(g > 0 for g in grad_norms)
