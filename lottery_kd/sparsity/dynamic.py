"""Dynamic sparse training: masks that change during training at a fixed parameter count.

A dynamic method is one registered function (the training-time mask-update hook):

    fn(params, masks, grads, drop_fraction, *, rng, scope[, structure]) -> new_masks

called every `delta_t` steps until `end_step` with the current (masked) weights, the dense
gradient of the training loss (gradients at pruned positions included: what RigL grows by), and
the cosine-decayed fraction of each layer's active weights to replace. It must keep every layer's
number of active weights (and, when prune.structure is set, takes `structure` and keeps it);
`drop_and_grow` does the bookkeeping for the usual drop-by-magnitude,
grow-by-score methods. After an update the trainer zeroes the dropped weights and resets the
momentum of the grown ones (which start at 0.0).

Built in: `rigl` (Evci et al. 2020: grow by |gradient|) and `set` (Mocanu et al. 2018: grow at
random). `gmp` (gradual magnitude pruning, sparsity.gradual) is a dynamic.method too, but no
drop-and-grow function: it starts dense and only prunes, on its own schedule (GradualPruning).
Both schedules offer the trainer the `MaskSchedule` interface.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, ClassVar, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lottery_kd.sparsity import gradual, masks as masks_lib
from lottery_kd.sparsity import structure as structure_lib
from lottery_kd.registry import Registry

PyTree = Any
DynamicMethod = Callable[..., PyTree]

_REGISTRY: Registry[DynamicMethod] = Registry("dynamic sparse method", "dynamic.method")


def register(name: str) -> Callable[[DynamicMethod], DynamicMethod]:
    """Decorator registering a dynamic sparse method under `name`."""
    return _REGISTRY.decorator(name)


def names() -> tuple[str, ...]:
    """Registered dynamic sparse method names."""
    return _REGISTRY.names()


def method_names() -> tuple[str, ...]:
    """Every dynamic.method value: the registered methods, then gradual magnitude pruning."""
    return names() + (gradual.NAME,)


def get(name: str) -> DynamicMethod:
    """The method registered as `name`; ValueError naming dynamic.method otherwise."""
    return _REGISTRY.get(name)


def takes_structure(name: str) -> bool:
    """Whether the method registered as `name` accepts `structure` (by name or **kwargs): only
    such a method can be asked to keep prune.structure (config validation checks first)."""
    parameters = inspect.signature(get(name)).parameters.values()
    return any(p.name == "structure" or p.kind is p.VAR_KEYWORD for p in parameters)


def cosine_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """RigL's schedule: alpha/2 * (1 + cos(pi * step / end_step)), 0 from end_step on."""
    if step >= end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end_step))


def drop_and_grow(params: PyTree, masks: PyTree, grow_scores: PyTree, drop_fraction: float, *,
                  scope: masks_lib.Scope = "conv", structure: str = "unstructured") -> PyTree:
    """In every prunable layer: drop the floor(drop_fraction x active) smallest-|w| active weights
    (RigL's code: int(n_ones * drop_fraction)), then activate as many inactive positions with
    the highest `grow_scores` (just-dropped positions may come back, as in RigL). Ties by
    position; the active count never changes.

    `structure` (sparsity.structure) is kept: block:B drops and grows whole blocks (a block's
    magnitude and score: the sums over it); N:M drops weights, then each row of M grows back
    as many as it lost, so every row keeps its N. Out-of-structure layers stay as they are."""
    shape = structure_lib.parse(structure)
    flat_params, flat_scores = jax.tree.leaves(params), jax.tree.leaves(grow_scores)

    def swap(index: int, name: str, mask: Any) -> jax.Array:
        mask = np.asarray(mask, dtype=bool)
        if not shape.applies(mask.shape):
            return jnp.asarray(mask)
        magnitude = np.abs(np.asarray(flat_params[index], np.float64))
        growth = np.asarray(flat_scores[index], np.float64)
        if shape.kind == "nm":
            return jnp.asarray(_swap_n_of_m(shape, mask, magnitude, growth, drop_fraction))
        rows = shape.groups(mask)
        alive = _swap(rows.any(axis=1), np.where(rows, shape.groups(magnitude), 0.0).sum(axis=1),
                      shape.groups(growth).sum(axis=1), drop_fraction)
        return jnp.asarray(shape.ungroup(np.repeat(alive[:, None], rows.shape[1], axis=1),
                                         mask.shape))
    return masks_lib.map_prunable(swap, masks, scope,
                                  other=lambda mask: jnp.asarray(np.asarray(mask)))


def _swap(alive: np.ndarray, magnitude: np.ndarray, growth: np.ndarray,
          fraction: float) -> np.ndarray:
    """Flat alive flags after dropping floor(fraction x active) by magnitude, growing as many."""
    alive = alive.copy()
    active = np.flatnonzero(alive)
    k = min(math.floor(fraction * active.size), active.size)
    alive[active[np.argsort(magnitude[active], kind="stable")[:k]]] = False
    inactive = np.flatnonzero(~alive)
    alive[inactive[np.argsort(-growth[inactive], kind="stable")[:k]]] = True
    return alive


def _swap_n_of_m(shape: structure_lib.Structure, mask: np.ndarray, magnitude: np.ndarray,
                 growth: np.ndarray, fraction: float) -> np.ndarray:
    """N:M drop and grow: the layer's smallest active weights go; each row regrows its losses."""
    rows = shape.groups(mask).copy()
    before = rows.sum(axis=1)
    flat = rows.reshape(-1)
    active = np.flatnonzero(flat)
    k = min(math.floor(fraction * active.size), active.size)
    flat[active[np.argsort(shape.groups(magnitude).reshape(-1)[active], kind="stable")[:k]]] = 0
    rows = flat.reshape(rows.shape)
    need = before - rows.sum(axis=1)
    order = np.argsort(-np.where(rows, -np.inf, shape.groups(growth)), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(shape.m), order.shape), axis=1)
    return shape.ungroup(rows | (~rows & (rank < need[:, None])), mask.shape)


@register("rigl")
def rigl(params: PyTree, masks: PyTree, grads: PyTree, drop_fraction: float, *,
         rng: Optional[jax.Array] = None, scope: masks_lib.Scope = "conv",
         structure: str = "unstructured") -> PyTree:
    """RigL: drop the smallest weights, grow where the dense gradient is largest."""
    return drop_and_grow(params, masks, jax.tree.map(jnp.abs, grads), drop_fraction,
                         scope=scope, structure=structure)


@register("set")
def sparse_evolutionary_training(params: PyTree, masks: PyTree, grads: PyTree,
                                 drop_fraction: float, *, rng: Optional[jax.Array] = None,
                                 scope: masks_lib.Scope = "conv",
                                 structure: str = "unstructured") -> PyTree:
    """SET: drop the smallest weights, grow at random."""
    if rng is None:
        raise ValueError("the 'set' dynamic method needs rng=jax.random.key(...)")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(rng, len(leaves))
    scores = [jax.random.uniform(key, np.shape(leaf)) for key, leaf in zip(keys, leaves)]
    return drop_and_grow(params, masks, jax.tree.unflatten(treedef, scores), drop_fraction,
                         scope=scope, structure=structure)


class MaskSchedule(Protocol):
    """What the trainer's mask-update callback needs of a schedule (MaskUpdate, GradualPruning):
    `due(step)`, `new_masks(step, params, masks, grads)`, and whether those need the dense
    gradient (`needs_grads`; else grads is None)."""

    method: str
    delta_t: int
    end_step: int
    scope: masks_lib.Scope
    needs_grads: bool

    def due(self, step: int) -> bool:
        """Whether the masks change before global step `step`."""

    def new_masks(self, step: int, params: PyTree, masks: PyTree,
                  grads: Optional[PyTree]) -> PyTree:
        """The masks after the update at `step`."""


@dataclasses.dataclass(frozen=True)
class MaskUpdate:
    """When and how a training run updates its masks (the trainer calls `due` and `new_masks`)."""

    method: str
    delta_t: int
    alpha: float
    end_step: int
    seed: int = 0
    scope: masks_lib.Scope = "conv"
    structure: str = "unstructured"
    needs_grads: ClassVar[bool] = True  # registered methods get the dense gradient

    def due(self, step: int) -> bool:
        """Whether the masks change before global step `step`."""
        return 0 < step < self.end_step and step % self.delta_t == 0

    def new_masks(self, step: int, params: PyTree, masks: PyTree, grads: PyTree) -> PyTree:
        """The masks after the update at `step` (drop fraction on its cosine schedule)."""
        rng = jax.random.fold_in(jax.random.key(self.seed), step)
        # A structure goes only to methods asked to keep one (config validation checks).
        extra = {} if self.structure == "unstructured" else {"structure": self.structure}
        return get(self.method)(params, masks, grads,
                                cosine_drop_fraction(step, self.alpha, self.end_step),
                                rng=rng, scope=self.scope, **extra)


def reset_grown(optimizer: optax.GradientTransformation, opt_state: PyTree, params: PyTree,
                old_masks: PyTree, new_masks: PyTree) -> tuple[PyTree, PyTree]:
    """(params, opt_state) after a mask update: dropped weights 0.0, grown weights 0.0 with their
    optimizer state (momentum) reset to 0."""
    changed = jax.tree.map(lambda old, new: jnp.logical_xor(old, new), old_masks, new_masks)
    params = masks_lib.apply(params, new_masks)
    opt_state = optax.tree_utils.tree_map_params(
        optimizer, lambda s, c: jnp.where(c, jnp.zeros((), s.dtype), s), opt_state, changed,
        transform_non_params=lambda s: s)
    return params, opt_state
