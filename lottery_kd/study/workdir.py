"""Every path of a study's workdir, in one place (and of an analysis tool's --out folder).

    WORKDIR/
      config.json            the study's full config: its identity (config.identity)
      plan.json              every planned run, with steps (what `status` measures against)
      results.jsonl          one row per finished (level, variant) run
      epoch_times.jsonl      seconds per epoch of every run (the pace `status` estimates with)
      environment.jsonl      machine, library versions and code version of every (re)start
      summary.md             the table of rows so far, and accuracy_vs_sparsity.png
      study.lock             held by the process running the study (study.workdir_lock)
      tensorboard/TAG/       TensorBoard scalars of one run (TAG: level_<L>_<variant>)
      checkpoints/snapshots/NAME/   init, rewind and each run's final weights and masks
      checkpoints/resume/TAG/       the resume checkpoints of the run in progress
      teacher_logits/KEY/    the KD teacher's logits per step, shared by the KD runs
                             (training.teacher_cache; not needed to resume, never carried)

A file set aside because it was damaged keeps its name with `.damaged` appended.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Workdir:
    """The paths of one study's workdir (or of an lmc / bootstrap --out folder)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def epoch_times(self) -> Path:
        return self.root / "epoch_times.jsonl"

    @property
    def environment(self) -> Path:
        return self.root / "environment.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def accuracy_plot(self) -> Path:
        return self.root / "accuracy_vs_sparsity.png"

    @property
    def lock(self) -> Path:
        return self.root / "study.lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        return self.checkpoints / "snapshots"

    @property
    def teacher_logits(self) -> Path:
        return self.root / "teacher_logits"

    @property
    def tensorboard_root(self) -> Path:
        return self.root / "tensorboard"

    def snapshot(self, name: str) -> Path:
        """The folder of snapshot `name` (init, rewind, level_<L>_<variant>)."""
        return self.snapshots / name

    def resume(self, tag: str) -> Path:
        """The resume checkpoints of run `tag` (level_<L>_<variant>, or a tool's run name)."""
        return self.checkpoints / "resume" / tag

    def tensorboard(self, tag: str) -> Path:
        """The TensorBoard event folder of run `tag`."""
        return self.tensorboard_root / tag


def damaged(path: Path) -> Path:
    """Where a damaged file (or checkpoint folder) is set aside: its name + '.damaged'."""
    return path.with_name(path.name + ".damaged")
