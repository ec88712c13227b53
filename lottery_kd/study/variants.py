"""Retrain variants as data: each is a small record, registered by name.

A variant says where its weights start (a registered weight source), where its learning-rate
schedule starts, and whether it distils from the dense teacher. How long it trains follows from
the schedule start: from step s0 to the end of the schedule (`lt`, `kd`: all of it; rewinding:
from k), or the full budget at the final learning rate (`finetune`). Add one with a single call:

    lottery_kd.study.variants.register(RetrainVariant(
        "kd_finetune", weights="previous", schedule="final", distill=True))

A new weight source is one function of a `StartContext`, registered with
`register_weight_source(name, function)`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable

import jax

from lottery_kd.registry import Registry
from lottery_kd.sparsity.sparse_init import sparse_aware_init

PyTree = Any
SCHEDULE_STARTS = ("zero", "rewind", "final")
DENSE = "dense"


def derived_key(seed: int, *tags: Any) -> jax.Array:
    """A PRNG key that depends only on (seed, tags): stable across runs and resumes."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(map(str, tags)).encode()))


def snapshot_name(level: int, variant: str) -> str:
    """The snapshot (and TensorBoard run) name of one training run: level_<L>_<variant>."""
    return f"level_{level}_{variant}"


@dataclasses.dataclass(frozen=True)
class StartContext:
    """What a weight source may read to make a retrain's starting weights.

    load(name) returns a snapshot {"params", "batch_stats", "masks"} of the study (init, rewind,
    level_<L>_<variant>); fresh(key) returns (params, batch_stats) of a new random network.
    """

    level: int
    variant: str
    masks: PyTree
    seed: int
    scope: Any
    oneshot: bool
    load: Callable[[str], PyTree]
    fresh: Callable[[jax.Array], tuple[PyTree, PyTree]]


WeightSource = Callable[[StartContext], PyTree]  # -> {"params", "batch_stats"} (masked later)


def _from_init(context: StartContext) -> PyTree:
    return context.load("init")


def _from_rewind(context: StartContext) -> PyTree:
    return context.load("rewind")


def _from_previous(context: StartContext) -> PyTree:
    """The final weights of the level before in this variant's chain (one-shot: the dense)."""
    previous = 0 if context.level == 1 or context.oneshot else context.level - 1
    return context.load(snapshot_name(previous, DENSE if previous == 0 else context.variant))


def _from_reinit(context: StartContext) -> PyTree:
    params, batch_stats = context.fresh(
        derived_key(context.seed, "reinit", context.level, context.variant))
    return {"params": params, "batch_stats": batch_stats}


def _from_sparse_init(context: StartContext) -> PyTree:
    init = context.load("init")
    key = derived_key(context.seed, "sparse_init", context.level, context.variant)
    return {"params": sparse_aware_init(init["params"], context.masks, key, scope=context.scope),
            "batch_stats": init["batch_stats"]}


_SOURCES: Registry[WeightSource] = Registry("weight source", "RetrainVariant(weights=...)")


def register_weight_source(name: str, source: WeightSource) -> WeightSource:
    """Make `source` available as RetrainVariant(weights=name)."""
    return _SOURCES.add(name, source)


def weight_source(name: str) -> WeightSource:
    """The weight source registered as `name`."""
    return _SOURCES.get(name)


for _name, _source in (("init", _from_init), ("rewind", _from_rewind),
                       ("previous", _from_previous), ("reinit", _from_reinit),
                       ("sparse_init", _from_sparse_init)):
    register_weight_source(_name, _source)
WEIGHT_SOURCES = _SOURCES.names()


@dataclasses.dataclass(frozen=True)
class RetrainVariant:
    """How a pruned network is retrained at each level.

    weights:  a registered weight source: "init" (the step-0 snapshot), "rewind" (the step-k
              snapshot), "previous" (the final weights of the previous level of this variant's
              chain), "reinit" (fresh random weights from a seed derived from (seed, level,
              name)), "sparse_init" (fresh weights scaled by each output unit's sparse fan-in,
              Evci et al.; sparsity.sparse_init). BatchNorm state comes along (from init for
              the fresh ones).
    schedule: "zero" (steps 0..T), "rewind" (steps k..T), "final" (T steps at the final LR).
    distill:  train with kd_loss against the level-0 dense network instead of cross-entropy.
    """

    name: str
    weights: str
    schedule: str
    distill: bool = False

    def __post_init__(self):
        if self.weights not in _SOURCES.names():
            raise ValueError(f"variant {self.name!r}: weights={self.weights!r}; allowed: "
                             f"{', '.join(_SOURCES.names())}")
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
