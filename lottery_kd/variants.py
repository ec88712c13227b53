"""Retrain variants as data: each is a small record, registered by name.

A variant says where its weights start, where its learning-rate schedule starts, and whether it
distils from the dense teacher. How long it trains follows from the schedule start: from step s0
to the end of the schedule (`lt`, `kd`: all of it; rewinding: from k), or the full budget at the
final learning rate (`finetune`). Add one with a single call:

    lottery_kd.variants.register(RetrainVariant(
        "kd_finetune", weights="previous", schedule="final", distill=True))
"""

from __future__ import annotations

import dataclasses

from lottery_kd.registry import Registry

WEIGHT_SOURCES = ("init", "rewind", "previous", "reinit", "sparse_init")
SCHEDULE_STARTS = ("zero", "rewind", "final")


@dataclasses.dataclass(frozen=True)
class RetrainVariant:
    """How a pruned network is retrained at each level.

    weights:  "init" (the step-0 snapshot), "rewind" (the step-k snapshot), "previous" (the final
              weights of the previous level of this variant's chain), "reinit" (fresh random
              weights from a seed derived from (seed, level, name)), "sparse_init" (fresh weights
              scaled by each output unit's sparse fan-in, Evci et al.; lottery_kd.sparse_init).
              BatchNorm state comes along (from init for the fresh ones).
    schedule: "zero" (steps 0..T), "rewind" (steps k..T), "final" (T steps at the final LR).
    distill:  train with kd_loss against the level-0 dense network instead of cross-entropy.
    """

    name: str
    weights: str
    schedule: str
    distill: bool = False

    def __post_init__(self):
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"variant {self.name!r}: weights={self.weights!r}; allowed: "
                             f"{', '.join(WEIGHT_SOURCES)}")
        if self.schedule not in SCHEDULE_STARTS:
            raise ValueError(f"variant {self.name!r}: schedule={self.schedule!r}; allowed: "
                             f"{', '.join(SCHEDULE_STARTS)}")

    @property
    def uses_rewind_point(self) -> bool:
        """Whether the variant starts from, or schedules from, the rewind step."""
        return self.weights == "rewind" or self.schedule == "rewind"


_REGISTRY: Registry[RetrainVariant] = Registry("variant", "lottery.variants")


def register(variant: RetrainVariant) -> RetrainVariant:
    """Make `variant` available by name (config key lottery.variants)."""
    return _REGISTRY.add(variant.name, variant)


def names() -> tuple[str, ...]:
    """Registered retrain variant names."""
    return _REGISTRY.names()


def get(name: str) -> RetrainVariant:
    """The variant registered as `name`; ValueError naming lottery.variants otherwise."""
    return _REGISTRY.get(name)


for _variant in (
    RetrainVariant("lt", weights="init", schedule="zero"),
    RetrainVariant("reinit", weights="reinit", schedule="zero"),
    RetrainVariant("weight_rewind", weights="rewind", schedule="rewind"),
    RetrainVariant("lr_rewind", weights="previous", schedule="zero"),
    RetrainVariant("finetune", weights="previous", schedule="final"),
    RetrainVariant("kd", weights="init", schedule="zero", distill=True),
    RetrainVariant("kd_rewind", weights="rewind", schedule="rewind", distill=True),
    RetrainVariant("kd_lr_rewind", weights="previous", schedule="zero", distill=True),
    RetrainVariant("sparse_init", weights="sparse_init", schedule="zero"),
    RetrainVariant("kd_sparse_init", weights="sparse_init", schedule="zero", distill=True),
):
    register(_variant)
