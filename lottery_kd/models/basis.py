"""Lottery tickets in another basis (the generalized lottery ticket hypothesis).

`BasisModel` wraps any registered model so that its trainable parameters are the coefficients of
every convolution kernel in an orthonormal basis over the kernel's input and spatial dimensions
(kh, kw, c_in), one column per output filter:

    weights = inverse_transform(coefficients)      (applied inside every forward pass)

Masks, magnitude pruning, IMP, rewinding and KD then act on the coefficients with no change
anywhere else; a pruned coefficient is exactly 0.0, and the network's kernel is exactly the
inverse transform of the masked coefficients. Bases:

- `dct`: the orthonormal DCT-II along each of kh, kw and c_in (separable);
- `random`: a seeded random orthogonal matrix over the flattened kh * kw * c_in inputs.

Initialisation is unchanged as a function: the coefficients are the transform of the base
model's initial kernels, so the wrapped network starts as the same function.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
BASES: tuple[str, ...] = ("dct", "random")


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: row k is the k-th basis vector (D @ D.T = I)."""
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


@functools.lru_cache(maxsize=None)
def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A seeded random orthogonal n x n matrix (QR of a Gaussian, signs fixed: Haar measure)."""
    gaussian = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(gaussian)
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _is_basis_kernel(path: tuple, leaf: Any) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return name == "kernel" and np.ndim(leaf) == 4


def transform(kernel: jax.Array, basis: str, seed: int, inverse: bool = False) -> jax.Array:
    """Coefficients of a [kh, kw, c_in, c_out] kernel in `basis` (or, with `inverse`, the kernel
    of such coefficients), in the kernel's dtype (bfloat16 coefficients: the float32 transform
    rounded to bfloat16, as train.precision=bfloat16 computes)."""
    kh, kw, c_in, c_out = kernel.shape
    if basis == "dct":
        out = kernel
        for axis, size in enumerate((kh, kw, c_in)):
            matrix = jnp.asarray(dct_matrix(size))
            matrix = matrix.T if inverse else matrix
            out = jnp.moveaxis(jnp.tensordot(matrix, out, axes=([1], [axis])), 0, axis)
        return out.astype(kernel.dtype)  # a no-op on float32
    if basis == "random":
        matrix = jnp.asarray(random_orthogonal(kh * kw * c_in, seed))
        flat = kernel.reshape(kh * kw * c_in, c_out)
        out = matrix @ flat if inverse else matrix.T @ flat
        return out.reshape(kernel.shape).astype(kernel.dtype)
    raise ValueError(f"model.basis: unknown basis {basis!r}; allowed: {', '.join(BASES)}")


def _layer_seed(seed: int, path: tuple) -> int:
    return (seed * 1_000_003 + zlib.crc32(jax.tree_util.keystr(path).encode())) % 2**31


def map_kernels(params: PyTree, basis: str, seed: int, inverse: bool) -> PyTree:
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: transform(leaf, basis, _layer_seed(seed, path), inverse)
        if _is_basis_kernel(path, leaf) else leaf, params)


@dataclasses.dataclass(frozen=True)
class BasisModel:
    """A model whose conv kernels are trained as coefficients in `basis` (init/apply as linen)."""

    base: Any
    basis: str
    seed: int = 0

    def __post_init__(self):
        if self.basis not in BASES:
            raise ValueError(f"model.basis: unknown basis {self.basis!r}; allowed: "
                             f"{', '.join(BASES)} (or '' for the standard basis)")

    def init(self, rng: jax.Array, *args: Any, **kwargs: Any) -> PyTree:
        variables = dict(self.base.init(rng, *args, **kwargs))
        variables["params"] = self.to_coefficients(variables["params"])
        return variables

    def apply(self, variables: PyTree, *args: Any, **kwargs: Any) -> Any:
        weights = self.to_weights(variables["params"])
        return self.base.apply({**variables, "params": weights}, *args, **kwargs)

    def to_coefficients(self, params: PyTree) -> PyTree:
        return map_kernels(params, self.basis, self.seed, inverse=False)

    def to_weights(self, coefficients: PyTree) -> PyTree:
        """The kernels the network computes with: the inverse transform of `coefficients`."""
        return map_kernels(coefficients, self.basis, self.seed, inverse=True)
