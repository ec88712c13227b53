"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): dense at first,
pruned by weight magnitude during training on a cubic sparsity schedule.

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3,   s_i = 0, s_f = dynamic.sparsity

The masks are updated every `delta_t` steps after t_0 and once more at t_end, whatever
(t_end - t_0) mod delta_t, so the target is reached exactly there. After an update at step t the
network keeps N - ceil(s_t x N) of its N in-scope weights (distributions.num_to_prune: the rule of
every masking function, so GMP ends with as many weights as a RigL run at the same sparsity;
with block:B each layer's count then rounds to whole blocks, a few blocks apart in all),
split over the layers by `distribution` (uniform: every layer at the same density; erk: ERK
densities) and, within a layer, the largest |w| stay. A pruned weight is 0.0 from then on and
never comes back (the trainer zeroes it and its momentum, dynamic.reset_grown). GMP needs no
gradient: `needs_grads` is False, so the trainer computes none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity.distributions import num_to_prune, split_keep
from lottery_kd.sparsity.masking import prune_blocks_to_keep, prune_to_keep

PyTree = Any
NAME = "gmp"  # its dynamic.method value


def cubic_sparsity(step: int, start: int, end: int, final: float,
                   initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: `initial` up to `start`, `final` from `end` on (exactly), and
    final + (initial - final) * (1 - (step - start) / (end - start))^3 in between."""
    if step <= start and step < end:
        return initial
    if step >= end:
        return final
    left = 1.0 - (step - start) / (end - start)
    return final + (initial - final) * (left * left * left)


def pruning_steps(start_fraction: float, end_fraction: float, total_steps: int) -> tuple[int, int]:
    """(t_0, t_end) of a run of `total_steps`: int(fraction x total) (as RigL's end step), with
    t_end at most the last step, total_steps - 1, so that the target is reached before training
    ends, and t_0 at most t_end."""
    end = max(0, min(int(end_fraction * total_steps), total_steps - 1))
    return min(int(start_fraction * total_steps), end), end


def keep_target(total: int, sparsity: float) -> int:
    """In-scope weights kept at `sparsity`: total - ceil(sparsity x total)."""
    return total - num_to_prune(total, sparsity)


def keep_largest(params: PyTree, masks: PyTree, keep: Sequence[int], *,
                 scope: masks_lib.Scope = "conv", structure: str = "unstructured") -> PyTree:
    """The one call that picks the weights GMP prunes: in the l-th in-scope layer keep the
    keep[l] largest-|w| weights still alive (ties by position); never revives one. With
    structure block:B, the round(keep[l] / B) blocks of largest summed |w| (out-of-structure
    layers stay dense); N:M fixes the sparsity, so GMP does not take it (config validation)."""
    scores = jax.tree.map(jnp.abs, params)
    if structure != "unstructured":
        return prune_blocks_to_keep(structure, scores, masks, list(keep), scope=scope)
    return prune_to_keep(scores, masks, list(keep), scope=scope)


@dataclasses.dataclass(frozen=True)
class GradualPruning:
    """When and how a GMP run prunes (the trainer calls `due` and `new_masks`, as for
    dynamic.MaskUpdate); steps are global steps."""

    final_sparsity: float
    delta_t: int
    start_step: int
    end_step: int
    distribution: str = "erk"
    scope: masks_lib.Scope = "conv"
    structure: str = "unstructured"
    method: ClassVar[str] = NAME
    needs_grads: ClassVar[bool] = False  # no dense gradient for new_masks

    def due(self, step: int) -> bool:
        """Whether the masks change before global step `step`: every delta_t steps after t_0,
        and at t_end."""
        return step == self.end_step or (self.start_step < step < self.end_step and
                                         (step - self.start_step) % self.delta_t == 0)

    def update_steps(self) -> list[int]:
        """Every step `due` is true at, in order."""
        return [*range(self.start_step + self.delta_t, self.end_step, self.delta_t),
                self.end_step]

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity after the update at `step` (and until the next one)."""
        return cubic_sparsity(step, self.start_step, self.end_step, self.final_sparsity)

    def layer_keep(self, step: int, shapes: Sequence[tuple[int, ...]],
                   remaining: Sequence[int]) -> list[int]:
        """How many weights each in-scope layer (of `shapes`, with `remaining` alive) keeps after
        the update at `step`: the scheduled total, split by `distribution`, never more than a
        layer holds (a function of the counts alone, not of the weights)."""
        total = sum(math.prod(shape) for shape in shapes)
        keep = min(keep_target(total, self.sparsity_at(step)), sum(remaining))
        return split_keep(self.distribution, shapes, remaining, keep)

    def new_masks(self, step: int, params: PyTree, masks: PyTree,
                  grads: Optional[PyTree] = None) -> PyTree:
        """The masks after the update at `step` (`grads` unused)."""
        layers = self._layers(masks)
        remaining = [int(np.count_nonzero(np.asarray(leaf))) for _, leaf in layers]
        keep = self.layer_keep(step, [np.shape(leaf) for _, leaf in layers], remaining)
        return keep_largest(params, masks, keep, scope=self.scope, structure=self.structure)

    def count_schedule(self, masks: PyTree, start_step: int, num_steps: int
                       ) -> list[tuple[int, int, dict[str, list[int]]]]:
        """(first step, steps, {layer: [kept, total]}) of every stretch of a run's steps
        [start_step, start_step + num_steps) between mask updates, dense before the first:
        what a FLOP count sums (`masks`: any masks of the run, for its in-scope layers)."""
        layers = self._layers(masks)
        shapes = [np.shape(leaf) for _, leaf in layers]
        end = start_step + num_steps
        counts, first, stretches = [math.prod(shape) for shape in shapes], 0, []
        for step in [s for s in self.update_steps() if s < end] + [end]:
            begin = max(first, start_step)
            if step > begin:
                stretches.append((begin, step - begin, {
                    name: [kept, math.prod(shape)]
                    for (name, _), shape, kept in zip(layers, shapes, counts)}))
            if step < end:
                first, counts = step, self.layer_keep(step, shapes, counts)
        return stretches

    def _layers(self, masks: PyTree) -> list[tuple[str, Any]]:
        """(path, mask) of the in-scope layers, in tree order."""
        return [(name, leaf) for name, leaf in masks_lib.named_leaves(masks)
                if masks_lib.is_prunable(name, np.shape(leaf), self.scope)]
