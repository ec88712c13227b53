"""Carry a resumable study to another machine: a checked copy of its workdir, resume included.

A study that outlives one machine (a preemptible VM, a sitting that ends, a laptop that sleeps)
must take its workdir along. `save WORKDIR DEST` copies what a rerun of the study's command needs
into the folder DEST (one git tracks, a bucket's mount, another disk):
  - every file of the workdir but its lock and the folders set aside as damaged;
  - of each run's resume checkpoints only the newest (the older ones are fallbacks for a write
    interrupted on this disk, which a finished copy does not need);
  - not the cached teacher logits (hundreds of MB, which the KD runs compute again if missing).
DEST then mirrors that selection (stale files are removed), and `carry.json` in it lists each
file's size and SHA-256. It is written last, so a copy interrupted midway has none and is refused
by `restore`; `carry.json.saving` marks it, and rerunning the same `save` finishes it.
`restore DEST WORKDIR` checks every file against that list and copies the study into a missing
or empty WORKDIR (through a temporary folder renamed at the end); the study's command then
resumes from it. A WORKDIR that already holds the same study, as far along or further, is left
as it is; one behind the copy, or holding another study, is refused.
`save` refuses while a process holds the study's lock (a workdir being written is no
checkpoint), and holds the lock itself while it copies, so a study launched meanwhile is refused.
Stop the study first (SIGTERM saves a resume checkpoint), or give `save --stop`, which sends it
SIGTERM on this host and waits for it to exit (`--wait`, 600 s by default) before it copies.
It refuses too to replace an earlier copy of another study, or of this one further along than
the workdir.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from lottery_kd.study.checkpoint_meta import read_fingerprint
from lottery_kd.study.jsonlines import write_atomic
from lottery_kd.study.workdir import Workdir
from lottery_kd.study.workdir_lock import (StopFailed, WorkdirBusy, WorkdirLock, holder,
                                           stop_holder)

MANIFEST = "carry.json"
# Written before a save replaces anything, removed after MANIFEST: an interrupted save leaves it
# (naming the study's config), and a rerun of that save goes on; restore refuses the folder.
SAVING = MANIFEST + ".saving"
_CHUNK = 1 << 20


class CarryError(ValueError):
    """A copy that cannot be made or restored as asked; the message says why and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _resume_steps(workdir: Workdir) -> dict[Path, list[tuple[int, Path]]]:
    """Each run's resume folder -> its complete steps (step, folder), oldest first. Orbax writes
    a step into a temporary folder (not all digits) and renames it when complete."""
    resume_root = workdir.checkpoints / "resume"
    runs = sorted(resume_root.iterdir()) if resume_root.is_dir() else []
    return {run: sorted((int(p.name), p) for p in run.iterdir()
                        if p.is_dir() and p.name.isdigit()) for run in runs if run.is_dir()}


def _older_resume_steps(workdir: Workdir) -> set[Path]:
    """The resume checkpoint folders of each run but the one a copy keeps: its newest complete
    step whose metadata reads (a step torn by a power loss would leave the copy nothing to
    resume from), else its newest."""
    older: set[Path] = set()
    for run, steps in _resume_steps(workdir).items():
        readable = [path for _, path in steps if read_fingerprint(path) is not None]
        kept = (readable or [path for _, path in steps])[-1:]
        older.update(path for _, path in steps if path not in kept)
        complete = {path for _, path in steps}
        older.update(p for p in run.iterdir() if p.is_dir() and p not in complete)
    return older


def carried_files(workdir: str | os.PathLike) -> list[str]:
    """The workdir's files a resume needs, as sorted POSIX paths relative to it."""
    paths = Workdir(workdir)
    root = paths.root
    skip = _older_resume_steps(paths) | {paths.teacher_logits}  # recomputable, and large
    chosen = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders
                               if here / d not in skip and not d.endswith(".damaged"))
        chosen += [(here / name).relative_to(root).as_posix() for name in files
                   if here / name not in (paths.lock, root / MANIFEST, root / SAVING)
                   and not name.endswith(".damaged")]  # a copy saved onward: not its manifest
    return sorted(chosen)


def _check_pair(workdir: Path, dest: Path) -> None:
    a, b = workdir.resolve(), dest.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise CarryError(f"{dest} and {workdir} overlap; give the copy a folder of its own")


def save(workdir: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Mirror the study in `workdir` into `dest` (see the module docstring); its manifest."""
    workdir, dest = Path(workdir), Path(dest)
    if not Workdir(workdir).config.is_file():
        raise CarryError(f"{workdir} holds no study (no config.json); give the study's workdir")
    _check_pair(workdir, dest)
    if dest.exists() and not dest.is_dir():
        raise CarryError(f"{dest} is a file, not a folder; give a folder for the copy")
    try:  # held for the whole copy: a study launched meanwhile is refused, not copied half-way
        lock = WorkdirLock(workdir, what="study").acquire()
    except WorkdirBusy:
        who = holder(workdir) or {}
        raise CarryError(f"a study is running in {workdir} (pid {who.get('pid', '?')} on "
                         f"{who.get('host', '?')}); stop it with SIGTERM, which saves a resume "
                         "checkpoint, then save the copy") from None
    try:
        return _mirror(workdir, dest)
    finally:
        lock.release()


def _mirror(workdir: Path, dest: Path) -> dict:
    """save's copy, under the workdir's lock."""
    interrupted = (dest / SAVING).is_file() and not (dest / MANIFEST).is_file()
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).is_file() \
            and not interrupted:
        raise CarryError(f"{dest} is not empty and holds no {MANIFEST}: it is no earlier copy "
                         "of a study; give an empty or new folder")
    config_digest = _sha256(Workdir(workdir).config)
    if (dest / MANIFEST).is_file():
        _check_earlier_copy(workdir, dest)
    elif interrupted:
        if _saving_digest(dest) != config_digest:
            raise CarryError(f"{dest} holds an interrupted save of another study; give a new "
                             f"folder, or remove {dest} first")
        _check_not_behind(workdir, dest)  # a study started afresh must not replace it
    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / SAVING, {"study": str(workdir), "config_sha256": config_digest})
    (dest / MANIFEST).unlink(missing_ok=True)  # until the copy is whole again
    files = {}
    for name in carried_files(workdir):
        source, target = workdir / name, dest / name
        digest = _sha256(source)
        if not (target.is_file() and _sha256(target) == digest):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        files[name] = {"bytes": source.stat().st_size, "sha256": digest}
    _remove_stale(dest, set(files))
    manifest = {"study": str(workdir), "files": files}
    _write_json(dest / MANIFEST, manifest)
    (dest / SAVING).unlink(missing_ok=True)
    return manifest


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _saving_digest(dest: Path) -> Optional[str]:
    """The config.json digest of the study an interrupted save into `dest` was copying."""
    try:
        return json.loads((dest / SAVING).read_text()).get("config_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _check_earlier_copy(workdir: Path, dest: Path) -> None:
    """Saving over an earlier copy replaces it: only with the same study, as far or further
    (else the copy of another study, or a later state of this one, would be lost)."""
    copied = dest / "config.json"
    if not copied.is_file() or copied.read_bytes() != Workdir(workdir).config.read_bytes():
        raise CarryError(f"{dest} holds a copy of another study (its config.json differs from "
                         f"{workdir}'s): saving would replace it; give a new folder, or remove "
                         f"{dest} first")
    _check_not_behind(workdir, dest)


def _check_not_behind(workdir: Path, dest: Path) -> None:
    """CarryError where the study has fewer result rows (or an older resume step) than the
    copy, whole or interrupted: saving would roll the copy back."""
    here, there = progress(workdir), progress(dest)
    if here < there:
        raise CarryError(f"{workdir} ({_describe_progress(here)}) is behind the copy in {dest} "
                         f"({_describe_progress(there)}): saving would roll the copy back; "
                         f"restore the copy instead, or remove {dest} first")


def _remove_stale(dest: Path, keep: set[str]) -> None:
    """Remove files of `dest` not in `keep` (nor the manifest), then the folders left empty."""
    for folder, _, files in os.walk(dest, topdown=False):
        here = Path(folder)
        for name in files:
            relative = (here / name).relative_to(dest).as_posix()
            if relative not in keep and relative not in (MANIFEST, SAVING, SAVING + ".tmp"):
                (here / name).unlink()
        if here != dest and not any(here.iterdir()):
            here.rmdir()


def _read_manifest(dest: Path) -> dict:
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CarryError(f"{dest} has no {MANIFEST}: it is not a whole copy of a study (a save "
                         "interrupted midway writes none); save it again from the study") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CarryError(f"{dest / MANIFEST} is unreadable ({error}); save the copy "
                         "again") from None
    if not isinstance(files, dict):
        raise CarryError(f"{dest / MANIFEST} lists no files; save the copy again")
    return files


def progress(root: str | os.PathLike) -> tuple[int, int]:
    """How far a study (or a copy of one) has got: (result rows, newest resume step)."""
    paths = Workdir(root)
    rows = 0
    if paths.results.is_file():
        rows = sum(1 for line in paths.results.read_text().splitlines() if line.strip())
    steps = [step for run in _resume_steps(paths).values() for step, _ in run]
    return rows, max(steps, default=0)


def _describe_progress(where: tuple[int, int]) -> str:
    return f"{where[0]} result rows, resume step {where[1]}"


def _check_existing(dest: Path, workdir: Path) -> None:
    """A workdir already there must be this study, at least as far as the copy."""
    config = Workdir(workdir).config
    if not config.is_file():
        raise CarryError(f"{workdir} is not empty and holds no study (no config.json): "
                         "restoring would mix the study with its files; restore into a new or "
                         "empty folder")
    if config.read_bytes() != (dest / "config.json").read_bytes():
        raise CarryError(f"{workdir} is not empty and holds another study (its config.json "
                         f"differs from {dest}'s): restoring would mix two studies; restore "
                         "into a new folder")
    here, there = progress(workdir), progress(dest)
    if here < there:
        raise CarryError(f"{workdir} ({_describe_progress(here)}) is behind the copy in {dest} "
                         f"({_describe_progress(there)}); move {workdir} away, then restore")


def restore(dest: str | os.PathLike, workdir: str | os.PathLike) -> int:
    """Copy the study saved in `dest` into `workdir`, every file checked against the manifest
    first; the number of files restored. A workdir that already holds the same study, as far as
    the copy or further, is left as it is (0 files): rerunning the study resumes it."""
    dest, workdir = Path(dest), Path(workdir)
    _check_pair(workdir, dest)
    files = _read_manifest(dest)
    if workdir.exists() and not workdir.is_dir():
        raise CarryError(f"{workdir} is a file, not a folder; restore into a new folder")
    if workdir.exists() and any(workdir.iterdir()):
        _check_existing(dest, workdir)
        return 0
    for name, entry in sorted(files.items()):
        path = dest / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CarryError(f"{dest / MANIFEST} names {name!r}, outside the copy")
        if not path.is_file() or _sha256(path) != entry.get("sha256"):
            raise CarryError(f"{path} is missing or differs from what {MANIFEST} records; the "
                             "copy is damaged: save it again from the study, or restore an "
                             "earlier copy")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(workdir.parent / f".{workdir.name}.restore.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:  # one restore at a time: a second waits, then finds the study restored
        fcntl.flock(lock, fcntl.LOCK_EX)
        if workdir.exists() and any(workdir.iterdir()):
            _check_existing(dest, workdir)
            return 0
        return _copy_in(dest, workdir, files)
    finally:
        os.close(lock)


def _copy_in(dest: Path, workdir: Path, files: dict) -> int:
    """restore's copy, under its lock: into a scratch folder renamed into place when whole."""
    for stale in workdir.parent.glob(f".{workdir.name}.restoring-*"):  # an interrupted restore's
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{workdir.name}.restoring-", dir=workdir.parent))
    try:
        for name in files:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest / name, scratch / name)
    except BaseException:  # an interrupt included: no half-restored scratch left behind
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if workdir.exists():
        workdir.rmdir()
    scratch.rename(workdir)
    return len(files)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.study.carry",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save", help="copy a stopped study's workdir into DEST")
    saving.add_argument("workdir")
    saving.add_argument("dest")
    saving.add_argument("--stop", action="store_true",
                        help="first stop the study running in WORKDIR on this host (SIGTERM: it "
                             "saves a resume checkpoint) and wait for it to exit")
    saving.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                        help="how long --stop waits for the study to exit (default 600)")
    restoring = commands.add_parser("restore", help="copy a saved study into a new WORKDIR")
    restoring.add_argument("dest")
    restoring.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.command == "save" and not args.wait > 0:
        parser.error(f"--wait {args.wait:g}: give a number of seconds above 0")
    try:
        if args.command == "save":
            if args.stop and stop_holder(args.workdir, args.wait) is not None:
                print(f"the study in {args.workdir} stopped; rerun its command to resume it")
            files = save(args.workdir, args.dest)["files"]
            size = sum(entry["bytes"] for entry in files.values())
            print(f"saved {len(files)} files ({size / 2**20:.1f} MiB) of {args.workdir} "
                  f"into {args.dest}")
        else:
            count = restore(args.dest, args.workdir)
            done = (f"restored {count} files into {args.workdir}" if count else
                    f"{args.workdir} already holds this study, as far as the copy or further")
            print(f"{done}; rerun the study's command to resume it")
    except (CarryError, StopFailed, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to finish the {args.command}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
