"""Shared pieces of the benchmarks: the environment record, timed blocks, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

from lottery_kd.environment import environment  # noqa: F401  (re-exported for the benchmarks)


def timed(run_block: Callable[[], object], wait: Callable[[object], None]) -> float:
    """Seconds one block takes, waiting for its last result (JAX dispatch is asynchronous)."""
    began = time.perf_counter()
    wait(run_block())
    return time.perf_counter() - began


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_json(report: dict, out: Optional[str]) -> None:
    """Print the report as JSON and, with `out`, write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
