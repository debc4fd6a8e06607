"""The read side: find committed checkpoints, verify them, decode them, restore components.

How a load stays safe: JSON and safetensors cannot execute code, and ckptlab never calls
``pickle`` or ``torch.load``. Every file's size and SHA-256 are checked against the manifest
(which checks its own hash) before its contents are used; nothing is loaded into any component
unless the whole checkpoint verified. A newest checkpoint that fails is skipped, with a warning,
for the newest one that passes.

Introduced in notebook ``01_pipeline_trace``; failure handling in ``07_failure_modes``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
    STATE,
    TENSORS,
    _STEP_DIR,
    _foreign_error,
    _sha256,
    checkpoint_step,
    decode_tensors,
    describe_foreign_file,
    open_member,
    parse_state_json,
    read_manifest,
)
from .serialization import join_state
from .sharded import check_shard_layout, is_sharded, sharded_load_error


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was unusable and an older valid one is used instead."""


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` can be checkpointed."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...



def _read_verified(checkpoint: Path, manifest: Mapping[str, Any], name: str) -> bytes:
    entry = manifest.get("files", {}).get(name)
    if entry is None:
        raise CheckpointCorruptError(f"{checkpoint}: manifest does not list {name}")
    path = checkpoint / name
    try:
        with open_member(checkpoint, name, entry["bytes"]) as handle:
            data = handle.read(entry["bytes"] + 1)
    except OSError as exc:  # unreadable media while reading
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
        CheckpointNotFoundError: nothing exists at ``checkpoint``.
        CheckpointCorruptError, ForeignFileError, UnsupportedFormatError: what is wrong
            (an unreadable file, permissions included, counts as corrupt, so callers fall
            back past it).
    """
    path = Path(checkpoint)
    _require_exists(path)
    manifest = read_manifest(path)
    if is_sharded(manifest):  # [sharded] name a missing rank or a mixed-in part precisely
        check_shard_layout(path, manifest)
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
    _require_exists(path)
    manifest = read_manifest(path)
    if is_sharded(manifest):  # [sharded] loaded across ranks by engine.distributed instead
        raise sharded_load_error(path, manifest)
    tree = parse_state_json(_read_verified(path, manifest, STATE), path / STATE)
    tensors = decode_tensors(_read_verified(path, manifest, TENSORS), path / TENSORS)
    wanted = list(tree) if keys is None else list(keys)
    missing = [k for k in wanted if k not in tree]
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


def _require_exists(path: Path) -> None:
    """Say "not found", not "corrupt", when nothing is at ``path``."""
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
    path = Path(location)
    try:
        return _resolve(path)
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
    return newest_valid_checkpoint(directory)



def read_decision_log(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every event in ``directory/decisions.jsonl``.

    The log is a record for people, never needed to load anything: a line torn by a crash,
    or damaged (not UTF-8, not JSON, not an object), is skipped; an unreadable log reads as
    empty.
    """
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
    directory = Path(directory)
    try:
        if not directory.is_dir():
            return []
        found = [(checkpoint_step(entry.path), Path(entry.path))
                 for entry in os.scandir(directory)
                 if _STEP_DIR.match(entry.name) and entry.is_dir(follow_symlinks=False)]
    except OSError as exc:
        raise CheckpointNotFoundError(f"{directory} cannot be listed ({exc}); check its "
                                      "permissions") from None
    return [p for _, p in sorted(found)]


def newest_valid_checkpoint(directory: str | os.PathLike[str]) -> CheckpointInfo:
    """Verify the checkpoints in ``directory`` newest first and return the first valid one.

    Each newer one that fails is reported with a :class:`CheckpointFallbackWarning`.

    Raises:
        CheckpointNotFoundError: there are no checkpoints.
        CheckpointCorruptError: there are checkpoints but none is valid.
    """
    candidates = committed_checkpoints(directory)
    if not candidates:
        raise CheckpointNotFoundError(f"{directory} contains no ckptlab checkpoints")
    problems = []
    for path in reversed(candidates):
        try:
            info = verify_checkpoint(path)
        except (CheckpointCorruptError, ForeignFileError) as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            warnings.warn(f"skipping unusable checkpoint: {problem}; falling back to "
                          f"{info.name}", CheckpointFallbackWarning, stacklevel=3)
        return info
    raise CheckpointCorruptError(
        f"none of the {len(candidates)} checkpoints in {directory} is valid "
        f"(newest problem: {problems[0]}); run 'python -m ckptlab verify "
        f"{directory}' for the full list")


def read_pointer(directory: str | os.PathLike[str], name: str) -> str | None:
    """The checkpoint name a pointer file (``latest``, ``best``) holds, or ``None``."""
    record = read_pointer_record(directory, name)
    return record["checkpoint"] if record is not None else None


def read_pointer_record(directory: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The whole pointer file (``checkpoint``, ``step``; ``best`` also records ``metric`` and
    ``mode``), or ``None`` when it is missing or damaged. A pointer naming anything but a
    checkpoint directory name (a path, ``..``) counts as damaged."""
    try:
        with open(Path(directory) / name, "rb") as f:
            data = json.loads(f.read(65536).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), str) \
            or not _STEP_DIR.match(data["checkpoint"]):
        return None
    return data
