"""Orbax snapshots: named, kept forever, written atomically, restored against an abstract target.

Named snapshots ("init", "rewind", "level_1_lt", ...) hold {"params", "batch_stats", "masks"}.
Orbax writes into a temporary directory and renames it on commit, so a killed write never leaves a
snapshot that looks complete. Restoring takes a template tree: without one Orbax hands back plain
lists and dicts where the code expects optax NamedTuples and Flax structures.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def abstract_like(tree: PyTree, sharding: Optional[jax.sharding.Sharding] = None) -> PyTree:
    """ShapeDtypeStructs of `tree` (the target Orbax restores into), placed with `sharding`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype if hasattr(x, "dtype")
                                       else np.asarray(x).dtype, sharding=sharding), tree)


class SnapshotStore:
    """Named Orbax snapshots under `directory` (usually WORKDIR/checkpoints/snapshots)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).absolute()
        self._checkpointer = ocp.StandardCheckpointer()

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"snapshot name {name!r} must match {_NAME.pattern}")
        return self.directory / name

    def exists(self, name: str) -> bool:
        """True only for a committed snapshot (Orbax's temporary directories are ignored)."""
        return self.path(name).is_dir() and ocp.utils.is_checkpoint_finalized(self.path(name))

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if self.exists(p.name))

    def save(self, name: str, tree: PyTree) -> None:
        """Write `tree` as snapshot `name`, replacing an existing one; returns once committed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._checkpointer.save(self.path(name), tree, force=True)
        self._checkpointer.wait_until_finished()

    def restore(self, name: str, like: PyTree,
                sharding: Optional[jax.sharding.Sharding] = None) -> PyTree:
        """Snapshot `name` restored with the structure, shapes and dtypes of `like`.

        With `sharding` (e.g. replicated over the current mesh) the arrays are placed there, so a
        snapshot written by N processes restores in any number of processes.
        """
        if not self.exists(name):
            raise FileNotFoundError(f"no complete snapshot {name!r} in {self.directory}")
        return self._checkpointer.restore(self.path(name), abstract_like(like, sharding))

    def close(self) -> None:
        self._checkpointer.close()
