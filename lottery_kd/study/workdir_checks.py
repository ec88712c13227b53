"""Refusals before a study computes anything: an unusable workdir path, a workdir holding
another config's results (with the flags that would resume it), results whose config is lost, a
device count that would change the computation, and another process running the same study.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from lottery_kd.config import identity
from lottery_kd.config.errors import ConfigError
from lottery_kd.config.identity import config_digest
from lottery_kd.runtime.environment import read_starts
from lottery_kd.study import results
from lottery_kd.study.workdir import Workdir
from lottery_kd.study.workdir_lock import WorkdirBusy, WorkdirLock


class WorkdirConfigMismatch(ValueError):
    """The workdir holds results made with a different config."""


class WorkdirError(OSError):
    """The workdir cannot be created or written."""


def _resume_flags(saved: dict, current: dict) -> str:
    """The --config flags that turn the `current` config into the `saved` one (repeated until
    no key differs: setting one key can bring out another, e.g. a validation split that only
    matters once data.validation_size is set back)."""
    saved_flat, current_flat = identity.flatten(saved), identity.flatten(current)
    chosen: dict[str, Any] = {}
    for _ in range(10):
        merged = {**current_flat, **chosen}
        keys = identity.differing_keys(saved, identity.unflatten(merged))
        if not keys:
            break
        chosen.update({key: identity.setting(saved_flat, key) for key in keys})
    return " ".join(shlex.quote(f"--config.{key}={'' if value is None else value}")
                    for key, value in sorted(chosen.items()))


def check_orphaned_results(workdir: Path, config: Any) -> None:
    """With config.json missing, refuse a workdir whose snapshots were made with another config
    (their fingerprint holds its digest), or whose rows cannot be checked at all: else another
    config would adopt them as its own."""
    from lottery_kd.study.checkpoint_meta import read_fingerprint
    path = Workdir(workdir).config
    directory = Workdir(workdir).snapshots
    digest = config_digest(config)
    snapshots = sorted(directory.iterdir()) if directory.is_dir() else []
    for snapshot in snapshots:
        stored = (read_fingerprint(snapshot) or {}).get("config_digest")
        if stored is not None and stored != digest:
            raise WorkdirConfigMismatch(
                f"{path} is missing, and the snapshots in {directory} were made with another "
                f"config (digest {stored}, this command's {digest}); restore config.json (or "
                "rerun with the settings that made them), or use another --workdir")
    rows = results.read_rows(Workdir(workdir).results)
    if rows and not snapshots:
        raise WorkdirConfigMismatch(
            f"{path} is missing and {workdir / 'results.jsonl'} holds {len(rows)} row(s) with "
            "no snapshot to tell which config made them; restore config.json, or move "
            "results.jsonl away, or use another --workdir")


def prepare_workdir(workdir: Path, config: Any, *, write: bool = True) -> None:
    """Create the workdir and write config.json (`write`: the main process only), or check it
    equals the saved one. An unusable workdir is refused before anything is computed."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(f"workdir {workdir} cannot be written ({error.strerror or error}); "
                           "choose another --workdir or fix its permissions or free space") \
            from None
    path = Workdir(workdir).config
    current = identity.config_to_dict(config)
    if path.exists():
        saved = identity.read_saved(path)
        differing = identity.differing_keys(saved, current)
        if differing:
            saved_flat = identity.flatten(saved)
            now_flat = identity.flatten(current)
            lines = [f"  {k}: {identity.setting(saved_flat, k)!r} in the workdir, "
                     f"{identity.setting(now_flat, k)!r} now" for k in differing]
            raise WorkdirConfigMismatch(
                f"{workdir} holds a run with a different config:\n" + "\n".join(lines) +
                "\nUse another --workdir, or rerun with the saved settings to resume: "
                + _resume_flags(saved, current))
        return
    check_orphaned_results(workdir, config)
    if not write:
        return
    temporary = path.with_name("config.json.tmp")
    temporary.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def check_batch_norm_groups(workdir: Path, batch_norm: str, device_count: int) -> None:
    """Refuse to go on with per-device BatchNorm on another device count than the study's.

    With parallel.batch_norm=per_device the statistics are those of each device's slice of the
    batch, so the device count is part of the computation (unlike global BatchNorm, where 1 and
    4 devices train the same network). Every start records its count in environment.jsonl;
    resuming, or analysing, on a different count would mix two computations in one study.
    """
    if batch_norm != "per_device":
        return
    for start in read_starts(workdir):
        before = start.get("batch_norm_groups", start.get("device_count"))
        if before is not None and before != device_count:
            raise ConfigError(
                f"invalid config:\n  parallel.batch_norm='per_device': {workdir} was trained "
                f"with BatchNorm statistics per device over {before} devices (environment.jsonl,"
                f" {start.get('time', 'an earlier start')}); this process has {device_count}. "
                f"The groups change the computation: run on {before} devices (on CPU, "
                f"--config.parallel.num_cpu_devices={before}), or use another --workdir")


def check_workdir_path(workdir: str | os.PathLike) -> None:
    """ConfigError for a workdir that can never hold a study: empty (the current folder,
    whose files would mix with the study's), a URL, or an existing file."""
    if not str(workdir).strip():
        raise ConfigError("invalid config:\n  --workdir is empty: give the study its own folder, "
                          "e.g. --workdir=runs/NAME (rerunning there resumes it)")
    if isinstance(workdir, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", workdir):
        raise ConfigError(
            f"invalid config:\n  --workdir={workdir!r}: a URL; the workdir must be a "
            "local or shared-filesystem path visible to every process (data.tfds_data_dir "
            "may be a gs:// URL)")
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise ConfigError(f"invalid config:\n  --workdir={str(workdir)!r} is a file, "
                                     "not a folder: choose another --workdir")


@contextlib.contextmanager
def study_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold the workdir's lock (lottery_kd.study.workdir_lock) for the block: process 0 takes it for
    the whole run, and every process of a pod stops together if another run holds it."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    new_folder, new_lock = not Path(workdir).exists(), not Workdir(workdir).lock.exists()
    busy = ""
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirBusy as error:
            busy = str(error)
        except OSError as error:
            raise WorkdirError(f"workdir {workdir} cannot be written ({error.strerror or error});"
                               " choose another --workdir or fix its permissions or free "
                               "space") from None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        if int(multihost_utils.broadcast_one_to_all(np.int32(bool(busy)))):
            busy = busy or f"process 0 found {workdir} locked by another run of this study"
    if busy:
        raise WorkdirBusy(busy)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            _remove_if_only_lock(Path(workdir), new_folder, new_lock)


def _remove_if_only_lock(workdir: Path, new_folder: bool, new_lock: bool) -> None:
    """After a run refused before it wrote anything (bad data.dir, a step plan that cannot
    work): remove the lock file it created, and the folder too if it created that, so the
    refusal leaves no half-made workdir for a later restore or run to trip on."""
    paths = Workdir(workdir)
    try:
        if new_lock and not paths.config.exists():  # no study was written there
            paths.lock.unlink()
            if new_folder and not any(workdir.iterdir()):
                workdir.rmdir()
    except OSError:
        pass  # another process got there: leave it
