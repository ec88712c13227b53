"""What a checkpoint folder says about itself, read from its JSON part alone: no JAX, no Orbax.

Every checkpoint (study.checkpoints) has a `meta/metadata` JSON whose `fingerprint` records the
model, parameter shapes and config digest it was written with, and for a KD run the way it gets
its teacher's logits. The training code checks it before reading any array; `status` and the
results scripts read it beside a running study, where importing JAX would be slow and heavy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, or from another model or config."""


def read_meta(path: Path, where: str) -> dict:
    """The JSON part of checkpoint folder `path`; CheckpointError naming `where` if it cannot be
    read."""
    meta_file = path / "meta" / "metadata"
    try:
        return json.loads(meta_file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{where} is damaged: its metadata cannot be read "
                              f"({type(error).__name__})") from None


def read_fingerprint(path: str | os.PathLike) -> Optional[dict]:
    """The fingerprint (model, config digest, shapes) a checkpoint folder was written with, or
    None when it has none or its metadata cannot be read."""
    try:
        meta = read_meta(Path(path), str(path))
    except CheckpointError:
        return None
    fingerprint = meta.get("fingerprint") if isinstance(meta, dict) else None
    return fingerprint if isinstance(fingerprint, dict) else None


def latest_fingerprint(store: str | os.PathLike) -> Optional[dict]:
    """The fingerprint of the newest checkpoint in `store` (step folders) that has one, or None:
    what a resume of that run will be checked against, and the path it trains on."""
    try:  # the folder can go while a status reads it (a finished run deletes its checkpoints)
        steps = sorted((int(p.name) for p in Path(store).iterdir() if p.name.isdigit()),
                       reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        steps = []
    for step in steps:
        fingerprint = read_fingerprint(Path(store) / str(step))
        if fingerprint is not None:
            return fingerprint
    return None


def resumed_teacher_logits(store: str | os.PathLike) -> Optional[str]:
    """How a KD run resumed from its checkpoints in `store` gets its teacher's logits (a run
    keeps the kd.teacher_logits mode it started with): the newest fingerprint's, in_step where
    it predates the record; None where no fingerprint can be read (a new run's mode applies)."""
    fingerprint = latest_fingerprint(store)
    return None if fingerprint is None else fingerprint.get("teacher_logits", "in_step")
