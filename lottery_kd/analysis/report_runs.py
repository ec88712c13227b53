"""The numbers of a report: studies loaded from their workdirs, grouped by protocol and merged.

Runs are grouped by (model, data set, protocol: every setting but the seed, the variant list and
how a run reports); within a group the rows of every run (seeds, variants) are merged by
(variant, sparsity) into mean +- std, distillation's effect is paired seed by seed, and the
tickets' per-layer densities and mask overlap are gathered. lottery_kd.analysis.report writes
them out.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from lottery_kd.study import jsonlines, results, workdir_lock
from lottery_kd.study.workdir import Workdir

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
    workdir = Workdir(directory)
    if directory.exists() and not directory.is_dir():
        raise ReportError(f"{directory} is a file; give a study's workdir (a folder)")
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such study folder; check the path")
    if not workdir.config.is_file():
        raise ReportError(f"{directory} is not a study: {workdir.config.name} is missing")
    if not workdir.results.is_file() or not workdir.results.read_text().strip():
        raise ReportError(
            f"{directory}: no run has finished yet ({workdir.results.name} is missing or "
            "empty), so there "
            f"is nothing to report; follow it with python -m lottery_kd.status {directory}, or "
            f"tensorboard --logdir {workdir.tensorboard_root}")
    try:
        config = read_saved(workdir.config)
    except SavedConfigError as error:
        raise ReportError(str(error)) from None
    rows, damaged = results.scan_rows(workdir.results)
    notes = [jsonlines.describe(damaged)] if damaged else []
    rows = _with_flops(config, rows, workdir)
    planned = _planned_runs(workdir)
    running = workdir_lock.running_note(directory)
    if planned is not None and len(rows) < planned:
        notes.append(f"{directory} is unfinished: {len(rows)} of {planned} planned runs have "
                     f"a row" + (f"; {running}" if running else ""))
    elif running:
        notes.append(f"{directory} is {running}")
    return {"dir": directory, "config": config, "rows": rows, "notes": notes}


# The input of each data set's models (image shape, classes): what models.flops counts over.
_INPUTS = {"digits": ((8, 8, 1), 10), "cifar10": ((32, 32, 3), 10),
           "cifar100": ((32, 32, 3), 100)}


def _with_flops(config: dict, rows: list[dict], workdir: Workdir) -> list[dict]:
    """The rows, each with its training FLOPs: rows written before the study recorded them get
    them counted here from the config, plan.json and their layer_counts (models.flops)."""
    if all("train_flops_sparse" in row for row in rows):
        return rows
    from lottery_kd.models import flops as flops_lib, get_model
    model_cfg, data_cfg = config["model"], config["data"]
    image_shape, classes = _INPUTS.get(data_cfg["name"], (
        (data_cfg.get("image_size", 224), data_cfg.get("image_size", 224), 3), 1000))
    try:
        plan = json.loads(workdir.plan.read_text())
        model = get_model(model_cfg["name"], classes, basis=model_cfg.get("basis", ""),
                          conv_impl="xla", norm_impl=model_cfg.get("norm_impl", "flax"))
        layers = flops_lib.layer_flops(model, image_shape)
    except (OSError, ValueError, KeyError):  # no plan.json, or a model this version lacks
        return rows
    stop = config.get("kd", {}).get("stop_epoch")
    dyn = config.get("dynamic", {})
    rigl = ((dyn["delta_t"], int(dyn["end_fraction"] * plan["total_steps"]))
            if dyn.get("method") == "rigl" else None)
    return [
        row if "train_flops_sparse" in row else {**row, **flops_lib.row_flops(
            layers, row, batch_size=config["train"]["batch_size"],
            kd_stop_step=stop * plan["steps_per_epoch"] if stop else None,
            rigl=rigl if row["level"] > 0 and row["variant"].startswith("rigl") else None,
            basis=bool(model_cfg.get("basis")))}
        for row in rows]


def _planned_runs(workdir: Workdir) -> Optional[int]:
    """How many training runs the study's plan.json lists (None without a readable plan)."""
    try:
        return len(json.loads(workdir.plan.read_text())["runs"])
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


def protocol_matches(config: dict) -> bool:
    """Whether a run follows Renda et al.'s CIFAR-10 protocol (182 epochs, batch 128, full 50k)."""
    return (config["train"]["epochs"] == 182 and config["train"]["batch_size"] == 128
            and config["data"].get("validation_size", 0) == 0
            and config["data"].get("train_subset", 0) == 0)


def schedule_note(members: Sequence[dict]) -> str:
    """How the published tickets' pruning (iterative, Renda et al.'s tables) differs from these
    runs' prune.schedule, or '' where it does not."""
    ours = sorted({r["config"].get("prune", {}).get("schedule", "iterative") for r in members})
    if ours == ["iterative"]:
        return ""
    return f"published tickets pruned iteratively, these runs {' and '.join(ours)}".replace(
        "oneshot", "one-shot")


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the values that are numbers (None and NaN left out)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), \
        len(values)


def aggregate(runs: Sequence[dict]) -> list[dict]:
    """One entry per (variant, sparsity) over all runs: mean/std/n of the final test accuracy and
    of the test accuracy at the best-validation epoch (fractions), and the mean training FLOPs
    (sparse: the pruned weights skipped; dense: as the masked step computes)."""
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
                    "train_flops_sparse": _mean_std([r.get("train_flops_sparse")
                                                     for r in rows])[0],
                    "train_flops_dense": _mean_std([r.get("train_flops_dense") for r in rows])[0],
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


def undistilled_twin(variant: str) -> Optional[str]:
    """The registered variant with the same weights and schedule but no distillation, if any;
    for a dynamic sparse run (rigl_kd, set_kd_sparse_init, gmp_kd) the same run without "_kd"."""
    from lottery_kd.sparsity import dynamic
    from lottery_kd.study import variants as variants_lib
    if variant not in variants_lib.names():
        method, _, rest = variant.partition("_kd")
        return method + rest if _ and method in dynamic.method_names() else None
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


def ticket_overlap(members: Sequence[dict]) -> dict:
    """The Jaccard matrix over the distinct tickets of a group's runs ({} if under two).

    Tickets of several runs are named "s<seed> variant@L<level>" (the run directory's name when
    two runs share a seed), and bit-identical masks are merged into one row. Over the study's
    pruning scope: a kernel outside it (Renda's unpruned shortcuts) would count as kept.
    """
    from lottery_kd.analysis import overlap as overlap_lib

    seeds = [run["config"]["seed"] for run in members]
    tickets = {}
    for run, seed in zip(members, seeds):
        prefix = ""
        if len(members) > 1:
            prefix = (f"s{seed} " if seeds.count(seed) == 1
                      else Path(run["dir"]).name.replace(" ", "_") + " ")
        tickets.update({prefix + name: masks
                        for name, masks in overlap_lib.tickets_of(run["dir"]).items()})
    scope = members[0]["config"]["prune"]["scope"]  # one per group: it is in group_key's digest
    merged, names = overlap_lib.merge_identical(tickets, scope)
    if len(merged) < 2:
        return {}
    matrix = overlap_lib.overlap_matrix(merged, scope)
    matrix["members"], matrix["scope"] = names, scope
    return matrix
