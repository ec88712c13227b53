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

Writes DIR/lmc.json (every point of every path), lmc.md (a table of barriers) and lmc.png; a
rerun skips rewind points already done with the same settings, and resumes a killed one from
its last epoch (DIR/checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import jax

from lottery_kd import config as config_lib, masks as masks_lib
from lottery_kd.checkpoints import CheckpointError, ResumeStore
from lottery_kd.data.inputs import input_data_from_config
from lottery_kd.lottery import DENSE, LotteryRun, snapshot_name
from lottery_kd.results import write_atomic
from lottery_kd.tensorboard import ScalarWriter
from lottery_kd.train import Progress, Trainer

PyTree = Any


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
        self.run = LotteryRun.from_workdir(run_dir, log=lambda *_: None)
        self.log = log
        self.ticket, self.distill = ticket, distill
        if not self.run.snapshots.exists(snapshot_name(0, DENSE)) and distill:
            raise ValueError(f"--distill needs the dense teacher ({snapshot_name(0, DENSE)}) in "
                             f"{run_dir}: run the study first")
        init = self.run.load_existing("init", "the study's initial weights")
        self.masks = (self.run.load_existing(ticket, "--ticket")["masks"] if ticket
                      else init["masks"])
        self.plan = self.run.plan
        self._trainers: dict[int, Trainer] = {}

    def _trainer(self, data_seed: int) -> Trainer:
        """A trainer identical to the study's but for its data order (seed); kept, so that
        its steps compile once for every rewind point of a sweep."""
        if data_seed not in self._trainers:
            self._trainers[data_seed] = self.run.make_trainer(input_data_from_config(
                self.run.config.data, seed=data_seed,
                device_count=self.run.parallel.device_count))
        return self._trainers[data_seed]

    def _fit(self, trainer: Trainer, start: PyTree, masks: PyTree, start_step: int,
             num_steps: int, tag: str, out: Path, *, distill: bool):
        progress = Progress.for_mode(f"[lmc {tag}]", self.run.config.log.progress)
        writer = ScalarWriter(out / "tensorboard" / tag)
        sparsity = masks_lib.sparsity(masks, self.run.scope)
        # checkpointed every epoch under --out: a killed sweep resumes inside the copy it was
        # training (lmc.json pins --out to one study and one set of settings)
        resume = ResumeStore(out / "checkpoints" / tag, keep=2, fingerprint=self.run.fingerprint,
                             log=self.log)
        try:
            return trainer.fit(
                trainer.init_state(start["params"], start["batch_stats"], masks, start_step),
                masks, num_steps=num_steps, schedule=self.run.schedule,
                teacher=self.run.teacher() if distill else None,
                kd_stop_step=self.plan.kd_stop_step, progress=progress, resume=resume,
                log_scalars=lambda step, row: writer.scalars(
                    step, {**{k: v for k, v in row.items() if k != "distill"},
                           "sparsity": sparsity}))
        finally:
            resume.close()
            writer.close()
            progress.close()

    def spawn_point(self, rewind_step: int, out: Path) -> PyTree:
        """The dense run's weights at `rewind_step`: the study's rewind snapshot at its own
        rewind step, else retrained from init with the study's data order and its plain
        cross-entropy loss (the batch at a step is pure in (seed, step), so this is the
        study's trajectory, whether or not the copies then distill)."""
        init = self.run._load("init")
        if rewind_step == 0:
            return init
        if rewind_step == self.plan.rewind_step and self.run.snapshots.exists("rewind"):
            return self.run._load("rewind")
        fit = self._fit(self.run.trainer, init, init["masks"], 0, rewind_step,
                        f"spawn_{rewind_step}", out, distill=False)
        return {"params": fit.state.params, "batch_stats": fit.state.batch_stats}

    def measure(self, rewind_step: int, out: Path, points: int = 11) -> dict:
        """Two copies from `rewind_step` on data orders seed+1 and seed+2; errors on the path."""
        total = self.plan.total_steps
        if not 0 <= rewind_step < total:
            raise ValueError(f"--rewind: step {rewind_step} is outside [0, {total}) of this "
                             "study")
        start = self.spawn_point(rewind_step, out)
        ends = []
        for copy in (1, 2):
            trainer = self._trainer(self.run.config.seed + copy)
            fit = self._fit(trainer, start, self.masks, rewind_step, total - rewind_step,
                            f"k{rewind_step}_copy{copy}", out, distill=self.distill)
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for result in sorted(results, key=lambda r: r["rewind_step"]):
        axes.plot(result["alphas"], [100 * e for e in result["test_error"]], marker="o",
                  label=f"rewind step {result['rewind_step']} "
                        f"(epoch {result['rewind_epoch']:.3g}): barrier "
                        f"{100 * result['barrier']:.2f}")
    axes.set_xlabel("interpolation alpha (0: copy 1, 1: copy 2)")
    axes.set_ylabel("test error %")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_sweep(run_dir: str | os.PathLike, rewinds: Sequence[str], out: str | os.PathLike, *,
              ticket: str = "", distill: bool = False, points: int = 11, log=print) -> dict:
    """Measure every rewind point (e.g. '0it', '2ep'), resuming from DIR/lmc.json."""
    if points < 3:
        raise ValueError(f"--points must be >= 3 (endpoints and at least one between), got "
                         f"{points}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"run_dir": str(Path(run_dir).resolve()), "ticket": ticket, "distill": distill,
                "points": points}
    path = out / "lmc.json"
    saved = json.loads(path.read_text()) if path.is_file() else {"settings": settings,
                                                                 "results": []}
    if saved["settings"] != settings:
        raise ValueError(f"{out} holds LMC results with other settings ({saved['settings']}); "
                         "use another --out")
    lmc = LinearModeConnectivity(run_dir, ticket=ticket, distill=distill, log=log)
    write_atomic(path, json.dumps(saved, indent=1) + "\n")  # claims --out before any training
    steps = [config_lib.parse_step_count(r, lmc.plan.steps_per_epoch) for r in rewinds]
    for step in steps:
        if any(r["rewind_step"] == step for r in saved["results"]):
            continue
        saved["results"].append(lmc.measure(step, out, points))
        write_atomic(path, json.dumps(saved, indent=1) + "\n")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # that point is in lmc.json now
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.lmc",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the workdir of a study (its config and snapshots)")
    parser.add_argument("--rewind", default="0it", help="comma-separated rewind points, e.g. "
                        "0it,500it,2ep")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ticket", default="", help="a snapshot whose mask to use, e.g. "
                        "level_2_lt (default: the dense network)")
    parser.add_argument("--distill", action="store_true", help="train the copies with the KD "
                        "loss from the study's dense teacher")
    parser.add_argument("--points", type=int, default=11)
    args = parser.parse_args(argv)
    try:
        run_sweep(args.run_dir, config_lib.parse_names(args.rewind), args.out,
                  ticket=args.ticket, distill=args.distill, points=args.points)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'lmc.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
