"""Prints the tables of docs/results.md's full-length section, from a study's files alone.

    python docs/results/full_length.py [STUDY_DIR]   # default runs/full/resnet20_renda_seed0

For the 182-epoch ResNet-20 study (docs/results/run_full.sh):
1. the test accuracy (%) at the end of training of the dense network and of every variant at each
   density, with Renda et al.'s at the same density beside (their iterative pruning, median of 3
   trials; ours one-shot, one seed; their weight rewinding at its best rewind epoch, ours at
   epoch 33). Runs not finished yet read "running" or "pending" (from plan.json);
2. the paired differences the KD-ticket claims rest on, in points (same mask, data order and
   teacher within the study);
3. each finished run's test accuracy over its last LATE_EPOCHS epochs (mean, range), from its
   TensorBoard scalars, and the paired differences of those means: one end-of-training epoch
   moves by a few tenths from the next, so a difference smaller than that spread is no finding;
4. each run's seconds per epoch on each CPU (median over its full epochs; a start's partial
   first epoch, which compiles, is left out), against the dense run's on the same CPU, and the
   convolution path it trained on. Epochs that ran beside other work on the machine are
   slower: the median is a pace, not a benchmark;
5. each finished run's wall time (its row's `seconds`: every epoch, slowed or not, each
   restart's compilation and the test-set evaluations);
6. the weights each density's mask keeps in each layer (a finished row's layer_counts; every
   variant at a density trains the same mask), in network order: global magnitude pruning
   spreads its budget unevenly, and a layer it nearly empties is worth a reader's look.
"""

import json
import os
import statistics
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from lottery_kd.analysis.curves import run_curves  # noqa: E402
from lottery_kd.analysis.report_runs import network_order  # noqa: E402
from lottery_kd.kernels.conv3x3 import resumed_conv_impl  # noqa: E402
from lottery_kd.published import load, same_density  # noqa: E402
from lottery_kd.runtime.environment import epoch_cpu  # noqa: E402
from lottery_kd.study import jsonlines  # noqa: E402
from lottery_kd.study.checkpoint_meta import latest_fingerprint  # noqa: E402
from lottery_kd.study.results import EPOCH_TIME_FIELDS  # noqa: E402
from lottery_kd.study.results import read_rows_or_warn as read_rows  # noqa: E402
from lottery_kd.study.variants import snapshot_name  # noqa: E402
from lottery_kd.study.workdir import Workdir  # noqa: E402

VARIANTS = ("lt", "weight_rewind", "lr_rewind", "kd", "kd_rewind", "reinit")
RENDA = {"lt": "rewind_to_0", "weight_rewind": "best_weight_rewinding",
         "lr_rewind": "lr_rewinding"}
DIFFERENCES = (("kd", "weight_rewind"), ("kd", "lt"), ("kd_rewind", "weight_rewind"),
               ("kd_rewind", "lr_rewind"), ("weight_rewind", "lt"), ("lr_rewind", "lt"))

LATE_EPOCHS = 10


def density(level: int, keep: float) -> float:
    """The fraction of weights left at `level` when each level keeps `keep` of the last."""
    return keep ** level


def renda_row(level: int, keep: float) -> dict:
    """Renda et al.'s ResNet-20 row at the nearest published density (same_density), or {}."""
    rows = load("renda2020_cifar10_imagenet")["iterative"]["resnet20"]
    near = min(rows, key=lambda r: abs(r["density"] - density(level, keep)))
    return near if same_density(near["density"], density(level, keep)) else {}


def planned_levels(plan: dict) -> list[int]:
    """The pruning levels in the order the study trains them."""
    return list(dict.fromkeys(r["level"] for r in plan["runs"] if r["level"] > 0))


def accuracy_table(plan: dict, rows: dict, current: tuple) -> None:
    dense = rows.get((0, "dense"))
    renda_dense = load("renda2020_cifar10_imagenet")["dense"]["resnet20"]
    print("Test accuracy (%) at the end of training; Renda et al. in brackets where they report "
          "the method")
    print(f"Dense: {100 * dense['test_accuracy']:.2f} (Renda {renda_dense})" if dense
          else "Dense: " + ("running" if current == (0, "dense") else "pending"))
    print("\n| density | sparsity % | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for level in planned_levels(plan):
        theirs, cells = renda_row(level, plan["keep"]), []
        for variant in VARIANTS:
            planned = any(r["level"] == level and r["variant"] == variant for r in plan["runs"])
            row = rows.get((level, variant))
            text = (f"{100 * row['test_accuracy']:.2f}" if row else
                    "running" if current == (level, variant) else
                    "pending" if planned else "not run")
            if variant in RENDA and RENDA[variant] in theirs:
                text += f" ({theirs[RENDA[variant]]:.2f})"
            cells.append(text)
        kept = density(level, plan["keep"])
        print(f"| {kept:.4f} | {100 * (1 - kept):.2f} | "
              + " | ".join(cells) + " |")


def differences_table(rows: dict, plan: dict) -> None:
    print("\nPaired differences (points), test accuracy at the end:")
    print("| density | " + " | ".join(f"{a} − {b}" for a, b in DIFFERENCES) + " |")
    print("|---" * (len(DIFFERENCES) + 1) + "|")
    for level in planned_levels(plan):
        accuracy = {v: rows[(level, v)]["test_accuracy"] for v in VARIANTS if (level, v) in rows}
        cells = [f"{100 * (accuracy[a] - accuracy[b]):+.2f}" if a in accuracy and b in accuracy
                 else "" for a, b in DIFFERENCES]
        print(f"| {density(level, plan['keep']):.4f} | " + " | ".join(cells) + " |")


def late_accuracy(study: str, rows: dict) -> dict:
    """{(level, variant): test accuracies (%) of the last LATE_EPOCHS evaluations} of every
    finished run whose TensorBoard scalars the study holds."""
    late = {}
    for key, points in run_curves(study).items():
        accuracy = [100 * p["test_accuracy"] for p in points if "test_accuracy" in p]
        if key in rows and accuracy:
            late[key] = accuracy[-LATE_EPOCHS:]
    return late


def late_table(late: dict, plan: dict) -> None:
    print(f"\nTest accuracy (%) over each finished run's last {LATE_EPOCHS} epochs (TensorBoard "
          "scalars): mean and range; then the paired differences of those means (points):")
    print("| run | epochs | mean | min | max |")
    print("|---|---|---|---|---|")
    for (level, variant), values in late.items():
        print(f"| L{level} {variant} | {len(values)} | {statistics.mean(values):.2f} | "
              f"{min(values):.2f} | {max(values):.2f} |")
    print("\n| density | " + " | ".join(f"{a} − {b}" for a, b in DIFFERENCES) + " |")
    print("|---" * (len(DIFFERENCES) + 1) + "|")
    for level in planned_levels(plan):
        means = {v: statistics.mean(late[(level, v)]) for v in VARIANTS if (level, v) in late}
        cells = [f"{means[a] - means[b]:+.2f}" if a in means and b in means else ""
                 for a, b in DIFFERENCES]
        print(f"| {density(level, plan['keep']):.4f} | " + " | ".join(cells) + " |")


def unfinished_path(study: str, key: tuple[int, str], started: str) -> str:
    """The conv_impl an unfinished run trains on: the one its resume checkpoints record (a run
    resumes on the path it started on, e.g. sparse-xla-shortcuts), else the last start's."""
    fingerprint = latest_fingerprint(Workdir(study).resume(snapshot_name(*key))) or {}
    return resumed_conv_impl(fingerprint) if "conv_impl" in fingerprint else started


TEACHER_SOURCES = {"in_step": "teacher in the step", "computed": "computed and stored",
                   "read": "read from the store", "mixed": "part read, part computed"}


def epoch_times(study: str, rows: dict, steps_per_epoch: int) -> None:
    """Median seconds per full epoch of each run on each CPU (a start's partial first epoch,
    which also compiles, is left out; the median shrugs off the rare start on an epoch
    boundary), against the dense run's on the same CPU: timings compare within one machine."""
    starts_log = os.path.join(study, "environment.jsonl")
    starts = jsonlines.scan(starts_log, {})[0] if os.path.exists(starts_log) else []
    times, teacher = {}, {}
    path = os.path.join(study, "epoch_times.jsonl")  # damaged lines skipped, as rows are
    for entry in jsonlines.scan(path, EPOCH_TIME_FIELDS)[0] if os.path.exists(path) else []:
        if entry["steps"] == steps_per_epoch:
            key = (entry["level"], entry["variant"], epoch_cpu(entry, starts))
            times.setdefault(key, []).append(entry["seconds"])
            if entry.get("distill"):  # how its KD steps got the teacher's logits
                source = TEACHER_SOURCES.get(entry.get("teacher", "in_step"), "?")
                teacher.setdefault(key, Counter())[source] += 1
    print(f"\nSeconds per epoch (median over the full {steps_per_epoch}-step epochs; training "
          "and the test-set evaluation) on each CPU, against the dense run's on the same CPU, "
          "the convolution path and, for KD epochs, where the teacher's logits came from "
          "(kd.teacher_logits; epochs of each):")
    print("| run | CPU | epochs timed | median s/epoch | vs dense | conv path | teacher logits |")
    print("|---|---|---|---|---|---|---|")
    running_path = (starts[-1:] or [{}])[0].get("conv_impl", "?")
    for key, values in times.items():
        median = statistics.median(values)
        dense = times.get((0, "dense", key[2]))
        ratio = f"{statistics.median(dense) / median:.2f}x" if dense else "no dense epochs"
        run = key[:2]
        path = rows[run]["conv_impl"] if run in rows else \
            f"{unfinished_path(study, run, running_path)} (running)"
        sources = ", ".join(f"{name} ({count})" for name, count in teacher.get(key, {}).items())
        print(f"| L{key[0]} {key[1]} | {key[2]} | {len(values)} | {median:.1f} | {ratio} | "
              f"{path} | {sources} |")


def wall_times(rows: dict) -> None:
    print("\nWall time of each finished run (its row's seconds; restarts and slowed epochs "
          "included):")
    print("| run | epochs | seconds | hours |")
    print("|---|---|---|---|")
    for (level, variant), row in rows.items():
        if "seconds" in row and "epochs" in row:  # rows written before these fields: left out
            print(f"| L{level} {variant} | {row['epochs']:g} | {row['seconds']:,.0f} | "
                  f"{row['seconds'] / 3600:.1f} |")


def layer_table(rows: dict, plan: dict) -> None:
    """Item 6: each pruned layer's size and what each density's mask keeps of it."""
    masks = {}  # level -> layer_counts of its first finished row
    for (level, _), row in rows.items():
        if level > 0 and row.get("layer_counts"):
            masks.setdefault(level, row["layer_counts"])
    if not masks:
        return
    levels = [lv for lv in planned_levels(plan) if lv in masks]
    print("\nWeights each density's mask keeps in each pruned layer: % kept (how many), from a "
          "finished row's layer_counts:")
    print("| layer | weights | " + " | ".join(f"{density(lv, plan['keep']):.4f}"
                                              for lv in levels) + " |")
    print("|---" * (len(levels) + 2) + "|")
    for name in network_order([n for lv in levels for n in masks[lv]]):
        total = next(masks[lv][name][1] for lv in levels if name in masks[lv])
        cells = [f"{100 * masks[lv][name][0] / total:.1f} ({masks[lv][name][0]:,})"
                 if name in masks[lv] else "" for lv in levels]
        print(f"| {name.removesuffix('/kernel')} | {total:,} | " + " | ".join(cells) + " |")


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    study = argv[0] if argv else "runs/full/resnet20_renda_seed0"
    if not os.path.exists(os.path.join(study, "plan.json")):
        sys.exit(f"error: {study} has no plan.json; pass the study's workdir "
                 "(docs/results/run_full.sh writes runs/full/resnet20_renda_seed0)")
    with open(os.path.join(study, "plan.json")) as f:
        plan = json.load(f)
    with open(os.path.join(study, "config.json")) as f:  # each level keeps 1 - fraction
        plan["keep"] = 1.0 - json.load(f)["prune"]["fraction"]
    rows = {(r["level"], r["variant"]): r for r in read_rows(os.path.join(study, "results.jsonl"))}
    pending = [(r["level"], r["variant"]) for r in plan["runs"]
               if (r["level"], r["variant"]) not in rows]
    current = pending[0] if pending else None
    accuracy_table(plan, rows, current)
    differences_table(rows, plan)
    late_table(late_accuracy(study, rows), plan)
    epoch_times(study, rows, plan["steps_per_epoch"])
    wall_times(rows)
    layer_table(rows, plan)


if __name__ == "__main__":
    main(sys.argv[1:])
