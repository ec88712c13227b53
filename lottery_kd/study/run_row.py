"""A finished training run's result row: what it trained, how well, and what its training cost.

Pure functions of the run's outcome (training.trainer's fit), its final masks and the study's
settings; `Study._record` saves the snapshot and appends the row these build.
"""
from __future__ import annotations

from typing import Any, Optional

from lottery_kd.models import flops as flops_lib
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity.dynamic import MaskSchedule
from lottery_kd.sparsity.gradual import GradualPruning

PyTree = Any


def result_row(level: int, variant: str, fit: Any, *, scope: str, start_step: int,
               distill: bool, execution: dict) -> dict:
    """The row of a finished run (no FLOPs yet: `training_flops` adds them): sparsity and counts
    of its final masks (fit.masks: a dynamic method changes them), its accuracies, steps and
    time, and `execution`, how it was computed (conv_impl, a KD run's teacher_logits)."""
    remaining, total = masks_lib.count(fit.masks, scope)
    return {"level": level, "variant": variant, "sparsity": masks_lib.sparsity(fit.masks, scope),
            "remaining_weights": remaining, "prunable_weights": total,
            "test_accuracy": fit.test_accuracy, "best_val_accuracy": fit.best_val_accuracy,
            "test_accuracy_at_best_val": fit.test_accuracy_at_best_val,
            "best_val_epoch": fit.best_val_epoch, "epochs": fit.epochs, "steps": fit.steps,
            "start_step": start_step, "distill": distill,
            "layer_counts": {name: list(counts) for name, counts in
                             masks_lib.layer_counts(fit.masks, scope).items()},
            "seconds": round(fit.seconds, 2), **execution}


def training_flops(layer_flops: dict[str, int], row: dict, mask_update: Optional[MaskSchedule],
                   masks: PyTree, *, batch_size: int, kd_stop_step: Optional[int],
                   basis: bool) -> dict[str, float]:
    """The row's training FLOPs, dense-equivalent and with the pruned weights skipped (a GMP
    run: summed over the stretches between its updates, at each one's layer counts)."""
    rigl = (mask_update.delta_t, mask_update.end_step) \
        if mask_update and mask_update.method == "rigl" else None
    stretches = [(row["start_step"], row["steps"], row["layer_counts"])]
    if isinstance(mask_update, GradualPruning):  # dense at first: not its final counts
        stretches = mask_update.count_schedule(masks, row["start_step"], row["steps"])
    parts = [flops_lib.row_flops(layer_flops, {**row, "start_step": first, "steps": steps,
                                               "layer_counts": counts},
                                 batch_size=batch_size, kd_stop_step=kd_stop_step, rigl=rigl,
                                 basis=basis)
             for first, steps, counts in stretches]
    return {key: sum(part[key] for part in parts) for key in parts[0]}
