"""Shared pieces of the benchmarks: the environment record, timed blocks, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional


def environment() -> dict:
    """Where a number was measured: host, CPU count, backend, device, library versions."""
    import jax
    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    device = jax.devices()[0]
    return {"host": platform.node(), "cpu_count": os.cpu_count(), "processor": _cpu_model(),
            "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
            "device_count": jax.device_count(), "python": platform.python_version(),
            "versions": versions, "date": time.strftime("%Y-%m-%d")}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
