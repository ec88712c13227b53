"""The step plan: a config's epoch-based settings resolved to global step counts, and the
parsing of the text settings it reads ("2ep" / "500it", "91,136", "lt,kd")."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from lottery_kd.config.errors import ConfigError
from lottery_kd.sparsity import gradual
from lottery_kd.study import variants as variants_lib

STEP_COUNT = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")


def parse_step_count(text: str, steps_per_epoch: int) -> int:
    """'2ep' -> 2 * steps_per_epoch, '500it' -> 500 (the contract's rewind-point syntax)."""
    match = STEP_COUNT.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a step count; write epochs as '2ep' or "
                         "iterations as '500it'")
    value, unit = int(match.group(1)), match.group(2)
    return value * steps_per_epoch if unit == "ep" else value


def parse_names(text: str) -> tuple[str, ...]:
    """'lt, kd' -> ('lt', 'kd'); a tuple or list is accepted as well."""
    if isinstance(text, (tuple, list)):
        return tuple(str(t).strip() for t in text)
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def parse_epochs(text: Any) -> tuple[int, ...]:
    """'91,136' -> (91, 136); '' -> ()."""
    if isinstance(text, (tuple, list)):
        return tuple(int(t) for t in text)
    return tuple(int(part) for part in str(text).split(",") if part.strip())


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """The config's epoch-based settings resolved to global step counts."""

    steps_per_epoch: int
    total_steps: int
    rewind_step: int
    milestone_steps: tuple[int, ...]
    warmup_steps: int
    kd_stop_step: Optional[int]


def milestone_epochs(train: Any) -> tuple[int, ...]:
    """train.milestones, or 50% and 75% of train.epochs when empty (91/136 of 182 epochs).

    Short runs where the two coincide get a single drop.
    """
    given = parse_epochs(train.milestones)
    if given:
        return given
    return tuple(sorted({e for e in (train.epochs // 2, (3 * train.epochs) // 4) if e > 0}))


def pruning_levels(prune: Any) -> tuple[int, ...]:
    """The pruning levels a study runs, in order: prune.only_levels, else first_level..levels."""
    return parse_epochs(prune.only_levels) or tuple(range(prune.first_level, prune.levels + 1))


def plan_steps(config: Any, train_size: int) -> StepPlan:
    """Resolve epochs to steps for a training set of `train_size`; ConfigError if inconsistent."""
    batch_size = config.train.batch_size
    if train_size < batch_size:
        raise ConfigError(f"invalid config:\n  train.batch_size={batch_size} is larger than the "
                          f"training set ({train_size} examples); lower it or raise "
                          "data.train_subset")
    steps_per_epoch = train_size // batch_size
    total = config.train.epochs * steps_per_epoch
    rewind = parse_step_count(config.lottery.rewind, steps_per_epoch)
    uses_rewind = (not config.dynamic.method and config.prune.levels > 0
                   and any(variants_lib.get(n).uses_rewind_point
                           for n in parse_names(config.lottery.variants)))
    if rewind >= total and uses_rewind:
        raise ConfigError(
            f"invalid config:\n  lottery.rewind={config.lottery.rewind!r} is step {rewind}, not "
            f"before the end of training (train.epochs={config.train.epochs} x {steps_per_epoch} "
            f"steps = {total} steps); choose a rewind point in [0ep, {config.train.epochs - 1}ep]")
    stop = config.kd.stop_epoch
    kd_stop = None if stop is None else stop * steps_per_epoch
    _check_runs_do_what_they_say(config, total, rewind, kd_stop)
    return StepPlan(steps_per_epoch, total, rewind,
                    tuple(m * steps_per_epoch for m in milestone_epochs(config.train)),
                    config.train.warmup_epochs * steps_per_epoch, kd_stop)


def _check_runs_do_what_they_say(config: Any, total: int, rewind: int,
                                 kd_stop: Optional[int]) -> None:
    """ConfigError, before any training, for step counts under which a run would silently not
    be what its name says: a distilled variant that starts at the rewind point after KD has
    stopped (kd.stop_epoch) never distils, and a drop-and-grow method (RigL, SET) whose first
    update would come at or after its last never changes its masks."""
    dyn = config.dynamic
    if kd_stop is not None and not dyn.method and config.prune.levels > 0:
        late = [name for name in parse_names(config.lottery.variants)
                if variants_lib.get(name).distill and variants_lib.get(name).schedule == "rewind"
                and kd_stop <= rewind]
        if late:
            raise ConfigError(
                f"invalid config:\n  kd.stop_epoch={config.kd.stop_epoch} is step {kd_stop}, "
                f"at or before lottery.rewind={config.lottery.rewind!r} (step {rewind}), where "
                f"{', '.join(late)} start: they would never distil; raise kd.stop_epoch past the "
                "rewind point or leave it unset")
    if dyn.method and dyn.method != gradual.NAME:
        end = int(dyn.end_fraction * total)
        if dyn.delta_t >= end:
            raise ConfigError(
                f"invalid config:\n  dynamic.delta_t={dyn.delta_t} steps is not below the last "
                f"mask update's step, {end} (dynamic.end_fraction={dyn.end_fraction} x {total} "
                f"steps): dynamic.method={dyn.method!r} would never change its masks and train "
                "static sparse; lower dynamic.delta_t, or raise dynamic.end_fraction or "
                "train.epochs")
