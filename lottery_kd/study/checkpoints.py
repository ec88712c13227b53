"""Orbax checkpoints: named snapshots kept forever, and periodic resume checkpoints.

Both are written atomically (Orbax writes a temporary directory and renames it on commit), so a
kill at any moment never leaves a checkpoint that looks complete. Each holds the array tree and a
JSON part whose `fingerprint` (model, parameter shapes, config digest) is checked before any
array is read: a checkpoint from another model or config, or a truncated one, is refused with a
clear error instead of being loaded. Restoring takes a template tree (without one Orbax returns
plain lists and dicts where the code expects optax NamedTuples and Flax structures) and an
optional sharding, so a checkpoint written by N processes restores in any number of processes.

Snapshots ("init", "rewind", "level_1_lt", ...) hold {"params", "batch_stats", "masks"}. Resume
checkpoints (a CheckpointManager per training run, the latest few kept) hold the whole training
state; if the newest is unreadable, the previous good one is used and the log says so.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from lottery_kd.study.checkpoint_meta import CheckpointError, read_meta

PyTree = Any
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _from_checkpoint_code(traceback: Any, source: Any = None) -> bool:
    """Whether an exception was raised in Orbax or tensorstore (its traceback, or the coroutine
    it escaped from)."""
    names = [getattr(getattr(source, "cr_code", None), "co_filename", "")]
    while traceback is not None:
        names.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    return any("orbax" in name or "tensorstore" in name for name in names)


class _StrayRestoreErrors(logging.Filter):
    """Drops asyncio's 'Task exception was never retrieved' for a failed restore's tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info or (None, None, None)
        return not _from_checkpoint_code(exc_info[2])


def quiet_failed_restores() -> None:
    """Silence the stray messages of a failed Orbax restore. When a damaged checkpoint fails to
    restore, the error is caught and reported once (CheckpointError, or a fallback to an earlier
    resume checkpoint), but the restore's abandoned reads finish later: tensorstore calls back
    into Orbax's closed event loop ("RuntimeError: Event loop is closed"), its read coroutines
    die unawaited, and asyncio logs their tasks; each printed a traceback, dozens per damaged
    checkpoint. Only exceptions from Orbax or tensorstore code are dropped; everything else
    still reaches the previous hook. Command-line entry points call this once."""
    previous = sys.unraisablehook
    if not getattr(previous, "quiet_failed_restores", False):
        def hook(unraisable) -> None:
            closed_loop = (unraisable.exc_type is RuntimeError
                           and str(unraisable.exc_value) == "Event loop is closed")
            if closed_loop or _from_checkpoint_code(unraisable.exc_traceback,
                                                    unraisable.object):
                return
            previous(unraisable)
        hook.quiet_failed_restores = True
        sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _StrayRestoreErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(_StrayRestoreErrors())


def _short(error: Exception) -> str:
    """An Orbax/tensorstore error in one readable line: its first line, without the reprs of
    bound methods that tensorstore puts in some messages."""
    text = re.sub(r"<bound method [^>]*>?", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {(text[0] if text else '')[:240]}"


def abstract_like(tree: PyTree, sharding: Optional[jax.sharding.Sharding] = None) -> PyTree:
    """ShapeDtypeStructs of `tree` (the target Orbax restores into), placed with `sharding`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype")
                                       else np.asarray(x).dtype, sharding=sharding), tree)


def tree_shapes(tree: PyTree) -> dict[str, list[int]]:
    """{path: shape} of every leaf: the part of a fingerprint that pins the architecture."""
    return {jax.tree_util.keystr(path): list(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class ForeignCheckpoint(CheckpointError):
    """A readable checkpoint written for another model, config or state layout: not damage, so
    a resume refuses it rather than setting it aside and training the run from its start."""


def _check_fingerprint(where: str, stored: Optional[dict], expected: Optional[dict]) -> None:
    if expected is None:
        return
    if not stored:
        raise CheckpointError(f"{where} has no fingerprint: it was not written by this code")
    for key in ("model", "config_digest"):
        if key in expected and stored.get(key) != expected[key]:
            raise ForeignCheckpoint(
                f"{where} comes from another {'model' if key == 'model' else 'config'}: "
                f"{key} {stored.get(key)!r} there, {expected[key]!r} in this run")
    if "shapes" in expected and stored.get("shapes") != expected["shapes"]:
        differing = sorted(k for k in set(stored.get("shapes", {})) | set(expected["shapes"])
                           if stored.get("shapes", {}).get(k) != expected["shapes"].get(k))
        raise ForeignCheckpoint(f"{where} holds arrays of other shapes than this run's "
                              f"(first differences: {', '.join(differing[:3])})")


def _composite(tree: PyTree, meta: dict):
    return ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))


def _restore_args(like: PyTree, sharding):
    return ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(like, sharding)),
                              meta=ocp.args.JsonRestore())


class SnapshotStore:
    """Named Orbax snapshots under `directory` (usually WORKDIR/checkpoints/snapshots).

    `fingerprint` (model name, config digest) is stored with every snapshot and checked, with the
    template's shapes, on every restore.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: Optional[dict] = None):
        self.directory = Path(directory).absolute()
        self.fingerprint = dict(fingerprint or {})
        self._checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())

    def path(self, name: str) -> Path:
        """Where the snapshot `name` lives (names are checked: no path tricks)."""
        if not _NAME.match(name):
            raise ValueError(f"snapshot name {name!r} must match {_NAME.pattern}")
        return self.directory / name

    def exists(self, name: str) -> bool:
        """True only for a committed snapshot (Orbax's temporary directories are ignored)."""
        return self.path(name).is_dir() and ocp.utils.is_checkpoint_finalized(self.path(name))

    def names(self) -> list[str]:
        """The committed snapshots, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if self.exists(p.name))

    def save(self, name: str, tree: PyTree) -> None:
        """Write `tree` as snapshot `name`, replacing an existing one; returns once committed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {"fingerprint": {**self.fingerprint, "shapes": tree_shapes(tree)}}
        self._checkpointer.save(self.path(name), args=_composite(tree, meta), force=True)

    def restore(self, name: str, like: PyTree,
                sharding: Optional[jax.sharding.Sharding] = None) -> PyTree:
        """Snapshot `name` with the structure, shapes and dtypes of `like` (placed with
        `sharding`); CheckpointError if it is missing, unreadable or from another model/config."""
        where = f"snapshot {name!r} in {self.directory}"
        if not self.exists(name):
            raise CheckpointError(f"no complete {where}")
        meta = read_meta(self.path(name), where)
        _check_fingerprint(where, meta.get("fingerprint"),
                           {**self.fingerprint, "shapes": tree_shapes(like)})
        try:
            return self._checkpointer.restore(self.path(name),
                                              args=_restore_args(like, sharding))["state"]
        except Exception as error:  # tensorstore/orbax raise many types for damaged files
            raise CheckpointError(f"{where} is damaged ({_short(error)})") from None

    def close(self) -> None:
        """Wait for pending writes and release the checkpointer."""
        self._checkpointer.close()


class ResumeStore:
    """Periodic resume checkpoints of one training run (Orbax CheckpointManager, latest `keep`)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2,
                 fingerprint: Optional[dict] = None, log: Callable[[str], None] = print):
        self.directory = Path(directory).absolute()
        self.fingerprint = dict(fingerprint or {})
        self.log = log
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=False))

    def steps(self) -> list[int]:
        """The steps of the resume checkpoints kept, oldest first."""
        return sorted(self._manager.all_steps()) if self.directory.is_dir() else []

    def save(self, step: int, tree: PyTree, meta: dict) -> None:
        """Save the training state at `step` with its metadata and fingerprint."""
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {**meta, "fingerprint": {**self.fingerprint, "shapes": tree_shapes(tree)}}
        self._manager.save(step, args=_composite(tree, meta), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, like: PyTree, sharding: Any = None) -> Optional[tuple[PyTree, dict]]:
        """(tree, meta) of the newest readable checkpoint, or None if there is none.

        Unreadable checkpoints are skipped, newest first, each with a log line, and set aside.
        A readable one from another model, config or state layout (ForeignCheckpoint) stops the
        resume with that error: training the run again from its start would redo hours of work
        without a word, where the cause is usually a code or settings change to undo.
        """
        damaged = []
        try:
            for step in reversed(self.steps()):
                where = f"resume checkpoint at step {step} in {self.directory}"
                try:
                    meta = read_meta(self.directory / str(step), where)
                    _check_fingerprint(where, meta.get("fingerprint"),
                                       {**self.fingerprint, "shapes": tree_shapes(like)})
                    restored = self._manager.restore(step, args=_restore_args(like, sharding))
                    return restored["state"], restored["meta"]
                except ForeignCheckpoint as error:
                    raise ForeignCheckpoint(
                        f"{error}; resume it with the code and settings that wrote it, or move "
                        f"{self.directory} away to train this run from its start") from None
                except Exception as error:  # damaged: fall back to the previous one
                    message = str(error) if isinstance(error, CheckpointError) else \
                        f"{where} is damaged ({_short(error)})"
                    self.log(f"warning: {message}; trying an earlier one")
                    damaged.append(step)
            return None
        finally:
            self._set_aside(damaged)

    def _set_aside(self, steps: list[int]) -> None:
        """Move unusable checkpoints to DIRECTORY.damaged/ (kept for a look, out of the way of
        the saves that will reach their steps again)."""
        if not steps:
            return
        aside = self.directory.with_name(self.directory.name + ".damaged")
        aside.mkdir(parents=True, exist_ok=True)
        for step in steps:
            target = aside / f"{step}.{time.strftime('%Y%m%dT%H%M%S')}"
            try:
                os.replace(self.directory / str(step), target)
                self.log(f"moved the unusable resume checkpoint at step {step} to {target}")
            except FileNotFoundError:  # another process of the pod moved it first
                pass
        self._manager.reload()

    def delete_all(self) -> None:
        """Remove every resume checkpoint of this run (its final snapshot and row exist)."""
        self._manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        """Wait for pending saves and release the checkpoint manager."""
        self._manager.close()


def read_snapshot(path: str | os.PathLike) -> dict:
    """A snapshot's {"params", "batch_stats", "masks"} as NumPy arrays, without a template (for
    analysis tools that have no model at hand); CheckpointError if it is missing or damaged."""
    path = Path(path).absolute()
    where = f"snapshot {path.name!r} in {path.parent}"
    if not (path.is_dir() and ocp.utils.is_checkpoint_finalized(path)):
        raise CheckpointError(f"no complete {where}")
    read_meta(path, where)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        restored = checkpointer.restore(
            path, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception as error:  # tensorstore/orbax raise many types for damaged files
        raise CheckpointError(f"{where} is damaged ({_short(error)})") from None
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, restored)


class SnapshotCache(collections.OrderedDict):
    """The last `size` snapshots used, in device memory; the least recently used one is dropped
    when another is added (a study reloads it from disk if it needs it again). A study reads the
    same few snapshots over and over (the teacher, init, rewind, the level before): a handful
    suffices, where keeping every snapshot would hold a whole study in memory."""

    def __init__(self, size: int = 4):
        super().__init__()
        self.size = size

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        self.move_to_end(name)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self.move_to_end(name)
        while len(self) > self.size:
            self.popitem(last=False)
