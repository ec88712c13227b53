"""The report's own plots: accuracy against sparsity next to the published numbers, and the
per-layer density of every ticket (learning curves and the overlap heat map are drawn by
lottery_kd.analysis.curves and .overlap). Every figure goes through lottery_kd.analysis.plotting.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from lottery_kd.analysis import plotting
from lottery_kd.analysis.report_runs import PUBLISHED_METHODS, network_order


def _shift_step(ticks: list[tuple[float, str]], lines: dict, count: int) -> float:
    """How far (log10 density) apart the `count` variants' points are drawn at one sparsity: a
    small share of the axis, and less than half the gap between neighbouring sparsities."""
    densities = [position for position, _ in ticks]
    span = math.log10(max(densities + [1e-9]) / min(densities + [1.0]))
    for line_points in lines.values():
        span = max(span, math.log10(max(p[0] for p in line_points) / min(densities + [1.0])))
    gaps = [math.log10(a / b) for a, b in zip(densities, densities[1:])]
    return min([0.04 * max(span, 0.1)] + [0.4 * g for g in gaps]) / max(count - 1, 1)


def _shifts(count: int, clear_middle: bool) -> list[float]:
    """Each of `count` variants' sideways place, in steps, centred on the true density; with
    `clear_middle` (published markers sit at the true density) none is drawn on it."""
    places = [index - (count - 1) / 2 for index in range(count)]
    if clear_middle and count % 2:
        places = [place + (0.5 if place >= 0 else -0.5) for place in places]
    return places


def _draw_variants(axes: Any, entries: Sequence[dict], variants: list[str], colors: dict,
                   key: str, step: float, clear_middle: bool = False
                   ) -> dict[int, list[tuple[str, float, float]]]:
    """Each variant's mean ± std against density, shifted sideways by its index (off the true
    density with `clear_middle`, where a published marker would hide under it); returns its
    drawn (variant, x, y) points per level, for the collapsed-run check."""
    by_level: dict[int, list[tuple[str, float, float]]] = {}
    for index, (variant, place) in enumerate(zip(variants, _shifts(len(variants),
                                                                    clear_middle))):
        points = sorted((1 - e["sparsity"], 100 * e[f"{key}_mean"], 100 * e[f"{key}_std"],
                         e["level"]) for e in entries if e["variant"] == variant
                        and not math.isnan(e[f"{key}_mean"]))
        if not points:
            continue
        shift = 10 ** (step * place)
        axes.errorbar([p[0] * shift for p in points], [p[1] for p in points],
                      yerr=[p[2] for p in points], capsize=3, color=colors[variant],
                      marker=plotting.MARKERS[index % len(plotting.MARKERS)], label=variant)
        for x, y, _, level in points:
            by_level.setdefault(level, []).append((variant, x * shift, y))
    return by_level


def _draw_references(axes: Any, entries: Sequence[dict], lines: dict, published: dict,
                     colors: dict, key: str) -> list[float]:
    """Our dense accuracy (dashed), the published lines (dotted, in their variant's colour) and
    the published dense accuracy; returns every value drawn, which the y-axis must show."""
    dense = [e for e in entries if e["variant"] == "dense"]
    references = []
    if dense and not math.isnan(dense[0][f"{key}_mean"]):
        references.append(100 * dense[0][f"{key}_mean"])
        axes.axhline(references[0], color="gray", linestyle="--", label="dense (ours)")
    for variant, points in lines.items():
        references += [p[1] for p in points]
        axes.plot([p[0] for p in points], [p[1] for p in points], linestyle=":", marker="x",
                  alpha=0.8, color=colors[variant], zorder=3,  # thin: over our markers
                  label=f"published {variant}" + (f" ({PUBLISHED_METHODS[variant]})"
                                                   if PUBLISHED_METHODS[variant] != variant
                                                   else ""))
    if published and published.get("dense"):
        references.append(published["dense"])
        axes.axhline(published["dense"], color="black", linestyle=":", alpha=0.5,
                     label="published dense")
    return references


def _label_accuracy_axes(axes: Any, entries: Sequence[dict], title: str, key: str, note: str,
                         legend_title: Optional[str]) -> None:
    """Axis labels (with the cut-axis note), the title saying what a point and a bar are, the
    grid, and the legend beside the axes."""
    count = "n" if key == "final" else "best_val_n"
    shifted = len({e["variant"] for e in entries if e["variant"] != "dense"}) > 1
    axes.set_xlabel("sparsity % (log density axis" + ("; each variant's points shifted a little "
                                                      "sideways)" if shifted else ")")
                    + (f"\n{note}" if note else ""))
    axes.set_ylabel("test accuracy % " + ("at the best-validation epoch" if key == "best_val"
                                          else "at the end of training"))
    runs = sorted({e[count] for e in entries if e["variant"] != "dense" and e[count]})
    spread = ("one run per point" if runs == [1] else
              f"mean over n={'–'.join(map(str, sorted({runs[0], runs[-1]})))} runs (seeds) "
              "per point, bars ± 1 std" + ("; no bar: n=1" if 1 in runs else "")
              if runs else "")
    axes.set_title(title + (f"\n{spread}" if spread else ""), fontsize=10)
    axes.grid(alpha=0.3)
    # beside the axes, not on them: with the published lines the legend is as tall as the plot
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title=legend_title,
                title_fontsize=7)


def plot_accuracy(entries: Sequence[dict], published: dict, same_protocol: bool, title: str,
                  path: Path, key: str, schedule_note: str = "") -> None:
    """Test accuracy (`key`) vs density, mean ± std over runs, one line per variant; published
    lines dotted in the colour of the same procedure (`schedule_note`: how their pruning
    differs from ours, if it does); a variant's points shifted a little sideways, so equal
    points stay visible; collapsed runs left below a cut y-axis."""
    variants = list(dict.fromkeys(e["variant"] for e in entries if e["variant"] != "dense"))
    lines = {v: p for v, p in (published or {}).get("lines", {}).items() if p}
    named = variants + [v for v in lines if v not in variants]  # published: the same colour
    colors = dict(zip(named, plotting.series_colors(len(named))))
    published_densities = [p[0] for points in lines.values() for p in points]
    ticks = plotting.density_ticks([1 - e["sparsity"] for e in entries if e["sparsity"] > 0]
                                   + published_densities)
    legend_title = None
    if lines or (published and published.get("dense")):
        legend_title = ("published (dotted): " + ("same training protocol" if same_protocol
                                                  else "other protocol,\n182 epochs on all 50k")
                        + (f";\n{schedule_note}" if schedule_note else ""))
    with plotting.figure(path, figsize=(10.5, 5)) as (_, axes):
        clear_middle = bool(lines)  # the published markers sit at the true densities
        spread = len(variants) + int(clear_middle and len(variants) % 2 == 1)  # places
        by_level = _draw_variants(axes, entries, variants, colors, key,
                                  _shift_step(ticks, lines, spread), clear_middle)
        references = _draw_references(axes, entries, lines, published, colors, key)
        groups = [by_level[level] for level in sorted(by_level)]  # left to right
        flags = plotting.collapsed([y for _, _, y in group] for group in groups)
        note = plotting.cut_y_axis(
            axes, references + [y for group, flag in zip(groups, flags)
                                for (_, _, y), f in zip(group, flag) if not f],
            [(x, y, variant, colors[variant]) for group, flag in zip(groups, flags)
             for (variant, x, y), f in zip(group, flag) if f])
        plotting.set_density_axis(axes, ticks, [] if ticks else [1.0])  # dense only: around 1
        _label_accuracy_axes(axes, entries, title, key, note, legend_title)


def plot_layers(densities: dict[str, dict[str, float]], title: str, path: Path) -> None:
    """The density of every layer (network order) of each distinct mask, one line each; the
    y-axis turns logarithmic when a layer keeps under a tenth, so sparse layers stay apart."""
    layers = network_order([layer for d in densities.values() for layer in d])
    palette = plotting.colormap("tab20") if len(densities) > 10 else None  # no repeated colours
    with plotting.figure(path, figsize=(max(7, 0.25 * len(layers) + 3) + 2.5, 4.5)) \
            as (_, axes):
        for index, (name, per_layer) in enumerate(densities.items()):
            axes.plot(range(len(layers)),
                      [per_layer.get(layer, float("nan")) for layer in layers],
                      marker=".", label=name, color=palette(index % 20) if palette else None)
        axes.set_xticks(range(len(layers)))
        few = len(layers) <= 8  # then the names fit level and larger
        axes.set_xticklabels([layer.replace("/kernel", "") for layer in layers],
                             rotation=0 if few else 90, fontsize=8 if few else 6)
        kept = [d for per_layer in densities.values() for d in per_layer.values() if d > 0]
        if kept and min(kept) < 0.1:  # a linear axis would flatten the sparse layers onto 0
            axes.set_yscale("log", nonpositive="clip")
            axes.set_ylim(min(kept) / 1.5, 1.2)
            axes.set_ylabel("density (fraction of weights kept, log scale)")
        else:
            axes.set_ylim(0, 1.05)
            axes.set_ylabel("density (fraction of weights kept)")
        axes.set_xlabel("layer, in network order")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        # beside the axes, not on them: one entry per distinct mask, sparsest last
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                    title="sparsity", title_fontsize=7)


def plot_accuracy_vs_flops(entries: Sequence[dict], title: str, path: Path, key: str) -> None:
    """Test accuracy (`key`) against each run's training FLOPs with the pruned weights skipped
    (log axis), one line per variant, the dense run a star: what a ticket's accuracy costs."""
    variants = list(dict.fromkeys(e["variant"] for e in entries if e["variant"] != "dense"))
    colors = dict(zip(variants, plotting.series_colors(len(variants))))
    with plotting.figure(path, figsize=(10.5, 5)) as (_, axes):
        for index, variant in enumerate(variants):
            points = sorted((e["train_flops_sparse"], 100 * e[f"{key}_mean"],
                             100 * e[f"{key}_std"]) for e in entries
                            if e["variant"] == variant and not math.isnan(e[f"{key}_mean"])
                            and not math.isnan(e["train_flops_sparse"]))
            if points:
                axes.errorbar([p[0] for p in points], [p[1] for p in points],
                              yerr=[p[2] for p in points], capsize=3, color=colors[variant],
                              marker=plotting.MARKERS[index % len(plotting.MARKERS)],
                              label=variant)
        for e in entries:
            if e["variant"] == "dense" and not math.isnan(e["train_flops_sparse"]):
                axes.plot([e["train_flops_sparse"]], [100 * e[f"{key}_mean"]], marker="*",
                          markersize=14, color="black", linestyle="none", label="dense")
        axes.set_xscale("log")
        axes.set_xlabel("training FLOPs of the run, pruned weights skipped (log axis; "
                        "a KD run includes its dense teacher's forward passes)")
        axes.set_ylabel("test accuracy % " + ("at the best-validation epoch" if key == "best_val"
                                              else "at the end of training"))
        levels = sorted({round(100 * e["sparsity"], 2) for e in entries if e["sparsity"] > 0})
        axes.set_title(title + "\neach line's points, right to left (less compute): sparsity "
                       + ", ".join(f"{s:g}" for s in levels) + " %", fontsize=10)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
