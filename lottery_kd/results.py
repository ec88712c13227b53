"""results.jsonl (one row per level x variant), summary.md and accuracy_vs_sparsity.png.

Rows are appended with a flush and fsync, one complete JSON line each; a partial last line left by
a crash is ignored on reading (and rewritten by the resumed run).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional

ROW_KEYS = ("level", "variant", "sparsity", "test_accuracy", "best_val_accuracy",
            "test_accuracy_at_best_val", "best_val_epoch", "epochs", "seconds")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Complete rows of a results.jsonl (a torn last line from a crash is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open() as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


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


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row durably.

    First drops a torn trailing line and any earlier row for the same (level, variant) (one that
    is being redone because its snapshot was lost), so the file never holds two rows for a key.
    """
    path = Path(path)
    complete = read_rows(path)
    kept = [r for r in complete if (r["level"], r["variant"]) != (row["level"], row["variant"])]
    if path.exists() and (len(path.read_text().splitlines()) != len(complete)
                          or len(kept) != len(complete)):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# Wall time of every epoch a study trains (training plus evaluation, measured between epoch ends
# in one process), one JSON line each: the pace lottery_kd.status estimates the rest with.
EPOCH_TIMES = "epoch_times.jsonl"


def append_epoch_time(workdir: str | os.PathLike, record: dict) -> None:
    """Append one epoch's timing record to WORKDIR/epoch_times.jsonl (on a line of its own, even
    after a line a crash tore)."""
    path = Path(workdir) / EPOCH_TIMES
    with path.open("ab") as handle:
        torn = handle.tell() > 0 and path.read_bytes()[-1:] != b"\n"
        handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Every complete JSON line of an append-only log, oldest first: lines a crash tore are
    skipped, and a missing file reads as empty."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_epoch_times(workdir: str | os.PathLike) -> list[dict]:
    """The epoch timing records of a study, oldest first."""
    return read_json_lines(Path(workdir) / EPOCH_TIMES)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never half a file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


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


def plot_accuracy_vs_sparsity(rows: list[dict], path: str | os.PathLike,
                              title: str) -> dict[str, list[tuple[float, float]]]:
    """Test accuracy vs density (log axis, sparsity labels), one line per variant, dense dashed.

    Returns {variant: [(x, y)]} read back from the drawn lines, for tests."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    dense = [r for r in rows if r["level"] == 0]
    drawn = {}
    for variant in dict.fromkeys(r["variant"] for r in rows if r["level"] > 0):
        points = variant_points(rows, variant)
        line, = axes.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                          label=variant)
        drawn[variant] = [(float(x), float(y)) for x, y in zip(line.get_xdata(),
                                                                line.get_ydata())]
    if dense:
        axes.axhline(100 * dense[0]["test_accuracy"], color="gray", linestyle="--",
                     label="dense")
    axes.set_xscale("log")
    axes.invert_xaxis()
    ticks = sorted({round(1 - r["sparsity"], 4) for r in rows if r["sparsity"] < 1}, reverse=True)
    if ticks:
        axes.set_xticks(ticks)
        axes.set_xticklabels([f"{100 * (1 - t):.1f}" for t in ticks], rotation=45, fontsize=8)
        axes.minorticks_off()
    axes.set_xlabel("sparsity % (log density axis)")
    axes.set_ylabel("test accuracy %")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    temporary = Path(str(path) + ".tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, path)
    return drawn
