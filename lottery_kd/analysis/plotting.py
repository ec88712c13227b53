"""How every figure of the package is made: a headless backend, one palette and marker set, and
one way to save and close, so a study's summary plot, the report's and the tools' look alike.

Matplotlib is imported only when a figure is drawn, never by importing this module: a study, a
status query or a report without plots does not pay for it. The backend is Agg (files only), as
training machines have no display.

    with plotting.figure(path, figsize=(7, 5)) as (figure, axes):
        axes.plot(...)          # laid out tightly, saved to `path` and closed on leaving
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

DPI = 120
# Plot markers, one per series, so that lines of near colours or on top of each other differ.
MARKERS = "osD^PX*<>hp"
# A point this many accuracy points below the best of its sparsity is a collapsed run.
COLLAPSED_POINTS = 25.0


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (writes files, needs no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def colormap(name: str) -> Any:
    """The registered matplotlib colormap `name` (e.g. "tab20"), to call with an index."""
    import matplotlib
    return matplotlib.colormaps[name]


@contextlib.contextmanager
def figure(path: str | os.PathLike, *, figsize: tuple[float, float], nrows: int = 1,
           ncols: int = 1, squeeze: bool = True, tight_bbox: bool = False,
           atomic: bool = False) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) of a new figure (plt.subplots) that is laid out tightly and saved as PNG to
    `path` when the block ends, and closed in any case (an error saves nothing).

    `tight_bbox` crops the file to what was drawn, legends and colour bars beside the axes
    included; `atomic` writes through a temporary file, so a reader (or a crash) never meets a
    half-written plot."""
    plt = pyplot()
    created, axes = plt.subplots(nrows, ncols, figsize=figsize, dpi=DPI, squeeze=squeeze)
    try:
        yield created, axes
        created.tight_layout()
        options = {"bbox_inches": "tight"} if tight_bbox else {}
        if atomic:
            temporary = Path(str(path) + ".tmp.png")  # the suffix tells savefig the format
            created.savefig(temporary, **options)
            os.replace(temporary, path)
        else:
            created.savefig(path, **options)
    finally:
        plt.close(created)


def series_colors(count: int) -> list:
    """`count` distinct colours, never the grey of the dense and reference lines (tab10 without
    grey up to 9 series, else tab20 without its greys, repeating after 18)."""
    if count <= 9:
        palette = [c for i, c in enumerate(colormap("tab10").colors) if i != 7]
    else:
        palette = [c for i, c in enumerate(colormap("tab20").colors) if i not in (14, 15)]
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


def cut_y_axis(axes: Any, kept: Iterable[float], off_scale: Iterable[tuple]) -> str:
    """Fit the y-axis to the `kept` values, leaving the off-scale (x, y, label, colour) points
    below it, each marked by a triangle on the bottom edge; returns a note naming their values
    for the caller to print, or "" (axis untouched) unless the cut enlarges the kept range at
    least 1.5 times. So one collapsed run does not squash the others' differences flat."""
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


def set_density_axis(axes: Any, ticks: list[tuple[float, str]],
                     densities: Iterable[float] = ()) -> None:
    """A log density x-axis, densest left, labelled at `ticks` (density_ticks) with sparsities,
    spanning the ticks and the other plotted `densities` (a horizontal line alone sets no span:
    matplotlib would pick one reaching far past density 1). Without ticks the default ones are
    labelled with sparsities too, never with densities under a sparsity label."""
    from matplotlib.ticker import FuncFormatter
    axes.set_xscale("log")
    span = [d for d in [position for position, _ in ticks] + list(densities) if d > 0]
    if span:
        axes.set_xlim(max(span) * 1.25, min(span) / 1.25)  # densest left
    elif not axes.xaxis_inverted():
        axes.invert_xaxis()
    axes.minorticks_off()
    if ticks:
        axes.set_xticks([position for position, _ in ticks])
        axes.set_xticklabels([label for _, label in ticks], rotation=45, fontsize=8)
    else:
        axes.xaxis.set_major_formatter(FuncFormatter(lambda d, _: f"{100 * (1 - d):.3g}"))
