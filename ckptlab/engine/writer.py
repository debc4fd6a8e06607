"""The write side: durable files, and the commit protocol that keeps a save invisible until done.

A save writes its files into ``.tmp-step_...`` beside the final name, fsyncs each file and the
directory, renames the directory into place and fsyncs the parent; only then is ``latest``
replaced (temporary file + ``os.replace``; no symlinks, so it works on Windows and macOS). A
crash at any moment leaves either the old set of checkpoints or the new one; leftovers are
ignored by readers and removed by the next writer (:func:`remove_leftovers`).
"""

from __future__ import annotations

import errno as errno_module
import os
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import CkptlabError
from .format import _REPLACED_PREFIX, _TEMP_PREFIX, _TRASH_PREFIX, _canonical_json


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes a rename durable on POSIX; Windows cannot open directories.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())



class _ParallelFlush:
    """Write files now and fsync them in background threads, so several files share one disk
    flush instead of queueing for one each (fsync releases the GIL)."""

    def __init__(self, files: Mapping[Path, Sequence[bytes | memoryview]]) -> None:
        self._handles = []
        self._errors: list[BaseException] = []
        self._threads = []
        try:
            for path, chunks in files.items():
                handle = open(path, "xb")
                self._handles.append(handle)
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
        except BaseException:
            self._close()
            raise
        for handle in self._handles:
            thread = threading.Thread(target=self._sync, args=(handle.fileno(),))
            thread.start()
            self._threads.append(thread)

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except BaseException as exc:  # re-raised by join(), in the saving thread
            self._errors.append(exc)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        self._close()
        if self._errors:
            raise self._errors[0]

    def _close(self) -> None:
        for handle in self._handles:
            handle.close()



class CheckpointWriteError(CkptlabError):
    """A save failed (disk full, permission denied, ...); earlier checkpoints are intact."""



def _describe_os_error(exc: OSError) -> str:
    name = errno_module.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def commit_directory(directory: Path, temp: Path, final: Path, sync: bool = True) -> None:
    """Rename the finished ``temp`` directory to ``final``: the moment a save becomes visible.

    An existing ``final`` (a resumed run re-reaching a step, or a corrupt copy) is moved aside
    first, because ``os.replace`` cannot replace a non-empty directory; a crash between the two
    renames is undone by :func:`remove_leftovers`.
    """
    if final.exists():
        aside = directory / f"{_REPLACED_PREFIX}{final.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
        os.replace(temp, final)
        _fsync_dir(directory)  # before the old copy is deleted, always
        shutil.rmtree(aside)
    else:
        os.replace(temp, final)
        if sync:
            _fsync_dir(directory)


def write_pointer(directory: Path, pointer: str, name: str, step: int,
                  **fields: Any) -> None:
    """Atomically point ``directory/pointer`` (``latest``, ``best``) at checkpoint ``name``.

    ``fields`` are recorded too (``best`` records its ``metric`` and ``mode``, so whoever
    reopens the directory ranks by the run's own metric).
    """
    temp = directory / f"{_TEMP_PREFIX}{pointer}-{uuid.uuid4().hex[:8]}"
    _write_durable(temp, _canonical_json({"checkpoint": name, "step": step, **fields},
                                         readable=True))
    os.replace(temp, directory / pointer)
    _fsync_dir(directory)


def delete_checkpoints(directory: Path, names: Sequence[str]) -> None:
    """Delete checkpoint directories; each is renamed aside first, so a crash mid-delete never
    leaves a half-deleted directory under a committed name."""
    for name in names:
        trash = directory / f"{_TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        os.replace(directory / name, trash)
        _remove_entry(trash)
    if names:
        _fsync_dir(directory)


def _remove_entry(path: Path) -> None:
    # A symlink is unlinked, never followed: what it points to is not ours to delete.
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete temporary and trash entries left by crashed saves or deletions.

    A checkpoint moved aside to be replaced, whose replacement never arrived, is put back.
    """
    removed = []
    for path in directory.iterdir():
        if path.name.startswith(_REPLACED_PREFIX):
            original = directory / path.name[len(_REPLACED_PREFIX):]
            if not original.exists():
                os.replace(path, original)
                continue
        if path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX, _REPLACED_PREFIX)):
            _remove_entry(path)
            removed.append(path)
    return removed
