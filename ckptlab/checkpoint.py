"""Atomic, verifiable, pickle-free checkpoints of any ``state_dict()`` objects.

On-disk format (version 1), one directory per checkpoint::

    <checkpoints>/
        latest                   JSON pointer {"checkpoint": "step_00003000", "step": 3000}
        step_00003000/
            manifest.json        format, step, times, metrics, config and its hash,
                                 library versions, components, SHA-256 and size of every file,
                                 and the SHA-256 of the manifest itself
            tensors.safetensors  every tensor and array, keyed "component/path/to/leaf"
            state.json           everything else, per component

How a save stays invisible until complete: files are written into ``.tmp-step_...`` beside the
final name, each file and the directory are fsynced, the directory is renamed into place, the
parent is fsynced, and only then is ``latest`` replaced (temporary file + ``os.replace``; no
symlinks, so it works on Windows and macOS). A crash at any moment leaves either the old set of
checkpoints or the new one; leftovers are ignored and removed by the next writer.

How a load stays safe: JSON and safetensors cannot execute code, and ckptlab never calls
``pickle`` or ``torch.load``. Every file's hash is checked before its contents are used.

Introduced in notebook ``01_pipeline_trace``; failure handling in ``07_failure_modes``.
"""

from __future__ import annotations

import errno as errno_module
import hashlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from . import __version__
from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    ForeignFileError,
    UnsupportedFormatError,
)
from .faults import fault_point
from .lock import RunLock
from .policies import (
    BestBy,
    CheckpointRecord,
    Decision,
    DiskBudget,
    KeepLastN,
    RetentionPolicy,
    decide_retention,
)
from .serialization import join_state, split_state

FORMAT_NAME = "ckptlab-checkpoint"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
STATE = "state.json"
LATEST = "latest"
BEST = "best"
DECISIONS = "decisions.jsonl"
CHECKPOINTS_SUBDIR = "checkpoints"

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_REPLACED_PREFIX = ".replaced-"
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unusable and an older valid one is used instead."""


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` can be checkpointed."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken at ``step`` (zero-padded, sorts by step)."""
    return f"step_{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step a checkpoint directory's name encodes (``step_00003000`` -> 3000)."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise CkptlabError(f"{path} is not named like a checkpoint (step_NNNNNNNN)")
    return int(match.group(1))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint's contents, recorded in the manifest."""
    import gymnasium
    import numpy
    import safetensors

    return {
        "ckptlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gymnasium": gymnasium.__version__,
        "safetensors": safetensors.__version__,
    }


# --------------------------------------------------------------------------------------------
# Low-level durable file operations
# --------------------------------------------------------------------------------------------

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


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32",
    torch.uint64: "U64",
}


def safetensors_chunks(tensors: Mapping[str, torch.Tensor],
                       metadata: Mapping[str, str]) -> list[bytes | memoryview]:
    """The bytes of a safetensors file as a list of chunks, without copying tensor data.

    Layout (the public safetensors format): 8-byte little-endian header length, a JSON header
    of dtypes, shapes and byte ranges, then the raw little-endian data. Tensors are ordered by
    element size (largest first) so every tensor stays aligned, like the reference writer.
    The result is read back by ``safetensors.torch.load``.
    """
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks: list[bytes | memoryview] = []
    offset = 0
    for key in order:
        tensor = tensors[key].contiguous()
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
        if size:
            chunks.append(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    return [len(text).to_bytes(8, "little"), text, *chunks]


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


def _digest(chunks: Sequence[bytes | memoryview]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return {"bytes": sum(memoryview(c).nbytes for c in chunks), "sha256": digest.hexdigest()}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_json(obj: Any, readable: bool = False) -> bytes:
    # indent= switches json to its pure-Python encoder (~10x slower), so only small files
    # meant for people (manifest, pointer) are indented; state.json is compact.
    return json.dumps(obj, sort_keys=True, allow_nan=False, indent=1 if readable else None,
                      separators=None if readable else (",", ":")).encode("utf-8")


def _manifest_self_hash(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(_canonical_json(body))


# --------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------

def describe_foreign_file(path: Path) -> str | None:
    """If ``path`` is a file in a format ckptlab refuses, say what it looks like; else ``None``.

    Only the first bytes are read; nothing is deserialised.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save and Stable-Baselines3 write these; they contain pickles)"
    if path.suffix in {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}:
        return f"a '{path.suffix}' file"
    return None


def _foreign_error(path: Path, what: str) -> ForeignFileError:
    return ForeignFileError(
        f"{path} is {what}, not a ckptlab checkpoint. ckptlab never unpickles files, because "
        "loading a pickle can run arbitrary code; nothing in it was executed. Point at a "
        "ckptlab checkpoint directory (it contains manifest.json) or a run directory."
    )


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of one checkpoint directory.

    Raises:
        ForeignFileError: the directory is not a ckptlab checkpoint.
        CheckpointCorruptError: the manifest is missing, unreadable, or fails its self-hash.
        UnsupportedFormatError: written by a newer ckptlab format.
    """
    path = checkpoint / MANIFEST
    if not path.is_file():
        raise CheckpointCorruptError(
            f"{checkpoint}: manifest.json is missing, so this checkpoint was never completed "
            "or has been damaged")
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise CheckpointCorruptError(f"{path}: manifest is implausibly large")
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointCorruptError(f"{path}: manifest is not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointCorruptError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ForeignFileError(f"{path} is not a ckptlab manifest (no format '{FORMAT_NAME}')")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointCorruptError(f"{path}: format_version {version!r} is not valid")
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{checkpoint} uses checkpoint format {version}, but this ckptlab "
            f"({__version__}) reads formats up to {FORMAT_VERSION}; upgrade ckptlab to load it")
    if manifest.get("manifest_sha256") != _manifest_self_hash(manifest):
        raise CheckpointCorruptError(f"{path}: manifest content does not match its own hash "
                                     "(the file was modified or damaged)")
    return manifest


def _read_verified(checkpoint: Path, manifest: Mapping[str, Any], name: str) -> bytes:
    entry = manifest.get("files", {}).get(name)
    if entry is None:
        raise CheckpointCorruptError(f"{checkpoint}: manifest does not list {name}")
    path = checkpoint / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{path} is missing") from None
    except OSError as exc:  # a directory in its place, unreadable media, permissions
        raise CheckpointCorruptError(f"{path} cannot be read ({exc})") from None
    if len(data) != entry["bytes"]:
        raise CheckpointCorruptError(
            f"{path} has {len(data)} bytes but the manifest records {entry['bytes']} "
            "(truncated or overwritten)")
    if _sha256(data) != entry["sha256"]:
        raise CheckpointCorruptError(f"{path}: SHA-256 does not match the manifest "
                                     "(the file is corrupted)")
    return data


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint on disk and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics", {}))

    @property
    def config(self) -> dict[str, Any] | None:
        return self.manifest.get("config")

    @property
    def total_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest["files"].values())


def verify_checkpoint(checkpoint: str | os.PathLike[str]) -> CheckpointInfo:
    """Check a checkpoint's manifest and every file's size and SHA-256.

    Returns the checkpoint's :class:`CheckpointInfo` when everything matches.

    Raises:
        CheckpointCorruptError, ForeignFileError, UnsupportedFormatError: what is wrong.
    """
    path = Path(checkpoint)
    manifest = read_manifest(path)
    for name in manifest.get("files", {}):
        _read_verified(path, manifest, name)
    return CheckpointInfo(path, manifest)


def load_checkpoint_state(checkpoint: str | os.PathLike[str],
                          keys: Iterable[str] | None = None) -> tuple[CheckpointInfo,
                                                                      dict[str, Any]]:
    """Read, verify and decode a checkpoint into ``{component: state}``.

    Each file is read once and its hash is checked before it is parsed.

    Args:
        checkpoint: a checkpoint directory.
        keys: component names to decode; ``None`` decodes all of them.
    """
    path = Path(checkpoint)
    manifest = read_manifest(path)
    tree = json.loads(_read_verified(path, manifest, STATE).decode("utf-8"))
    try:
        tensors = safetensors_load(_read_verified(path, manifest, TENSORS))
    except SafetensorError as exc:  # hash matched, so the writer produced it: still report it
        raise CheckpointCorruptError(f"{path / TENSORS}: unreadable ({exc})") from None
    wanted = list(tree) if keys is None else list(keys)
    missing = [k for k in wanted if k not in tree]
    if missing:
        raise CheckpointNotFoundError(
            f"{path} has no component(s) {', '.join(missing)}; it contains "
            f"{', '.join(sorted(tree)) or 'nothing'}")
    try:
        states = {name: join_state(tree[name], tensors) for name in wanted}
    except (KeyError, ValueError) as exc:
        raise CheckpointCorruptError(f"{path}: state.json and tensors disagree ({exc})") from None
    return CheckpointInfo(path, manifest), states


def restore_components(components: Mapping[str, Stateful], states: Mapping[str, Any],
                       source: Path) -> None:
    """Call ``load_state_dict`` on each component with its decoded state.

    Raises:
        CheckpointNotFoundError: a component has no state in the checkpoint.
    """
    missing = [name for name in components if name not in states]
    if missing:
        raise CheckpointNotFoundError(
            f"{source} has no state for {', '.join(missing)} (it has "
            f"{', '.join(sorted(states)) or 'nothing'}); it was written by a different program "
            "or with different components registered")
    for name, component in components.items():
        component.load_state_dict(states[name])


# --------------------------------------------------------------------------------------------
# Locating checkpoints
# --------------------------------------------------------------------------------------------

def resolve_location(location: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Interpret a user-given path as ``(checkpoints_dir, specific_checkpoint_or_None)``.

    Accepts a run directory (containing ``checkpoints/``), a checkpoints directory, one
    checkpoint directory, its ``manifest.json``, or a ``latest`` pointer file.

    Raises:
        CheckpointNotFoundError: nothing exists there, or it holds no checkpoints.
        ForeignFileError: it is a file in another format (for example a pickled ``.pt``).
    """
    path = Path(location)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist; check the path (a run directory "
                                      "or a checkpoint directory is expected)")
    if path.is_file():
        if path.name == MANIFEST:
            return path.parent.parent, path.parent
        if path.name == LATEST:
            return path.parent, None
        what = describe_foreign_file(path) or "a file of unknown format"
        raise _foreign_error(path, what)
    if (path / MANIFEST).exists():
        return path.parent, path
    if (path / CHECKPOINTS_SUBDIR).is_dir():
        return path / CHECKPOINTS_SUBDIR, None
    if any(_STEP_DIR.match(p.name) for p in path.iterdir()) or (path / LATEST).exists():
        return path, None
    foreign = [p for p in sorted(path.iterdir()) if p.is_file() and describe_foreign_file(p)]
    if foreign:
        raise _foreign_error(foreign[0], describe_foreign_file(foreign[0]) or "foreign")
    raise CheckpointNotFoundError(f"{path} contains no ckptlab checkpoints")


def latest_valid_checkpoint(location: str | os.PathLike[str]) -> CheckpointInfo:
    """Verify and return the newest valid checkpoint at ``location`` (see :func:`resolve_location`).

    A newer checkpoint that fails verification is skipped with a
    :class:`CheckpointFallbackWarning`.
    """
    directory, specific = resolve_location(location)
    if specific is not None:
        return verify_checkpoint(specific)
    return CheckpointManager(directory, create=False).latest_valid()


# --------------------------------------------------------------------------------------------
# The manager
# --------------------------------------------------------------------------------------------

@dataclass
class SaveTimings:
    """Wall seconds spent in each part of the most recent save."""

    snapshot: float = 0.0   # state_dict() + encoding, on the calling thread
    write: float = 0.0      # files written, hashed and fsynced
    commit: float = 0.0     # rename, pointers, retention
    total: float = 0.0      # all of it (for an async save, partly in the background)


class CheckpointWriteError(CkptlabError):
    """A save failed (disk full, permission denied, ...); earlier checkpoints are intact."""


@dataclass
class _Snapshot:
    """Everything a save writes, captured on the training thread."""

    step: int
    json_parts: dict[str, bytes]
    tensors: dict[str, torch.Tensor]
    tensor_keys: dict[str, list[str]]
    metrics: dict[str, Any]
    config: dict[str, Any] | None
    extra: dict[str, Any]
    snapshot_seconds: float


class CheckpointManager:
    """Saves registered components atomically and restores them, falling back past corruption.

    Components are registered by name (like DreamerV3's checkpoint): any object with
    ``state_dict()`` / ``load_state_dict()`` works, not only ckptlab's own.

    Example::

        with CheckpointManager("runs/demo/checkpoints", retention=[KeepLastN(3)],
                               best=BestBy("eval_return", "max")) as manager:
            manager.register("model", model)
            manager.register("optimizer", optimizer)
            manager.restore_latest()          # None on a fresh run
            ...
            manager.save(step, metrics={"eval_return": 412.0})

    Args:
        directory: where checkpoint directories live; created on first save.
        keep_last: shorthand for ``retention=[KeepLastN(keep_last)]``.
        retention: retention policies; a checkpoint survives if any keeps it (none given: all
            are kept). The latest and the best are never deleted, and nothing is deleted before
            the new checkpoint is committed. Each decision is appended, with its reasons, to
            ``decisions.jsonl`` in ``directory``.
        best: how the ``best`` pointer is chosen (``None``: no best pointer).
        disk_budget_bytes: after retention, delete the oldest unprotected checkpoints until
            all fit in this many bytes.
        create: ``False`` opens the directory read-only (inspect, verify, prune --dry-run):
            nothing is created, locked or cleaned.

    A writing manager holds the directory's writer lock until :meth:`close`.

    Introduced in notebook ``01_pipeline_trace``; policies in ``06_retention_strategies``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep_last: int | None = None,
                 retention: Sequence[RetentionPolicy] = (), best: BestBy | None = None,
                 disk_budget_bytes: int | None = None, create: bool = True) -> None:
        self.directory = Path(directory)
        self.retention: list[RetentionPolicy] = list(retention)
        if keep_last is not None:
            self.retention.append(KeepLastN(keep_last))
        self.best = best
        self.budget = DiskBudget(disk_budget_bytes) if disk_budget_bytes is not None else None
        self.create = create
        self.components: dict[str, Stateful] = {}
        self.last_save_timings = SaveTimings()  # set by whichever thread wrote the last save
        self.last_blocking_seconds = 0.0  # how long the last save() / save_async() call held
        self._manifests: dict[str, dict[str, Any]] = {}  # cache: name -> manifest
        self._history: list[tuple[int, dict[str, Any]]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[CheckpointInfo] | None = None
        self._lock = RunLock(self.directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise CkptlabError(f"{self.directory} exists and is not a directory")
        if create:
            # Lock at once (not at the first save), so a second writer fails before it trains;
            # and before cleaning, since leftovers might be another writer's.
            try:
                self._lock.acquire()
            except OSError as exc:
                raise CheckpointWriteError(
                    f"cannot write to {self.directory}: {_describe_os_error(exc)}") from exc
            self.remove_leftovers()

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, component: Stateful) -> None:
        """Register ``component`` under ``name``; its state is saved and restored by that name."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise CkptlabError(f"component name {name!r} may only use letters, digits, _ . -")
        if not isinstance(component, Stateful):
            raise CkptlabError(f"component {name!r} ({type(component).__name__}) has no "
                               "state_dict()/load_state_dict()")
        self.components[name] = component

    # -- listing --------------------------------------------------------------------------
    def committed(self) -> list[Path]:
        """Committed checkpoint directories, oldest first (not verified)."""
        if not self.directory.is_dir():
            return []
        found = [(checkpoint_step(p), p) for p in self.directory.iterdir()
                 if _STEP_DIR.match(p.name) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def _read_pointer(self, name: str) -> str | None:
        try:
            data = json.loads((self.directory / name).read_text("utf-8"))
            return str(data["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def latest_pointer(self) -> str | None:
        """The checkpoint name the ``latest`` pointer names, or ``None`` if there is none."""
        return self._read_pointer(LATEST)

    def best_pointer(self) -> str | None:
        """The checkpoint name the ``best`` pointer names, or ``None`` if there is none."""
        return self._read_pointer(BEST)

    def records(self) -> list[CheckpointRecord]:
        """What retention sees of each committed checkpoint with a readable manifest."""
        records = []
        for path in self.committed():
            manifest = self._manifests.get(path.name)
            if manifest is None:
                try:
                    manifest = read_manifest(path)
                except CkptlabError:
                    continue  # unreadable: neither counted nor chosen; verify reports it
                self._manifests[path.name] = manifest
            size = sum(int(f["bytes"]) for f in manifest["files"].values())
            records.append(CheckpointRecord(path.name, int(manifest["step"]),
                                            dict(manifest.get("metrics") or {}), size))
        return records

    def latest_valid(self) -> CheckpointInfo:
        """Verify checkpoints newest first and return the first valid one.

        Raises:
            CheckpointNotFoundError: there are no checkpoints.
            CheckpointCorruptError: there are checkpoints but none is valid.
        """
        candidates = self.committed()
        if not candidates:
            raise CheckpointNotFoundError(f"{self.directory} contains no ckptlab checkpoints")
        problems = []
        for path in reversed(candidates):
            try:
                info = verify_checkpoint(path)
            except (CheckpointCorruptError, ForeignFileError) as exc:
                problems.append(str(exc))
                continue
            for problem in problems:
                warnings.warn(f"skipping unusable checkpoint: {problem}; falling back to "
                              f"{info.name}", CheckpointFallbackWarning, stacklevel=2)
            return info
        raise CheckpointCorruptError(
            f"none of the {len(candidates)} checkpoints in {self.directory} is valid "
            f"(newest problem: {problems[0]}); run 'python -m ckptlab verify "
            f"{self.directory}' for the full list")

    # -- restore --------------------------------------------------------------------------
    def restore(self, checkpoint: str | os.PathLike[str] | None = None) -> CheckpointInfo:
        """Load every registered component from ``checkpoint`` (default: newest valid here).

        Nothing is loaded into any component unless the whole checkpoint verified and holds
        a state for every registered component.
        """
        info = verify_checkpoint(checkpoint) if checkpoint is not None else self.latest_valid()
        _, states = load_checkpoint_state(info.path, keys=None)
        restore_components(self.components, states, info.path)
        return info

    def restore_latest(self) -> CheckpointInfo | None:
        """Restore from the newest valid checkpoint, or return ``None`` when there is none."""
        if not self.committed():
            return None
        return self.restore()

    # -- save -----------------------------------------------------------------------------
    def save(self, step: int, *, metrics: Mapping[str, Any] | None = None,
             config: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Atomically write a checkpoint of every registered component at ``step``.

        Args:
            step: the training step; names the directory ``step_{step:08d}``.
            metrics: numbers worth seeing without loading (manifest, retention, best pointer).
            config: the run configuration (recorded with its SHA-256 hash).
            extra: further JSON-compatible manifest fields (for example ``episode``).

        Raises:
            CheckpointWriteError: the disk refused (full, permissions); earlier checkpoints
                and pointers are unchanged.
        """
        self.wait()  # an earlier async save must land (or report its error) first
        t0 = time.perf_counter()
        snapshot = self._snapshot(step, metrics, config, extra, copy=False)
        info = self._write(snapshot)
        self.last_blocking_seconds = time.perf_counter() - t0
        return info

    def save_async(self, step: int, *, metrics: Mapping[str, Any] | None = None,
                   config: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> Future[CheckpointInfo]:
        """Like :meth:`save`, but only the snapshot happens on the calling thread.

        The state is copied now (so training may continue and change it) and written by a
        background thread. One save is in flight at a time: a new one first waits for the
        previous. A failure is raised by the next :meth:`save`, :meth:`save_async`,
        :meth:`wait` or :meth:`close` - never swallowed.
        """
        t0 = time.perf_counter()
        self.wait()
        snapshot = self._snapshot(step, metrics, config, extra, copy=True)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ckptlab-save")
        self._pending = self._executor.submit(self._write, snapshot)
        self.last_blocking_seconds = time.perf_counter() - t0
        return self._pending

    def wait(self) -> CheckpointInfo | None:
        """Block until the in-flight async save (if any) is committed; raise its error."""
        pending = self._pending
        if pending is None:
            return None
        try:
            info = pending.result()
        except CkptlabError:
            self._pending = None
            raise
        except Exception as exc:  # an unexpected failure in the writer thread
            self._pending = None
            raise CheckpointWriteError(f"background checkpoint save failed: {exc!r}") from exc
        # (A KeyboardInterrupt while waiting leaves the save pending: close() reports it.)
        self._pending = None
        return info

    def close(self) -> None:
        """Finish any async save (raising its error), stop the writer thread, release the lock."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._lock.release()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _snapshot(self, step: int, metrics: Mapping[str, Any] | None,
                  config: Mapping[str, Any] | None, extra: Mapping[str, Any] | None,
                  copy: bool) -> _Snapshot:
        if not self.create:
            raise CkptlabError(f"{self.directory} was opened read-only")
        if not self.components:
            raise CkptlabError("no components registered; call register(name, obj) first")
        if step < 0:
            raise CkptlabError(f"step must be non-negative (got {step})")
        t0 = time.perf_counter()
        json_parts: dict[str, bytes] = {}
        tensors: dict[str, torch.Tensor] = {}
        tensor_keys: dict[str, list[str]] = {}
        for name, component in self.components.items():
            subtree, part = split_state(component.state_dict(), name)
            # Encoded now: bytes cannot change if the component changes after this call.
            json_parts[name] = _canonical_json(subtree)
            if copy:
                part = {k: t.clone() for k, t in part.items()}
            tensor_keys[name] = list(part)
            tensors.update(part)
        # Private copies of the caller's dicts; NaN and infinity (a diverged loss) become None,
        # because the manifest is strict JSON.
        return _Snapshot(step, json_parts, tensors, tensor_keys, _json_copy(metrics or {}),
                         _json_copy(config) if config is not None else None,
                         _json_copy(extra or {}), time.perf_counter() - t0)

    def _write(self, snap: _Snapshot) -> CheckpointInfo:
        step = snap.step
        t1 = time.perf_counter()
        final = self.directory / checkpoint_dir_name(step)
        tag = uuid.uuid4().hex[:8]
        temp = self.directory / f"{_TEMP_PREFIX}{final.name}-{tag}"
        pointer_temp = self.directory / f"{_TEMP_PREFIX}{LATEST}-{tag}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            temp.mkdir()
            tensor_chunks = safetensors_chunks(snap.tensors, {"format": FORMAT_NAME})
            # One JSON object, assembled from the per-component encodings (done once each).
            state_chunks = [b"{\n" + b",\n".join(
                json.dumps(name).encode() + b": " + part
                for name, part in snap.json_parts.items()) + b"\n}"]
            pointer = _canonical_json({"checkpoint": final.name, "step": step}, readable=True)
            # Data files and the next `latest` pointer flush together; the manifest needs the
            # hashes, so it is written while those fsyncs run, and flushed alongside them.
            flush = _ParallelFlush({temp / TENSORS: tensor_chunks, temp / STATE: state_chunks,
                                    pointer_temp: [pointer]})
            try:
                files = {TENSORS: _digest(tensor_chunks), STATE: _digest(state_chunks)}
                components = {
                    name: {"tensors": len(keys),
                           "tensor_bytes": sum(_nbytes(snap.tensors[k]) for k in keys),
                           "json_bytes": len(snap.json_parts[name])}
                    for name, keys in snap.tensor_keys.items()}
                manifest = self._manifest(step, components, files, snap.metrics, snap.config,
                                          snap.extra)
                _write_durable(temp / MANIFEST, _canonical_json(manifest, readable=True))
            finally:
                flush.join()
            _fsync_dir(temp)
            t2 = time.perf_counter()
            fault_point("save:files-written", step)
            self._commit(temp, final, sync=False)
        except OSError as exc:
            shutil.rmtree(temp, ignore_errors=True)
            pointer_temp.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"could not save checkpoint {final.name} in {self.directory}: "
                f"{_describe_os_error(exc)}. Earlier checkpoints and pointers are unchanged; "
                "free disk space or fix permissions, then save again") from exc
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            pointer_temp.unlink(missing_ok=True)
            raise
        self._manifests[final.name] = manifest
        fault_point("save:committed", step)
        try:
            fault_point("save:pointer-temp", step)
            os.replace(pointer_temp, self.directory / LATEST)
            # One directory fsync makes both renames durable: journaling filesystems commit
            # them in order, so `latest` can never survive a crash that its target did not.
            # (Resume scans the directories anyway; the pointer is for people and tools.)
            _fsync_dir(self.directory)
            fault_point("save:pointer-updated", step)
            self._log_save(final.name, step, snap.metrics)
            self._apply_retention(latest=final.name)
        except OSError as exc:
            pointer_temp.unlink(missing_ok=True)
            raise CheckpointWriteError(
                f"checkpoint {final.name} was committed, but updating pointers or retention "
                f"failed: {_describe_os_error(exc)}. The checkpoint itself is complete and "
                "will be found on resume") from exc
        t3 = time.perf_counter()
        self.last_save_timings = SaveTimings(snap.snapshot_seconds, t2 - t1, t3 - t2,
                                             snap.snapshot_seconds + (t3 - t1))
        return CheckpointInfo(final, manifest)

    def _manifest(self, step: int, components: dict[str, Any], files: dict[str, Any],
                  metrics: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
                  extra: Mapping[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "step": step,
            **dict(extra or {}),
            "created_unix": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "metrics": dict(metrics or {}),
            "config": dict(config) if config is not None else None,
            "config_sha256": _sha256(_canonical_json(config)) if config is not None else None,
            "versions": library_versions(),
            "components": components,
            "files": files,
        }
        manifest["manifest_sha256"] = _manifest_self_hash(manifest)
        return manifest

    def _commit(self, temp: Path, final: Path, sync: bool = True) -> None:
        if final.exists():
            # A checkpoint of the same step exists (a resumed run re-reaching it, or a corrupt
            # one). Move it aside first: os.replace cannot replace a non-empty directory.
            # A crash between the two renames is undone by remove_leftovers().
            aside = self.directory / f"{_REPLACED_PREFIX}{final.name}"
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(final, aside)
            os.replace(temp, final)
            _fsync_dir(self.directory)  # before the old copy is deleted, always
            shutil.rmtree(aside)
        else:
            os.replace(temp, final)
            if sync:
                _fsync_dir(self.directory)
        self._manifests.pop(final.name, None)

    def _write_pointer(self, pointer: str, name: str, step: int) -> None:
        temp = self.directory / f"{_TEMP_PREFIX}{pointer}-{uuid.uuid4().hex[:8]}"
        _write_durable(temp, _canonical_json({"checkpoint": name, "step": step}, readable=True))
        os.replace(temp, self.directory / pointer)
        _fsync_dir(self.directory)

    # -- retention and the decision log ---------------------------------------------------
    def history(self) -> list[tuple[int, dict[str, Any]]]:
        """``(step, metrics)`` of every save recorded in the decision log, deleted ones too."""
        if self._history is None:
            latest_by_step: dict[int, dict[str, Any]] = {}
            for event in read_decision_log(self.directory):
                if event.get("event") == "saved":
                    latest_by_step[int(event["step"])] = dict(event.get("metrics") or {})
            self._history = sorted(latest_by_step.items())
        return self._history

    def _log(self, events: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **e}) + "\n"
                        for e in events)
        if lines:
            with open(self.directory / DECISIONS, "a", encoding="utf-8") as f:
                f.write(lines)

    def _log_save(self, name: str, step: int, metrics: Mapping[str, Any]) -> None:
        history = self.history()
        history[:] = [h for h in history if h[0] != step] + [(step, dict(metrics))]
        history.sort(key=lambda h: h[0])
        self._log([{"event": "saved", "checkpoint": name, "step": step,
                    "metrics": dict(metrics)}])

    def plan_retention(self) -> list[Decision]:
        """What retention would decide now, without deleting anything (``prune --dry-run``)."""
        return decide_retention(self.records(), self.retention, best=self.best,
                                budget=self.budget, history=self.history(),
                                latest=self.latest_pointer())

    def _apply_retention(self, latest: str | None = None) -> list[Decision]:
        records = self.records()
        decisions = decide_retention(records, self.retention, best=self.best,
                                     budget=self.budget, history=self.history(),
                                     latest=latest or self.latest_pointer())
        best = self.best.pick(records) if self.best is not None else None
        if best is not None and self.best_pointer() != best.name:
            self._write_pointer(BEST, best.name, best.step)
        if self.retention or self.budget is not None:
            self._log({"event": "retention", "checkpoint": d.name, "step": d.step,
                       "action": "keep" if d.keep else "delete", "reasons": list(d.reasons)}
                      for d in decisions)
        doomed = [self.directory / d.name for d in decisions if not d.keep]
        for path in doomed:
            # Rename first so a crash mid-delete never leaves a half-deleted "committed" dir.
            trash = self.directory / f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
            os.replace(path, trash)
            self._manifests.pop(path.name, None)
            shutil.rmtree(trash)
        if doomed:
            _fsync_dir(self.directory)
        return decisions

    def prune(self) -> list[Decision]:
        """Apply retention now (the manager must be writable); returns the decisions."""
        if not self.create:
            raise CkptlabError(f"{self.directory} was opened read-only")
        self._lock.acquire()
        return self._apply_retention()

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary and trash entries left by crashed saves or deletions.

        A checkpoint moved aside to be replaced, whose replacement never arrived, is put back.
        """
        removed = []
        for path in self.directory.iterdir():
            if path.name.startswith(_REPLACED_PREFIX):
                original = self.directory / path.name[len(_REPLACED_PREFIX):]
                if not original.exists():
                    os.replace(path, original)
                    continue
            if path.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX, _REPLACED_PREFIX)):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        return removed


def read_decision_log(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event in ``directory/decisions.jsonl``; a line torn by a crash is skipped."""
    path = Path(directory) / DECISIONS
    events = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
    except FileNotFoundError:
        pass
    return events


def _json_copy(value: Any) -> Any:
    """A deep copy through JSON types, with non-finite floats replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_copy(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise CkptlabError(f"manifest values must be JSON numbers, strings, lists or dicts "
                       f"(got {type(value).__name__})")


def _describe_os_error(exc: OSError) -> str:
    name = errno_module.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text
