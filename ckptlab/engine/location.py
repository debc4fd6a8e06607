"""Where checkpoints live: a local path, or a location in an object store (``s3://``).

Every entry point that takes a location (``CheckpointManager``, the reader functions, the
DQN Trainer, the command line) asks :func:`store_location` first. A URL is never taken for a
local path: ``s3://bucket/prefix`` becomes a :class:`StorePath` bound to an S3 client, a URL
of any other scheme is refused with the schemes ckptlab supports, and a ``Path`` that is a URL
whose ``//`` was lost (``Path("s3://b/run")`` is ``s3:/b/run``) is refused too, instead of
becoming a folder named ``s3:`` in the working directory.

The S3 client (boto3) is the ``s3`` extra; it is imported only when an ``s3://`` location is
used, so the engine alone (``pip install -c requirements.txt .``) needs no cloud library.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Union

from .errors import CkptlabError, MissingExtraError

if TYPE_CHECKING:
    from .objectstore import ObjectStore

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://(.*)$", re.DOTALL)
# Schemes people give to storage tools. A Path whose first part is one of these followed by a
# colon ("s3:") is a URL that went through Path() and lost its "//".
_KNOWN_SCHEMES = frozenset({
    "s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "adl", "wasb", "wasbs", "hdfs",
    "http", "https", "ftp", "sftp", "file", "oss", "cos", "r2", "minio", "hf", "webdav"})
SUPPORTED_SCHEMES = ("s3",)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# The s3 extra: the command that installs it, run in the top folder of a clone of ckptlab's
# repository (the pins are in requirements.txt), as ckptlab.install_command says it.
S3_EXTRA_INSTALL = 'pip install -c requirements.txt ".[s3]"'


class StorePath:
    """A location in an object store, ``s3://bucket/some/prefix``, used where a local
    checkpoint path would be: ``/`` joins, ``.name`` and ``.parent`` work like a path's.

    It is not an ``os.PathLike`` on purpose: a function that would open it as a local file
    fails instead of writing beside the working directory. Every path derived from one shares
    its store (and so its client and connection pool).
    """

    __slots__ = ("store", "key")

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.key = key.strip("/")

    # -- path-like ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        return StorePath(self.store, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    def __truediv__(self, part: str) -> StorePath:
        part = str(part).strip("/")
        return StorePath(self.store, f"{self.key}/{part}" if self.key else part)

    def resolve(self) -> StorePath:
        """Itself: a store location has no links to resolve (code comparing resolved
        locations works for both kinds)."""
        return self

    def relative_to(self, other: StorePath) -> str:
        if not (self.key == other.key or self.key.startswith(other.key + "/") or not other.key):
            raise ValueError(f"{self} is not under {other}")
        return self.key[len(other.key):].strip("/") or "."

    @property
    def url(self) -> str:
        return f"{self.store.scheme}://{self.store.bucket}/{self.key}".rstrip("/")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StorePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, StorePath) and other.url == self.url
                and other.store.endpoint == self.store.endpoint)

    def __hash__(self) -> int:
        return hash(self.url)


Location = Union[Path, StorePath]


def _mangled_url(path: PurePath) -> str | None:
    """The scheme of a URL that went through ``Path()`` (``s3:/bucket/run``), else ``None``."""
    parts = path.parts
    if not parts or path.is_absolute():
        return None
    first = parts[0]
    if first.endswith(":") and first[:-1].lower() in _KNOWN_SCHEMES:
        return first[:-1].lower()
    return None


def store_location(location: Any) -> StorePath | None:
    """The object-store location ``location`` names, or ``None`` for a local path.

    Raises:
        CkptlabError: a URL of a scheme ckptlab does not support, a malformed ``s3://`` URL,
            or a local path that is a URL mangled by ``Path()``.
        MissingExtraError: an ``s3://`` URL without the ``s3`` extra installed.
    """
    if isinstance(location, StorePath):
        return location
    if isinstance(location, PurePath):
        scheme = _mangled_url(location)
        if scheme is not None:
            raise CkptlabError(
                f"{str(location)!r} looks like a {scheme}:// URL that lost its '//' when it "
                f"was turned into a path; pass the location as a string ('{scheme}://...'), "
                "never through pathlib.Path (nothing was written)")
        return None
    if not isinstance(location, str):
        return None
    match = _URL.match(location)
    if match is None:
        scheme = _mangled_url(PurePath(location)) if location else None
        if scheme is not None and location.startswith(f"{scheme}:/"):
            raise CkptlabError(f"{location!r} is not a valid URL: write {scheme}://bucket/prefix")
        return None
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SUPPORTED_SCHEMES:
        hint = (" (for a local path, give the path itself)" if scheme == "file" else
                "; Google Cloud Storage, Cloudflare R2, MinIO, Ceph and other stores with an "
                "S3-compatible API work as s3:// with AWS_ENDPOINT_URL set to their endpoint"
                if scheme in ("gs", "gcs", "r2", "minio", "oss", "cos") else "")
        raise CkptlabError(
            f"ckptlab cannot store checkpoints at {scheme}:// locations ({location!r}): it "
            f"supports local paths and s3:// (S3 and S3-compatible stores, with the 's3' "
            f"extra: {S3_EXTRA_INSTALL}){hint}. Nothing was written")
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise CkptlabError(f"{location!r}: {bucket!r} is not an S3 bucket name (3-63 "
                           "lower-case letters, digits, dots and hyphens)")
    key = key.strip("/")
    if any(part in ("", ".", "..") for part in key.split("/")) and key:
        raise CkptlabError(f"{location!r}: the prefix may not contain empty, '.' or '..' parts")
    return StorePath(open_s3_store(bucket), key)


def open_s3_store(bucket: str) -> ObjectStore:
    """An S3 store for ``bucket``, configured from the standard AWS environment and files.

    Raises:
        MissingExtraError: boto3 (the ``s3`` extra) is not installed.
    """
    try:
        from .s3store import S3Store
    except ModuleNotFoundError as exc:
        missing = (exc.name or "boto3").split(".")[0]
        if missing == "ckptlab":
            raise
        raise MissingExtraError(
            f"s3:// locations need {missing}, which is not installed: install the 's3' extra "
            "(boto3) by running, in the top folder of a clone of ckptlab's repository (see the "
            f"README): {S3_EXTRA_INSTALL}", name=missing) from None
    return S3Store(bucket)


def as_location(location: str | os.PathLike[str] | StorePath) -> Location:
    """``location`` as a :class:`StorePath` (a URL) or a local :class:`~pathlib.Path`."""
    remote = store_location(location)
    return remote if remote is not None else Path(location)  # type: ignore[arg-type]


def location_name(location: Any) -> str:
    """The last part of a local path or a store location (``step_00001000``)."""
    if isinstance(location, StorePath):
        return location.name
    return Path(location).name


# --------------------------------------------------------------------------------------------
# The object-store protocol, plugged in from above
# --------------------------------------------------------------------------------------------
# The generic entry points (format.read_manifest, the reader's functions, CheckpointManager)
# live below the object-store protocol (remote.py), which builds on them. Instead of importing
# it upward, they ask for it here; remote.py registers itself when the engine package is
# imported (ckptlab/engine/__init__.py imports it), so no module imports one above it.
_store_protocol: Any = None


def register_store_protocol(protocol: Any) -> None:
    """Plug in the object-store protocol (:mod:`ckptlab.engine.remote` does, on import)."""
    global _store_protocol
    _store_protocol = protocol


def store_protocol() -> Any:
    """The object-store protocol (the :mod:`ckptlab.engine.remote` module) for a store
    location; it is registered whenever ``ckptlab.engine`` has been imported."""
    if _store_protocol is None:
        raise CkptlabError("the object-store protocol is not loaded (import ckptlab.engine)")
    return _store_protocol
