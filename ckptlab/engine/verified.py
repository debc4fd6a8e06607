"""Reading one manifest-listed file of a checkpoint: hardened open, hashed as it is read.

Every byte any ckptlab reader takes from a checkpoint comes through here: the name must be one
the format allows (never a path that leaves the checkpoint), the file a regular file (no
symlink, FIFO or device) of the size the manifest records, within a bound for its kind, and
its SHA-256 (or per-piece SHA-256s) is computed from the very bytes that are read and compared
with the manifest. :mod:`.reader`, :mod:`.sharded` and :mod:`.dcp_storage` build on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointCorruptError
from .format import open_member
from .hashing import PieceDigests, PieceHasher
from .location import store_protocol

# Bytes read and hashed per system call: large enough that the per-call cost vanishes, small
# enough that the hash reads them back from the CPU cache soon after the read wrote them.
_CHUNK = 4 * 1024 * 1024
# Pieces read ahead of the hashing thread before a read waits for it: keeps the pieces hot in
# the cache and bounds the scratch memory of skip(), which hands the thread fresh buffers.
READ_AHEAD = 4


def open_listed_file(checkpoint: Path, name: str, entry: Mapping[str, Any]) -> BinaryIO:
    """Open the manifest-listed file ``name`` of ``checkpoint`` for reading.

    Every data file of a checkpoint is opened here and nowhere else, so the rules for what
    may be opened (a regular file inside the checkpoint, of the recorded size) live in one
    place.
    """
    # format.open_member: a name the format allows, a regular file (no symlink, FIFO or
    # device) of the recorded size, within a bound; otherwise a CheckpointCorruptError.
    return open_member(checkpoint, name, entry.get("bytes"))  # type: ignore[arg-type]


class VerifiedFile:
    """One manifest-listed file, read front to back exactly once and hashed as it is read.

    Whatever consumes the bytes (a JSON parse, the tensor decoder) sees them before the hash
    is known, so nothing read here may reach a component before :meth:`finish` has compared
    the SHA-256 with the manifest. A large file is hashed by a second thread while the next
    piece is read (:class:`.hashing.PieceHasher`): a buffer given to :meth:`readinto` must
    not be changed before :meth:`finish` (the thread may not have hashed it yet), and
    :meth:`close` always joins the thread.
    """

    def __init__(self, checkpoint: Path, manifest: Mapping[str, Any], name: str) -> None:
        entry = manifest.get("files", {}).get(name)
        self.path = checkpoint / name
        if not isinstance(entry, Mapping):
            raise CheckpointCorruptError(f"{checkpoint}: manifest does not list {name}")
        # Either one SHA-256 of the whole file or, from format 3 on for large files, one per
        # piece (format.validate_manifest has checked the entry's shape).
        self.expected_sha256 = entry.get("sha256")
        self.expected_pieces = entry.get("sha256_pieces")
        self.size = entry.get("bytes")
        if type(self.size) is not int or self.size < 0:
            raise CheckpointCorruptError(f"{checkpoint}: manifest records no valid size "
                                         f"for {name}")
        self._file = open_listed_file(checkpoint, name, entry)
        self._position = 0
        try:
            actual = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            self._file.close()
            raise CheckpointCorruptError(f"{self.path} cannot be read ({exc})") from None
        if actual != self.size:
            self._file.close()
            raise CheckpointCorruptError(
                f"{self.path} has {actual} bytes but the manifest records {self.size} "
                "(truncated or overwritten)")
        # Started last: nothing above can leave its thread running.
        try:
            self._hash: PieceHasher | PieceDigests = (
                PieceHasher.for_size(self.size, max_pending=READ_AHEAD)
                if self.expected_pieces is None
                else PieceDigests(self.expected_pieces["piece_bytes"], max_pending=READ_AHEAD))
        except BaseException:  # no thread could be started: the file must not stay open
            self._file.close()
            raise

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._hash.close()
        finally:
            self._file.close()

    def readinto(self, buffer: memoryview) -> None:
        """Fill ``buffer`` with the next bytes of the file, hashing them."""
        buffer = buffer.cast("B")
        if self._position + len(buffer) > self.size:
            raise ValueError("read past the recorded size")
        done = 0
        while done < len(buffer):
            piece = buffer[done:done + _CHUNK]
            try:
                got = self._file.readinto(piece)
            except OSError as exc:
                raise CheckpointCorruptError(f"{self.path} cannot be read ({exc})") from None
            if not got:  # shrank since it was opened
                raise CheckpointCorruptError(f"{self.path} ended early (truncated while "
                                             "being read)")
            self._hash.update(piece[:got])
            done += got
        self._position += done

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the file, hashed."""
        buffer = bytearray(n)
        self.readinto(memoryview(buffer))
        return bytes(buffer)

    def skip(self, n: int) -> None:
        """Pass over the next ``n`` bytes: hashed, not kept."""
        scratch = None
        while n:
            step = min(n, _CHUNK)
            # The hashing thread may still be reading the previous piece: never overwrite it.
            if scratch is None or self._hash.threaded:
                scratch = memoryview(bytearray(step))
            self.readinto(scratch[:step])
            n -= step

    def finish(self) -> None:
        """Hash whatever was not read, then compare with the manifest.

        Raises:
            CheckpointCorruptError: the SHA-256 differs from the manifest's.
        """
        self.skip(self.size - self._position)
        if isinstance(self._hash, PieceHasher):
            if self._hash.hexdigest() != self.expected_sha256:
                raise CheckpointCorruptError(f"{self.path}: SHA-256 does not match the "
                                             "manifest (the file is corrupted)")
            return
        piece_bytes, recorded = self.expected_pieces["piece_bytes"], \
            self.expected_pieces["digests"]
        digests = self._hash.digests()
        if len(digests) != len(recorded):  # validate_manifest rules it out; never zip short
            raise CheckpointCorruptError(f"{self.path}: the manifest records {len(recorded)} "
                                         f"piece digests for {len(digests)} pieces")
        for index, (actual, expected) in enumerate(zip(digests, recorded)):
            if actual != expected:
                start = index * piece_bytes
                end = min(start + piece_bytes, self.size)
                raise CheckpointCorruptError(
                    f"{self.path}: the SHA-256 of bytes {start}-{end - 1} (piece {index}) does "
                    "not match the manifest (the file is corrupted)")


def open_verified(checkpoint: Any, manifest: Mapping[str, Any], name: str) -> VerifiedFile:
    """A :class:`VerifiedFile` of ``checkpoint``'s listed file ``name``: on a local disk, or
    (``checkpoint`` a store location) an object downloaded and hashed as it arrives."""
    if isinstance(checkpoint, Path):
        return VerifiedFile(checkpoint, manifest, name)
    return store_protocol().VerifiedObject(checkpoint, manifest, name)  # [object store]


def read_verified(checkpoint: Path, manifest: Mapping[str, Any], name: str) -> bytes:
    """The whole content of a (small) manifest-listed file, verified."""
    with open_verified(checkpoint, manifest, name) as file:
        data = file.read(file.size)
        file.finish()
    return data


def verify_file(checkpoint: Path, manifest: Mapping[str, Any], name: str) -> None:
    with open_verified(checkpoint, manifest, name) as file:
        file.finish()
