"""One-shot pruning and early-stopped distillation."""

import math

import jax
import numpy as np

from lottery_kd.study import lottery

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.data import load_dataset
from lottery_kd.models import get_model
from lottery_kd.data.inputs import InputData
from lottery_kd.training.steps import Distillation, init_variables
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config
from tests.test_lottery import FitSpy, _leaves_equal


def test_oneshot_prunes_the_dense_network_to_one_minus_keep_to_the_level(tmp_path, monkeypatch):
    config = make_tiny_config()
    config.prune.schedule = "oneshot"
    config.prune.levels = 2
    config.lottery.variants = "lt,kd,finetune"
    spy = FitSpy(monkeypatch)
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    rows = run.run()
    total = rows[0]["prunable_weights"]
    for row in rows[1:]:
        target = 1 - 0.8 ** row["level"]
        assert row["remaining_weights"] == total - math.ceil(round(target * total, 9))
    template = run.snapshot_template()
    for level in (1, 2):
        lt = run.snapshots.restore(f"level_{level}_lt", template)["masks"]
        kd = run.snapshots.restore(f"level_{level}_kd", template)["masks"]
        assert _leaves_equal(lt, kd)  # all variants share the mask at each sparsity
    # One-shot fine-tuning starts from the dense final weights at every level.
    dense = run.snapshots.restore("level_0_dense", template)
    finetune_level2 = spy.calls[1 + 3 + 2]
    assert _leaves_equal(finetune_level2["params"],
                         masks_lib.apply(dense["params"], finetune_level2["masks"]))


def test_oneshot_first_level_runs_only_the_later_levels_with_the_same_rows(tmp_path):
    """prune.first_level=2 skips level 1 and reproduces the full study's level-2 rows; the key
    is not part of the config digest, so the same workdir can later run level 1 too."""
    config = make_tiny_config()
    config.prune.schedule = "oneshot"
    config.prune.levels = 2
    config.lottery.variants = "lt"
    full = lottery.LotteryRun(config, tmp_path / "full", log=lambda *_: None).run()
    config.prune.first_level = 2
    later = lottery.LotteryRun(config, tmp_path / "later", log=lambda *_: None).run()
    assert [(r["level"], r["variant"]) for r in later] == [(0, "dense"), (2, "lt")]

    def accuracies(row):
        return {k: v for k, v in row.items() if k != "seconds"}

    assert accuracies(later[1]) == accuracies(full[2])
    config.prune.first_level = 1  # same workdir, now with level 1: resumes, adds the missing row
    both = lottery.LotteryRun(config, tmp_path / "later", log=lambda *_: None).run()
    assert sorted((r["level"], r["variant"]) for r in both) == [(0, "dense"), (1, "lt"), (2, "lt")]


def test_distillation_switches_off_at_kd_stop_step():
    dataset = load_dataset("digits")
    model = get_model("digits_convnet", 10)
    trainer = Trainer(model, InputData.from_dataset(dataset, seed=0, eval_batch_size=360),
                      batch_size=64, momentum=0.9, weight_decay=5e-4,
                      distillation=Distillation(4.0, 0.9, "batchmean"))
    counts = {"kd": 0, "ce": 0}

    def counting(fn, key):
        def wrapped(*args):
            counts[key] += 1
            return fn(*args)
        return wrapped

    trainer.train_step_kd = counting(trainer.train_step_kd, "kd")
    trainer.train_step_ce = counting(trainer.train_step_ce, "ce")
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.create(params)
    teacher = {"params": params, "batch_stats": batch_stats}
    spe = trainer.steps_per_epoch
    state = trainer.init_state(params, batch_stats, masks, 0)
    fit = trainer.fit(state, masks, num_steps=2 * spe, schedule=lambda s: 0.05,
                      teacher=teacher, kd_stop_step=spe)
    assert counts == {"kd": spe, "ce": spe}
    assert [row["distill"] for row in fit.history] == [True, False]
    assert np.isfinite(fit.test_accuracy)
