"""The sharded checkpoint layout (several ranks, one checkpoint) and its checks.

A checkpoint written by ``N`` ranks of a ``torch.distributed`` job is one ordinary ckptlab
checkpoint directory - same name, same manifest with a SHA-256 per file, same commit - whose
files are split by who wrote them::

    step_00000400/
        manifest.json           as for one process, plus "sharded": world size, DCP keys, ranks
        dcp/index.json          which tensor chunk and which value is where (JSON, rank 0)
        dcp/__0_0.bin           model and optimizer chunks written by rank 0, raw bytes ...
        dcp/__1_0.bin           ... and by rank 1 (DCP's planner deduplicates replicated ones)
        rank_00000/shard.json   which save this part belongs to: rank, world size, step, save id
        rank_00000/state.json   rank 0's own state (its replay-buffer shard, env, RNG, ...)
        rank_00000/tensors.safetensors
        rank_00001/...

The ``dcp/`` part is written and read by ``torch.distributed.checkpoint`` (its planner shards,
deduplicates and reshards) through ckptlab's storage layer (:mod:`.dcp_storage`), which stores
no pickle: nothing in a sharded checkpoint can run code when it is loaded. Everything here
works without ``torch.distributed``: it is what :mod:`.reader` calls to verify a sharded
checkpoint (a missing rank, or a part from another save, is named precisely), and what
``inspect`` uses to describe one. Saving and loading across ranks is in :mod:`.distributed`.

Every file read here is one the manifest lists, read through the reader's checks (a regular
file inside the checkpoint, no symlink, of the listed size, hash-verified, bounded).

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointCorruptError, CheckpointNotFoundError, IncompatibleCheckpointError
from .format import (
    DCP_DIR,
    DCP_INDEX,
    FORMAT_NAME,
    SHARD_INFO,
    SHARDED_KEY,
    STATE,
    TENSORS,
    canonical_json,
    load_json_bounded,
    member_bound,
    open_regular,
    read_safetensors_bytes,
    read_tensor_table,
    safetensors_chunks,
    state_json,
)
from .serialization import join_state, parse_state_json, split_state
from .verified import read_verified

_RANK_DIR = re.compile(r"^rank_(\d{5})$")


def rank_dir_name(rank: int) -> str:
    """The directory holding rank ``rank``'s own part (``rank_00001``)."""
    return f"rank_{rank:05d}"


def is_sharded(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest describes a checkpoint written by several ranks."""
    return isinstance(manifest.get(SHARDED_KEY), Mapping)


def world_size_of(manifest: Mapping[str, Any]) -> int:
    """The number of ranks that wrote a checkpoint (1 for an ordinary one); the manifest's
    reader has checked it is a whole number in bounds."""
    return manifest[SHARDED_KEY]["world_size"] if is_sharded(manifest) else 1


def sharded_load_error(path: Path, manifest: Mapping[str, Any]) -> IncompatibleCheckpointError:
    """The error for loading a sharded checkpoint where one process's checkpoint is expected."""
    n = world_size_of(manifest)
    return IncompatibleCheckpointError(
        f"{path} is a sharded checkpoint written by {n} rank(s) with torch.distributed; a "
        f"single-process run cannot load it. Resume it with 'ckptlab train --nproc {n}' (same "
        "world size: exact), another --nproc (resharded: not bit-exact), or export its weights "
        "with 'ckptlab export' (nothing was changed)")


# --------------------------------------------------------------------------------------------
# One rank's own part: encoded like a one-process checkpoint, plus shard.json
# --------------------------------------------------------------------------------------------

def encode_rank_part(states: Mapping[str, Any], *, rank: int, world_size: int, step: int,
                     save_id: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Encode one rank's component states as ``{file name: bytes}`` (no pickle), and describe
    each component (tensors, bytes) for the manifest.

    ``shard.json`` names the save the part belongs to, so a part copied in from another save
    (another step, or a killed attempt at the same step) is recognised by its content.
    """
    tree: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    components: dict[str, Any] = {}
    for name, state in states.items():
        tree[name], part = split_state(state, name)
        tensors.update(part)
        components[f"{rank_dir_name(rank)}/{name}"] = {
            "tensors": len(part), "json_bytes": len(canonical_json(tree[name])),
            "tensor_bytes": sum(t.numel() * t.element_size() for t in part.values())}
    info = {"rank": rank, "world_size": world_size, "step": step, "save_id": save_id}
    return {
        SHARD_INFO: canonical_json(info, readable=True),
        STATE: state_json(tree),
        TENSORS: b"".join(bytes(c) for c in safetensors_chunks(
            tensors, {"format": FORMAT_NAME, "rank": str(rank), "step": str(step)})),
    }, components


def decode_rank_part(files: Mapping[str, bytes], source: Path) -> dict[str, Any]:
    """Decode the (already verified) files of one rank's part into ``{component: state}``."""
    tree = parse_state_json(files[STATE], source / STATE)
    tensors = read_safetensors_bytes(files[TENSORS], source / TENSORS)
    try:
        return {name: join_state(sub, tensors) for name, sub in tree.items()}
    except (KeyError, ValueError) as exc:
        raise CheckpointCorruptError(f"{source}: state.json and tensors disagree ({exc})") \
            from None


# --------------------------------------------------------------------------------------------
# Verification (called by reader.verify_checkpoint before the hashes are checked)
# --------------------------------------------------------------------------------------------

def _rank_folder(checkpoint: Path, part: str) -> Path:
    """The folder of a rank's part, refused if it is a symlink or not a folder."""
    folder = checkpoint / part
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{folder} is missing") from None
    if not stat.S_ISDIR(mode):
        raise CheckpointCorruptError(f"{folder} is not a folder (a symbolic link or a file in "
                                     "its place); it is not followed")
    return folder


def check_shard_layout(checkpoint: Path, manifest: Mapping[str, Any]) -> None:
    """Check that every rank's part and every DCP file is present and from this save.

    ``shard.json`` is read through the reader's checks (listed, regular, bounded, its hash
    matched) before it is parsed.

    Raises:
        CheckpointCorruptError: a rank's part or a DCP file is missing, or a part belongs to
            another save; the message names the rank and what to do.
        CheckpointNotFoundError: the checkpoint was deleted while it was being checked (by
            retention, say): nothing is wrong with it, it is gone.
    """
    sharded = manifest[SHARDED_KEY]
    world_size, save_id = sharded["world_size"], sharded["save_id"]
    step = manifest["step"]
    try:
        for rank in range(world_size):
            part = rank_dir_name(rank)
            name = f"{part}/{SHARD_INFO}"
            if not os.path.lexists(checkpoint / part) or name not in manifest["files"]:
                raise CheckpointCorruptError(
                    f"{checkpoint}: rank {rank}'s shard ({part}/) is missing; this checkpoint "
                    f"was written by {world_size} ranks and cannot be resumed without it")
            _rank_folder(checkpoint, part)
            try:
                data = read_verified(checkpoint, manifest, name)
            except CheckpointCorruptError:
                # Name the save a foreign part came from, if it is one (the file is at most
                # 64 KiB, parsed only to compare two fields), else report the damage as is.
                _refuse_part_of_another_save(checkpoint, name, rank, step, save_id)
                raise
            _refuse_part_of_another_save(checkpoint, name, rank, step, save_id, data)
        missing = [name for name in manifest["files"] if not os.path.lexists(checkpoint / name)]
        if missing:
            raise CheckpointCorruptError(
                f"{checkpoint}: {', '.join(missing[:5])} missing (a rank's model/optimizer "
                "shard); this checkpoint cannot be resumed")
    except CheckpointCorruptError:
        if not os.path.lexists(checkpoint / "manifest.json"):  # deleted (retention) meanwhile
            raise CheckpointNotFoundError(f"{checkpoint} was deleted while it was being read "
                                          "(by retention or a prune)") from None
        raise


def _refuse_part_of_another_save(checkpoint: Path, name: str, rank: int, step: int,
                                 save_id: str, data: bytes | None = None) -> None:
    """Raise if ``name`` (a rank's ``shard.json``) says it belongs to another save."""
    if data is None:
        try:
            handle, _ = open_regular(checkpoint / name, member_bound(name))
            with handle:
                data = handle.read(member_bound(name))
        except (OSError, CheckpointCorruptError):
            return
    try:
        info = load_json_bounded(data, str(checkpoint / name))
    except CheckpointCorruptError:
        if data is None:
            return
        raise
    if not isinstance(info, dict) or type(info.get("step")) is not int:
        raise CheckpointCorruptError(f"{checkpoint / name} is not a shard description")
    their_step, their_id = info["step"], info.get("save_id")
    if their_step != step or their_id != save_id or info.get("rank") != rank:
        raise CheckpointCorruptError(
            f"{checkpoint}: rank {rank}'s shard is from another save (step {their_step}, save "
            f"{str(their_id)[:40]}, rank {str(info.get('rank'))[:10]}) than this checkpoint "
            f"(step {step}, save {save_id}); shards of different saves must never be mixed")


def describe_sharded(checkpoint: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What ``inspect`` shows of a sharded checkpoint: DCP tensors and each rank's part.

    Reads only the safetensors headers of the ranks' listed tensor files (bounded, no symlink
    followed); nothing else.
    """
    sharded = manifest[SHARDED_KEY]
    components: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for name, entry in manifest.get("components", {}).items():
        detail: dict[str, Any] = {}
        part, _, component = name.partition("/")
        if component and _RANK_DIR.match(part) and f"{part}/{TENSORS}" in manifest["files"]:
            if part not in tables:
                tables[part] = read_tensor_table(_rank_folder(checkpoint, part) / TENSORS)
            detail = {f"{part}/{k}": v for k, v in tables[part].items()
                      if k.startswith(component + "/")}
        components[name] = {**entry, "total_bytes": entry["tensor_bytes"] + entry["json_bytes"],
                            "tensors_detail": detail}
    return {"world_size": sharded["world_size"], "dcp_keys": sharded.get("dcp_keys"),
            "components": components}


def shard_files(checkpoint: str | Path) -> list[dict[str, Any]]:
    """Who wrote which file of a sharded checkpoint, and how big it is (from the manifest)."""
    from .format import read_manifest

    path = Path(checkpoint)
    manifest = read_manifest(path)
    rows = []
    for name, entry in sorted(manifest.get("files", {}).items()):
        top, _, leaf = name.partition("/")
        if top == DCP_DIR and leaf == DCP_INDEX:
            writer, what = "rank 0", "DCP index: which tensor chunk is where (JSON)"
        elif top == DCP_DIR:
            writer = f"rank {leaf[2:].split('_')[0]}"
            what = "model / optimizer chunks (DCP shard, raw bytes)"
        elif top.startswith("rank_"):
            writer, what = f"rank {int(top[5:])}", {
                SHARD_INFO: "which save this part belongs to", STATE: "its own state (JSON)",
                TENSORS: "its own arrays: buffer shard, RNG, ..."}.get(leaf, leaf)
        else:
            writer, what = "?", ""
        rows.append({"file": name, "written by": writer, "bytes": int(entry["bytes"]),
                     "holds": what})
    return rows
