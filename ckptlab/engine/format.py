"""The on-disk format (version 1): names, the manifest, and the files' encodings, read and write.

One directory per checkpoint::

    <checkpoints>/
        latest                   JSON pointer {"checkpoint": "step_00003000", "step": 3000}
        best                     the same, for the best checkpoint by the chosen metric
        decisions.jsonl          why each checkpoint was saved, kept or deleted
        step_00003000/
            manifest.json        format, step, times, metrics, config and its hash,
                                 library versions, components, SHA-256 and size of every file,
                                 and the SHA-256 of the manifest itself
            tensors.safetensors  every tensor and array, keyed "component/path/to/leaf"
            state.json           everything else, per component

Both directions of every encoding live here: the safetensors writer and the header reader, the
canonical JSON and the manifest's self-hash. Nothing here unpickles: JSON and safetensors cannot
run code. The write protocol (temp dir, fsync, rename) is in :mod:`.writer`, verification and
decoding in :mod:`.reader`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import sys
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy
import torch

from .. import __version__
from .errors import CheckpointCorruptError, CkptlabError, ForeignFileError, UnsupportedFormatError

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


def checkpoint_dir_name(step: int) -> str:
    """The directory name of the checkpoint taken at ``step`` (zero-padded, sorts by step)."""
    return f"step_{step:08d}"


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The step a checkpoint directory's name encodes (``step_00003000`` -> 3000)."""
    match = _STEP_DIR.match(Path(path).name)
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
    torch.uint64: "U64",
}


def tensor_bytes(tensor: torch.Tensor) -> numpy.ndarray:
    """The raw bytes of a contiguous CPU tensor as a flat uint8 array, without a copy."""
    flat = tensor.detach().reshape(-1)
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
                       metadata: Mapping[str, str]) -> list[bytes | memoryview]:
    """The bytes of a safetensors file as a list of chunks, without copying tensor data.

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
        tensor = tensors[key].contiguous()
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
        if size:
            chunks.append(memoryview(tensor_bytes(tensor)))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    return [len(text).to_bytes(8, "little"), text, *chunks]



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
        dtype = _DTYPES_BY_NAME.get(spec.get("dtype"))  # type: ignore[arg-type]
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


def read_safetensors(source: TensorSource,
                     wanted: Container[str] | None = None) -> dict[str, torch.Tensor]:
    """Decode a safetensors file read front to back from ``source``, in one pass.

    Each wanted tensor is read straight into its own freshly allocated CPU tensor (no
    intermediate copy of the file, so decoding holds one copy of the state); the bytes of
    tensors not in ``wanted`` are passed over (``source`` still sees them, to hash them).
    ``wanted=None`` keeps every tensor. The header is validated in full before any data is
    read.

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
        tensor = torch.empty(shape, dtype=dtype)
        if end > begin:
            source.readinto(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        tensors[key] = tensor
    return tensors


def read_tensor_table(path: Path) -> dict[str, dict[str, Any]]:
    """Names, dtypes, shapes and byte sizes from a safetensors header, without reading data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return {name: {"dtype": h["dtype"], "shape": h["shape"],
                   "bytes": h["data_offsets"][1] - h["data_offsets"][0]}
            for name, h in sorted(header.items())}
