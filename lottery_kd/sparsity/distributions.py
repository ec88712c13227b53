"""Layer-wise sparsity distributions: how many weights each prunable layer keeps.

A distribution turns "keep `target` of the in-scope weights" into per-layer counts; a criterion
(magnitude, SNIP, GraSP, SynFlow, random, yours) then picks which weights within each layer.

- `global`: no per-layer budget; one ranking over all layers decides (None is returned).
- `uniform`: every layer loses the same fraction of its remaining weights (ceil per layer).
- `erk`: Erdos-Renyi-Kernel (Evci et al. 2020, RigL): a layer's density is proportional to the
  sum of its kernel dimensions over their product, e.g. (kh + kw + c_in + c_out) /
  (kh * kw * c_in * c_out); layers whose density would exceed 1 are made dense and the others
  rescaled until the total is met.

Counts are exact integers that add up to the target, and never exceed a layer's remaining count
(a pruned weight never comes back).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

DISTRIBUTIONS: tuple[str, ...] = ("global", "uniform", "erk")


def check_distribution(name: str) -> None:
    """ValueError naming prune.distribution and the allowed values unless `name` is one."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"prune.distribution: unknown distribution {name!r}; allowed: "
                         f"{', '.join(DISTRIBUTIONS)}")


def num_to_prune(remaining: int, fraction: float) -> int:
    """open_lth's rule: ceil(fraction * remaining), exact for the fraction as written.

    The number is read through its shortest decimal form in its own precision (0.07 -> 7/100;
    a float32 0.2 -> 1/5), so 0.07 x 100 prunes 7, not the 8 that float noise
    (7.000000000000001) would give, at any layer size. A fraction that is no short decimal
    (1 - 2^-17) is read as its shortest decimal too, which can move the count by one.
    """
    if isinstance(fraction, (float, int)):
        text = repr(float(fraction))
    else:  # a NumPy or JAX scalar: the shortest decimal of its own dtype
        text = np.format_float_positional(np.asarray(fraction)[()], unique=True, trim="-")
    return min(remaining, math.ceil(Fraction(text) * remaining))


def oneshot_fraction(fraction: float, level: int) -> float:
    """The fraction one-shot pruning removes at `level`: 1 - (1 - fraction)^level, computed on
    the decimal `fraction` exactly, so that num_to_prune reads the decimal it stands for
    (1 - 0.7 gives 0.30000000000000004 in floats, which would prune 301 of 1,000)."""
    keep = 1 - Fraction(repr(float(fraction)))
    return float(1 - keep ** level)


def erk_densities(shapes: Sequence[tuple[int, ...]], density: float,
                  kernel_shapes: Optional[Sequence[tuple[int, ...]]] = None) -> list[float]:
    """ERK density of each layer so that sum(density_l * size_l) = density * sum(size_l).

    `shapes` count the units (weights, or blocks of them); ERK's score (the sum of a kernel's
    dimensions over their product) comes from `kernel_shapes` where the units are blocks, as a
    block:B layer's grid (kh, kw, I, O/B) is not its kernel (kh, kw, I, O)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in (kernel_shapes or shapes)]
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        remaining_budget = budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in free)
        epsilon = remaining_budget / weight if weight > 0 else 0.0
        too_dense = [i for i in free if epsilon * raw[i] > 1.0]
        if not too_dense:
            return [1.0 if i in dense else epsilon * raw[i] for i in range(len(shapes))]
        dense.update(too_dense)


def _integer_split(targets: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers close to `targets`, each <= its cap, that add up to `total` exactly."""
    counts = [min(cap, math.floor(t)) for t, cap in zip(targets, caps)]
    short = total - sum(counts)
    # Hand out what is missing by largest fractional part, then wherever room is left.
    order = sorted(range(len(counts)), key=lambda i: (-(targets[i] - math.floor(targets[i])), i))
    while short > 0:
        progressed = False
        for i in order:
            if short == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                short -= 1
                progressed = True
        if not progressed:
            raise ValueError(f"cannot keep {total} weights in layers that hold {sum(caps)}")
    return counts


def keep_counts(name: str, shapes: Sequence[tuple[int, ...]], remaining: Sequence[int],
                num_to_remove: int, layer_fraction: float,
                kernel_shapes: Optional[Sequence[tuple[int, ...]]] = None
                ) -> Optional[list[int]]:
    """Per-layer numbers of weights to keep, or None for `global` (one ranking decides).

    `uniform` removes ceil(layer_fraction x remaining_l) in every layer; `erk` keeps
    sum(remaining) - num_to_remove in all, split by ERK densities (capped at what is left).
    """
    check_distribution(name)
    if name == "global":
        return None
    if name == "uniform":
        return [r - num_to_prune(r, layer_fraction) for r in remaining]
    return split_keep("erk", shapes, remaining, sum(remaining) - num_to_remove, kernel_shapes)


def split_keep(name: str, shapes: Sequence[tuple[int, ...]], remaining: Sequence[int],
               keep_total: int, kernel_shapes: Optional[Sequence[tuple[int, ...]]] = None
               ) -> list[int]:
    """Per-layer numbers of weights to keep that add up to `keep_total` exactly, each at most
    the layer's remaining count: `uniform` at the density keep_total / sum(sizes) in every layer,
    `erk` at ERK densities (integers by largest remainder; what a layer cannot hold goes to the
    others). Budgets of the whole network's sizes, not of what remains: gradual pruning's."""
    if name not in ("uniform", "erk"):
        raise ValueError(f"split_keep: distribution {name!r} has no per-layer budget; allowed: "
                         "uniform, erk")
    sizes = [math.prod(s) for s in shapes]
    density = keep_total / sum(sizes) if sum(sizes) else 0.0
    densities = (erk_densities(shapes, density, kernel_shapes) if name == "erk"
                 else [density] * len(sizes))
    return _integer_split([d * n for d, n in zip(densities, sizes)], list(remaining), keep_total)
