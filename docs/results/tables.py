"""Prints the tables docs/results.md quotes, from the committed results.jsonl files alone.

    python docs/results/tables.py [STUDY_DIR ...]

STUDY_DIR defaults to docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*. For each study: test
accuracy (%) at the end of training and, in brackets, at the best-validation epoch. Then, over
the studies, paired differences (within a seed: same mask, teacher and data order) in points, at
best validation and at the end, each seed's value and their mean; and the seed-to-seed spread of
every cell that more than one study has. The seed is read from each study's config.json.
"""

import glob
import itertools
import json
import os
import statistics
import sys

VARIANTS = ("lt", "reinit", "weight_rewind", "lr_rewind", "kd", "kd_rewind")
DIFFERENCES = {
    "distillation": (("kd", "lt"), ("kd", "weight_rewind"), ("kd_rewind", "weight_rewind"),
                     ("kd", "lr_rewind"), ("kd_rewind", "lr_rewind")),
    "tickets": (("lt", "reinit"), ("weight_rewind", "reinit"), ("weight_rewind", "lt")),
}
METRICS = (("test_accuracy_at_best_val", "best validation"), ("test_accuracy", "end"))


def load_study(path: str) -> tuple[int, dict]:
    """(seed, {(sparsity %, variant): row}) of one study directory."""
    seed = json.load(open(os.path.join(path, "config.json")))["seed"]
    rows = {}
    for line in open(os.path.join(path, "results.jsonl")):
        row = json.loads(line)
        rows[(round(100 * row["sparsity"], 2), row["variant"])] = row
    return seed, rows


def accuracy_table(rows: dict) -> None:
    print("| sparsity % | dense | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for sparsity in sorted({s for s, _ in rows}):
        cells = []
        for variant in ("dense",) + VARIANTS:
            row = rows.get((sparsity, variant))
            cells.append("" if row is None else f"{100 * row['test_accuracy']:.2f} "
                         f"({100 * row['test_accuracy_at_best_val']:.2f})")
        print(f"| {sparsity:.2f} | " + " | ".join(cells) + " |")


def paired_differences(studies: dict) -> None:
    sparsities = sorted({s for rows in studies.values() for s, v in rows if v != "dense"})
    for (metric, label), (name, differences) in itertools.product(METRICS, DIFFERENCES.items()):
        print(f"\nPaired differences, {name} (points), test accuracy at {label}; "
              "seeds " + ", ".join(map(str, studies)) + " then their mean:")
        print("| sparsity % | " + " | ".join(f"{a} − {b}" for a, b in differences) + " |")
        print("|---" * (len(differences) + 1) + "|")
        for sparsity in sparsities:
            cells = []
            for a, b in differences:
                values = [100 * (rows[(sparsity, a)][metric] - rows[(sparsity, b)][metric])
                          for rows in studies.values()
                          if (sparsity, a) in rows and (sparsity, b) in rows]
                text = " / ".join(f"{v:+.2f}" for v in values)
                if len(values) > 1:
                    text += f" (mean {statistics.mean(values):+.2f})"
                cells.append(text)
            print(f"| {sparsity:.2f} | " + " | ".join(cells) + " |")


def seed_spread(studies: dict) -> None:
    cells = sorted({key for rows in studies.values() for key in rows})
    print("\nSeed-to-seed spread of the cells more than one seed has (points): "
          "std at best validation, std at the end, largest difference at the end")
    for key in cells:
        rows = [rows[key] for rows in studies.values() if key in rows]
        if len(rows) < 2:
            continue
        best = [100 * r["test_accuracy_at_best_val"] for r in rows]
        end = [100 * r["test_accuracy"] for r in rows]
        print(f"{key[0]:6.2f} {key[1]:<14} n={len(rows)}  std {statistics.stdev(best):.2f}"
              f"  end std {statistics.stdev(end):.2f}  end range {max(end) - min(end):.2f}")


def main(paths: list[str]) -> None:
    studies = dict(sorted(load_study(path) for path in paths))
    for seed, rows in studies.items():
        print(f"\nSeed {seed}: test accuracy (%) at the end (at best validation)")
        accuracy_table(rows)
    paired_differences(studies)
    seed_spread(studies)


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(glob.glob("docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*")))
