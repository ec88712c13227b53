"""Prints the learning-curve numbers docs/results.md quotes, from a report's report.json.

    python docs/results/curve_numbers.py [docs/results/cpu_resnet20_15ep/report/report.json]
    python docs/results/curve_numbers.py --per-seed [STUDY_DIR ...]

One line per (level, variant): test accuracy (%) after epochs 1-4, 7, 8 and the last, and the
gain from epoch 8 to the last. Epochs are global (epoch e ends at step e x steps per epoch), so
runs that start at the rewind point (weight_rewind, kd_rewind: step 955, inside epoch 3) have no
value before epoch 3. The report's curves are means over seeds; --per-seed reads each study's
committed TensorBoard events instead (default: docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*)
and marks runs without a results row as unfinished.
"""

import glob
import json
import os
import sys


def curve_line(level: int, variant: str, n: str, accuracy: dict[float, float]) -> str:
    """One run's (or mean's) line: epochs 1-4, 7, 8 and the last, and the gain from 8 on."""
    last = max(accuracy)

    def at(epoch: float) -> str:
        return f"{100 * accuracy[epoch]:.2f}" if epoch in accuracy else "-"

    early = " ".join(at(float(e)) for e in (1, 2, 3, 4))
    gain = f"{100 * (accuracy[last] - accuracy[8.0]):+.2f}" if 8.0 in accuracy else "-"
    return (f"L{level} {variant:<14} {n}  epochs 1-4: {early}  epoch 7: {at(7.0)}"
            f"  epoch 8: {at(8.0)}  epoch {last:g}: {at(last)}  gain 8->{last:g}: {gain}")


def main(path: str) -> None:
    try:
        report = json.load(open(path))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {path} cannot be read as a report.json ({error}); pass the report's "
                 "report.json (python -m lottery_kd.report ... --out DIR writes DIR/report.json)")
    for group in report["groups"]:
        print(f"# {group['model']} on {group['dataset']} (mean over seeds)")
        for curve in group["learning_curves"]:
            accuracy = dict(zip(curve["epochs"], curve["test_accuracy_mean"]))
            print(curve_line(curve["level"], curve["variant"], f"n={curve['n']}", accuracy))


def per_seed(study_dirs: list[str]) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from lottery_kd.analysis.curves import run_curves  # the repository's, wherever this runs from
    from lottery_kd.study.results import read_rows_or_warn as read_rows  # a damaged line named
    for study in study_dirs:
        if not os.path.isfile(os.path.join(study, "config.json")):
            sys.exit(f"error: {study} holds no study (no config.json); pass studies' workdirs")
        seed = json.load(open(os.path.join(study, "config.json")))["seed"]
        finished = {(row["level"], row["variant"])
                    for row in read_rows(os.path.join(study, "results.jsonl"))}
        print(f"# {study} (seed {seed})")
        for (level, variant), rows in run_curves(study).items():
            accuracy = {round(r["epoch"], 4): r["test_accuracy"] for r in rows
                        if "epoch" in r and "test_accuracy" in r}
            if accuracy:
                line = curve_line(level, variant, f"s{seed}", accuracy)
                print(line + ("" if (level, variant) in finished else "  (unfinished)"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--per-seed"]:
        per_seed(sys.argv[2:] or sorted(glob.glob(
            "docs/results/cpu_resnet20_15ep/resnet20_15ep_seed*")))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else
             "docs/results/cpu_resnet20_15ep/report/report.json")
