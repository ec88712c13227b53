"""Prints the tables docs/results.md quotes, from the committed results.jsonl files alone.

    python docs/results/tables.py [STUDY_DIR ...]
    python docs/results/tables.py --follow-up FOLLOW_UP_STUDY_DIR BASE_STUDY_DIR

STUDY_DIR defaults to docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*. For each study: test
accuracy (%) at the end of training and, in brackets, at the best-validation epoch. Then, over
the studies, paired differences (within a seed: same mask, teacher and data order) in points, at
best validation and at the end, each seed's value and their mean; each cell minus its seed's
dense network; and the seed-to-seed spread of every cell that more than one study has. The seed
is read from each study's config.json.

--follow-up: a study that repeats some variants of a base study with one setting changed (e.g.
run_cpu_kd_stop.sh), each of its rows minus the base's rows, paired within the seed.
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
    if not os.path.isfile(os.path.join(path, "config.json")):
        sys.exit(f"error: {path} holds no study (no config.json); pass studies' workdirs")
    seed = json.load(open(os.path.join(path, "config.json")))["seed"]
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from lottery_kd.study.results import read_rows_or_warn as read_rows  # a damaged line named
    rows = {(round(100 * row["sparsity"], 2), row["variant"]): row
            for row in read_rows(os.path.join(path, "results.jsonl"))}
    return seed, rows


def _has(rows: dict, key: tuple, metric: str) -> bool:
    """Whether the study has the cell and the cell the metric (a study without a validation
    split has no test accuracy at best validation: docs/results/full_length.py's study)."""
    return key in rows and rows[key].get(metric) is not None


def accuracy_table(rows: dict) -> None:
    print("| sparsity % | dense | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for sparsity in sorted({s for s, _ in rows}):
        cells = []
        for variant in ("dense",) + VARIANTS:
            row = rows.get((sparsity, variant))
            best = None if row is None else row.get("test_accuracy_at_best_val")
            cells.append("" if row is None else f"{100 * row['test_accuracy']:.2f}"
                         + ("" if best is None else f" ({100 * best:.2f})"))
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
                          if all(_has(rows, (sparsity, v), metric) for v in (a, b))]
                text = " / ".join(f"{v:+.2f}" for v in values)
                if len(values) > 1:
                    text += f" (mean {statistics.mean(values):+.2f})"
                cells.append(text)
            print(f"| {sparsity:.2f} | " + " | ".join(cells) + " |")


def against_dense(studies: dict, metric: str = "test_accuracy_at_best_val") -> None:
    """Each sparse cell minus its own seed's dense network (same init and data order), at the
    best-validation epoch or (metric="test_accuracy") at the end."""
    sparsities = sorted({s for rows in studies.values() for s, v in rows if v != "dense"})
    label = "at best validation" if metric == "test_accuracy_at_best_val" else "at the end"
    print(f"\nMinus the seed's dense network (points), test accuracy {label}; "
          "seeds " + ", ".join(map(str, studies)) + ":")
    print("| sparsity % | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for sparsity in sparsities:
        cells = []
        for variant in VARIANTS:
            values = [100 * (rows[(sparsity, variant)][metric] - rows[(0.0, "dense")][metric])
                      for rows in studies.values()
                      if all(_has(rows, k, metric) for k in ((sparsity, variant), (0.0, "dense")))]
            cells.append(" / ".join(f"{v:+.2f}" for v in values))
        print(f"| {sparsity:.2f} | " + " | ".join(cells) + " |")


def seed_spread(studies: dict) -> None:
    cells = sorted({key for rows in studies.values() for key in rows})
    print("\nSeed-to-seed spread of the cells more than one seed has (points): "
          "std at best validation, std at the end, largest difference at the end")
    for key in cells:
        rows = [rows[key] for rows in studies.values() if _has(rows, key, METRICS[0][0])]
        if len(rows) < 2:
            continue
        best = [100 * r["test_accuracy_at_best_val"] for r in rows]
        end = [100 * r["test_accuracy"] for r in rows]
        print(f"{key[0]:6.2f} {key[1]:<14} n={len(rows)}  std {statistics.stdev(best):.2f}"
              f"  end std {statistics.stdev(end):.2f}  end range {max(end) - min(end):.2f}")


def follow_up(follow_path: str, base_path: str) -> None:
    """A follow-up study (same seed, protocol changed in one setting) against its base study:
    both dense rows, its own rows, and each of its rows minus the base's rows at the same
    sparsity (the base's twin of the same variant first), in points."""
    (follow_seed, follow), (base_seed, base) = load_study(follow_path), load_study(base_path)
    if follow_seed != base_seed:
        sys.exit(f"error: {follow_path} has seed {follow_seed}, {base_path} seed {base_seed}; "
                 "a follow-up pairs with the study of its own seed")
    dense = [100 * rows[(0.0, "dense")]["test_accuracy"] for rows in (follow, base)]
    print(f"Dense (end): follow-up {dense[0]:.2f}, base {dense[1]:.2f} "
          f"({'identical' if dense[0] == dense[1] else 'DIFFERENT: not paired'})")
    print(f"\nFollow-up {follow_path}: test accuracy (%) at the end (at best validation)")
    accuracy_table(follow)
    for metric, label in METRICS:
        print(f"\nFollow-up minus base (points), test accuracy at {label}:")
        print("| sparsity % | follow-up variant | − base twin | − base lt | − base weight_rewind "
              "| − base lr_rewind |")
        print("|---" * 6 + "|")
        for (sparsity, variant), row in sorted(follow.items()):
            if variant == "dense":
                continue
            cells = [f"{100 * (row[metric] - base[(sparsity, other)][metric]):+.2f}"
                     if (sparsity, other) in base else ""
                     for other in (variant, "lt", "weight_rewind", "lr_rewind")]
            print(f"| {sparsity:.2f} | {variant} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if argv[:1] == ["--follow-up"]:
        if len(argv) != 3:
            sys.exit("usage: tables.py --follow-up FOLLOW_UP_STUDY BASE_STUDY")
        follow_up(argv[1], argv[2])
        return
    paths = argv or sorted(glob.glob("docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*"))
    loaded = [load_study(path) for path in paths]
    seeds = [seed for seed, _ in loaded]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"error: two studies share a seed ({seeds}); pass one study per seed, or use "
                 "--follow-up for a variant of a study")
    studies = dict(sorted(loaded))
    for seed, rows in studies.items():
        print(f"\nSeed {seed}: test accuracy (%) at the end (at best validation)")
        accuracy_table(rows)
    paired_differences(studies)
    against_dense(studies)
    against_dense(studies, "test_accuracy")
    seed_spread(studies)


if __name__ == "__main__":
    main(sys.argv[1:])
