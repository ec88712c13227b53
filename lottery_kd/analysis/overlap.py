"""Ticket comparison: how much two masks agree (Jaccard overlap, per layer and global).

Jaccard(a, b) = |a and b| / |a or b| over the prunable weights that the masks keep: 1.0 for the
same ticket, about density / (2 - density) for two independent uniform random masks of one
density, and sum_l n_l a_l b_l / sum_l n_l (a_l + b_l - a_l b_l) for random masks with the two
tickets' per-layer densities a_l, b_l (the fair chance level for tickets). Use it to ask, for
instance, how much the KD chain's tickets share with the weight-rewinding chain's.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from lottery_kd.analysis import plotting
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study.checkpoints import read_snapshot
from lottery_kd.study.workdir import Workdir

PyTree = Any


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a and b| / |a or b| of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def mask_overlap(masks_a: PyTree, masks_b: PyTree, scope: masks_lib.Scope = "conv") -> dict:
    """{"global": J, "layers": {path: J}} over the in-scope leaves of two mask trees."""
    named_a = {name: np.asarray(m) for name, m in masks_lib.named_leaves(masks_a)}
    named_b = {name: np.asarray(m) for name, m in masks_lib.named_leaves(masks_b)}
    if named_a.keys() != named_b.keys() or any(named_a[k].shape != named_b[k].shape
                                               for k in named_a):
        raise ValueError("the two masks come from different architectures")
    layers = [k for k in named_a if masks_lib.is_prunable(k, named_a[k].shape, scope)]
    return {"global": jaccard(np.concatenate([named_a[k].ravel() for k in layers]),
                              np.concatenate([named_b[k].ravel() for k in layers])),
            "layers": {k: jaccard(named_a[k], named_b[k]) for k in layers}}


def tickets_of(run_dir: str | os.PathLike) -> dict[str, PyTree]:
    """{"variant@level": masks} of every pruned ticket's final snapshot in a run directory."""
    snapshots = Workdir(run_dir).snapshots
    out = {}
    if not snapshots.is_dir():
        return out
    for path in sorted(snapshots.iterdir()):
        parts = path.name.split("_", 2)
        if len(parts) == 3 and parts[0] == "level" and parts[1].isdigit() and parts[1] != "0":
            try:
                out[f"{parts[2]}@L{parts[1]}"] = read_snapshot(path)["masks"]
            except Exception:  # an unfinished or damaged snapshot is not a ticket
                continue
    return dict(sorted(out.items(), key=lambda item: (int(item[0].rsplit("@L", 1)[1]),
                                                      item[0])))


def _prunable_leaves(masks: PyTree, scope: masks_lib.Scope) -> list[np.ndarray]:
    leaves = [np.asarray(m, bool) for m in jax.tree.leaves(masks)]
    return [leaves[i] for i in masks_lib.prunable_indices(masks, scope)]


def density(masks: PyTree, scope: masks_lib.Scope = "conv") -> float:
    """The fraction of the in-scope weights that a mask keeps."""
    remaining, total = masks_lib.count(masks, scope)
    return remaining / total if total else 1.0


def random_jaccard(density_a: float, density_b: float) -> float:
    """The expected Jaccard overlap of two independent random masks of these densities."""
    union = density_a + density_b - density_a * density_b
    return density_a * density_b / union if union else 1.0


def matched_random_jaccard(counts_a: dict[str, tuple[int, int]],
                           counts_b: dict[str, tuple[int, int]]) -> float:
    """The expected Jaccard overlap of two independent random masks with the per-layer densities
    of masks a and b, from their {layer: (remaining, total)} counts (masks.layer_counts):
    sum_l n_l a_l b_l / sum_l n_l (a_l + b_l - a_l b_l), expected intersection over expected
    union. The chance level for magnitude tickets, whose layers keep very different fractions:
    random_jaccard of the global densities is the special case of a single layer."""
    if counts_a.keys() != counts_b.keys() or any(counts_a[k][1] != counts_b[k][1]
                                                 for k in counts_a):
        raise ValueError("the two masks come from different architectures")
    intersection = union = 0.0
    for layer, (remaining_a, total) in counts_a.items():
        remaining_b = counts_b[layer][0]
        both = remaining_a * remaining_b / total if total else 0.0
        intersection += both
        union += remaining_a + remaining_b - both
    return intersection / union if union else 1.0


def merge_identical(tickets: dict[str, PyTree],
                    scope: masks_lib.Scope = "conv") -> tuple[dict[str, PyTree],
                                                             dict[str, list[str]]]:
    """Merge tickets whose masks are bit-identical: ({label: masks}, {label: [names]}).

    One-shot pruning gives every variant of a level the same mask, so a matrix over all of them
    repeats one row per variant. A merged label is "L2 (all 6)" when it covers every ticket of
    a level, else its first name with "+k" for the k others; the names keep their prefix.
    """
    groups: dict[bytes, list[str]] = {}
    for name, masks in tickets.items():
        key = b"".join(np.packbits(m).tobytes() + str(m.shape).encode()
                       for m in _prunable_leaves(masks, scope))
        groups.setdefault(key, []).append(name)

    def prefix_and_level(name: str) -> str:  # "s0 kd@L2" -> "s0 L2"
        prefix = name.split(" ", 1)[0] + " " if " " in name else ""
        return prefix + name.rsplit("@", 1)[-1]

    per_level: dict[str, int] = {}
    for name in tickets:
        per_level[prefix_and_level(name)] = per_level.get(prefix_and_level(name), 0) + 1
    merged, members = {}, {}
    for names in groups.values():
        first, label = names[0], names[0]
        if len(names) > 1:
            levels = {prefix_and_level(n) for n in names}
            level = next(iter(levels))
            label = (f"{level} (all {len(names)})"
                     if len(levels) == 1 and per_level[level] == len(names)
                     else f"{first} +{len(names) - 1}")
        merged[label] = tickets[first]
        members[label] = names
    return merged, members


def overlap_matrix(tickets: dict[str, PyTree], scope: masks_lib.Scope = "conv") -> dict:
    """{"names": [...], "global": [[J]], "layers": {pair: {layer: J}}} for every pair, with the
    chance levels: "random" for random masks of the two tickets' per-layer densities,
    "random_uniform" for uniform random masks of their global densities."""
    names = list(tickets)
    matrix = [[1.0] * len(names) for _ in names]
    layers = {}
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            result = mask_overlap(tickets[a], tickets[names[j]], scope)
            matrix[i][j] = matrix[j][i] = result["global"]
            layers[f"{a} vs {names[j]}"] = result["layers"]
    densities = [density(tickets[name], scope) for name in names]
    counts = [masks_lib.layer_counts(tickets[name], scope) for name in names]
    random = [[matched_random_jaccard(a, b) for b in counts] for a in counts]
    uniform = [[random_jaccard(a, b) for b in densities] for a in densities]
    return {"names": names, "global": matrix, "layers": layers, "densities": densities,
            "random": random, "random_uniform": uniform}


def labels(matrix: dict) -> list[str]:
    """Each ticket's name with its sparsity ("s0 L2 (all 6), 83.2 %"): a level number alone
    makes the reader look the sparsity up."""
    densities = matrix.get("densities") or [None] * len(matrix["names"])
    return [name if d is None else f"{name}, {100 * (1 - d):.1f} %"
            for name, d in zip(matrix["names"], densities)]


def markdown(matrix: dict) -> str:
    """The global overlap matrix as a markdown table."""
    names = labels(matrix)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, matrix["global"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def plot_heatmap(matrix: dict, title: str, path: str | os.PathLike) -> None:
    """The global overlap matrix as an annotated heat map (PNG); off the diagonal, with up to 12
    tickets, each cell also gives in brackets the chance level of its pair (matrix["random"])."""
    names = labels(matrix)
    size = max(4.5, 0.55 * len(names) + 2)
    chance = matrix.get("random") if len(names) <= 12 else None
    # tight_bbox: nothing clipped, long names and the colour bar included
    with plotting.figure(path, figsize=(size, size * 0.85), tight_bbox=True) as (figure, axes):
        image = axes.imshow(np.asarray(matrix["global"]), vmin=0, vmax=1, cmap="viridis")
        axes.set_xticks(range(len(names)))
        axes.set_yticks(range(len(names)))
        axes.set_xticklabels(names, rotation=90, fontsize=7)
        axes.set_yticklabels(names, fontsize=7)
        for i, row in enumerate(matrix["global"]):
            for j, value in enumerate(row):
                text = f"{value:.2f}" + (f"\n({chance[i][j]:.2f})" if chance and i != j else "")
                axes.text(j, i, text, ha="center", va="center", fontsize=6,
                          color="white" if value < 0.6 else "black")
        figure.colorbar(image, ax=axes, label="Jaccard overlap (kept conv weights)")
        axes.set_title(title + ("\nin brackets: chance, for random masks\nof the same per-layer "
                                "densities" if chance else ""), fontsize=9 if chance else 10)
