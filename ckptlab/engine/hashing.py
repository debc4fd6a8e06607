"""SHA-256 of a file's bytes as they stream through a save or a load, pipelined when large.

A checkpoint's files are hashed from the very buffers that are written (save) or read (load).
For a large file the hash is the slowest step (SHA-256 runs at about 1 GB/s on one core; the
page cache copies several times faster), so :class:`PieceHasher` hashes the pieces in a second
thread while the caller writes or reads the next one. Both hashlib and file I/O release the
GIL, so the two threads really overlap. The digest is the same as hashing inline: the pieces
are hashed one at a time, in the order they were given.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any

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
