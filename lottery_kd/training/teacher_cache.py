"""The KD teacher's logits stored per training step, so that the KD runs of a study run the
teacher's forward pass once between them instead of once each.

Why: a KD step runs the dense teacher on the student's augmented batch, a third or more of a
ticket's step on CPU. The batch at global step s is pure in (seed, step), so the teacher's logits
at step s are the same for every KD run of a study with the same teacher (kd and kd_rewind at
every density). The first run to reach a step computes them (steps.make_teacher_forward) and
stores them; the runs after read them. Every run trains on the stored float32 values, so the run
that computes and the runs that read see identical teacher logits.

Layout of DIR (one per teacher and batch geometry, named by the digest of `key`):
  key.json          what the logits depend on (the teacher's digest, batch size, classes, ...)
  chunk_<k>.npy     float32 (CHUNK_STEPS, batch, classes): the logits of steps k*C .. k*C+C-1,
                    NaN rows where no run has computed them yet
  chunk_<k>.json    the chunk's sha256, written after it: a chunk without one, or whose bytes
                    do not match it, is set aside as .damaged and computed again
Nothing here is needed to resume a run: deleting DIR costs only the time to compute it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

from lottery_kd.training.callbacks import Callback, Loop

PyTree = Any
CHUNK_STEPS = 512  # steps per chunk file: 2.6 MB at batch 128 and 10 classes
MODES: tuple[str, ...] = ("auto", "cached", "in_step")  # kd.teacher_logits
AUTO_LIMIT_BYTES = 4 << 30  # "auto" caches when a run's logits need at most this much disk


def tree_digest(tree: PyTree) -> str:
    """sha256 (16 hex digits) of a pytree's leaves: their paths, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


def cache_bytes(steps: int, batch_size: int, classes: int) -> int:
    """Disk a run's teacher logits take: float32 per example and class, in whole chunks."""
    chunks = -(-steps // CHUNK_STEPS) + 1  # a run need not start on a chunk boundary
    return chunks * CHUNK_STEPS * batch_size * classes * 4


def resolve_mode(mode: str, *, steps: int, batch_size: int, classes: int,
                 processes: int) -> str:
    """The concrete mode ("cached" or "in_step") of kd.teacher_logits for one run: "auto" caches
    a single-process run whose logits fit AUTO_LIMIT_BYTES (ImageNet's would not)."""
    if mode not in MODES:
        raise ValueError(f"kd.teacher_logits={mode!r}; allowed: {', '.join(MODES)}")
    if mode == "cached" and processes > 1:
        raise ValueError("kd.teacher_logits=cached needs a single process (each process would "
                         "hold only its own rows of the logits); use auto or in_step")
    if mode != "auto":
        return mode
    fits = cache_bytes(steps, batch_size, classes) <= AUTO_LIMIT_BYTES
    return "cached" if processes == 1 and fits else "in_step"


def missing_room(directory: str | os.PathLike, need: int) -> int:
    """Bytes a cache of `need` bytes in `directory` would lack on its file system: `need` less
    what the directory already holds (logits written by earlier launches) and the free space."""
    directory = Path(directory)
    held = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) \
        if directory.is_dir() else 0
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    return max(0, need - held - shutil.disk_usage(existing).free)


def epoch_source(cache: Optional["TeacherLogitsCache"], last: dict) -> str:
    """How one epoch's KD steps got the teacher's logits: "in_step" (no cache), "computed",
    "read" or "mixed", from the cache's counters against `last` (their values at the previous
    epoch end, updated here). Recorded per epoch, so a pace is not a blend of the two speeds."""
    if cache is None:
        return "in_step"
    read, computed = cache.read - last.get("read", 0), cache.computed - last.get("computed", 0)
    last.update(read=cache.read, computed=cache.computed)
    return "mixed" if read and computed else "read" if read else "computed"


class TeacherLogitsCache(Callback):
    """The stored teacher logits of one teacher on one data order (module docstring). As a
    callback of Trainer.fit it writes what the run computed at every epoch end, save point and
    stop, so a stopped run loses none of it."""

    def __init__(self, root: str | os.PathLike, key: dict, *,
                 log: Callable[[str], None] = print):
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(root) / name
        self.key = dict(key)
        self.log = log
        self.computed = 0  # steps whose logits this process computed (the rest were read)
        self.read = 0
        self._chunks: dict[int, np.ndarray] = {}
        self._pending: dict[int, jax.Array] = {}

    def lookup(self, step: int) -> Optional[np.ndarray]:
        """The stored logits of global `step`, or None where no run has computed them."""
        chunk, row = divmod(step, CHUNK_STEPS)
        logits = self._chunk(chunk)[row]
        if np.isnan(logits).all():
            return None
        self.read += 1
        return logits

    def store(self, step: int, logits: jax.Array) -> None:
        """Keep the logits computed at `step` until the next write (they stay on the device, so
        the step is not held up by a transfer)."""
        self._pending[step] = logits
        self.computed += 1

    def flush(self) -> None:
        """Write every chunk with logits computed since the last write (tmp + rename, then its
        checksum) and forget the chunks no longer needed."""
        if not self._pending:
            return
        fetched = jax.device_get(self._pending)
        self._pending = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        key_path = self.directory / "key.json"
        if not key_path.is_file():
            _write_atomic(key_path, json.dumps(self.key, indent=1, sort_keys=True).encode())
        touched = sorted({step // CHUNK_STEPS for step in fetched})
        for chunk in touched:
            array = self._chunk(chunk).copy()
            for step, logits in fetched.items():
                if step // CHUNK_STEPS == chunk:
                    array[step % CHUNK_STEPS] = logits
            self._write_chunk(chunk, array)
        self._chunks = {touched[-1]: self._chunks[touched[-1]]}

    def on_epoch_end(self, loop: Loop, row: dict) -> None:
        self.flush()

    def on_checkpoint(self, loop: Loop) -> None:
        self.flush()

    def on_fit_end(self, loop: Loop) -> None:
        self.flush()

    def _paths(self, chunk: int) -> tuple[Path, Path]:
        stem = self.directory / f"chunk_{chunk:05d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def _chunk(self, chunk: int) -> np.ndarray:
        """Chunk `chunk` (read once, then kept), all NaN where there is no valid file yet."""
        if chunk not in self._chunks:
            if len(self._chunks) > 1:  # a run moves forward: keep only the newest
                self._chunks = {max(self._chunks): self._chunks[max(self._chunks)]}
            self._chunks[chunk] = self._read_chunk(chunk)
        return self._chunks[chunk]

    def _read_chunk(self, chunk: int) -> np.ndarray:
        data, meta = self._paths(chunk)
        if not data.is_file():
            return np.full(self._shape(), np.nan, np.float32)
        problem = _chunk_problem(data, meta)
        if problem is None:
            array = np.load(data)
            if array.shape == self._shape() and array.dtype == np.float32:
                return array
            problem = f"holds {array.dtype}{array.shape}, not float32{self._shape()}"
        for path in (data, meta):
            if path.exists():
                path.replace(path.with_name(path.name + ".damaged"))
        self.log(f"[teacher logits] {data} {problem}: set aside as .damaged; its steps' logits "
                 "are computed again")
        return np.full(self._shape(), np.nan, np.float32)

    def _write_chunk(self, chunk: int, array: np.ndarray) -> None:
        data, meta = self._paths(chunk)
        payload = _npy_bytes(array)
        _write_atomic(data, payload)
        _write_atomic(meta, json.dumps({"sha256": hashlib.sha256(payload).hexdigest(),
                                        "first_step": chunk * CHUNK_STEPS,
                                        "steps": CHUNK_STEPS}).encode())
        self._chunks[chunk] = array

    def _shape(self) -> tuple[int, int, int]:
        return (CHUNK_STEPS, int(self.key["batch_size"]), int(self.key["classes"]))


def _chunk_problem(data: Path, meta: Path) -> Optional[str]:
    """Why a chunk file cannot be trusted (no checksum, a checksum that does not match), or
    None."""
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no readable checksum (chunk_<k>.json)"
    if hashlib.sha256(data.read_bytes()).hexdigest() != expected:
        return "does not match its checksum"
    return None


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file renamed over it (never half a file)."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
