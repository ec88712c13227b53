"""The README's two quickstart tables, from the quickstart studies' results.jsonl alone.

    bash docs/results/quickstart.sh                 # three quickstarts, about a minute each
    python docs/results/quickstart_table.py [DIR]   # default runs/quickstart_runs

DIR holds seed0, seed1 and bf16_seed0 (what quickstart.sh writes; docs/results/quickstart/ has
the committed copies of their rows and configs). Prints, test accuracy (%) at the end of
training:
1. each sparsity's variants, seed 0 / seed 1 (README, "Quickstart");
2. seed 0 in float32 against bfloat16 (README, "bfloat16"), the dense network included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.study.results import read_rows_or_warn as read_rows  # noqa: E402

VARIANTS = ("lt", "reinit", "weight_rewind", "lr_rewind", "finetune", "kd", "kd_rewind")
STUDIES = ("seed0", "seed1", "bf16_seed0")


def load(folder: Path) -> dict[tuple[float, str], float]:
    """{(sparsity %, variant): test accuracy %} of one study; exits naming a missing one."""
    if not (folder / "results.jsonl").is_file():
        sys.exit(f"error: {folder} has no results.jsonl; run docs/results/quickstart.sh or pass "
                 "the folder that holds seed0, seed1 and bf16_seed0")
    precision = json.loads((folder / "config.json").read_text())["train"]["precision"]
    expected = "bfloat16" if folder.name.startswith("bf16") else "float32"
    if precision != expected:
        sys.exit(f"error: {folder} trained in {precision}, its name says {expected}")
    return {(round(100 * r["sparsity"], 2), r["variant"]): 100 * r["test_accuracy"]
            for r in read_rows(folder / "results.jsonl")}


def sparsities(study: dict) -> list[float]:
    return sorted({s for s, v in study if v != "dense"})


def seeds_table(seed0: dict, seed1: dict) -> list[str]:
    lines = ["| sparsity % | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for sparsity in sparsities(seed0):
        cells = [" / ".join(f"{s[(sparsity, v)]:.1f}" if (sparsity, v) in s else "?"
                            for s in (seed0, seed1)) for v in VARIANTS]
        lines.append(f"| {sparsity:.2f} | " + " | ".join(cells) + " |")
    dense = [f"{s[(0.0, 'dense')]:.2f}" if (0.0, "dense") in s else "?" for s in (seed0, seed1)]
    return lines + [f"\nDense: {dense[0]} (seed 0) / {dense[1]} (seed 1)"]


def precision_table(float32: dict, bfloat16: dict) -> list[str]:
    lines = ["| seed 0, test % | dense | sparsity % | " + " | ".join(VARIANTS) + " |",
             "|---" * (len(VARIANTS) + 3) + "|"]
    for name, study in (("float32", float32), ("bfloat16", bfloat16)):
        for i, sparsity in enumerate(sparsities(study)):
            dense = f"{study[(0.0, 'dense')]:.2f}" if i == 0 and (0.0, "dense") in study else ""
            cells = [f"{study[(sparsity, v)]:.1f}" if (sparsity, v) in study else "?"
                     for v in VARIANTS]
            lines.append(f"| {name if i == 0 else ''} | {dense} | {sparsity:.2f} | "
                         + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    root = Path(argv[0] if argv else "runs/quickstart_runs")
    seed0, seed1, bf16 = (load(root / name) for name in STUDIES)
    print("\n".join(seeds_table(seed0, seed1)))
    print()
    print("\n".join(precision_table(seed0, bf16)))


if __name__ == "__main__":
    main(sys.argv[1:])
