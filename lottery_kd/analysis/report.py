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
    accuracy_vs_flops_G.png        accuracy vs each run's training FLOPs, pruned weights skipped
                                   (models.flops; rows from before it are counted from the config)
    layer_sparsity_G.png           per-layer density of every ticket
    curves_G.png                   test accuracy per epoch of each run, one column per sparsity
    overlap_G.png                  Jaccard overlap of the distinct tickets of all seeds (heat map)
    report.json                    every number above, for scripts

The work is split by concern: report_runs loads, groups and merges the runs, report_markdown
words report.md, report_figures draws the report's plots; this module puts them together and is
the command line. Every name they define that callers use is importable from here too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from lottery_kd import published as published_lib
from lottery_kd.runtime.out_paths import check_out_folder
from lottery_kd.analysis import report_markdown
from lottery_kd.analysis.report_figures import (plot_accuracy, plot_accuracy_vs_flops,
                                                plot_layers)
from lottery_kd.analysis.report_markdown import (differences_table, markdown_table,
                                                 overlap_text, protocol_summary, provenance)
from lottery_kd.analysis.report_runs import (PUBLISHED_METHODS, ReportError, aggregate,
                                             group_key, layer_densities, load_run, network_order,
                                             paired_differences, protocol_matches, published_for,
                                             schedule_note, ticket_overlap,
                                             undistilled_twin)

# The older private names of the two report plots (tests call them).
_plot_accuracy, _plot_layers = plot_accuracy, plot_layers

__all__ = ["PUBLISHED_METHODS", "REFERENCE", "ReportError", "aggregate", "differences_table",
           "group_key", "layer_densities", "load_run", "main", "markdown_table", "network_order",
           "overlap_text", "paired_differences", "plot_accuracy", "plot_layers",
           "protocol_matches", "protocol_summary", "provenance", "published_for",
           "ticket_overlap", "undistilled_twin", "write_report"]

REFERENCE = "renda2020_cifar10_imagenet"  # lottery_kd.published: carried with the package


def _report_group(index: int, model: str, dataset: str, members: list[dict],
                  reference: Optional[dict], out: Path, overlap: bool) -> tuple[list[str], dict]:
    """(report.md lines, report.json entry) of one group of runs; draws its plots into `out`."""
    from lottery_kd.analysis import curves as curves_lib
    from lottery_kd.analysis import overlap as overlap_lib

    slug = f"{index + 1}_{model}_{dataset}".replace("@", "_")
    entries = aggregate(members)
    published = published_for(model.split("@")[0], dataset, reference)
    same = all(protocol_matches(r["config"]) for r in members)
    key = "best_val" if any(e["best_val_n"] for e in entries) else "final"
    differences = paired_differences(members, key)
    document = report_markdown.group_text(index, model, dataset, members, entries, published,
                                          same, differences)
    accuracy_png = out / f"accuracy_vs_sparsity_{slug}.png"
    plot_accuracy(entries, published, same, f"{model} on {dataset}", accuracy_png, key,
                  schedule_note(members) if published else "")
    document += [f"![accuracy vs sparsity]({accuracy_png.name})", ""]
    if any(not math.isnan(e["train_flops_sparse"]) for e in entries if e["sparsity"] > 0):
        flops_png = out / f"accuracy_vs_flops_{slug}.png"
        plot_accuracy_vs_flops(entries, f"{model} on {dataset}: accuracy against training "
                               "compute", flops_png, key)
        document += [report_markdown.FLOPS_CAPTION, "",
                     f"![accuracy vs training FLOPs]({flops_png.name})", ""]
    learning_curves = curves_lib.finished_curves(members)
    if learning_curves:
        curves_png = out / f"curves_{slug}.png"
        variants = list(dict.fromkeys(e["variant"] for e in entries))
        curves_lib.plot_curves(learning_curves, variants,
                               f"test accuracy during training: {model} on {dataset}", curves_png)
        document += [report_markdown.CURVES_CAPTION, "", f"![learning curves]({curves_png.name})",
                     ""]
    densities = layer_densities(members)
    group = {"model": model, "dataset": dataset,
             "protocol": protocol_summary(members[0]["config"]), "entries": entries,
             "published": bool(published), "same_protocol": same,
             "layer_densities": densities, "paired_differences": differences,
             "learning_curves": learning_curves}
    if densities:
        layers_png = out / f"layer_sparsity_{slug}.png"
        plot_layers(densities, f"per-layer density of each ticket: {model}", layers_png)
        document += [f"![per-layer density]({layers_png.name})", ""]
    if overlap:
        matrix = ticket_overlap(members)
        if matrix:
            overlap_png = out / f"overlap_{slug}.png"
            overlap_lib.plot_heatmap(matrix, f"mask overlap (Jaccard): {model}", overlap_png)
            document += [overlap_text(matrix, members), "", overlap_lib.markdown(matrix), "",
                         f"![overlap]({overlap_png.name})", ""]
            group["overlap"] = matrix
    return document, group


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 reference_path: Optional[str | os.PathLike] = None,
                 overlap: bool = True) -> dict:
    """Write report.md, report.json and the plots for `run_dirs` into `out`; returns the JSON."""
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder for report.md and the plots")
    reference = (_read_reference(Path(reference_path)) if reference_path
                 else published_lib.load(REFERENCE))
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    notes = [note for run in runs for note in run["notes"]]
    document = report_markdown.header(runs, notes)
    summary: dict[str, Any] = {"groups": [], "notes": notes}
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))  # the old report stays whole
    try:
        for index, ((model, dataset, _), members) in enumerate(groups.items()):
            lines, group = _report_group(index, model, dataset, members, reference, staging,
                                         overlap)
            document += lines
            summary["groups"].append(group)
        summary["files"] = sorted(p.name for p in staging.iterdir()) + ["report.json",
                                                                         "report.md"]
        (staging / "report.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        (staging / "report.md").write_text("\n".join(document))
        _replace_report(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _replace_report(out: Path, staging: Path) -> None:
    """Swap the report drawn in `staging` in for the one in `out`: the previous report's files
    (report.json's list, or report.md's figures for reports from before it) are removed, so
    no figure of other runs stays beside the new text; report.md moves in last."""
    previous = {"report.md", "report.json"}
    try:
        files = json.loads((out / "report.json").read_text()).get("files", [])
        if isinstance(files, list):  # hand-edited: only the names in a list count
            previous.update(n for n in files if isinstance(n, str))
    except (OSError, ValueError, AttributeError):
        pass
    if (out / "report.md").is_file():
        previous.update(re.findall(r"\]\(([^)/\\]+\.png)\)", (out / "report.md").read_text()))
    for name in previous:
        if Path(name).name == name and name not in ("", ".", ".."):
            (out / name).unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "report.md"):
        os.replace(path, out / path.name)


def _read_reference(path: Path) -> dict:
    """A published-numbers file given with --reference; ReportError naming it if unreadable."""
    try:
        reference = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"--reference {path}: cannot be read as JSON ({error})") from None
    shaped = (isinstance(reference, dict) and isinstance(reference.get("iterative", {}), dict)
              and isinstance(reference.get("protocol"), dict) and "source" in reference)
    if not shaped:
        raise ReportError(f"--reference {path}: not a published-numbers file (an object with "
                          "'source', 'protocol' and 'iterative', as "
                          "lottery_kd/published/renda2020_cifar10_imagenet.json)")
    return reference


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m lottery_kd.report`: write the report; 2 with a message for a bad argument."""
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
        check_out_folder(args.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summary = write_report(args.runs, args.out, reference_path=args.reference or None,
                               overlap=not args.no_overlap)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # write_report swaps the new report in only when it is whole
        print(f"interrupted: {args.out} holds the previous report, if any, unchanged; rerun "
              "the same command", file=sys.stderr)
        return 130
    for note in summary["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
