"""Checks of a command's --out before any compute: a path its results can be written to.

A bad --out found only when the results are written costs the whole run (a benchmark, an export
that loaded a study and its test set); these raise a ValueError naming it first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def check_creatable(out: Path, option: str = "--out") -> None:
    """A ValueError unless the missing path `out` can be made (its nearest existing parent is a
    writable folder)."""
    parent = next(p for p in Path(out).absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out} cannot be created ({parent} is "
                         f"{'not a folder' if not parent.is_dir() else 'not writable'}); "
                         f"choose another {option}")


def check_outside_studies(out: Path, option: str = "--out") -> None:
    """A ValueError if `out` is, or lies inside, a study's workdir (config.json beside plan.json
    or results.jsonl): a result written there could replace the study's own files."""
    for folder in (out.absolute(), *out.absolute().parents):
        if (folder / "config.json").is_file() and any(
                (folder / name).exists() for name in ("plan.json", "results.jsonl")):
            raise ValueError(f"{option} {out} is inside the study in {folder}, whose files are "
                             f"no place for these results; choose another {option}")


def check_out_file(out: str | os.PathLike, option: str = "--out",
                   replaceable: Callable[[Path], bool] = lambda path: True,
                   kind: str = "") -> None:
    """A ValueError unless `out` names a file that can be written, outside any study; an
    existing file only if `replaceable(out)` (a file of `kind`, which is replaced)."""
    if not str(out).strip():  # before Path(), which reads "" as "."
        raise ValueError(f"{option} is empty; give a file path")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; give a file path")
    check_outside_studies(out, option)
    if out.exists() and not replaceable(out):
        raise ValueError(f"{option} {out} exists and is not {kind}: replacing it could destroy "
                         f"another file; remove it first or choose another {option}")
    if out.exists():
        if not os.access(out, os.W_OK) or not os.access(out.absolute().parent, os.W_OK):
            raise ValueError(f"{option} {out} cannot be replaced (not writable); choose "
                             f"another {option}")
        return
    check_creatable(out, option)


def check_out_folder(out: str | os.PathLike, option: str = "--out") -> None:
    """A ValueError unless `out` is, or can be made, a writable folder outside any study."""
    if not str(out).strip():  # before Path(), which reads "" as "."
        raise ValueError(f"{option} is empty; give a folder (it is made if missing)")
    out = Path(out)
    check_outside_studies(out, option)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file, not a folder; give a folder")
    if out.exists() and not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out} is not writable; choose another {option}")
    if not out.exists():
        check_creatable(out, option)
