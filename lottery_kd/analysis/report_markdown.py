"""The text of report.md: settings and compute of each group, accuracy tables next to the
published numbers, distillation's paired differences, and the words around the mask overlap.

Pure functions of what lottery_kd.analysis.report_runs gathered (and, for the compute line, each
study's environment.jsonl), so the wording can be tested and changed without drawing a plot.
"""

from __future__ import annotations

import math
from typing import Sequence

from lottery_kd.analysis.report_runs import schedule_note
from lottery_kd.config import protocols
from lottery_kd.published import same_density
from lottery_kd.study import results


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


def _percent(mean: float, std: float, n: int) -> str:
    """A table cell: '91.23 ± 0.12 (n=2)', '91.23 (n=1)', or '-' without a value."""
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})" if n > 1 else f"{100 * mean:.2f} (n=1)"


def provenance(members: Sequence[dict]) -> str:
    """One paragraph: training wall time (sum of the rows' seconds), machines and code versions
    from each study's environment.jsonl (one record per start)."""
    from lottery_kd.runtime.environment import read_starts
    unique = [row for _, row in results.unique_rows(members)]
    seconds = sum(r.get("seconds") or 0 for r in unique)
    rows = len(unique)
    starts = [start for run in members for start in read_starts(run["dir"])]
    text = (f"Compute: {rows} training run(s), {seconds / 3600:.2f} h in all (the sum of their "
            "wall times, evaluation included).")
    if starts:
        machines = sorted({f"{s.get('processor')}"
                           + (f" [{s['cpu_id']}]" if s.get("cpu_id") else "")
                           + f" ({s.get('cpu_count')} CPUs), "
                           f"{s.get('backend')}: {s.get('device_count')} x {s.get('device')}"
                           for s in starts})
        starts.sort(key=lambda s: str(s.get("time") or s.get("date") or ""))  # stable: a
        # workdir's starts are in order even where older records carry no time
        versions = list(dict.fromkeys(str(s.get("code_version")) for s in starts))
        text += f" Machine(s): {'; '.join(machines)}. Code: "
        text += (f"{versions[0][:12]} ({len(starts)} start(s))." if len(versions) == 1 else
                 f"(re)started under {len(versions)} code versions, the first "
                 f"{versions[0][:12]} ({_first_date(starts, versions[0])}), the last "
                 f"{versions[-1][:12]} ({_first_date(starts, versions[-1])}); "
                 "environment.jsonl in each workdir has every start's.")
    return text


def _first_date(starts: Sequence[dict], version: str) -> str:
    """The date of the first start under a code version, or 'date not recorded'."""
    dates = [s.get("date") for s in starts if str(s.get("code_version")) == version]
    return next((d for d in dates if d), "date not recorded")


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
                     if same_density(density, 1 - sparsity)]
            cells.append(f"{match[0]:.2f}" if match else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(runs: Sequence[dict], notes: Sequence[str]) -> list[str]:
    """The lines that open report.md: the title, every run, and the notes a reader must see."""
    lines = ["# Report", "", f"Runs: {', '.join(str(r['dir']) for r in runs)}", ""]
    return lines + [f"**Note:** {note}." for note in notes] + ([""] if notes else [])


def group_text(index: int, model: str, dataset: str, members: Sequence[dict],
               entries: Sequence[dict], published: dict, same_protocol: bool,
               differences: Sequence[dict]) -> list[str]:
    """The lines of one group's section up to its plots: settings, compute, the accuracy tables
    (at the best-validation epoch where a validation split exists, then at the end), what the
    published columns are, and distillation's paired differences."""
    seeds = sorted({r["config"]["seed"] for r in members})
    lines = [f"## {index + 1}. {model} on {dataset}", "",
             f"Settings: {protocol_summary(members[0]['config'])}. {len(members)} "
             f"run(s), seeds {', '.join(map(str, seeds))}: "
             + ", ".join(str(r["dir"]) for r in members) + ".", "",
             protocols.describe(members[0]["config"]) + ".", "", provenance(members), ""]
    has_val = any(e["best_val_n"] for e in entries)
    if has_val:
        lines += ["Test accuracy (%) at the epoch of best validation accuracy, mean ± std over "
                  "runs:", "", markdown_table(entries, "best_val", published), ""]
    lines += ["Test accuracy (%) at the end of training, mean ± std over runs:", "",
              markdown_table(entries, "final", published), ""]
    if published:
        lines += [f"Published columns: {published['source']} Protocol: "
                  f"{published['protocol']}. "
                  + ("These runs follow the same training protocol." if same_protocol else
                     "These runs use another protocol, so compare trends, not points.")
                  + (f" Pruning differs: {schedule_note(members)}; a one-shot ticket is not "
                     "the iterative one at the same density." if schedule_note(members) else ""),
                  ""]
    if differences:
        lines += ["Distillation, paired by seed: each distilled variant minus its undistilled "
                  "twin and minus weight rewinding, in percentage points (+: distillation more "
                  "accurate), test accuracy "
                  + ("at the best-validation epoch" if has_val else "at the end")
                  + ", mean ± std over seeds:", "", differences_table(differences), ""]
    return lines


FLOPS_CAPTION = ("Accuracy against training compute: each run's training FLOPs with the pruned "
                 "weights skipped (3 passes over the unpruned weights per example, plus a KD "
                 "run's dense teacher forward; lottery_kd/models/flops.py), over the run's own "
                 "steps (a rewound run's from its rewind point; not the dense run its mask came "
                 "from). The masked dense step computes every pruned weight too: report.json "
                 "has both counts, train_flops_sparse and train_flops_dense (the masked step's).")

CURVES_CAPTION = ("Learning curves of the finished runs (test accuracy after each epoch, mean "
                  "over seeds with ± std bands; the dense run dashed), read from the runs' "
                  "TensorBoard events:")


def overlap_text(matrix: dict, members: Sequence[dict]) -> str:
    """The sentences above the overlap table: what was compared, merged, and chance level."""
    text = (f"Mask overlap (Jaccard over the weights the masks keep, in the pruning scope "
            f"`{matrix.get('scope', 'conv')}`) between the distinct tickets of "
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
