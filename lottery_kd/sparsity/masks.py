"""Mask pytrees: boolean trees with the structure of the params they prune.

A mask tree has the structure of `params`; every leaf is a boolean array of its parameter's shape.
Prunable leaves (chosen by a named scope or a predicate on the path) carry the pattern; all other
leaves are all-true, so there are no `None` leaves and `jax.tree.map(f, params, masks)` always
lines up. BatchNorm parameters and biases are never prunable.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
# A predicate gets the parameter's path ("stage1_block1/conv1/kernel") and its shape.
ScopePredicate = Callable[[str, tuple], bool]
Scope = Union[str, ScopePredicate]
SCOPES: tuple[str, ...] = ("conv", "conv_no_shortcut", "conv_fc", "vit_matmul")
# Module names whose 2-D kernels are a transformer's matmul weights (scope `vit_matmul`).
VIT_MATMUL_MODULES: tuple[str, ...] = ("attn", "mlp")


def path_name(path: tuple) -> str:
    """'a/b/kernel' for a jax tree path."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def check_scope(scope: Scope) -> None:
    """Raise a ValueError naming the allowed scopes for an unknown one."""
    if not callable(scope) and scope not in SCOPES:
        raise ValueError(f"prune.scope: unknown scope {scope!r}; allowed: {', '.join(SCOPES)} "
                         "or a predicate (path, shape) -> bool")


def is_prunable(name: str, shape: tuple, scope: Scope = "conv") -> bool:
    """Whether the parameter `name` with `shape` is in `scope`.

    `conv`: every convolution kernel (4-D `kernel`: stem, blocks and 1x1 shortcuts; the
    KD-ticket release). `conv_no_shortcut`: the same without the projection shortcuts (modules
    named `shortcut*`; Renda et al.'s code prunes only tensors named conv*). `conv_fc`: every
    convolution kernel plus dense kernels (2-D `kernel`; open_lth). `vit_matmul`: the 2-D
    kernels of modules inside an `attn` or `mlp` module (a ViT's query/key/value/out and MLP
    weights; models.vit): not the patch embedding, position embeddings, LayerNorms or head.
    Biases, BatchNorm and LayerNorm scales/offsets: never.
    """
    check_scope(scope)
    leaf_name = name.rsplit("/", 1)[-1]
    if leaf_name != "kernel":
        return False
    if callable(scope):
        return bool(scope(name, tuple(shape)))
    if scope == "vit_matmul":
        return len(shape) == 2 and any(part in VIT_MATMUL_MODULES
                                       for part in name.split("/")[:-1])
    if scope == "conv_no_shortcut":
        return len(shape) == 4 and not any(part.startswith("shortcut")
                                           for part in name.split("/")[:-1])
    return len(shape) == 4 or (scope == "conv_fc" and len(shape) == 2)


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """(path name, leaf) of every leaf of a params or masks tree, in tree order."""
    return [(path_name(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def prunable_indices(tree: PyTree, scope: Scope = "conv") -> list[int]:
    """Positions (in tree order) of the leaves of `tree` in `scope`."""
    check_scope(scope)
    return [i for i, (name, leaf) in enumerate(named_leaves(tree))
            if is_prunable(name, np.shape(leaf), scope)]


def prunable_names(tree: PyTree, scope: Scope = "conv") -> list[str]:
    """Paths of the prunable leaves of a params (or masks) tree, in tree order."""
    return [name for name, leaf in named_leaves(tree) if is_prunable(name, np.shape(leaf), scope)]


def map_prunable(fn: Callable[[int, str, Any], Any], tree: PyTree, scope: Scope = "conv", *,
                 other: Callable[[Any], Any] = lambda leaf: leaf) -> PyTree:
    """`tree` with each leaf in `scope` replaced by fn(position, path name, leaf) and every other
    leaf by other(leaf): the loop over prunable layers that masking functions, dynamic updates
    and sparse initialisation share (position: the leaf's index in tree order)."""
    check_scope(scope)
    leaves = [fn(i, name, leaf) if is_prunable(name, np.shape(leaf), scope) else other(leaf)
              for i, (name, leaf) in enumerate(named_leaves(tree))]
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def create(params: PyTree, scope: Scope = "conv") -> PyTree:
    """An all-true mask tree for `params` (nothing pruned yet)."""
    check_scope(scope)
    return jax.tree.map(lambda p: jnp.ones(np.shape(p), dtype=bool), params)


def apply(params: PyTree, masks: PyTree) -> PyTree:
    """params with pruned entries set to exactly 0.0 (gradients of pruned entries are zero)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros((), p.dtype)), params, masks)


def layer_counts(masks: PyTree, scope: Scope = "conv") -> dict[str, tuple[int, int]]:
    """{path: (remaining, total)} for every prunable leaf."""
    return {name: (int(np.count_nonzero(np.asarray(leaf))), int(np.size(leaf)))
            for name, leaf in named_leaves(masks) if is_prunable(name, np.shape(leaf), scope)}


def count(masks: PyTree, scope: Scope = "conv") -> tuple[int, int]:
    """(remaining, total) prunable weights."""
    per_layer = layer_counts(masks, scope).values()
    return sum(r for r, _ in per_layer), sum(t for _, t in per_layer)


def sparsity(masks: PyTree, scope: Scope = "conv") -> float:
    """Fraction of prunable weights that are pruned (0.0 for a dense network)."""
    remaining, total = count(masks, scope)
    return 1.0 - remaining / total if total else 0.0


def validate(masks: PyTree, params: PyTree, scope: Scope = "conv") -> None:
    """Raise ValueError unless `masks` is a valid mask tree for `params` under `scope`."""
    mask_struct, param_struct = jax.tree.structure(masks), jax.tree.structure(params)
    if mask_struct != param_struct:
        raise ValueError(f"mask tree structure {mask_struct} does not match params {param_struct}")
    for (name, mask), param in zip(named_leaves(masks), jax.tree.leaves(params)):
        if np.shape(mask) != np.shape(param):
            raise ValueError(f"mask {name} has shape {np.shape(mask)}, params {np.shape(param)}")
        if np.asarray(mask).dtype != np.bool_:
            raise ValueError(f"mask {name} has dtype {np.asarray(mask).dtype}, expected bool")
        if not is_prunable(name, np.shape(param), scope) and not np.all(np.asarray(mask)):
            raise ValueError(f"mask {name} prunes an out-of-scope leaf (scope {scope!r})")
