"""The table of docs/results/structured_shrunk.sh: each structured ticket beside its unstructured
twin (end-of-training test accuracy, %, and the in-scope sparsity reached).

    python docs/results/structured_table.py [runs/structured_shrunk]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.study.results import read_rows_or_warn as read_rows  # noqa: E402

STRUCTURES = ("unstructured", "2:4", "block:16")


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run yet"
    return f"{100 * row['test_accuracy']:.2f} ({100 * row['sparsity']:.1f} %)"


def main(root: str = "runs/structured_shrunk") -> None:
    if not Path(root).is_dir():  # a mistyped root would print a table of runs "not run yet"
        sys.exit(f"error: {root}: no such folder; pass the root the study script wrote "
                 "(default runs/structured_shrunk)")
    base = Path(root)
    table: dict[str, dict[str, dict]] = {}
    dense = []
    for structure in STRUCTURES:
        folder = base / f"oneshot_{structure.replace(':', '_')}"
        rows = read_rows(folder / "results.jsonl") if (folder / "results.jsonl").exists() else []
        for row in rows:
            if row["variant"] == "dense":
                dense.append(row["test_accuracy"])
            else:
                table.setdefault(f"one-shot {row['variant']}", {})[structure] = row
    for structure in ("unstructured", "block:16"):
        for distill in ("false", "true"):
            folder = base / f"gmp_{structure.replace(':', '_')}_kd_{distill}"
            if (folder / "results.jsonl").exists():
                for row in read_rows(folder / "results.jsonl"):
                    if row["variant"] == "dense":
                        dense.append(row["test_accuracy"])
                    else:
                        table.setdefault(row["variant"], {})[structure] = row
    print(f"Dense networks: {', '.join(f'{100 * a:.2f}' for a in dense)} % (one per workdir)\n")
    print("| run | " + " | ".join(STRUCTURES) + " |")
    print("| --- |" + " --- |" * len(STRUCTURES))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(
            "n/a" if name.startswith("gmp") and s == "2:4" else _cell(cells.get(s))
            for s in STRUCTURES) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
