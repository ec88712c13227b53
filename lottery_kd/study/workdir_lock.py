"""One study per workdir: an exclusive lock on WORKDIR/study.lock for the whole life of a study.

The first process to start a study holds an flock on the file (and writes who it is: pid, host,
time, command); a second launch on the same workdir is refused at once with a message naming the
first. The kernel releases the lock when the holder exits in any way (SIGKILL included), so a
dead holder never blocks the next start. Readers (status, report) take no lock; `holder` tells
them whether a study is running. On a shared filesystem the lock works across hosts where the
filesystem supports flock (NFSv4, Lustre, GCS FUSE do not all do); on a pod, process 0 holds it
for all processes of the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from lottery_kd.runtime.environment import command_line
from lottery_kd.study.workdir import Workdir

_RETRIES = 10  # a reader's brief shared lock (holder()) must not look like a running study


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir's lock."""


def _describe(info: dict, directory: Path, what: str) -> str:
    who = (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since "
           f"{info.get('since', '?')}") if info else "its details could not be read"
    return (f"another process ({who}) is running this {what} in {directory}; wait for it to "
            "finish, or stop it (SIGTERM saves a resume checkpoint) and rerun the command")


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class WorkdirLock:
    """The lock of one workdir; `with WorkdirLock(path): ...` holds it for the block."""

    def __init__(self, directory: str | os.PathLike, what: str = "study"):
        self.directory = Path(directory)
        self.path = Workdir(self.directory).lock
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        """Take the lock (creating the folder if needed); WorkdirBusy if a live process holds
        it, NotADirectoryError if the workdir is a file."""
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(self.directory))
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = self._lock_current_file()
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": shlex.join(command_line())}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def _lock_current_file(self) -> int:
        """An exclusive flock on the lock file that is at the path now: a launch refused before
        it wrote a study unlinks the lock file it created as it lets go, so a lock won on that
        file would be a lock on nothing (a third launch creates a new file and locks that);
        then the path is opened again."""
        for _ in range(_RETRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            for attempt in range(_RETRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _RETRIES - 1:
                        os.close(fd)
                        raise WorkdirBusy(_describe(_read_info(self.path), self.directory,
                                                    self.what)) from None
                    time.sleep(0.05)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        raise WorkdirBusy(f"the lock file {self.path} keeps being replaced; is another launch "
                          "starting and stopping there? wait for it and rerun")

    def release(self) -> None:
        """Release the lock (the file stays: it records the last holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str | os.PathLike) -> Optional[dict]:
    """Who holds the workdir's lock ({"pid", "host", "since", "command"}, possibly empty), or
    None when no live process does. Takes the lock for an instant only if it is free."""
    path = Workdir(directory).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_info(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def running_note(directory: str | os.PathLike) -> str:
    """'still running (pid N on HOST since T)' when a live process holds the lock, else ''."""
    info = holder(directory)
    if info is None:
        return ""
    return (f"still running (pid {info.get('pid', '?')} on {info.get('host', '?')} since "
            f"{info.get('since', '?')})")


class StopFailed(RuntimeError):
    """The holder of a workdir's lock could not be stopped from here; the message says why."""


def stop_holder(directory: str | os.PathLike, timeout: float,
                say: Callable[[str], None] = print) -> Optional[dict]:
    """Send SIGTERM to the process running a study in `directory` (it saves a resume
    checkpoint and exits) and wait up to `timeout` seconds for its lock to free. Returns the
    holder's record, or None when nothing ran. StopFailed when the holder is on another host or
    unnamed (no signal sent), or still running at the timeout (the SIGTERM stands: it stops
    when it has saved, and a rerun then finds it stopped)."""
    who = holder(directory)
    if who is None:
        return None
    pid, host = who.get("pid"), who.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        raise StopFailed(f"the study in {directory} runs as pid {pid} on {host}, not on this "
                         "host; stop it there (SIGTERM), then rerun this command")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it exited between the two looks
        return who
    except PermissionError:
        raise StopFailed(f"pid {pid}, which runs the study in {directory}, belongs to another "
                         "user; stop it as that user, then rerun this command") from None
    say(f"sent SIGTERM to pid {pid} (the study in {directory}); waiting up to {timeout:.0f} s "
        "for it to save a resume checkpoint and exit")
    deadline = time.monotonic() + timeout
    while holder(directory) is not None:
        if time.monotonic() > deadline:
            raise StopFailed(f"pid {pid} still runs the study in {directory} after "
                             f"{timeout:.0f} s; wait for it, or give a longer wait, then rerun "
                             "this command")
        time.sleep(0.5)
    return who
