"""What the analysis tools (lmc, bootstrap) share: opening a finished study, and a resumable
sweep into an --out folder.

The folder's record file (lmc.json, bootstrap.json) holds the command's settings and every item
measured so far; a rerun with the same settings measures only the missing items, and a killed
item resumes from --out/checkpoints. Every argument is checked before --out is written: a
folder that belongs to other settings (a result, or a killed item's checkpoints) is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Optional, Sequence

from lottery_kd import config as config_lib
from lottery_kd.config import identity
from lottery_kd.runtime.out_paths import check_creatable, check_outside_studies
from lottery_kd.study.results import write_atomic
from lottery_kd.study.study import Study
from lottery_kd.study.variants import DENSE, snapshot_name
from lottery_kd.study.workdir_lock import WorkdirBusy, WorkdirLock


def open_study(run_dir: str | os.PathLike) -> Study:
    """The study in `run_dir` for an analysis tool (lmc, bootstrap), or a ValueError of one line
    saying why `run_dir` is not one: missing, a file, no config.json, an unreadable, truncated
    or invalid config.json."""
    path = Path(run_dir)
    if not path.exists():
        raise ValueError(f"{run_dir}: no such folder; give the --workdir of a study")
    if not path.is_dir():
        raise ValueError(f"{run_dir} is a file, not a study; give the --workdir of a study")
    if not (path / "config.json").is_file():
        raise ValueError(f"{run_dir} holds no study (no config.json); give the --workdir of a "
                         "study")
    try:  # identity.SavedConfigError (a ValueError) says what is wrong with config.json
        config_lib.validate(identity.load_saved(path))
    except (AttributeError, TypeError, KeyError) as error:  # e.g. a section that is no dict
        raise ValueError(f"{path / 'config.json'} holds no valid study config "
                         f"({type(error).__name__}: {error}); restore it or give another "
                         "study") from None
    try:
        return Study.from_workdir(path, log=lambda *_: None)
    except OSError as error:  # the workdir cannot be written (lottery.WorkdirError)
        raise ValueError(f"{run_dir}: {error}") from None


def check_teacher(run: Study, option: str) -> None:
    """A ValueError naming `option` unless the study's dense teacher can be loaded."""
    name = snapshot_name(0, DENSE)
    if not run.snapshots.exists(name):
        raise ValueError(f"{option} needs the study's dense teacher ({name}), which is not in "
                         f"{run.workdir}: run the study first")
    run.teacher()  # a damaged snapshot: CheckpointError now, not after hours of training


def check_out(out: Path, name: str, settings: dict, what: str,
              fields: Sequence[str] = ()) -> Optional[dict]:
    """Check --out before anything is written into it, against the `settings` of this command:
    a ValueError if `out` cannot be a folder of results, holds an unreadable out/`name` (or a
    `what` item without the `fields` this tool writes), or belongs to other settings (see the
    module docstring). Returns the saved record to go on from, or None to start afresh (also
    when a settings file without results is replaced)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder (new or holding "
                         f"this command's {name})")
    check_outside_studies(out)
    if not out.exists():
        check_creatable(out)
        return None
    if (out / "config.json").is_file():
        raise ValueError(f"--out {out} holds a study (config.json), whose checkpoints are no "
                         "place for these results; choose another --out")
    path = out / name
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        valid = isinstance(saved, dict) and isinstance(saved.get("settings"), dict)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        saved, valid = None, False
        why = f"cannot be read ({error})"
    else:
        why = "is not a record of this tool"
    results = saved.get(what) if valid else None
    if not valid or not isinstance(results, list):
        raise ValueError(f"--out {out}: {path} {why}; it records the results there: restore "
                         "it, or choose another --out")
    for index, item in enumerate(results):
        lacking = [f for f in fields if f not in item] if isinstance(item, dict) else fields
        if lacking or not isinstance(item, dict):
            raise ValueError(f"--out {out}: {path} is damaged: item {index} of its {what!r} "
                             f"lacks {', '.join(map(repr, lacking)) or 'its fields'}; restore "
                             "it, or choose another --out")
    if saved["settings"] == settings:
        return saved
    checkpoints = out / "checkpoints"
    trained = checkpoints.is_dir() and any(p.is_file() for p in checkpoints.rglob("*"))
    if results or trained:
        held = f"{len(results)} result(s)" if results else "an interrupted run's checkpoints"
        raise ValueError(f"--out {out} holds {held} with other settings "
                         f"({saved['settings']}); use another --out, or rerun with those")
    return None  # settings but nothing trained for them: this command's settings replace them


def claim_out(out: Path, path: Path, record: dict) -> None:
    """Write `record` (settings and results so far) into out before the first training; when
    it replaces a record of other settings without results, what that one left goes too."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if path.is_file() and json.loads(path.read_text())["settings"] != record["settings"]:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
        write_atomic(path, json.dumps(record, indent=1) + "\n")
    except OSError as error:
        raise ValueError(f"--out {out} cannot be written ({error.strerror or error}); choose "
                         "another --out") from None



def measure_missing(out: Path, filename: str, saved: dict, field: str, items: Sequence[Any], *,
                    key: Callable[[Any], Hashable], record_key: Callable[[dict], Hashable],
                    measure: Callable[[Any], dict]) -> list[dict]:
    """Measure, in order, each of `items` whose key is not yet among saved[field], holding
    --out's lock (a second sweep into the same folder is refused, naming the first): --out is
    claimed before the first item, out/`filename` rewritten after each (a kill loses at most the
    item in training, which resumes from out/checkpoints), and that item's checkpoints deleted
    once its record is in the file. Returns saved[field]."""
    if not _pending(saved, field, items, key, record_key):
        return saved[field]
    path = out / filename
    with _lock(out):
        _reread(path, saved, field)  # what a sweep that just ended added since check_out
        pending = _pending(saved, field, items, key, record_key)
        if pending:
            claim_out(out, path, saved)  # every argument is good: --out is claimed, then trained
        for item in pending:
            saved[field].append(measure(item))
            write_atomic(path, json.dumps(saved, indent=1) + "\n")
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # it is in the record now
    return saved[field]


def _pending(saved: dict, field: str, items: Sequence[Any], key: Callable[[Any], Hashable],
             record_key: Callable[[dict], Hashable]) -> list[Any]:
    done = {record_key(record) for record in saved[field]}
    return list({key(item): item for item in items if key(item) not in done}.values())


def _reread(path: Path, saved: dict, field: str) -> None:
    try:
        on_disk = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(on_disk, dict) and on_disk.get("settings") == saved["settings"] and \
            isinstance(on_disk.get(field), list):
        saved[field] = on_disk[field]


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold --out's lock (out/study.lock, as a study's workdir) for the block, or a ValueError
    naming the process that holds it."""
    lock = WorkdirLock(out, what="analysis")
    try:
        lock.acquire()
    except WorkdirBusy as error:
        raise ValueError(f"--out {out}: {error}") from None
    except OSError as error:
        raise ValueError(f"--out {out} cannot be written ({error.strerror or error}); choose "
                         "another --out") from None
    try:
        yield
    finally:
        lock.release()
