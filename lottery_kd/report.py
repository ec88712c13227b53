"""Reports over one or many runs: tables, plots, published numbers, per-layer sparsity, overlap.

    python -m lottery_kd.report RUN_DIR [RUN_DIR ...] --out DIR

Runs are grouped by (model, data set, protocol: every setting but the seed, the variant list and
how a run reports); within a group the rows of every run (seeds, variants) are merged by
(variant, sparsity) into mean +- std. Writes into DIR:

    report.md                      per group: sparsity x variant tables of the test accuracy at
                                   the best-validation epoch and at the end (mean +- std, n),
                                   published numbers at matching densities, ticket overlap
    accuracy_vs_sparsity_G.png     accuracy vs density (log axis), one line per variant with the
                                   seed spread, dense dashed, published numbers (labelled) where
                                   the model and data set match
    layer_sparsity_G.png           per-layer density of every ticket
    curves_G.png                   test accuracy per epoch of each run, one column per sparsity
    overlap_G.png                  Jaccard overlap of the distinct tickets of all seeds (heat map)
    report.json                    every number above, for scripts
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from lottery_kd import jsonlines, published as published_lib, results, workdir_lock
from lottery_kd.config import protocols

REFERENCE = "renda2020_cifar10_imagenet"  # lottery_kd.published: carried with the package
# Our retrain variants and the Renda et al. (2020) methods that are the same procedure.
PUBLISHED_METHODS = {"lt": "rewind_to_0", "weight_rewind": "best_weight_rewinding",
                     "lr_rewind": "lr_rewinding", "finetune": "finetune"}


class ReportError(ValueError):
    """A run directory that cannot be reported (missing or unreadable results)."""


def load_run(directory: str | os.PathLike) -> dict:
    """{"dir", "config", "rows", "notes"} of a run directory; ReportError naming what is missing.

    `notes` say what a reader must know: lines of results.jsonl that could not be read (skipped,
    never the rows after them), and a study that is unfinished or still running."""
    from lottery_kd.config.identity import SavedConfigError, read_saved
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such study folder; check the path")
    config_path, rows_path = directory / "config.json", directory / "results.jsonl"
    for path in (config_path, rows_path):
        if not path.is_file():
            raise ReportError(f"{directory} is not a finished or running study: {path.name} "
                              "is missing")
    try:
        config = read_saved(config_path)
    except SavedConfigError as error:
        raise ReportError(str(error)) from None
    rows, damaged = results.scan_rows(rows_path)
    notes = [jsonlines.describe(damaged)] if damaged else []
    planned = _planned_runs(directory)
    running = workdir_lock.running_note(directory)
    if planned is not None and len(rows) < planned:
        notes.append(f"{directory} is unfinished: {len(rows)} of {planned} planned runs have "
                     f"a row" + (f"; {running}" if running else ""))
    elif running:
        notes.append(f"{directory} is {running}")
    return {"dir": directory, "config": config, "rows": rows, "notes": notes}


def _planned_runs(directory: Path) -> Optional[int]:
    """How many training runs the study's plan.json lists (None without a readable plan)."""
    try:
        return len(json.loads((directory / "plan.json").read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# Settings that do not make two runs different experiments, beyond lottery.COSMETIC_KEYS (how a
# run reports, checkpoints or spreads its work; not parallel.batch_norm): the seed (merged as
# repeats), the variant list (merged as columns), where the same data is read from (every source
# gives the same images in the same order), and what a dynamic run's name carries (rigl,
# rigl_kd, rigl_sparse_init: columns).
_MERGE_ACROSS = ("seed", "lottery.variants",
                 "data.dir", "data.source", "data.tfds_data_dir", "data.manual_dir",
                 "data.tfds_download", "data.verify_checksums",
                 "dynamic.distill", "dynamic.init")


def group_key(run: dict) -> tuple[str, str, str]:
    """(model, data set, protocol digest): runs that differ only in seed or variants merge."""
    from lottery_kd.config.identity import COSMETIC_KEYS, canonical_settings, flatten
    config = run["config"]
    model = config["model"]["name"] + (f"@{config['model']['basis']}"
                                       if config["model"].get("basis") else "")
    merged = set(_MERGE_ACROSS + COSMETIC_KEYS)
    protocol = {k: v for k, v in canonical_settings(flatten(config)).items() if k not in merged}
    return model, config["data"]["name"], json.dumps(protocol, sort_keys=True)


def protocol_summary(config: dict) -> str:
    """The settings a reader needs to tell protocols apart, in one line."""
    train, prune, data = config["train"], config["prune"], config["data"]
    text = (f"{train['epochs']} epochs, batch {train['batch_size']}, lr {train['lr']}, "
            f"train subset {data.get('train_subset') or 'all'}"
            + (f", {data['validation_size']} held out for validation"
               if data.get("validation_size") and data["name"] != "digits" else "")
            + f"; {prune['schedule']} {prune['method']}"
            f" ({prune.get('distribution', 'global')}, from {prune.get('source', 'final')} "
            f"weights), rewind {config['lottery']['rewind']}")
    if config.get("dynamic", {}).get("method"):
        dyn = config["dynamic"]
        text += (f"; dynamic {dyn['method']} at {dyn['sparsity']}, delta_t {dyn['delta_t']}"
                 f"{', KD' if dyn.get('distill') else ''}")
    return text


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), \
        len(values)


def aggregate(runs: Sequence[dict]) -> list[dict]:
    """One entry per (variant, sparsity) over all runs: mean/std/n of the final test accuracy and
    of the test accuracy at the best-validation epoch (fractions)."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for _, row in results.unique_rows(runs):
        cells.setdefault((row["variant"], round(row["sparsity"], 4)), []).append(row)
    out = []
    for (variant, sparsity), rows in cells.items():
        final = _mean_std([r["test_accuracy"] for r in rows])
        best = _mean_std([r.get("test_accuracy_at_best_val") for r in rows])
        out.append({"variant": variant, "sparsity": sparsity,
                    "level": min(r["level"] for r in rows),
                    "final_mean": final[0], "final_std": final[1], "n": final[2],
                    "best_val_mean": best[0], "best_val_std": best[1], "best_val_n": best[2],
                    "runs": [str(run["dir"]) for run in runs
                             if any(r in run["rows"] for r in rows)]})
    order: dict[str, int] = {}  # each variant's first appearance: the config's order, also
    for variant, _ in cells:    # while a later level has only some variants
        order.setdefault(variant, len(order))
    return sorted(out, key=lambda e: (e["sparsity"], order[e["variant"]]))


def published_for(model: str, dataset: str, reference: Optional[dict]) -> dict:
    """{variant: [(density, accuracy %)]} of the published numbers for this model and data set,
    with the protocol, or {} where none match."""
    if reference is None or dataset != "cifar10":
        return {}
    table = reference.get("iterative", {}).get(model)
    if not table:
        return {}
    lines = {variant: [(entry["density"], entry[method]) for entry in table if method in entry]
             for variant, method in PUBLISHED_METHODS.items()}
    return {"lines": lines, "dense": reference.get("dense", {}).get(model),
            "protocol": reference["protocol"]["cifar10"], "source": reference["source"]}


def protocol_matches(config: dict) -> bool:
    """Whether a run follows Renda et al.'s CIFAR-10 protocol (182 epochs, batch 128, full 50k)."""
    return (config["train"]["epochs"] == 182 and config["train"]["batch_size"] == 128
            and config["data"].get("validation_size", 0) == 0
            and config["data"].get("train_subset", 0) == 0)


def _percent(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})" if n > 1 else f"{100 * mean:.2f} (n=1)"


def provenance(members: Sequence[dict]) -> str:
    """One paragraph: training wall time (sum of the rows' seconds), machines and code versions
    from each study's environment.jsonl (one record per start)."""
    from lottery_kd.environment import read_starts
    unique = [row for _, row in results.unique_rows(members)]
    seconds = sum(r.get("seconds") or 0 for r in unique)
    rows = len(unique)
    starts = [start for run in members for start in read_starts(run["dir"])]
    text = (f"Compute: {rows} training run(s), {seconds / 3600:.2f} h in all (the sum of their "
            "wall times, evaluation included).")
    if starts:
        machines = sorted({f"{s.get('processor')} ({s.get('cpu_count')} CPUs), "
                           f"{s.get('backend')}: {s.get('device_count')} x {s.get('device')}"
                           for s in starts})
        versions = sorted({str(s.get("code_version")) for s in starts})
        text += f" Machine(s): {'; '.join(machines)}. Code: {', '.join(v[:12] for v in versions)}"
        text += (f" ({len(starts)} start(s))." if len(versions) == 1 else
                 f": the studies were (re)started under {len(versions)} code versions; see "
                 "environment.jsonl in each workdir.")
    return text


def undistilled_twin(variant: str) -> Optional[str]:
    """The registered variant with the same weights and schedule but no distillation, if any;
    for a dynamic sparse run (rigl_kd, set_kd_sparse_init) the same run without "_kd"."""
    from lottery_kd import dynamic, variants as variants_lib
    if variant not in variants_lib.names():
        method, _, rest = variant.partition("_kd")
        return method + rest if _ and method in dynamic.names() else None
    if not variants_lib.get(variant).distill:
        return None
    spec = variants_lib.get(variant)
    for name in variants_lib.names():
        other = variants_lib.get(name)
        if not other.distill and (other.weights, other.schedule) == (spec.weights, spec.schedule):
            return name
    return None


def paired_differences(runs: Sequence[dict], key: str) -> list[dict]:
    """Distillation's effect, seed by seed: at each sparsity, each distilled variant minus its
    undistilled twin (same weights and schedule) and minus weight rewinding; mean, std and n of
    the per-seed differences (fractions; `key` "final" or "best_val"). A pair shares the seed,
    so the dense teacher, the data order and (one-shot) the mask: the std is the spread of the
    difference itself, usually far smaller than either accuracy's seed-to-seed spread."""
    field = "test_accuracy" if key == "final" else "test_accuracy_at_best_val"
    by_seed: dict[int, dict[tuple[str, float], float]] = {}
    for run in runs:
        cells = by_seed.setdefault(run["config"]["seed"], {})
        for row in run["rows"]:
            if row.get(field) is not None:
                cells.setdefault((row["variant"], round(row["sparsity"], 4)), row[field])
    present = list(dict.fromkeys(v for cells in by_seed.values() for v, _ in cells))
    pairs = []
    for variant in present:
        twin = undistilled_twin(variant)
        if twin is not None:
            baselines = dict.fromkeys([twin, "weight_rewind"])  # once, twin first
            pairs += [(variant, b) for b in baselines if b in present]
    sparsities = sorted({s for cells in by_seed.values() for _, s in cells if s > 0})
    out = []
    for sparsity in sparsities:
        for variant, baseline in pairs:
            differences = [cells[(variant, sparsity)] - cells[(baseline, sparsity)]
                           for cells in by_seed.values()
                           if (variant, sparsity) in cells and (baseline, sparsity) in cells]
            if differences:
                mean, std, n = _mean_std(differences)
                out.append({"sparsity": sparsity, "variant": variant, "baseline": baseline,
                            "mean": mean, "std": std, "n": n})
    return out


def differences_table(differences: Sequence[dict]) -> str:
    """Rows: sparsity; columns: 'variant - baseline' in percentage points, mean ± std (n)."""
    columns = list(dict.fromkeys((d["variant"], d["baseline"]) for d in differences))
    by_key = {(d["sparsity"], d["variant"], d["baseline"]): d for d in differences}
    header = ["sparsity %"] + [f"{v} − {b}" for v, b in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for sparsity in sorted({d["sparsity"] for d in differences}):
        cells = [f"{100 * sparsity:.2f}"]
        for variant, baseline in columns:
            d = by_key.get((sparsity, variant, baseline))
            cells.append("" if d is None else f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} "
                                              f"(n={d['n']})" if d["n"] > 1 else
                         f"{100 * d['mean']:+.2f} (n=1)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(entries: Sequence[dict], key: str, published: dict) -> str:
    """Sparsity x variant table of `key` ("final" or "best_val"), published columns last."""
    variants = list(dict.fromkeys(e["variant"] for e in entries if e["variant"] != "dense"))
    sparsities = sorted({e["sparsity"] for e in entries})
    by_key = {(e["variant"], e["sparsity"]): e for e in entries}
    extra = [v for v in variants if v in published.get("lines", {})]
    header = ["sparsity %"] + variants + [f"published {v}" for v in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    count = "n" if key == "final" else "best_val_n"
    dense = by_key.get(("dense", 0.0))
    if dense is not None:
        accuracy = _percent(dense[f"{key}_mean"], dense[f"{key}_std"], dense[count])
        lines.insert(0, f"Dense: {accuracy}"
                        + (f"; published dense {published['dense']:.2f}" if published.get("dense")
                           else "") + "\n")
    for sparsity in sparsities:
        if not any((v, sparsity) in by_key for v in variants):
            continue
        cells = [f"{100 * sparsity:.2f}"]
        for variant in variants:
            entry = by_key.get((variant, sparsity))
            cells.append("" if entry is None else _percent(
                entry[f"{key}_mean"], entry[f"{key}_std"], entry[count]))
        for variant in extra:
            match = [acc for density, acc in published["lines"][variant]
                     if abs(density - (1 - sparsity)) < 5e-3]
            cells.append(f"{match[0]:.2f}" if match else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_accuracy(entries: Sequence[dict], published: dict, same_protocol: bool, title: str,
                   path: Path, key: str) -> None:
    """Test accuracy (`key`) vs density, mean ± std over runs, one line per variant; published
    lines dotted in the colour of the same procedure; a variant's points shifted a little
    sideways, so equal points stay visible; collapsed runs left below a cut y-axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10.5, 5), dpi=120)
    dense = [e for e in entries if e["variant"] == "dense"]
    count = "n" if key == "final" else "best_val_n"
    variants = list(dict.fromkeys(e["variant"] for e in entries if e["variant"] != "dense"))
    lines = {v: p for v, p in (published or {}).get("lines", {}).items() if p}
    named = variants + [v for v in lines if v not in variants]  # published: the same colour
    colors = dict(zip(named, results.series_colors(len(named))))
    ticks = results.density_ticks(1 - e["sparsity"] for e in entries if e["sparsity"] > 0)
    densities = [position for position, _ in ticks]
    span = math.log10(max(densities + [1e-9]) / min(densities + [1.0]))
    for line_points in lines.values():
        span = max(span, math.log10(max(p[0] for p in line_points) / min(densities + [1.0])))
    gaps = [math.log10(a / b) for a, b in zip(densities, densities[1:])]
    step = min([0.04 * max(span, 0.1)] + [0.4 * g for g in gaps]) / max(len(variants) - 1, 1)
    by_level: dict[int, list[tuple[str, float, float]]] = {}  # the variants' points per level
    for index, variant in enumerate(variants):
        points = sorted((1 - e["sparsity"], 100 * e[f"{key}_mean"], 100 * e[f"{key}_std"],
                         e["level"]) for e in entries if e["variant"] == variant
                        and not math.isnan(e[f"{key}_mean"]))
        if not points:
            continue
        shift = 10 ** (step * (index - (len(variants) - 1) / 2))
        axes.errorbar([p[0] * shift for p in points], [p[1] for p in points],
                      yerr=[p[2] for p in points], capsize=3, color=colors[variant],
                      marker=results.MARKERS[index % len(results.MARKERS)], label=variant)
        for x, y, _, level in points:
            by_level.setdefault(level, []).append((variant, x * shift, y))
    references = []
    if dense and not math.isnan(dense[0][f"{key}_mean"]):
        references.append(100 * dense[0][f"{key}_mean"])
        axes.axhline(references[0], color="gray", linestyle="--", label="dense (ours)")
    for variant, points in lines.items():
        references += [p[1] for p in points]
        axes.plot([p[0] for p in points], [p[1] for p in points], linestyle=":", marker="x",
                  alpha=0.8, color=colors[variant],
                  label=f"published {PUBLISHED_METHODS[variant]}")
    if published and published.get("dense"):
        references.append(published["dense"])
        axes.axhline(published["dense"], color="black", linestyle=":", alpha=0.5,
                     label="published dense")
    groups = [by_level[level] for level in sorted(by_level)]  # left to right
    flags = results.collapsed([y for _, _, y in group] for group in groups)
    note = results.cut_y_axis(
        axes, references + [y for group, flag in zip(groups, flags)
                            for (_, _, y), f in zip(group, flag) if not f],
        [(x, y, variant, colors[variant]) for group, flag in zip(groups, flags)
         for (variant, x, y), f in zip(group, flag) if f])
    axes.set_xscale("log")
    axes.invert_xaxis()
    if ticks:
        axes.set_xticks(densities)
        axes.set_xticklabels([label for _, label in ticks], rotation=45, fontsize=8)
        axes.minorticks_off()
    axes.set_xlabel("sparsity % (log density axis; each variant's points shifted a little "
                    "sideways)" + (f"\n{note}" if note else ""))
    axes.set_ylabel("test accuracy % " + ("at the best-validation epoch" if key == "best_val"
                                          else "at the end of training"))
    runs = sorted({e[count] for e in entries if e["variant"] != "dense" and e[count]})
    spread = ("one run per point" if runs == [1] else
              f"mean over n={'–'.join(map(str, sorted({runs[0], runs[-1]})))} runs (seeds) "
              "per point, bars ± 1 std" if runs else "")
    axes.set_title(title + (f"\n{spread}" if spread else ""), fontsize=10)
    axes.grid(alpha=0.3)
    # beside the axes, not on them: with the published lines the legend is as tall as the plot
    legend_title = None
    if lines or (published and published.get("dense")):
        legend_title = ("published (dotted): " + ("same protocol" if same_protocol else
                                                  "other protocol,\n182 epochs on all 50k"))
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title=legend_title,
                title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _layer_rank(name: str) -> Optional[tuple]:
    """Where layer `name` runs in the forward pass (None for an unknown name): the stem, then
    top-level convN or stageI_blockJ in natural order (conv1 < conv2 < conv3 < shortcut in a
    block), then fc."""
    parts = name.split("/")
    head = parts[0]
    if head.startswith("stem"):
        return (0,)
    if head == "fc":
        return (2,)
    if head.startswith("conv") and head[4:].isdigit():
        return (1, int(head[4:]))
    stage, _, block = head[len("stage"):].partition("_block")
    if not (head.startswith("stage") and stage.isdigit() and block.isdigit()):
        return None
    sub = parts[1] if len(parts) > 2 else ""
    sub_rank = (int(sub[4:]) if sub.startswith("conv") and sub[4:].isdigit()
                else 1000 if sub.startswith("shortcut") else 2000)
    return (1, int(stage), int(block), sub_rank)


def network_order(names: Sequence[str]) -> list[str]:
    """Layer names in forward-pass order, whatever order they come in (JSON rows may hold them
    sorted): known names by _layer_rank, unknown ones after them in their given order."""
    names = list(dict.fromkeys(names))
    known = [n for n in names if _layer_rank(n) is not None]
    return sorted(known, key=_layer_rank) + [n for n in names if _layer_rank(n) is None]


def layer_densities(runs: Sequence[dict]) -> dict[str, dict[str, float]]:
    """{label: {layer: density}} (layers in network order), one entry per distinct mask profile.

    Each (variant, sparsity) ticket is taken from the first run that holds it; tickets with the
    same layer counts (one-shot variants share one mask) merge into one entry labelled like
    "83.22 % (all 6 variants)" or "83.22 %: lt, kd +2", with "sN " first when several seeds
    contribute. Sparsest last."""
    chosen: dict[tuple[str, float], tuple[Any, dict]] = {}
    peers: dict[tuple[Any, float], set[str]] = {}  # a seed's variants at a sparsity
    for run in runs:
        seed = run.get("config", {}).get("seed")
        for row in run["rows"]:
            key = (row["variant"], round(row["sparsity"], 4))
            if row.get("layer_counts") and row["level"] > 0:
                peers.setdefault((seed, key[1]), set()).add(row["variant"])
                chosen.setdefault(key, (seed, row))
    groups: dict[tuple, list[tuple[str, float]]] = {}
    for (variant, sparsity), (seed, row) in chosen.items():
        counts = tuple(sorted((layer, tuple(c)) for layer, c in row["layer_counts"].items()))
        groups.setdefault((sparsity, seed, counts), []).append((variant, sparsity))
    several_seeds = len({seed for seed, _ in chosen.values()}) > 1
    out: dict[str, dict[str, float]] = {}
    for (sparsity, seed, counts), members in sorted(groups.items(), key=lambda g: g[0][0]):
        variants = [v for v, _ in members]
        label = ("" if not several_seeds else f"s{seed} ") + f"{100 * sparsity:.2f} %"
        if len(variants) > 1 and len(variants) == len(peers[(seed, sparsity)]):
            label += f" (all {len(variants)} variants)"
        else:
            label += ": " + ", ".join(variants[:2]) + (f" +{len(variants) - 2}"
                                                       if len(variants) > 2 else "")
        while label in out:  # two sparsities that print alike
            label += "'"
        per_layer = chosen[members[0]][1]["layer_counts"]  # the writer's order, for ties
        out[label] = {layer: per_layer[layer][0] / per_layer[layer][1]
                      for layer in network_order(list(per_layer))}
    return out


def _plot_layers(densities: dict[str, dict[str, float]], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = network_order([layer for d in densities.values() for layer in d])
    figure, axes = plt.subplots(figsize=(max(7, 0.25 * len(layers) + 3) + 2.5, 4.5), dpi=120)
    palette = plt.get_cmap("tab20") if len(densities) > 10 else None  # no repeated colours
    for index, (name, per_layer) in enumerate(densities.items()):
        axes.plot(range(len(layers)), [per_layer.get(layer, float("nan")) for layer in layers],
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
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    # beside the axes, not on them: one entry per distinct mask, sparsest last
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                title="sparsity", title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def ticket_overlap(members: Sequence[dict]) -> dict:
    """The Jaccard matrix over the distinct tickets of a group's runs ({} if under two).

    Tickets of several runs are named "s<seed> variant@L<level>" (the run directory's name when
    two runs share a seed), and bit-identical masks are merged into one row.
    """
    from lottery_kd import overlap as overlap_lib

    seeds = [run["config"]["seed"] for run in members]
    tickets = {}
    for run, seed in zip(members, seeds):
        prefix = ""
        if len(members) > 1:
            prefix = (f"s{seed} " if seeds.count(seed) == 1
                      else Path(run["dir"]).name.replace(" ", "_") + " ")
        tickets.update({prefix + name: masks
                        for name, masks in overlap_lib.tickets_of(run["dir"]).items()})
    merged, names = overlap_lib.merge_identical(tickets)
    if len(merged) < 2:
        return {}
    matrix = overlap_lib.overlap_matrix(merged)
    matrix["members"] = names
    return matrix


def overlap_text(matrix: dict, members: Sequence[dict]) -> str:
    """The sentences above the overlap table: what was compared, merged, and chance level."""
    text = ("Mask overlap (Jaccard over the conv weights the masks keep) between the distinct "
            "tickets of "
            + ", ".join(str(run["dir"]) for run in members) + ".")
    merged = [f"{label} = {', '.join(names)}" for label, names in matrix["members"].items()
              if len(names) > 1]
    if merged:
        text += " Tickets with bit-identical masks share a row: " + "; ".join(merged) + "."
    # chance per sparsity: over the pairs of distinct tickets of that sparsity (e.g. across
    # seeds), else a ticket against a random mask of its own per-layer densities
    def span(key: str, pairs: list[tuple[int, int]]) -> str:
        values = sorted(matrix[key][i][j] for i, j in pairs)
        low, high = f"{values[0]:.3f}", f"{values[-1]:.3f}"
        return low if low == high else f"{low}–{high}"

    sparsities = [round(100 * (1 - d), 2) for d in matrix["densities"]]
    chance = []
    for sparsity in sorted(set(sparsities)):
        same = [i for i, s in enumerate(sparsities) if s == sparsity]
        pairs = [(i, j) for i in same for j in same if i < j] or [(same[0], same[0])]
        chance.append(f"{span('random', pairs)} at {sparsity:.2f} % sparsity"
                      + (f" (uniform {span('random_uniform', pairs)})"
                         if "random_uniform" in matrix else ""))
    text += (" For scale, the chance level is the expected overlap of two independent random "
             "masks with the same per-layer densities as the two tickets, sum_l n_l a_l b_l / "
             "sum_l n_l (a_l + b_l − a_l b_l) over layers of n_l weights kept at fractions a_l "
             "and b_l: " + ", ".join(chance) + ". \"Uniform\" is the level of uniform random "
             "masks of the same global density d, d / (2 − d), which ignores that magnitude "
             "pruning keeps very different fractions of each layer.")
    return text


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 reference_path: Optional[str | os.PathLike] = None,
                 overlap: bool = True) -> dict:
    """Write report.md, report.json and the plots for `run_dirs` into `out`; returns the JSON."""
    from lottery_kd import curves as curves_lib
    from lottery_kd import overlap as overlap_lib

    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for report.md and the plots")
    out.mkdir(parents=True, exist_ok=True)
    reference = (_read_reference(Path(reference_path)) if reference_path
                 else published_lib.load(REFERENCE))
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    document = ["# Report", "", f"Runs: {', '.join(str(r['dir']) for r in runs)}", ""]
    notes = [note for run in runs for note in run["notes"]]
    document += [f"**Note:** {note}." for note in notes] + ([""] if notes else [])
    summary: dict[str, Any] = {"groups": [], "notes": notes}
    for index, ((model, dataset, _), members) in enumerate(groups.items()):
        slug = f"{index + 1}_{model}_{dataset}".replace("@", "_")
        entries = aggregate(members)
        published = published_for(model.split("@")[0], dataset, reference)
        same = all(protocol_matches(r["config"]) for r in members)
        seeds = sorted({r["config"]["seed"] for r in members})
        document += [f"## {index + 1}. {model} on {dataset}", "",
                     f"Settings: {protocol_summary(members[0]['config'])}. {len(members)} "
                     f"run(s), seeds {', '.join(map(str, seeds))}: "
                     + ", ".join(str(r["dir"]) for r in members) + ".", "",
                     protocols.describe(members[0]["config"]) + ".", ""]
        has_val = any(e["best_val_n"] for e in entries)
        document += [provenance(members), ""]
        if has_val:
            document += ["Test accuracy (%) at the epoch of best validation accuracy, "
                         "mean ± std over runs:", "", markdown_table(entries, "best_val",
                                                                     published), ""]
        document += ["Test accuracy (%) at the end of training, mean ± std over runs:", "",
                     markdown_table(entries, "final", published), ""]
        if published:
            document += [f"Published columns: {published['source']} Protocol: "
                         f"{published['protocol']}. "
                         + ("These runs follow the same protocol." if same else
                            "These runs use another protocol, so compare trends, not points."),
                         ""]
        key = "best_val" if has_val else "final"
        differences = paired_differences(members, key)
        if differences:
            document += ["Distillation, paired by seed: each distilled variant minus its "
                         "undistilled twin and minus weight rewinding, in percentage points "
                         "(+: distillation more accurate), test accuracy "
                         + ("at the best-validation epoch" if has_val else "at the end")
                         + ", mean ± std over seeds:", "", differences_table(differences), ""]
        accuracy_png = out / f"accuracy_vs_sparsity_{slug}.png"
        _plot_accuracy(entries, published, same, f"{model} on {dataset}", accuracy_png, key)
        document += [f"![accuracy vs sparsity]({accuracy_png.name})", ""]
        learning_curves = curves_lib.finished_curves(members)
        if learning_curves:
            curves_png = out / f"curves_{slug}.png"
            variants = list(dict.fromkeys(e["variant"] for e in entries))
            curves_lib.plot_curves(learning_curves, variants,
                                   f"test accuracy during training: {model} on {dataset}",
                                   curves_png)
            document += ["Learning curves of the finished runs (test accuracy after each "
                         "epoch, mean over seeds with ± std bands; the dense run dashed), read "
                         "from the runs' TensorBoard events:", "",
                         f"![learning curves]({curves_png.name})", ""]
        densities = layer_densities(members)
        group = {"model": model, "dataset": dataset,
                 "protocol": protocol_summary(members[0]["config"]), "entries": entries,
                 "published": bool(published), "same_protocol": same,
                 "layer_densities": densities, "paired_differences": differences,
                 "learning_curves": learning_curves}
        if densities:
            layers_png = out / f"layer_sparsity_{slug}.png"
            _plot_layers(densities, f"per-layer density of each ticket: {model}", layers_png)
            document += [f"![per-layer density]({layers_png.name})", ""]
        if overlap:
            matrix = ticket_overlap(members)
            if matrix:
                overlap_png = out / f"overlap_{slug}.png"
                overlap_lib.plot_heatmap(matrix, f"mask overlap (Jaccard): {model}",
                                         overlap_png)
                document += [overlap_text(matrix, members), "", overlap_lib.markdown(matrix),
                             "", f"![overlap]({overlap_png.name})", ""]
                group["overlap"] = matrix
        summary["groups"].append(group)
    (out / "report.md").write_text("\n".join(document))
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _read_reference(path: Path) -> dict:
    """A published-numbers file given with --reference; ReportError naming it if unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"--reference {path}: cannot be read as JSON ({error})") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (workdirs of studies)")
    parser.add_argument("--out", required=True, help="where report.md and the plots go")
    parser.add_argument("--reference", default="", help="published numbers (JSON); default: "
                        "Renda et al. 2020's tables, carried in lottery_kd/published")
    parser.add_argument("--no-overlap", action="store_true", help="skip the mask overlap "
                        "(which reads every ticket's snapshot)")
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.runs, args.out, reference_path=args.reference or None,
                               overlap=not args.no_overlap)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in summary["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
