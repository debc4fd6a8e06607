"""SHA-256 of a file's bytes as they stream through a save or a load, pipelined when large.

A checkpoint's files are hashed from the very buffers that are written (save) or read (load).
For a large file the hash is the slowest step (SHA-256 runs at about 1 GB/s on one core; the
page cache copies several times faster). Two ways to keep it off the critical path:

* One SHA-256 of the whole file (files under :data:`PIECEWISE_MIN`, and every file of formats
  1 and 2). A load hashes it with :class:`PieceHasher`, in a second thread while the next
  piece is read; a save hands the whole file's buffers to one :data:`HASH_POOL` task
  (:func:`sha256_hex`) while it writes them. One digest is one sequential pass, so it can
  use one core at most.
* :class:`PieceDigests` - one SHA-256 per piece of :data:`PIECE_BYTES` (files of
  :data:`PIECEWISE_MIN` bytes or more, from format 3), so the pieces are hashed by all the
  process's hashing threads at once: the hash keeps up with the disk on a machine with a
  few cores, and a corrupted byte is reported with the piece that holds it.

Both hashlib and file I/O release the GIL, so the threads really overlap.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# From this size on, a save records one SHA-256 per piece of PIECE_BYTES (format 3). Below it
# a whole-file digest costs at most ~15 ms and keeps the manifest short; lessons and scripts
# that check a small file with one `hashlib.sha256(...)` keep working.
PIECEWISE_MIN = 16 * 1024 * 1024
PIECE_BYTES = 4 * 1024 * 1024


class ProcessPool:
    """A thread pool started on first use and kept for the life of the process.

    Starting a thread costs 0.1-0.4 ms on a busy machine, and a save needs several. A pool
    inherited through ``fork()`` has no threads in the child, and its lock may have been held
    by another thread at the fork, so a child forgets both and makes its own.
    """

    def __init__(self, workers: int, name: str) -> None:
        self.workers, self.name = workers, name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork()
            os.register_at_fork(after_in_child=self._forget)

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
            return self._pool

    def _forget(self) -> None:
        self._pool = None
        self._lock = threading.Lock()


# One hashing thread per core (SHA-256 is CPU-bound), at least two so that a 2-core machine
# overlaps the hash with the caller's reads and writes.
HASH_POOL = ProcessPool(max(2, min(16, os.cpu_count() or 2)), "ckptlab-hash")


def sha256_hex(segments: Sequence[memoryview]) -> str:
    """The SHA-256 (hex) of the segments' bytes, one after the other."""
    digest = hashlib.sha256()
    for segment in segments:
        digest.update(segment)
    return digest.hexdigest()


class PieceDigests:
    """SHA-256 of every consecutive ``piece_bytes`` of a stream, hashed in parallel.

    Bytes are given in order through :meth:`update`, in views of any size; the stream is cut
    at multiples of ``piece_bytes`` (the last piece may be shorter) and each complete piece is
    hashed by a thread of :data:`HASH_POOL`. A view given to :meth:`update` must stay
    unchanged until :meth:`digests` or :meth:`close` returns. Use as a context manager, or call
    :meth:`close` in a ``finally``: no hash runs on after it.

    Args:
        piece_bytes: the size of every piece but the last.
        max_pending: how many pieces may wait for a thread before :meth:`update` blocks
            (``None``: no bound). Bound it when the pieces are fresh allocations, so memory
            stays bounded if the caller outruns the hash.
    """

    threaded = True  # the pieces are read later, by other threads

    def __init__(self, piece_bytes: int = PIECE_BYTES, max_pending: int | None = None) -> None:
        if piece_bytes <= 0:
            raise ValueError(f"piece_bytes must be positive (got {piece_bytes})")
        self.piece_bytes = piece_bytes
        self._current: list[memoryview] = []
        self._filled = 0
        self._futures: list[Future[str]] = []
        self._checked = 0  # futures before this index finished without error
        self._slots = threading.Semaphore(max_pending) if max_pending else None
        self._closed = False

    def __enter__(self) -> PieceDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, data: bytes | memoryview) -> None:
        """Hash ``data`` next.

        Raises:
            BaseException: whatever a hashing thread raised on an earlier piece (raised again
                by :meth:`digests`), so a caller stops early.
        """
        self._raise_earlier_failure()
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.piece_bytes - self._filled)
            self._current.append(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self.piece_bytes:
                self._submit()

    def digests(self) -> list[str]:
        """The SHA-256 of each piece, in order, once every piece is hashed.

        Raises:
            BaseException: the error a hashing thread met, if any.
        """
        if self._closed:
            raise RuntimeError("digests() after close(): pieces may have been dropped")
        if self._current:  # the last, shorter piece
            self._submit()
        return [future.result() for future in self._futures]

    def close(self) -> None:
        """Drop the pieces not yet hashed and wait for those being hashed. Idempotent."""
        self._closed = True
        for future in self._futures:
            future.cancel()
        futures.wait(self._futures)

    def _submit(self) -> None:
        segments, self._current, self._filled = self._current, [], 0
        slots = self._slots
        if slots is not None:
            slots.acquire()
        future = HASH_POOL.get().submit(sha256_hex, segments)
        if slots is not None:  # also runs when the future is cancelled
            future.add_done_callback(lambda _: slots.release())
        self._futures.append(future)

    def _raise_earlier_failure(self) -> None:
        while self._checked < len(self._futures) and self._futures[self._checked].done():
            future = self._futures[self._checked]
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
            self._checked += 1

# Below this many bytes, a load hashes inline: handing pieces to a thread costs more than it
# saves (a save has its own, lower, threshold: writer._HASH_THREAD_MIN).
HASH_THREAD_MIN = 8 * 1024 * 1024


class PieceHasher:
    """SHA-256 of pieces given in order, hashed inline or by a thread of its own.

    A piece given to :meth:`update` must stay unchanged until :meth:`hexdigest` or
    :meth:`close` returns (the thread may hash it later). Use as a context manager, or call
    :meth:`close` in a ``finally``: the thread is always joined.

    Args:
        threaded: hash in a second thread (see :meth:`for_size`).
        max_pending: in threaded mode, how many pieces may wait for the thread before
            :meth:`update` blocks (``None``: no bound). Bound it when every piece is a fresh
            allocation, so memory stays bounded if the caller outruns the hash.
    """

    def __init__(self, threaded: bool, max_pending: int | None = None) -> None:
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._cancelled = False
        self._pieces: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._pieces = queue.Queue(maxsize=max_pending or 0)
            # A daemon, so that a caller that never reaches close() (a bug) cannot hang the
            # interpreter's exit; close() joins it in every normal path.
            self._thread = threading.Thread(target=self._run, name="ckptlab-sha256",
                                            daemon=True)
            self._thread.start()

    @classmethod
    def for_size(cls, nbytes: int, max_pending: int | None = None) -> PieceHasher:
        """A hasher for ``nbytes`` bytes: threaded from :data:`HASH_THREAD_MIN` bytes on."""
        return cls(threaded=nbytes >= HASH_THREAD_MIN, max_pending=max_pending)

    @property
    def threaded(self) -> bool:
        return self._pieces is not None

    def __enter__(self) -> PieceHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, piece: bytes | memoryview) -> None:
        """Hash ``piece`` next (inline, or queued for the thread).

        Raises:
            BaseException: whatever the thread's hash raised on an earlier piece (raised
                again by :meth:`hexdigest` as well), so a caller stops early.
        """
        if self._pieces is None:
            self._hash.update(piece)
            return
        if self._error is not None:
            raise self._error
        self._pieces.put(piece)

    def close(self) -> None:
        """Stop the thread (pieces not yet hashed are dropped) and join it. Idempotent."""
        self._cancelled = True
        self._join()

    def hexdigest(self) -> str:
        """The SHA-256 of every piece given, once the thread hashed them all.

        Raises:
            BaseException: the error the thread met while hashing, if any.
        """
        if self._cancelled:
            raise RuntimeError("hexdigest() after close(): pieces may have been dropped")
        self._join()
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def _join(self) -> None:
        if self._thread is not None:
            assert self._pieces is not None
            self._pieces.put(None)  # never blocks for long: the thread drains until None
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert self._pieces is not None
        # Consume every piece until the end marker, even after a failure or close(), so that
        # a producer blocked on a bounded queue is always released.
        while (piece := self._pieces.get()) is not None:
            if self._error is not None or self._cancelled:
                continue
            try:
                self._hash.update(piece)
            except BaseException as exc:  # re-raised by update() and hexdigest()
                self._error = exc
