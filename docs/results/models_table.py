"""The tables of docs/results/models_shrunk.sh: each network's dense accuracy and its 80 % sparse
tickets (end-of-training test accuracy, %), and WRN-22-2 in RigL's recipe beside the accuracies
RigL's authors published for the same network and sparsity at full length.

    python docs/results/models_table.py [runs/models_shrunk]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.published import load  # noqa: E402
from lottery_kd.study.results import read_rows_or_warn as read_rows  # noqa: E402

TICKETS = {"wrn22_2": "WRN-22-2", "vgg16": "VGG-16", "vit_tiny": "ViT-tiny (vit_matmul)"}
VARIANTS = ("lt", "weight_rewind", "kd")
RIGL = {"wrn22_2_rigl80": ("RigL", "rigl"), "wrn22_2_static80": ("Static", "static"),
        "wrn22_2_gmp80": ("Pruning (GMP)", "pruning")}


def _rows(folder: Path) -> dict[str, dict]:
    """The workdir's rows by variant ({} before its first row)."""
    path = folder / "results.jsonl"
    return {row["variant"]: row for row in read_rows(path)} if path.exists() else {}


def _config(folder: Path) -> dict:
    """The run's config.json ({} before the run starts)."""
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _sparse_row(rows: dict[str, dict]) -> dict | None:
    """The workdir's first non-dense row, if any."""
    return next((row for variant, row in rows.items() if variant != "dense"), None)


def _cell(row: dict | None) -> str:
    return "not run yet" if row is None else f"{100 * row['test_accuracy']:.2f}"


def tickets_table(base: Path) -> list[str]:
    """Dense and 80 % ticket accuracies of each network (renda protocol, shrunk)."""
    lines = ["| network | train images | dense | " + " | ".join(VARIANTS) + " | sparsity |",
             "| --- | --- | --- |" + " --- |" * (len(VARIANTS) + 1)]
    for folder, name in TICKETS.items():
        rows, config = _rows(base / folder), _config(base / folder)
        asked = config.get("lottery", {}).get("variants", ",".join(VARIANTS)).split(",")
        cells = [_cell(rows.get(v)) if v in asked else "not run" for v in VARIANTS]
        sparse = _sparse_row(rows)
        images = f"{config['data']['train_subset']:,}" if config else "?"
        lines.append(f"| {name} | {images} | {_cell(rows.get('dense'))} | "
                     + " | ".join(cells) + " | "
                     + (f"{100 * sparse['sparsity']:.1f} %" if sparse else "?") + " |")
    return lines


def rigl_table(base: Path) -> list[str]:
    """WRN-22-2 at 80 % ERK in RigL's recipe (shrunk) beside RigL's published 80 % row."""
    published = next(r for r in load("rigl2020_cifar10_wrn22_2")["wrn22_2_erk"]
                     if r["sparsity"] == 0.8)
    lines = ["| method | this run (4 epochs, 10,000 images) | dense, same run | "
             "RigL's table (250 epochs, 50,000 images) |", "| --- | --- | --- | --- |"]
    for folder, (label, key) in RIGL.items():
        rows = _rows(base / folder)
        lines.append(f"| {label} | {_cell(_sparse_row(rows))} | {_cell(rows.get('dense'))} | "
                     f"{published[key]:.1f} |")
    return lines


def main(root: str = "runs/models_shrunk") -> None:
    if not Path(root).is_dir():  # a mistyped root would print a table of runs "not run yet"
        sys.exit(f"error: {root}: no such folder; pass the root the study script wrote "
                 "(default runs/models_shrunk)")
    base = Path(root)
    print("\n".join(tickets_table(base)))
    print()
    print("\n".join(rigl_table(base)))


if __name__ == "__main__":
    main(*sys.argv[1:])
