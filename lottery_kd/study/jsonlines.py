"""Append-only JSON-lines files (results.jsonl, epoch_times.jsonl, environment.jsonl): one rule
for lines that cannot be read.

A line that is not a JSON object with the record's required fields (a write cut short by a crash,
or damage anywhere in the file) is never silently dropped together with what follows it: readers
skip just that line and say so (`scan`), and the study that owns the workdir moves such lines to
a side file, FILE.damaged, before it appends (`set_aside`), so every valid record stays and no
finished run is trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

# Required fields of each kind of record, with the types they must have.
Fields = Mapping[str, tuple[type, ...]]
NUMBER = (int, float)


@dataclasses.dataclass(frozen=True)
class DamagedLine:
    """A line of a JSON-lines file that is not a valid record."""

    path: Path
    line: int  # 1-based
    text: str
    reason: str


def _check(record: object, fields: Fields) -> Optional[str]:
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, types in fields.items():
        value = record.get(key)
        if key not in record or isinstance(value, bool) or not isinstance(value, types):
            return f"no valid {key!r}"
    return None


def scan(path: str | os.PathLike, fields: Fields = {}) -> tuple[list[dict], list[DamagedLine]]:  # noqa: B006
    """(valid records in file order, damaged lines) of a JSON-lines file; a missing file is
    empty. Blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        return [], []
    records, damaged = [], []
    data = path.read_bytes().decode("utf-8", errors="replace")
    for number, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            damaged.append(DamagedLine(path, number, text, "not JSON (a cut-off or damaged "
                                                           "line)"))
            continue
        problem = _check(record, fields)
        if problem:
            damaged.append(DamagedLine(path, number, text, problem))
        else:
            records.append(record)
    return records, damaged


def describe(damaged: list[DamagedLine]) -> str:
    """One sentence naming the file and the lines skipped ('' if none)."""
    if not damaged:
        return ""
    lines = ", ".join(str(d.line) for d in damaged[:10]) + (" ..." if len(damaged) > 10 else "")
    reasons = sorted({d.reason for d in damaged})
    return (f"{damaged[0].path}: skipped {len(damaged)} unreadable line(s) (line {lines}: "
            f"{'; '.join(reasons)})")


def set_aside(path: str | os.PathLike, fields: Fields = {},  # noqa: B006
              log: Callable[[str], None] = print) -> list[dict]:
    """Move the damaged lines of `path` to `path`.damaged (appended, as they were) and rewrite
    `path` with the valid records only; returns those records. Only the process that owns the
    workdir (holds its lock) may call this."""
    path = Path(path)
    records, damaged = scan(path, fields)
    if not damaged:
        return records
    side = path.with_name(path.name + ".damaged")
    with side.open("a") as handle:
        handle.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')}: set aside from {path.name}, "
                     f"lines {', '.join(str(d.line) for d in damaged)}\n")
        handle.write("".join(d.text + "\n" for d in damaged))
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    log(f"warning: {describe(damaged)}; moved them to {side}, kept all {len(records)} valid "
        "record(s)")
    return records


def append(path: str | os.PathLike, record: dict, *, fsync: bool = True) -> None:
    """Append one record as a line of its own (after a line a crash cut short, on a new line)."""
    path = Path(path)
    with path.open("ab") as handle:
        torn = handle.tell() > 0 and path.read_bytes()[-1:] != b"\n"
        handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never half a file. The
    file's bytes reach the disk before the rename, and the rename before it returns (a power
    loss right after could otherwise leave results.jsonl empty under its new name)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    try:  # the rename itself: fsync the folder (where the platform has directory handles)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass
