"""Where a number was measured: host, CPU, accelerator, library versions and code version.

Studies append one line per start to WORKDIR/environment.jsonl (a study may resume on another
machine or after a code change, and a reader of its results needs to know); the benchmarks put
the same record in their JSON.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Optional

from lottery_kd.study import jsonlines
from lottery_kd.study.workdir import Workdir

from lottery_kd.runtime import malloc_tuning

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch")


def command_line() -> list[str]:
    """The command line that started this process, as `python -m module ...` when run that way
    (sys.argv[0] is then the module's file path, which does not run from the repository root)."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main_spec is not None and main_spec.name:
        return [sys.executable, "-m", main_spec.name, *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_id(cpuinfo: Optional[str] = None) -> str:
    """The CPU's family and model numbers and its widest vector ISA ("family 25 model 1, avx2"),
    from /proc/cpuinfo: a VM may name two CPU generations alike ("AMD EPYC"), and timings only
    compare within one. "" where /proc/cpuinfo cannot be read."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), "other")
    return (f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            f"{isa.replace('avx512f', 'avx512')}")


def code_version(path: Path = Path(__file__).resolve().parent) -> Optional[str]:
    """The git commit of the lottery_kd checkout, '+dirty' when it has uncommitted changes;
    None outside a git checkout (an installed package)."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Host, CPU count and model, JAX backend and devices, library versions, code version, time."""
    import jax
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    device = jax.devices()[0]
    return {"host": platform.node(), "cpu_count": os.cpu_count(), "processor": cpu_model(),
            "cpu_id": cpu_id(),
            "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "python": platform.python_version(), "versions": versions,
            "code_version": code_version(), "malloc_tunables": malloc_tuning.active(),
            "date": time.strftime("%Y-%m-%d"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record_start(workdir: str | os.PathLike, **extra) -> dict:
    """Append this start's environment (plus `extra`) to WORKDIR/environment.jsonl."""
    record = {**environment(), **extra}
    jsonlines.append(Workdir(workdir).environment, record)
    return record


def read_starts(workdir: str | os.PathLike) -> list[dict]:
    """The environment of every start of a study (a torn last line, from a kill, is skipped)."""
    return jsonlines.scan(Workdir(workdir).environment)[0]


def _when(text: object) -> Optional[datetime]:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return None


def epoch_cpu(epoch: dict, starts: list[dict]) -> str:
    """The CPU an epoch (an epoch_times.jsonl record) ran on: that of the last start in
    environment.jsonl before the epoch's end time, so that timings compare within one machine.
    Epochs timed before records carried a time read "not recorded"."""
    ended = _when(epoch.get("time"))
    if ended is None:
        return "not recorded"
    before = [s for s in starts if _when(s.get("time")) and _when(s["time"]) <= ended]
    if not before:
        return "not recorded"
    start = before[-1]
    return start.get("cpu_id") or f"{start.get('processor', '?')}, model not recorded"
