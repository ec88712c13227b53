"""Exact data order: a run stopped at step s and resumed, and a weight_rewind retrain entering at
step k, are fed the batches an uninterrupted run sees from that step on (open_lth's rule)."""

import hashlib

import jax
import numpy as np
import pytest

from lottery_kd.study import lottery

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.data import load_dataset
from lottery_kd.data.inputs import InMemoryTrainInput, InputData
from lottery_kd.models import get_model
from lottery_kd.training.steps import init_variables
from lottery_kd.training.trainer import Trainer
from tests.conftest import make_tiny_config


def _digest(batch):
    images, labels = jax.device_get(batch)
    return hashlib.sha256(np.asarray(images).tobytes() + np.asarray(labels).tobytes()).hexdigest()


@pytest.fixture
def recorded_batches(monkeypatch):
    """Every training batch handed out, as (step, digest), in order."""
    seen = []
    original = InMemoryTrainInput.batch

    def batch(self, step, batch_size):
        out = original(self, step, batch_size)
        seen.append((int(step), _digest(out)))
        return out

    monkeypatch.setattr(InMemoryTrainInput, "batch", batch)
    return seen


def _fresh_trainer():
    """A new trainer over freshly loaded data, as a restarted process would build it."""
    model = get_model("digits_convnet", 10)
    data = InputData.from_dataset(load_dataset("digits"), seed=3, eval_batch_size=360)
    return Trainer(model, data, batch_size=64, momentum=0.9, weight_decay=5e-4,
                   distillation=None), model


def test_a_resumed_run_sees_the_same_batches_and_ends_bitwise_equal(recorded_batches):
    trainer, model = _fresh_trainer()
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 1))
    masks = masks_lib.create(params)
    schedule = lambda step: 0.05  # noqa: E731
    total, stop = 3 * trainer.steps_per_epoch, 2 * trainer.steps_per_epoch - 5
    straight = trainer.fit(trainer.init_state(params, batch_stats, masks, 0), masks,
                           num_steps=total, schedule=schedule)
    uninterrupted = list(recorded_batches)
    recorded_batches.clear()

    first, _ = _fresh_trainer()
    part = first.fit(first.init_state(params, batch_stats, masks, 0), masks, num_steps=stop,
                     schedule=schedule)
    saved = jax.device_get(part.state)          # what a resume checkpoint holds
    second, _ = _fresh_trainer()                # a new process after the restart
    resumed = second.fit(jax.device_put(saved), masks, num_steps=total - stop, schedule=schedule)

    assert [s for s, _ in recorded_batches] == list(range(total))
    assert recorded_batches == uninterrupted
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(a, b)


def test_weight_rewind_retrain_is_fed_the_dense_runs_batches_from_step_k(recorded_batches,
                                                                        tmp_path):
    config = make_tiny_config()
    config.prune.levels = 1
    config.lottery.variants = "weight_rewind,kd_rewind,lt"
    run = lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
    run.run()
    k, total = run.plan.rewind_step, run.plan.total_steps
    assert 0 < k < total
    dense, rewind, kd_rewind, lt = (recorded_batches[:total], recorded_batches[total:2 * total - k],
                                    recorded_batches[2 * total - k:3 * total - 2 * k],
                                    recorded_batches[3 * total - 2 * k:])
    assert [s for s, _ in dense] == list(range(total))
    assert rewind == dense[k:] and kd_rewind == dense[k:]
    assert lt == dense  # lt enters at step 0: the very batches of the dense run
