"""Checkpoints on an object store (``s3://``): the commit, lease, pointer and retention
protocol where there is no rename.

A checkpoints "directory" ``s3://bucket/run/checkpoints`` holds::

    step_00003000/manifest.json          THE COMMIT: created once, create-only (If-None-Match)
    .data/step_00003000-<tag>/...        that save's data objects (tensors.safetensors,
                                         state.json), under a fresh prefix per save attempt
    latest, best                         pointers, moved by compare-and-swap (If-Match ETag)
    .writer-lease                        one writer per run: create-only, renewed by CAS
    decisions/<time>-<tag>.jsonl         the decision log, one object per append
    abandoned/<time>-after-step_N/       checkpoints a rollback kept: copies, committed there

**Save.** The data objects are uploaded first (in parallel parts when large: S3 shows no
object of an unfinished multipart upload), hashed from the very buffers that are uploaded.
Then the writer renews its lease by CAS (a writer whose lease lapsed and was taken over
stops here) and creates ``step_N/manifest.json`` with put-if-absent: the one moment the
checkpoint exists. No reader lists anything else: a checkpoint without its manifest object
does not exist. A lost create (another writer committed the same step) is a
:class:`CommitConflictError`, never an overwrite. ``latest`` and ``best`` then move by CAS
on the ETag this writer last saw; a pointer changed by someone else is a
:class:`CommitConflictError` too. As on disk, no reader trusts a pointer to choose what to
resume: resume lists the commits and verifies newest first.

**Retention** uncommits first (deletes the manifest objects), then deletes the data. A crash
in between leaves data without a commit: garbage that no reader sees and that the next
writer removes (:meth:`RemoteCheckpointManager.remove_leftovers`), never a half-checkpoint
that verifies.

**Rollback** copies each newer checkpoint into ``abandoned/`` (data, then its commit) before
it uncommits the original, oldest first, behind the lease's fence
(:meth:`RemoteCheckpointManager.rollback`).

**Reading** is the local reader's: the manifest object is read with a bound, checked
against its self-hash and type-checked; every data object's size is checked before its first
byte is read (the object's length must equal the manifest's record, within the format's
bound) and its SHA-256 computed from the bytes as they arrive, in the same pass that
decodes them (:class:`VerifiedObject`). The manifest names its data prefix; a prefix that is
not ``.data/<this checkpoint>-<16 hex digits>`` is refused, so a hostile bucket cannot make a
reader fetch anything outside the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .errors import CheckpointCorruptError, CheckpointNotFoundError, CkptlabError
from .faults import fault_point
from .format import (
    ABANDONED_SUBDIR,
    CHECKPOINTS_SUBDIR,
    FORMAT_NAME,
    LATEST,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SAFETENSORS_HEADER,
    SHARDED_KEY,
    STATE,
    STEP_DIR_PATTERN,
    TENSORS,
    canonical_json,
    checkpoint_dir_name,
    is_member_name,
    load_json_bounded,
    manifest_from_bytes,
    member_bound,
    safetensors_chunks,
    tensor_nbytes,
    tensor_table_from_header,
)
from .hashing import HASH_POOL, PIECE_BYTES, PIECEWISE_MIN, PieceDigests, sha256_hex
from .location import StorePath, register_store_protocol
from .lock import RunLockedError
from .manager import CheckpointManager, SaveTimings, Snapshot
from .objectstore import (
    ObjectNotFound,
    ObjectRead,
    ObjectTooLarge,
    PreconditionFailed,
    StoreError,
)
from .policies import CheckpointRecord
from .reader import CheckpointInfo, verify_checkpoint
from .verified import READ_AHEAD, VerifiedFile
from .writer import CheckpointWriteError, flat_views

DATA_DIR = ".data"
LEASE = ".writer-lease"
DECISIONS_DIR = "decisions"
# The manifest field that names a checkpoint's data prefix (".data/step_N-<tag>").
DATA_FIELD = "object_data"
_DATA_PREFIX = re.compile(r"^\.data/(step_\d{8,})-([0-9a-f]{16})$")
_COMMIT_KEY = re.compile(r"^(step_(\d{8,}))/manifest\.json$")
_POINTER_MAX = 64 * 1024
_LEASE_MAX = 64 * 1024
_DECISIONS_MAX = 16 * 1024 * 1024
# How long a writer's lease lasts without renewal; the writer renews it every third of that.
LEASE_SECONDS_ENV = "CKPTLAB_S3_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0
# From this size a data object is hashed in another thread while it uploads.
_HASH_THREAD_MIN = 1024 * 1024


class CommitConflictError(CkptlabError):
    """Another writer committed the same checkpoint, or moved a pointer, at the same time:
    this writer lost a conditional write and overwrote nothing."""


class LeaseLostError(RunLockedError):
    """This writer's lease lapsed and another writer took the run over: it stops before
    committing anything."""


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _key(location: StorePath, *parts: str) -> str:
    return _join(location.key, *parts)


def lease_seconds() -> float:
    """The lease duration: ``CKPTLAB_S3_LEASE_SECONDS`` (2 to 86400), else 60."""
    raw = os.environ.get(LEASE_SECONDS_ENV)
    if raw is None:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise CkptlabError(f"{LEASE_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if not 2 <= value <= 86400:
        raise CkptlabError(f"{LEASE_SECONDS_ENV} must be from 2 to 86400 seconds (got {value})")
    return value


# --------------------------------------------------------------------------------------------
# Reading: listing, manifests, verified objects, pointers, the decision log
# --------------------------------------------------------------------------------------------

def remote_committed_steps(directory: StorePath) -> list[tuple[int, str]]:
    """``(step, name)`` of each committed checkpoint (each commit object), oldest first."""
    prefix = _key(directory, "step_")
    start = len(_key(directory)) + 1 if directory.key else 0
    found = []
    for meta in directory.store.list(prefix):
        match = _COMMIT_KEY.match(meta.key[start:])
        if match:
            found.append((int(match.group(2)), match.group(1)))
    return sorted(found)


def data_prefix(checkpoint: StorePath, manifest: Mapping[str, Any]) -> str:
    """The key prefix of a checkpoint's data objects, as its manifest names it.

    Raises:
        CheckpointCorruptError: the manifest names no prefix, or one that is not this
            checkpoint's own (``.data/<name>-<16 hex>``).
    """
    field = manifest.get(DATA_FIELD)
    match = _DATA_PREFIX.match(field) if isinstance(field, str) else None
    if match is None or match.group(1) != checkpoint.name:
        raise CheckpointCorruptError(
            f"{checkpoint}: the manifest's {DATA_FIELD!r} ({str(field)[:80]!r}) does not name "
            f"this checkpoint's data (.data/{checkpoint.name}-<tag>); the manifest is damaged "
            "or was not written for an object store")
    return _key(checkpoint.parent, field)


def read_remote_manifest(checkpoint: StorePath) -> dict[str, Any]:
    """The validated manifest (the commit object) of a checkpoint in an object store.

    Raises:
        CheckpointNotFoundError: no commit object: the checkpoint does not exist.
        CheckpointCorruptError, ForeignFileError, UnsupportedFormatError: as for a local
            manifest, plus a data prefix that is not this checkpoint's.
    """
    where = f"{checkpoint}/{MANIFEST}"
    try:
        read = checkpoint.store.get(_key(checkpoint, MANIFEST), MAX_MANIFEST_BYTES)
    except ObjectNotFound:
        raise CheckpointNotFoundError(f"{checkpoint} does not exist (no commit object "
                                      f"{MANIFEST}); check the location") from None
    except ObjectTooLarge:
        raise CheckpointCorruptError(f"{where}: manifest is implausibly large") from None
    manifest = manifest_from_bytes(read.data, where, checkpoint)
    data_prefix(checkpoint, manifest)
    return manifest


def _member_key(checkpoint: StorePath, manifest: Mapping[str, Any], name: str) -> str:
    if not (is_member_name(name, sharded=False) or is_member_name(name, sharded=True)):
        raise CheckpointCorruptError(f"{checkpoint}: the manifest names {name!r}, which is not "
                                     "a checkpoint file")
    return _join(data_prefix(checkpoint, manifest), name)


class VerifiedObject(VerifiedFile):
    """A manifest-listed data object, downloaded front to back once and hashed as its bytes
    arrive (the same reading, decoding and checking as :class:`.verified.VerifiedFile`).

    Its length is compared with the manifest's record, and with the bound for its kind,
    before any byte is read.
    """

    def __init__(self, checkpoint: StorePath, manifest: Mapping[str, Any], name: str) -> None:
        entry = manifest.get("files", {}).get(name)
        self.path = f"{checkpoint}/{name}"  # type: ignore[assignment]  (for messages)
        if not isinstance(entry, Mapping):
            raise CheckpointCorruptError(f"{checkpoint}: manifest does not list {name}")
        self.expected_sha256 = entry.get("sha256")
        self.expected_pieces = entry.get("sha256_pieces")
        self.size = entry.get("bytes")
        if type(self.size) is not int or not 0 <= self.size <= member_bound(name):
            raise CheckpointCorruptError(f"{checkpoint}: the manifest records an impossible "
                                         f"size for {name} ({self.size!r})")
        key = _member_key(checkpoint, manifest, name)
        try:
            stream = checkpoint.store.open(key)
        except ObjectNotFound:
            raise CheckpointCorruptError(f"{self.path} is missing (its data object {key} "
                                         "does not exist)") from None
        if stream.size != self.size:
            stream.close()
            raise CheckpointCorruptError(
                f"{self.path} has {stream.size} bytes but the manifest records {self.size} "
                "(truncated or overwritten)")
        self._file = stream  # type: ignore[assignment]
        self._position = 0
        try:
            from .hashing import PieceHasher

            self._hash = (PieceHasher.for_size(self.size, max_pending=READ_AHEAD)
                          if self.expected_pieces is None
                          else PieceDigests(self.expected_pieces["piece_bytes"],
                                            max_pending=READ_AHEAD))
        except BaseException:
            stream.close()
            raise


def read_remote_tensor_table(path: StorePath) -> dict[str, dict[str, Any]]:
    """:func:`.format.read_tensor_table` of a checkpoint's tensor object: two bounded range
    reads (the length, then the header), never the data."""
    checkpoint = path.parent
    manifest = read_remote_manifest(checkpoint)
    key = _member_key(checkpoint, manifest, path.name)
    size = int(manifest["files"][path.name]["bytes"])
    try:
        prefix = checkpoint.store.get_range(key, 0, 8)
        if len(prefix) < 8:
            raise CheckpointCorruptError(f"{path}: too short for a safetensors header")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise CheckpointCorruptError(f"{path}: header length {length} does not fit the "
                                         f"file ({size} bytes)")
        header = load_json_bounded(checkpoint.store.get_range(key, 8, length),
                                    f"{path}: header")
    except ObjectNotFound:
        raise CheckpointCorruptError(f"{path} is missing") from None
    return tensor_table_from_header(header, path)


def check_remote_shard_layout(checkpoint: StorePath, manifest: Mapping[str, Any]) -> None:
    """A sharded checkpoint in an object store: every rank's part must be listed (the
    objects themselves are then verified one by one)."""
    section = manifest[SHARDED_KEY]
    files = manifest["files"]
    missing = [f"rank_{r:05d}" for r in range(section["world_size"])
               if f"rank_{r:05d}/{STATE}" not in files]
    if missing:
        raise CheckpointCorruptError(f"{checkpoint}: the manifest lists no part of "
                                     f"{', '.join(missing[:5])}")


def _pointer_from(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str) \
            or not STEP_DIR_PATTERN.match(record["checkpoint"]):
        return None
    return record


def read_remote_pointer(directory: StorePath, name: str) -> tuple[dict[str, Any] | None,
                                                                    str | None]:
    """``(record, etag)`` of a pointer object; the record is ``None`` when it is missing or
    damaged (too large, not JSON, naming anything but a checkpoint), the ETag ``None`` when
    there is no object."""
    try:
        read = directory.store.get(_key(directory, name), _POINTER_MAX)
    except ObjectNotFound:
        return None, None
    except ObjectTooLarge:
        meta = directory.store.head(_key(directory, name))
        return None, meta.etag if meta is not None else None
    return _pointer_from(read.data), read.etag


def read_remote_decision_log(directory: StorePath) -> list[dict[str, Any]]:
    """Every event of the run's decision log (one object per append, in time order). As on
    disk, a damaged line or object is skipped: the log is a record, not a dependency."""
    keys = [meta.key for meta in directory.store.list(_key(directory, DECISIONS_DIR) + "/")]

    def fetch(key: str) -> bytes:
        try:
            return directory.store.get(key, _DECISIONS_MAX).data
        except (ObjectNotFound, ObjectTooLarge):
            return b""

    with ThreadPoolExecutor(8, thread_name_prefix="ckptlab-log") as pool:
        contents = list(pool.map(fetch, sorted(keys)))
    events = []
    for data in contents:
        for line in data.splitlines():
            try:
                event = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def resolve_remote_location(location: StorePath) -> tuple[
        StorePath, StorePath | None, list[tuple[int, str]] | None]:
    """:func:`.reader.resolve_location` for a store location (a run prefix with
    ``checkpoints/``, a checkpoints prefix, one checkpoint, its ``manifest.json``, or a
    ``latest`` pointer), plus the committed ``(step, name)`` pairs when finding the directory
    listed them (``None`` otherwise): a reader about to pick the newest valid checkpoint need
    not list the prefix again (each listing is a round trip)."""
    if location.name == MANIFEST:
        return location.parent.parent, location.parent, None
    if location.name == LATEST:
        return location.parent, None, None
    if STEP_DIR_PATTERN.match(location.name):
        if location.store.head(_key(location, MANIFEST)) is None:
            raise CheckpointNotFoundError(f"{location} does not exist (no commit object "
                                          f"{MANIFEST})")
        return location.parent, location, None
    own = location / CHECKPOINTS_SUBDIR
    for directory in (own, location):
        steps = remote_committed_steps(directory)
        if steps:
            return directory, None, steps
    raise CheckpointNotFoundError(f"{location} contains no ckptlab checkpoints")


_CATALOG_KEY = re.compile(r"^(?:(.*)/)?(step_\d{8,})/manifest\.json$")


def remote_catalog_rows(root: StorePath, verify: bool) -> list[tuple[Any, ...]]:
    """The rows of :class:`.catalog.Catalog` for every checkpoint under ``root``: one
    paginated listing finds the commit objects and every data object's size, so without
    ``verify`` a checkpoint costs one read (its manifest)."""
    sizes: dict[str, int] = {}
    commits: list[tuple[str, str]] = []
    base = _key(root)
    start = len(base) + 1 if base else 0
    for meta in root.store.list(base + "/" if base else ""):
        sizes[meta.key] = meta.size
        match = _CATALOG_KEY.match(meta.key[start:])
        if match:
            commits.append((match.group(1) or "", match.group(2)))
    rows = []
    for folder, name in sorted(commits):
        checkpoint = StorePath(root.store, _join(base, folder, name))
        rel = _join(folder, name)
        run_key = folder.rsplit("/", 1)[0] if folder.rsplit("/", 1)[-1] == CHECKPOINTS_SUBDIR \
            and "/" in folder else ("." if folder == CHECKPOINTS_SUBDIR else folder or ".")
        try:
            manifest = read_remote_manifest(checkpoint)
        except CkptlabError as exc:
            rows.append((rel, run_key, None, None, None, f"invalid: {exc}", None, None, None,
                         "{}"))
            continue
        status = "valid"
        try:
            if verify:
                verify_checkpoint(checkpoint)
            else:
                prefix = data_prefix(checkpoint, manifest)
                for member, entry in manifest["files"].items():
                    size = sizes.get(_join(prefix, member))
                    if size != entry["bytes"]:
                        raise CheckpointCorruptError(
                            f"{member} has {'no object' if size is None else f'{size} bytes'}"
                            f", manifest says {entry['bytes']}")
        except CkptlabError as exc:
            status = f"invalid: {exc}"
        lineage = manifest.get("lineage") or {}
        parent_record = lineage.get("parent")
        parent = parent_record.get("path") if isinstance(parent_record, dict) else None
        config = manifest.get("config")
        rows.append((rel, run_key, manifest.get("step"), manifest.get("created"),
                     sum(int(f["bytes"]) for f in manifest["files"].values()), status,
                     json.dumps(config) if config is not None else None,
                     manifest.get("config_sha256"), str(parent) if parent is not None else None,
                     json.dumps(manifest.get("metrics") or {})))
    return rows


# --------------------------------------------------------------------------------------------
# The writer's lease
# --------------------------------------------------------------------------------------------

class StoreLease:
    """One writer per run on an object store: a lease object, created only if absent and
    renewed by compare-and-swap every third of its duration by a background thread.

    A writer that dies stops renewing, and its lease lapses after its duration (measured by
    the store's clock: the object's Last-Modified against the server's Date, so the
    machines' clocks need not agree). A second live writer is refused with the holder named;
    a writer whose lease was taken over (it stalled past its duration) learns it at its next
    renewal, and a save checks that before it commits (:meth:`check`).
    """

    def __init__(self, directory: StorePath) -> None:
        self.directory = directory
        self.key = _key(directory, LEASE)
        self.seconds = lease_seconds()
        self.owner = uuid.uuid4().hex
        self._etag: str | None = None
        self._lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._etag is not None

    def _record(self, released: bool = False) -> bytes:
        return canonical_json({
            "owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:500] or sys.executable,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "ttl_seconds": self.seconds,
            "released": released}, readable=True)

    @staticmethod
    def describe(holder: Any) -> str:
        if not isinstance(holder, dict):
            return "an unknown writer"
        return (f"pid {holder.get('pid')} on {holder.get('host')}, running "
                f"{str(holder.get('command'))[:200]!r} since {holder.get('since')}")

    def _lapsed(self, read: ObjectRead, holder: Any) -> tuple[bool, float]:
        """Whether the lease in ``read`` has lapsed, and how many seconds it has left."""
        if isinstance(holder, dict) and holder.get("released") is True:
            return True, 0.0
        ttl = holder.get("ttl_seconds") if isinstance(holder, dict) else None
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= 86400:
            ttl = self.seconds  # unreadable: give it this writer's own duration
        now = read.server_time if read.server_time is not None else time.time()
        if read.last_modified is None:
            return False, ttl
        # Last-Modified has whole seconds: count one more, so a live lease never looks lapsed.
        left = read.last_modified + 1 + ttl - now
        return left <= 0, max(0.0, left)

    def acquire(self) -> None:
        """Take the lease, or raise :class:`.lock.RunLockedError` naming its holder."""
        if self._etag is not None:
            return
        store = self.directory.store
        for _ in range(3):  # a lease that vanishes between two requests: try again
            try:
                etag = store.put(self.key, self._record(), if_absent=True)
                break
            except PreconditionFailed:
                pass
            try:
                current = store.get(self.key, _LEASE_MAX)
                holder = json.loads(current.data.decode("utf-8"))
            except ObjectNotFound:
                continue
            except (ObjectTooLarge, UnicodeDecodeError, ValueError, RecursionError):
                meta = store.head(self.key)
                if meta is None:
                    continue
                current = ObjectRead(b"", meta.etag, meta.last_modified, None)
                holder = None
            lapsed, left = self._lapsed(current, holder)
            if not lapsed:
                raise RunLockedError(
                    f"{self.directory} is already being written by {self.describe(holder)}. "
                    "Two writers would overwrite each other's checkpoints: stop the other run, "
                    f"or use another location. (Its lease lapses {left:.0f} s after its last "
                    "renewal if that writer has died.)")
            try:
                etag = store.put(self.key, self._record(), if_match=current.etag)
                break
            except PreconditionFailed:
                raise RunLockedError(f"{self.directory}: another writer took over the lapsed "
                                     "lease at the same moment; stop it or use another "
                                     "location") from None
        else:
            raise RunLockedError(f"{self.directory}: the writer lease kept changing; another "
                                 "writer is starting here")
        self._etag, self._lost = etag, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="ckptlab-lease",
                                        daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Renew the lease now (compare-and-swap on the ETag this writer holds).

        Raises:
            LeaseLostError: another writer took the lease over; nothing may be committed.
        """
        with self._mutex:
            if self._lost is not None:
                raise LeaseLostError(self._lost)
            if self._etag is None:
                raise LeaseLostError(f"{self.directory}: this writer holds no lease")
            try:
                self._etag = self.directory.store.put(self.key, self._record(),
                                                      if_match=self._etag)
            except PreconditionFailed:
                self._lost = (
                    f"{self.directory}: this writer's lease lapsed (not renewed for "
                    f"{self.seconds:.0f} s) and another writer took the run over; this save "
                    "was not committed and nothing was overwritten. Stop one of the writers")
                raise LeaseLostError(self._lost) from None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.check()
            except LeaseLostError:
                return  # reported by the next save's check()
            except StoreError:
                continue  # a network blip: the next beat (or the save's check) tries again

    def release(self) -> None:
        """Stop renewing and mark the lease released (by CAS, so a lease taken over by
        another writer is left alone). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self._etag is not None and self._lost is None:
                try:
                    self.directory.store.put(self.key, self._record(released=True),
                                             if_match=self._etag)
                except (PreconditionFailed, StoreError):
                    pass  # taken over or unreachable: it lapses by itself
            self._etag = None


# --------------------------------------------------------------------------------------------
# Writing: the manager
# --------------------------------------------------------------------------------------------

class _Upload:
    """One data object on its way: uploaded by a pool thread while it is hashed."""

    def __init__(self, pool: ThreadPoolExecutor, store: Any, key: str,
                 chunks: Sequence[Any], on_part: Any = None) -> None:
        self.views = flat_views(chunks)
        self.total = sum(len(v) for v in self.views)
        self._pieces: PieceDigests | None = None
        self._digest: Future[str] | None = None
        self._hexdigest: str | None = None
        if self.total >= PIECEWISE_MIN:
            self._pieces = PieceDigests(PIECE_BYTES)
            for view in self.views:
                self._pieces.update(view)
        elif self.total >= _HASH_THREAD_MIN:
            self._digest = HASH_POOL.get().submit(sha256_hex, self.views)
        self.upload = pool.submit(store.upload, key, self.views, on_part)
        if self._pieces is None and self._digest is None:
            self._hexdigest = sha256_hex(self.views)

    def entry(self) -> dict[str, Any]:
        """Wait for the upload and the hash; the manifest entry."""
        self.upload.result()
        if self._pieces is not None:
            with self._pieces:
                return {"bytes": self.total,
                        "sha256_pieces": {"piece_bytes": self._pieces.piece_bytes,
                                          "digests": self._pieces.digests()}}
        if self._digest is not None:
            return {"bytes": self.total, "sha256": self._digest.result()}
        return {"bytes": self.total, "sha256": self._hexdigest}

    def wait(self) -> None:
        """Let the threads finish (a failed save): no thread reads the views afterwards."""
        self.upload.exception()
        if self._pieces is not None:
            self._pieces.close()
        if self._digest is not None:
            self._digest.exception()


class RemoteCheckpointManager(CheckpointManager):
    """:class:`.manager.CheckpointManager` on an object store (``CheckpointManager("s3://
    bucket/run/checkpoints")`` builds one): the same API, registration, policies, async saves
    and guarantees, with the protocol of this module instead of rename and fsync.

    Sharded saves of several ranks commit through it (:meth:`commit_manifest`,
    :meth:`adopt_committed`; see :mod:`.distributed`).
    """

    directory: StorePath  # type: ignore[assignment]

    def _location(self, directory: Any) -> StorePath:  # type: ignore[override]
        from .location import store_location

        location = store_location(directory)
        assert location is not None
        self._pointer_etags: dict[str, str | None] = {}
        self._uploads: ThreadPoolExecutor | None = None
        return location

    def _writer_lock(self) -> StoreLease:  # type: ignore[override]
        return StoreLease(self.directory)

    def _check_location(self) -> None:
        pass  # a prefix always "exists"; a missing bucket is reported by the first request

    def _hold_lock(self) -> None:
        self._lock.acquire()

    def _pointer_exists(self, pointer: str) -> bool:
        return self.directory.store.head(_key(self.directory, pointer)) is not None

    def _remove_pointer(self, pointer: str) -> None:
        self.directory.store.delete([_key(self.directory, pointer)])
        self._pointer_etags[pointer] = None

    def _write_pointer(self, pointer: str, name: str, step: int, **fields: Any) -> None:
        """Move a pointer by compare-and-swap on the ETag this writer last saw."""
        store, key = self.directory.store, _key(self.directory, pointer)
        if pointer not in self._pointer_etags:
            meta = store.head(key)
            self._pointer_etags[pointer] = meta.etag if meta is not None else None
        expected = self._pointer_etags[pointer]
        data = canonical_json({"checkpoint": name, "step": step, **fields}, readable=True)
        try:
            if expected is None:
                etag = store.put(key, data, if_absent=True)
            else:
                etag = store.put(key, data, if_match=expected)
        except PreconditionFailed:
            self._pointer_etags.pop(pointer, None)
            raise CommitConflictError(
                f"the {pointer!r} pointer in {self.directory} was changed by another writer "
                f"while this one held the run's lease; it was not overwritten (it would have "
                f"named {name}). Two writers are at work here: stop one") from None
        self._pointer_etags[pointer] = etag

    def _set_aside_non_pointers(self) -> None:
        pass  # an object store has no directory or pipe to sit where a pointer belongs

    def _repair_pointers(self) -> None:
        self._repair_latest()
        self._update_best_pointer(self._plan_retention(self.records(), latest=None))

    def _log(self, events: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **e}) + "\n"
                        for e in events)
        if lines:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            self.directory.store.put(_key(self.directory, DECISIONS_DIR, name),
                                     lines.encode("utf-8"))

    def _delete(self, names: Sequence[str]) -> None:
        """Uncommit (delete the manifest objects) first, then delete the data: a crash in
        between leaves garbage for the next writer, never a checkpoint that verifies."""
        if not names:
            return
        store = self.directory.store
        store.delete([_key(self.directory, name, MANIFEST) for name in names])
        doomed = [meta.key for name in names
                  for meta in store.list(_key(self.directory, DATA_DIR, name) + "-")]
        store.delete(doomed)

    def remove_leftovers(self) -> list[StorePath]:  # type: ignore[override]
        """Delete the data of saves that never committed (killed mid-upload), of
        checkpoints that were uncommitted but not yet deleted, and of rollback copies that
        never got their commit; returns their prefixes."""
        store = self.directory.store
        committed = {name for _, name in remote_committed_steps(self.directory)}
        base = _key(self.directory, DATA_DIR) + "/"
        by_prefix: dict[str, list[str]] = {}
        for meta in store.list(base):  # one paginated listing of every data object
            folder = meta.key[len(base):].split("/", 1)[0]
            by_prefix.setdefault(folder, []).append(meta.key)
        garbage = []
        for folder in by_prefix:
            relative = f"{DATA_DIR}/{folder}"
            match = _DATA_PREFIX.match(relative)
            if match is None:
                continue  # not ours: never delete what this protocol did not write
            name = match.group(1)
            if name in committed:
                try:
                    manifest = self._manifests.get(name) or read_remote_manifest(
                        self.directory / name)
                except CkptlabError:
                    continue  # its commit is unreadable: whose data this is cannot be told
                self._manifests[name] = manifest
                if manifest.get(DATA_FIELD) == relative:
                    continue
            garbage.append(folder)
        store.delete([key for folder in garbage for key in by_prefix[folder]])
        return [StorePath(store, base + folder) for folder in garbage] + \
            self._remove_unfinished_copies()

    def _remove_unfinished_copies(self) -> list[StorePath]:
        """Delete the data a rollback copied into ``abandoned/`` for a checkpoint whose copy
        never got its commit object (the rollback was killed mid-copy): one listing."""
        store = self.directory.store
        base = _key(self.directory, ABANDONED_SUBDIR) + "/"
        commits: set[tuple[str, str]] = set()
        data: dict[tuple[str, str, str], list[str]] = {}
        for meta in store.list(base):
            folder, _, rest = meta.key[len(base):].partition("/")
            commit = _COMMIT_KEY.match(rest)
            if commit:
                commits.add((folder, commit.group(1)))
            elif rest.startswith(DATA_DIR + "/"):
                prefix = rest.split("/", 2)[1]
                match = _DATA_PREFIX.match(f"{DATA_DIR}/{prefix}")
                if match is not None:  # never delete what this protocol did not write
                    data.setdefault((folder, match.group(1), prefix), []).append(meta.key)
        garbage = [found for found in data if found[:2] not in commits]
        store.delete([key for found in garbage for key in data[found]])
        return [StorePath(store, f"{base}{folder}/{DATA_DIR}/{prefix}")
                for folder, _, prefix in garbage]

    def _move_aside(self, name: str, aside: StorePath) -> StorePath:
        """Keep committed checkpoint ``name`` as ``aside/name`` (a checkpoint that reads and
        verifies there), then uncommit and delete it here.

        The order is the protocol's: the copy's data objects, then its commit object (a crash
        before it leaves data without a commit, which the next writer removes); then the lease
        is renewed - the fence - and the original is uncommitted before its data goes.
        Objects are copied inside the store, as they are: a damaged checkpoint stays damaged.
        """
        store = self.directory.store
        try:
            manifest = self._manifests.get(name) or read_remote_manifest(self.directory / name)
            prefixes = [data_prefix(self.directory / name, manifest) + "/"]
        except CkptlabError:  # unreadable commit: keep every data prefix of this step
            prefixes = [_key(self.directory, DATA_DIR, name) + "-"]
        base = _key(self.directory) + "/" if self.directory.key else ""
        for prefix in prefixes:
            for meta in store.list(prefix):
                store.copy(meta.key, _key(aside, meta.key[len(base):]))
        store.copy(_key(self.directory, name, MANIFEST), _key(aside, name, MANIFEST))
        self._lock.check()  # a writer whose lease was taken over uncommits nothing
        self._manifests.pop(name, None)
        self._unusable.discard(name)
        self._delete([name])
        return aside / name

    def rollback(self, step: int, *, reason: str = "requested") -> list[StorePath]:
        """:meth:`.manager.CheckpointManager.rollback` on an object store: every newer
        checkpoint is kept in ``abandoned/<time>-after-step_N/`` (copied inside the store;
        it reads and verifies there) and only then uncommitted here, oldest first, so a crash
        leaves the old newest checkpoint the newest until the last one has gone - as on disk.
        Pointers then move by compare-and-swap, under the writer's lease."""
        self._writable()
        name = checkpoint_dir_name(step)
        committed = remote_committed_steps(self.directory)
        if name not in {n for _, n in committed}:
            raise CheckpointNotFoundError(f"{self.directory} has no checkpoint at step {step} "
                                          "to roll back to")
        target = self.directory / name
        try:
            verify_checkpoint(target)
        except CkptlabError as exc:
            older = self._rollback_candidate(step - 1)
            advice = (f"call rollback({older[0]}) instead to continue from {older[1]}" if
                      older is not None else "no valid checkpoint below it is left to roll "
                      "back to: resume into a new location")
            raise CheckpointCorruptError(
                f"cannot roll back to step {step} in {self.directory}: {name} is damaged "
                f"({exc}); nothing was moved; {advice}") from exc
        newer = [n for s, n in committed if s > step]
        if not newer:
            return []
        self._lock.check()  # before the first copy, too: a stalled writer leaves no trace
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.directory / ABANDONED_SUBDIR / f"{stamp}-after-{name}"
        if next(iter(self.directory.store.list(_key(aside) + "/")), None) is not None:
            aside = aside.parent / f"{aside.name}-{uuid.uuid4().hex[:6]}"
        moved = [self._move_aside(n, aside) for n in newer]
        self._log([{"event": "rolled_back", "checkpoint": name, "step": step,
                    "moved": newer, "moved_to": aside.relative_to(self.directory),
                    "reason": reason}])
        self._history = None  # re-read without the abandoned saves
        self._repair_pointers()
        return moved

    # -- the commit, shared with the sharded checkpointer (engine/distributed.py) ------------
    def new_data_prefix(self, name: str, tag: str | None = None) -> str:
        """A fresh data prefix for a save of checkpoint ``name``, ``.data/<name>-<16 hex>``
        (relative to the checkpoints; ``tag``: the 16 hex digits, else random)."""
        tag = uuid.uuid4().hex[:16] if tag is None else tag
        prefix = f"{DATA_DIR}/{name}-{tag}"
        if _DATA_PREFIX.match(prefix) is None:
            raise CkptlabError(f"{tag!r} is not 16 lower-case hex digits")
        return prefix

    def commit_manifest(self, name: str, manifest: Mapping[str, Any]) -> None:
        """The commit of a save whose data objects are all stored under the prefix its
        manifest names: renew the lease (the fence: a writer whose lease was taken over stops
        here), uncommit an older copy of the same step, create the manifest object only if
        absent. Rank 0 of a sharded save commits through it too.

        Raises:
            LeaseLostError: another writer took the run over; nothing was committed.
            CommitConflictError: another writer committed ``name`` at the same moment.
        """
        store = self.directory.store
        self._lock.check()
        commit = _key(self.directory, name, MANIFEST)
        if store.head(commit) is not None:
            # A new copy of a step already committed (a run re-reaching a step after a
            # fallback): uncommit the old copy first; its data goes after the commit.
            store.delete([commit])
            self._manifests.pop(name, None)
        try:
            store.put(commit, canonical_json(manifest, readable=True), if_absent=True)
        except PreconditionFailed:
            raise CommitConflictError(
                f"checkpoint {name} in {self.directory} was committed by another writer at "
                "the same moment; this save lost the race and overwrote nothing. Two "
                "writers are at work here: stop one") from None

    def _remove_older_copies(self, name: str, data: str) -> None:
        """Delete the data of older copies of checkpoint ``name`` (not ``data``'s)."""
        store = self.directory.store
        store.delete([meta.key for meta in store.list(_key(self.directory, DATA_DIR, name) + "-")
                      if not meta.key.startswith(_key(self.directory, data) + "/")])

    def discard_uncommitted(self, data: str) -> None:
        """Best effort: remove the data objects of a save that did not commit (else the next
        writer does)."""
        try:
            store = self.directory.store
            store.delete([m.key for m in store.list(_key(self.directory, data) + "/")])
        except CkptlabError:
            pass  # garbage left for the next writer's remove_leftovers()

    def adopt_committed(self, path: Any, manifest: Mapping[str, Any]) -> list[Any]:
        """:meth:`.manager.CheckpointManager.adopt_committed` (pointers by CAS, the log,
        retention), then the data of any older copy of the step is deleted."""
        decisions = super().adopt_committed(path, manifest)
        self._unusable.discard(path.name)
        self._remove_older_copies(path.name, str(manifest[DATA_FIELD]))
        return decisions

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._uploads is not None:
                self._uploads.shutdown(wait=True)
                self._uploads = None

    def _write(self, snap: Snapshot) -> CheckpointInfo:
        step = snap.step
        t1 = time.perf_counter()
        name = checkpoint_dir_name(step)
        final = self.directory / name
        data = f"{DATA_DIR}/{name}-{uuid.uuid4().hex[:16]}"
        store = self.directory.store
        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(2, thread_name_prefix="ckptlab-upload")
        uploads: list[_Upload] = []
        committed = False
        try:
            self._lock.acquire()
            tensor_chunks = safetensors_chunks(snap.tensors, {"format": FORMAT_NAME})
            try:
                uploads.append(_Upload(
                    self._uploads, store, _key(self.directory, data, TENSORS), tensor_chunks,
                    on_part=lambda number: fault_point("save:uploading", step)))
                snap.encode_json()
                state = b"{\n" + b",\n".join(json.dumps(n).encode() + b": " + part
                                             for n, part in snap.json_parts.items()) + b"\n}"
                uploads.append(_Upload(self._uploads, store,
                                       _key(self.directory, data, STATE), [state]))
                components = {
                    n: {"tensors": len(keys),
                        "tensor_bytes": sum(tensor_nbytes(snap.tensors[k]) for k in keys),
                        "json_bytes": len(snap.json_parts[n])}
                    for n, keys in snap.tensor_keys.items()}
                created = time.time()
                plan = self._plan_retention(
                    [r for r in self.records() if r.name != name] + [CheckpointRecord(
                        name, step, dict(snap.metrics), sum(u.total for u in uploads),
                        created)], latest=name, saved=(step, dict(snap.metrics)))
                files = {TENSORS: uploads[0].entry(), STATE: uploads[1].entry()}
            finally:  # every tensor byte uploaded and hashed (or the save failed)
                for upload in uploads:
                    upload.wait()
                snap.staged.set()
            manifest = self._manifest(step, components, files, snap.metrics, snap.config,
                                      {**snap.extra, DATA_FIELD: data}, created)
            t2 = time.perf_counter()
            fault_point("save:files-written", step)
            self.commit_manifest(name, manifest)
            committed = True
        except (CommitConflictError, RunLockedError):
            self.discard_uncommitted(data)
            raise
        except StoreError as exc:
            self.discard_uncommitted(data)
            raise CheckpointWriteError(
                f"could not save checkpoint {name} in {self.directory}: {exc}. Earlier "
                "checkpoints and pointers are unchanged; save again once the store is "
                "reachable") from None
        except BaseException:
            if not committed:
                self.discard_uncommitted(data)
            raise
        self._manifests[name] = manifest
        self._unusable.discard(name)
        self._newest_written = step if self._newest_written is None \
            else max(step, self._newest_written)
        fault_point("save:committed", step)
        try:
            self._write_pointer(LATEST, name, step)
            if plan.best_record is not None:
                record = dict(plan.best_record)
                self._write_pointer("best", record.pop("checkpoint"), record.pop("step"),
                                    **record)
            fault_point("save:pointer-updated", step)
            self._log_save(name, step, snap.metrics)
            self._carry_out(plan, latest=name, best_written=plan.best_record is not None)
            self._remove_older_copies(name, data)
        except StoreError as exc:
            raise CheckpointWriteError(
                f"checkpoint {name} was committed, but updating pointers or retention failed: "
                f"{exc}. The checkpoint itself is complete and will be found on resume") \
                from None
        t3 = time.perf_counter()
        self.last_save_timings = SaveTimings(snap.snapshot_seconds, t2 - t1, t3 - t2,
                                             snap.snapshot_seconds + (t3 - t1))
        return CheckpointInfo(final, manifest)  # type: ignore[arg-type]


register_store_protocol(sys.modules[__name__])
