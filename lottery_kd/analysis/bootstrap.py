"""Deep Bootstrap (Nakkiran et al. 2021): how far is training on n examples from the ideal world?

Real world: train on a fixed set of n training examples for many epochs. Ideal world: the same
number of steps, every batch made of fresh examples never seen before (here, the rest of the
training split, used once). The test-error gap between the two over training says how much of
the network's generalisation is "online optimisation". Run it for the dense network and for a
sparse ticket of a study, with and without the KD loss from the study's dense teacher:

    python -m lottery_kd.bootstrap RUN_DIR --real-size 5000 --out DIR [--ticket level_1_kd]
        [--eval-every 50]

The ticket's mask is trained from the init snapshot (as `lt`, or `kd` with the teacher). The
number of steps is what the fresh stream allows (rest // batch size) unless --steps is smaller.
Each evaluation point also records the training minibatches' error and loss over the steps since
the last one (training mode, augmented: not the error on the n examples themselves).
Writes DIR/bootstrap.json, bootstrap.md (error gap per evaluation point) and bootstrap.png; a
rerun skips the settings already done, and a killed run resumes inside the world it was training
(checkpoints at every evaluation point under DIR/checkpoints).

Every argument is checked before anything is written into DIR or trained: RUN_DIR is a study
with in-memory data and its init snapshot, --real-size leaves at least one batch of the study's
training split to the fresh stream, --steps >= 0, --eval-every >= 1, each --ticket is a snapshot
of the study, and --kd on/both with a ticket finds the dense teacher. DIR follows lmc's rule
(analysis.lmc): the settings go into DIR/bootstrap.json just before the first training; DIR
belongs to them once it holds a comparison or a resume checkpoint (other settings are then
refused), and a bootstrap.json with neither is replaced by the next command's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.study.checkpoints import CheckpointError, quiet_failed_restores
from lottery_kd.data import Dataset, load_dataset
from lottery_kd.data.inputs import InputData
from lottery_kd.kernels.conv3x3 import execution_record
from lottery_kd.config import parse_names
from lottery_kd.analysis.sweep import (check_out, check_teacher, measure_missing,
                                      open_study)
from lottery_kd.study.results import write_atomic
from lottery_kd.training.run_setup import RunOutputs
from lottery_kd.training.trainer import Trainer

# what every bootstrap.json comparison holds (DeepBootstrap.compare; checked when resumed)
COMPARISON_FIELDS = ("tag", "ticket", "distill", "sparsity", "steps", "real", "ideal", "gap")


def split_worlds(dataset: Dataset, real_size: int) -> tuple[Dataset, Dataset]:
    """(real, ideal) datasets: the first `real_size` training examples, and the rest."""
    n = len(dataset.train_labels)
    if not 0 < real_size < n:
        raise ValueError(f"--real-size must be in (0, {n}) for this training split, got "
                         f"{real_size}")
    real = dataclasses.replace(dataset, train_images=dataset.train_images[:real_size],
                               train_labels=dataset.train_labels[:real_size])
    ideal = dataclasses.replace(dataset, train_images=dataset.train_images[real_size:],
                                train_labels=dataset.train_labels[real_size:])
    return real, ideal


class DeepBootstrap:
    """Real vs ideal world on the data and model of the study in `run_dir`."""

    def __init__(self, run_dir: str | os.PathLike, real_size: int, *, log=print):
        self.run = open_study(run_dir)
        config = self.run.config
        if config.data.name == "imagenet2012":
            raise ValueError("the Deep Bootstrap here needs an in-memory data set (cifar10, "
                             "cifar100, digits)")
        dataset = load_dataset(config.data.name, source=config.data.source,
                               directory=config.data.dir,
                               validation_size=config.data.validation_size,
                               validation_split=config.data.validation_split,
                               normalization=config.data.normalization,
                               tfds_data_dir=config.data.tfds_data_dir,
                               tfds_download=config.data.tfds_download,
                               verify_checksums=config.data.verify_checksums)
        self.real, self.ideal = split_worlds(dataset, real_size)
        self.batch_size = config.train.batch_size
        self.log = log
        self._trainers: dict[tuple[str, str], Trainer] = {}

    def _trainer(self, name: str, dataset, conv_impl: str) -> Trainer:
        """One trainer per world and conv_impl, kept: its steps compile once for every
        comparison."""
        if (name, conv_impl) not in self._trainers:
            self._trainers[(name, conv_impl)] = self.run.make_trainer(InputData.from_dataset(
                dataset, seed=self.run.config.seed,
                eval_batch_size=self.run.config.data.eval_batch_size,
                device_count=self.run.parallel.device_count), conv_impl)
        return self._trainers[(name, conv_impl)]

    def max_steps(self) -> int:
        """Steps the fresh (ideal-world) stream allows without repeating an example."""
        return len(self.ideal.train_labels) // self.batch_size

    def world(self, name: str, dataset: Dataset, masks: Any, *, steps: int, eval_every: int,
              distill: bool, tag: str, out: Path) -> list[dict]:
        """Test error every `eval_every` steps of one world (a constant learning rate: the
        study's base rate, as the ideal world has no epochs to schedule by). The state and the
        curve so far are checkpointed at every evaluation point under out/checkpoints: a killed
        run goes on from the last one (the batch at a step is pure in the step, so it ends as an
        uninterrupted run would)."""
        store = out / "checkpoints" / f"{tag}_{name}"
        conv_impl = self.run.copy_conv_impl(store)  # the path a killed run started on
        trainer = self._trainer(name, dataset, conv_impl)
        init = self.run.load_snapshot("init")
        state = trainer.init_state(init["params"], init["batch_stats"], masks, 0)
        masks = self.run.parallel.replicate(masks)
        teacher = self.run.teacher() if distill else None
        lr = self.run.config.train.lr
        outputs = RunOutputs.open(f"[bootstrap {tag} {name}]",
                                  progress_mode=self.run.config.log.progress,
                                  tensorboard=out / "tensorboard" / f"{tag}_{name}",
                                  resume=store, keep=2, log=self.log,
                                  fingerprint={**self.run.fingerprint,
                                               **execution_record(conv_impl)})
        progress, writer, resume = outputs.progress, outputs.writer, outputs.resume
        try:
            curve: list[dict] = []
            restored = resume.restore_latest({"state": state, "masks": masks},
                                             self.run.parallel.replicated)
            if restored is not None:
                state, curve = restored[0]["state"], restored[1]["curve"]
            done = int(state.step)
            progress.start(steps, done=done)
            while done < steps:
                chunk = min(eval_every, steps - done)
                fit = trainer.fit(state, masks, num_steps=chunk, schedule=lambda s: lr,
                                  teacher=teacher)
                state, done = fit.state, done + chunk
                progress.advance(chunk)
                row = {**fit.history[-1], **chunk_train_metrics(fit.history, done - chunk)}
                progress.epoch_end(row)  # loss and accuracies on the bar, or one log line
                point = {"step": done, "test_error": 1.0 - row["test_accuracy"],
                         "train_error": 1.0 - row["train_accuracy"],
                         "train_loss": row["train_loss"]}
                writer.scalars(done, {**point, "lr": lr, "train_grad_norm":
                                      row["train_grad_norm"],
                                      "sparsity": masks_lib.sparsity(masks, self.run.scope)})
                curve.append(point)
                resume.save(done, {"state": state, "masks": masks}, {"curve": curve})
        finally:
            outputs.close()
        return curve

    def compare(self, *, ticket: str, distill: bool, steps: int, eval_every: int,
                out: Path) -> dict:
        """Real vs ideal world for one ticket's mask (dense without one), with or without KD."""
        masks = (self.run.load_existing(ticket, "--ticket")["masks"] if ticket
                 else self.run.load_existing("init", "the study's initial weights")["masks"])
        tag = (ticket or "dense") + ("_kd" if distill else "")
        real = self.world("real", self.real, masks, steps=steps, eval_every=eval_every,
                          distill=distill, tag=tag, out=out)
        ideal = self.world("ideal", self.ideal, masks, steps=steps, eval_every=eval_every,
                           distill=distill, tag=tag, out=out)
        gap = [r["test_error"] - i["test_error"] for r, i in zip(real, ideal)]
        self.log(f"[bootstrap {tag}] final test error real {100 * real[-1]['test_error']:.2f}%"
                 f", ideal {100 * ideal[-1]['test_error']:.2f}%, gap {100 * gap[-1]:.2f} points")
        return {"tag": tag, "ticket": ticket, "distill": distill,
                "sparsity": masks_lib.sparsity(masks, self.run.scope),
                "steps": [p["step"] for p in real], "real": real, "ideal": ideal, "gap": gap}


def chunk_train_metrics(history: Sequence[dict], start: int) -> dict:
    """The training minibatches' metrics (train_*) over all the steps of one fit from global
    step `start`, weighting each history row by the steps it averages: a row closes at each
    epoch end, so the real world's last row alone (since its epoch began) would cover fewer
    steps than the ideal world's, which has no epoch end."""
    steps = [row["step"] - before for row, before in
             zip(history, [start] + [row["step"] for row in history[:-1]])]
    keys = [key for key in history[-1] if key.startswith("train_")]
    return {key: sum(n * row[key] for n, row in zip(steps, history)) / sum(steps)
            for key in keys}


def _plot(comparisons: Sequence[dict], title: str, path: Path) -> None:
    """Test error of both worlds (real solid, ideal dashed; a colour and marker per run) and
    their gap; one legend beside the panels."""
    from matplotlib.lines import Line2D

    from lottery_kd.analysis import plotting

    colors = plotting.series_colors(len(comparisons))
    with plotting.figure(path, figsize=(12.5, 4.4), ncols=2) as (figure, axes):
        handles = []
        for index, (comparison, color) in enumerate(zip(comparisons, colors)):
            marker = plotting.MARKERS[index % len(plotting.MARKERS)]
            label = f"{comparison['tag']} ({100 * comparison['sparsity']:.1f} % sparse)"
            steps = comparison["steps"]
            axes[0].plot(steps, [100 * p["test_error"] for p in comparison["real"]],
                         color=color, marker=marker, markersize=4)
            axes[0].plot(steps, [100 * p["test_error"] for p in comparison["ideal"]],
                         linestyle="--", color=color, marker=marker, markersize=4,
                         markerfacecolor="none")
            line, = axes[1].plot(steps, [100 * g for g in comparison["gap"]],
                                 color=color, marker=marker, markersize=4, label=label)
            handles.append(line)
        handles += [Line2D([], [], color="black", label="real world: the same examples, reused"),
                    Line2D([], [], color="black", linestyle="--",
                           label="ideal world: fresh examples")]
        axes[1].axhline(0, color="gray", linewidth=1)  # no gap
        axes[0].set_ylabel("test error %")
        axes[0].set_title("test error, real (solid) and ideal (dashed) world", fontsize=9)
        axes[1].set_ylabel("test error gap, real - ideal (points)")
        axes[1].set_title("gap: the real world's extra test error", fontsize=9)
        for ax in axes:
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
        axes[1].legend(handles=handles, fontsize=7, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))
        figure.suptitle(title, fontsize=10)


def run_bootstrap(run_dir: str | os.PathLike, out: str | os.PathLike, *, real_size: int,
                  tickets: Sequence[str] = ("",), distill_options: Sequence[bool] = (False,),
                  steps: int = 0, eval_every: int = 50,
                  pairs: Optional[Sequence[tuple[str, bool]]] = None,
                  log: Callable[[str], None] = print) -> dict:
    """Compare every (ticket, distill) pair, resuming from DIR/bootstrap.json: `pairs` in its
    order, by default every ticket ('': dense) with every distill option. Every argument is
    checked before anything is written into `out` or trained."""
    if eval_every < 1:
        raise ValueError(f"--eval-every must be >= 1, got {eval_every}")
    if steps < 0:
        raise ValueError(f"--steps must be >= 0 (0: all the fresh stream allows), got {steps}")
    pairs = list(pairs if pairs is not None else
                 [(ticket, distill) for ticket in tickets for distill in distill_options])
    if not str(out).strip():  # before Path(), which reads "" as "."
        raise ValueError("--out is empty; give a folder (it is made if missing)")
    out = Path(out)
    bootstrap = DeepBootstrap(run_dir, real_size, log=log)
    if real_size < bootstrap.batch_size:  # the real world could not fill one batch
        raise ValueError(f"--real-size {real_size} is less than one batch of "
                         f"{bootstrap.batch_size} (the study's train.batch_size): raise it")
    steps = min(steps or bootstrap.max_steps(), bootstrap.max_steps())
    if steps < 1:
        raise ValueError(f"the fresh stream holds {len(bootstrap.ideal.train_labels)} examples, "
                         f"less than one batch of {bootstrap.batch_size}: lower --real-size")
    bootstrap.run.load_existing("init", "the study's initial weights")
    for ticket in dict.fromkeys(ticket for ticket, _ in pairs if ticket):
        bootstrap.run.load_existing(ticket, "--ticket")
    if any(distill for _, distill in pairs):
        check_teacher(bootstrap.run, "--kd on/both (training with the KD loss)")
    settings = {"run_dir": str(Path(run_dir).resolve()), "real_size": real_size,
                "steps": steps, "eval_every": eval_every}
    saved = check_out(out, "bootstrap.json", settings, "comparisons", COMPARISON_FIELDS)
    saved = saved or {"settings": settings, "comparisons": []}
    measure_missing(out, "bootstrap.json", saved, "comparisons", pairs,
                    key=lambda pair: (pair[0] or "dense") + ("_kd" if pair[1] else ""),
                    record_key=lambda c: c["tag"],
                    measure=lambda pair: bootstrap.compare(ticket=pair[0], distill=pair[1],
                                                           steps=steps, eval_every=eval_every,
                                                           out=out))
    config = bootstrap.run.config
    title = (f"Deep Bootstrap: {config.model.name} on {config.data.name}, real world "
             f"{real_size} examples, {steps} steps of batch {bootstrap.batch_size}")
    lines = [f"# {title}", "", "| run | sparsity % | real test error % | ideal test error % | "
             "gap (points) | largest gap |", "|---|---|---|---|---|---|"]
    for c in saved["comparisons"]:
        lines.append(f"| {c['tag']} | {100 * c['sparsity']:.1f} | "
                     f"{100 * c['real'][-1]['test_error']:.2f} | "
                     f"{100 * c['ideal'][-1]['test_error']:.2f} | {100 * c['gap'][-1]:.2f} | "
                     f"{100 * max(c['gap']):.2f} |")
    write_atomic(out / "bootstrap.md", "\n".join(lines) + "\n\n![real vs ideal](bootstrap.png)\n")
    _plot(saved["comparisons"], title, out / "bootstrap.png")
    return saved


def main(argv: Optional[Sequence[str]] = None) -> int:
    quiet_failed_restores()
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.bootstrap",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the workdir of a study (data, model, snapshots)")
    parser.add_argument("--real-size", type=int, required=True,
                        help="training examples of the real world (the rest is the fresh stream)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ticket", default="", help="comma-separated snapshots whose masks to "
                        "train as well, e.g. level_1_kd (the dense network is always included)")
    parser.add_argument("--kd", choices=("off", "on", "both"), default="both",
                        help="train the sparse tickets without and/or with the KD loss")
    parser.add_argument("--steps", type=int, default=0, help="0: all the fresh stream allows")
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args(argv)
    distill = {"off": (False,), "on": (True,), "both": (False, True)}[args.kd]
    # the dense network (without KD), then each ticket with each --kd option
    pairs = [("", False)] + [(ticket, d) for ticket in parse_names(args.ticket) for d in distill]
    try:
        run_bootstrap(args.run_dir, args.out, real_size=args.real_size, pairs=pairs,
                      steps=args.steps, eval_every=args.eval_every)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'bootstrap.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
