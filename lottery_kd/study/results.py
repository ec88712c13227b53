"""results.jsonl (one row per level x variant), summary.md and accuracy_vs_sparsity.png.

Rows are appended with a flush and fsync, one complete JSON line each. A line that cannot be read
(cut short by a crash, or damaged anywhere) is skipped on reading, never the rows after it, and
the study moves it to results.jsonl.damaged before appending (lottery_kd.study.jsonlines).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from lottery_kd.analysis import plotting
# Plot helpers that lived here first (now analysis.plotting), still importable from here.
from lottery_kd.analysis.plotting import (COLLAPSED_POINTS, MARKERS, collapsed,  # noqa: F401
                                          cut_y_axis, density_ticks, series_colors)
from lottery_kd.study import jsonlines
from lottery_kd.study.jsonlines import NUMBER, write_atomic  # noqa: F401  (write_atomic: re-exported)
from lottery_kd.study.workdir import Workdir

ROW_KEYS = ("level", "variant", "sparsity", "test_accuracy", "best_val_accuracy",
            "test_accuracy_at_best_val", "best_val_epoch", "epochs", "seconds")
# What a line of each log must hold to count as a record (jsonlines.scan).
ROW_FIELDS = {"level": (int,), "variant": (str,), "sparsity": NUMBER, "test_accuracy": NUMBER}
EPOCH_TIME_FIELDS = {"level": (int,), "variant": (str,), "steps": (int,), "seconds": NUMBER}
# Wall time of every epoch a study trains (training plus evaluation, measured between epoch ends
# in one process), one JSON line each: the pace lottery_kd.analysis.status estimates the rest with.
# The file's name; its path is Workdir(workdir).epoch_times.
EPOCH_TIMES = Workdir(".").epoch_times.name


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The valid rows of a results.jsonl, in file order (unreadable lines are skipped; use
    `scan_rows` to learn which)."""
    return jsonlines.scan(path, ROW_FIELDS)[0]


def read_rows_or_warn(path: str | os.PathLike) -> list[dict]:
    """read_rows, saying on stderr which lines were skipped: for the scripts that print tables,
    where a damaged row would otherwise read as a run not yet trained."""
    rows, damaged = scan_rows(path)
    if damaged:
        print(f"warning: {jsonlines.describe(damaged)}; their cells read as not run",
              file=sys.stderr)
    return rows


def scan_rows(path: str | os.PathLike) -> tuple[list[dict], list[jsonlines.DamagedLine]]:
    """(valid rows, unreadable lines) of a results.jsonl."""
    return jsonlines.scan(path, ROW_FIELDS)


def unique_rows(runs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """(run, row) over report-style runs ({"config", "rows", ...}), each (seed, variant,
    sparsity) once: two workdirs of one seed with different variant lists both hold the
    seed's dense run, which is one run, not two."""
    seen = set()
    for run in runs:
        for row in run["rows"]:
            key = (run["config"]["seed"], row["variant"], round(row["sparsity"], 4))
            if key not in seen:
                seen.add(key)
                yield run, row


def set_aside_damaged(workdir: str | os.PathLike,
                      log: Callable[[str], None] = print) -> None:
    """Move the unreadable lines of a study's logs to their .damaged side files (the study
    owning the workdir calls this when it starts)."""
    workdir = Workdir(workdir)
    jsonlines.set_aside(workdir.results, ROW_FIELDS, log)
    jsonlines.set_aside(workdir.epoch_times, EPOCH_TIME_FIELDS, log)
    jsonlines.set_aside(workdir.environment, {}, log)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row durably.

    Unreadable lines are first moved to the side file (never dropped), and an earlier row for
    the same (level, variant) (one being redone because its snapshot was lost) is moved to
    `path`.replaced, with a warning, so the file never holds two rows for a key and the earlier
    result is not lost.
    """
    path = Path(path)
    complete = jsonlines.set_aside(path, ROW_FIELDS,
                                   lambda message: print(message, file=sys.stderr))
    key = (row["level"], row["variant"])
    kept = [r for r in complete if (r["level"], r["variant"]) != key]
    if len(kept) != len(complete):
        side = path.with_name(path.name + ".replaced")
        for earlier in (r for r in complete if (r["level"], r["variant"]) == key):
            jsonlines.append(side, earlier)
        print(f"warning: level {key[0]} {key[1]} was trained again; its earlier row moved to "
              f"{side}", file=sys.stderr)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    jsonlines.append(path, row)


def append_epoch_time(workdir: str | os.PathLike, record: dict) -> None:
    """Append one epoch's timing record to WORKDIR/epoch_times.jsonl (on a line of its own, even
    after a line a crash tore)."""
    jsonlines.append(Workdir(workdir).epoch_times, record, fsync=False)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Every JSON object line of an append-only log, oldest first: unreadable lines are
    skipped, and a missing file reads as empty."""
    return jsonlines.scan(path)[0]


def read_epoch_times(workdir: str | os.PathLike) -> list[dict]:
    """The epoch timing records of a study, oldest first."""
    return jsonlines.scan(Workdir(workdir).epoch_times, EPOCH_TIME_FIELDS)[0]


def _percent(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.2f}"


def summary_markdown(rows: Iterable[dict], title: str = "Results", note: str = "") -> str:
    """A markdown table: one line per level, a column per variant (final / at-best-val test acc).

    `note` (e.g. the protocol and the settings that differ from it) goes under the title."""
    rows = list(rows)
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["level"] > 0))
    levels = sorted({r["level"] for r in rows})
    by_key = {(r["level"], r["variant"]): r for r in rows}
    lines = [f"# {title}", ""] + ([note, ""] if note else []) + [
             "Test accuracy (%) at the end of training; in brackets, at the epoch of best "
             "validation accuracy (when a validation split exists).", ""]
    dense = [r for r in rows if r["level"] == 0]
    if dense:
        d = dense[0]
        lines += [f"Dense (level 0): {_percent(d['test_accuracy'])} "
                  f"({_percent(d.get('test_accuracy_at_best_val'))}), "
                  f"{d['epochs']:.4g} epochs, {d['seconds']:.0f} s", ""]
    header = ["level", "sparsity %"] + variants
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for level in levels:
        if level == 0:
            continue
        level_rows = [by_key[(level, v)] for v in variants if (level, v) in by_key]
        sparsities = sorted({round(100 * r["sparsity"], 2) for r in level_rows})
        cells = [str(level), "/".join(f"{s:.2f}" for s in sparsities)]
        for variant in variants:
            row = by_key.get((level, variant))
            cells.append("" if row is None else f"{_percent(row['test_accuracy'])} "
                         f"({_percent(row.get('test_accuracy_at_best_val'))})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(workdir: str | os.PathLike, rows: list[dict], title: str,
                  note: str = "") -> None:
    """Rewrite summary.md and accuracy_vs_sparsity.png from all rows so far (atomically)."""
    workdir = Workdir(workdir)
    write_atomic(workdir.summary, summary_markdown(rows, title, note))
    plot_accuracy_vs_sparsity(rows, workdir.accuracy_plot, title)


def variant_points(rows: Iterable[dict], variant: str) -> list[tuple[float, float]]:
    """(density, test accuracy %) of `variant` in plotting order: the dense point (level 0, if
    any) first, then the pruned rows by decreasing density, so the line never doubles back."""
    rows = list(rows)
    dense = [(1.0, 100 * r["test_accuracy"]) for r in rows if r["level"] == 0][:1]
    pruned = sorted(((1 - r["sparsity"], 100 * r["test_accuracy"]) for r in rows
                     if r["variant"] == variant and r["level"] > 0), reverse=True)
    return dense + pruned


def _cut_collapsed(axes, drawn: dict[str, list[tuple[float, float]]], references: list[float],
                   colors: dict, dense: bool) -> str:
    """Leave the runs that collapsed (far below the others of their density) under a cut
    y-axis; returns the note naming them ('' if none). The dense point is a reference only."""
    by_density: dict[float, list[tuple[str, float, float]]] = {}
    for variant, points in drawn.items():
        for x, y in points[1 if dense else 0:]:  # the dense point is a reference, not a run
            by_density.setdefault(round(x, 6), []).append((variant, x, y))
    groups = list(by_density.values())
    flags = plotting.collapsed([y for _, _, y in group] for group in groups)
    return plotting.cut_y_axis(
        axes, references + [y for group, flag in zip(groups, flags)
                            for (_, _, y), f in zip(group, flag) if not f],
        [(x, y, variant, colors[variant]) for group, flag in zip(groups, flags)
         for (variant, x, y), f in zip(group, flag) if f])


def plot_accuracy_vs_sparsity(rows: list[dict], path: str | os.PathLike,
                              title: str) -> dict[str, list[tuple[float, float]]]:
    """Final test accuracy vs density (log axis, sparsity labels), one line per variant, dense
    dashed; runs that collapsed are left below a cut y-axis, named with their value. Written
    atomically: summary.md's readers never meet half a plot.

    Returns {variant: [(x, y)]} read back from the drawn lines, for tests."""
    dense = [r for r in rows if r["level"] == 0]
    drawn = {}
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["level"] > 0))
    colors = dict(zip(variants, plotting.series_colors(len(variants))))
    with plotting.figure(path, figsize=(8.5, 4.5), atomic=True) as (_, axes):
        for index, variant in enumerate(variants):
            points = variant_points(rows, variant)
            line, = axes.plot([p[0] for p in points], [p[1] for p in points],
                              marker=plotting.MARKERS[index % len(plotting.MARKERS)],
                              color=colors[variant], label=variant)
            drawn[variant] = [(float(x), float(y)) for x, y in zip(line.get_xdata(),
                                                                    line.get_ydata())]
        references = []
        if dense:
            references.append(100 * dense[0]["test_accuracy"])
            axes.axhline(references[0], color="gray", linestyle="--", label="dense")
        if not variants:  # otherwise every line starts at the dense point
            if dense:
                axes.plot([1.0], references, marker="*", markersize=12, color="gray",
                          linestyle="none", label="_dense point")
            axes.text(0.5, 0.3, "no pruned run has finished yet", transform=axes.transAxes,
                      ha="center", color="gray")
        note = _cut_collapsed(axes, drawn, references, colors, bool(dense))
        plotting.set_density_axis(axes, plotting.density_ticks(1 - r["sparsity"] for r in rows),
                                  [1.0] if dense else [])
        axes.set_xlabel("sparsity % (log density axis)" + (f"\n{note}" if note else ""))
        axes.set_ylabel("test accuracy % at the end of training")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the data
    return drawn
