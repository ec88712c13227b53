"""What one training run writes besides its result: progress, TensorBoard scalars, and resume
checkpoints.

The study driver (study.lottery), linear mode connectivity (analysis.lmc) and the Deep Bootstrap
(analysis.bootstrap) each open these three for every run they train and close them when it
ends; `RunOutputs.open` and `RunOutputs.close` do it for all three.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from lottery_kd.study.checkpoints import ResumeStore
from lottery_kd.training.callbacks import Callback, standard_callbacks
from lottery_kd.training.progress import Progress
from lottery_kd.training.tensorboard import ScalarWriter


@dataclasses.dataclass
class RunOutputs:
    """A run's progress display and TensorBoard writer (None where not wanted) and its resume
    store."""

    progress: Optional[Progress]
    writer: Optional[ScalarWriter]
    resume: ResumeStore

    @classmethod
    def open(cls, description: str, *, progress_mode: str,
             tensorboard: Optional[str | os.PathLike], resume: str | os.PathLike, keep: int,
             fingerprint: dict, log: Callable[[str], None], main: bool = True) -> "RunOutputs":
        """Progress labelled `description` (config.log.progress `progress_mode`), a writer of
        events under `tensorboard` (None: none), and the resume store in `resume` keeping the
        newest `keep` checkpoints. `main=False` (a process other than the main one of a
        multi-process run) shows no progress and writes no events."""
        progress = Progress.for_mode(description, progress_mode) if main else None
        writer = ScalarWriter(tensorboard) if main and tensorboard is not None else None
        return cls(progress, writer,
                   ResumeStore(resume, keep=keep, fingerprint=fingerprint, log=log))

    def write_row(self, step: int, row: dict, **extra: float) -> None:
        """An epoch row of `Trainer.fit` (with its timing) as TensorBoard scalars at `step`,
        without its 'distill' flag, followed by `extra`."""
        if self.writer is not None:
            self.writer.scalars(step, {**{k: v for k, v in row.items() if k != "distill"},
                                       **extra})

    def callbacks(self, **options: Any) -> list[Callback]:
        """`standard_callbacks` with this run's resume store and progress; `options` are its
        other arguments (checkpoint_every, stop_requested, mask_update, log_scalars)."""
        return standard_callbacks(resume=self.resume, progress=self.progress, **options)

    def close(self, *, resume: bool = True) -> None:
        """Close the resume store (resume=False: the caller deletes or closes it later), then
        the writer and the progress display."""
        if resume:
            self.resume.close()
        if self.writer is not None:
            self.writer.close()
        if self.progress is not None:
            self.progress.close()
