"""The sharded checkpoint layout (several ranks, one checkpoint) and its checks.

A checkpoint written by ``N`` ranks of a ``torch.distributed`` job is one ordinary ckptlab
checkpoint directory - same name, same manifest with a SHA-256 per file, same commit - whose
files are split by who wrote them::

    step_00000400/
        manifest.json           as for one process, plus "sharded": world size, DCP keys, ranks
        dcp/.metadata           torch.distributed.checkpoint's index (written by rank 0)
        dcp/__0_0.distcp        model and optimizer tensors written by rank 0 ...
        dcp/__1_0.distcp        ... and by rank 1 (DCP deduplicates replicated tensors)
        rank_00000/shard.json   which save this part belongs to: rank, world size, step, save id
        rank_00000/state.json   rank 0's own state (its replay-buffer shard, env, RNG, ...)
        rank_00000/tensors.safetensors
        rank_00001/...

The ``dcp/`` directory is a plain DCP checkpoint: ``torch.distributed.checkpoint.load`` reads
it directly. Everything here works without ``torch.distributed``: it is what :mod:`.reader`
calls to verify a sharded checkpoint (a missing rank, or a part from another save, is named
precisely before any hash is checked), and what ``inspect`` uses to describe one. Saving and
loading across ranks is in :mod:`.distributed`.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointCorruptError, IncompatibleCheckpointError
from .format import (
    FORMAT_NAME,
    STATE,
    TENSORS,
    _canonical_json,
    parse_state_json,
    read_safetensors_bytes,
    read_tensor_table,
    safetensors_chunks,
    state_json,
)
from .serialization import join_state, split_state

DCP_DIR = "dcp"
DCP_METADATA = ".metadata"
SHARD_INFO = "shard.json"
SHARDED_KEY = "sharded"


def rank_dir_name(rank: int) -> str:
    """The directory holding rank ``rank``'s own part (``rank_00001``)."""
    return f"rank_{rank:05d}"


def is_sharded(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest describes a checkpoint written by several ranks."""
    return isinstance(manifest.get(SHARDED_KEY), Mapping)


def world_size_of(manifest: Mapping[str, Any]) -> int:
    """The number of ranks that wrote a checkpoint (1 for an ordinary one)."""
    return int(manifest[SHARDED_KEY]["world_size"]) if is_sharded(manifest) else 1


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
            "tensors": len(part), "json_bytes": len(_canonical_json(tree[name])),
            "tensor_bytes": sum(t.numel() * t.element_size() for t in part.values())}
    info = {"rank": rank, "world_size": world_size, "step": step, "save_id": save_id}
    return {
        SHARD_INFO: _canonical_json(info, readable=True),
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

def check_shard_layout(checkpoint: Path, manifest: Mapping[str, Any]) -> None:
    """Check that every rank's part and every DCP file is present and from this save.

    Raises:
        CheckpointCorruptError: a rank's part or a DCP file is missing, or a part belongs to
            another save; the message names the rank and what to do.
    """
    sharded = manifest[SHARDED_KEY]
    world_size, save_id = int(sharded["world_size"]), sharded.get("save_id")
    step = int(manifest["step"])
    for rank in range(world_size):
        part = checkpoint / rank_dir_name(rank)
        info_path = part / SHARD_INFO
        if not info_path.is_file():
            raise CheckpointCorruptError(
                f"{checkpoint}: rank {rank}'s shard ({part.name}/) is missing; this checkpoint "
                f"was written by {world_size} ranks and cannot be resumed without it")
        try:
            info = json.loads(info_path.read_text("utf-8"))
            their_step, their_id = int(info["step"]), info.get("save_id")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(f"{info_path} is unreadable ({exc})") from None
        if their_step != step or their_id != save_id:
            raise CheckpointCorruptError(
                f"{checkpoint}: rank {rank}'s shard is from another save (step {their_step}, "
                f"save {their_id}) than this checkpoint (step {step}, save {save_id}); shards "
                "of different saves must never be mixed")
    missing = [name for name in manifest.get("files", {}) if not (checkpoint / name).is_file()]
    if missing:
        raise CheckpointCorruptError(
            f"{checkpoint}: {', '.join(missing)} missing (a rank's model/optimizer shard); "
            "this checkpoint cannot be resumed")


def describe_sharded(checkpoint: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What ``inspect`` shows of a sharded checkpoint: DCP tensors and each rank's part."""
    sharded = manifest[SHARDED_KEY]
    components: dict[str, Any] = {}
    for name, entry in manifest.get("components", {}).items():
        detail: dict[str, Any] = {}
        rank, _, component = name.partition("/")
        tensors_file = checkpoint / rank / TENSORS
        if component and tensors_file.is_file():
            detail = {k: v for k, v in read_tensor_table(tensors_file).items()
                      if k.startswith(component + "/")}
            detail = {f"{rank}/{k}": v for k, v in detail.items()}
        components[name] = {**entry, "total_bytes": entry["tensor_bytes"] + entry["json_bytes"],
                            "tensors_detail": detail}
    return {"world_size": int(sharded["world_size"]), "dcp_keys": sharded.get("dcp_keys"),
            "components": components}


def shard_files(checkpoint: str | Path) -> list[dict[str, Any]]:
    """Who wrote which file of a sharded checkpoint, and how big it is (from the manifest)."""
    from .format import read_manifest

    path = Path(checkpoint)
    manifest = read_manifest(path)
    rows = []
    for name, entry in sorted(manifest.get("files", {}).items()):
        top, _, leaf = name.partition("/")
        if top == DCP_DIR and leaf == DCP_METADATA:
            writer, what = "rank 0", "DCP index: which tensor is where"
        elif top == DCP_DIR:
            writer = f"rank {leaf[2:].split('_')[0]}"
            what = "model / optimizer tensors (DCP shard)"
        elif top.startswith("rank_"):
            writer, what = f"rank {int(top[5:])}", {
                SHARD_INFO: "which save this part belongs to", STATE: "its own state (JSON)",
                TENSORS: "its own arrays: buffer shard, RNG, ..."}.get(leaf, leaf)
        else:
            writer, what = "?", ""
        rows.append({"file": name, "written by": writer, "bytes": int(entry["bytes"]),
                     "holds": what})
    return rows
