"""The object-store interface the checkpoint protocol of :mod:`.remote` is written against.

Object stores have no rename, no directory and no fsync. What they do have, and all that
ckptlab's protocol needs, is:

* **put-if-absent** (S3 ``If-None-Match: *``): creates an object only if none has its key;
  the commit of a checkpoint and the first holder of a lease.
* **put with compare-and-swap** (S3 ``If-Match: <ETag>``): replaces an object only if it is
  still the version the writer read; the ``latest`` and ``best`` pointers and the lease move
  this way, so a lost race is detected instead of overwritten.
* **upload** of a large object in parts (S3 multipart), which no reader sees until it is
  complete; **copy** of an object inside the store (a rollback keeps what it moves aside);
* **get** with a byte bound, and **open** for streaming reads (hashed as the bytes arrive);
* **list** of a prefix, page by page; **delete**.

The S3 implementation is :class:`.s3store.S3Store` (boto3, the ``s3`` extra). Errors are
raised as the exceptions below, so the protocol never sees a client library's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from .errors import CkptlabError


class ObjectNotFound(CkptlabError):
    """No object has the key (or the bucket does not exist)."""


class PreconditionFailed(CkptlabError):
    """A conditional write lost: the object exists (put-if-absent) or changed (CAS)."""


class ObjectTooLarge(CkptlabError):
    """An object is larger than the bound its reader allows; nothing of it was read."""


class StoreError(CkptlabError):
    """The store refused or could not be reached (credentials, permissions, network)."""


@dataclass(frozen=True)
class ObjectMeta:
    """What a listing, a head or a read tells about one object."""

    key: str
    size: int
    etag: str
    last_modified: float | None = None  # seconds since the epoch, by the server's clock


@dataclass(frozen=True)
class ObjectRead:
    """A whole (small) object, read within a bound."""

    data: bytes
    etag: str
    last_modified: float | None
    server_time: float | None  # the server's clock when it answered (the ``Date`` header)


class ObjectStream(Protocol):
    """An object being downloaded: ``readinto`` fills a buffer with the next bytes."""

    size: int
    etag: str

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class ObjectStore(Protocol):
    """One bucket of an object store."""

    scheme: str
    bucket: str
    endpoint: str | None

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> str:
        """Write a small object; returns its ETag.

        Raises:
            PreconditionFailed: ``if_absent`` and the key exists, or ``if_match`` and the
                object's ETag differs (or it is gone).
        """
        ...

    def upload(self, key: str, views: Sequence[memoryview],
               on_part: Callable[[int], None] | None = None) -> str:
        """Write the bytes of ``views`` (in order) as one object, in parallel parts when
        large; no reader sees a partial object. Returns the ETag. ``on_part(number)`` is
        called as each part is stored, a small object being one part (crash tests kill
        there)."""
        ...

    def copy(self, source: str, key: str) -> str:
        """Copy the object ``source`` to ``key`` inside the store (no byte passes through
        this client), however large it is; returns the new object's ETag.

        Raises:
            ObjectNotFound: ``source`` does not exist.
        """
        ...

    def get(self, key: str, max_bytes: int) -> ObjectRead:
        """Read a whole object of at most ``max_bytes``.

        Raises:
            ObjectNotFound: no such object.
            ObjectTooLarge: it is larger than ``max_bytes`` (nothing was read).
        """
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""
        ...

    def open(self, key: str) -> ObjectStream:
        """Start downloading an object (its size is known before any byte is read)."""
        ...

    def head(self, key: str) -> ObjectMeta | None:
        """The object's metadata, or ``None`` when there is none."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectMeta]:
        """Every object whose key starts with ``prefix``, in key order, page by page."""
        ...

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """The distinct ``prefix + name + "/"`` one level below ``prefix``."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects (missing ones are no error)."""
        ...


def read_exactly(stream: ObjectStream | BinaryIO, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream`` until full or the stream ends; returns bytes read."""
    done = 0
    while done < len(buffer):
        got = stream.readinto(buffer[done:])
        if not got:
            break
        done += got
    return done
