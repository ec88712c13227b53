"""Masking functions behind a registry (contract: masking functions in ../shared/DESIGN.md).

A masking function is pure:

    fn(params, masks, fraction, *, rng=None, scope="conv", **context) -> new_masks

It removes ceil(fraction * remaining) of the weights still unpruned in scope (open_lth's rule), never
revives a pruned weight and never touches out-of-scope leaves. Most criteria only need a score per
weight: write `scores(params, rng, context) -> tree` and hand it to `prune_by_scores`.

    @lottery_kd.pruning.register("my_criterion")
    def my_criterion(params, masks, fraction, *, rng=None, scope="conv", **context):
        scores = jax.tree.map(lambda w: jnp.abs(w) ** 2, params)
        return lottery_kd.pruning.prune_by_scores(scores, masks, fraction, scope=scope)
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd import masks as masks_lib

PyTree = Any
MaskingFunction = Callable[..., PyTree]

_REGISTRY: dict[str, MaskingFunction] = {}


def register(name: str) -> Callable[[MaskingFunction], MaskingFunction]:
    """Decorator registering a masking function under `name` (a name is registered once)."""
    def decorator(fn: MaskingFunction) -> MaskingFunction:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a masking function named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn
    return decorator


def names() -> tuple[str, ...]:
    """Registered masking-function names."""
    return tuple(_REGISTRY)


def get(name: str) -> MaskingFunction:
    """The masking function registered as `name`; ValueError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"prune.method: unknown masking function {name!r}; "
                         f"allowed: {', '.join(names())}")
    return _REGISTRY[name]


def check_fraction(fraction: float) -> None:
    """ValueError unless `fraction` is a real number (Python or NumPy/JAX scalar) in (0, 1)."""
    try:
        value = float(fraction)
        if np.ndim(fraction) != 0 or isinstance(fraction, (bool, str, bytes)):
            raise TypeError
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise ValueError(f"prune.fraction must be in the open interval (0, 1), got {fraction!r}")


def num_to_prune(remaining: int, fraction: float) -> int:
    """open_lth's rule: ceil(fraction * remaining), exact for the fraction as written.

    The float is read through its shortest decimal form (0.07 -> 7/100), so 0.07 x 100 prunes 7,
    not the 8 that float noise (7.000000000000001) would give, at any layer size.
    """
    exact = Fraction(repr(float(fraction)))
    return min(remaining, math.ceil(exact * remaining))


def _prune_smallest(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """New alive flags with the k smallest-scoring alive entries removed (ties: lowest index)."""
    alive_index = np.flatnonzero(alive)
    order = np.argsort(scores[alive_index], kind="stable")
    new_alive = alive.copy()
    new_alive[alive_index[order[:k]]] = False
    return new_alive


def prune_by_scores(scores: PyTree, masks: PyTree, fraction: float, *, scope: masks_lib.Scope =
                    "conv", layerwise: bool = False) -> PyTree:
    """Remove the lowest-scoring `fraction` of the remaining in-scope weights.

    Global (default): one ranking over all prunable weights. Layer-wise: each prunable leaf loses
    ceil(fraction * its remaining). Ties are broken by position (tree order, then flat index), so
    results are deterministic. Non-finite scores rank as they compare (NaN last).
    """
    check_fraction(fraction)
    masks_lib.check_scope(scope)
    flat_masks, treedef = jax.tree_util.tree_flatten_with_path(masks)
    flat_scores = jax.tree.leaves(scores)
    if len(flat_scores) != len(flat_masks):
        raise ValueError("scores and masks must have the same tree structure")
    prunable = [masks_lib.is_prunable(masks_lib.path_name(p), np.shape(m), scope)
                for p, m in flat_masks]
    alive = [np.asarray(m, dtype=bool).reshape(-1) for _, m in flat_masks]
    values = [np.asarray(s, dtype=np.float64).reshape(-1) for s in flat_scores]
    new_alive = list(alive)
    selected = [i for i, is_in in enumerate(prunable) if is_in]
    if layerwise:
        for i in selected:
            new_alive[i] = _prune_smallest(values[i], alive[i],
                                           num_to_prune(int(alive[i].sum()), fraction))
    elif selected:
        joined_alive = np.concatenate([alive[i] for i in selected])
        k = num_to_prune(int(joined_alive.sum()), fraction)
        joined = _prune_smallest(np.concatenate([values[i] for i in selected]), joined_alive, k)
        pieces = np.split(joined, np.cumsum([alive[i].size for i in selected])[:-1])
        for i, piece in zip(selected, pieces):
            new_alive[i] = piece
    leaves = [jnp.asarray(a.reshape(np.shape(m))) for a, (_, m) in zip(new_alive, flat_masks)]
    return jax.tree.unflatten(jax.tree.structure(masks), leaves)


@register("magnitude_global")
def magnitude_global(params: PyTree, masks: PyTree, fraction: float, *,
                     rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                     **context: Any) -> PyTree:
    """Global magnitude pruning: raw |w| ranked over all prunable weights (no normalisation)."""
    return prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope)


@register("magnitude_layerwise")
def magnitude_layerwise(params: PyTree, masks: PyTree, fraction: float, *,
                        rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                        **context: Any) -> PyTree:
    """Layer-wise magnitude pruning: each prunable layer loses `fraction` of its remaining."""
    return prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope,
                           layerwise=True)


@register("random")
def random_pruning(params: PyTree, masks: PyTree, fraction: float, *,
                   rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                   **context: Any) -> PyTree:
    """Random pruning: exactly ceil(fraction * remaining) weights, uniformly among the remaining."""
    if rng is None:
        raise ValueError("the 'random' masking function needs rng=jax.random.key(...)")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(rng, len(leaves))
    scores = [jax.random.uniform(key, np.shape(leaf)) for key, leaf in zip(keys, leaves)]
    return prune_by_scores(jax.tree.unflatten(treedef, scores), masks, fraction, scope=scope)
