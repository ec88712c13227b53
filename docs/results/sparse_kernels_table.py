"""The table of docs/results/sparse_kernels_shrunk.sh: each ticket's end-of-training test accuracy
(%) on the dense kernels and on the sparse kernels, per seed, and whether every pruned weight of
every final snapshot is exactly 0.0; then each run's paired difference over the seeds; then the
density of each stage's kernels in those tickets
(global magnitude pruning leaves the early, narrow stages far denser than the average, and a layer
above the kernels' crossover runs dense).

    python docs/results/sparse_kernels_table.py [runs/sparse_kernels_shrunk]
    python docs/results/sparse_kernels_table.py docs/results/sparse_kernels_shrunk_avx2

A workdir without its snapshots (the committed copy under docs/results/ keeps the rows, configs
and start records only) prints "not checked: no snapshots" in the last column instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.study.study import Study  # noqa: E402
from lottery_kd.study.results import read_rows_or_warn as read_rows  # noqa: E402
from lottery_kd.study.workdir import Workdir  # noqa: E402

NOT_CHECKED = "not checked: no snapshots"


def pruned_nonzero(workdir: Path, tag: str) -> int | str:
    """How many pruned weights of snapshot `tag` are not exactly 0.0, or NOT_CHECKED where the
    workdir has no such snapshot."""
    if not Workdir(workdir).snapshot(tag).is_dir():
        return NOT_CHECKED
    study = Study.from_workdir(workdir, log=lambda *_: None)
    snap = study.load_existing(tag, "snapshot")
    import jax
    return sum(int(np.count_nonzero(np.asarray(p)[~np.asarray(m)]))
               for p, m in zip(jax.tree.leaves(snap["params"]), jax.tree.leaves(snap["masks"])))


def stage_of(kernel: str) -> str:
    """'stem', 'stage1' .. 'stage3' or 'shortcuts' for a layer_counts name."""
    if "shortcut" in kernel:
        return "shortcuts"
    return kernel.split("_")[0] if kernel.startswith("stage") else "stem"


def stage_densities(row: dict) -> dict[str, float]:
    """Remaining / all weights of each stage's kernels in one results row."""
    kept: dict[str, list[int]] = {}
    for name, (remaining, total) in row["layer_counts"].items():
        counts = kept.setdefault(stage_of(name), [0, 0])
        counts[0] += remaining
        counts[1] += total
    return {stage: remaining / total for stage, (remaining, total) in sorted(kept.items())}


def print_stage_densities(root: str) -> None:
    rows = [(path.parent.name, row) for path in sorted(Path(root).glob("*/results.jsonl"))
            for row in read_rows(path) if row["variant"] != "dense"]
    if not rows:
        return
    stages = list(stage_densities(rows[0][1]))
    print("\n| workdir | ticket | overall | " + " | ".join(stages) + " |")
    print("|" + " --- |" * (len(stages) + 3))
    for workdir, row in rows:
        cells = stage_densities(row)
        print(f"| {workdir} | {row['variant']} | {1 - row['sparsity']:.4f} | "
              + " | ".join(f"{cells[s]:.3f}" for s in stages) + " |")


def seeds_in(root: str) -> list[int]:
    """The seeds with a workdir on either path under `root`, in order."""
    suffixes = (path.name.rsplit("_seed", 1)[1] for path in Path(root).glob("*_seed*"))
    return sorted({int(suffix) for suffix in suffixes if suffix.isdigit()})


def print_paired_differences(accuracies: dict) -> None:
    """Per run: each path's mean over the seeds run on both, the paired difference sparse - native
    with its standard error, and the seed-to-seed standard deviation on each path (the noise the
    difference is measured against)."""
    print("\n| run | seeds | native mean | sparse mean | sparse - native (± s.e.) "
          "| seed s.d. native | seed s.d. sparse |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for variant in ("dense", "lt", "kd"):
        pairs = [(n, s) for (n, s) in accuracies.get(variant, {}).values()
                 if n is not None and s is not None]
        if len(pairs) < 2:
            continue
        native, sparse = (np.array(column) for column in zip(*pairs))
        diff = sparse - native
        print(f"| {variant} | {len(pairs)} | {native.mean():.2f} | {sparse.mean():.2f} | "
              f"{diff.mean():+.2f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} | "
              f"{native.std(ddof=1):.2f} | {sparse.std(ddof=1):.2f} |")


def main(root: str = "runs/sparse_kernels_shrunk") -> None:
    if not Path(root).is_dir():  # a mistyped root would print a table of runs "not run yet"
        sys.exit(f"error: {root}: no such folder; pass the root the study script wrote "
                 "(default runs/sparse_kernels_shrunk)")
    print("| seed | run | native (dense kernels) | sparse kernels | pruned weights != 0 |")
    print("| --- | --- | --- | --- | --- |")
    accuracies: dict = {}
    for seed in seeds_in(root):
        rows = {}
        for impl in ("native", "sparse"):
            path = Path(root) / f"{impl}_seed{seed}"
            if (path / "results.jsonl").exists():
                for row in read_rows(path / "results.jsonl"):
                    rows[(impl, row["variant"])] = row
        for variant in ("dense", "lt", "kd"):
            values = [100 * rows[(i, variant)]["test_accuracy"] if (i, variant) in rows else None
                      for i in ("native", "sparse")]
            accuracies.setdefault(variant, {})[seed] = values
            cells = [f"{v:.2f}" if v is not None else "not run yet" for v in values]
            zeros = "-"
            if variant != "dense" and ("sparse", variant) in rows:
                tag = f"level_{rows[('sparse', variant)]['level']}_{variant}"
                zeros = str(pruned_nonzero(Path(root) / f"sparse_seed{seed}", tag))
            print(f"| {seed} | {variant} | {cells[0]} | {cells[1]} | {zeros} |")
    print_paired_differences(accuracies)
    print_stage_densities(root)


if __name__ == "__main__":
    main(*sys.argv[1:])
