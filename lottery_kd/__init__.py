"""Lottery-ticket pruning with knowledge distillation, in JAX.

The package's folders name the design (README, "How the code is laid out"): config, data,
models, sparsity, training, study, analysis, runtime, kernels. What a user's code reaches for
is also here, loaded on first use (so `import lottery_kd` stays light):

    lottery_kd.run(config, workdir)        run or resume a study (study.lottery.run)
    lottery_kd.get_model(name, classes)    a model by name (models.get_model)
    lottery_kd.pruning / .dynamic          masking functions and dynamic sparse methods,
                                           each with its `register`
    lottery_kd.variants / .protocols       retrain variants and weight sources; paper protocols
    lottery_kd.masks / .losses             masks as pytrees; kd_loss (the design card's contracts)
    lottery_kd.Workdir                     every path of a study's workdir
    lottery_kd.Study / .LotteryRun         a study opened from its config (Study.from_workdir);
                                           the IMP driver over it
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": ("lottery_kd.study.lottery", "run"),
    "LotteryRun": ("lottery_kd.study.lottery", "LotteryRun"),
    "Study": ("lottery_kd.study.study", "Study"),
    "get_model": ("lottery_kd.models", "get_model"),
    "pruning": ("lottery_kd.sparsity.pruning", None),
    "dynamic": ("lottery_kd.sparsity.dynamic", None),
    "masks": ("lottery_kd.sparsity.masks", None),
    "losses": ("lottery_kd.training.losses", None),
    "variants": ("lottery_kd.study.variants", None),
    "protocols": ("lottery_kd.config.protocols", None),
    "Workdir": ("lottery_kd.study.workdir", "Workdir"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lottery_kd' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
