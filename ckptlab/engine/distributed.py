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

On an object store (``s3://``) the same steps upload instead of write: each rank's part and
DCP data object go under the save's own data prefix, and step 4's commit is rank 0 creating
the manifest object (put-if-absent, under the run's lease: :mod:`.remote`); no rename, DCP's
included, is ever relied on. A rank killed before that create leaves data no reader sees.

Saving asynchronously runs steps 1-5 in a background thread, on a process group of its own (so
its collectives never interleave with training's), after copying the state on the training
thread. Loading: rank 0 chooses the checkpoint and broadcasts its name; DCP loads (and
reshards) the model and optimizer; each rank reads the parts it needs.

Nothing is pickled to disk or unpickled from it: DCP's planner works through ckptlab's
storage layer (:mod:`.dcp_storage`), which writes the index as JSON and the data raw, hashes
every file while writing it, and on load validates the index and hashes each data file in full
before DCP sees a byte of it.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import json
import os
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

from .dcp_storage import HashingDCPWriter, JsonLoadPlanner, JsonSavePlanner, VerifiedDCPReader
from .errors import CheckpointCorruptError, CheckpointNotFoundError, CkptlabError
from .format import (
    DCP_DIR,
    FORMAT_NAME,
    MANIFEST,
    SHARD_INFO,
    SHARDED_FORMAT_VERSION,
    SHARDED_KEY,
    TEMP_PREFIX,
    canonical_json,
    checkpoint_dir_name,
    file_entry,
    json_copy,
    library_versions,
    manifest_self_hash,
    read_manifest,
    sha256_of,
)
from .location import StorePath, as_location
from .manager import CheckpointManager
from .policies import BestBy, RetentionPolicy
from .reader import CheckpointInfo
from .sharded import (
    decode_rank_part,
    encode_rank_part,
    is_sharded,
    rank_dir_name,
    world_size_of,
)
from .verified import read_verified
from .writer import (
    CheckpointWriteError,
    ReplacedButUnsyncedError,
    describe_os_error,
    fsync_dir,
    write_durable,
)

# --------------------------------------------------------------------------------------------
# Fault injection per rank (tests and lesson 09)
# --------------------------------------------------------------------------------------------

RANK_FAULT_ENV = "CKPTLAB_RANK_FAULT"
RANK_FAULT_PHASES = ("step", "save:before-shard", "save:shard-written", "save:before-commit",
                     "save:committed", "save:pointer-updated")
# Reached on object stores only: a part of this rank's DCP data object stored (a small object
# is one part), the rest of the save perhaps not, nothing committed.
STORE_RANK_FAULT_PHASES = ("save:uploading",)


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
        phases = RANK_FAULT_PHASES + STORE_RANK_FAULT_PHASES
        if parsed is None or parsed[1] not in phases:
            raise ValueError(f"{RANK_FAULT_ENV}: cannot parse {item!r}; expected "
                             f"RANK:PHASE@STEP[#ATTEMPT] with PHASE one of "
                             f"{', '.join(phases)}")
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
# Reading the DCP part in one process (export, comparison): through ckptlab's storage layer
# --------------------------------------------------------------------------------------------

def dcp_tensor_table(checkpoint: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Names, dtypes and shapes of the tensors in a sharded checkpoint's DCP part."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = as_location(checkpoint)
    metadata = VerifiedDCPReader(path, read_manifest(path)).metadata
    return {fqn: {"dtype": str(m.properties.dtype).replace("torch.", ""),
                  "shape": list(m.size)}
            for fqn, m in sorted(metadata.state_dict_metadata.items())
            if isinstance(m, TensorStorageMetadata)}


def load_dcp_tensors(checkpoint: str | os.PathLike[str], prefix: str) -> dict[str, torch.Tensor]:
    """Consolidate the DCP tensors under ``prefix.`` of a sharded checkpoint into full CPU
    tensors, in this one process (no process group needed). Every file read is verified."""
    path = as_location(checkpoint)
    reader = VerifiedDCPReader(path, read_manifest(path))
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    wanted = {fqn[len(prefix) + 1:]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
              for fqn, m in reader.metadata.state_dict_metadata.items()
              if fqn.startswith(prefix + ".") and isinstance(m, TensorStorageMetadata)}
    if not wanted:
        tops = sorted({k.split(".")[0] for k in reader.metadata.state_dict_metadata})
        raise CheckpointNotFoundError(f"{checkpoint} has no DCP tensors under '{prefix}'; it "
                                      f"has: {', '.join(tops) or 'none'}")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        _dcp_load({prefix: wanted}, reader, no_dist=True)
    return wanted


def _dcp_load(state: dict[str, Any], reader: VerifiedDCPReader, **kwargs: Any) -> None:
    """``dcp.load`` through ckptlab's reader; a refusal on any rank is a one-line error."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=reader, planner=JsonLoadPlanner(), **kwargs)
    except CheckpointException as exc:
        failures = [f[0] if isinstance(f, tuple) else f for f in exc.failures.values()]
        mine = next((f for f in failures if isinstance(f, CkptlabError)), None)
        if mine is not None:
            raise type(mine)(str(mine)) from None
        raise CheckpointCorruptError(f"{reader.checkpoint}: DCP could not load it "
                                     f"({'; '.join(map(str, failures))[:300]})") from None


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

def _data_prefix(name: str, save_id: str) -> str:
    """The data prefix of one sharded save on an object store, the same on every rank:
    ``.data/<name>-<16 hex>``, the hex digits derived from the save's id (unique per save:
    the id holds a random session token)."""
    import hashlib

    return f".data/{name}-{hashlib.sha256(save_id.encode()).hexdigest()[:16]}"


def _open_manager(directory: Path | StorePath, **kwargs: Any) -> CheckpointManager:
    """Rank 0's manager of ``directory``.

    On an object store the run's lease of a job's previous attempt outlives its dead rank 0
    until the lease lapses (the OS releases a local lock at once): a restarted attempt
    (``TORCHELASTIC_RESTART_COUNT`` > 0) waits for it, at most the lease's duration and two
    seconds; the elastic agent has stopped every rank of that attempt before it restarts.
    """
    if not isinstance(directory, StorePath) or _restart_count() == 0:
        return CheckpointManager(directory, **kwargs)
    from .lock import RunLockedError
    from .remote import lease_seconds

    deadline = time.monotonic() + lease_seconds() + 2
    while True:
        try:
            return CheckpointManager(directory, **kwargs)
        except RunLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


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

    On an object store (``s3://bucket/run/checkpoints``) every rank uploads its part and its
    DCP data object under the save's own fresh data prefix (``.data/step_N-<16 hex>/``, named
    after the save), and after the barrier rank 0 alone creates the manifest object, the
    commit (:meth:`.remote.RemoteCheckpointManager.commit_manifest`), holding the run's lease;
    DCP's own rename-based commit is never used. A rank killed at any point before that create
    leaves data without a commit: no reader sees it, and the next writer removes it.

    Args:
        directory: the checkpoints directory, on a filesystem every rank sees, or an
            ``s3://`` location every rank can reach.
        retention, keep_last, best, disk_budget_bytes: as for ``CheckpointManager``.
        extra_versions: library versions the caller's state depends on (recorded).
    """

    def __init__(self, directory: str | os.PathLike[str] | StorePath, *,
                 retention: Sequence[RetentionPolicy] = (), keep_last: int | None = None,
                 best: BestBy | None = None, disk_budget_bytes: int | None = None,
                 extra_versions: Mapping[str, str] | None = None) -> None:
        if not dist.is_initialized():
            raise CkptlabError("ShardedCheckpointer needs torch.distributed initialised "
                               "(launch with torchrun or 'ckptlab train --nproc N')")
        self.directory: Path | StorePath = as_location(directory)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # Checkpoint collectives get their own gloo group: an async save's background thread
        # must never interleave its collectives with training's on the default group.
        self.group = dist.new_group(backend="gloo")
        self.manager: CheckpointManager | None = None
        error = None
        if self.rank == 0:
            try:
                self.manager = _open_manager(self.directory, keep_last=keep_last,
                                             retention=retention, best=best,
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

        Rank 0 verifies (its ``choose`` typically calls ``latest_valid_checkpoint``, which skips
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
        path = as_location(answer["path"])
        return CheckpointInfo(path, read_manifest(path))

    # -- loading --------------------------------------------------------------------------
    def load_dcp(self, info: CheckpointInfo, state: dict[str, Any]) -> None:
        """Load the checkpoint's DCP part into ``state`` in place (collective; DCP reshards)."""
        if not is_sharded(info.manifest):
            raise CkptlabError(f"{info.path} is not a sharded checkpoint")
        _dcp_load(state, VerifiedDCPReader(info.path, info.manifest), process_group=self.group)

    def read_rank_part(self, info: CheckpointInfo, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s own states of a sharded checkpoint, hash-checked on read."""
        part = rank_dir_name(rank)
        files = {name: read_verified(info.path, info.manifest, f"{part}/{name}")
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
            json_copy(metrics or {}), json_copy(config) if config is not None else None,
            json_copy(extra or {}), {k: k for k in dcp_state})
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
        store = isinstance(self.directory, StorePath)
        # Where the save is written before its commit: a temporary directory, or (an object
        # store) the save's own data prefix, which every rank derives from the save's id.
        data = _data_prefix(final.name, save_id) if store else None
        temp = self.directory / (data or f"{TEMP_PREFIX}{final.name}-{save_id}")
        part = temp / rank_dir_name(rank)
        # 1. this rank's own part
        problem = None
        try:
            rank_fault_point("save:before-shard", step, rank)
            if isinstance(part, StorePath):  # [object store] one object per file
                for name, content in p.part_files.items():
                    part.store.upload((part / name).key, [memoryview(content)])
            else:
                part.mkdir(parents=True)
                for name, content in p.part_files.items():
                    write_durable(part / name, content)
                fsync_dir(part)
        except OSError as exc:
            problem = f"rank {rank}: {describe_os_error(exc)}"
        except CkptlabError as exc:  # the store refused or could not be reached
            problem = f"rank {rank}: {exc}"
        problems = [x for x in _all_gather_json(problem, self.group) if x]
        if problems:  # every rank has stopped writing: rank 0 may remove the directory
            raise CheckpointWriteError(
                f"could not save checkpoint {final.name}: {'; '.join(problems)}. Earlier "
                f"checkpoints are unchanged; free disk space or fix permissions"
                f"{self._abandon(temp)}")
        # 2. model and optimizer through DCP's planner and ckptlab's storage (collective;
        # raises on every rank if one fails); each file is hashed while it is written
        writer = HashingDCPWriter(temp / DCP_DIR, sync_files=True, on_part=lambda number:
                                  rank_fault_point("save:uploading", step, rank))
        try:
            dcp.save(p.dcp_state, storage_writer=writer, planner=JsonSavePlanner(),
                     process_group=self.group)
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            # DCP raises on every rank once every rank is done writing (its last collective)
            raise CheckpointWriteError(
                f"could not save checkpoint {final.name}: {_describe_dcp_failure(exc)}. "
                f"Earlier checkpoints are unchanged{self._abandon(temp)}") from exc
        rank_fault_point("save:shard-written", step, rank)
        # 3. hashes of what this rank wrote; gathering them is the barrier before the commit
        mine = {f"{part.name}/{name}": file_entry([content])
                for name, content in p.part_files.items()}
        mine.update(writer.written)  # this rank's data file; rank 0's also holds the index
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
                manifest = self._manifest(p, files, parts, save_id, data)
                assert self.manager is not None
                if store:  # [object store] one create-only object, after the barrier
                    self.manager.commit_manifest(final.name, manifest)  # type: ignore[attr-defined]
                else:
                    fsync_dir(temp / DCP_DIR)
                    write_durable(temp / MANIFEST, canonical_json(manifest, readable=True))
                    fsync_dir(temp)
                    self.manager.commit_save(temp, final)
                rank_fault_point("save:committed", step, rank)
                self.manager.adopt_committed(final, manifest)
                rank_fault_point("save:pointer-updated", step, rank)
            except BaseException as exc:  # told to every rank below, then re-raised
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                error = exc
        outcome = broadcast_json(outcome, self.group)
        if not outcome["ok"]:
            if rank == 0:
                note = self._abandon(temp)
                if isinstance(error, ReplacedButUnsyncedError):  # noqa: F821
                    raise CheckpointWriteError(error.describe(final)) from error
                if isinstance(error, OSError):  # noqa: F821 (set above on rank 0)
                    raise CheckpointWriteError(
                        f"could not commit checkpoint {final.name}: "
                        f"{describe_os_error(error)}; earlier checkpoints are unchanged; "
                        f"free disk space or fix permissions{note}") from error
                raise error  # noqa: F821
            raise CheckpointWriteError(f"rank 0 could not commit checkpoint {final.name}: "
                                       f"{outcome['error']}")
        return CheckpointInfo(final, manifest if rank == 0 else read_manifest(final))

    def _abandon(self, temp: Path | StorePath) -> str:
        """Remove a failed save's temporary directory (rank 0; call once no rank writes into
        it any more). Returns ``""``, or a sentence for the error message if it stayed."""
        if self.rank != 0:
            return ""
        if isinstance(temp, StorePath):  # [object store] the save's data prefix
            self.manager.discard_uncommitted(  # type: ignore[union-attr]
                temp.relative_to(self.directory))  # type: ignore[arg-type]
            return ""
        if not temp.exists():  # (gone if the commit's rename happened)
            return ""
        try:
            shutil.rmtree(temp)
        except OSError as exc:
            return (f" ({temp.name} could not be removed: {describe_os_error(exc)}; readers "
                    "ignore it and the next save removes it)")
        return ""

    def _manifest(self, p: _Pending, files: dict[str, Any], parts: dict[str, Any],
                  save_id: str, data: str | None = None) -> dict[str, Any]:
        now = time.time()
        located = {}
        if data is not None:  # [object store] the data prefix the commit object names
            from .remote import DATA_FIELD

            located = {DATA_FIELD: data}
        components: dict[str, Any] = {}
        for key, value in p.dcp_state.items():
            leaves = _tensor_leaves(value)
            components[f"{DCP_DIR}/{key}"] = {
                "tensors": len(leaves), "json_bytes": 0,
                "tensor_bytes": sum(t.numel() * t.element_size() for t in leaves)}
        components.update(sorted(parts.items()))
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME, "format_version": SHARDED_FORMAT_VERSION, "step": p.step,
            **p.extra, **located,
            "created_unix": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "metrics": p.metrics, "config": p.config,
            "config_sha256": sha256_of(canonical_json(p.config)) if p.config is not None
            else None,
            "versions": library_versions(self.manager.extra_versions if self.manager else {}),
            "components": components,
            "files": files,
            SHARDED_KEY: {"world_size": self.world_size, "save_id": save_id,
                          "dcp_dir": DCP_DIR, "dcp_keys": sorted(p.dcp_state),
                          "ranks": [rank_dir_name(r) for r in range(self.world_size)],
                          "backend": dist.get_backend()},
        }
        manifest["manifest_sha256"] = manifest_self_hash(manifest)
        return manifest


def _describe_dcp_failure(exc: BaseException) -> str:
    """One line for a failed ``dcp.save``: what went wrong on which rank."""
    failures = getattr(exc, "failures", None)  # CheckpointException: rank -> (error, trace)
    if not isinstance(failures, Mapping):
        failures = {None: (exc, None)}
    described = []
    for rank, failure in sorted(failures.items(), key=lambda item: -1 if item[0] is None
                                else item[0]):
        error = failure[0] if isinstance(failure, tuple) else failure
        what = (f"{describe_os_error(error)}; free disk space or fix permissions"
                if isinstance(error, OSError) else f"{type(error).__name__}: {error}")
        described.append(what if rank is None else f"rank {rank}: {what}")
    return "; ".join(described)


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

def init_distributed(backend: str | None = None) -> None:
    """``dist.init_process_group`` for a worker of torchrun / the elastic launcher, safe
    across restarts.

    torch's elastic agent shares one TCP store across restart rounds, so a restarted worker
    can read the previous attempt's (dead) peer addresses and fail to connect. Every key of
    this attempt therefore lives under a prefix naming the attempt.

    A launched worker also dies with its launcher (:func:`die_with_launcher`): ranks whose
    agent was killed must not train on, and commit checkpoints, without it.
    """
    if in_launched_worker():
        die_with_launcher()
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


# The launcher's pid, set for its workers by launch(): a worker checks it is still its parent.
LAUNCHER_PID_ENV = "CKPTLAB_LAUNCHER_PID"
# How often a worker's watchdog thread checks that its launcher is alive.
PARENT_POLL_SECONDS = 0.5


def die_with_launcher(poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """SIGKILL this worker as soon as its launcher (the elastic agent, its parent) is gone.

    torch starts each worker in a session of its own, so a SIGKILLed agent takes none of them
    with it: they would train on, and commit checkpoints, with nobody to restart or stop them.
    On Linux the kernel sends the signal when the parent dies (``PR_SET_PDEATHSIG``); on every
    platform a daemon thread also checks the parent every ``poll_seconds`` (a dead parent
    makes the worker a child of another process). SIGKILL, not SIGTERM: a save it interrupts
    is never committed, and the next run removes its leftovers.
    """
    expected = int(os.environ.get(LAUNCHER_PID_ENV) or os.getppid())
    if sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGKILL)
    _kill_self_if_orphaned(expected)  # the parent may have died before the line above
    start_parent_watchdog(expected, poll_seconds)


def _set_parent_death_signal(signum: int) -> bool:
    """Linux ``prctl(PR_SET_PDEATHSIG, signum)``; whether the kernel accepted it."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no prctl here: the watchdog thread alone watches
        return False


def _kill_self_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        sys.stderr.write(f"ckptlab: the launcher (pid {parent}) of this worker (pid "
                         f"{os.getpid()}) is gone; stopping at once\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def start_parent_watchdog(parent: int, poll_seconds: float = PARENT_POLL_SECONDS) -> Any:
    """A daemon thread that SIGKILLs this process once ``parent`` is no longer its parent
    (the portable half of :func:`die_with_launcher`); returns the thread."""
    import threading

    def watch() -> None:
        while True:
            _kill_self_if_orphaned(parent)
            time.sleep(poll_seconds)

    thread = threading.Thread(target=watch, name="ckptlab-parent-watchdog", daemon=True)
    thread.start()
    return thread


def in_launched_worker() -> bool:
    """Whether this process is a worker started by torchrun / the elastic launcher."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


# How long the ranks of a signalled job have to finish their step and save before the elastic
# agent SIGKILLs them. Under the usual 30 s grace period of a preempting cluster (Kubernetes,
# Slurm's KillWait), so the launcher has exited before the cluster's own SIGKILL.
GRACEFUL_STOP_SECONDS = 20


def launch(command: Sequence[str], *, nproc: int, nnodes: int = 1, max_restarts: int = 0,
           rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
           monitor_interval: float = 0.2, worker_env: Mapping[str, str] | None = None,
           stop_seconds: int = GRACEFUL_STOP_SECONDS) -> str | None:
    """Run ``command`` (an executable and its arguments, e.g. ``[sys.executable, "-u", "-m",
    "some.module", ...]``) as ``nproc`` local ranks under torch's elastic agent.

    The same agent ``torchrun`` uses: a c10d rendezvous (local, or at ``rdzv_endpoint`` for
    ``nnodes`` > 1), and up to ``max_restarts`` restarts of the whole worker group when a
    worker dies.

    SIGTERM or SIGINT to this process is the agent's to handle: it sends the same signal to
    every rank, gives them ``stop_seconds`` to exit (a ckptlab rank finishes its step, the
    ranks save once, together, and exit), then SIGKILLs any rank still running. The workers
    die with this process if it is killed (:func:`die_with_launcher`).

    Args:
        command: what each rank runs; the caller chooses it (the engine starts no program of
            its own).
        worker_env: extra environment variables for the workers.

    Returns:
        ``None`` when the job ran to its end, or the name of the signal that stopped it
        (``"SIGTERM"``); whether the ranks stopped cleanly is theirs to report.

    Raises:
        CkptlabError: the job failed after its restarts (the message names the failing rank).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nnodes > 1 and not rdzv_endpoint:
        raise CkptlabError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every "
                           "node) and the same --rdzv-id")
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc,
        run_id=rdzv_id or str(uuid.uuid4()), rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "localhost:0", max_restarts=max_restarts,
        monitor_interval=monitor_interval, start_method="spawn",
        shutdown_timeout=stop_seconds)
    # The agent gives its workers a copy of this process's environment: the only way in.
    added = {**(worker_env or {}), LAUNCHER_PID_ENV: str(os.getpid())}
    saved = {name: os.environ.get(name) for name in added}
    os.environ.update(added)
    try:
        elastic_launch(config, command[0])(*command[1:])
    except SignalException as exc:  # the agent has passed it on and waited for the ranks
        return signal.Signals(exc.sigval).name
    except KeyboardInterrupt:  # Ctrl-C before the agent took over SIGINT: no rank started
        return signal.SIGINT.name
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank} exited with {f.exitcode}"
                             + (f" ({f.signal_name()})" if f.exitcode < 0 else "")
                             for rank, f in exc.failures.items())
        raise CkptlabError(f"the distributed job failed after {max_restarts} restart(s): "
                           f"{failures}; the newest committed checkpoint is intact - run the "
                           "same command again to resume") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return None


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
        files = {name: read_verified(info.path, info.manifest, f"{part}/{name}")
                 for name in (SHARD_INFO, "state.json", "tensors.safetensors")}
        states[part] = decode_rank_part(files, info.path / part)
    return info, states


def compare_sharded_checkpoints(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[Any]:
    """Compare two sharded checkpoints bit for bit: each DCP key, and each rank's part
    component by component (a list of :class:`~.compare.ComponentComparison`)."""
    from .compare import ComponentComparison, compare_values

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
            compare_values(states_a[top], states_b[top], top, comparison)
            result.append(comparison)
        else:
            for name in sorted(set(states_a[top]) | set(states_b[top])):
                comparison = ComponentComparison(f"{top}/{name}")
                compare_values(states_a[top].get(name), states_b[top].get(name), comparison.name,
                      comparison)
                result.append(comparison)
    return result
