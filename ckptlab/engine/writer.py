"""The write side: durable files, and the commit protocol that keeps a save invisible until done.

A save writes its files into ``.tmp-step_...`` beside the final name, hashing each from the
same buffers while writing it, fsyncs every file and the directory (all at once, in parallel),
renames the directory into place, swaps ``latest`` (temporary file + ``os.replace``; no
symlinks, so it works on Windows and macOS) and fsyncs the parent once for both renames.
Leftovers are ignored by readers and removed by the next writer (:func:`remove_leftovers`).
Async saves copy the state into a reusable :class:`StagingBuffer` first.

Durability rests on one persistence model: a file's data is durable once its fsync returns, a
name once its directory's fsync returns, and a rename is atomic; nothing else is assumed
(un-synced changes may be lost or reordered). That every write path here keeps the previous
committed state or the new one after a power cut, under that model, is not argued in
comments but checked crash state by crash state: :mod:`.crash_states`, :mod:`.crash_recovery`
and ``docs/crash-consistency.md``.
"""

from __future__ import annotations

import ctypes
import errno as errno_module
import os
import shutil
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy
import torch

from .errors import CkptlabError
from .format import (
    REPLACED_PREFIX,
    TEMP_PREFIX,
    TRASH_PREFIX,
    canonical_json,
    safetensors_order,
    tensor_bytes,
)
from .hashing import (
    HASH_POOL,
    PIECE_BYTES,
    PIECEWISE_MIN,
    PieceDigests,
    ProcessPool,
    sha256_hex,
)


def fsync_dir(path: Path) -> None:
    # Directory fsync makes a rename durable on POSIX; Windows cannot open directories.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())



# Bytes per write() call; the hashing thread reads each piece while (or right after) the kernel
# copies it, so both find it in the CPU cache.
_PIECE = 4 * 1024 * 1024
# From this size on, a file is hashed by a pool thread while it is written. Lower than a
# load's threshold (:data:`.hashing.HASH_THREAD_MIN`): the manifest waits for the hash, so
# hashing while the tensors are still being written (measured on a 2.6 MB DQN state: 6.1 ms
# instead of 9.7 ms from the first write to the last fsync) is worth a thread much sooner.
_HASH_THREAD_MIN = 1024 * 1024


class PendingEntry:
    """The manifest entry of a file being written: ``{bytes, sha256}`` or
    ``{bytes, sha256_pieces}``, ready once its hash is (see :meth:`ParallelFlush.start`)."""

    def __init__(self, total: int, hasher: PieceDigests | None = None,
                 digest: Future[str] | None = None, hexdigest: str | None = None) -> None:
        self.total = total
        self._hasher, self._digest, self._hexdigest = hasher, digest, hexdigest

    def result(self) -> dict[str, Any]:
        """Wait for the hash; raise the hashing thread's error, if any."""
        if self._hasher is not None:
            with self._hasher:
                return {"bytes": self.total,
                        "sha256_pieces": {"piece_bytes": self._hasher.piece_bytes,
                                          "digests": self._hasher.digests()}}
        if self._digest is not None:
            return {"bytes": self.total, "sha256": self._digest.result()}
        return {"bytes": self.total, "sha256": self._hexdigest}

    def cancel(self) -> None:
        """Stop hashing (a failed save) and wait until no thread reads the bytes any more."""
        if self._hasher is not None:
            self._hasher.close()
        if self._digest is not None:
            self._digest.cancel()
            futures.wait([self._digest])


class ParallelFlush:
    """Write files, hashing each from the same buffers while it is written, and fsync them in
    background threads (a pool kept for the process), so that several files (and directories)
    share one disk flush instead of queueing for one each. fsync, write() and SHA-256 all
    release the GIL.

    :meth:`start` returns as soon as the bytes are handed to the kernel: the hash and the
    fsync go on in other threads while the caller prepares what comes next (the manifest
    needs the hash; the commit needs every fsync).

    Use as a context manager: leaving it waits for every fsync (:meth:`join`), and on an
    error stops the hashes, still waits for the fsyncs and closes the files before the error
    propagates.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._syncs: list[Future[None]] = []
        self._pending: list[PendingEntry] = []

    def __enter__(self) -> ParallelFlush:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.join()
        else:  # the original error wins; the threads must still finish before cleanup
            for pending in self._pending:
                pending.cancel()
            self._wait()

    def start(self, path: Path, chunks: Sequence[bytes | memoryview]) -> PendingEntry:
        """Create ``path`` with ``chunks`` and start its fsync; the returned entry describes
        exactly the bytes handed to the kernel: one SHA-256, or from
        :data:`.hashing.PIECEWISE_MIN` bytes on one per piece. ``chunks`` must stay unchanged
        until the entry's :meth:`PendingEntry.result` returns."""
        handle = open(path, "xb", buffering=0)
        self._handles.append(handle)
        views = flat_views(chunks)
        total = sum(len(v) for v in views)
        if total >= PIECEWISE_MIN:
            # Large: per-piece digests on every hashing thread (format 3), each piece handed
            # to them as it is written. No bound on the queue: the pieces are views of memory
            # that exists anyway, and the writes (then the fsync) should not wait for the hash.
            hasher = PieceDigests(PIECE_BYTES)
            pending = PendingEntry(total, hasher=hasher)
            self._pending.append(pending)
            offset = 0
            for piece in _pieces(views):
                hasher.update(piece)
                _write_all(handle, piece)
                _start_writeback(handle.fileno(), offset, len(piece))
                offset += len(piece)
            self._start(os.fsync, handle.fileno())
            return pending
        if total >= _HASH_THREAD_MIN:
            # Mid-sized: one digest, computed by a pool thread while this one writes.
            pending = PendingEntry(total, digest=HASH_POOL.get().submit(sha256_hex, views))
            self._pending.append(pending)
            _write_views(handle, views, writeback=True)
            self._start(os.fsync, handle.fileno())
            return pending
        _write_views(handle, views, writeback=True)
        self._start(os.fsync, handle.fileno())
        return PendingEntry(total, hexdigest=sha256_hex(views))  # while the fsync runs

    def write(self, path: Path, chunks: Sequence[bytes | memoryview],
              durable: bool = True) -> None:
        """Create ``path`` with ``chunks`` (not hashed: a pointer, the manifest) and, unless
        ``durable`` is false (a file whose loss on power failure readers already survive),
        start its fsync."""
        handle = open(path, "xb", buffering=0)
        self._handles.append(handle)
        _write_views(handle, flat_views(chunks))
        if durable:
            self._start(os.fsync, handle.fileno())

    def sync_directory(self, path: Path) -> None:
        """Start an fsync of directory ``path`` (its entries created so far become durable)."""
        self._start(fsync_dir, path)

    def _start(self, function: Callable[[Any], None], argument: Any) -> None:
        self._syncs.append(SYNC_POOL.get().submit(function, argument))

    def _wait(self) -> None:
        futures.wait(self._syncs)
        for handle in self._handles:
            handle.close()

    def join(self) -> None:
        """Wait for every fsync started; raise the first one's error."""
        self._wait()
        for sync in self._syncs:
            error = sync.exception()
            if error is not None:
                raise error


# The threads that run every save's fsyncs in this process (a save starts four or five).
SYNC_POOL = ProcessPool(8, "ckptlab-fsync")


# At most this many buffers per writev() call (POSIX guarantees 16; Linux and macOS allow
# 1024; -1 means no limit).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "writev") else 16
if _IOV_MAX <= 0:
    _IOV_MAX = 1024


def flat_views(chunks: Sequence[bytes | memoryview | numpy.ndarray]) -> list[Any]:
    """Each chunk as a flat byte sequence that ``len()`` measures in bytes and slices cut by
    bytes. A flat ``uint8`` array (a tensor's bytes) is one already: wrapping each of a
    state's many tensors in a memoryview costs more than writing the small ones."""
    return [chunk if isinstance(chunk, numpy.ndarray) and chunk.dtype == numpy.uint8
            and chunk.ndim == 1 else memoryview(chunk).cast("B") for chunk in chunks]


def _write_views(handle: Any, views: Sequence[memoryview], writeback: bool = False) -> None:
    """Write ``views`` in order with as few system calls as the OS allows: a state of many
    small tensors is one ``writev`` rather than a ``write`` per tensor. With ``writeback``,
    the bytes go out in batches of :data:`_WRITEBACK_PIECE`, each handed to the disk as soon
    as it is written (:func:`_start_writeback`)."""
    if not hasattr(os, "writev"):  # Windows
        for piece in _pieces(views):
            _write_all(handle, piece)
        return
    pending = [view for view in views if len(view)]
    if not (writeback and _writeback_hint is not None):
        _writev_all(handle.fileno(), pending)
        return
    offset = 0
    for batch in _batches(pending, _WRITEBACK_PIECE):
        length = _writev_all(handle.fileno(), batch)
        _start_writeback(handle.fileno(), offset, length)
        offset += length


def _writev_all(fd: int, views: list[memoryview]) -> int:
    """``writev`` until every byte of ``views`` is written; returns how many that was."""
    total = sum(len(view) for view in views)
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        while written:  # a partial write: drop what went out, resume inside a buffer
            if written >= len(views[first]):
                written -= len(views[first])
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
    return total


def _batches(views: Sequence[memoryview], size: int) -> Iterator[list[memoryview]]:
    """Consecutive groups of ``views`` of ``size`` bytes each (the last may be shorter),
    splitting a view where a group ends."""
    batch: list[memoryview] = []
    filled = 0
    for view in views:
        while len(view):
            take = min(len(view), size - filled)
            batch.append(view[:take])
            filled += take
            view = view[take:]
            if filled == size:
                yield batch
                batch, filled = [], 0
    if batch:
        yield batch


# Start writing a file's bytes to the disk every this many bytes, while the rest is still
# being written: Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), which only queues the pages
# for writeback and returns. The fsync that follows then finds most of them on their way or
# done instead of starting on all of them at once: writing 2.6 MB plus its fsync took 2.5-2.9
# ms instead of 5.4-6.4 ms on the course machine (ext4 on a virtual disk). It is a hint, not
# a guarantee - durability still comes from the fsync alone, which also reports any error.
_WRITEBACK_PIECE = 512 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>


def _find_sync_file_range() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # a libc without it (very old, or not glibc/musl)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_writeback_hint = _find_sync_file_range()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes from ``offset`` to the disk now."""
    if _writeback_hint is not None and length:
        # The result is not checked: the hint may be refused (a filesystem without
        # writeback, a pipe), and a real write error is reported by the fsync that follows.
        _writeback_hint(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _pieces(views: Sequence[memoryview]) -> Iterator[memoryview]:
    for view in views:
        for start in range(0, len(view), _PIECE):
            yield view[start:start + _PIECE]


def _write_all(handle: Any, data: memoryview) -> None:
    while len(data):  # an unbuffered write may take only part of a large buffer
        written = handle.write(data)
        data = data[written:]


# From this many bytes on, a staging copy is split between the calling thread and a helper
# thread: starting one costs ~0.1 ms, a 4 MiB memcpy about 0.7 ms.
_PARALLEL_COPY_MIN = 4 * 1024 * 1024


def _copy_all(copies: Sequence[tuple[numpy.ndarray, numpy.ndarray]]) -> None:
    """Copy each flat uint8 ``(destination, source)`` pair; large totals in two threads.

    A plain memcpy through numpy: torch's ``copy_`` may wake its thread pool, which on a busy
    machine costs more than the copy itself. ``numpy.copyto`` releases the GIL, so a helper
    thread copying the second half of the bytes (split mid-array if need be) really runs in
    parallel; one core's memcpy does not saturate memory bandwidth.
    """
    total = sum(source.nbytes for _, source in copies)
    if total < _PARALLEL_COPY_MIN:
        for destination, source in copies:
            numpy.copyto(destination, source)
        return
    mine: list[tuple[numpy.ndarray, numpy.ndarray]] = []
    theirs: list[tuple[numpy.ndarray, numpy.ndarray]] = []
    left = total // 2  # bytes still to give to this thread
    for destination, source in copies:
        cut = min(left, source.nbytes)
        if cut:
            mine.append((destination[:cut], source[:cut]))
        if cut < source.nbytes:
            theirs.append((destination[cut:], source[cut:]))
        left -= cut
    errors: list[BaseException] = []

    def helper() -> None:
        try:
            for destination, source in theirs:
                numpy.copyto(destination, source)
        except BaseException as exc:  # re-raised below, in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=helper, name="ckptlab-stage")
    thread.start()
    try:
        for destination, source in mine:
            numpy.copyto(destination, source)
    finally:
        thread.join()  # the helper writes into the buffer: never return before it is done
    if errors:
        raise errors[0]


class StagedTensors(Mapping[str, torch.Tensor]):
    """What :meth:`StagingBuffer.stage` copied, as a read-only mapping of tensors.

    The tensors are views of the staging buffer, built on first access: for a state of
    many small tensors, building them costs more than copying their bytes, and the thread
    that writes the file can do it instead of the caller of ``save_async``.
    """

    def __init__(self, buffer: torch.Tensor,
                 layout: Sequence[tuple[str, int, int, torch.dtype, torch.Size]]) -> None:
        self._buffer = buffer
        self._layout = layout
        self._tensors: dict[str, torch.Tensor] | None = None

    def _views(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = {key: self._buffer[offset:offset + size].view(dtype).view(shape)
                             for key, offset, size, dtype, shape in self._layout}
        return self._tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._views()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views())

    def __len__(self) -> int:
        return len(self._layout)


class StagingBuffer:
    """One block of memory, reused from save to save, that async saves copy the state into.

    The tensors are packed in the order the safetensors file lays them out, so the copy is
    one pass of ``memcpy`` into pages that are already mapped (after the first save, no page
    faults and no allocation), and the file is later written from it without further copies.
    The buffer grows (with 25% headroom, for a state that grows between saves, like a
    filling replay buffer) but never shrinks until :meth:`release`.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes currently held (0 when released)."""
        return 0 if self._buffer is None else self._buffer.numel()

    def stage(self, tensors: Mapping[str, torch.Tensor]) -> StagedTensors:
        """Copy ``tensors`` into the buffer; returns same-named views of the copies.

        The views stay valid until the next :meth:`stage` or :meth:`release`. Only the copy
        runs here (on the caller's thread); the views are built when first used, by the
        thread that writes them.
        """
        order = safetensors_order(tensors)
        sources = [tensor_bytes(tensors[key]) for key in order]
        total = sum(source.nbytes for source in sources)
        if self._buffer is None or self._buffer.numel() < total:
            self._buffer = None  # let the old block go before the larger one is allocated
            self._buffer = torch.empty(total + total // 4, dtype=torch.uint8)
        flat = self._buffer.numpy()  # sliced by numpy: a torch slice costs ~10x more
        copies = []
        layout = []
        offset = 0
        for key, source in zip(order, sources):  # largest elements first: views stay aligned
            tensor = tensors[key]
            copies.append((flat[offset:offset + source.nbytes], source))
            # dtype and shape as of now: the caller may resize its tensor after this returns
            layout.append((key, offset, source.nbytes, tensor.dtype, tensor.shape))
            offset += source.nbytes
        _copy_all(copies)
        return StagedTensors(self._buffer, layout)

    def release(self) -> None:
        """Free the memory (the next :meth:`stage` allocates it again)."""
        self._buffer = None


class CheckpointWriteError(CkptlabError):
    """A save failed (disk full, permission denied, ...); earlier checkpoints are intact."""



def describe_os_error(exc: OSError) -> str:
    name = errno_module.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


class ReplacedButUnsyncedError(OSError):
    """:func:`commit_directory` put the new copy of a step in place of the old one, then
    failed to make that durable or to delete the old copy (which sits aside; the next writer
    removes it). The message of a failed save must not claim the old copy is unchanged:
    use :meth:`describe`."""

    def describe(self, final: Path) -> str:
        return (f"could not finish replacing checkpoint {final.name} in {final.parent}: "
                f"{describe_os_error(self)}. The new copy of this step is already in its "
                "place (the old copy, if still beside it, is removed by the next writer), "
                "but a power loss now could undo the swap, and `latest` was not updated; "
                "fix the disk or its permissions, then save again")


def commit_directory(directory: Path, temp: Path, final: Path, sync: bool = True) -> None:
    """Rename the finished ``temp`` directory to ``final``: the moment a save becomes visible.

    An existing ``final`` (a resumed run re-reaching a step, or a corrupt copy) is moved aside
    first, because ``os.replace`` cannot replace a non-empty directory; a crash between the two
    renames is undone by :func:`remove_leftovers`.

    Raises:
        ReplacedButUnsyncedError: ``final`` was replaced, but the fsync of ``directory`` or
            the deletion of the old copy failed afterwards.
    """
    if final.exists():
        aside = directory / f"{REPLACED_PREFIX}{final.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
        os.replace(temp, final)
        try:
            fsync_dir(directory)  # before the old copy is deleted, always
            shutil.rmtree(aside)
        except OSError as exc:
            raise ReplacedButUnsyncedError(exc.errno, exc.strerror or str(exc)) from exc
    else:
        os.replace(temp, final)
        if sync:
            fsync_dir(directory)


def write_pointer(directory: Path, pointer: str, name: str, step: int,
                  **fields: Any) -> None:
    """Atomically point ``directory/pointer`` (``latest``, ``best``) at checkpoint ``name``.

    ``fields`` are recorded too (``best`` records its ``metric`` and ``mode``, so whoever
    reopens the directory ranks by the run's own metric).
    """
    temp = directory / f"{TEMP_PREFIX}{pointer}-{uuid.uuid4().hex[:8]}"
    write_durable(temp, canonical_json({"checkpoint": name, "step": step, **fields},
                                         readable=True))
    os.replace(temp, directory / pointer)
    fsync_dir(directory)


class PointerSetAsideWarning(UserWarning):
    """Something that is not a pointer file (a directory, a named pipe) sat where a pointer
    (``latest``, ``best``) belongs; a writer moved it aside, unchanged, to write the pointer."""


def _kind_of_entry(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "non-regular file"


def set_aside_non_pointer(directory: Path, pointer: str) -> tuple[Path, str] | None:
    """Move whatever non-regular entry sits at ``directory/pointer`` to
    ``<pointer>.moved-aside-<UTC time>`` beside it, unchanged; returns ``(new path, what it
    is)``, or ``None`` when there is nothing to move.

    Readers take such an entry as a missing pointer, but a writer cannot replace it (a
    directory cannot be replaced by a file), and it may hold someone's data: it is renamed,
    never deleted. A regular file (a pointer, perhaps damaged) and a symbolic link (replaced
    by the rename of the new pointer, its target untouched) are left for the writer.
    """
    path = directory / pointer
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = directory / f"{pointer}.moved-aside-{stamp}"
    while os.path.lexists(aside):  # never rename over an earlier one (POSIX would)
        aside = directory / f"{pointer}.moved-aside-{stamp}-{uuid.uuid4().hex[:6]}"
    os.rename(path, aside)
    fsync_dir(directory)
    return aside, _kind_of_entry(mode)


def delete_checkpoints(directory: Path, names: Sequence[str]) -> None:
    """Delete checkpoint directories; each is renamed aside first, so a crash mid-delete never
    leaves a half-deleted directory under a committed name.

    The renames are made durable before anything inside is removed: a disk that may reorder
    un-synced changes could otherwise keep a removal and lose the rename (found by the crash
    explorer, ``crash_recovery`` workload ``delete``). What is left aside is removed by the next
    writer if a crash interrupts the removal.
    """
    trashed = []
    for name in names:
        trash = directory / f"{TRASH_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        os.replace(directory / name, trash)
        trashed.append(trash)
    if trashed:
        fsync_dir(directory)
    for trash in trashed:
        _remove_entry(trash)


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
        if path.name.startswith(REPLACED_PREFIX):
            original = directory / path.name[len(REPLACED_PREFIX):]
            if not original.exists():
                os.replace(path, original)
                continue
        if path.name.startswith((TEMP_PREFIX, TRASH_PREFIX, REPLACED_PREFIX)):
            _remove_entry(path)
            removed.append(path)
    return removed
