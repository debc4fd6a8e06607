"""The read side: find committed checkpoints, verify them, decode them, restore components.

How a load stays safe: JSON and safetensors cannot execute code, and ckptlab never calls
``pickle`` or ``torch.load``. Every file's size and SHA-256 are checked against the manifest
(which checks its own hash) before its contents are used; nothing is loaded into any component
unless the whole checkpoint verified. A load reads each file once, hashing it as it is read and
decoding the tensors from the same reads straight into fresh tensors; a large file is hashed
by a second thread while the next piece is read. A newest checkpoint that fails is skipped,
with a warning, for the newest one that passes.

Introduced in notebook ``01_pipeline_trace``; failure handling in ``07_failure_modes``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Container, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, Union, runtime_checkable

import torch

from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    ForeignFileError,
    IncompatibleCheckpointError,
)
from .format import (
    CHECKPOINTS_SUBDIR,
    DECISIONS,
    LATEST,
    MANIFEST,
    SHARDED_KEY,
    STATE,
    STEP_DIR_PATTERN,
    TENSORS,
    describe_foreign_file,
    foreign_error,
    open_regular,
    read_manifest,
    read_safetensors,
)
from .location import StorePath, as_location, store_location, store_protocol
from .serialization import join_state, parse_state_json, referenced_tensor_keys
from .sharded import check_shard_layout, is_sharded, sharded_load_error
from .verified import VerifiedFile, open_verified, read_verified, verify_file


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unusable and an older valid one is used instead."""


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` can be checkpointed."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...



def _read_verified_tensors(checkpoint: Path, manifest: Mapping[str, Any],
                           wanted: Container[str] | None,
                           placement: Mapping[str, torch.device] | None = None,
                           opened: VerifiedFile | None = None) -> dict[str, torch.Tensor]:
    """Decode the tensor file while hashing it: one read of every byte, one copy in memory.

    A file that fails its hash is reported as corrupted even when the damage also broke its
    structure (the rest is hashed before a decoding error is reported), so every kind of
    damage reads the same. ``opened``: the file, when the caller already opened it.
    """
    with opened if opened is not None else open_verified(checkpoint, manifest, TENSORS) as file:
        try:
            tensors = read_safetensors(file, wanted, placement)
        except ValueError as exc:
            file.finish()  # a hash mismatch wins over the decoding error
            raise CheckpointCorruptError(f"{file.path}: unreadable ({exc})") from None
        file.finish()
    return tensors


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
        CheckpointNotFoundError: nothing exists at ``checkpoint``.
        CheckpointCorruptError, ForeignFileError, UnsupportedFormatError: what is wrong
            (an unreadable file, permissions included, counts as corrupt, so callers fall
            back past it).
    """
    path = as_location(checkpoint)
    _require_exists(path)
    manifest = read_manifest(path)
    if is_sharded(manifest) and isinstance(path, StorePath):  # [object store, sharded]
        store_protocol().check_remote_shard_layout(path, manifest)
    elif is_sharded(manifest):  # [sharded] name a missing rank or a mixed-in part precisely
        check_shard_layout(path, manifest)
    for name in manifest.get("files", {}):
        verify_file(path, manifest, name)
    if is_sharded(manifest) and manifest[SHARDED_KEY]["dcp_keys"]:
        # [sharded] the DCP index must also make sense: every item inside a listed file, of
        # the length its dtype and shape take (imported here: torch.distributed is slow to
        # import and one-process checkpoints never need it)
        from .dcp_storage import VerifiedDCPReader

        VerifiedDCPReader(path, manifest)
    return CheckpointInfo(path, manifest)


# Where restored tensors go: one device for every component, or one per component name.
DevicePlacement = Union[str, torch.device, Mapping[str, Union[str, torch.device]], None]


def load_checkpoint_state(checkpoint: str | os.PathLike[str],
                          keys: Iterable[str] | None = None, *,
                          device: DevicePlacement = None) -> tuple[CheckpointInfo,
                                                                   dict[str, Any]]:
    """Verify and decode a checkpoint into ``{component: state}``, in one pass per file.

    Every file listed in the manifest is read exactly once and hashed as it is read; the
    tensors are decoded from the same reads. Nothing is returned unless every file matched
    its manifest entry, so a caller never sees a byte that failed verification.

    Args:
        checkpoint: a checkpoint directory.
        keys: component names to decode; ``None`` decodes all of them. The tensors of other
            components are hashed but not kept in memory.
        device: where the torch tensors go - one device for every component (``"cuda"``),
            or ``{component: device}`` for some (``{"agent": "cuda:0"}``; the others stay on
            the CPU). ``None``: the CPU. A tensor bound for a device is allocated there and
            filled in pieces of a few MB through host memory, so the host never holds the
            whole state; numpy arrays always stay in host memory. Components that need CPU
            tensors (a torch RNG state) must stay on the CPU: a single device moves every
            component's tensors, so with such a component give a mapping that leaves it
            out (as ``Trainer.restore`` does: ``{"agent": device}``).

    Raises:
        CheckpointCorruptError, ForeignFileError, UnsupportedFormatError: the checkpoint is
            damaged or not one ckptlab can read.
        CheckpointNotFoundError: a requested component is not in the checkpoint.
    """
    path = as_location(checkpoint)
    _require_exists(path)
    manifest = read_manifest(path)
    if is_sharded(manifest):  # [sharded] loaded across ranks by engine.distributed instead
        raise sharded_load_error(path, manifest)
    listed = manifest.get("files", {})
    for name in (STATE, TENSORS):
        if name not in listed:
            raise CheckpointCorruptError(f"{path}: manifest does not list {name}")
    with ExitStack() as cleanup:
        early = None
        if isinstance(path, StorePath):  # [object store] the tensors' request is sent now,
            # so its round trip overlaps state.json's; nothing is decoded before the plan
            pool = cleanup.enter_context(ThreadPoolExecutor(1, "ckptlab-restore"))
            early = pool.submit(open_verified, path, manifest, TENSORS)
            cleanup.callback(_close_unused, early)
        for name in listed:
            if name not in (STATE, TENSORS):
                verify_file(path, manifest, name)
        return _decode_checkpoint(path, manifest, keys, device, early)


def _close_unused(opened: Future[VerifiedFile]) -> None:
    """Close an early-opened tensor file that nothing went on to read (a decoding error came
    first: that error is the one the caller sees)."""
    if opened.exception() is None:
        opened.result().close()


def _decode_checkpoint(path: Path, manifest: Mapping[str, Any], keys: Iterable[str] | None,
                       device: DevicePlacement, early: Future[VerifiedFile] | None,
                       ) -> tuple[CheckpointInfo, dict[str, Any]]:
    """:func:`load_checkpoint_state` once the manifest is read: state.json, then the tensors
    (``early``: their file being opened already; its error, if any, comes after state.json's)."""
    tree = parse_state_json(read_verified(path, manifest, STATE), path / STATE)
    wanted = list(tree) if keys is None else list(keys)
    missing = [k for k in wanted if k not in tree]
    if keys is None and isinstance(device, Mapping):  # a component placed but not saved
        missing += [k for k in device if k not in tree]
    wanted_tensors = None if keys is None else {
        key for name in wanted if name in tree for key in referenced_tensor_keys(tree[name])}
    placement = _placement(device, {name: tree[name] for name in wanted if name in tree},
                           missing)
    opened = early.result() if early is not None else None
    tensors = _read_verified_tensors(path, manifest, wanted_tensors, placement, opened)
    if missing:
        raise CheckpointNotFoundError(
            f"{path} has no component(s) {', '.join(missing)}; it contains "
            f"{', '.join(sorted(tree)) or 'nothing'}")
    try:
        states = {name: join_state(tree[name], tensors) for name in wanted}
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointCorruptError(f"{path}: state.json and tensors disagree ({exc!r})") \
            from None
    return CheckpointInfo(path, manifest), states


def _placement(device: DevicePlacement, trees: Mapping[str, Any],
               missing: Iterable[str] = ()) -> dict[str, torch.device] | None:
    """``{tensor key: device}`` for the torch tensors of the components ``device`` names
    (a component the checkpoint lacks is reported by the caller, as missing)."""
    if device is None:
        return None
    per_component = ({name: device for name in trees} if isinstance(device, (str, torch.device))
                     else {k: v for k, v in device.items() if k not in set(missing)})
    unknown = sorted(set(per_component) - set(trees))
    if unknown:
        raise CkptlabError(f"device names component(s) {', '.join(unknown)}, which this load "
                           f"does not include (it loads {', '.join(sorted(trees)) or 'none'})")
    placement: dict[str, torch.device] = {}
    for name, where in per_component.items():
        target = _usable_device(where)
        for key in referenced_tensor_keys(trees[name], torch_only=True):
            placement[key] = target
    return placement


def _usable_device(where: str | torch.device) -> torch.device:
    """``where`` as a device tensors can be allocated on, or a clear error (before any read)."""
    try:
        target = torch.device(where)
        torch.empty(0, device=target)
    except (RuntimeError, TypeError, AssertionError) as exc:
        raise CkptlabError(f"cannot restore tensors to device {where!r}: {exc}. Use 'cpu', "
                           "or a device this PyTorch can reach") from None
    return target


def _require_exists(path: Path | StorePath) -> None:
    """Say "not found", not "corrupt", when nothing is at ``path``."""
    if isinstance(path, StorePath):
        return  # read_manifest says "not found" when a checkpoint has no commit object
    try:
        os.lstat(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path} does not exist; check the path (a checkpoint "
                                      "directory is expected)") from None
    except OSError:
        pass  # unreadable parent and the like: read_manifest reports it as unusable


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
        try:
            component.load_state_dict(states[name])
        except CkptlabError:
            raise
        except Exception as exc:  # the component's own check refused the state
            raise IncompatibleCheckpointError(
                f"{source}: component {name!r} ({type(component).__name__}) refused the "
                f"state in the checkpoint: {exc!r}. The checkpoint verified, so it was "
                "written for a different version or shape of this component") from exc


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
    directory, specific, _ = _locate(location)
    return directory, specific


def _locate(location: str | os.PathLike[str]) -> tuple[Path, Path | None,
                                                       list[tuple[int, str]] | None]:
    """:func:`resolve_location`, plus the committed ``(step, name)`` pairs where resolving
    already listed them (an object store: one listing is a round trip saved)."""
    remote = store_location(location)
    if remote is not None:  # [object store]
        return store_protocol().resolve_remote_location(remote)
    path = Path(location)
    try:
        return (*_resolve(path), None)
    except OSError as exc:  # an unreadable directory on the way
        raise CheckpointNotFoundError(f"{path} cannot be read ({exc}); check the path and "
                                      "its permissions") from None


def _resolve(path: Path) -> tuple[Path, Path | None]:
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist; check the path (a run directory "
                                      "or a checkpoint directory is expected)")
    if path.is_file():
        if path.name == MANIFEST:
            return path.parent.parent, path.parent
        if path.name == LATEST:
            return path.parent, None
        what = describe_foreign_file(path) or "a file of unknown format"
        raise foreign_error(path, what)
    if (path / MANIFEST).exists():
        return path.parent, path
    if (path / CHECKPOINTS_SUBDIR).is_dir():
        return path / CHECKPOINTS_SUBDIR, None
    if any(STEP_DIR_PATTERN.match(p.name) for p in path.iterdir()) or (path / LATEST).exists():
        return path, None
    foreign = [p for p in sorted(path.iterdir()) if p.is_file() and describe_foreign_file(p)]
    if foreign:
        raise foreign_error(foreign[0], describe_foreign_file(foreign[0]) or "foreign")
    raise CheckpointNotFoundError(f"{path} contains no ckptlab checkpoints")


def latest_valid_checkpoint(location: str | os.PathLike[str]) -> CheckpointInfo:
    """Verify and return the newest valid checkpoint at ``location`` (see :func:`resolve_location`).

    A newer checkpoint that fails verification is skipped with a
    :class:`CheckpointFallbackWarning`.
    """
    directory, specific, listed = _locate(location)
    if specific is not None:
        return verify_checkpoint(specific)
    return newest_that_passes(directory, verify_checkpoint, listed)



def read_decision_log(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event in ``directory/decisions.jsonl``.

    The log is a record for people, never needed to load anything: a line torn by a crash,
    or damaged (not UTF-8, not JSON, not an object), is skipped; an unreadable log reads as
    empty.
    """
    remote = store_location(directory)
    if remote is not None:  # [object store] one object per append, under decisions/
        return store_protocol().read_remote_decision_log(remote)
    path = Path(directory) / DECISIONS
    events = []
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    event = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    continue
                if isinstance(event, dict):
                    events.append(event)
    except OSError:
        pass
    return events


def committed_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Committed checkpoint directories in ``directory``, oldest first (not verified).

    Temporary directories of unfinished saves are never listed: a save is invisible until its
    directory is renamed into place.

    A symbolic link named like a checkpoint is not listed: saves never create one, and
    following it would let retention delete, or a reader load, something outside the run.

    Raises:
        CheckpointNotFoundError: ``directory`` exists but cannot be listed (permissions).
    """
    directory = as_location(directory)
    return [directory / name for _, name in committed_steps(directory)]


def committed_steps(directory: Path) -> list[tuple[int, str]]:
    """``(step, name)`` of each committed checkpoint in ``directory``, oldest first: what
    :func:`committed_checkpoints` lists, without building a path per checkpoint (every save
    scans the directory, and a run may keep hundreds)."""
    if isinstance(directory, StorePath):  # [object store] the commit objects, listed
        return store_protocol().remote_committed_steps(directory)
    try:
        if not directory.is_dir():
            return []
        found = [(int(match.group(1)), entry.name) for entry in os.scandir(directory)
                 if (match := STEP_DIR_PATTERN.match(entry.name))
                 and entry.is_dir(follow_symlinks=False)]
    except OSError as exc:
        raise CheckpointNotFoundError(f"{directory} cannot be listed ({exc}); check its "
                                      "permissions") from None
    return sorted(found)


_T = TypeVar("_T")


def newest_that_passes(directory: str | os.PathLike[str], attempt: Callable[[Path], _T],
                       listed: list[tuple[int, str]] | None = None, *,
                       stacklevel: int = 4) -> _T:
    """``attempt`` on the committed checkpoints of the checkpoints folder ``directory``, newest
    first; the first success is returned.

    ``listed``: the committed ``(step, name)`` pairs of ``directory`` when the caller has just
    listed them. Each newer one that fails is reported with a
    :class:`CheckpointFallbackWarning`, attributed ``stacklevel`` frames up (the default: the
    caller of the public function that called this one).
    """
    directory = as_location(directory)
    candidates = (committed_checkpoints(directory) if listed is None
                  else [directory / name for _, name in listed])
    if not candidates:
        raise CheckpointNotFoundError(f"{directory} contains no ckptlab checkpoints")
    problems = []
    for path in reversed(candidates):
        try:
            result = attempt(path)
        except (CheckpointCorruptError, ForeignFileError) as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            warnings.warn(f"skipping unusable checkpoint: {problem}; falling back to "
                          f"{path.name}", CheckpointFallbackWarning, stacklevel=stacklevel)
        return result
    raise CheckpointCorruptError(
        f"none of the {len(candidates)} checkpoints in {directory} is valid "
        f"(newest problem: {problems[0]}); run 'python -m ckptlab verify "
        f"{directory}' for the full list")


def load_latest_valid(location: str | os.PathLike[str], *,
                      device: DevicePlacement = None) -> tuple[CheckpointInfo, dict[str, Any]]:
    """:func:`latest_valid_checkpoint`, verified and decoded in one pass per file: ``(info,
    {component: state})`` of the checkpoint at ``location``, or of the newest valid one there
    (see :func:`resolve_location`; newer damaged ones are skipped with a
    :class:`CheckpointFallbackWarning`)."""
    directory, specific, listed = _locate(location)
    if specific is not None:
        return load_checkpoint_state(specific, device=device)
    return newest_that_passes(directory,
                               lambda path: load_checkpoint_state(path, device=device), listed)


def read_pointer(directory: str | os.PathLike[str], name: str) -> str | None:
    """The checkpoint name a pointer file (``latest``, ``best``) holds, or ``None``."""
    record = read_pointer_record(directory, name)
    return record["checkpoint"] if record is not None else None


def read_pointer_record(directory: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The whole pointer file (``checkpoint``, ``step``; ``best`` also records ``metric`` and
    ``mode``), or ``None`` when it is missing or damaged. A pointer naming anything but a
    checkpoint directory name (a path, ``..``) counts as damaged, and so does anything but a
    regular file (a FIFO would block the reader, a symlink could point anywhere)."""
    remote = store_location(directory)
    if remote is not None:  # [object store]
        return store_protocol().read_remote_pointer(remote, name)[0]
    try:
        handle, _ = open_regular(Path(directory) / name, 65536)
        with handle:
            data = json.loads(handle.read(65536).decode("utf-8"))
    except (OSError, ValueError, RecursionError, CheckpointCorruptError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), str) \
            or not STEP_DIR_PATTERN.match(data["checkpoint"]):
        return None
    return data
