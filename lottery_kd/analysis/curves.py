"""Learning curves of a study's runs, read back from the TensorBoard events it wrote.

Each training run logs one scalar event per epoch to WORKDIR/tensorboard/level_<L>_<variant>/
(lottery_kd.training.tensorboard). The events are read here without TensorFlow: the TFRecord framing
(length, its CRC, data, data CRC) around serialized Event protos. A resumed run has several
event files; where two hold the same step, the later file's values win.
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

from tensorboard.compat.proto import event_pb2

from lottery_kd.analysis import plotting
from lottery_kd.study.results import unique_rows
from lottery_kd.study.workdir import Workdir

RUN_DIR = re.compile(r"level_(\d+)_(.+)")
EVENTS_FILE = re.compile(r"events\.out\.tfevents\.(\d+(?:\.\d+)?)")


def _written_at(path: Path) -> tuple[float, str]:
    """An event file's creation time, from its name (the writer puts time.time() there)."""
    match = EVENTS_FILE.match(path.name)
    return (float(match.group(1)) if match else 0.0, path.name)


def read_scalars(events_dir: str | os.PathLike) -> list[dict[str, float]]:
    """[{"step": s, tag: value, ...}] of every event file in `events_dir`, sorted by step."""
    by_step: dict[int, dict[str, float]] = {}
    files = sorted(Path(events_dir).glob("events.out.tfevents.*"), key=_written_at)
    for path in files:
        for event in _events(path.read_bytes()):
            if event.summary.value:
                by_step.setdefault(int(event.step), {}).update(
                    {value.tag: float(value.simple_value) for value in event.summary.value})
    return [{"step": step, **values} for step, values in sorted(by_step.items())]


def _events(data: bytes):
    """The Event protos of one file; a torn last record (a crash mid-write) ends the file."""
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        end = offset + 12 + length
        if end + 4 > len(data):
            return
        try:
            yield event_pb2.Event.FromString(data[offset + 12:end])
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged record ends it
            return
        offset = end + 4


def run_curves(run_dir: str | os.PathLike) -> dict[tuple[int, str], list[dict[str, float]]]:
    """{(level, variant): per-epoch rows} for every training run of a study's workdir."""
    root = Workdir(run_dir).tensorboard_root
    curves = {}
    if not root.is_dir():
        return curves
    for events_dir in sorted(root.iterdir()):
        match = RUN_DIR.fullmatch(events_dir.name)
        if match and events_dir.is_dir():
            rows = read_scalars(events_dir)
            if rows:
                curves[(int(match.group(1)), match.group(2))] = rows
    return dict(sorted(curves.items()))


def finished_curves(runs: list[dict]) -> list[dict]:
    """Per (sparsity, variant) test-accuracy curves of the finished runs, averaged over seeds.

    `runs` are analysis.report_runs.load_run dicts; a run counts once its row is in results.jsonl
    (so the curves match the tables). Each entry: level, sparsity, variant, n, and per epoch
    the mean and standard deviation over the n runs that logged it.
    """
    import statistics

    gathered: dict[tuple[float, str], dict] = {}
    curves_of: dict[str, dict] = {}
    for run, row in unique_rows(runs):
        if str(run["dir"]) not in curves_of:
            curves_of[str(run["dir"])] = run_curves(run["dir"])
        rows = curves_of[str(run["dir"])].get((row["level"], row["variant"]))
        if not rows:
            continue
        entry = gathered.setdefault((round(row["sparsity"], 4), row["variant"]),
                                    {"level": row["level"], "per_epoch": {}, "n": 0})
        entry["n"] += 1
        for point in rows:
            if "test_accuracy" in point and "epoch" in point:
                entry["per_epoch"].setdefault(round(point["epoch"], 4), []).append(
                    point["test_accuracy"])
    out = []
    for (sparsity, variant), entry in gathered.items():
        epochs = sorted(entry["per_epoch"])
        values = [entry["per_epoch"][e] for e in epochs]
        out.append({"level": entry["level"], "sparsity": sparsity, "variant": variant,
                    "n": entry["n"], "epochs": epochs,
                    "test_accuracy_mean": [round(statistics.fmean(v), 6) for v in values],
                    "test_accuracy_std": [round(statistics.stdev(v), 6) if len(v) > 1 else 0.0
                                          for v in values]})
    return out


def _runs(counts) -> str:
    """'n=2 runs' or 'n=1–2 runs' for the run counts of some curves."""
    counts = sorted(set(counts))
    return f"n={'–'.join(map(str, sorted({counts[0], counts[-1]})))} run" + \
        ("" if counts == [1] else "s")


def _draw_panel(panel, shown: list[dict], start: float, colors: dict,
                handles: dict[str, object]) -> list[tuple[str, list, list]]:
    """Draw the `shown` curves from epoch `start` on (the dense run dashed, the others with their
    ± std band when averaged over several runs), recording one line per variant in `handles` for
    the legend; returns the (variant, epochs, mean) drawn."""
    drawn = []
    for curve in shown:
        points = [(e, 100 * m, 100 * s) for e, m, s in
                  zip(curve["epochs"], curve["test_accuracy_mean"],
                      curve["test_accuracy_std"]) if e >= start]
        if not points:
            continue
        epochs, mean, std = (list(values) for values in zip(*points))
        drawn.append((curve["variant"], epochs, mean))
        if curve["variant"] == "dense":
            handles["dense"], = panel.plot(epochs, mean, color="gray", linestyle="--")
            continue
        color = colors[curve["variant"]]
        marker = plotting.MARKERS[list(colors).index(curve["variant"]) % len(plotting.MARKERS)]
        handles[curve["variant"]], = panel.plot(  # a marker each: near lines stay apart
            epochs, mean, marker=marker, markersize=4, markevery=max(1, len(epochs) // 12),
            color=color)
        if curve["n"] > 1:
            panel.fill_between(epochs, [m - s for m, s in zip(mean, std)],
                               [m + s for m, s in zip(mean, std)], color=color, alpha=0.15)
    return drawn


def _cut_zoom(panel, drawn: list[tuple[str, list, list]], colors: dict, start: float,
              last_epoch: float) -> str:
    """The zoom panel's y-axis fitted to the last quarter of training (the second half starts
    before a learning-rate drop, whose jump would flatten the final tenths); a collapsed run
    is left below it. Returns the note naming the runs left below ('' if none)."""
    finals = [line for line in drawn if line[0] != "dense"]
    [flags] = plotting.collapsed([[mean[-1] for _, _, mean in finals]])
    off = {variant for (variant, _, _), f in zip(finals, flags) if f}
    tail = (start + last_epoch) / 2
    kept = [y for variant, epochs, mean in drawn if variant not in off
            for e, y in zip(epochs, mean) if e >= tail]
    note = plotting.cut_y_axis(panel, kept, [(epochs[-1], mean[-1], variant, colors[variant])
                                             for variant, epochs, mean in finals
                                             if variant in off])
    tail_values = [y for _, epochs, mean in drawn for e, y in zip(epochs, mean) if e >= tail]
    if tail_values and not note:  # nothing left below: every run's last quarter in view
        pad = 0.15 * max(max(tail_values) - min(tail_values), 0.5)
        panel.set_ylim(min(tail_values) - pad, max(tail_values) + pad)
    return note


def plot_curves(curves: list[dict], variants: list[str], title: str,
                path: str | os.PathLike) -> None:
    """Test accuracy against epoch, one column per sparsity (the dense run dashed in each).

    The top row shows whole runs; the bottom row zooms into the second half of training,
    where the variants' final accuracies, a few tenths apart, can be told apart (runs that
    collapsed are left below its cut y-axis, named under it). One legend, beside the panels.
    """
    dense = [c for c in curves if c["variant"] == "dense"]
    sparsities = sorted({c["sparsity"] for c in curves if c["variant"] != "dense"}) or [0.0]
    last_epoch = max((e for c in curves for e in c["epochs"]), default=1.0)
    named = list(dict.fromkeys([v for v in variants if v != "dense"] +
                               [c["variant"] for c in curves if c["variant"] != "dense"]))
    colors = dict(zip(named, plotting.series_colors(len(named))))
    handles: dict[str, object] = {}  # one line per variant, for the legend
    # the legend beside the panels is kept in the file (tight_bbox)
    with plotting.figure(path, figsize=(4.6 * len(sparsities), 7.2), nrows=2,
                         ncols=len(sparsities), squeeze=False, tight_bbox=True) as (figure, axes):
        for column, sparsity in enumerate(sparsities):
            shown = dense + sorted((c for c in curves if c["sparsity"] == sparsity
                                    and c["variant"] != "dense"),
                                   key=lambda c: (variants.index(c["variant"])
                                                  if c["variant"] in variants else len(variants)))
            for row, start in enumerate((0.0, last_epoch / 2)):
                panel = axes[row][column]
                drawn = _draw_panel(panel, shown, start, colors, handles)
                note = _cut_zoom(panel, drawn, colors, start, last_epoch) if row == 1 else ""
                runs = sorted({c["n"] for c in shown if c["variant"] != "dense"})
                panel.set_title(f"{100 * sparsity:.2f} % sparse"
                                + (f", zoom: epochs {start:g} to {last_epoch:g},\ny fitted to "
                                   f"epoch {math.ceil((start + last_epoch) / 2):g} on" if start else
                                   f", {_runs(runs)} per variant" if runs else ""), fontsize=9)
                panel.set_xlabel("epoch" + (f"\n{note}" if note else ""))
                panel.set_ylabel("test accuracy %")
                panel.grid(alpha=0.3)
        order = [v for v in named if v in handles]
        labels = order
        if "dense" in handles:
            order = ["dense"] + order
            labels = [f"dense ({_runs([d['n'] for d in dense])})"] + labels
        figure.legend([handles[v] for v in order], labels, fontsize=7, loc="center left",
                      bbox_to_anchor=(1.0, 0.5))
        figure.suptitle(f"{title}\nmean over n runs (seeds), shaded band ± 1 std; the dense "
                        "run dashed", fontsize=10)
