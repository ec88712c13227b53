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
