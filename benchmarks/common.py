"""Shared pieces of the benchmarks: the environment record, timed blocks, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from lottery_kd.environment import environment  # noqa: F401  (re-exported for the benchmarks)


def timed(run_block: Callable[[], object], wait: Callable[[object], None]) -> float:
    """Seconds one block takes, waiting for its last result (JAX dispatch is asynchronous)."""
    began = time.perf_counter()
    wait(run_block())
    return time.perf_counter() - began


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_json(report: dict, out: Optional[str]) -> None:
    """Print the report as JSON and, with `out`, write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


# CIFAR-10's channel means and standard deviations on the 0-255 scale
CIFAR_NORMALIZATION = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))


def resnet_steps(model_name: str, conv_impl: str, norm_impl: str,
                 sparsity: float) -> SimpleNamespace:
    """What the step benchmarks share: the model, its initial params and batch_stats, the SGD
    optimizer, all-true masks, magnitude masks at `sparsity` (all-true at 0), and the
    cross-entropy and KD train steps (not jitted) with the recipe's settings."""
    import jax

    from lottery_kd import masks as masks_lib, optim, pruning, train
    from lottery_kd.models import get_model

    model = get_model(model_name, 10, conv_impl=conv_impl, norm_impl=norm_impl)
    params, batch_stats = train.init_variables(model, jax.random.key(0), (32, 32, 3))
    optimizer = optim.sgd_direction(0.9, 2e-4)
    dense_masks = masks_lib.create(params)
    masks = (pruning.get("magnitude_global")(params, dense_masks, sparsity) if sparsity
             else dense_masks)
    return SimpleNamespace(
        model=model, params=params, batch_stats=batch_stats, optimizer=optimizer,
        dense_masks=dense_masks, masks=masks,
        ce=train.make_train_step(model, optimizer, None, normalization=CIFAR_NORMALIZATION),
        kd=train.make_train_step(model, optimizer, train.Distillation(5.0, 0.9, "mean"),
                                 normalization=CIFAR_NORMALIZATION))
