"""One writer per run directory: a portable, crash-safe file lock.

The lock is an operating-system lock on ``.writer.lock`` (``flock`` on POSIX, ``msvcrt`` on
Windows). The OS releases it when the holding process exits for any reason, SIGKILL included,
so a stale lock from a killed process never blocks the next run. Who holds it (pid, host,
command, since when) is written beside it, in ``.writer.lock.json``, for the error message.

Introduced in notebook ``07_failure_modes`` (two writers on one directory).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CkptlabError

LOCK_NAME = ".writer.lock"
INFO_NAME = ".writer.lock.json"


class RunLockedError(CkptlabError):
    """Another process (or another manager in this one) is writing to the directory."""


def try_lock(fd: int) -> bool:
    """Take the OS's exclusive lock on the open file ``fd`` without waiting; ``False`` if another
    holder has it. The OS drops it when the holder exits, however it exits."""
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def unlock(fd: int) -> None:
    """Release the lock :func:`try_lock` took on ``fd``."""
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """An exclusive, non-blocking lock on a directory; use as a context manager or
    :meth:`acquire` / :meth:`release`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """A description of the current holder, from the info file (best effort)."""
        try:
            info = json.loads((self.directory / INFO_NAME).read_text("utf-8"))
            return (f"pid {info['pid']} on {info['host']}, running {info['command']!r} "
                    f"since {info['since']}")
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process"

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the holder."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            os.close(fd)
            raise RunLockedError(
                f"{self.directory} is already being written by {self.holder()}. Two writers "
                "would overwrite each other's checkpoints: stop the other run, or use another "
                "directory. (A lock left by a process that died is released automatically.)")
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": " ".join(sys.argv) or sys.executable,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.directory / INFO_NAME).write_text(json.dumps(info), "utf-8")

    def release(self) -> None:
        """Release the lock (the lock file stays; deleting it would race other acquirers)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
