"""Convert a sharded checkpoint of the old layout (format 2-3, a pickled DCP index) to format 4.

ckptlab 0.3 and older stored the ``dcp/`` part of a sharded checkpoint in DCP's own file
layout: ``dcp/.metadata`` (a pickle) and ``dcp/__R_N.distcp`` (``torch.save`` archives). Any
such file can be made to run code when it is unpickled, so ckptlab no longer loads them (the
reader refuses them with :func:`~.format.legacy_sharded_error`). This module is the one way
out, and only on the user's explicit word (``trust_pickle=True``, ``--trust-pickle``) for a
checkpoint whose origin they trust: it checks every file against the manifest's hashes (which
catches damage, not tampering), unpickles the DCP part with torch's own reader in this one
process, and writes a new, pickle-free checkpoint into a new run directory. The original is
never changed.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import warnings
from pathlib import Path
from typing import Any

from .errors import CheckpointCorruptError, CkptlabError
from .format import (
    CHECKPOINTS_SUBDIR,
    DCP_DIR,
    LATEST,
    MANIFEST,
    SHARDED_FORMAT_VERSION,
    SHARDED_KEY,
    TEMP_PREFIX,
    canonical_json,
    checkpoint_dir_name,
    load_json_bounded,
    manifest_self_hash,
    open_regular,
)
from .reader import CheckpointInfo, verify_checkpoint
from .writer import fsync_dir, write_durable, write_pointer

_LEGACY_FILE = re.compile(r"^(?:dcp/(?:\.metadata|__\d+_\d+\.distcp)"
                          r"|rank_\d{5}/(?:shard\.json|state\.json|tensors\.safetensors))$")
_MAX_MANIFEST = 16 * 1024 * 1024
_MAX_FILE = 1024**4


def _legacy_manifest(checkpoint: Path) -> dict[str, Any]:
    """The manifest of an old-layout sharded checkpoint: its self-hash and file table checked."""
    try:
        handle, _ = open_regular(checkpoint / MANIFEST, _MAX_MANIFEST)
        with handle:
            manifest = load_json_bounded(handle.read(_MAX_MANIFEST), str(checkpoint / MANIFEST))
    except FileNotFoundError:
        raise CkptlabError(f"{checkpoint} has no manifest.json; give a checkpoint directory "
                           "(step_NNNNNNNN)") from None
    except OSError as exc:
        raise CkptlabError(f"{checkpoint / MANIFEST} cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_sha256") != \
            manifest_self_hash(manifest):
        raise CheckpointCorruptError(f"{checkpoint}: manifest damaged (its self-hash differs)")
    files, sharded = manifest.get("files"), manifest.get(SHARDED_KEY)
    if not isinstance(sharded, dict) or not isinstance(files, dict) \
            or f"{DCP_DIR}/.metadata" not in files:
        raise CkptlabError(f"{checkpoint} is not a sharded checkpoint of the old layout (no "
                           "dcp/.metadata); nothing to convert")
    for name, entry in files.items():
        if not isinstance(name, str) or not _LEGACY_FILE.match(name) \
                or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int) \
                or not 0 <= entry["bytes"] <= _MAX_FILE:
            raise CheckpointCorruptError(f"{checkpoint}: the manifest lists {str(name)[:80]!r} "
                                         "in a form ckptlab never wrote")
    return manifest


def _verified_bytes(checkpoint: Path, name: str, entry: dict[str, Any]) -> bytes:
    folder = checkpoint / name.split("/", 1)[0]
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise CheckpointCorruptError(f"{folder} is not a folder; it is not followed")
    handle, size = open_regular(checkpoint / name, _MAX_FILE)
    with handle:
        data = handle.read(entry["bytes"] + 1)
    if size != entry["bytes"] or len(data) != entry["bytes"] \
            or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointCorruptError(f"{checkpoint / name} does not match the manifest "
                                     "(damaged); it is not converted")
    return data


def migrate_legacy_sharded(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str],
                           *, trust_pickle: bool = False) -> CheckpointInfo:
    """Convert one old-layout sharded checkpoint into ``OUT/checkpoints/step_N`` (format 4).

    Args:
        checkpoint: the old checkpoint directory (``.../checkpoints/step_NNNNNNNN``).
        out: a new run directory (must not exist yet, or be empty); resume from it with
            ``ckptlab train --nproc N --run-dir OUT --resume auto``.
        trust_pickle: must be ``True``: the old DCP part is unpickled, which runs whatever code
            the file asks for. Say so only for a checkpoint you or someone you trust wrote.

    Returns the converted checkpoint, verified.

    Raises:
        CkptlabError: ``trust_pickle`` is not given, ``out`` is in use, the checkpoint is not
            of the old layout, or one of its files fails its hash (nothing is written then).
    """
    source, target_run = Path(checkpoint), Path(out)
    if not trust_pickle:
        raise CkptlabError(f"converting {source} unpickles its DCP index and data, which can "
                           "run code: pass --trust-pickle (trust_pickle=True) only if you trust "
                           "who wrote it; nothing was done")
    if target_run.exists() and (not target_run.is_dir() or any(target_run.iterdir())):
        raise CkptlabError(f"{target_run} is not empty; give a new directory for the converted "
                           "run (nothing was written)")
    manifest = _legacy_manifest(source)
    contents = {name: _verified_bytes(source, name, entry)
                for name, entry in manifest["files"].items()}  # all checked before unpickling

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .dcp_storage import HashingDCPWriter, JsonSavePlanner

    step = manifest["step"]
    checkpoints = target_run / CHECKPOINTS_SUBDIR
    temp = checkpoints / f"{TEMP_PREFIX}{checkpoint_dir_name(step)}-migrate"
    final = checkpoints / checkpoint_dir_name(step)
    checkpoints.mkdir(parents=True, exist_ok=True)
    try:
        old_dcp = temp / "old-dcp"
        for name, data in contents.items():
            path = temp / name if not name.startswith(DCP_DIR + "/") else \
                old_dcp / name.split("/", 1)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            write_durable(path, data)  # the verified bytes: nothing can change in between
        reader = FileSystemReader(str(old_dcp))
        metadata = reader.read_metadata()  # the unpickling the user trusted
        state: dict[str, Any] = {
            fqn: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
            if isinstance(meta, TensorStorageMetadata) else None
            for fqn, meta in metadata.state_dict_metadata.items()}
        with warnings.catch_warnings():  # "assuming the intent is to load in one process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader, planner=DefaultLoadPlanner(), no_dist=True)
            writer = HashingDCPWriter(temp / DCP_DIR)
            dcp.save(state, storage_writer=writer, planner=JsonSavePlanner(), no_dist=True)
        shutil.rmtree(old_dcp)
        files = {name: entry for name, entry in manifest["files"].items()
                 if not name.startswith(DCP_DIR + "/")}
        files.update(writer.written)
        converted = {**manifest, "format_version": SHARDED_FORMAT_VERSION,
                     "files": dict(sorted(files.items())),
                     "migrated_from": {"checkpoint": str(source.resolve()),
                                       "manifest_sha256": manifest["manifest_sha256"],
                                       "format_version": manifest.get("format_version")}}
        converted.pop("manifest_sha256")
        converted["manifest_sha256"] = manifest_self_hash(converted)
        write_durable(temp / MANIFEST, canonical_json(converted, readable=True))
        for folder in {path.parent for path in temp.rglob("*") if path.is_file()} | {temp}:
            fsync_dir(folder)
        os.replace(temp, final)
        write_pointer(checkpoints, LATEST, final.name, step)
        fsync_dir(checkpoints)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return verify_checkpoint(final)
