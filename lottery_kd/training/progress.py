"""Training progress on the terminal: a tqdm bar, or plain log lines (CI logs, nohup).

`Trainer.fit` drives it through the ShowProgress callback (training.callbacks); the Deep
Bootstrap drives it by hand, one evaluation point at a time.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """A tqdm bar on a terminal, plain log lines otherwise (CI logs, nohup)."""

    def __init__(self, description: str, *, enabled: Optional[bool] = None,
                 stream: Optional[TextIO] = None):
        """`enabled`: the bar (True), log lines (False), or the bar on a terminal only (None)."""
        self.description = description
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if enabled is None else enabled
        self._bar = None
        self._total = 0
        self._done = 0
        self._began = 0.0

    @classmethod
    def for_mode(cls, description: str, mode: str) -> "Progress":
        """A Progress for config.log.progress: 'bar', 'lines', or 'auto' (bar on a terminal)."""
        return cls(description, enabled=None if mode == "auto" else mode == "bar")

    def start(self, total: int, done: int = 0) -> None:
        """Begin a run of `total` steps, `done` of them already done (a resumed run)."""
        self._total, self._done, self._began = total, done, time.perf_counter()
        if self.use_bar:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=done, desc=self.description, file=self.stream,
                             leave=False, unit="step", dynamic_ncols=True)

    def advance(self, steps: int) -> None:
        """`steps` more steps are done."""
        self._done += steps
        if self._bar is not None:
            self._bar.update(steps)

    def epoch_end(self, row: dict) -> None:
        """Show an evaluation row (a history row of `Trainer.fit`): on the bar, or one line."""
        fields = {"loss": f"{row['train_loss']:.3f}", "train": f"{row['train_accuracy']:.3f}",
                  "test": f"{row['test_accuracy']:.3f}", "lr": f"{row['lr']:.3g}"}
        if "val_accuracy" in row:
            fields["val"] = f"{row['val_accuracy']:.3f}"
        if self._bar is not None:
            self._bar.set_postfix(fields, refresh=True)
        else:
            elapsed = time.perf_counter() - self._began
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            print(f"{self.description} epoch {row['epoch']:.4g} step {self._done}/{self._total} "
                  f"{text} ({elapsed:.0f}s)", file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar (a no-op with log lines, and when closed already)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
