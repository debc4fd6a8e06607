"""torch.distributed.checkpoint's planner with ckptlab's storage: no pickle, hashed as written.

DCP splits a sharded save in two. Its *planner* decides which rank writes which chunk of which
tensor, and on load which chunks each rank reads (that is the resharding). Its *storage layer*
turns planned items into bytes. DCP's own file storage pickles its index (``.metadata``) and
``torch.save``-s every item, so loading it means unpickling files that whoever handed over the
checkpoint wrote. Here the planner stays DCP's and the storage is ckptlab's:

* every rank writes one data file, ``dcp/__R_0.bin``: each tensor chunk as its raw bytes (C
  order, little-endian) and each non-tensor value (an optimizer's learning rate, its betas) as
  ckptlab's state JSON. The file is hashed from the same buffers while they are written, so
  nothing is read back to hash it. On an object store each file is one object, uploaded (in
  parallel parts when large) under the save's own data prefix and hashed the same way;
* the coordinator writes the index, ``dcp/index.json``: for every key its kind (a tensor with
  dtype, global shape and chunks, or a JSON value), DCP's flattening paths, and where each
  item's bytes lie (file, offset, length).

Loading parses the index from bytes whose SHA-256 matched the manifest, validates every field
(types, dtypes, shapes, and that each item lies inside a file the manifest lists, with the
length its dtype and shape imply) and builds DCP's metadata objects from it, before DCP sees
anything. Every data file a rank needs is read once, in full, and hashed against the manifest
before one byte of it is handed to DCP. A refusal is a :class:`~.errors.CkptlabError`.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .errors import CheckpointCorruptError, UnsupportedValueError
from .format import (
    DCP_DATA_FILE,
    DCP_DIR,
    DCP_INDEX,
    MAX_STATE_DEPTH,
    canonical_json,
    load_json_bounded,
    state_json,
    tensor_bytes,
)
from .hashing import HASH_POOL, sha256_hex
from .location import StorePath, as_location
from .serialization import join_state, parse_state_json, split_state
from .verified import open_verified, read_verified

INDEX_FORMAT = "ckptlab-dcp-index"
INDEX_VERSION = 1

# The dtypes a DCP tensor may have in an index: the same names as safetensors' (format.py),
# looked up by name, so an index can never name anything but a dtype.
_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
    "complex64": torch.complex64, "complex128": torch.complex128,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
# Bounds that keep a hostile index from making a reader allocate or loop without limit.
_MAX_DIMS = 32
_MAX_ELEMENTS = 2**48
_MAX_VALUE_BYTES = 64 * 1024 * 1024
_KEY = re.compile(r"^[^\x00-\x1f]{1,4096}$")


def data_file_name(rank: int) -> str:
    """The one data file rank ``rank`` writes into ``dcp/``."""
    return DCP_DATA_FILE.format(rank=rank)


_DATA_FILE = re.compile(r"^__(\d+)_0\.bin$")


# --------------------------------------------------------------------------------------------
# Non-tensor values (an optimizer's hyperparameters): ckptlab's state JSON, not torch.save
# --------------------------------------------------------------------------------------------

def encode_value(value: Any, key: str) -> bytes:
    """The bytes DCP stores for a non-tensor item: ``{"value": tree}`` in state JSON."""
    tree, tensors = split_state(value, key)
    if tensors:  # DCP flattens tensors out of containers; one left inside is not expected
        raise UnsupportedValueError(f"cannot checkpoint '{key}': a tensor inside a non-tensor "
                                    "value of a sharded state; keep tensors at the top level")
    return state_json({"value": tree})


def decode_value(data: bytes, source: str) -> Any:
    """The value :func:`encode_value` wrote (bytes already hash-verified)."""
    tree = parse_state_json(data, Path(source))
    if set(tree) != {"value"}:
        raise CheckpointCorruptError(f"{source}: a DCP value is not in ckptlab's form")
    try:
        return join_state(tree["value"], {})
    except (KeyError, ValueError) as exc:
        raise CheckpointCorruptError(f"{source}: a DCP value refers to tensors ({exc})") \
            from None


class JsonSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, storing non-tensor values as JSON instead of a pickle."""

    def transform_object(self, write_item: WriteItem, object: Any) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(encode_value(object, write_item.index.fqn))
        return object


class JsonLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor values from JSON (never ``torch.load``,
    whose default planner here would unpickle with ``weights_only=False``)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = decode_value(value.getvalue(), f"DCP value {read_item.dest_index.fqn!r}")
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn],
                        loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemLocation:
    """Where one saved item's bytes are: a data file in ``dcp/``, an offset and a length."""

    file: str
    offset: int
    length: int


class HashingDCPWriter(StorageWriter):
    """A DCP storage writer: one raw data file per rank and a JSON index, hashed as written.

    After ``dcp.save`` returns, :attr:`written` holds the manifest entry (size and SHA-256)
    of every file this rank wrote, keyed ``dcp/<name>``: the coordinator's includes the index.

    Args:
        path: the ``dcp/`` directory of the save's temporary checkpoint directory, or (an
            object store) the ``dcp/`` prefix under the save's data prefix: each file is then
            one object, uploaded (in parallel parts when large) while it is hashed.
        sync_files: fsync every file before ``dcp.save`` returns (local files).
        on_part: called as each part of an uploaded object is stored (crash tests kill there).
    """

    def __init__(self, path: str | os.PathLike[str] | StorePath, *, sync_files: bool = True,
                 on_part: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.path: Path | StorePath = path if isinstance(path, StorePath) else Path(path)
        self.sync_files = sync_files
        self.on_part = on_part
        self.written: dict[str, dict[str, Any]] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.written = {}

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if isinstance(self.path, Path):  # an object store has no directories to make
            self.path.mkdir(parents=True, exist_ok=True)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # The coordinator numbers the plans by rank: each rank's file is named after it.
        return [dataclasses.replace(plan, storage_data=rank) for rank, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        name = data_file_name(int(plan.storage_data))
        buffers: list[memoryview] = []
        results = []
        offset = 0
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                view = memoryview(data.getbuffer())
            else:
                tensor = data.detach()
                if tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                view = memoryview(tensor_bytes(tensor.contiguous()))
            buffers.append(view)
            results.append(WriteResult(index=item.index, size_in_bytes=view.nbytes,
                                       storage_data=ItemLocation(name, offset, view.nbytes)))
            offset += view.nbytes
        self.written[f"{DCP_DIR}/{name}"] = self._write_hashed(name, buffers)
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        locations = {r.index: r.storage_data for rank_results in results for r in rank_results}
        index = canonical_json(encode_index(metadata, locations))
        self.written[f"{DCP_DIR}/{DCP_INDEX}"] = self._write_hashed(DCP_INDEX,
                                                                    [memoryview(index)])

    def _write_hashed(self, name: str, buffers: list[memoryview]) -> dict[str, Any]:
        if isinstance(self.path, StorePath):  # [object store]
            return _upload_hashed(self.path / name, buffers, self.on_part)
        return _write_hashed(self.path / name, buffers, self.sync_files)

    def storage_meta(self) -> StorageMeta | None:
        return None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


def _write_hashed(path: Path, buffers: list[memoryview], sync: bool) -> dict[str, Any]:
    """Write ``buffers`` to a new file while a hashing thread hashes the same buffers."""
    hashed = HASH_POOL.get().submit(sha256_hex, buffers)
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags, 0o644)
        try:
            for view in buffers:
                view = view.cast("B")
                while view.nbytes:
                    view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        digest = hashed.result()  # the buffers stay untouched until the hash is done
    return {"bytes": sum(b.nbytes for b in buffers), "sha256": digest}


def _upload_hashed(target: StorePath, buffers: list[memoryview],
                   on_part: Callable[[int], None] | None) -> dict[str, Any]:
    """Upload ``buffers`` as one object while a hashing thread hashes the same buffers (the
    object is new: its prefix is the save's own)."""
    hashed = HASH_POOL.get().submit(sha256_hex, buffers)
    try:
        target.store.upload(target.key, buffers, on_part)
    finally:
        digest = hashed.result()  # the buffers stay untouched until the hash is done
    return {"bytes": sum(b.nbytes for b in buffers), "sha256": digest}


def encode_index(metadata: Metadata, locations: Mapping[MetadataIndex, Any]) -> dict[str, Any]:
    """DCP's metadata and the items' locations as the JSON index (see :func:`decode_index`)."""
    entries: dict[str, Any] = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if isinstance(meta, BytesStorageMetadata):
            entries[fqn] = {"kind": "value"}
            continue
        props = meta.properties
        if props.dtype not in _DTYPE_NAMES or props.layout != torch.strided:
            raise UnsupportedValueError(f"cannot checkpoint '{fqn}': a {props.layout} tensor "
                                        f"of dtype {props.dtype} in a sharded state")
        entries[fqn] = {"kind": "tensor", "dtype": _DTYPE_NAMES[props.dtype],
                        "shape": list(meta.size), "requires_grad": bool(props.requires_grad),
                        "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)}
                                   for c in meta.chunks]}
    planner_data = metadata.planner_data
    return {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "byteorder": "little",
        "entries": entries,
        "paths": None if planner_data is None else
        {fqn: list(path) for fqn, path in planner_data.items()},
        "items": [{"fqn": index.fqn,
                   "offset": None if index.offset is None else list(index.offset),
                   "file": where.file, "at": where.offset, "length": where.length}
                  for index, where in sorted(locations.items(), key=lambda kv: (
                      kv[0].fqn, list(kv[0].offset or ())))],
    }


# --------------------------------------------------------------------------------------------
# Reading: validate the index, then serve DCP's reads from files hashed in full first
# --------------------------------------------------------------------------------------------

def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value: Any, what: str, bad: Any, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or len(value) > _MAX_DIMS \
            or (length is not None and len(value) != length) \
            or not all(_whole(v) and 0 <= v <= _MAX_ELEMENTS for v in value):
        raise bad(f"{what} is not a list of up to {_MAX_DIMS} non-negative whole numbers"
                  + (f" of length {length}" if length is not None else ""))
    return value


def decode_index(data: bytes, source: Path, files: Mapping[str, int]) -> Metadata:
    """Validate a (hash-verified) index and build DCP's :class:`Metadata` from it.

    Args:
        data: the bytes of ``dcp/index.json``.
        source: its path, for messages.
        files: the manifest's sizes of the data files, ``{name inside dcp/: bytes}``; every
            item must lie inside one of them.

    Raises:
        CheckpointCorruptError: any field is missing, of the wrong type or inconsistent.
    """
    def bad(what: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"{source}: {what}; the DCP index is damaged or was not "
                                      "written by ckptlab")

    index = load_json_bounded(data, str(source))
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise bad(f"it is not a {INDEX_FORMAT}")
    if index.get("version") != INDEX_VERSION:
        raise bad(f"version {index.get('version')!r} is not {INDEX_VERSION}")
    if index.get("byteorder") != "little" or sys.byteorder != "little":
        raise bad("its tensors are little-endian and only a little-endian machine reads them")
    entries, paths, items = index.get("entries"), index.get("paths"), index.get("items")
    if not isinstance(entries, dict) or not isinstance(items, list):
        raise bad("'entries' must be an object and 'items' a list")
    state_dict_metadata: dict[str, Any] = {}
    for fqn, entry in entries.items():
        if not _KEY.match(fqn) or not isinstance(entry, dict):
            raise bad(f"entry {fqn[:80]!r} is malformed")
        if entry.get("kind") == "value" and set(entry) == {"kind"}:
            state_dict_metadata[fqn] = BytesStorageMetadata()
            continue
        if entry.get("kind") != "tensor" or entry.get("dtype") not in _DTYPES \
                or not isinstance(entry.get("requires_grad"), bool) \
                or not isinstance(entry.get("chunks"), list):
            raise bad(f"entry {fqn!r} is neither a tensor (dtype, shape, chunks) nor a value")
        shape = _ints(entry.get("shape"), f"the shape of {fqn!r}", bad)
        if math.prod(shape) > _MAX_ELEMENTS:
            raise bad(f"{fqn!r} has more than {_MAX_ELEMENTS} elements")
        chunks = []
        for chunk in entry["chunks"]:
            if not isinstance(chunk, dict) or set(chunk) != {"offsets", "sizes"}:
                raise bad(f"a chunk of {fqn!r} is malformed")
            offsets = _ints(chunk["offsets"], f"a chunk offset of {fqn!r}", bad, len(shape))
            sizes = _ints(chunk["sizes"], f"a chunk size of {fqn!r}", bad, len(shape))
            if any(o + s > d for o, s, d in zip(offsets, sizes, shape)):
                raise bad(f"a chunk of {fqn!r} lies outside its shape {shape}")
            chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets),
                                               sizes=torch.Size(sizes)))
        state_dict_metadata[fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=_DTYPES[entry["dtype"]],
                                        requires_grad=entry["requires_grad"]),
            size=torch.Size(shape), chunks=chunks)
    planner_data = None
    if paths is not None:
        if not isinstance(paths, dict) or not all(
                k in entries and isinstance(p, list) and 0 < len(p) <= MAX_STATE_DEPTH
                and all(isinstance(x, str) or _whole(x) for x in p)
                for k, p in paths.items()):
            raise bad("'paths' must map each key to its path (names and list positions)")
        planner_data = {k: tuple(p) for k, p in paths.items()}
    storage: dict[MetadataIndex, ItemLocation] = {}
    for item in items:
        if not isinstance(item, dict) or set(item) != {"fqn", "offset", "file", "at", "length"} \
                or item["fqn"] not in state_dict_metadata:
            raise bad("an item is malformed or names a key the index does not have")
        fqn, meta = item["fqn"], state_dict_metadata[item["fqn"]]
        name, at, length = item["file"], item["at"], item["length"]
        if not isinstance(name, str) or name not in files:
            raise bad(f"{fqn!r} is stored in {str(name)[:80]!r}, which is not a data file the "
                      "manifest lists")
        if not (_whole(at) and _whole(length) and 0 <= at and 0 <= length
                and at + length <= files[name]):
            raise bad(f"{fqn!r} lies outside {name} ({files[name]} bytes)")
        if isinstance(meta, BytesStorageMetadata):
            if item["offset"] is not None or length > _MAX_VALUE_BYTES:
                raise bad(f"the value {fqn!r} has a tensor offset or is too large")
            key = MetadataIndex(fqn)
        else:
            offset = _ints(item["offset"], f"the offset of {fqn!r}", bad, len(meta.size))
            chunk = next((c for c in meta.chunks if list(c.offsets) == offset), None)
            if chunk is None:
                raise bad(f"{fqn!r} has no chunk at offset {offset}")
            expected = math.prod(chunk.sizes) * _element_size(meta.properties.dtype)
            if length != expected:
                raise bad(f"the chunk of {fqn!r} at {offset} has {length} bytes, not the "
                          f"{expected} its shape and dtype take")
            key = MetadataIndex(fqn, torch.Size(offset))
        if key in storage:
            raise bad(f"{fqn!r} is stored twice")
        storage[key] = ItemLocation(name, at, length)
    by_file: dict[str, list[ItemLocation]] = {}
    for where in storage.values():
        by_file.setdefault(where.file, []).append(where)
    for name, places in by_file.items():  # items never overlap: each file is read in order
        places.sort(key=lambda w: w.offset)
        if any(a.offset + a.length > b.offset for a, b in zip(places, places[1:])):
            raise bad(f"two items overlap in {name}")
    for fqn, meta in state_dict_metadata.items():  # every key is stored somewhere
        wanted = [MetadataIndex(fqn)] if isinstance(meta, BytesStorageMetadata) else \
            [MetadataIndex(fqn, c.offsets) for c in meta.chunks]
        if any(w not in storage for w in wanted):
            raise bad(f"{fqn!r} is listed but not stored")
    return Metadata(state_dict_metadata=state_dict_metadata, planner_data=planner_data,
                    storage_data=storage, storage_meta=StorageMeta(), version="1.0.0")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class VerifiedDCPReader(StorageReader):
    """A DCP storage reader over one checkpoint's ``dcp/``: the index validated up front, and
    each data file hashed in full against the manifest before DCP receives any of its bytes.

    Args:
        checkpoint: the checkpoint directory (or its store location).
        manifest: its manifest (read with :func:`~.format.read_manifest`), whose file table
            says which data files exist, their sizes and SHA-256s.

    Raises:
        CheckpointCorruptError: the index is missing, damaged or inconsistent (at once, on
            construction); a data file fails its hash (when DCP reads it).
    """

    def __init__(self, checkpoint: Path | StorePath, manifest: Mapping[str, Any]) -> None:
        super().__init__()
        self.checkpoint, self.manifest = as_location(checkpoint), manifest
        listed = manifest.get("files", {})
        files = {name.split("/", 1)[1]: entry["bytes"] for name, entry in listed.items()
                 if name.startswith(DCP_DIR + "/") and _DATA_FILE.match(name.split("/", 1)[1])}
        index_name = f"{DCP_DIR}/{DCP_INDEX}"
        if index_name not in listed:
            raise CheckpointCorruptError(f"{self.checkpoint}: the manifest lists no DCP index "
                                         f"({index_name})")
        self.metadata = decode_index(read_verified(self.checkpoint, manifest, index_name),
                                     self.checkpoint / index_name, files)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if not isinstance(planner, JsonLoadPlanner):
            raise TypeError("VerifiedDCPReader stores values as JSON: load with "
                            "JsonLoadPlanner")
        storage = self.metadata.storage_data
        by_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            by_file.setdefault(storage[item.storage_index].file, []).append(item)
        for name, items in sorted(by_file.items()):
            stored = self._read_items(name, {item.storage_index for item in items})
            for item in items:  # only now, with the whole file's hash matched
                data = stored[item.storage_index]
                if item.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(item, io.BytesIO(data))
                    continue
                source = narrow_tensor_by_index(data, item.storage_offsets, item.lengths)
                target = planner.resolve_tensor(item).detach()
                if target.size() != source.size():
                    raise CheckpointCorruptError(
                        f"{self.checkpoint}: DCP chunk of {item.storage_index.fqn!r} has "
                        f"shape {tuple(source.size())}, the state expects "
                        f"{tuple(target.size())}")
                target.copy_(source)
                planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _read_items(self, name: str, wanted: set[MetadataIndex]) -> dict[MetadataIndex, Any]:
        """Read the ``wanted`` items of data file ``name`` front to back, straight into fresh
        tensors (and bytes for values), hashing the whole file as it goes; return them only
        once the file's SHA-256 matched the manifest."""
        storage = self.metadata.storage_data
        out: dict[MetadataIndex, Any] = {}
        with open_verified(self.checkpoint, self.manifest, f"{DCP_DIR}/{name}") as file:
            position = 0
            for key in sorted(wanted, key=lambda k: storage[k].offset):
                where = storage[key]
                file.skip(where.offset - position)  # hashed, not kept
                meta = self.metadata.state_dict_metadata[key.fqn]
                if isinstance(meta, BytesStorageMetadata):
                    out[key] = file.read(where.length)
                else:
                    sizes = next(c.sizes for c in meta.chunks if c.offsets == key.offset)
                    chunk = torch.empty(sizes, dtype=meta.properties.dtype)
                    if where.length:
                        file.readinto(memoryview(tensor_bytes(chunk)))
                    out[key] = chunk
                position = where.offset + where.length
            file.finish()
        return out

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False
