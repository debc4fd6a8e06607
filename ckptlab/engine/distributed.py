"""Sharded checkpoints for ``torch.distributed`` jobs, with the guarantees of one process.

Every rank of a job launched by ``torchrun`` (or ``ckptlab train --nproc N``) calls the same
:class:`ShardedCheckpointer` methods in the same order. A save:

1. each rank writes its own part (``rank_0000R/``: the state only it has - its replay-buffer
   shard, environment, RNG streams) into the save's temporary directory, durably;
2. the model and optimizer go through ``torch.distributed.checkpoint.save`` (DCP) into
   ``dcp/``: sharded and deduplicated by DCP's planner, readable by plain DCP;
3. every rank hashes the files it wrote and the hashes are gathered on rank 0 (a barrier:
   nobody continues until every rank has written);
4. rank 0 alone commits: the manifest with a SHA-256 per file, one directory rename, then the
   ``latest`` pointer, the decision log, retention and the ``best`` pointer - exactly the
   single-process protocol of :mod:`.writer` and :class:`~.manager.CheckpointManager`;
5. rank 0 tells every rank whether the save committed.

A rank killed at any point before step 4's rename leaves only a ``.tmp-`` directory, which
readers ignore and the next writer removes; a checkpoint missing a rank's part, or holding a
part of another save, fails verification by name and is skipped (see :mod:`.sharded`).

Saving asynchronously runs steps 1-5 in a background thread, on a process group of its own (so
its collectives never interleave with training's), after copying the state on the training
thread. Loading: rank 0 chooses the checkpoint and broadcasts its name; DCP loads (and
reshards) the model and optimizer; each rank reads the parts it needs.

Nothing is unpickled from disk: DCP's index (a pickle) is read only after its SHA-256 matched
the manifest, with an allow-list unpickler that can build DCP's metadata classes and nothing
else, and DCP's non-tensor values are read with ``torch.load(weights_only=True)``.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import secrets
import shutil
import signal
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from .errors import CheckpointCorruptError, CheckpointNotFoundError, CkptlabError
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    _TEMP_PREFIX,
    _canonical_json,
    _digest,
    _json_copy,
    _manifest_self_hash,
    _sha256,
    checkpoint_dir_name,
    library_versions,
    read_manifest,
)
from .manager import CheckpointManager
from .policies import BestBy, RetentionPolicy
from .reader import CheckpointInfo, _read_verified, latest_valid_checkpoint
from .sharded import (
    DCP_DIR,
    DCP_METADATA,
    SHARD_INFO,
    SHARDED_KEY,
    decode_rank_part,
    encode_rank_part,
    is_sharded,
    rank_dir_name,
    world_size_of,
)
from .writer import (
    CheckpointWriteError,
    ReplacedButUnsyncedError,
    _describe_os_error,
    _fsync_dir,
    _write_durable,
)

# --------------------------------------------------------------------------------------------
# Fault injection per rank (tests and lesson 09)
# --------------------------------------------------------------------------------------------

RANK_FAULT_ENV = "CKPTLAB_RANK_FAULT"
RANK_FAULT_PHASES = ("step", "save:before-shard", "save:shard-written", "save:before-commit",
                     "save:committed", "save:pointer-updated")


def _restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def parse_rank_faults(text: str) -> set[tuple[int, str, int, int]]:
    """Parse ``RANK:PHASE@STEP[#ATTEMPT]`` items (comma-separated) into tuples.

    ``ATTEMPT`` is the elastic launcher's restart count the fault fires in (default 0, the
    first attempt), so a restarted job is not killed again at the same place.
    """
    faults = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            rank_text, rest = item.split(":", 1)
            rest, _, attempt = rest.partition("#")
            phase, _, step = rest.rpartition("@")
            parsed = (int(rank_text), phase, int(step), int(attempt or 0))
        except ValueError:
            parsed = None
        if parsed is None or parsed[1] not in RANK_FAULT_PHASES:
            raise ValueError(f"{RANK_FAULT_ENV}: cannot parse {item!r}; expected "
                             f"RANK:PHASE@STEP[#ATTEMPT] with PHASE one of "
                             f"{', '.join(RANK_FAULT_PHASES)}")
        faults.add(parsed)
    return faults


def rank_fault_point(phase: str, step: int, rank: int) -> None:
    """SIGKILL this process if ``CKPTLAB_RANK_FAULT`` names this rank, phase, step, attempt."""
    raw = os.environ.get(RANK_FAULT_ENV)
    if raw and (rank, phase, step, _restart_count()) in parse_rank_faults(raw):
        sys.stdout.flush()
        sys.stderr.write(f"ckptlab: injected SIGKILL of rank {rank} at {phase}@{step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Reading DCP without unpickling anything untrusted
# --------------------------------------------------------------------------------------------

class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch sizes and dtypes, paths; refuses everything else."""

    _MODULES = ("torch.distributed.checkpoint.metadata",)
    _NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
              ("torch", "Size"), ("torch.serialization", "_get_layout"),
              ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
              ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
              ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if module in self._MODULES or (module, name) in self._NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which is not "
                                     "a DCP metadata type")


class SafeDCPReader(FileSystemReader):
    """``FileSystemReader`` whose index is read with an allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise CheckpointCorruptError(f"{path}: not a DCP index ckptlab accepts ({exc})") \
                from None
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but non-tensor values are read with ``weights_only=True``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element as set_in

            set_in(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def dcp_tensor_table(checkpoint: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Names, dtypes and shapes of the tensors in a sharded checkpoint's DCP part."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = SafeDCPReader(str(Path(checkpoint) / DCP_DIR)).read_metadata()
    return {fqn: {"dtype": str(m.properties.dtype).replace("torch.", ""),
                  "shape": list(m.size)}
            for fqn, m in sorted(metadata.state_dict_metadata.items())
            if isinstance(m, TensorStorageMetadata)}


def load_dcp_tensors(checkpoint: str | os.PathLike[str], prefix: str) -> dict[str, torch.Tensor]:
    """Consolidate the DCP tensors under ``prefix.`` of a verified sharded checkpoint into
    full CPU tensors, in this one process (no process group needed)."""
    table = dcp_tensor_table(checkpoint)
    wanted = {fqn[len(prefix) + 1:]: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"]))
              for fqn, t in table.items() if fqn.startswith(prefix + ".")}
    if not wanted:
        raise CheckpointNotFoundError(
            f"{checkpoint} has no DCP tensors under '{prefix}'; it has: "
            f"{', '.join(sorted({k.split('.')[0] for k in table})) or 'none'}")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({prefix: wanted},
                 storage_reader=SafeDCPReader(str(Path(checkpoint) / DCP_DIR)),
                 planner=SafeLoadPlanner(), no_dist=True)
    return wanted


# --------------------------------------------------------------------------------------------
# Small collectives that carry JSON (no pickle on the wire either)
# --------------------------------------------------------------------------------------------

def _all_gather_json(value: Any, group: Any) -> list[Any]:
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
    size = torch.tensor([data.numel()], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:data.numel()] = data
    out = [torch.zeros(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(out, padded, group=group)
    return [json.loads(bytes(t[:int(s.item())].tolist())) for t, s in zip(out, sizes)]


def broadcast_json(value: Any, group: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s JSON-compatible ``value``, on every rank."""
    return _all_gather_json(value if dist.get_rank() == src else None, group)[src]


# --------------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------------

@dataclass
class _Pending:
    step: int
    dcp_state: dict[str, Any]
    part_files: dict[str, bytes]
    part_components: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, Any] | None
    extra: dict[str, Any]
    dcp_keys: dict[str, str]


def _stage(value: Any) -> Any:
    """A private CPU copy of a state tree (tensors cloned), for saving in the background."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: _stage(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stage(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_stage(v) for v in value)
    return value


class ShardedCheckpointer:
    """Save and load one checkpoint across all ranks of a ``torch.distributed`` job.

    Call it on every rank, in the same order (its methods are collective). Rank 0 owns the
    directory: it holds the writer lock, cleans leftovers of killed saves, commits, and keeps
    ``latest``, ``best``, the decision log and retention, through a
    :class:`~.manager.CheckpointManager`.

    Args:
        directory: the checkpoints directory, on a filesystem every rank sees.
        retention, keep_last, best, disk_budget_bytes: as for ``CheckpointManager``.
        extra_versions: library versions the caller's state depends on (recorded).
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 retention: Sequence[RetentionPolicy] = (), keep_last: int | None = None,
                 best: BestBy | None = None, disk_budget_bytes: int | None = None,
                 extra_versions: Mapping[str, str] | None = None) -> None:
        if not dist.is_initialized():
            raise CkptlabError("ShardedCheckpointer needs torch.distributed initialised "
                               "(launch with torchrun or 'ckptlab train --nproc N')")
        self.directory = Path(directory)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # Checkpoint collectives get their own gloo group: an async save's background thread
        # must never interleave its collectives with training's on the default group.
        self.group = dist.new_group(backend="gloo")
        self.manager: CheckpointManager | None = None
        error = None
        if self.rank == 0:
            try:
                self.manager = CheckpointManager(
                    self.directory, keep_last=keep_last, retention=retention, best=best,
                    disk_budget_bytes=disk_budget_bytes)
                self.manager.extra_versions.update(extra_versions or {})
            except CkptlabError as exc:
                error = str(exc)
        # One value per session: save ids are unique across restarts of the job.
        self._session = broadcast_json({"error": error, "session": secrets.token_hex(4)},
                                       self.group)
        if self._session["error"]:
            raise CkptlabError(self._session["error"] if self.rank == 0 else
                               f"rank 0 could not open {self.directory}: "
                               f"{self._session['error']}")
        self._saves = 0
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[CheckpointInfo | None] | None = None
        self.last_blocking_seconds = 0.0

    # -- choosing what to resume ----------------------------------------------------------
    def agree_on_checkpoint(self, choose: Callable[[], CheckpointInfo | None]
                            ) -> CheckpointInfo | None:
        """Run ``choose`` on rank 0 and return its choice on every rank.

        Rank 0 verifies (its ``choose`` typically calls ``newest_valid_checkpoint``, which skips
        unusable checkpoints with a warning); every rank then reads the same manifest.
        """
        answer: dict[str, Any] = {}
        if self.rank == 0:
            try:
                info = choose()
                answer = {"path": str(info.path.resolve()) if info else None}
            except CkptlabError as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
                raised = exc
        answer = broadcast_json(answer, self.group)
        if "error" in answer:
            if self.rank == 0:
                raise raised  # noqa: F821 (set above on rank 0)
            raise CkptlabError(f"rank 0 could not choose a checkpoint: {answer['error']}")
        if answer["path"] is None:
            return None
        path = Path(answer["path"])
        return CheckpointInfo(path, read_manifest(path))

    # -- loading --------------------------------------------------------------------------
    def load_dcp(self, info: CheckpointInfo, state: dict[str, Any]) -> None:
        """Load the checkpoint's DCP part into ``state`` in place (collective; DCP reshards)."""
        if not is_sharded(info.manifest):
            raise CkptlabError(f"{info.path} is not a sharded checkpoint")
        dcp.load(state, storage_reader=SafeDCPReader(str(info.path / DCP_DIR)),
                 planner=SafeLoadPlanner(), process_group=self.group)

    def read_rank_part(self, info: CheckpointInfo, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s own states of a sharded checkpoint, hash-checked on read."""
        part = rank_dir_name(rank)
        files = {name: _read_verified(info.path, info.manifest, f"{part}/{name}")
                 for name in (SHARD_INFO, "state.json", "tensors.safetensors")}
        return decode_rank_part(files, info.path / part)

    # -- saving ---------------------------------------------------------------------------
    def save(self, step: int, *, dcp_state: dict[str, Any], rank_states: Mapping[str, Any],
             metrics: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None,
             blocking: bool = True) -> CheckpointInfo | None:
        """Write one checkpoint of every rank's state (collective).

        Args:
            step: names the checkpoint ``step_{step:08d}``.
            dcp_state: the sharded state (e.g. ``{"model": ..., "optim": ...}`` from
                ``torch.distributed.checkpoint.state_dict.get_state_dict``), saved by DCP.
            rank_states: this rank's own ``{component: state_dict}``.
            metrics, config, extra: recorded in the manifest by rank 0 (rank 0's values).
            blocking: ``False`` copies the state now and writes it in a background thread;
                errors surface at the next save, :meth:`wait` or :meth:`close`.

        Returns the committed checkpoint (every rank), or ``None`` for a background save.
        """
        t0 = time.perf_counter()
        self.wait()
        self._saves += 1
        save_id = f"{self._session['session']}-{self._saves}"
        part_files, part_components = encode_rank_part(
            rank_states, rank=self.rank, world_size=self.world_size, step=step,
            save_id=save_id)
        pending = _Pending(
            step, dcp_state if blocking else _stage(dcp_state), part_files, part_components,
            _json_copy(metrics or {}), _json_copy(config) if config is not None else None,
            _json_copy(extra or {}), {k: k for k in dcp_state})
        if blocking:
            info = self._write(pending, save_id)
            self.last_blocking_seconds = time.perf_counter() - t0
            return info
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ckptlab-sharded-save")
        self._pending = self._executor.submit(self._write, pending, save_id)
        self.last_blocking_seconds = time.perf_counter() - t0
        return None

    def wait(self) -> CheckpointInfo | None:
        """Block until the background save (if any) committed on every rank; raise its error."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        try:
            return pending.result()
        except CkptlabError:
            raise
        except Exception as exc:
            raise CheckpointWriteError(f"background sharded save failed: {exc!r}") from exc

    def close(self) -> None:
        """Finish any background save, stop its thread, release the directory (rank 0)."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self.manager is not None:
                self.manager.close()

    def _write(self, p: _Pending, save_id: str) -> CheckpointInfo | None:
        step, rank = p.step, self.rank
        final = self.directory / checkpoint_dir_name(step)
        temp = self.directory / f"{_TEMP_PREFIX}{final.name}-{save_id}"
        part = temp / rank_dir_name(rank)
        # 1. this rank's own part
        problem = None
        try:
            rank_fault_point("save:before-shard", step, rank)
            part.mkdir(parents=True)
            for name, data in p.part_files.items():
                _write_durable(part / name, data)
            _fsync_dir(part)
        except OSError as exc:
            problem = f"rank {rank}: {_describe_os_error(exc)}"
        problems = [x for x in _all_gather_json(problem, self.group) if x]
        if problems:
            self._abandon(temp)
            raise CheckpointWriteError(
                f"could not save checkpoint {final.name}: {'; '.join(problems)}. Earlier "
                "checkpoints are unchanged; free disk space or fix permissions")
        # 2. model and optimizer through DCP (collective; raises on every rank if one fails)
        try:
            dcp.save(p.dcp_state, storage_writer=FileSystemWriter(str(temp / DCP_DIR),
                                                                  sync_files=True),
                     process_group=self.group)
        except Exception as exc:
            self._abandon(temp)
            raise CheckpointWriteError(f"could not save checkpoint {final.name}: DCP failed "
                                       f"({exc}); earlier checkpoints are unchanged") from exc
        rank_fault_point("save:shard-written", step, rank)
        # 3. hashes of what this rank wrote; gathering them is the barrier before the commit
        mine = {f"{part.name}/{name}": _digest([data]) for name, data in p.part_files.items()}
        for path in sorted((temp / DCP_DIR).glob(f"__{rank}_*")):
            mine[f"{DCP_DIR}/{path.name}"] = _digest([path.read_bytes()])
        if rank == 0:
            mine[f"{DCP_DIR}/{DCP_METADATA}"] = _digest([(temp / DCP_DIR / DCP_METADATA)
                                                         .read_bytes()])
        tables = _all_gather_json({"files": mine, "components": p.part_components},
                                  self.group)
        # 4. rank 0 commits
        outcome: dict[str, Any] = {"ok": True}
        manifest: dict[str, Any] = {}
        if rank == 0:
            try:
                rank_fault_point("save:before-commit", step, rank)
                files = {name: entry for table in tables
                         for name, entry in sorted(table["files"].items())}
                parts = {name: entry for table in tables
                         for name, entry in table["components"].items()}
                manifest = self._manifest(p, files, parts, save_id)
                _fsync_dir(temp / DCP_DIR)
                _write_durable(temp / MANIFEST, _canonical_json(manifest, readable=True))
                _fsync_dir(temp)
                assert self.manager is not None
                self.manager._commit(temp, final)
                rank_fault_point("save:committed", step, rank)
                self.manager.adopt_committed(final, manifest)
                rank_fault_point("save:pointer-updated", step, rank)
            except BaseException as exc:  # told to every rank below, then re-raised
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                error = exc
        outcome = broadcast_json(outcome, self.group)
        if not outcome["ok"]:
            if rank == 0:
                self._abandon(temp)
                if isinstance(error, ReplacedButUnsyncedError):  # noqa: F821
                    raise CheckpointWriteError(error.describe(final)) from error
                if isinstance(error, OSError):  # noqa: F821 (set above on rank 0)
                    raise CheckpointWriteError(
                        f"could not commit checkpoint {final.name}: "
                        f"{_describe_os_error(error)}; earlier checkpoints are unchanged") \
                        from error
                raise error  # noqa: F821
            raise CheckpointWriteError(f"rank 0 could not commit checkpoint {final.name}: "
                                       f"{outcome['error']}")
        return CheckpointInfo(final, manifest if rank == 0 else read_manifest(final))

    def _abandon(self, temp: Path) -> None:
        if self.rank == 0:
            shutil.rmtree(temp, ignore_errors=True)

    def _manifest(self, p: _Pending, files: dict[str, Any], parts: dict[str, Any],
                  save_id: str) -> dict[str, Any]:
        now = time.time()
        components: dict[str, Any] = {}
        for key, value in p.dcp_state.items():
            leaves = _tensor_leaves(value)
            components[f"{DCP_DIR}/{key}"] = {
                "tensors": len(leaves), "json_bytes": 0,
                "tensor_bytes": sum(t.numel() * t.element_size() for t in leaves)}
        components.update(sorted(parts.items()))
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "step": p.step,
            **p.extra,
            "created_unix": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "metrics": p.metrics, "config": p.config,
            "config_sha256": _sha256(_canonical_json(p.config)) if p.config is not None
            else None,
            "versions": library_versions(self.manager.extra_versions if self.manager else {}),
            "components": components,
            "files": files,
            SHARDED_KEY: {"world_size": self.world_size, "save_id": save_id,
                          "dcp_dir": DCP_DIR, "dcp_keys": sorted(p.dcp_state),
                          "ranks": [rank_dir_name(r) for r in range(self.world_size)],
                          "backend": dist.get_backend()},
        }
        manifest["manifest_sha256"] = _manifest_self_hash(manifest)
        return manifest


def _tensor_leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):  # a DTensor counts whole (numel is global)
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensor_leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensor_leaves(v)]
    return []


# --------------------------------------------------------------------------------------------
# Export and launching
# --------------------------------------------------------------------------------------------

def export_sharded_weights(checkpoint: str | os.PathLike[str], prefix: str) -> dict[str,
                                                                                  torch.Tensor]:
    """Full (consolidated) tensors under DCP key ``prefix`` of a verified sharded checkpoint."""
    info = latest_valid_checkpoint(checkpoint)
    if not is_sharded(info.manifest):
        raise CkptlabError(f"{info.path} is not a sharded checkpoint")
    return load_dcp_tensors(info.path, prefix)


def init_distributed(backend: str | None = None) -> None:
    """``dist.init_process_group`` for a worker of torchrun / the elastic launcher, safe
    across restarts.

    torch's elastic agent shares one TCP store across restart rounds, so a restarted worker
    can read the previous attempt's (dead) peer addresses and fail to connect. Every key of
    this attempt therefore lives under a prefix naming the attempt.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        from datetime import timedelta

        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                               world_size, is_master=False, timeout=timedelta(minutes=5))
        store = dist.PrefixStore(f"ckptlab/attempt_{_restart_count()}", client)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    else:
        dist.init_process_group(backend)


def in_launched_worker() -> bool:
    """Whether this process is a worker started by torchrun / the elastic launcher."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def launch(args: Sequence[str], *, nproc: int, nnodes: int = 1, max_restarts: int = 0,
           rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
           monitor_interval: float = 0.2) -> None:
    """Run ``python -m ckptlab ARGS`` as ``nproc`` local ranks under torch's elastic agent.

    The same agent ``torchrun`` uses: a c10d rendezvous (local, or at ``rdzv_endpoint`` for
    ``nnodes`` > 1), and up to ``max_restarts`` restarts of the whole worker group when a
    worker dies.

    Raises:
        CkptlabError: the job failed after its restarts (the message names the failing rank).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and not rdzv_endpoint:
        raise CkptlabError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every "
                           "node) and the same --rdzv-id")
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc,
        run_id=rdzv_id or str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "localhost:0", max_restarts=max_restarts,
        monitor_interval=monitor_interval, start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "ckptlab", *args)
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank} exited with {f.exitcode}"
                             + (f" ({f.signal_name()})" if f.exitcode < 0 else "")
                             for rank, f in exc.failures.items())
        raise CkptlabError(f"the distributed job failed after {max_restarts} restart(s): "
                           f"{failures}; the newest committed checkpoint is intact - run the "
                           "same command again to resume") from None


def read_sharded_state(checkpoint: str | os.PathLike[str]) -> tuple[CheckpointInfo,
                                                                    dict[str, Any]]:
    """Everything a verified sharded checkpoint holds, consolidated in this one process:
    ``{"dcp/<key>": {name: tensor}, "rank_0000R": {component: state}}``."""
    from .reader import verify_checkpoint

    info = verify_checkpoint(checkpoint)
    if not is_sharded(info.manifest):
        raise CkptlabError(f"{info.path} is not a sharded checkpoint")
    states: dict[str, Any] = {}
    for key in info.manifest[SHARDED_KEY]["dcp_keys"]:
        try:
            states[f"{DCP_DIR}/{key}"] = load_dcp_tensors(info.path, key)
        except CheckpointNotFoundError:
            states[f"{DCP_DIR}/{key}"] = {}  # e.g. an optimizer before its first step
    for rank in range(world_size_of(info.manifest)):
        part = rank_dir_name(rank)
        files = {name: _read_verified(info.path, info.manifest, f"{part}/{name}")
                 for name in (SHARD_INFO, "state.json", "tensors.safetensors")}
        states[part] = decode_rank_part(files, info.path / part)
    return info, states


def compare_sharded_checkpoints(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[Any]:
    """Compare two sharded checkpoints bit for bit: each DCP key, and each rank's part
    component by component (a list of :class:`~.compare.ComponentComparison`)."""
    from .compare import ComponentComparison, _walk

    _, states_a = read_sharded_state(a)
    _, states_b = read_sharded_state(b)
    result = []
    for top in sorted(set(states_a) | set(states_b)):
        if top not in states_a or top not in states_b:
            missing = ComponentComparison(top)
            missing.differing.append("(missing in one checkpoint)")
            result.append(missing)
            continue
        if top.startswith(DCP_DIR + "/"):
            comparison = ComponentComparison(top)
            _walk(states_a[top], states_b[top], top, comparison)
            result.append(comparison)
        else:
            for name in sorted(set(states_a[top]) | set(states_b[top])):
                comparison = ComponentComparison(f"{top}/{name}")
                _walk(states_a[top].get(name), states_b[top].get(name), comparison.name,
                      comparison)
                result.append(comparison)
    return result
