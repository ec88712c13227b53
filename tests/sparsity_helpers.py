"""Hand-made parameter trees and numpy views of masks for test_masks and test_pruning_*."""

import jax
import jax.numpy as jnp
import numpy as np


def ceil_frac(numerator: int, denominator: int, remaining: int) -> int:
    """ceil(numerator / denominator * remaining) in exact integer arithmetic."""
    return -(-numerator * remaining // denominator)


def flat_named(tree) -> dict[str, np.ndarray]:
    """{'a/b/kernel': numpy array} in tree order (dicts flatten by sorted key)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(k.key) for k in path)
        out[name] = np.asarray(leaf)
    return out


def small_params(seed: int = 0, distinct: bool = True) -> dict:
    """A hand-made params tree: two conv layers (4-D kernels), a dense layer, a BatchNorm.

    With distinct=True all |w| are distinct (a shuffled arithmetic progression with random signs),
    so the magnitude order is unambiguous.
    """
    rng = np.random.default_rng(seed)
    shapes = {
        "conv_a/kernel": (3, 3, 2, 4),   # 72  prunable (conv)
        "conv_b/kernel": (1, 1, 4, 5),   # 20  prunable (conv)
        "conv_b/bias": (5,),
        "dense/kernel": (5, 3),          # 15  prunable only under conv_fc
        "dense/bias": (3,),
        "norm/scale": (5,),
        "norm/bias": (5,),
    }
    total = sum(int(np.prod(s)) for s in shapes.values())
    magnitudes = (np.arange(total) + 1.0) / total if distinct else np.ones(total)
    magnitudes = rng.permutation(magnitudes)
    signs = rng.choice([-1.0, 1.0], size=total)
    values = (magnitudes * signs).astype(np.float32)
    tree: dict = {}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        layer, leaf = name.split("/")
        tree.setdefault(layer, {})[leaf] = jnp.asarray(values[offset:offset + size].reshape(shape))
        offset += size
    return tree


CONV_LEAVES = ["conv_a/kernel", "conv_b/kernel"]


CONV_FC_LEAVES = ["conv_a/kernel", "conv_b/kernel", "dense/kernel"]


def in_scope_vectors(params, mask, names):
    flat_p, flat_m = flat_named(params), flat_named(mask)
    w = np.concatenate([flat_p[n].reshape(-1).astype(np.float64) for n in names])
    alive = np.concatenate([flat_m[n].reshape(-1) for n in names])
    return w, alive
