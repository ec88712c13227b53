"""Checks of a command's --out before any compute: a path its results can be written to.

A bad --out found only when the results are written costs the whole run (a benchmark, an export
that loaded a study and its test set); these raise a ValueError naming it first.
"""

from __future__ import annotations

import os
from pathlib import Path


def check_creatable(out: Path, option: str = "--out") -> None:
    """A ValueError unless the missing path `out` can be made (its nearest existing parent is a
    writable folder)."""
    parent = next(p for p in Path(out).absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out} cannot be created ({parent} is "
                         f"{'not a folder' if not parent.is_dir() else 'not writable'}); "
                         f"choose another {option}")


def check_out_file(out: str | os.PathLike, option: str = "--out") -> None:
    """A ValueError unless `out` names a file that can be written (or replaced)."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError(f"{option} is empty; give a file path")
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; give a file path")
    if out.exists():
        if not os.access(out, os.W_OK) or not os.access(out.absolute().parent, os.W_OK):
            raise ValueError(f"{option} {out} cannot be replaced (not writable); choose "
                             f"another {option}")
        return
    check_creatable(out, option)


def check_out_folder(out: str | os.PathLike, option: str = "--out") -> None:
    """A ValueError unless `out` is, or can be made, a writable folder."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError(f"{option} is empty; give a folder (it is made if missing)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a folder; give a folder")
    if out.exists() and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out} is not writable; choose another {option}")
    if not out.exists():
        check_creatable(out, option)
