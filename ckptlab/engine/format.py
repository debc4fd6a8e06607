"""The on-disk format (versions 1-4): names, the manifest, the files' encodings, read and write.

Versions: 1 (ckptlab 0.1), 2 (ckptlab 0.2) and 3 (ckptlab 0.3) share the layout below. Version 2
adds state-tree markers that version-1 readers do not know (``OrderedDict`` kept as such,
big-endian arrays, float8 and complex tensors), keeps each component's key order in
``state.json``, and allows sharded checkpoints (several ranks, see :mod:`.sharded`). Version 3
lets a file entry carry ``sha256_pieces`` - ``{"piece_bytes": P, "digests": [...]}``, the
SHA-256 of each consecutive P bytes - instead of one ``sha256``; the writer uses it from
:data:`.hashing.PIECEWISE_MIN` bytes on, so large files are hashed on every core. Every older
checkpoint is read unchanged; a reader meeting a newer version says to upgrade instead of
calling it corrupt.

Version 4 (ckptlab 0.4) changes sharded checkpoints only: torch.distributed.checkpoint's part is
stored without pickle (``dcp/index.json`` and one raw data file per rank, see
:mod:`.dcp_storage`). A one-process save still writes version 3, which every ckptlab from 0.3
reads. A sharded checkpoint of version 2 or 3 holds DCP's pickled index: it is refused, never
unpickled, with the command that converts it (:func:`legacy_sharded_error`).

One directory per checkpoint::

    <checkpoints>/
        latest                   JSON pointer {"checkpoint": "step_00003000", "step": 3000}
        best                     the same, for the best checkpoint by the chosen metric
        decisions.jsonl          why each checkpoint was saved, kept or deleted
        step_00003000/
            manifest.json        format, step, times, metrics, config and its hash,
                                 library versions, components, SHA-256 (or per-piece SHA-256s)
                                 and size of every file, and the SHA-256 of the manifest itself
            tensors.safetensors  every tensor and array, keyed "component/path/to/leaf"
            state.json           everything else, per component

Both directions of every encoding live here: the safetensors writer and the header reader, the
canonical JSON and the manifest's self-hash. Nothing here unpickles: JSON and safetensors cannot
run code. The write protocol (temp dir, fsync, rename) is in :mod:`.writer`, verification and
decoding in :mod:`.reader`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
import sys
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy
import torch

from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    ForeignFileError,
    UnsupportedFormatError,
)
from .location import store_location, store_protocol
from .version import __version__

FORMAT_NAME = "ckptlab-checkpoint"
# What a one-process save writes; a sharded save writes SHARDED_FORMAT_VERSION. A reader takes
# every version up to NEWEST_FORMAT_VERSION.
FORMAT_VERSION = 3
SHARDED_FORMAT_VERSION = 4
NEWEST_FORMAT_VERSION = 4

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
STATE = "state.json"
LATEST = "latest"
BEST = "best"
DECISIONS = "decisions.jsonl"
CHECKPOINTS_SUBDIR = "checkpoints"
ABANDONED_SUBDIR = "abandoned"  # checkpoints moved aside by a rollback (never deleted)

STEP_DIR_PATTERN = re.compile(r"^step_(\d{8,})$")
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
REPLACED_PREFIX = ".replaced-"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# The member files a format-1 manifest may list: plain names, never paths.
MEMBER_FILES = frozenset({TENSORS, STATE})
# A sharded checkpoint (one written by several ranks, see .sharded) lists instead, one level
# down: each rank's part (rank_00001/state.json, ...) and the DCP files (dcp/index.json and
# one data file per rank, dcp/__1_0.bin). Nothing else, and never a path that leaves the
# checkpoint directory.
SHARDED_KEY = "sharded"
SHARD_INFO = "shard.json"
DCP_DIR = "dcp"
DCP_INDEX = "index.json"
DCP_DATA_FILE = "__{rank}_0.bin"
_SHARDED_MEMBER = re.compile(
    r"^(?:rank_\d{5}/(?:shard\.json|state\.json|tensors\.safetensors)"
    r"|dcp/(?:index\.json|__\d{1,6}_0\.bin))$")
# What sharded checkpoints of versions 2 and 3 listed under dcp/: DCP's own pickled index and
# torch.save'd items. Recognised only to refuse them with the way out.
_LEGACY_DCP_MEMBER = re.compile(r"^dcp/(?:\.metadata|__\d+_\d+\.distcp)$")
MAX_WORLD_SIZE = 65536


def is_member_name(name: str, sharded: bool) -> bool:
    """Whether a manifest may list ``name`` as one of its files."""
    return name in MEMBER_FILES if not sharded else bool(_SHARDED_MEMBER.match(name))


def member_bound(name: str) -> int:
    leaf = name.rsplit("/", 1)[-1]
    return _MAX_MEMBER_BYTES.get(leaf, _MAX_MEMBER_BYTES[TENSORS])


def legacy_sharded_error(checkpoint: Path) -> UnsupportedFormatError:
    """The refusal of a sharded checkpoint written before format 4 (DCP's pickled index)."""
    return UnsupportedFormatError(
        f"{checkpoint} is a sharded checkpoint in the layout of ckptlab 0.3 and older, whose "
        "DCP index is a pickle that could run code when loaded; ckptlab no longer unpickles "
        "checkpoint files. If you trust where it came from, convert it once with 'ckptlab "
        f"migrate-sharded {checkpoint} --trust-pickle --out NEW_RUN_DIR' (a converted copy in "
        "a new run directory; the original is not changed) and resume from there")
# Bounds applied before anything is read, so a hostile manifest cannot make a reader allocate
# without limit: state.json is parsed whole, the tensor file is read whole.
_MAX_MEMBER_BYTES = {STATE: 4 * 1024**3, TENSORS: 1024**4, SHARD_INFO: 64 * 1024,
                     DCP_INDEX: 256 * 1024**2}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# State trees of real components are a few levels deep. The reader refuses deeper ones (its
# rebuild recurses), and the writer (serialization.split_state) refuses to write them.
MAX_STATE_DEPTH = 200


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken at ``step`` (zero-padded, sorts by step)."""
    return f"step_{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step a checkpoint directory's name encodes (``step_00003000`` -> 3000)."""
    # (a store location is no os.PathLike: its .name is the last part of its key)
    match = STEP_DIR_PATTERN.match(path.name if not isinstance(path, (str, os.PathLike))
                            else Path(path).name)
    if match is None:
        raise CkptlabError(f"{path} is not named like a checkpoint (step_NNNNNNNN)")
    return int(match.group(1))


def library_versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Versions of the libraries that shape a checkpoint's contents, recorded in the manifest.

    ``extra`` adds the versions a caller's own components depend on (the DQN run adds
    gymnasium's), so the engine itself names no library beyond its own.
    """
    import safetensors

    return {
        "ckptlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        **dict(extra or {}),
    }



_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32",
    torch.uint64: "U64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}


def storable_dtype(dtype: torch.dtype) -> bool:
    """Whether a tensor of ``dtype`` can be written to the safetensors file."""
    return dtype in _SAFETENSORS_DTYPES


# dtypes numpy has too (and no conjugate or negative view bit): their bytes are taken through
# numpy, whose reshape and view cost a fraction of torch's per-call overhead - a save takes
# the bytes of every tensor (a DQN state has 40) on the training thread.
_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool}


def tensor_bytes(tensor: torch.Tensor) -> numpy.ndarray:
    """The raw bytes of a contiguous CPU tensor as a flat uint8 array, without a copy."""
    detached = tensor.detach()
    if detached.dtype in _NUMPY_DTYPES and detached.numel() > 1 and detached.is_contiguous():
        return detached.numpy().reshape(-1).view(numpy.uint8)
    flat = detached.reshape(-1)
    if flat.numel() <= 1 and flat.stride(0) != 1:  # such strides still count as contiguous
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).numpy()


def safetensors_order(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The order tensors are laid out in a file: largest element size first, then by name.

    Packed back to back in this order from an 8-byte aligned start, every tensor is aligned
    to its own element size.
    """
    return sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))


def safetensors_chunks(tensors: Mapping[str, torch.Tensor],
                       metadata: Mapping[str, str]) -> list[bytes | numpy.ndarray]:
    """The bytes of a safetensors file as a list of chunks, without copying tensor data: two
    ``bytes`` (length and header), then each tensor's bytes as a flat ``uint8`` array.

    Layout (the public safetensors format): 8-byte little-endian header length, a JSON header
    of dtypes, shapes and byte ranges, then the raw little-endian data. Tensors are ordered by
    element size (largest first) so every tensor stays aligned, like the reference writer.
    The result is read back by ``safetensors.torch.load``.
    """
    order = safetensors_order(tensors)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks: list[bytes | memoryview] = []
    offset = 0
    for key in order:
        tensor = tensors[key]
        data = tensor_bytes(tensor)  # a flat view (a non-contiguous tensor is copied)
        size = data.nbytes
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
        if size:
            chunks.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    return [len(text).to_bytes(8, "little"), text, *chunks]



# Per-piece digests (format 3): pieces of at least 64 KiB keep a manifest's digest list short
# (a 100 GB file at the 4 MiB default: 24 000 digests, 1.6 MB of JSON, within the bound).
_MIN_PIECE_BYTES = 64 * 1024


def _valid_pieces(pieces: Any, nbytes: int) -> bool:
    if not isinstance(pieces, dict) or set(pieces) != {"piece_bytes", "digests"}:
        return False
    size, digests = pieces["piece_bytes"], pieces["digests"]
    if not _is_int(size) or not _MIN_PIECE_BYTES <= size <= 1 << 30 \
            or not isinstance(digests, list):
        return False
    return len(digests) == -(-nbytes // size) and all(
        isinstance(d, str) and _HEX64.match(d) for d in digests)


def describe_digest(entry: Mapping[str, Any], digits: int = 16) -> str:
    """A file entry's digest for people: the first ``digits`` hex digits of its SHA-256, or
    how many per-piece SHA-256s it has."""
    pieces = entry.get("sha256_pieces")
    if pieces is None:
        return str(entry["sha256"])[:digits]
    return (f"{len(pieces['digests'])} pieces of {pieces['piece_bytes'] // 1024} KiB, "
            f"first {pieces['digests'][0][:digits] if pieces['digests'] else '-'}")


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(chunks: Sequence[bytes | memoryview]) -> dict[str, Any]:
    """A manifest file entry (size and SHA-256) for bytes held in memory."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return {"bytes": sum(memoryview(c).nbytes for c in chunks), "sha256": digest.hexdigest()}


def canonical_json(obj: Any, readable: bool = False) -> bytes:
    # indent= switches json to its pure-Python encoder (~10x slower), so only small files
    # meant for people (manifest, pointer) are indented; state.json is compact.
    return json.dumps(obj, sort_keys=True, allow_nan=False, indent=1 if readable else None,
                      separators=None if readable else (",", ":")).encode("utf-8")


def state_json(obj: Any) -> bytes:
    """Compact JSON of one component's state tree, in the tree's own key order.

    Not sorted: a component's ``state_dict()`` order is part of its state (an ``OrderedDict``
    of layers, a dict whose order a program relies on) and must come back as it was.
    """
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def manifest_self_hash(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256_of(canonical_json(body))



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


def foreign_error(path: Path, what: str) -> ForeignFileError:
    return ForeignFileError(
        f"{path} is {what}, not a ckptlab checkpoint. ckptlab never unpickles files, because "
        "loading a pickle can run arbitrary code; nothing in it was executed. Point at a "
        "ckptlab checkpoint directory (it contains manifest.json) or a run directory."
    )


def open_regular(path: Path, max_bytes: int) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes``.

    The last component is never followed if it is a symlink (``O_NOFOLLOW``), and a FIFO or
    device is refused from ``fstat`` of the opened descriptor (``O_NONBLOCK`` keeps a FIFO
    from blocking the open itself), so no hostile entry can make a reader hang, read outside
    the checkpoint or read without end. Returns the open file and its size.

    Raises:
        FileNotFoundError: nothing is there.
        CheckpointCorruptError: a symlink, not a regular file, or too large.
        OSError: any other failure to open (permissions, I/O).
    """
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():  # Windows: no O_NOFOLLOW
        raise CheckpointCorruptError(f"{path} is a symbolic link; checkpoint files never are")
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise CheckpointCorruptError(
                f"{path} is a symbolic link; checkpoint files never are, so it is not "
                "followed") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointCorruptError(f"{path} cannot be read: not a regular file (a "
                                         "directory, FIFO or device in its place)")
        if info.st_size > max_bytes:
            raise CheckpointCorruptError(f"{path} has {info.st_size} bytes, more than the "
                                         f"{max_bytes} a checkpoint file may have")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def open_member(checkpoint: Path, name: str, expected_bytes: int) -> BinaryIO:
    """Open one member file of a checkpoint safely, before any of its bytes are read.

    ``name`` must be a plain file name from the format's allow-list (:data:`MEMBER_FILES`):
    never a path, so nothing outside the checkpoint directory can be named. The file must be
    a regular file (no symlink, FIFO or device) whose size equals ``expected_bytes`` (the
    manifest's record) and stays within a bound for its kind.

    Raises:
        CheckpointNotFoundError: the checkpoint directory does not exist.
        CheckpointCorruptError: the name, the kind of file or its size is wrong, the file is
            missing or cannot be read.
    """
    if not (is_member_name(name, sharded=False) or is_member_name(name, sharded=True)):
        raise CheckpointCorruptError(f"{checkpoint}: the manifest names {name!r}, which is not "
                                     f"a checkpoint file ({', '.join(sorted(MEMBER_FILES))}, "
                                     "or a rank's part or DCP file of a sharded checkpoint)")
    bound = member_bound(name)
    if "/" in name:  # a sharded member: its folder must be a real folder, not a symlink
        folder = checkpoint / name.split("/", 1)[0]
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise CheckpointCorruptError(f"{folder} is not a folder (a symbolic link or a "
                                             "file in its place); it is not followed")
        except FileNotFoundError:
            if not os.path.lexists(checkpoint):  # deleted (by retention, say) meanwhile
                raise CheckpointNotFoundError(f"{checkpoint} does not exist") from None
            raise CheckpointCorruptError(f"{folder} is missing") from None
    if isinstance(expected_bytes, bool) or not isinstance(expected_bytes, int) \
            or not 0 <= expected_bytes <= bound:
        raise CheckpointCorruptError(f"{checkpoint}: the manifest records an impossible size "
                                     f"for {name} ({expected_bytes!r})")
    path = checkpoint / name
    try:
        handle, size = open_regular(path, bound)
    except FileNotFoundError:
        if not os.path.lexists(checkpoint):
            raise CheckpointNotFoundError(f"{checkpoint} does not exist") from None
        raise CheckpointCorruptError(f"{path} is missing") from None
    except OSError as exc:  # a directory in its place, unreadable media, permissions
        raise CheckpointCorruptError(f"{path} cannot be read ({exc})") from None
    if size != expected_bytes:
        handle.close()
        raise CheckpointCorruptError(
            f"{path} has {size} bytes but the manifest records {expected_bytes} "
            "(truncated or overwritten)")
    return handle


def load_json_bounded(data: bytes, what: str) -> Any:
    """``json.loads`` that turns every parse failure into :class:`CheckpointCorruptError`.

    Covers what ``json`` itself reports with other exceptions: nesting deep enough to
    exhaust the stack (``RecursionError``) and integers longer than Python converts (a
    5000-digit number, ``ValueError``).
    """
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointCorruptError(f"{what} is not valid JSON ({exc})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def validate_manifest(manifest: Any, path: Path) -> None:
    """Check the types of every manifest field a reader relies on.

    Raises:
        CheckpointCorruptError: a field is missing or has the wrong type, or the file table
            names anything other than the format's member files.
    """
    def bad(what: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"{path}: {what}; the manifest is damaged or was not "
                                      "written by ckptlab")

    step = manifest.get("step")
    if not _is_int(step) or not 0 <= step < 10**15:
        raise bad(f"step {step!r} is not a non-negative whole number")
    files = manifest.get("files")
    sharded = isinstance(manifest.get(SHARDED_KEY), dict)
    if sharded:
        if manifest["format_version"] < SHARDED_FORMAT_VERSION or (isinstance(files, dict) and any(
                isinstance(n, str) and _LEGACY_DCP_MEMBER.match(n) for n in files)):
            raise legacy_sharded_error(path.parent)
        if not isinstance(files, dict) or not files \
                or not all(isinstance(n, str) and is_member_name(n, True) for n in files):
            got = sorted(map(str, files)) if isinstance(files, dict) else type(files).__name__
            raise bad("its file table must list only ranks' parts (rank_NNNNN/...) and DCP "
                      f"files (dcp/...) (got {got})")
    elif not isinstance(files, dict) or set(files) != MEMBER_FILES:
        raise bad(f"its file table must list exactly {', '.join(sorted(MEMBER_FILES))} "
                  f"(got {sorted(files) if isinstance(files, dict) else type(files).__name__})")
    for name, entry in files.items():
        if not isinstance(entry, dict) or not _is_int(entry.get("bytes")) \
                or not 0 <= entry["bytes"] <= member_bound(name):
            raise bad(f"the entry for {name} needs a size in bytes and a SHA-256")
        if "sha256_pieces" in entry and manifest["format_version"] >= 3:
            if "sha256" in entry or not _valid_pieces(entry["sha256_pieces"], entry["bytes"]):
                raise bad(f"the entry for {name} needs either one SHA-256 or a valid list of "
                          "per-piece SHA-256s (piece_bytes, and one digest per piece)")
        elif not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
            raise bad(f"the entry for {name} needs a size in bytes and a SHA-256")
    if sharded:
        _validate_sharded_section(manifest[SHARDED_KEY], files, manifest, bad)
    components = manifest.get("components")
    if not isinstance(components, dict) or not all(
            isinstance(c, dict) and all(_is_int(c.get(k)) and c[k] >= 0
                                        for k in ("tensors", "tensor_bytes", "json_bytes"))
            for c in components.values()):
        raise bad("its components table is malformed")
    for key in ("metrics", "versions"):  # always written; inspect and retention read them
        if not isinstance(manifest.get(key), dict):
            raise bad(f"'{key}' is missing or not an object")
    if not all(isinstance(v, str) for v in manifest["versions"].values()):
        raise bad("library versions are not strings")
    for key in ("config", "lineage", "resumed_from", "save_policy_state"):
        if not isinstance(manifest.get(key), (dict, type(None))):
            raise bad(f"'{key}' is neither an object nor null")
    for key in ("created", "config_sha256"):
        if not isinstance(manifest.get(key), (str, type(None))):
            raise bad(f"'{key}' is not a string")
    if not isinstance(manifest.get("created_unix", 0.0), (int, float)) or \
            isinstance(manifest.get("created_unix"), bool):
        raise bad("'created_unix' is not a number")
    for key in ("episode", "epoch", "total_steps"):
        if key in manifest and manifest[key] is not None and not _is_int(manifest[key]):
            raise bad(f"'{key}' is not a whole number")
    if not isinstance(manifest.get("training_seconds", 0.0), (int, float, type(None))):
        raise bad("'training_seconds' is not a number")
    if not isinstance(manifest.get("save_reasons", []), list):
        raise bad("'save_reasons' is not a list")


_DCP_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _validate_sharded_section(section: dict[str, Any], files: dict[str, Any],
                              manifest: Mapping[str, Any], bad: Any) -> None:
    """Type-check a sharded manifest's ``sharded`` section against its file table: a world
    size in bounds, every rank's part and the DCP index listed, nothing of a rank that is not
    there, and the DQN run's ``dcp_aliases`` a mapping of names."""
    world_size = section.get("world_size")
    if not _is_int(world_size) or not 1 <= world_size <= MAX_WORLD_SIZE:
        raise bad(f"its world size {world_size!r} is not a whole number from 1 to "
                  f"{MAX_WORLD_SIZE}")
    save_id = section.get("save_id")
    if not isinstance(save_id, str) or not 0 < len(save_id) <= 200:
        raise bad("its save id is not a short string")
    if section.get("dcp_dir", DCP_DIR) != DCP_DIR:
        raise bad(f"its DCP folder is not '{DCP_DIR}'")
    keys = section.get("dcp_keys")
    if not isinstance(keys, list) or len(keys) > 1000 \
            or not all(isinstance(k, str) and _DCP_KEY.match(k) for k in keys):
        raise bad("its DCP keys are not a list of names")
    ranks = section.get("ranks")
    expected = [f"rank_{r:05d}" for r in range(world_size)]
    if ranks is not None and ranks != expected:
        raise bad(f"its list of ranks does not match its world size {world_size}")
    if not isinstance(section.get("backend"), (str, type(None))):
        raise bad("its backend is not a string")
    rank_parts = {name.split("/", 1)[0] for name in files if name.startswith("rank_")}
    if not rank_parts <= set(expected):
        raise bad(f"it lists parts of ranks beyond its world size {world_size}")
    data_ranks = [int(name[len(DCP_DIR) + 3:].split("_", 1)[0]) for name in files
                  if name.startswith(DCP_DIR + "/__")]
    if any(r >= world_size for r in data_ranks):
        raise bad(f"it lists DCP data of ranks beyond its world size {world_size}")
    if keys and f"{DCP_DIR}/{DCP_INDEX}" not in files:
        raise bad(f"it lists no DCP index ({DCP_DIR}/{DCP_INDEX})")
    aliases = manifest.get("dcp_aliases")
    if aliases is not None and not (isinstance(aliases, dict) and all(
            isinstance(k, str) and isinstance(v, str) and _DCP_KEY.match(v)
            for k, v in aliases.items())):
        raise bad("'dcp_aliases' is not a mapping of names to DCP keys")


def read_manifest(checkpoint: Path) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of one checkpoint directory.

    The file is opened like a member file (no symlink, regular, bounded size), parsed with
    bounded nesting, checked against its self-hash and then type-checked
    (:func:`validate_manifest`), so every reader may rely on its fields.

    Raises:
        CheckpointNotFoundError: ``checkpoint`` does not exist.
        ForeignFileError: the directory is not a ckptlab checkpoint.
        CheckpointCorruptError: the manifest is missing, unreadable, malformed, or fails its
            self-hash.
        UnsupportedFormatError: written by a newer ckptlab format.
    """
    remote = store_location(checkpoint)
    if remote is not None:  # [object store] an s3:// location
        return store_protocol().read_remote_manifest(remote)
    checkpoint = Path(checkpoint)
    path = checkpoint / MANIFEST
    try:
        handle, _ = open_regular(path, MAX_MANIFEST_BYTES)
        with handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        if not os.path.lexists(checkpoint):
            raise CheckpointNotFoundError(f"{checkpoint} does not exist; check the path") \
                from None
        raise CheckpointCorruptError(
            f"{checkpoint}: manifest.json is missing, so this checkpoint was never completed "
            "or has been damaged") from None
    except NotADirectoryError:
        raise CheckpointCorruptError(f"{checkpoint} is not a checkpoint directory") from None
    except OSError as exc:  # permissions, I/O errors: this checkpoint is unusable
        raise CheckpointCorruptError(f"{path}: cannot be read ({exc})") from None
    return manifest_from_bytes(data, path, checkpoint)


def manifest_from_bytes(data: bytes, path: Any, checkpoint: Any) -> dict[str, Any]:
    """Parse and validate a manifest's bytes (read from ``path``, a file or an object, of
    ``checkpoint``): bounded, self-hash checked, type-checked, as :func:`read_manifest`.

    Raises:
        ForeignFileError, CheckpointCorruptError, UnsupportedFormatError: as
            :func:`read_manifest`.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise CheckpointCorruptError(f"{path}: manifest is implausibly large")
    manifest = load_json_bounded(data, f"{path}: manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ForeignFileError(f"{path} is not a ckptlab manifest (no format '{FORMAT_NAME}')")
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        raise CheckpointCorruptError(f"{path}: format_version {version!r} is not valid")
    if version > NEWEST_FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{checkpoint} uses checkpoint format {version}, but this ckptlab "
            f"({__version__}) reads formats up to {NEWEST_FORMAT_VERSION}; upgrade ckptlab to "
            "load it")
    try:
        self_hash = manifest_self_hash(manifest)
    except (ValueError, RecursionError) as exc:  # 1e999 parses as infinity; deep nesting
        raise CheckpointCorruptError(f"{path}: manifest holds a value outside JSON ({exc})") \
            from None
    if manifest.get("manifest_sha256") != self_hash:
        raise CheckpointCorruptError(f"{path}: manifest content does not match its own hash "
                                     "(the file was modified or damaged)")
    validate_manifest(manifest, path)
    return manifest


def json_copy(value: Any) -> Any:
    """A deep copy through JSON types, with non-finite floats replaced by None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0:
        value = value.item()  # a 0-d tensor metric (a loss straight from torch)
    elif hasattr(value, "item") and type(value).__module__ == "numpy" and \
            getattr(value, "shape", None) == ():
        value = value.item()  # a numpy scalar (np.float32, np.int64, np.bool_)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_copy(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise CkptlabError(f"manifest values must be numbers (Python, numpy scalars or 0-d "
                       f"tensors), strings, lists or dicts (got {type(value).__name__})")



class TensorSource(Protocol):
    """A file being read front to back (the reader hashes every byte it passes on)."""

    size: int

    def read(self, n: int) -> bytes: ...

    def readinto(self, buffer: memoryview) -> None: ...

    def skip(self, n: int) -> None: ...


_DTYPES_BY_NAME = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def _tensor_entries(header: Any, data_bytes: int) -> list[tuple[int, int, str, torch.dtype,
                                                                list[int]]]:
    """Validate a parsed safetensors header: ``(begin, end, key, dtype, shape)`` by offset.

    The byte ranges must tile the data region exactly (as the safetensors library requires),
    so no tensor reads outside the file or overlaps another.
    """
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    entries = []
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"tensor {key!r} has no description")
        name = spec.get("dtype")
        dtype = _DTYPES_BY_NAME.get(name) if isinstance(name, str) else None
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if dtype is None:
            raise ValueError(f"tensor {key!r} has an unknown dtype {spec.get('dtype')!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"tensor {key!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets)):
            raise ValueError(f"tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {key!r}: shape {shape} does not fit {end - begin} bytes")
        entries.append((begin, end, key, dtype, shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, key, _, _ in entries:
        if begin != position:
            raise ValueError(f"tensor {key!r} starts at byte {begin}, expected {position}")
        position = end
    if position != data_bytes:
        raise ValueError(f"the tensors cover {position} of {data_bytes} data bytes")
    return entries


class _BytesSource:
    """A :class:`TensorSource` over bytes already in memory (and already verified)."""

    def __init__(self, data: bytes) -> None:
        self._view, self._position, self.size = memoryview(data), 0, len(data)

    def read(self, n: int) -> bytes:
        chunk = self._view[self._position:self._position + n]
        self._position += len(chunk)
        return bytes(chunk)

    def readinto(self, buffer: memoryview) -> None:
        n = len(buffer)
        if self._position + n > self.size:
            raise ValueError("the file ends inside a tensor")
        buffer[:] = self._view[self._position:self._position + n]
        self._position += n

    def skip(self, n: int) -> None:
        self._position += n


def read_safetensors_bytes(data: bytes, source: Path) -> dict[str, torch.Tensor]:
    """Decode a whole (already verified) safetensors file held in memory.

    Raises:
        CheckpointCorruptError: the bytes are not a well-formed safetensors file.
    """
    try:
        return read_safetensors(_BytesSource(data))
    except ValueError as exc:
        raise CheckpointCorruptError(f"{source}: unreadable ({exc})") from None


def read_safetensors(source: TensorSource, wanted: Container[str] | None = None,
                     placement: Mapping[str, torch.device] | None = None,
                     ) -> dict[str, torch.Tensor]:
    """Decode a safetensors file read front to back from ``source``, in one pass.

    Each wanted tensor is read straight into its own freshly allocated CPU tensor (no
    intermediate copy of the file, so decoding holds one copy of the state); the bytes of
    tensors not in ``wanted`` are passed over (``source`` still sees them, to hash them).
    ``wanted=None`` keeps every tensor. A tensor whose key ``placement`` maps to a device
    other than the CPU is allocated there and filled piece by piece through host memory
    (:func:`_read_to_device`), so the host never holds more than a few pieces of it. The
    header is validated in full before any data is read.

    Raises:
        ValueError: the bytes are not a well-formed safetensors file.
    """
    if source.size < 8:
        raise ValueError("shorter than a safetensors header")
    length = int.from_bytes(source.read(8), "little")
    if length > source.size - 8:
        raise ValueError(f"header length {length} exceeds the file")
    try:
        header = json.loads(source.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"the header is not valid JSON ({exc})") from None
    tensors: dict[str, torch.Tensor] = {}
    for begin, end, key, dtype, shape in _tensor_entries(header, source.size - 8 - length):
        if wanted is not None and key not in wanted:
            source.skip(end - begin)
            continue
        device = placement.get(key) if placement is not None else None
        if device is not None and not _reads_in_place(device):
            tensor = torch.empty(shape, dtype=dtype, device=device)
            if end > begin:
                _read_to_device(source, tensor.reshape(-1).view(torch.uint8), end - begin)
        else:
            tensor = torch.empty(shape, dtype=dtype)
            if end > begin:
                source.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        tensors[key] = tensor
    return tensors


# Host memory a tensor bound for a device passes through, per piece.
_DEVICE_PIECE = 4 * 1024 * 1024


def _reads_in_place(device: torch.device) -> bool:
    """Whether the bytes of a tensor on ``device`` can be read straight into its memory."""
    return device.type == "cpu"


def _read_to_device(source: TensorSource, destination: torch.Tensor, nbytes: int) -> None:
    """Fill the flat uint8 ``destination`` (on a device) with the next ``nbytes`` of
    ``source``, one host piece at a time.

    Each piece is a fresh host buffer: the source may still be hashing the previous one in
    another thread (it keeps a reference until then, and bounds how many wait), so a reused
    buffer could be overwritten before it was hashed. The copy to the device is synchronous
    (from pageable memory), so a piece is never needed after its ``copy_`` returns.
    """
    for start in range(0, nbytes, _DEVICE_PIECE):
        size = min(_DEVICE_PIECE, nbytes - start)
        piece = torch.empty(size, dtype=torch.uint8)
        source.readinto(memoryview(piece.numpy()))
        destination[start:start + size].copy_(piece)


def read_tensor_table(path: Path) -> dict[str, dict[str, Any]]:
    """Names, dtypes, shapes and byte sizes from a safetensors header, without reading data.

    The header length is checked against the file's size and a bound before it is read.

    Raises:
        CheckpointCorruptError: the header is malformed or implausible.
    """
    remote = store_location(path)
    if remote is not None:  # [object store] an s3:// location
        return store_protocol().read_remote_tensor_table(remote)
    try:
        handle, size = open_regular(path, _MAX_MEMBER_BYTES[TENSORS])
        with handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointCorruptError(f"{path}: too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise CheckpointCorruptError(f"{path}: header length {length} does not fit "
                                             f"the file ({size} bytes)")
            header = load_json_bounded(handle.read(length), f"{path}: header")
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{path} is missing") from None
    except OSError as exc:
        raise CheckpointCorruptError(f"{path} cannot be read ({exc})") from None
    return tensor_table_from_header(header, path)


def tensor_table_from_header(header: Any, path: Any) -> dict[str, dict[str, Any]]:
    """The table :func:`read_tensor_table` returns, from a parsed safetensors header."""
    if not isinstance(header, dict):
        raise CheckpointCorruptError(f"{path}: header is not an object")
    header.pop("__metadata__", None)
    table = {}
    for name, h in sorted(header.items()):
        try:
            start, end = h["data_offsets"]
            table[name] = {"dtype": str(h["dtype"]), "shape": [int(n) for n in h["shape"]],
                           "bytes": int(end) - int(start)}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointCorruptError(f"{path}: header entry {name!r} is malformed "
                                         f"({exc!r})") from None
    return table
