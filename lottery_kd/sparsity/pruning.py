"""Masking functions behind a registry: pure functions (params, masks, fraction) -> new masks.

A masking function is pure:

    fn(params, masks, fraction, *, rng=None, scope="conv", **context) -> new_masks

It removes ceil(fraction * remaining) of the weights still unpruned in scope (open_lth's rule),
never revives a pruned weight and never touches out-of-scope leaves (the driver checks:
check_result). Most criteria only need a score per weight: write `scores(params, rng, context)
-> tree` and hand it to `prune_by_scores`.

    @lottery_kd.sparsity.pruning.register("my_criterion")
    def my_criterion(params, masks, fraction, *, rng=None, scope="conv", **context):
        scores = jax.tree.map(lambda w: jnp.abs(w) ** 2, params)
        return lottery_kd.sparsity.pruning.prune_by_scores(scores, masks, fraction, scope=scope)

registers one for the global distribution and unstructured masks only (what it honours); one
that passes context["distribution"] and ["structure"] on to prune_by_scores declares so with
register(name, distributions=DISTRIBUTIONS, structured=True).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity.masking import (MaskingEntry, MaskingFunction,  # noqa: F401 (the API)
                                         check_fraction, check_result, entry, get, names,
                                         prune_by_scores, prune_smallest, prune_to_counts,
                                         prune_to_keep, register, uses_data)
from lottery_kd.sparsity.distributions import DISTRIBUTIONS, num_to_prune

PyTree = Any


@register("magnitude_global", distributions=DISTRIBUTIONS, structured=True)
def magnitude_global(params: PyTree, masks: PyTree, fraction: float, *,
                     rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                     **context: Any) -> PyTree:
    """Magnitude pruning: raw |w|, ranked over all prunable weights (no normalisation) unless
    context["distribution"] sets per-layer budgets (uniform, erk)."""
    return prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope,
                           distribution=context.get("distribution", "global"),
                           structure=context.get("structure", "unstructured"))


@register("magnitude_layerwise", distributions=("global", "uniform"), structured=True)
def magnitude_layerwise(params: PyTree, masks: PyTree, fraction: float, *,
                        rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                        **context: Any) -> PyTree:
    """Layer-wise magnitude pruning: each prunable layer loses `fraction` of its remaining (the
    uniform distribution, whatever prune.distribution says: its default, global, or uniform)."""
    return prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope,
                           layerwise=True, structure=context.get("structure", "unstructured"))


@register("random", distributions=DISTRIBUTIONS, structured=True)
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
                           distribution=context.get("distribution", "global"),
                           structure=context.get("structure", "unstructured"))


@register("magnitude_filter", distributions=("global",), scopes=("conv", "conv_no_shortcut"),
          structured=False)
def magnitude_filter(params: PyTree, masks: PyTree, fraction: float, *,
                     rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
                     **context: Any) -> PyTree:
    """Structured unit pruning: every prunable layer loses ceil(fraction x its remaining output
    filters) whole, those with the smallest L2 norm of their remaining weights. Counts are in
    filters (the last axis of a kernel), not weights, so prune.distribution stays at its default;
    scope conv only (the classifier's output units are the classes)."""
    check_fraction(fraction)
    weights = jax.tree.leaves(params)

    def prune_filters(index: int, name: str, mask: Any) -> jax.Array:
        mask = np.asarray(mask, dtype=bool)
        units = mask.reshape(-1, mask.shape[-1])
        alive_units = units.any(axis=0)
        norms = np.sqrt(np.sum(np.where(units, np.asarray(weights[index], np.float64).reshape(
            units.shape), 0.0) ** 2, axis=0))
        remove = prune_smallest(norms, alive_units, num_to_prune(int(alive_units.sum()),
                                                                  fraction))
        return jnp.asarray((units & remove[None, :]).reshape(mask.shape))
    return masks_lib.map_prunable(prune_filters, masks, scope,
                                  other=lambda mask: jnp.asarray(np.asarray(mask, dtype=bool)))


# The criteria of lottery_kd.sparsity.criteria, registered here so that the registry fills in one
# place, in one order, whichever module is imported first.
from lottery_kd.sparsity import criteria  # noqa: E402

register("snip", uses_data=True, distributions=DISTRIBUTIONS, structured=True)(criteria.snip)
register("grasp", uses_data=True, distributions=DISTRIBUTIONS, structured=True)(criteria.grasp)
register("synflow", distributions=DISTRIBUTIONS, structured=True)(criteria.synflow)
