"""The two ways a training run ends early: a non-finite loss, and a requested stop.

Raised by `Trainer.fit` and its callbacks (training.trainer, training.callbacks) and caught by
the study driver and the launchers; in a module of their own so that both sides import them
without importing each other.
"""

from __future__ import annotations

from typing import Optional


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf (`step` is the first global step where it did)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT); a resume checkpoint at `step` was saved (step None:
    the stop came between two runs, and every finished run is saved)."""

    def __init__(self, step: Optional[int], where: str = ""):
        at = f"at global step {step}" if step is not None else "(every finished run is saved)"
        super().__init__(f"stopped {where + ' ' if where else ''}{at}")
        self.step = step
        self.where = where
