"""results.jsonl (one row per level x variant), summary.md and accuracy_vs_sparsity.png.

Rows are appended with a flush and fsync, one complete JSON line each. A line that cannot be read
(cut short by a crash, or damaged anywhere) is skipped on reading, never the rows after it, and
the study moves it to results.jsonl.damaged before appending (lottery_kd.jsonlines).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lottery_kd import jsonlines
from lottery_kd.jsonlines import NUMBER, write_atomic  # noqa: F401  (write_atomic: re-exported)

ROW_KEYS = ("level", "variant", "sparsity", "test_accuracy", "best_val_accuracy",
            "test_accuracy_at_best_val", "best_val_epoch", "epochs", "seconds")
# What a line of each log must hold to count as a record (jsonlines.scan).
ROW_FIELDS = {"level": (int,), "variant": (str,), "sparsity": NUMBER, "test_accuracy": NUMBER}
EPOCH_TIME_FIELDS = {"level": (int,), "variant": (str,), "steps": (int,), "seconds": NUMBER}
RESULTS = "results.jsonl"
# Wall time of every epoch a study trains (training plus evaluation, measured between epoch ends
# in one process), one JSON line each: the pace lottery_kd.status estimates the rest with.
EPOCH_TIMES = "epoch_times.jsonl"


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The valid rows of a results.jsonl, in file order (unreadable lines are skipped; use
    `scan_rows` to learn which)."""
    return jsonlines.scan(path, ROW_FIELDS)[0]


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


def set_aside_damaged(workdir: str | os.PathLike, log=print) -> None:
    """Move the unreadable lines of a study's logs to their .damaged side files (the study
    owning the workdir calls this when it starts)."""
    workdir = Path(workdir)
    jsonlines.set_aside(workdir / RESULTS, ROW_FIELDS, log)
    jsonlines.set_aside(workdir / EPOCH_TIMES, EPOCH_TIME_FIELDS, log)
    jsonlines.set_aside(workdir / "environment.jsonl", {}, log)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row durably.

    Unreadable lines are first moved to the side file (never dropped), and an earlier row for
    the same (level, variant) (one being redone because its snapshot was lost) is removed, so
    the file never holds two rows for a key.
    """
    path = Path(path)
    complete = jsonlines.set_aside(path, ROW_FIELDS,
                                   lambda message: print(message, file=sys.stderr))
    kept = [r for r in complete if (r["level"], r["variant"]) != (row["level"], row["variant"])]
    if len(kept) != len(complete):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    jsonlines.append(path, row)


def append_epoch_time(workdir: str | os.PathLike, record: dict) -> None:
    """Append one epoch's timing record to WORKDIR/epoch_times.jsonl (on a line of its own, even
    after a line a crash tore)."""
    jsonlines.append(Path(workdir) / EPOCH_TIMES, record, fsync=False)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Every JSON object line of an append-only log, oldest first: unreadable lines are
    skipped, and a missing file reads as empty."""
    return jsonlines.scan(path)[0]


def read_epoch_times(workdir: str | os.PathLike) -> list[dict]:
    """The epoch timing records of a study, oldest first."""
    return jsonlines.scan(Path(workdir) / EPOCH_TIMES, EPOCH_TIME_FIELDS)[0]


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
    workdir = Path(workdir)
    write_atomic(workdir / "summary.md", summary_markdown(rows, title, note))
    plot_accuracy_vs_sparsity(rows, workdir / "accuracy_vs_sparsity.png", title)


def variant_points(rows: Iterable[dict], variant: str) -> list[tuple[float, float]]:
    """(density, test accuracy %) of `variant` in plotting order: the dense point (level 0, if
    any) first, then the pruned rows by decreasing density, so the line never doubles back."""
    rows = list(rows)
    dense = [(1.0, 100 * r["test_accuracy"]) for r in rows if r["level"] == 0][:1]
    pruned = sorted(((1 - r["sparsity"], 100 * r["test_accuracy"]) for r in rows
                     if r["variant"] == variant and r["level"] > 0), reverse=True)
    return dense + pruned


# Plot markers, one per series, so that lines of near colours or on top of each other differ.
MARKERS = "osD^PX*<>hp"
# A point this many accuracy points below the best of its sparsity is a collapsed run.
COLLAPSED_POINTS = 25.0


def series_colors(count: int) -> list:
    """`count` distinct colours, never the grey of the dense and reference lines (tab10 without
    grey up to 9 series, else tab20 without its greys, repeating after 18)."""
    import matplotlib
    if count <= 9:
        palette = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]
    else:
        palette = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors)
                   if i not in (14, 15)]
    return [palette[i % len(palette)] for i in range(count)]


def collapsed(groups: Iterable[Iterable[float]],
              margin: float = COLLAPSED_POINTS) -> list[list[bool]]:
    """Per group (e.g. the variants at one sparsity), which values lie more than `margin` below
    the group's best: runs that collapsed. None are flagged if over a quarter would be."""
    groups = [[float(v) for v in group] for group in groups]
    flags = [[bool(group) and v < max(group) - margin for v in group] for group in groups]
    if 4 * sum(map(sum, flags)) > sum(map(len, flags)):
        return [[False] * len(group) for group in groups]
    return flags


def cut_y_axis(axes, kept: Iterable[float], off_scale: Iterable[tuple]) -> str:
    """Fit the y-axis to the `kept` values, leaving the off-scale (x, y, label, colour) points
    below it, each marked by a triangle on the bottom edge; returns a note naming their values
    for the caller to print, or "" (axis untouched) unless the cut enlarges the kept range at
    least 1.5 times."""
    kept, off_scale = [float(v) for v in kept], list(off_scale)
    if not kept or not off_scale:
        return ""
    low, high = min(kept), max(kept)
    if high - min(p[1] for p in off_scale) < 1.5 * max(high - low, 1e-9):
        return ""
    pad = 0.08 * max(high - low, 1.0)
    axes.set_ylim(low - pad, high + pad)
    values: dict[str, list[str]] = {}
    for x, y, label, color in off_scale:
        axes.scatter([x], [0.0], marker="v", s=30, color=color, clip_on=False, zorder=5,
                     transform=axes.get_xaxis_transform())
        values.setdefault(label, []).append(f"{y:.1f}")
    return "▼ below the axis: " + "; ".join(f"{label} {', '.join(ys)}"
                                             for label, ys in values.items())


def density_ticks(densities: Iterable[float], tolerance: float = 0.05) -> list[tuple[float, str]]:
    """(position, label) ticks of a log density axis, densest first: densities within
    `tolerance` (relative) of their cluster's first share one tick at their geometric mean (the
    chains of an iterative study differ a little), labelled with the sparsity % or its range."""
    clusters: list[list[float]] = []
    for density in sorted({d for d in densities if d > 0}, reverse=True):
        if clusters and density >= clusters[-1][0] * (1 - tolerance):
            clusters[-1].append(density)
        else:
            clusters.append([density])
    ticks = []
    for cluster in clusters:
        labels = sorted({f"{100 * (1 - d):.1f}" for d in cluster}, key=float)
        ticks.append((math.exp(sum(map(math.log, cluster)) / len(cluster)),
                      labels[0] if len(labels) == 1 else f"{labels[0]}–{labels[-1]}"))
    return ticks


def plot_accuracy_vs_sparsity(rows: list[dict], path: str | os.PathLike,
                              title: str) -> dict[str, list[tuple[float, float]]]:
    """Final test accuracy vs density (log axis, sparsity labels), one line per variant, dense
    dashed; runs that collapsed are left below a cut y-axis, named with their value.

    Returns {variant: [(x, y)]} read back from the drawn lines, for tests."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8.5, 4.5), dpi=120)
    dense = [r for r in rows if r["level"] == 0]
    drawn = {}
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["level"] > 0))
    colors = dict(zip(variants, series_colors(len(variants))))
    for index, variant in enumerate(variants):
        points = variant_points(rows, variant)
        line, = axes.plot([p[0] for p in points], [p[1] for p in points],
                          marker=MARKERS[index % len(MARKERS)], color=colors[variant],
                          label=variant)
        drawn[variant] = [(float(x), float(y)) for x, y in zip(line.get_xdata(),
                                                                line.get_ydata())]
    references = []
    if dense:
        references.append(100 * dense[0]["test_accuracy"])
        axes.axhline(references[0], color="gray", linestyle="--", label="dense")
    by_density: dict[float, list[tuple[str, float, float]]] = {}
    for variant, points in drawn.items():
        for x, y in points[1 if dense else 0:]:  # the dense point is a reference, not a run
            by_density.setdefault(round(x, 6), []).append((variant, x, y))
    groups = list(by_density.values())
    flags = collapsed([y for _, _, y in group] for group in groups)
    note = cut_y_axis(axes, references + [y for group, flag in zip(groups, flags)
                                          for (_, _, y), f in zip(group, flag) if not f],
                      [(x, y, variant, colors[variant]) for group, flag in zip(groups, flags)
                       for (variant, x, y), f in zip(group, flag) if f])
    axes.set_xscale("log")
    axes.invert_xaxis()
    ticks = density_ticks(1 - r["sparsity"] for r in rows)
    if ticks:
        axes.set_xticks([position for position, _ in ticks])
        axes.set_xticklabels([label for _, label in ticks], rotation=45, fontsize=8)
        axes.minorticks_off()
    axes.set_xlabel("sparsity % (log density axis)" + (f"\n{note}" if note else ""))
    axes.set_ylabel("test accuracy % at the end of training")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the data
    figure.tight_layout()
    temporary = Path(str(path) + ".tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)
    return drawn
