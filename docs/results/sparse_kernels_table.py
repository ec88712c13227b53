"""The table of docs/results/sparse_kernels_shrunk.sh: each ticket's end-of-training test accuracy
(%) on the dense kernels and on the sparse kernels, per seed, and whether every pruned weight of
every final snapshot is exactly 0.0.

    python docs/results/sparse_kernels_table.py [runs/sparse_kernels_shrunk]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.study.study import Study  # noqa: E402
from lottery_kd.study.results import read_rows  # noqa: E402


def pruned_nonzero(workdir: Path, tag: str) -> int:
    """How many pruned weights of snapshot `tag` are not exactly 0.0."""
    study = Study.from_workdir(workdir, log=lambda *_: None)
    snap = study.load_existing(tag, "snapshot")
    import jax
    return sum(int(np.count_nonzero(np.asarray(p)[~np.asarray(m)]))
               for p, m in zip(jax.tree.leaves(snap["params"]), jax.tree.leaves(snap["masks"])))


def main(root: str = "runs/sparse_kernels_shrunk") -> None:
    print("| seed | run | native (dense kernels) | sparse kernels | pruned weights != 0 |")
    print("| --- | --- | --- | --- | --- |")
    for seed in (0, 1):
        rows = {}
        for impl in ("native", "sparse"):
            path = Path(root) / f"{impl}_seed{seed}"
            if (path / "results.jsonl").exists():
                for row in read_rows(path / "results.jsonl"):
                    rows[(impl, row["variant"])] = row
        for variant in ("dense", "lt", "kd"):
            cells = [f"{100 * rows[(i, variant)]['test_accuracy']:.2f}"
                     if (i, variant) in rows else "not run yet" for i in ("native", "sparse")]
            zeros = "-"
            if variant != "dense" and ("sparse", variant) in rows:
                tag = f"level_{rows[('sparse', variant)]['level']}_{variant}"
                zeros = str(pruned_nonzero(Path(root) / f"sparse_seed{seed}", tag))
            print(f"| {seed} | {variant} | {cells[0]} | {cells[1]} | {zeros} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
