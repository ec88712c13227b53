"""Paired tests of the differences between a study's tickets, on the same test images.

    python -m lottery_kd.paired WORKDIR --out DIR [--pairs kd:weight_rewind,kd_rewind:lr_rewind]
        [--levels 10,8]

Every ticket of a study is tested on the same images, so two tickets' accuracies differ only on
the images they classify differently (in a one-shot study the tickets of a level also share
their mask, data order and teacher; in an iterative one each variant's chain has its own mask).
For each pair (a, b) this counts the images only a gets right (a_only) and only b gets right
(b_only), over n images:
- the difference of accuracies, (a_only - b_only) / n;
- the exact McNemar test's two-sided p-value: the binomial probability of a split of the
  a_only + b_only discordant images at least as uneven, were each ticket as likely as the other
  to be the one right;
- that p-value adjusted by Holm's method over the pairs tested at the same level (one family):
  below 0.05, the finding holds with at most a 0.05 chance of any false one among the level's
  tests;
- the difference's 95 % interval, Tango's score interval for paired proportions (ci95): near
  95 % coverage whatever the split of the discordant images. It can disagree with the exact
  test near p = 0.05 (it inverts the large-sample test), so paired.json also keeps the interval
  that goes with the test, exact given the number of discordant images
  (ci95_given_discordant: the Clopper-Pearson interval (lo, hi) of the share of them that a gets
  right, as a difference, (2 lo - 1, 2 hi - 1) * (a_only + b_only) / n, which excludes zero
  exactly when p < 0.05 but covers the difference well under 95 % where one ticket wins most of
  the discordant images), and the normal interval (ci95_normal);
- how often the two predict the same class, and each ticket how often it agrees with the dense
  network (its teacher, where it distils) and how many of that network's mistakes it repeats
  (the same wrong class).
The statistics are analysis.paired_stats's. This is test-set sampling noise only: whether
these images resolve the difference between these two trained networks. Whether another seed
would repeat it is a different, larger question that one seed cannot answer.

The default pairs are every two finished tickets of a level, the variant later in
lottery.variants first (kd - weight_rewind, kd_rewind - lr_rewind, ...). Predictions come from
each ticket's final snapshot in inference mode, as the study evaluated it; each ticket's
accuracy recomputed here stands beside its results row's. Writes DIR/paired.json (settings,
tickets, pairs), DIR/paired.md, DIR/paired.png and DIR/predictions.npz (each ticket's predicted
class per test image, and the labels); a rerun recomputes them (43 s for the dense network and
five ResNet-20 tickets on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd import config as config_lib
from lottery_kd.analysis.paired_stats import holm, paired_test
from lottery_kd.analysis.sweep import open_study
from lottery_kd.runtime import out_paths
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study import results
from lottery_kd.study.checkpoints import CheckpointError, quiet_failed_restores
from lottery_kd.study.results import write_atomic
from lottery_kd.study.variants import DENSE, snapshot_name

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Pair:
    """Ticket `a` against ticket `b`, both at `level`: the difference is a - b."""

    level: int
    a: str
    b: str


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """'kd:weight_rewind,kd:lt' -> [('kd', 'weight_rewind'), ('kd', 'lt')] (a pair named twice
    once); a ValueError naming --pairs for anything else."""
    pairs = []
    for item in config_lib.parse_names(text):
        a, sep, b = item.partition(":")
        if not sep or not a or not b or a == b:
            raise ValueError(f"--pairs {item!r}: write each pair as A:B, two different variants "
                             "of the study (the difference is A - B), e.g. kd:weight_rewind")
        pairs.append((a, b))
    return list(dict.fromkeys(pairs))


def choose_pairs(tickets: dict[int, list[str]], order: Sequence[str],
                 wanted: Sequence[tuple[str, str]], levels: Sequence[int]) -> list[Pair]:
    """The pairs to test: `wanted` (or every two tickets, the later variant of `order` first)
    at each of `levels` (default: every level with two finished tickets). A ValueError naming
    the option if a level or a pair's ticket is not finished."""
    for level in levels:
        if len(tickets.get(level, [])) < 2:
            finished = ", ".join(str(lv) for lv in sorted(tickets) if len(tickets[lv]) > 1)
            raise ValueError(f"--levels {level}: the study has "
                             f"{len(tickets.get(level, [])) or 'no'} finished ticket(s) at level "
                             f"{level}, and a pair needs two (levels with two or more: "
                             f"{finished or 'none yet'})")
    chosen = []
    for level in levels or [lv for lv in sorted(tickets, reverse=True) if len(tickets[lv]) > 1]:
        have = sorted(tickets[level], key=lambda v: _rank(order, v))
        if not wanted:
            chosen += [Pair(level, a, b) for i, a in enumerate(have) for b in have[:i]]
            continue
        for a, b in wanted:
            for name in (a, b):
                if name not in have:
                    raise ValueError(f"--pairs {a}:{b}: level {level} has no finished {name} "
                                     f"ticket (finished there: {', '.join(have)}); choose "
                                     "among those, or name --levels")
            chosen.append(Pair(level, a, b))
    if not chosen:
        raise ValueError("no level of the study has two finished tickets yet: run it further")
    return chosen


def _rank(order: Sequence[str], variant: str) -> int:
    """A variant's place in lottery.variants (one the config no longer lists goes last)."""
    return order.index(variant) if variant in order else len(order)


def predict(run: Any, snapshot: PyTree) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) of every test image, in the split's order: the masked network
    in inference mode, normalised and in the precision the study trained in."""
    forward = run.trainer.kd_from_logits()[0]  # the teacher forward: logits, inference mode
    variables = {"params": masks_lib.apply(snapshot["params"], snapshot["masks"]),
                 "batch_stats": snapshot["batch_stats"]}
    split = run.data.test
    predicted, labels = [], []
    for local in split.batches():
        images, _, _ = run.parallel.shard(local, split.batch_size)
        classes = np.asarray(jax.device_get(jnp.argmax(forward(variables, images), -1)))
        keep = np.asarray(local[2], bool)
        predicted.append(classes[keep])
        labels.append(np.asarray(local[1])[keep])
    if not predicted:
        raise ValueError(f"{run.workdir}: the study's test split has no images to compare on")
    return np.concatenate(predicted), np.concatenate(labels)


def finished_tickets(run: Any) -> tuple[dict[int, list[str]], dict]:
    """{level: variants} of the tickets with a results row and a final snapshot, and the rows."""
    rows = {(r["level"], r["variant"]): r for r in results.read_rows_or_warn(run.results_path)}
    tickets: dict[int, list[str]] = {}
    for level, variant in rows:
        if level > 0 and run.snapshots.exists(snapshot_name(level, variant)):
            tickets.setdefault(level, []).append(variant)
    return tickets, rows


def run_paired(run_dir: str, out: str, *, pairs: str = "", levels: str = "",
               log: Callable[[str], None] = print) -> dict:
    """Test the chosen pairs of the study in `run_dir`; write out/paired.{json,md,png} and
    out/predictions.npz. Every argument is checked before any prediction."""
    out_paths.check_out_folder(out)
    out_dir = Path(out)
    run = open_study(run_dir)
    if run.parallel.process_count > 1:
        raise ValueError("lottery_kd.paired runs in one process; start it without a "
                         "multi-process launcher")
    wanted = parse_pairs(pairs) if pairs.strip() else []
    try:
        level_list = list(dict.fromkeys(int(x) for x in config_lib.parse_names(levels)))
    except ValueError:
        raise ValueError(f"--levels {levels!r}: give comma-separated level numbers, e.g. 10,8"
                         ) from None
    tickets, rows = finished_tickets(run)
    order = config_lib.parse_names(run.config.lottery.variants)
    chosen = choose_pairs(tickets, order, wanted, level_list)
    needed = sorted({(p.level, v) for p in chosen for v in (p.a, p.b)},
                    key=lambda t: (-t[0], _rank(order, t[1])))  # as the pairs' table reads
    if (0, DENSE) in rows and run.snapshots.exists(snapshot_name(0, DENSE)):
        needed.insert(0, (0, DENSE))
    predicted, accuracy, labels = {}, {}, None
    for i, (level, variant) in enumerate(needed):
        name = snapshot_name(level, variant)
        predicted[name], labels = predict(run, run.load_existing(name, "paired needs"))
        accuracy[name] = float(np.mean(predicted[name] == labels))
        log(f"[paired {i + 1}/{len(needed)}] {name}: test accuracy {100 * accuracy[name]:.2f} % "
            f"(results row {100 * rows[(level, variant)]['test_accuracy']:.2f} %)")
    dense = predicted.get(snapshot_name(0, DENSE))
    tickets = [_ticket(level, variant, accuracy, predicted, rows, dense, labels)
               for level, variant in needed]
    record = {"settings": {"run_dir": str(run_dir), "pairs": pairs,
                           "levels": levels},
              "test_images": int(len(labels)),
              "notes": _mismatches(tickets, len(labels)),
              "tickets": tickets,
              "pairs": _with_holm([_pair(p, predicted, labels) for p in chosen])}
    _write(out_dir, record, predicted, labels)
    return record


def _with_holm(pairs: list[dict]) -> list[dict]:
    """Each pair's Holm-adjusted p over the pairs of its level (a level's tests, one family)."""
    for level in {p["level"] for p in pairs}:
        family = [p for p in pairs if p["level"] == level]
        for p, adjusted in zip(family, holm([p["p_value"] for p in family])):
            p["p_holm"], p["holm_family"] = adjusted, len(family)
    return pairs


def _mismatches(tickets: Sequence[dict], n: int) -> list[str]:
    """A note for each ticket (a _ticket record) whose recomputed accuracy is not its results
    row's (more than half an image apart): its snapshot, or the path that evaluates it, is not
    the run's."""
    return [f"L{t['level']} {t['variant']}: {100 * t['test_accuracy']:.2f} % here, "
            f"{100 * t['results_row_accuracy']:.2f} % in its results row; its snapshot or "
            "evaluation path differs from the run's, so its pairs compare other networks than "
            "the rows do"
            for t in tickets if abs(t["test_accuracy"] - t["results_row_accuracy"]) > 0.5 / n]


def _ticket(level: int, variant: str, accuracy: dict, predicted: dict, rows: dict,
            dense: Optional[np.ndarray], labels: np.ndarray) -> dict:
    """One ticket's accuracy, its row's, and how it follows the dense network: the share of
    images where it predicts the dense network's class, and of the dense network's mistakes
    the share where it makes the same mistake (a distilled ticket's teacher is that network)."""
    name = snapshot_name(level, variant)
    ticket = {"level": level, "variant": variant, "sparsity": rows[(level, variant)]["sparsity"],
              "test_accuracy": accuracy[name],
              "results_row_accuracy": rows[(level, variant)]["test_accuracy"],
              "agrees_with_dense": None, "repeats_dense_mistakes": None}
    if dense is not None and level > 0:
        same, mistakes = predicted[name] == dense, dense != labels
        ticket["agrees_with_dense"] = float(np.mean(same))
        ticket["repeats_dense_mistakes"] = [int(np.sum(same & mistakes)), int(np.sum(mistakes))]
    return ticket


def _pair(pair: Pair, predicted: dict, labels: np.ndarray) -> dict:
    a = predicted[snapshot_name(pair.level, pair.a)]
    b = predicted[snapshot_name(pair.level, pair.b)]
    return {**dataclasses.asdict(pair), **paired_test(a == labels, b == labels),
            "agreement": float(np.mean(a == b))}


def markdown(record: dict) -> str:
    """The tickets' table and the pairs' table."""
    lines = ["# Paired tests on the test set", "",
             f"{record['test_images']:,} test images; each ticket's final snapshot in inference "
             "mode. Test-set sampling noise only: a seed's spread is another question.", "",
             *[f"**Warning:** {note}.\n" for note in record["notes"]],
             "| ticket | sparsity % | test accuracy % | results row % | agrees with dense % | "
             "repeats dense's mistakes |", "|---|---|---|---|---|---|"]
    for t in record["tickets"]:
        agree, repeats = "", ""
        if t["agrees_with_dense"] is not None:
            agree = f"{100 * t['agrees_with_dense']:.2f}"
            same, mistakes = t["repeats_dense_mistakes"]
            repeats = f"{same} of {mistakes} ({100 * same / max(mistakes, 1):.1f} %)"
        lines.append(f"| L{t['level']} {t['variant']} | {100 * t['sparsity']:.2f} | "
                     f"{100 * t['test_accuracy']:.2f} | {100 * t['results_row_accuracy']:.2f} | "
                     f"{agree} | {repeats} |")
    lines += ["", "Holm p: the McNemar p adjusted over the pairs tested at the same level. "
              "95 % interval: Tango's score interval of the difference (paired.json keeps the "
              "one exact given the discordant images, which goes with the exact test, too).",
              "", "| level | a − b | difference (points) | 95 % interval | only a right | "
              "only b right | McNemar p | Holm p | same class % |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in record["pairs"]:
        low, high = p["ci95"]
        lines.append(f"| {p['level']} | {p['a']} − {p['b']} | {100 * p['difference']:+.2f} | "
                     f"{100 * low:+.2f} to {100 * high:+.2f} | {p['a_only']} | {p['b_only']} | "
                     f"{_p_text(p['p_value'])} | {_p_text(p['p_holm'])} | "
                     f"{100 * p['agreement']:.2f} |")
    return "\n".join(lines) + "\n\n![each difference with its 95 % interval](paired.png)\n"


def _p_text(p: float) -> str:
    if p == 0.0:  # below the float range: mcnemar_p's exact tail underflows
        return "< 1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def plot(record: dict, path: Path) -> None:
    """Each pair's difference (points) with its 95 % interval (Tango's), one row per pair, zero
    marked; blue where the exact McNemar test gives p < 0.05, the point filled where Holm's
    adjusted p is below 0.05 too."""
    from lottery_kd.analysis import plotting

    pairs = record["pairs"]
    with plotting.figure(path, figsize=(7.5, 1.5 + 0.42 * len(pairs)), atomic=True) as (
            _, axis):
        for row, p in enumerate(reversed(pairs)):
            low, high = (100 * x for x in p["ci95"])
            color = "tab:blue" if p["p_value"] < 0.05 else "tab:gray"
            axis.plot([low, high], [row, row], color=color, linewidth=2)
            axis.plot([100 * p["difference"]], [row], "o", color=color, markeredgecolor=color,
                      markerfacecolor=color if p["p_holm"] < 0.05 else "white")
        axis.set_yticks(range(len(pairs)))
        axis.set_yticklabels([f"L{p['level']} {p['a']} − {p['b']}" for p in reversed(pairs)],
                             fontsize=8)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_xlabel("difference in test accuracy (points), 95 % interval (Tango)\nblue: "
                        "McNemar p < 0.05; filled: Holm p < 0.05 too (over the level's pairs)",
                        fontsize=8)
        axis.grid(axis="x", alpha=0.3)
        axis.set_title(f"Paired differences on the same {record['test_images']:,} test images",
                       fontsize=10)


def _write(out: Path, record: dict, predicted: dict, labels: np.ndarray) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        plot(record, out / "paired.png")
        temporary = out / "predictions.npz.tmp"
        with open(temporary, "wb") as file:  # a file object: savez adds no second suffix
            dtype = np.min_scalar_type(int(labels.max(initial=0)))  # uint8 for CIFAR-10
            np.savez_compressed(file, labels=labels.astype(dtype),
                                **{name: p.astype(dtype) for name, p in predicted.items()})
        os.replace(temporary, out / "predictions.npz")
        write_atomic(out / "paired.md", markdown(record))
        write_atomic(out / "paired.json", json.dumps(record, indent=1) + "\n")
    except OSError as error:
        raise ValueError(f"--out {out} cannot be written ({error.strerror or error}); choose "
                         "another --out") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: 0 when the files are written, 2 with a one-line error otherwise."""
    quiet_failed_restores()
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.paired",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the workdir of a study (its config and snapshots)")
    parser.add_argument("--out", required=True, help="a folder for paired.{json,md,png}")
    parser.add_argument("--pairs", default="", help="comma-separated A:B variant pairs, the "
                        "difference A - B (default: every two finished tickets of a level)")
    parser.add_argument("--levels", default="", help="comma-separated levels (default: every "
                        "level with two finished tickets)")
    args = parser.parse_args(argv)
    try:
        run_paired(args.run_dir, args.out, pairs=args.pairs, levels=args.levels)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'paired.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
