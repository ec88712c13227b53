"""Masking functions behind a registry: pure functions (params, masks, fraction) -> new masks.

A masking function is pure:

    fn(params, masks, fraction, *, rng=None, scope="conv", **context) -> new_masks

It removes ceil(fraction * remaining) of the weights still unpruned in scope (open_lth's rule),
never revives a pruned weight and never touches out-of-scope leaves (the driver checks:
check_result). Most criteria only need a score per weight: write `scores(params, rng, context)
-> tree` and hand it to `prune_by_scores`.

    @lottery_kd.pruning.register("my_criterion")
    def my_criterion(params, masks, fraction, *, rng=None, scope="conv", **context):
        scores = jax.tree.map(lambda w: jnp.abs(w) ** 2, params)
        return lottery_kd.pruning.prune_by_scores(scores, masks, fraction, scope=scope)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd import masks as masks_lib
from lottery_kd.distributions import DISTRIBUTIONS, keep_counts, num_to_prune
from lottery_kd.registry import Registry

PyTree = Any
MaskingFunction = Callable[..., PyTree]


@dataclasses.dataclass(frozen=True)
class MaskingEntry:
    """A registered masking function and what the driver and config validation need to know."""
    fn: MaskingFunction
    uses_data: bool = False
    distributions: tuple[str, ...] = DISTRIBUTIONS
    scopes: tuple[str, ...] = masks_lib.SCOPES


# The one registry of masking functions (the extension point: registered at import, never
# changed after; a name is taken once).
_REGISTRY: Registry[MaskingEntry] = Registry("masking function", "prune.method")


def register(name: str, *, uses_data: bool = False,
             distributions: Sequence[str] = DISTRIBUTIONS,
             scopes: Sequence[str] = masks_lib.SCOPES
             ) -> Callable[[MaskingFunction], MaskingFunction]:
    """Decorator registering a masking function under `name` (a name is registered once).

    `uses_data=True` asks the IMP driver for a training batch in context["batch"] (SNIP, GraSP).
    Every function gets context["model"], ["batch_stats"], ["input_shape"], ["distribution"],
    ["synflow_rounds"] and ["grasp_temperature"]. `distributions` and `scopes`: the
    prune.distribution and prune.scope values the function is meant for; config validation
    refuses the others by name.
    """
    def decorator(fn: MaskingFunction) -> MaskingFunction:
        _REGISTRY.add(name, MaskingEntry(fn, uses_data, tuple(distributions), tuple(scopes)))
        return fn
    return decorator


def _with_builtin_criteria() -> None:
    """Register snip, grasp and synflow (lottery_kd.criteria imports this module)."""
    import lottery_kd.criteria  # noqa: F401


def entry(name: str) -> MaskingEntry:
    """The registration of `name`; ValueError listing the known names otherwise."""
    _with_builtin_criteria()
    return _REGISTRY.get(name)


def uses_data(name: str) -> bool:
    """Whether the masking function `name` scores weights on a batch of training data."""
    return entry(name).uses_data


def distributions(name: str) -> tuple[str, ...]:
    """The prune.distribution values the masking function `name` honours."""
    return entry(name).distributions


def scopes(name: str) -> tuple[str, ...]:
    """The prune.scope values the masking function `name` is meant for."""
    return entry(name).scopes


def names() -> tuple[str, ...]:
    """Registered masking-function names (the built-in criteria included)."""
    _with_builtin_criteria()
    return _REGISTRY.names()


def get(name: str) -> MaskingFunction:
    """The masking function registered as `name`; ValueError listing the known names otherwise."""
    return entry(name).fn


def check_result(name: str, new_masks: PyTree, old_masks: PyTree, params: PyTree,
                 scope: masks_lib.Scope) -> None:
    """ValueError naming the masking function `name` unless its output keeps the contract:
    a bool mask per parameter, in-scope leaves only pruned, no pruned weight revived."""
    try:
        masks_lib.validate(new_masks, params, scope)
    except ValueError as error:
        raise ValueError(f"masking function {name!r} returned invalid masks: {error}") from None
    flat_new = jax.tree_util.tree_flatten_with_path(new_masks)[0]
    for (path, new), old in zip(flat_new, jax.tree.leaves(old_masks)):
        revived = int(np.count_nonzero(np.asarray(new) & ~np.asarray(old, dtype=bool)))
        if revived:
            raise ValueError(f"masking function {name!r} revived {revived} pruned weight(s) of "
                             f"{masks_lib.path_name(path)}; a masking function only removes")


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


def _prune_smallest(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """New alive flags with the k smallest-scoring alive entries removed (ties: lowest index)."""
    alive_index = np.flatnonzero(alive)
    order = np.argsort(scores[alive_index], kind="stable")
    new_alive = alive.copy()
    new_alive[alive_index[order[:k]]] = False
    return new_alive


def prune_by_scores(scores: PyTree, masks: PyTree, fraction: float, *, scope: masks_lib.Scope =
                    "conv", distribution: str = "global", layerwise: bool = False) -> PyTree:
    """Remove the lowest-scoring `fraction` of the remaining in-scope weights.

    `distribution` decides how many each layer loses (lottery_kd.distributions): `global` ranks
    all prunable weights together and removes ceil(fraction x remaining); `uniform` (what
    `layerwise=True` means) removes ceil(fraction x remaining_l) from every layer; `erk` removes
    ceil(fraction x remaining) in all, split by ERK densities. Within a layer the lowest scores
    go. Ties are broken by position (tree order, then flat index), so results are deterministic.
    Non-finite scores rank as they compare (NaN last).
    """
    check_fraction(fraction)
    distribution = "uniform" if layerwise else distribution
    flat_masks = jax.tree_util.tree_flatten_with_path(masks)[0]
    selected = _selected(flat_masks, scope)
    remaining = sum(int(np.count_nonzero(np.asarray(flat_masks[i][1]))) for i in selected)
    return prune_to_counts(scores, masks, num_to_prune(remaining, fraction), scope=scope,
                           distribution=distribution, layer_fraction=fraction)


def _selected(flat_masks, scope) -> list[int]:
    masks_lib.check_scope(scope)
    return [i for i, (p, m) in enumerate(flat_masks)
            if masks_lib.is_prunable(masks_lib.path_name(p), np.shape(m), scope)]


def prune_to_counts(scores: PyTree, masks: PyTree, num_to_remove: int, *,
                    scope: masks_lib.Scope = "conv", distribution: str = "global",
                    layer_fraction: Optional[float] = None) -> PyTree:
    """Remove exactly `num_to_remove` remaining in-scope weights, the lowest-scoring first, split
    over layers by `distribution` (`uniform` uses `layer_fraction` of each layer instead)."""
    flat_masks = jax.tree_util.tree_flatten_with_path(masks)[0]
    selected = _selected(flat_masks, scope)
    remaining = [int(np.count_nonzero(np.asarray(flat_masks[i][1]))) for i in selected]
    keep = keep_counts(distribution, [np.shape(flat_masks[i][1]) for i in selected], remaining,
                       num_to_remove, layer_fraction if layer_fraction is not None else 0.0)
    return prune_to_keep(scores, masks, sum(remaining) - num_to_remove if keep is None else keep,
                         scope=scope)


def prune_to_keep(scores: PyTree, masks: PyTree, keep: int | Sequence[int], *,
                  scope: masks_lib.Scope = "conv") -> PyTree:
    """Keep the highest-scoring remaining in-scope weights: `keep` of them over all layers (one
    ranking), or keep[l] in the l-th prunable layer (tree order). Never revives a weight."""
    flat_masks = jax.tree_util.tree_flatten_with_path(masks)[0]
    flat_scores = jax.tree.leaves(scores)
    if len(flat_scores) != len(flat_masks):
        raise ValueError("scores and masks must have the same tree structure")
    selected = _selected(flat_masks, scope)
    alive = [np.asarray(m, dtype=bool).reshape(-1) for _, m in flat_masks]
    values = [np.asarray(s, dtype=np.float64).reshape(-1) for s in flat_scores]
    new_alive = list(alive)
    if not isinstance(keep, (int, np.integer)):
        if len(keep) != len(selected):
            raise ValueError(f"keep has {len(keep)} counts for {len(selected)} prunable layers")
        for i, kept in zip(selected, keep):
            left = int(alive[i].sum())
            new_alive[i] = _prune_smallest(values[i], alive[i], left - min(left, int(kept)))
    elif selected:
        joined_alive = np.concatenate([alive[i] for i in selected])
        left = int(joined_alive.sum())
        joined = _prune_smallest(np.concatenate([values[i] for i in selected]), joined_alive,
                                 left - min(left, max(int(keep), 0)))
        pieces = np.split(joined, np.cumsum([alive[i].size for i in selected])[:-1])
        for i, piece in zip(selected, pieces):
            new_alive[i] = piece
    leaves = [jnp.asarray(a.reshape(np.shape(m))) for a, (_, m) in zip(new_alive, flat_masks)]
    return jax.tree.unflatten(jax.tree.structure(masks), leaves)


@register("magnitude_global")
def magnitude_global(params: PyTree, masks: PyTree, fraction: float, *,
                     rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                     **context: Any) -> PyTree:
    """Magnitude pruning: raw |w|, ranked over all prunable weights (no normalisation) unless
    context["distribution"] sets per-layer budgets (uniform, erk)."""
    return prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope,
                           distribution=context.get("distribution", "global"))


@register("magnitude_layerwise", distributions=("global", "uniform"))
def magnitude_layerwise(params: PyTree, masks: PyTree, fraction: float, *,
                        rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                        **context: Any) -> PyTree:
    """Layer-wise magnitude pruning: each prunable layer loses `fraction` of its remaining (the
    uniform distribution, whatever prune.distribution says: its default, global, or uniform)."""
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
    return prune_by_scores(jax.tree.unflatten(treedef, scores), masks, fraction, scope=scope,
                           distribution=context.get("distribution", "global"))


@register("magnitude_filter", distributions=("global",), scopes=("conv", "conv_no_shortcut"))
def magnitude_filter(params: PyTree, masks: PyTree, fraction: float, *,
                     rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                     **context: Any) -> PyTree:
    """Structured unit pruning: every prunable layer loses ceil(fraction x its remaining output
    filters) whole, those with the smallest L2 norm of their remaining weights. Counts are in
    filters (the last axis of a kernel), not weights, so prune.distribution stays at its default;
    scope conv only (the classifier's output units are the classes)."""
    check_fraction(fraction)
    flat, _ = jax.tree_util.tree_flatten_with_path(masks)
    selected = set(_selected(flat, scope))
    leaves = []
    for i, ((path, mask), weight) in enumerate(zip(flat, jax.tree.leaves(params))):
        mask = np.asarray(mask, dtype=bool)
        if i not in selected:
            leaves.append(jnp.asarray(mask))
            continue
        units = mask.reshape(-1, mask.shape[-1])
        alive_units = units.any(axis=0)
        norms = np.sqrt(np.sum(np.where(units, np.asarray(weight, np.float64).reshape(
            units.shape), 0.0) ** 2, axis=0))
        remove = _prune_smallest(norms, alive_units, num_to_prune(int(alive_units.sum()),
                                                                  fraction))
        leaves.append(jnp.asarray((units & remove[None, :]).reshape(mask.shape)))
    return jax.tree.unflatten(jax.tree.structure(masks), leaves)
