"""Linear paths between a study's saved snapshots: evaluation only, nothing is trained.

`--levels` (Paul et al. 2023, "Unmasking the lottery ticket hypothesis"): for a retrain variant V,
the test error along the straight line between the trained tickets of V at successive levels of
the study, L -> L', L' the next level it has; the chain starts at the trained dense network
(level 0, from which level 1 is pruned). In an iterative study level L' is pruned from level L's
V final weights, so each pair is one IMP step of one chain; in a one-shot study every level is
pruned from the dense network (the table says so).

`--pruned-dense` (Evci et al. 2022, "Gradient flow in sparse neural networks and how lottery
tickets win": do tickets re-learn the pruning solution?): for each ticket (level L, variant V),
the line from its trained weights (alpha 0) to the pruned dense solution (alpha 1), the weights
its mask was pruned from times that mask, with their BatchNorm statistics (not recalibrated).
Those weights are the trained dense network (level_0_dense) for level 1 and every one-shot level,
level L-1's V final weights for iterative level L. The whole path lies in the ticket's subspace.

Along either path the parameters and the BatchNorm statistics are interpolated, (1 - alpha) *
start + alpha * end, and the network is evaluated under the union of the two endpoints' masks,
i.e. masked by neither: both endpoints are exactly 0 off their own masks, so a weight that the
sparser end pruned shrinks linearly to 0 on the way.

The ends of these paths may differ much in error (a pruned dense solution is not retrained), so
the barrier is the path's height above the straight line between its ends' errors,

    barrier = max_alpha [err(alpha) - ((1 - alpha) err(0) + alpha err(1))]  >= 0,

0 for a path no worse than that line, ~0 when the two solutions share a linearly connected basin.
Frankle et al.'s max error - mean of the ends (lmc.error_barrier, what --rewind reports; the same
number when the ends' errors are equal) is recorded too, as barrier_vs_mean: for ends of unequal
error it counts half their difference even on a path that falls monotonically.

Writes DIR/lmc_levels.{json,md,png} or DIR/lmc_pruned_dense.{json,md,png}, each whole or not at
all; a rerun recomputes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lottery_kd import config as config_lib
from lottery_kd.analysis.lmc import error_barrier, interpolate
from lottery_kd.analysis.sweep import open_study
from lottery_kd.runtime import out_paths
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study.results import write_atomic
from lottery_kd.study.variants import DENSE, snapshot_name

PyTree = Any
Evaluate = Callable[[PyTree, PyTree, PyTree], "tuple[float, float]"]  # -> (accuracy, loss)
MODES = {"levels": "--levels", "pruned_dense": "--pruned-dense"}


@dataclasses.dataclass(frozen=True)
class Pair:
    """One path: from snapshot `start` (alpha 0) to `end` (alpha 1) for `variant`; `level` is
    the ticket's level (--pruned-dense) or the start's (--levels), `end_level` the end's."""

    variant: str
    level: int
    start: str
    end: str
    end_level: int


def linear_barrier(alphas: Sequence[float], errors: Sequence[float]) -> float:
    """The path's highest error above the straight line between its ends' errors (>= 0)."""
    return float(max(e - ((1.0 - a) * errors[0] + a * errors[-1])
                     for a, e in zip(alphas, errors)))


def union_masks(a: PyTree, b: PyTree) -> PyTree:
    """Where either mask keeps a weight: the path is masked by neither endpoint's mask."""
    return jax.tree.map(jnp.logical_or, a, b)


def pruned_solution(source: PyTree, masks: PyTree) -> PyTree:
    """The pruned dense solution of a ticket: the weights its mask was pruned from (`source`,
    a snapshot) times the mask, with the source's BatchNorm statistics."""
    return {"params": masks_lib.apply(source["params"], masks),
            "batch_stats": source["batch_stats"], "masks": masks}


def path_errors(evaluate: Evaluate, start: PyTree, end: PyTree, points: int = 11) -> dict:
    """Test error and loss at `points` evenly spaced alphas on the line from `start` to `end`
    ({"params", "batch_stats", "masks"}), evaluated under the union of their masks; with the
    barriers (linear_barrier, lmc.error_barrier) and the endpoints' errors."""
    if points < 2:
        raise ValueError(f"--points must be >= 2 (the endpoints), got {points}")
    masks = union_masks(start["masks"], end["masks"])
    alphas = [i / (points - 1) for i in range(points)]
    errors, losses = [], []
    for alpha in alphas:
        accuracy, loss = evaluate(interpolate(start["params"], end["params"], alpha),
                                  interpolate(start["batch_stats"], end["batch_stats"], alpha),
                                  masks)
        errors.append(1.0 - float(accuracy))
        losses.append(float(loss))
    return {"alphas": alphas, "test_error": errors, "test_loss": losses,
            "barrier": linear_barrier(alphas, errors), "barrier_vs_mean": error_barrier(errors),
            "endpoint_errors": [errors[0], errors[-1]]}


class SnapshotPaths:
    """The paths of one mode between the snapshots of the study in `run_dir`."""

    def __init__(self, run_dir: str | os.PathLike, *, log=print):
        self.run = open_study(run_dir)
        self.log = log
        config = self.run.config
        if config.dynamic.method:
            raise ValueError(f"{self.run.workdir} is a dynamic sparse study (dynamic.method="
                             f"{config.dynamic.method}): it has no pruning levels to follow; "
                             "give a lottery-ticket study")
        self.oneshot = config.prune.schedule == "oneshot"
        self.dense = snapshot_name(0, DENSE)
        if not self.run.snapshots.exists(self.dense):
            raise ValueError(f"{self.run.workdir} holds no trained dense network ({self.dense}) "
                             "yet: run the study first")

    def tickets(self, variant: str) -> list[int]:
        """The levels of `variant` whose trained ticket is in the study, in order."""
        prefix, suffix = "level_", f"_{variant}"
        levels = [name[len(prefix):-len(suffix)] for name in self.run.snapshots.names()
                  if name.startswith(prefix) and name.endswith(suffix)]
        return sorted(int(level) for level in levels if level.isdigit() and int(level) > 0)

    def check_variants(self, variants: Sequence[str]) -> list[str]:
        """`variants`, each one of the study's with at least one trained ticket; a ValueError
        naming --variants otherwise."""
        known = config_lib.parse_names(self.run.config.lottery.variants)
        if not variants:
            raise ValueError(f"--variants names none; give some of the study's: "
                             f"{', '.join(known)}")
        for variant in variants:
            if variant not in known:
                raise ValueError(f"--variants {variant}: not a variant of this study (its "
                                 f"lottery.variants: {', '.join(known)}); choose among those")
            if not self.tickets(variant):
                raise ValueError(f"--variants {variant}: the study has no trained {variant} "
                                 f"ticket yet (no level_<L>_{variant} snapshot in "
                                 f"{self.run.workdir}), only its dense level 0: run the study "
                                 "further, or choose another variant")
        return list(dict.fromkeys(variants))

    def source(self, level: int, variant: str) -> str:
        """The snapshot whose final weights level `level`'s `variant` mask was pruned from."""
        if level == 1 or self.oneshot:
            return self.dense
        return snapshot_name(level - 1, variant)

    def pairs(self, mode: str, variants: Sequence[str]) -> list[Pair]:
        """Every path of `mode` ('levels' or 'pruned_dense') for `variants`, each snapshot
        checked to be in the study before anything is evaluated."""
        pairs = []
        flag = MODES[mode]
        for variant in self.check_variants(variants):
            levels = self.tickets(variant)
            gaps = [level for level in range(1, levels[-1]) if level not in levels]
            if gaps and not self.oneshot:  # an iterative chain: level L is pruned from L-1
                raise ValueError(f"{flag} needs snapshot {snapshot_name(gaps[0], variant)!r} "
                                 f"(level {gaps[0]} of the {variant} chain, which goes on to "
                                 f"level {levels[-1]}): it is not in {self.run.workdir}; "
                                 "restore it, or run the study to make it")
            if mode == "levels":
                chain = [0] + levels
                names = [self.dense] + [snapshot_name(level, variant) for level in levels]
                pairs += [Pair(variant, a, names[i], names[i + 1], b)
                          for i, (a, b) in enumerate(zip(chain, chain[1:]))]
            else:
                pairs += [Pair(variant, level, snapshot_name(level, variant),
                               self.source(level, variant), level) for level in levels]
        for name in dict.fromkeys(name for pair in pairs for name in (pair.start, pair.end)):
            self.run.load_existing(name, f"{flag} needs snapshot")
        return pairs

    def endpoints(self, mode: str, pair: Pair) -> tuple[PyTree, PyTree]:
        """The two ends of `pair`: snapshots, the pruned-dense end masked by the ticket."""
        start = self.run.load_snapshot(pair.start)
        end = self.run.load_snapshot(pair.end)
        if mode == "pruned_dense":
            end = pruned_solution(end, start["masks"])
        return start, end

    def measure(self, mode: str, pair: Pair, points: int) -> dict:
        """The errors along `pair`'s path on the study's test set."""
        start, end = self.endpoints(mode, pair)
        run = self.run

        def evaluate(params: PyTree, batch_stats: PyTree, masks: PyTree) -> tuple[float, float]:
            return run.trainer.evaluate(params, batch_stats, run.parallel.replicate(masks),
                                        run.data.test)

        result = {**dataclasses.asdict(pair),
                  "sparsity": [masks_lib.sparsity(start["masks"], run.scope),
                               masks_lib.sparsity(end["masks"], run.scope)],
                  **path_errors(evaluate, start, end, points)}
        self.log(f"[lmc {mode}] {pair.start} -> {pair.end}: endpoints "
                 f"{100 * result['test_error'][0]:.2f}% / {100 * result['test_error'][-1]:.2f}% "
                 f"error, barrier {100 * result['barrier']:.2f} points")
        return result


def _label(mode: str, result: dict) -> str:
    if mode == "levels":
        start = "dense" if result["level"] == 0 else f"L{result['level']}"
        return f"{start} → L{result['end_level']} ({100 * result['sparsity'][1]:.1f} % sparse)"
    return f"L{result['level']} ({100 * result['sparsity'][0]:.1f} % sparse)"


def markdown(mode: str, title: str, notes: Sequence[str], paths: Sequence[dict]) -> str:
    """The barrier table of `paths`: one row per path, the variants of a level side by side."""
    start, end = ("start", "end") if mode == "levels" else ("ticket", "pruned dense")
    lines = [f"# {title}", "", *notes, "",
             f"| level | variant | sparsity % | error {start} % | error {end} % | "
             "max error on path % | barrier (points) | max - mean of ends (points) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(paths, key=lambda r: (r["level"], r["end_level"])):
        level = f"{r['level']} → {r['end_level']}" if mode == "levels" else str(r["level"])
        sparsity = " → ".join(dict.fromkeys(f"{100 * s:.2f}" for s in r["sparsity"]))
        lines.append(f"| {level} | {r['variant']} | {sparsity} | "
                     f"{100 * r['endpoint_errors'][0]:.2f} | {100 * r['endpoint_errors'][1]:.2f}"
                     f" | {100 * max(r['test_error']):.2f} | {100 * r['barrier']:.2f} | "
                     f"{100 * r['barrier_vs_mean']:.2f} |")
    return "\n".join(lines) + f"\n\n![error along the paths](lmc_{mode}.png)\n"


def plot(mode: str, title: str, paths: Sequence[dict], path: Path) -> None:
    """One panel per variant, test error against alpha (one line per path, the barrier in its
    legend), and a last panel with every variant's barrier against the level."""
    from lottery_kd.analysis import plotting

    variants = list(dict.fromkeys(r["variant"] for r in paths))
    colors = dict(zip(variants, plotting.series_colors(len(variants))))
    ends = ("level L ticket", "next level's ticket") if mode == "levels" else \
        ("trained ticket", "pruned dense solution")
    ncols = min(len(variants) + 1, 3)
    nrows = -(-(len(variants) + 1) // ncols)
    with plotting.figure(path, figsize=(4.8 * ncols, 5.4 * nrows), nrows=nrows, ncols=ncols,
                         squeeze=False, atomic=True) as (figure, grid):
        axes = list(grid.flat)
        for unused in axes[len(variants) + 1:]:
            unused.axis("off")
        for panel, variant in zip(axes, variants):
            mine = [r for r in paths if r["variant"] == variant]
            shades = plotting.colormap("viridis")
            for i, r in enumerate(mine):
                color = shades(i / max(len(mine) - 1, 1) * 0.9)
                panel.plot(r["alphas"], [100 * e for e in r["test_error"]], color=color,
                           marker=plotting.MARKERS[i % len(plotting.MARKERS)], markersize=4,
                           label=f"{_label(mode, r)}: barrier {100 * r['barrier']:.2f}")
                panel.plot([0, 1], [100 * e for e in r["endpoint_errors"]], color=color,
                           linestyle=":", linewidth=1)
            panel.set_title(variant, fontsize=10)
            panel.set_xlabel(f"alpha (0: {ends[0]}, 1: {ends[1]})", fontsize=8)
            panel.set_ylabel("test error % along the path")
            panel.grid(alpha=0.3)
            panel.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                         title="path: barrier (points) above the ends' line (dotted)",
                         title_fontsize=7)
        summary = axes[len(variants)]
        for variant in variants:
            mine = [r for r in paths if r["variant"] == variant]
            summary.plot([r["end_level"] for r in mine], [100 * r["barrier"] for r in mine],
                         marker="o", color=colors[variant], label=variant)
        sparsity = {r["end_level"]: r["sparsity"][-1] for r in reversed(paths)}
        summary.set_xticks(sorted(sparsity))
        summary.set_xticklabels([f"{level}\n{100 * sparsity[level]:.1f} %"
                                 for level in sorted(sparsity)], fontsize=8)
        summary.axhline(0.0, color="grey", linewidth=0.8)
        summary.set_xlabel(("level of the path's end" if mode == "levels" else "ticket level")
                           + ", sparsity")
        summary.set_ylabel("barrier (points): max height above the ends' line")
        summary.set_title("barrier by level", fontsize=10)
        summary.grid(alpha=0.3)
        summary.legend(fontsize=8)
        figure.suptitle(title, fontsize=11)


def _notes(mode: str, tool: SnapshotPaths) -> list[str]:
    config = tool.run.config
    if mode == "levels":
        chain = ("each level pruned from the dense network (one-shot study): the pairs after "
                 "the first are not steps of one chain" if tool.oneshot else
                 "level L+1 pruned from level L's final weights of the same variant (iterative)")
        return [f"Test error on the straight line between the trained tickets of successive "
                f"levels, {chain}; level 0 is the trained dense network. Parameters and "
                "BatchNorm statistics interpolated, no mask applied (each end is 0 off its own "
                "mask). Barrier: the path's highest error above the straight line between its "
                "ends' errors."]
    source = ("the trained dense network" if tool.oneshot else "level 1: the trained dense "
              "network; level L: level L-1's final weights of the same variant")
    note = [f"Test error on the straight line from each trained ticket (alpha 0) to its pruned "
            f"dense solution (alpha 1): the weights its mask was pruned from ({source}) times "
            "the mask, with their BatchNorm statistics (not recalibrated). Barrier: the path's "
            "highest error above the straight line between its ends' errors."]
    if config.prune.source == "init":
        note.append(f"prune.source='init': the masks were scored on the initial weights "
                    f"({config.prune.method}), not on these trained ones.")
    return note


def run_paths(run_dir: str | os.PathLike, mode: str, variants: Sequence[str],
              out: str | os.PathLike, *, points: int = 11,
              log: Callable[[str], None] = print) -> dict:
    """Measure every path of `mode` ('levels' or 'pruned_dense') for `variants` and write
    out/lmc_<mode>.json, .md and .png. Every argument is checked before anything is evaluated
    or written."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if points < 3:
        raise ValueError(f"--points must be >= 3 (endpoints and at least one between), got "
                         f"{points}")
    out = Path(out)
    check_out_folder(out)
    tool = SnapshotPaths(run_dir, log=log)
    pairs = tool.pairs(mode, variants)
    config = tool.run.config
    title = (f"{'Successive IMP levels' if mode == 'levels' else 'Ticket vs pruned dense'}: "
             f"{config.model.name} on {config.data.name}")
    record = {"settings": {"run_dir": str(Path(run_dir).resolve()), "mode": mode,
                           "variants": list(dict.fromkeys(variants)), "points": points},
              "title": title, "notes": _notes(mode, tool),
              "paths": [tool.measure(mode, pair, points) for pair in pairs]}
    try:
        out.mkdir(parents=True, exist_ok=True)
        plot(mode, title, record["paths"], out / f"lmc_{mode}.png")
        write_atomic(out / f"lmc_{mode}.md",
                     markdown(mode, title, record["notes"], record["paths"]))
        write_atomic(out / f"lmc_{mode}.json", json.dumps(record, indent=1) + "\n")
    except OSError as error:
        raise ValueError(f"--out {out} cannot be written ({error.strerror or error}); choose "
                         "another --out") from None
    return record


def check_out_folder(out: Path) -> None:
    """A ValueError unless `out` is, or can be made, a folder of results (not a study's)."""
    out_paths.check_out_folder(out)
    if (out / "config.json").is_file():
        raise ValueError(f"--out {out} holds a study (config.json); choose another --out")
