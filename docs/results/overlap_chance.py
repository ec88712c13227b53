"""The cross-seed mask overlap of docs/results.md against chance with matched per-layer densities.

    python docs/results/overlap_chance.py

The measured Jaccard overlaps come from overlap_measured.json (the report's overlap matrix,
computed from the tickets' snapshots while they existed). Chance is the overlap that two random
masks with the same per-layer densities as the two tickets would have in expectation
(analysis.overlap.matched_random_jaccard), from the layer counts in each seed's results.jsonl;
the uniform figure (random masks of the same global density) is printed beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.analysis import overlap  # noqa: E402

from lottery_kd.study import results

ROOT = Path(__file__).resolve().parent / "cpu_resnet20_15ep"


def _counts(seed: int, level: int) -> dict:
    rows = results.read_rows(ROOT / f"resnet20_15ep_seed{seed}" / "results.jsonl")
    row = next(r for r in rows if r["level"] == level and r["variant"] == "lt")
    return row["layer_counts"]


def main() -> None:
    measured = json.loads((ROOT / "overlap_measured.json").read_text())
    index = {name: i for i, name in enumerate(measured["names"])}
    print("| pair | sparsity % | measured Jaccard | chance, matched layers | chance, uniform |")
    print("|---|---|---|---|---|")
    pairs = (("s0 L2 (all 6)", "s1 L2 (all 6)", 2), ("s0 L3 (all 6)", "s1 L3 (all 6)", 3),
             ("s0 L1 (all 6)", "s0 L2 (all 6)", None), ("s0 L2 (all 6)", "s0 L3 (all 6)", None))
    for a, b, level in pairs:
        value = measured["global"][index[a]][index[b]]
        if level is None:  # nested masks of one seed: the sparser lies inside the denser
            print(f"| {a} vs {b} | nested | {value:.3f} | | |")
            continue
        counts_a, counts_b = _counts(0, level), _counts(1, level)
        density = sum(r for r, _ in counts_a.values()) / sum(t for _, t in counts_a.values())
        print(f"| {a} vs {b} | {100 * (1 - density):.2f} | {value:.3f} | "
              f"{overlap.matched_random_jaccard(counts_a, counts_b):.3f} | "
              f"{overlap.random_jaccard(density, density):.3f} |")


if __name__ == "__main__":
    main()
