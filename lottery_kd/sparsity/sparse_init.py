"""Sparse-aware initialisation (Evci et al. 2022, "Gradient Flow in Sparse Neural Networks and
How Lottery Tickets Win").

A dense He initialisation scales every weight by the layer's full fan-in; in a sparse layer each
output unit sees only its unmasked inputs, so its pre-activations start too small and the gradient
flow is weak. Here each output unit's incoming weights are drawn from N(0, 2 / fan_in_unit), with
fan_in_unit the number of its unmasked incoming connections (units with none stay at zero).
The models' dense initialisation is He with fan-out (models.layers), so at density 1 this is
not the dense init wherever a layer's fan-in and fan-out differ (the stem: std 0.27 against
0.12); a comparison with `reinit` changes the fan mode as well as the sparse-awareness.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.sparsity import masks as masks_lib

PyTree = Any


def sparse_fan_in(mask: np.ndarray) -> np.ndarray:
    """Unmasked incoming connections of every output unit (the last axis of a kernel)."""
    mask = np.asarray(mask)
    return mask.reshape(-1, mask.shape[-1]).sum(axis=0)


def sparse_aware_init(params: PyTree, masks: PyTree, rng: jax.Array, *,
                      scope: masks_lib.Scope = "conv", gain: float = math.sqrt(2.0)) -> PyTree:
    """`params` with every prunable kernel redrawn as N(0, gain^2 / fan_in_unit) per output unit
    and masked; other leaves (BatchNorm, biases, out-of-scope kernels) unchanged."""
    mask_leaves = jax.tree.leaves(masks)
    keys = jax.random.split(rng, len(mask_leaves))

    def redraw(index: int, name: str, weight: Any) -> jax.Array:
        mask = mask_leaves[index]
        fan_in = sparse_fan_in(mask)
        std = np.where(fan_in > 0, gain / np.sqrt(np.maximum(fan_in, 1)), 0.0).astype(np.float32)
        drawn = jax.random.normal(keys[index], np.shape(weight), jnp.asarray(weight).dtype) * std
        return jnp.where(jnp.asarray(mask), drawn, 0.0).astype(jnp.asarray(weight).dtype)
    return masks_lib.map_prunable(redraw, params, scope)
