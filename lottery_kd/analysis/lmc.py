"""Linear mode connectivity and instability (Frankle et al. 2020).

From the dense trajectory of a study at rewind step k, two copies are trained to the end on
different data orders (and augmentations); the test error is evaluated along the straight line
between their final weights (BatchNorm statistics interpolated too). The error barrier

    barrier = max_alpha err(alpha) - (err(0) + err(1)) / 2

is ~0 when the copies end in one linearly connected basin (the network is "stable" at k). Works
for the dense network, for a ticket's mask (weights at step k of the dense run, masked: weight
rewinding) and with the KD loss from the study's dense teacher.

    python -m lottery_kd.lmc RUN_DIR --rewind 0it,1ep,2ep --out DIR [--ticket level_1_lt]
        [--distill] [--points 11]

Two more modes train nothing and follow straight lines between the study's saved snapshots
(lottery_kd.analysis.lmc_paths): --levels, successive levels of one pruning chain, and
--pruned-dense, each ticket against the pruned dense solution its mask was cut from:

    python -m lottery_kd.lmc RUN_DIR --levels --variants lt,kd --out DIR
    python -m lottery_kd.lmc RUN_DIR --pruned-dense --variants lt,kd --out DIR

Writes DIR/lmc.json (every point of every path), lmc.md (a table of barriers) and lmc.png; a
rerun skips rewind points already done with the same settings, and resumes a killed one from
its last epoch (DIR/checkpoints).

Every argument is checked before anything is written into DIR or trained: RUN_DIR is a study,
each --rewind point parses and lies inside the study's training, --ticket is a snapshot of the
study, --distill finds the dense teacher, DIR is a folder (or can be made one) whose lmc.json,
if any, is readable. The settings go into DIR/lmc.json just before the first training. DIR
belongs to the settings there once it holds something trained for them: a result in lmc.json
or a resume checkpoint in DIR/checkpoints (a killed point); other settings are then refused. A
lmc.json with neither (a command that stopped before it trained an epoch) is replaced by the
next command's settings, its leftover DIR/tensorboard removed. While it trains, the command
holds DIR/study.lock: a second command on DIR is refused. The Deep Bootstrap
(lottery_kd.analysis.bootstrap) follows the same rules (lottery_kd.analysis.sweep).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax

from lottery_kd import config as config_lib

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study.checkpoints import CheckpointError, quiet_failed_restores
from lottery_kd.analysis.sweep import check_out, check_teacher, measure_missing, open_study
from lottery_kd.data.inputs import input_data_from_config
from lottery_kd.kernels.conv3x3 import execution_record
from lottery_kd.study.results import write_atomic
from lottery_kd.training.run_setup import RunOutputs
from lottery_kd.training.trainer import Trainer

PyTree = Any
# what every lmc.json result holds (LinearModeConnectivity.measure; checked when one is resumed)
RESULT_FIELDS = ("rewind_step", "rewind_epoch", "alphas", "test_error", "test_loss", "barrier",
                 "endpoint_errors", "sparsity")


def interpolate(a: PyTree, b: PyTree, alpha: float) -> PyTree:
    """(1 - alpha) * a + alpha * b, leaf by leaf."""
    return jax.tree.map(lambda x, y: (1.0 - alpha) * x + alpha * y, a, b)


def error_barrier(errors: Sequence[float]) -> float:
    """Frankle et al.'s instability: the highest error on the path above the endpoints' mean."""
    return float(max(errors) - 0.5 * (errors[0] + errors[-1]))


class LinearModeConnectivity:
    """LMC experiments on the study in `run_dir` (its config, data, snapshots and teacher)."""

    def __init__(self, run_dir: str | os.PathLike, *, ticket: str = "", distill: bool = False,
                 log=print):
        self.run = open_study(run_dir)
        self.log = log
        self.ticket, self.distill = ticket, distill
        if distill:
            check_teacher(self.run, "--distill")
        init = self.run.load_existing("init", "the study's initial weights")
        self.masks = (self.run.load_existing(ticket, "--ticket")["masks"] if ticket
                      else init["masks"])
        self.plan = self.run.plan
        self._trainers: dict[tuple[Optional[int], str], Trainer] = {}

    def _trainer(self, data_seed: Optional[int], conv_impl: str) -> Trainer:
        """A trainer identical to the study's but for its data order (seed; None: the study's
        own) and its conv_impl; kept, so that its steps compile once for every rewind point."""
        key = (data_seed, conv_impl)
        if key not in self._trainers:
            data = self.run.data if data_seed is None else input_data_from_config(
                self.run.config.data, seed=data_seed,
                device_count=self.run.parallel.device_count)
            self._trainers[key] = self.run.make_trainer(data, conv_impl)
        return self._trainers[key]

    def _fit(self, data_seed: Optional[int], start: PyTree, masks: PyTree, start_step: int,
             num_steps: int, tag: str, out: Path, *, distill: bool):
        # checkpointed every epoch under --out: a killed sweep resumes inside the copy it was
        # training (lmc.json pins --out to one study and one set of settings), on the path it
        # started on (Study.copy_conv_impl)
        store = out / "checkpoints" / tag
        conv_impl = self.run.copy_conv_impl(store)
        trainer = self._trainer(data_seed, conv_impl)
        outputs = RunOutputs.open(f"[lmc {tag}]", progress_mode=self.run.config.log.progress,
                                  tensorboard=out / "tensorboard" / tag, resume=store, keep=2,
                                  fingerprint={**self.run.fingerprint,
                                               **execution_record(conv_impl)},
                                  log=self.log)
        sparsity = masks_lib.sparsity(masks, self.run.scope)
        try:
            return trainer.fit(
                trainer.init_state(start["params"], start["batch_stats"], masks, start_step),
                masks, num_steps=num_steps, schedule=self.run.schedule,
                teacher=self.run.teacher() if distill else None,
                kd_stop_step=self.plan.kd_stop_step, callbacks=outputs.callbacks(
                    log_scalars=lambda step, row: outputs.write_row(step, row,
                                                                    sparsity=sparsity)))
        finally:
            outputs.close()

    def rewind_steps(self, rewinds: Sequence[str]) -> list[int]:
        """The steps of --rewind points such as '0it' or '2ep', each checked to lie inside the
        study's training; a ValueError naming the first one that does not."""
        if not rewinds:
            raise ValueError("--rewind names no point; give e.g. --rewind 0it,1ep")
        steps = []
        for text in rewinds:
            try:
                step = config_lib.parse_step_count(text, self.plan.steps_per_epoch)
            except ValueError as error:
                raise ValueError(f"--rewind: {error}") from None
            self.check_rewind(step, text)
            steps.append(step)
        return steps

    def check_rewind(self, step: int, text: str = "") -> None:
        total, per_epoch = self.plan.total_steps, self.plan.steps_per_epoch
        if not 0 <= step < total:
            raise ValueError(
                f"--rewind {text or f'{step}it'} is step {step}, outside this study's training "
                f"(steps 0 to {total - 1}: {total / per_epoch:g} epochs of {per_epoch} steps); "
                "choose points inside it")

    def spawn_point(self, rewind_step: int, out: Path) -> PyTree:
        """The dense run's weights at `rewind_step`: the study's rewind snapshot at its own
        rewind step, else retrained from init with the study's data order and its plain
        cross-entropy loss (the batch at a step is pure in (seed, step), so this is the
        study's trajectory, whether or not the copies then distill)."""
        init = self.run.load_snapshot("init")
        if rewind_step == 0:
            return init
        if rewind_step == self.plan.rewind_step and self.run.snapshots.exists("rewind"):
            return self.run.load_snapshot("rewind")
        fit = self._fit(None, init, init["masks"], 0, rewind_step, f"spawn_{rewind_step}", out,
                        distill=False)
        return {"params": fit.state.params, "batch_stats": fit.state.batch_stats}

    def measure(self, rewind_step: int, out: Path, points: int = 11) -> dict:
        """Two copies from `rewind_step` on data orders seed+1 and seed+2; errors on the path."""
        total = self.plan.total_steps
        self.check_rewind(rewind_step)
        start = self.spawn_point(rewind_step, out)
        ends = []
        for copy in (1, 2):
            fit = self._fit(self.run.config.seed + copy, start, self.masks, rewind_step,
                            total - rewind_step, f"k{rewind_step}_copy{copy}", out,
                            distill=self.distill)
            ends.append(fit)
        alphas = [i / (points - 1) for i in range(points)]
        errors, losses = [], []
        masks = self.run.parallel.replicate(self.masks)
        for alpha in alphas:
            params = interpolate(ends[0].state.params, ends[1].state.params, alpha)
            stats = interpolate(ends[0].state.batch_stats, ends[1].state.batch_stats, alpha)
            accuracy, loss = self.run.trainer.evaluate(params, stats, masks, self.run.data.test)
            errors.append(1.0 - accuracy)
            losses.append(loss)
        result = {"rewind_step": rewind_step,
                  "rewind_epoch": rewind_step / self.plan.steps_per_epoch,
                  "alphas": alphas, "test_error": errors, "test_loss": losses,
                  "barrier": error_barrier(errors),
                  "endpoint_errors": [errors[0], errors[-1]],
                  "sparsity": masks_lib.sparsity(self.masks, self.run.scope)}
        self.log(f"[lmc] rewind step {rewind_step}: endpoints {100 * errors[0]:.2f}% / "
                 f"{100 * errors[-1]:.2f}% error, barrier {100 * result['barrier']:.2f} points")
        return result


def _plot(results: Sequence[dict], title: str, path: Path) -> None:
    """Test error along each path, with the endpoints' mean dotted: the barrier is the height of
    the path above it."""
    from lottery_kd.analysis import plotting

    with plotting.figure(path, figsize=(7, 5)) as (_, axes):
        for result in sorted(results, key=lambda r: r["rewind_step"]):
            line, = axes.plot(result["alphas"], [100 * e for e in result["test_error"]],
                              marker="o",
                              label=f"rewind to step {result['rewind_step']} "
                                    f"(epoch {result['rewind_epoch']:.3g}): barrier "
                                    f"{100 * result['barrier']:.2f} points")
            ends = result["test_error"][0], result["test_error"][-1]
            axes.axhline(50 * (ends[0] + ends[1]), color=line.get_color(), linestyle=":",
                         linewidth=1)
        sparsity = results[0].get("sparsity", 0.0) if results else 0.0
        axes.set_xlabel("interpolation alpha (0: copy 1, 1: copy 2)")
        axes.set_ylabel("test error % along the path")
        axes.set_title(title + (f", {100 * sparsity:.1f} % sparse" if sparsity else ""),
                       fontsize=10)
        axes.grid(alpha=0.3)
        # below the axes, not on the paths
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                    title="barrier: highest error above the endpoints' mean (dotted)",
                    title_fontsize=7)


def run_sweep(run_dir: str | os.PathLike, rewinds: Sequence[str], out: str | os.PathLike, *,
              ticket: str = "", distill: bool = False, points: int = 11,
              log: Callable[[str], None] = print) -> dict:
    """Measure every rewind point (e.g. '0it', '2ep'), resuming from DIR/lmc.json. Every
    argument is checked before anything is written into `out` or trained."""
    if points < 3:
        raise ValueError(f"--points must be >= 3 (endpoints and at least one between), got "
                         f"{points}")
    if not str(out).strip():  # before Path(), which reads "" as "."
        raise ValueError("--out is empty; give a folder (it is made if missing)")
    out = Path(out)
    settings = {"run_dir": str(Path(run_dir).resolve()), "ticket": ticket, "distill": distill,
                "points": points}
    saved = check_out(out, "lmc.json", settings, "results", RESULT_FIELDS)
    lmc = LinearModeConnectivity(run_dir, ticket=ticket, distill=distill, log=log)
    steps = lmc.rewind_steps(rewinds)
    saved = saved or {"settings": settings, "results": []}
    measure_missing(out, "lmc.json", saved, "results", steps, key=lambda step: step,
                    record_key=lambda r: r["rewind_step"],
                    measure=lambda step: lmc.measure(step, out, points))
    results = sorted(saved["results"], key=lambda r: r["rewind_step"])
    what = (f"{lmc.run.config.model.name} on {lmc.run.config.data.name}, "
            f"{'ticket ' + ticket if ticket else 'dense'}{', KD' if distill else ''}")
    lines = [f"# Linear mode connectivity: {what}", "",
             "| rewind step | rewind epoch | error copy 1 % | error copy 2 % | barrier (points) |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rewind_step']} | {r['rewind_epoch']:.3g} | "
                     f"{100 * r['endpoint_errors'][0]:.2f} | {100 * r['endpoint_errors'][1]:.2f}"
                     f" | {100 * r['barrier']:.2f} |")
    write_atomic(out / "lmc.md", "\n".join(lines) + "\n\n![error along the path](lmc.png)\n")
    _plot(results, f"LMC: {what}", out / "lmc.png")
    return saved


def _mode(args: argparse.Namespace) -> str:
    """'rewind' (train two copies), or the evaluation-only 'levels' or 'pruned_dense'
    (lottery_kd.analysis.lmc_paths); a ValueError for options of two modes."""
    if args.levels and args.pruned_dense:
        raise ValueError("--levels and --pruned-dense are two analyses: give one per command "
                         "(and another --out, or the same: their files differ)")
    flag = "--levels" if args.levels else "--pruned-dense" if args.pruned_dense else ""
    if not flag:
        if args.variants:
            raise ValueError("--variants goes with --levels or --pruned-dense; the --rewind "
                             "mode takes --ticket and --distill instead")
        return "rewind"
    rewind_only = [name for name, given in (("--rewind", args.rewind is not None),
                                            ("--ticket", bool(args.ticket)),
                                            ("--distill", args.distill)) if given]
    if rewind_only:
        raise ValueError(f"{flag} trains nothing (it evaluates the study's snapshots), so "
                         f"{', '.join(rewind_only)} (of the --rewind mode) does not apply: "
                         "drop it, or drop " + flag)
    if not args.variants:
        raise ValueError(f"{flag} needs --variants, the retrain variants to follow, e.g. "
                         "--variants lt,kd")
    return "levels" if args.levels else "pruned_dense"


def main(argv: Optional[Sequence[str]] = None) -> int:
    quiet_failed_restores()
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.lmc",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the workdir of a study (its config and snapshots)")
    parser.add_argument("--rewind", default=None, help="comma-separated rewind points, e.g. "
                        "0it,500it,2ep (default 0it)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ticket", default="", help="a snapshot whose mask to use, e.g. "
                        "level_2_lt (default: the dense network)")
    parser.add_argument("--distill", action="store_true", help="train the copies with the KD "
                        "loss from the study's dense teacher")
    parser.add_argument("--levels", action="store_true", help="instead of --rewind, train "
                        "nothing: the path between the trained tickets of successive levels of "
                        "each --variants chain (Paul et al. 2023)")
    parser.add_argument("--pruned-dense", action="store_true", help="instead of --rewind, train "
                        "nothing: the path from each --variants ticket to the pruned dense "
                        "solution its mask was cut from (Evci et al. 2022)")
    parser.add_argument("--variants", default="", help="with --levels or --pruned-dense: "
                        "comma-separated retrain variants of the study, e.g. lt,kd")
    parser.add_argument("--points", type=int, default=11)
    args = parser.parse_args(argv)
    try:
        mode = _mode(args)
        if mode == "rewind":
            rewinds = config_lib.parse_names("0it" if args.rewind is None else args.rewind)
            run_sweep(args.run_dir, rewinds, args.out, ticket=args.ticket,
                      distill=args.distill, points=args.points)
        else:
            from lottery_kd.analysis import lmc_paths  # it builds on this module
            lmc_paths.run_paths(args.run_dir, mode, config_lib.parse_names(args.variants),
                                args.out, points=args.points)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / ('lmc.md' if mode == 'rewind' else f'lmc_{mode}.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
