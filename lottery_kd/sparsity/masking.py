"""The registry of masking functions and the mechanics they share: removing the lowest-scored
weights still unpruned (globally, per layer, or to given counts) and checking a function's result.

The built-in functions register in lottery_kd.sparsity.pruning (magnitude, random, filter) and
lottery_kd.sparsity.criteria (snip, grasp, synflow); `pruning` imports both, so reading the
registry through it sees every built-in.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity import structure as structure_lib
from lottery_kd.sparsity.distributions import keep_counts, num_to_prune
from lottery_kd.registry import Registry

PyTree = Any
MaskingFunction = Callable[..., PyTree]


@dataclasses.dataclass(frozen=True)
class MaskingEntry:
    """A registered masking function and what the driver and config validation need to know."""
    fn: MaskingFunction
    uses_data: bool = False
    distributions: tuple[str, ...] = ("global",)  # the prune.distribution values it honours
    scopes: tuple[str, ...] = masks_lib.SCOPES
    structured: bool = False  # honours context["structure"] (N:M, block:B)


# The one registry of masking functions (the extension point: registered at import, never
# changed after; a name is taken once).
_REGISTRY: Registry[MaskingEntry] = Registry("masking function", "prune.method")


def register(name: str, *, uses_data: bool = False,
             distributions: Sequence[str] = ("global",),
             scopes: Sequence[str] = masks_lib.SCOPES, structured: bool = False
             ) -> Callable[[MaskingFunction], MaskingFunction]:
    """Decorator registering a masking function under `name` (a name is registered once).

    `uses_data=True` asks the IMP driver for a training batch in context["batch"] (SNIP, GraSP).
    Every function gets context["model"], ["batch_stats"], ["input_shape"], ["distribution"],
    ["structure"], ["synflow_rounds"] and ["grasp_temperature"]. `distributions` and `scopes`:
    the prune.distribution and prune.scope values the function is meant for, and `structured`:
    whether it keeps prune.structure (N:M, block:B). Config validation refuses the others by
    name before any training. A function declares what it honours: by default only the global
    distribution and no structure, so one that ignores context["distribution"] or
    ["structure"] is refused rather than silently pruning otherwise (pass both on to
    prune_by_scores and declare DISTRIBUTIONS and structured=True).
    """
    def decorator(fn: MaskingFunction) -> MaskingFunction:
        _REGISTRY.add(name, MaskingEntry(fn, uses_data, tuple(distributions), tuple(scopes),
                                         structured))
        return fn
    return decorator


def entry(name: str) -> MaskingEntry:
    """The registration of `name`; ValueError listing the known names otherwise."""
    return _REGISTRY.get(name)


def uses_data(name: str) -> bool:
    """Whether the masking function `name` scores weights on a batch of training data."""
    return entry(name).uses_data


def names() -> tuple[str, ...]:
    """Registered masking-function names (the built-in criteria included)."""
    return _REGISTRY.names()


def get(name: str) -> MaskingFunction:
    """The masking function registered as `name`; ValueError listing the known names otherwise."""
    return entry(name).fn


def check_result(name: str, new_masks: PyTree, old_masks: PyTree, params: PyTree,
                 scope: masks_lib.Scope, structure: str = "unstructured") -> None:
    """ValueError naming the masking function `name` unless its output keeps the contract:
    a bool mask per parameter, in-scope leaves only pruned, no pruned weight revived, and the
    pattern of prune.structure in every structured kernel."""
    try:
        masks_lib.validate(new_masks, params, scope)
    except ValueError as error:
        raise ValueError(f"masking function {name!r} returned invalid masks: {error}") from None
    shape = structure_lib.parse(structure)
    for (layer, new), old in zip(masks_lib.named_leaves(new_masks), jax.tree.leaves(old_masks)):
        revived = int(np.count_nonzero(np.asarray(new) & ~np.asarray(old, dtype=bool)))
        if revived:
            raise ValueError(f"masking function {name!r} revived {revived} pruned weight(s) of "
                             f"{layer}; a masking function only removes")
        broken = (structure_lib.violations(shape, new)
                  if masks_lib.is_prunable(layer, np.shape(new), scope) else 0)
        if broken:
            raise ValueError(f"masking function {name!r} broke prune.structure={shape.text} in "
                             f"{broken} group(s) of {layer}: pass context['structure'] on to "
                             "prune_by_scores (or refuse structures it cannot keep)")


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


def prune_smallest(scores: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """New alive flags with the k smallest-scoring alive entries removed (ties: lowest index)."""
    alive_index = np.flatnonzero(alive)
    order = np.argsort(scores[alive_index], kind="stable")
    new_alive = alive.copy()
    new_alive[alive_index[order[:k]]] = False
    return new_alive


def prune_by_scores(scores: PyTree, masks: PyTree, fraction: float, *, scope: masks_lib.Scope =
                    "conv", distribution: str = "global", layerwise: bool = False,
                    structure: str = "unstructured") -> PyTree:
    """Remove the lowest-scoring `fraction` of the remaining in-scope weights.

    `distribution` decides how many each layer loses (sparsity.distributions): `global` ranks
    all prunable weights together and removes ceil(fraction x remaining); `uniform` (what
    `layerwise=True` means) removes ceil(fraction x remaining_l) from every layer; `erk` removes
    ceil(fraction x remaining) in all, split by ERK densities. Within a layer the lowest scores
    go. Ties are broken by position (tree order, then flat index), so results are deterministic.
    Non-finite scores rank as they compare (NaN last). `structure` (sparsity.structure): N:M
    keeps the N best of every M input channels (`fraction` must be 1 - N/M); block:B ranks
    blocks by the sum of their scores and counts in blocks.
    """
    check_fraction(fraction)
    distribution = "uniform" if layerwise else distribution
    shape = structure_lib.parse(structure)
    if shape.kind == "nm":
        return _prune_n_of_m(shape, scores, masks, fraction, scope)
    if shape.kind == "block":
        return _prune_blocks(shape, scores, masks, fraction, scope, distribution)
    flat_masks = masks_lib.named_leaves(masks)
    selected = masks_lib.prunable_indices(masks, scope)
    remaining = sum(int(np.count_nonzero(np.asarray(flat_masks[i][1]))) for i in selected)
    return prune_to_counts(scores, masks, num_to_prune(remaining, fraction), scope=scope,
                           distribution=distribution, layer_fraction=fraction)


def _prune_n_of_m(shape: structure_lib.Structure, scores: PyTree, masks: PyTree,
                  fraction: float, scope: masks_lib.Scope) -> PyTree:
    """N:M: every structured in-scope kernel keeps its N best of every M input channels."""
    if abs(float(fraction) - shape.fixed_sparsity) > 1e-9:
        raise ValueError(f"prune.structure={shape.text} keeps {shape.n} of every {shape.m} "
                         f"weights, so it prunes a fraction of {shape.fixed_sparsity:g}, not "
                         f"{float(fraction):g}: set prune.fraction={shape.fixed_sparsity:g} "
                         "with one level")
    flat_scores = jax.tree.leaves(scores)

    def keep(index: int, name: str, mask: Any) -> jax.Array:
        mask = np.asarray(mask, dtype=bool)
        if not shape.applies(mask.shape):
            return jnp.asarray(mask)
        return jnp.asarray(structure_lib.keep_top_n(shape, np.asarray(flat_scores[index]), mask))
    return masks_lib.map_prunable(keep, masks, scope,
                                  other=lambda mask: jnp.asarray(np.asarray(mask, dtype=bool)))


def _prune_blocks(shape: structure_lib.Structure, scores: PyTree, masks: PyTree,
                  fraction: float, scope: masks_lib.Scope, distribution: str) -> PyTree:
    """block:B: the same ranking as unstructured pruning over blocks (score: the sum of the
    block's alive scores), counted in blocks; a block goes whole."""
    block_scores, block_masks, structured = _block_view(shape, scores, masks, scope)

    def in_blocks(name: str, _shape: Any) -> bool:
        return name in structured
    flat_blocks = masks_lib.named_leaves(block_masks)
    selected = masks_lib.prunable_indices(block_masks, in_blocks)
    remaining = sum(int(np.count_nonzero(np.asarray(flat_blocks[i][1]))) for i in selected)
    flat_masks = masks_lib.named_leaves(masks)
    kernels = [np.shape(flat_masks[i][1]) for i in selected]  # ERK scores kernels, not grids
    pruned = prune_to_counts(block_scores, block_masks, num_to_prune(remaining, fraction),
                             scope=in_blocks, distribution=distribution, layer_fraction=fraction,
                             kernel_shapes=kernels)
    return _expand_blocks(shape, pruned, masks, structured)


def prune_blocks_to_keep(structure: str, scores: PyTree, masks: PyTree, keep: Sequence[int], *,
                         scope: masks_lib.Scope = "conv") -> PyTree:
    """block:B with per-layer counts: the l-th in-scope layer keeps its round(keep[l] / B)
    best blocks (summed scores); out-of-structure layers stay as they are. Never revives."""
    shape = structure_lib.parse(structure)
    block_scores, block_masks, structured = _block_view(shape, scores, masks, scope)
    names = [name for name, _ in masks_lib.named_leaves(masks)]
    selected = [names[i] for i in masks_lib.prunable_indices(masks, scope)]
    blocks = [int(round(k / shape.m)) for name, k in zip(selected, keep) if name in structured]
    kept = prune_to_keep(block_scores, block_masks, blocks,
                         scope=lambda name, _: name in structured)
    return _expand_blocks(shape, kept, masks, structured)


def _block_view(shape: structure_lib.Structure, scores: PyTree, masks: PyTree,
                scope: masks_lib.Scope) -> tuple[PyTree, PyTree, set[str]]:
    """(block scores, block masks, the structured in-scope layers): each structured kernel
    counted in blocks (alive: any weight alive; score: the sum over its alive weights), every
    other leaf as it is."""
    flat_masks, flat_scores = masks_lib.named_leaves(masks), jax.tree.leaves(scores)
    structured = {flat_masks[i][0] for i in masks_lib.prunable_indices(masks, scope)
                  if shape.applies(np.shape(flat_masks[i][1]))}
    block_masks, block_scores = [], []
    for (name, mask), score in zip(flat_masks, flat_scores):
        mask = np.asarray(mask, dtype=bool)
        if name in structured:
            rows, size = shape.groups(mask), shape.group_shape(mask.shape)
            block_masks.append(rows.any(axis=1).reshape(size))
            block_scores.append(np.where(rows, shape.groups(np.asarray(score, np.float64)),
                                         0.0).sum(axis=1).reshape(size))
        else:
            block_masks.append(mask)
            block_scores.append(np.zeros(mask.shape))
    treedef = jax.tree.structure(masks)
    return (jax.tree.unflatten(treedef, block_scores), jax.tree.unflatten(treedef, block_masks),
            structured)


def _expand_blocks(shape: structure_lib.Structure, block_masks: PyTree, masks: PyTree,
                   structured: set[str]) -> PyTree:
    """Weight masks from block masks: a weight stays where it was alive and its block is kept."""
    leaves = []
    for (name, mask), blocks in zip(masks_lib.named_leaves(masks), jax.tree.leaves(block_masks)):
        mask = np.asarray(mask, dtype=bool)
        if name in structured:
            kept = np.repeat(np.asarray(blocks).reshape(-1, 1), shape.m, axis=1)
            mask = mask & shape.ungroup(kept, mask.shape)
        leaves.append(jnp.asarray(mask))
    return jax.tree.unflatten(jax.tree.structure(masks), leaves)


def prune_to_counts(scores: PyTree, masks: PyTree, num_to_remove: int, *,
                    scope: masks_lib.Scope = "conv", distribution: str = "global",
                    layer_fraction: Optional[float] = None,
                    kernel_shapes: Optional[Sequence[tuple[int, ...]]] = None) -> PyTree:
    """Remove exactly `num_to_remove` remaining in-scope weights, the lowest-scoring first, split
    over layers by `distribution` (`uniform` uses `layer_fraction` of each layer instead;
    `kernel_shapes`: ERK's, where the masks count blocks)."""
    flat_masks = masks_lib.named_leaves(masks)
    selected = masks_lib.prunable_indices(masks, scope)
    remaining = [int(np.count_nonzero(np.asarray(flat_masks[i][1]))) for i in selected]
    keep = keep_counts(distribution, [np.shape(flat_masks[i][1]) for i in selected], remaining,
                       num_to_remove, layer_fraction if layer_fraction is not None else 0.0,
                       kernel_shapes)
    return prune_to_keep(scores, masks, sum(remaining) - num_to_remove if keep is None else keep,
                         scope=scope)


def prune_to_keep(scores: PyTree, masks: PyTree, keep: int | Sequence[int], *,
                  scope: masks_lib.Scope = "conv") -> PyTree:
    """Keep the highest-scoring remaining in-scope weights: `keep` of them over all layers (one
    ranking), or keep[l] in the l-th prunable layer (tree order). Never revives a weight."""
    flat_masks = masks_lib.named_leaves(masks)
    flat_scores = jax.tree.leaves(scores)
    if len(flat_scores) != len(flat_masks):
        raise ValueError("scores and masks must have the same tree structure")
    selected = masks_lib.prunable_indices(masks, scope)
    alive = [np.asarray(m, dtype=bool).reshape(-1) for _, m in flat_masks]
    values = [np.asarray(s, dtype=np.float64).reshape(-1) for s in flat_scores]
    new_alive = list(alive)
    if not isinstance(keep, (int, np.integer)):
        if len(keep) != len(selected):
            raise ValueError(f"keep has {len(keep)} counts for {len(selected)} prunable layers")
        for i, kept in zip(selected, keep):
            left = int(alive[i].sum())
            new_alive[i] = prune_smallest(values[i], alive[i], left - min(left, int(kept)))
    elif selected:
        joined_alive = np.concatenate([alive[i] for i in selected])
        left = int(joined_alive.sum())
        joined = prune_smallest(np.concatenate([values[i] for i in selected]), joined_alive,
                                 left - min(left, max(int(keep), 0)))
        pieces = np.split(joined, np.cumsum([alive[i].size for i in selected])[:-1])
        for i, piece in zip(selected, pieces):
            new_alive[i] = piece
    leaves = [jnp.asarray(a.reshape(np.shape(m))) for a, (_, m) in zip(new_alive, flat_masks)]
    return jax.tree.unflatten(jax.tree.structure(masks), leaves)
