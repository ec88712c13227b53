"""Structured sparsity: which weights of a kernel are kept or pruned together (prune.structure).

- `unstructured`: every weight on its own (the default).
- `N:M`, e.g. `2:4`: at each kernel position and output channel, N of every M consecutive input
  channels are kept: the layout of the reduction dimension that 2:4 sparse tensor cores run. It
  fixes every layer's sparsity at 1 - N/M.
- `block:B`, e.g. `block:16`: B consecutive output channels at one kernel position and input
  channel are kept or pruned together; B=16 is one vector of the native CPU kernels, which skip
  whole zero vectors. A block's score is the sum of its weights' scores.

Kernels are HWIO (convolutions) or (in, out) (dense layers): the input axis is -2, the output
axis -1. A layer whose input (N:M) or output (block) channels are not a multiple of M or B is out
of structure: it stays as it is (dense, for the 3-channel stem under 2:4), and block:B takes its
fraction of the layers that fit only, so the network ends less sparse than the fraction.
`groups` views a layer as rows of weights that belong together.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

UNSTRUCTURED = "unstructured"
_NM = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")
_BLOCK = re.compile(r"^block:([1-9][0-9]*)$")
FORMS = ("unstructured", "N:M (e.g. 2:4)", "block:B (e.g. block:16)")


@dataclasses.dataclass(frozen=True)
class Structure:
    """A parsed prune.structure: kind 'unstructured' | 'nm' | 'block', with N, M or B."""

    kind: str
    n: int = 1
    m: int = 1

    @property
    def text(self) -> str:
        """The setting's spelling: 'unstructured', '2:4', 'block:16'."""
        return {"unstructured": UNSTRUCTURED, "nm": f"{self.n}:{self.m}",
                "block": f"block:{self.m}"}[self.kind]

    @property
    def fixed_sparsity(self) -> float | None:
        """1 - N/M for N:M (every structured layer's sparsity); None otherwise."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def applies(self, shape: Sequence[int]) -> bool:
        """Whether a kernel of `shape` follows the structure (else it stays as it is)."""
        if self.kind == "unstructured":
            return True
        if len(shape) < 2:
            return False
        return shape[-2 if self.kind == "nm" else -1] % self.m == 0

    def groups(self, array: np.ndarray) -> np.ndarray:
        """`array` (a kernel's shape) as rows of M (N:M) or B (block) weights that belong
        together; unstructured: one weight per row."""
        array = np.asarray(array)
        if self.kind == "nm":
            return np.swapaxes(array, -1, -2).reshape(-1, self.m)
        return array.reshape(-1, 1 if self.kind == "unstructured" else self.m)

    def ungroup(self, rows: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The inverse of `groups`: rows back to a kernel of `shape`."""
        if self.kind == "nm":
            swapped = (*shape[:-2], shape[-1], shape[-2])
            return np.swapaxes(np.asarray(rows).reshape(swapped), -1, -2)
        return np.asarray(rows).reshape(tuple(shape))

    def group_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The kernel's shape counted in blocks (block:B divides the output axis by B)."""
        if self.kind == "block":
            return (*shape[:-1], shape[-1] // self.m)
        return tuple(shape)


def parse(text: str) -> Structure:
    """The Structure of a prune.structure value; ValueError naming the setting otherwise."""
    text = str(text).strip()
    if text == UNSTRUCTURED:
        return Structure("unstructured")
    nm = _NM.match(text)
    if nm and int(nm.group(1)) < int(nm.group(2)):
        return Structure("nm", int(nm.group(1)), int(nm.group(2)))
    block = _BLOCK.match(text)
    if block and int(block.group(1)) > 1:
        return Structure("block", 1, int(block.group(1)))
    raise ValueError(f"prune.structure: {text!r} is not a structure; use one of: "
                     f"{', '.join(FORMS)} (N < M, B > 1)")


def violations(structure: Structure, mask: np.ndarray) -> int:
    """How many groups of a kernel's mask break the structure: N:M rows with more than N kept;
    block rows neither all kept nor all pruned. 0 for unstructured or an out-of-structure shape."""
    mask = np.asarray(mask, dtype=bool)
    if structure.kind == "unstructured" or not structure.applies(mask.shape):
        return 0
    rows = structure.groups(mask)
    kept = rows.sum(axis=1)
    if structure.kind == "nm":
        return int(np.count_nonzero(kept > structure.n))
    return int(np.count_nonzero((kept > 0) & (kept < structure.m)))


def keep_top_n(structure: Structure, scores: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """N:M: in every row of M, the N highest-scoring alive weights stay (fewer if fewer are
    alive; ties: the lower input channel). Returns the new alive mask in the kernel's shape."""
    rows_alive = structure.groups(np.asarray(alive, dtype=bool))
    rows_scores = np.where(rows_alive, structure.groups(np.asarray(scores, np.float64)), -np.inf)
    order = np.argsort(-rows_scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(structure.m)[None, :].repeat(len(order), 0), 1)
    return structure.ungroup(rows_alive & (rank < structure.n), np.shape(alive))


def out_of_structure(shape: Structure, kernels: Sequence[tuple[str, Sequence[int]]]
                     ) -> list[str]:
    """The names of the in-scope `kernels` ((name, shape) pairs) that `shape` does not apply to
    and that stay as they are. ValueError, naming the channel counts, where it applies to none:
    the pruning would then remove nothing, and every ticket would be its dense network."""
    outside = [name for name, kernel in kernels if not shape.applies(kernel)]
    if kernels and len(outside) == len(kernels):
        axis = "input" if shape.kind == "nm" else "output"
        counts = sorted({int(kernel[-2 if shape.kind == "nm" else -1]) for _, kernel in kernels
                         if len(kernel) >= 2})
        raise ValueError(f"{shape.text} fits none of the {len(kernels)} layers in scope: their "
                         f"{axis} channels ({', '.join(map(str, counts))}) are not multiples of "
                         f"{shape.m}, so nothing would be pruned; choose a size that divides "
                         "them, or unstructured")
    return outside
