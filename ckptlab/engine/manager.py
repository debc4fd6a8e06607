"""CheckpointManager: save registered components atomically, restore them, apply retention.

The manager ties the pieces together: components registered by name (anything with
``state_dict()`` / ``load_state_dict()``), the on-disk :mod:`.format`, the commit protocol of
:mod:`.writer`, the verification of :mod:`.reader`, and the save and retention
:mod:`.policies`. It knows nothing about what is being trained.

Introduced in notebook ``01_pipeline_trace``; policies in ``06_retention_strategies``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    RollbackRequiredError,
)
from .faults import fault_point
from .format import (
    ABANDONED_SUBDIR,
    BEST,
    FORMAT_NAME,
    FORMAT_VERSION,
    LATEST,
    MANIFEST,
    STATE,
    TEMP_PREFIX,
    TENSORS,
    canonical_json,
    checkpoint_dir_name,
    checkpoint_step,
    json_copy,
    library_versions,
    manifest_self_hash,
    read_manifest,
    safetensors_chunks,
    sha256_of,
    state_json,
    tensor_nbytes,
)
from .location import store_location, store_protocol
from .lock import RunLock
from .policies import (
    BestBy,
    CheckpointRecord,
    Decision,
    DiskBudget,
    KeepLastN,
    RetentionPolicy,
)
from .reader import (
    CheckpointInfo,
    DevicePlacement,
    Stateful,
    committed_checkpoints,
    committed_steps,
    latest_valid_checkpoint,
    load_checkpoint_state,
    newest_that_passes,
    read_decision_log,
    read_pointer,
    read_pointer_record,
    restore_components,
    verify_checkpoint,
)
from .retention import (
    RetentionPlan,
    append_events,
    history_from_events,
    plan_retention,
    saved_event,
    with_save,
)
from .serialization import split_state
from .writer import (
    CheckpointWriteError,
    ParallelFlush,
    PointerSetAsideWarning,
    ReplacedButUnsyncedError,
    StagingBuffer,
    commit_directory,
    delete_checkpoints,
    describe_os_error,
    fsync_dir,
    remove_leftovers,
    set_aside_non_pointer,
    write_pointer,
)

# Managers with an async save in flight. A script that ends without close() must not lose
# its last save: at interpreter exit concurrent.futures stops accepting work (the save's
# fsyncs would fail, and nothing would report it), so these saves are finished first.
_IN_FLIGHT: weakref.WeakSet[CheckpointManager] = weakref.WeakSet()


def _finish_async_saves_at_exit() -> None:
    for manager in list(_IN_FLIGHT):
        try:
            manager.wait()
        except Exception as exc:  # nobody is left to catch it: say so on stderr
            print(f"ckptlab: the async save in {manager.directory} failed at exit: {exc}",
                  file=sys.stderr)


# threading's exit hooks run before concurrent.futures shuts its pools down (last registered,
# first run); atexit's run after them, too late. (threading._register_atexit: Python 3.9+.)
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_finish_async_saves_at_exit)


def _unlink_temporaries(*paths: Path | None) -> None:
    """Remove a failed save's temporary pointer files (those it got to write)."""
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)


def _record(name: str, manifest: Mapping[str, Any]) -> CheckpointRecord:
    """What retention sees of the checkpoint ``name`` with this manifest."""
    created = manifest.get("created_unix")
    return CheckpointRecord(name, int(manifest["step"]), dict(manifest.get("metrics") or {}),
                            sum(int(f["bytes"]) for f in manifest["files"].values()),
                            float(created) if created is not None else None)


@dataclass
class SaveTimings:
    """Wall seconds spent in each part of the most recent save."""

    snapshot: float = 0.0   # state_dict() + encoding, on the calling thread
    write: float = 0.0      # files written, hashed and fsynced
    commit: float = 0.0     # rename, pointers, retention
    total: float = 0.0      # all of it (for an async save, partly in the background)



@dataclass
class Snapshot:
    """Everything a save writes, captured on the training thread."""

    step: int
    json_parts: dict[str, bytes | Any]  # encoded JSON, or the tree itself until encode_json()
    tensors: Mapping[str, torch.Tensor]
    tensor_keys: dict[str, list[str]]
    metrics: dict[str, Any]
    config: dict[str, Any] | None
    extra: dict[str, Any]
    snapshot_seconds: float
    # set once every tensor byte has been written to the page cache and hashed: from then on
    # the save no longer reads the tensors it was given
    staged: threading.Event = field(default_factory=threading.Event)
    # save_async(copy_in_background=True): the buffer the writer thread copies the tensors
    # into before it writes them
    stage_into: StagingBuffer | None = None
    encoded: bool = True

    def encode_json(self) -> None:
        """Encode the JSON trees, if the snapshot deferred it."""
        if not self.encoded:
            self.json_parts = {name: state_json(tree) for name, tree in self.json_parts.items()}
            self.encoded = True


class CheckpointManager:
    """Saves registered components atomically and restores them, falling back past corruption.

    Components are registered by name (like DreamerV3's checkpoint): any object with
    ``state_dict()`` / ``load_state_dict()`` works, not only ckptlab's own.

    Example::

        with CheckpointManager("runs/demo/checkpoints", retention=[KeepLastN(3)],
                               best=BestBy("eval_return", "max")) as manager:
            manager.register("model", model)
            manager.register("optimizer", optimizer)
            manager.restore_latest()          # None on a fresh run
            ...
            manager.save(step, metrics={"eval_return": 412.0})

    Args:
        directory: where checkpoint directories live; created on first save.
        keep_last: shorthand for ``retention=[KeepLastN(keep_last)]``.
        retention: retention policies; a checkpoint survives if any keeps it (none given: all
            are kept). The latest and the best are never deleted, and nothing is deleted before
            the new checkpoint is committed. Each decision is appended, with its reasons, to
            ``decisions.jsonl`` in ``directory``.
        best: how the ``best`` pointer is chosen (``None``: no best pointer).
        disk_budget_bytes: after retention, delete the oldest unprotected checkpoints until
            all fit in this many bytes.
        create: ``False`` opens the directory read-only (inspect, verify, prune --dry-run):
            nothing is created, locked or cleaned.

    A writing manager holds the directory's writer lock until :meth:`close`.

    Introduced in notebook ``01_pipeline_trace``; policies in ``06_retention_strategies``.
    """

    def __new__(cls, directory: str | os.PathLike[str], *args: Any, **kwargs: Any
                ) -> CheckpointManager:
        # [object store] an s3:// location gets the object-store manager (engine/remote.py);
        # a URL of another scheme, or one mangled by Path(), is refused here
        if cls is CheckpointManager and store_location(directory) is not None:
            return super().__new__(store_protocol().RemoteCheckpointManager)
        return super().__new__(cls)

    def __init__(self, directory: str | os.PathLike[str], *, keep_last: int | None = None,
                 retention: Sequence[RetentionPolicy] = (), best: BestBy | None = None,
                 disk_budget_bytes: int | None = None, create: bool = True) -> None:
        self.directory = self._location(directory)
        self.retention: list[RetentionPolicy] = list(retention)
        if keep_last is not None:
            self.retention.append(KeepLastN(keep_last))
        self.best = best
        self.budget = DiskBudget(disk_budget_bytes) if disk_budget_bytes is not None else None
        self.create = create
        # versions of libraries the caller's components depend on, recorded in manifests
        self.extra_versions: dict[str, str] = {}
        self.components: dict[str, Stateful] = {}
        self.last_save_timings = SaveTimings()  # set by whichever thread wrote the last save
        self.last_blocking_seconds = 0.0  # how long the last save() / save_async() call held
        self._manifests: dict[str, dict[str, Any]] = {}  # cache: name -> manifest
        self._unusable: set[str] = set()  # newer checkpoints found invalid by _refuse_branch
        self._restored: str | None = None  # the checkpoint of this directory last restored
        self._history: list[tuple[int, dict[str, Any]]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[CheckpointInfo] | None = None
        self._staged: threading.Event | None = None  # of the save in flight
        self._staging = StagingBuffer()  # reused by every async save that copies
        self._lock = self._writer_lock()
        self._newest_written: int | None = None  # highest step this manager committed
        self._check_location()
        if create:
            # Lock at once (not at the first save), so a second writer fails before it trains;
            # and before cleaning, since leftovers might be another writer's.
            self._hold_lock()
            try:
                self.remove_leftovers()
                self._repair_pointers()  # a crash may have left `latest` one save behind
            except OSError as exc:
                self._lock.release()
                raise CheckpointWriteError(
                    f"cannot tidy {self.directory}: {describe_os_error(exc)}") from exc
            except BaseException:
                self._lock.release()
                raise

    # -- where checkpoints live (overridden for object stores by remote.py) ------------------
    def _location(self, directory: str | os.PathLike[str]) -> Path:
        return Path(directory)

    def _writer_lock(self) -> RunLock:
        return RunLock(self.directory)

    def _check_location(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise CkptlabError(f"{self.directory} exists and is not a directory")

    def _pointer_exists(self, pointer: str) -> bool:
        return (self.directory / pointer).exists()

    def _remove_pointer(self, pointer: str) -> None:
        (self.directory / pointer).unlink(missing_ok=True)

    def _delete(self, names: Sequence[str]) -> None:
        delete_checkpoints(self.directory, names)

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, component: Stateful) -> None:
        """Register ``component`` under ``name``; its state is saved and restored by that name."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise CkptlabError(f"component name {name!r} may only use letters, digits, _ . -")
        if not isinstance(component, Stateful):
            raise CkptlabError(f"component {name!r} ({type(component).__name__}) has no "
                               "state_dict()/load_state_dict()")
        self.components[name] = component

    # -- listing --------------------------------------------------------------------------
    def committed(self) -> list[Path]:
        """Committed checkpoint directories, oldest first (not verified)."""
        return committed_checkpoints(self.directory)

    def latest_pointer(self) -> str | None:
        """The checkpoint name the ``latest`` pointer names, or ``None`` if there is none."""
        return read_pointer(self.directory, LATEST)

    def best_pointer(self) -> str | None:
        """The checkpoint name the ``best`` pointer names, or ``None`` if there is none."""
        return read_pointer(self.directory, BEST)

    def records(self) -> list[CheckpointRecord]:
        """What retention sees of each committed checkpoint with a readable manifest."""
        records = []
        for path in self.committed():
            manifest = self._manifests.get(path.name)
            if manifest is None:
                try:
                    manifest = read_manifest(path)
                except CkptlabError:
                    continue  # unreadable: neither counted nor chosen; verify reports it
                self._manifests[path.name] = manifest
            records.append(_record(path.name, manifest))
        return records

    def latest_valid(self) -> CheckpointInfo:
        """Verify checkpoints newest first and return the first valid one.

        Raises:
            CheckpointNotFoundError: there are no checkpoints.
            CheckpointCorruptError: there are checkpoints but none is valid.
        """
        return latest_valid_checkpoint(self.directory)

    # -- restore --------------------------------------------------------------------------
    def restore(self, checkpoint: str | os.PathLike[str] | None = None, *,
                device: DevicePlacement = None) -> CheckpointInfo:
        """Load every registered component from ``checkpoint`` (default: newest valid here).

        Nothing is loaded into any component unless the whole checkpoint verified and holds
        a state for every registered component. Each file is read once: hashed as it is read
        and decoded from the same reads, the tensors straight into fresh tensors, so a
        restore holds one decoded copy of the state (plus the components themselves) at most.

        ``device`` (``"cuda"``, or ``{"model": "cuda:0"}`` for some components) puts the
        tensors straight on a device, through a few MB of host memory at a time, instead of
        decoding the whole state on the host first; see :func:`load_checkpoint_state`.
        """
        if checkpoint is None:  # this folder holds the checkpoints: nothing to resolve
            info, states = newest_that_passes(
                self.directory, lambda path: load_checkpoint_state(path, device=device),
                stacklevel=3)
        else:
            info, states = load_checkpoint_state(checkpoint, keys=None, device=device)
        restore_components(self.components, states, info.path)
        if info.path.parent.resolve() == self.directory.resolve():
            self._restored = info.name  # what a refused save's advice continues from
        return info

    def restore_latest(self) -> CheckpointInfo | None:
        """Restore from the newest valid checkpoint, or return ``None`` when there is none."""
        if not self.committed():
            return None
        return self.restore()

    # -- save -----------------------------------------------------------------------------
    def save(self, step: int, *, metrics: Mapping[str, Any] | None = None,
             config: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> CheckpointInfo:
        """Atomically write a checkpoint of every registered component at ``step``.

        Args:
            step: the training step; names the directory ``step_{step:08d}``.
            metrics: numbers worth seeing without loading (manifest, retention, best pointer).
            config: the run configuration (recorded with its SHA-256 hash).
            extra: further JSON-compatible manifest fields (for example ``episode``).

        Raises:
            CheckpointWriteError: the disk refused (full, permissions); earlier checkpoints
                and pointers are unchanged.
        """
        self.wait()  # an earlier async save must land (or report its error) first
        t0 = time.perf_counter()
        self._refuse_branch(step)
        snapshot = self._snapshot(step, metrics, config, extra, staging=None, encode=False)
        info = self._write(snapshot)
        self.last_blocking_seconds = time.perf_counter() - t0
        return info

    def save_async(self, step: int, *, metrics: Mapping[str, Any] | None = None,
                   config: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None,
                   copy: bool = True,
                   copy_in_background: bool = False) -> Future[CheckpointInfo]:
        """Like :meth:`save`, but the files are written, hashed, fsynced and committed by a
        background thread; the calling thread only takes the snapshot.

        What the caller may do while the save is in flight (the mutation contract):

        * ``copy=True`` (default): the tensors are copied, on the calling thread, into a
          staging buffer that the manager keeps and reuses for every later async save (one
          copy of the tensors, freed by :meth:`release_staging_buffer` or :meth:`close`).
          When this call returns, the state may be changed freely.
        * ``copy_in_background=True`` (with ``copy=True``): the same copy into the staging
          buffer, but made by the writer thread, so this call returns as soon as the state is
          encoded. The caller must not modify any registered tensor (or numpy array) in place
          until :meth:`wait_staged` returns, which happens as soon as the copy is done (one
          ``memcpy`` of the state, long before the write). Made for a loop whose next change
          to the state comes after some read-only work - the next batch's forward and backward
          read the weights and write only gradients - so the copy overlaps that work:
          ``save_async(step, copy_in_background=True)``, forward, backward,
          ``wait_staged()``, ``optimizer.step()``.
        * ``copy=False``: nothing is copied and the file is written from the components' own
          tensors. The caller must not modify any registered tensor (or numpy array) in
          place until :meth:`wait_staged` returns, which happens once every byte has been
          written to the operating system and hashed (before the fsync, which continues in
          the background). A change made earlier can end up in the checkpoint or make it
          fail verification. Use it when the next change is far off (an evaluation, a data
          loader wait) or the state is too large to copy.

        Everything else (``state_dict()`` structure, numbers, strings) is encoded before this
        returns, in both modes. One save is in flight at a time: a new one first waits for the
        previous. A failure is raised by the next :meth:`save`, :meth:`save_async`,
        :meth:`wait` or :meth:`close` - never swallowed. A save still in flight when the
        interpreter exits (a script that never called :meth:`close`) is finished first; if it
        fails then, the error is printed to stderr.
        """
        if copy_in_background and not copy:
            raise CkptlabError("copy_in_background=True needs copy=True: with copy=False "
                               "nothing is copied, in the background or otherwise")
        t0 = time.perf_counter()
        self.wait()
        self._refuse_branch(step)
        stage_now = copy and not copy_in_background
        snapshot = self._snapshot(step, metrics, config, extra,
                                  staging=self._staging if stage_now else None)
        if stage_now:
            snapshot.staged.set()  # the copies are the snapshot; the caller's tensors are free
        elif copy:
            snapshot.stage_into = self._staging  # the writer thread copies, then sets `staged`
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ckptlab-save")
        self._staged = snapshot.staged
        self._pending = self._executor.submit(self._write_in_background, snapshot)
        _IN_FLIGHT.add(self)
        self.last_blocking_seconds = time.perf_counter() - t0
        return self._pending

    def wait_staged(self) -> None:
        """Block until the in-flight async save no longer reads the registered tensors.

        After ``save_async(copy=False)`` or ``save_async(copy_in_background=True)``, call
        this before changing any tensor in place. It returns when every byte has been written
        and hashed (``copy=False``; the fsync and the commit may still be running), or copied
        into the staging buffer (``copy_in_background``). Returns at once when no save is in
        flight or it copied its state on the calling thread.
        Errors are not raised here but by :meth:`wait` and the next save.
        """
        staged = self._staged
        if staged is not None:
            staged.wait()

    def release_staging_buffer(self) -> None:
        """Free the staging buffer async saves copy into (it is allocated again when needed).

        Waits for the in-flight save first, since it may still be writing from the buffer.
        """
        self.wait()
        self._staging.release()

    def wait(self) -> CheckpointInfo | None:
        """Block until the in-flight async save (if any) is committed; raise its error."""
        pending = self._pending
        if pending is None:
            return None
        try:
            info = pending.result()
        except CkptlabError:
            self._pending = None
            _IN_FLIGHT.discard(self)
            raise
        except Exception as exc:  # an unexpected failure in the writer thread
            self._pending = None
            _IN_FLIGHT.discard(self)
            raise CheckpointWriteError(f"background checkpoint save failed: {exc!r}") from exc
        # (A KeyboardInterrupt while waiting leaves the save pending: close() reports it.)
        self._pending = None
        _IN_FLIGHT.discard(self)
        return info

    def close(self) -> None:
        """Finish any async save (raising its error), stop the writer thread, release the lock."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._staging.release()
            self._lock.release()
            self._newest_written = None  # without the lock, others may write: scan again

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _snapshot(self, step: int, metrics: Mapping[str, Any] | None,
                  config: Mapping[str, Any] | None, extra: Mapping[str, Any] | None,
                  staging: StagingBuffer | None, encode: bool = True) -> Snapshot:
        """The state of every component at ``step``. ``encode=False`` (a synchronous save,
        whose caller waits) leaves the JSON encoding to the writer, which does it while the
        tensors are hashed and flushed; an async save must encode before returning."""
        if not self.create:
            raise CkptlabError(f"{self.directory} was opened read-only")
        if not self.components:
            raise CkptlabError("no components registered; call register(name, obj) first")
        if step < 0:
            raise CkptlabError(f"step must be non-negative (got {step})")
        t0 = time.perf_counter()
        json_parts: dict[str, bytes] = {}
        tensors: dict[str, torch.Tensor] = {}
        tensor_keys: dict[str, list[str]] = {}
        for name, component in self.components.items():
            subtree, part = split_state(component.state_dict(), name)
            # Encoded now (async): bytes cannot change if the component changes after this call.
            json_parts[name] = state_json(subtree) if encode else subtree
            tensor_keys[name] = list(part)
            tensors.update(part)
        kept: Mapping[str, torch.Tensor] = tensors if staging is None else staging.stage(tensors)
        # Private copies of the caller's dicts; NaN and infinity (a diverged loss) become None,
        # because the manifest is strict JSON.
        return Snapshot(step, json_parts, kept, tensor_keys, json_copy(metrics or {}),
                         json_copy(config) if config is not None else None,
                         json_copy(extra or {}), time.perf_counter() - t0, encoded=encode)

    def _write_in_background(self, snap: Snapshot) -> CheckpointInfo:
        # Hand the GIL straight back: otherwise the caller of save_async() can wait a whole
        # switch interval (5 ms) for it while this thread runs the Python parts of the save.
        time.sleep(0)
        if snap.stage_into is not None:  # save_async(copy_in_background=True)
            try:
                snap.tensors = snap.stage_into.stage(snap.tensors)
            finally:  # copied (or failed): the save no longer reads the caller's tensors
                snap.staged.set()
        return self._write(snap)

    def _write(self, snap: Snapshot) -> CheckpointInfo:
        step = snap.step
        t1 = time.perf_counter()
        final = self.directory / checkpoint_dir_name(step)
        tag = uuid.uuid4().hex[:8]
        temp = self.directory / f"{TEMP_PREFIX}{final.name}-{tag}"
        pointer_temp = self.directory / f"{TEMP_PREFIX}{LATEST}-{tag}"
        best_temp: Path | None = None  # a moved `best`, written beside `latest`
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self._set_aside_non_pointers()  # (made after this manager opened the directory)
            temp.mkdir()
            tensor_chunks = safetensors_chunks(snap.tensors, {"format": FORMAT_NAME})
            pointer = canonical_json({"checkpoint": final.name, "step": step}, readable=True)
            # Durability (docs/crash-consistency.md). Persistence model: file data is durable
            # once the file's fsync returns, a name once its directory's fsync returns, and a
            # rename is atomic. So: every file, the next `best` and the temporary folder's
            # names are fsynced (in parallel) before the folder is renamed into place; one
            # fsync of the parent then covers the renames. The next `latest` is not fsynced
            # (readers take a damaged one as absent, resume scans the folders, the next writer
            # repairs it). Checked, crash state by crash state under an ordered and an
            # adversarial model, by engine/crash_recovery.py (workloads `save*`).
            with ParallelFlush() as flush:
                try:
                    pending = {TENSORS: flush.start(temp / TENSORS, tensor_chunks)}
                    # The rest is prepared while other threads hash and flush the tensors.
                    snap.encode_json()
                    # One JSON object, assembled from the per-component encodings.
                    pending[STATE] = flush.start(temp / STATE, [b"{\n" + b",\n".join(
                        json.dumps(name).encode() + b": " + part
                        for name, part in snap.json_parts.items()) + b"\n}"])
                    flush.write(pointer_temp, [pointer], durable=False)  # see above
                    components = {
                        name: {"tensors": len(keys),
                               "tensor_bytes": sum(tensor_nbytes(snap.tensors[k]) for k in keys),
                               "json_bytes": len(snap.json_parts[name])}
                        for name, keys in snap.tensor_keys.items()}
                    # What retention and `best` will do once the save is committed, decided
                    # now (nothing is changed before the commit; the lock is held, so no other
                    # writer changes the directory meanwhile). A `best` that moves is written
                    # now, beside `latest`, and renamed with it.
                    created = time.time()
                    plan = self._plan_retention(
                        [r for r in self.records() if r.name != final.name] + [CheckpointRecord(
                            final.name, step, dict(snap.metrics),
                            sum(entry.total for entry in pending.values()), created)],
                        latest=final.name, saved=(step, dict(snap.metrics)))
                    if plan.best_record is not None:
                        best_temp = self.directory / f"{TEMP_PREFIX}{BEST}-{tag}"
                        flush.write(best_temp,
                                    [canonical_json(plan.best_record, readable=True)])
                    files = {name: entry.result() for name, entry in pending.items()}
                finally:  # every tensor byte written and hashed (or the save failed)
                    snap.staged.set()
                manifest = self._manifest(step, components, files, snap.metrics, snap.config,
                                          snap.extra, created)
                flush.write(temp / MANIFEST, [canonical_json(manifest, readable=True)])
                flush.sync_directory(temp)
            t2 = time.perf_counter()
            fault_point("save:files-written", step)
            self.commit_save(temp, final, sync=False)
        except ReplacedButUnsyncedError as exc:
            snap.staged.set()
            _unlink_temporaries(pointer_temp, best_temp)
            raise CheckpointWriteError(exc.describe(final)) from exc
        except OSError as exc:
            snap.staged.set()  # nothing reads the tensors any more
            shutil.rmtree(temp, ignore_errors=True)
            _unlink_temporaries(pointer_temp, best_temp)
            raise CheckpointWriteError(
                f"could not save checkpoint {final.name} in {self.directory}: "
                f"{describe_os_error(exc)}. Earlier checkpoints and pointers are unchanged; "
                "free disk space or fix permissions, then save again") from exc
        except BaseException:
            snap.staged.set()
            shutil.rmtree(temp, ignore_errors=True)
            _unlink_temporaries(pointer_temp, best_temp)
            raise
        self._manifests[final.name] = manifest
        self._unusable.discard(final.name)  # a damaged checkpoint of this step was replaced
        self._newest_written = step if self._newest_written is None \
            else max(step, self._newest_written)
        fault_point("save:committed", step)
        try:
            fault_point("save:pointer-temp", step)
            os.replace(pointer_temp, self.directory / LATEST)
            if best_temp is not None:
                os.replace(best_temp, self.directory / BEST)
            # One fsync of the parent makes the commit and the pointers durable. Before it, a
            # disk may keep any of the renames (a pointer naming a folder that is not there):
            # no reader trusts a pointer for that, and the next writer repairs it.
            fsync_dir(self.directory)
            fault_point("save:pointer-updated", step)
            self._log_save(final.name, step, snap.metrics)
            self._carry_out(plan, latest=final.name, best_written=best_temp is not None)
        except OSError as exc:
            _unlink_temporaries(pointer_temp, best_temp)
            try:  # the commit's rename must still become durable
                fsync_dir(self.directory)
                found = "The checkpoint itself is complete and will be found on resume"
            except OSError as sync_exc:
                found = (f"The checkpoint is in place, but syncing {self.directory} failed "
                         f"too ({describe_os_error(sync_exc)}): a power loss now could lose "
                         "it; fix the disk, then save again")
            raise CheckpointWriteError(
                f"checkpoint {final.name} was committed, but updating pointers or retention "
                f"failed: {describe_os_error(exc)}. {found}") from exc
        t3 = time.perf_counter()
        self.last_save_timings = SaveTimings(snap.snapshot_seconds, t2 - t1, t3 - t2,
                                             snap.snapshot_seconds + (t3 - t1))
        return CheckpointInfo(final, manifest)

    def _manifest(self, step: int, components: dict[str, Any], files: dict[str, Any],
                  metrics: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
                  extra: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "step": step,
            **dict(extra or {}),
            "created_unix": now,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "metrics": dict(metrics or {}),
            "config": dict(config) if config is not None else None,
            "config_sha256": sha256_of(canonical_json(config)) if config is not None else None,
            "versions": library_versions(self.extra_versions),
            "components": components,
            "files": files,
        }
        manifest["manifest_sha256"] = manifest_self_hash(manifest)
        return manifest

    def commit_save(self, temp: Path, final: Path, sync: bool = True) -> None:
        """Make the finished save in ``temp`` visible as ``final`` (one rename; see
        :func:`~.writer.commit_directory`). Rank 0 of a sharded save commits through it too."""
        try:
            commit_directory(self.directory, temp, final, sync)
        finally:  # even a half-finished replace leaves a cached manifest of this name stale
            self._manifests.pop(final.name, None)

    def _write_pointer(self, pointer: str, name: str, step: int, **fields: Any) -> None:
        write_pointer(self.directory, pointer, name, step, **fields)

    # -- retention, pointers, rollback and the decision log ----------------------------------
    # Invariant: in one directory a higher step is always a later save. A save below the
    # highest valid step is refused (RollbackRequiredError) until rollback() has moved the
    # newer ones aside, so "latest" is simply the highest step: retention and restore never
    # depend on a pointer file, and the pointer files are repaired to match.

    def history(self) -> list[tuple[int, dict[str, Any]]]:
        """``(step, metrics)`` of every save recorded in the decision log, deleted ones too
        (saves abandoned by a rollback are forgotten)."""
        if self._history is None:
            self._history = history_from_events(read_decision_log(self.directory))
        return self._history

    def _log(self, events: Iterable[Mapping[str, Any]]) -> None:
        append_events(self.directory, events)

    def _log_save(self, name: str, step: int, metrics: Mapping[str, Any]) -> None:
        self._history = with_save(self.history(), step, metrics)
        self._log([saved_event(name, step, metrics)])

    def _hold_lock(self) -> None:
        """Take the run's writer lock, if this manager does not hold it already."""
        try:
            self._lock.acquire()
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write to {self.directory}: {describe_os_error(exc)}") from exc

    def _refuse_branch(self, step: int) -> None:
        """Refuse to save ``step`` below a newer valid checkpoint of this directory.

        Newer checkpoints that fail verification (the fallback case: the run resumed from
        an older one because the newest was damaged) do not block the save.
        """
        if self.create:  # (a read-only manager's save is refused by _snapshot)
            # A manager reused after close() locks again before it looks: otherwise another
            # writer could commit a newer step between this check and the save.
            self._hold_lock()
        # While this manager holds the run's lock no other writer adds checkpoints, so after
        # its own commit of step S nothing newer than S can have appeared: a later step needs
        # no scan (every periodic save of a run, after the first).
        if (self._newest_written is not None and step > self._newest_written
                and self._lock.held):
            return
        for newer, name in committed_steps(self.directory):
            if newer <= step or name in self._unusable:
                continue
            path = self.directory / name
            try:
                verify_checkpoint(path)
            except CkptlabError:
                self._unusable.add(path.name)
                continue
            raise RollbackRequiredError(
                f"cannot save step {step} in {self.directory}: it holds {path.name}, a newer "
                "valid checkpoint of this run, so the new save would branch off and 'latest' "
                f"would become ambiguous. {self._branch_advice(step)}")

    def _branch_advice(self, step: int) -> str:
        """What a refused save of ``step`` should do: the rollback that makes it possible.

        The checkpoint this manager restored comes first (the run continued from it, so
        whatever was saved after it belongs to the branch being abandoned), then the newest
        valid one at or below ``step``: ``rollback(step)`` itself fails when no checkpoint
        has that step, and a damaged target is refused.
        """
        found = self._rollback_candidate(step, prefer=self._restored)
        if found is None:
            return (f"No valid checkpoint at or below step {step} is left to roll back to: "
                    "save into another directory")
        target_step, name = found
        why = ("the checkpoint this run was restored from" if name == self._restored
               else f"the newest valid checkpoint at or below step {step}")
        return (f"Call rollback({target_step}) to continue from {name} ({why}): it moves "
                f"{self._newer_names(target_step)} aside into {ABANDONED_SUBDIR}/ (nothing is "
                "deleted); or save into another directory")

    def _rollback_candidate(self, limit: int, prefer: str | None = None
                            ) -> tuple[int, str] | None:
        """``(step, name)`` of a checkpoint at or below step ``limit`` that verifies:
        ``prefer`` if it is one, else the newest; ``None`` when none does."""
        candidates = [(s, name) for s, name in committed_steps(self.directory) if s <= limit]
        candidates.sort(key=lambda found: (found[1] != prefer, -found[0]))
        for found in candidates:
            try:
                verify_checkpoint(self.directory / found[1])
            except CkptlabError:
                continue
            return found
        return None

    def _newer_names(self, step: int) -> str:
        """The checkpoints above ``step`` (what ``rollback(step)`` moves), for a message."""
        names = [name for s, name in committed_steps(self.directory) if s > step]
        if len(names) <= 3:
            return ", ".join(names)
        return f"the {len(names)} checkpoints {names[0]} to {names[-1]}"

    def _best_rule(self) -> tuple[BestBy | None, dict[str, str]]:
        """How `best` is chosen here: this manager's rule, else the metric the pointer records.

        A pointer without a metric (written before pointers recorded it) is protected by name.
        """
        if self.best is not None:
            return self.best, {}
        record = read_pointer_record(self.directory, BEST)
        if record is None:
            return None, {}
        metric, mode = record.get("metric"), record.get("mode")
        if isinstance(metric, str) and metric and mode in ("min", "max"):
            return BestBy(metric, mode), {}
        return None, {record["checkpoint"]: "named by the best pointer (never deleted)"}

    def _update_best_pointer(self, plan: RetentionPlan) -> None:
        if plan.best_record is not None:
            record = dict(plan.best_record)
            self._write_pointer(BEST, record.pop("checkpoint"), record.pop("step"), **record)
        elif plan.drop_best:
            self._remove_pointer(BEST)

    def _repair_latest(self) -> None:
        """Point `latest` at the newest checkpoint that verifies, if it does not already.

        Only checkpoints newer than the pointer's target are verified (none, normally).
        """
        committed = self.committed()
        pointer = self.latest_pointer()
        if not committed:
            if self._pointer_exists(LATEST):
                self._remove_pointer(LATEST)
            return
        if pointer == committed[-1].name:
            return
        for path in reversed(committed):
            if path.name == pointer:
                return  # everything newer is unusable: the pointer is right
            try:
                info = verify_checkpoint(path)
            except CkptlabError:
                continue
            self._write_pointer(LATEST, path.name, info.step)
            self._log([{"event": "pointer_repaired", "pointer": LATEST,
                        "checkpoint": path.name, "was": pointer}])
            return

    def _set_aside_non_pointers(self) -> None:
        """Move a directory (or pipe, socket) named ``latest`` or ``best`` aside, with a
        warning: readers take it as a missing pointer, but no pointer could be written over
        it, and it may hold someone's data, so it is renamed, never deleted."""
        for pointer in (LATEST, BEST):
            moved = set_aside_non_pointer(self.directory, pointer)
            if moved is not None:
                aside, kind = moved
                warnings.warn(
                    f"{self.directory / pointer} was a {kind}, not a ckptlab pointer file: "
                    f"moved it aside, unchanged, to {aside.name} so that the {pointer!r} "
                    "pointer can be written; nothing was deleted (move or remove it yourself)",
                    PointerSetAsideWarning, stacklevel=4)

    def _repair_pointers(self) -> None:
        if not self.directory.is_dir():
            return
        self._set_aside_non_pointers()
        self._repair_latest()
        self._update_best_pointer(self._plan_retention(self.records(), latest=None))

    # [sharded] hook for engine.distributed: rank 0 commits a save written by every rank.
    def adopt_committed(self, path: Path, manifest: Mapping[str, Any]) -> list[Decision]:
        """Treat ``path``, just committed into this directory by another writer (a sharded
        save of several ranks), like one of this manager's own saves: point ``latest`` at it,
        log it, then apply retention and the ``best`` pointer. Returns the decisions."""
        self._lock.acquire()
        step = int(manifest["step"])
        self._manifests[path.name] = dict(manifest)
        self._write_pointer(LATEST, path.name, step)
        self._log_save(path.name, step, dict(manifest.get("metrics") or {}))
        return self._apply_retention(latest=path.name)

    def plan_retention(self) -> list[Decision]:
        """What retention would decide now, without deleting anything (``prune --dry-run``)."""
        return self._plan_retention(self.records(), latest=None).decisions

    def _apply_retention(self, latest: str | None = None) -> list[Decision]:
        return self._carry_out(self._plan_retention(self.records(), latest=latest),
                               latest=latest)

    def _plan_retention(self, records: list[CheckpointRecord], *, latest: str | None,
                        saved: tuple[int, dict[str, Any]] | None = None) -> RetentionPlan:
        """Decide retention and the ``best`` pointer for ``records``, changing nothing.

        ``saved`` is the ``(step, metrics)`` of a save not yet in the history (a save plans
        before its commit, while its files flush, and carries the plan out after it).
        """
        history = self.history()
        if saved is not None:
            history = with_save(history, *saved)
        rule, protect = self._best_rule()
        return plan_retention(records, self.retention, history=history, best=rule,
                              protect=protect, budget=self.budget, latest=latest,
                              current_best=read_pointer_record(self.directory, BEST),
                              best_pointer_present=self._pointer_exists(BEST))

    def _carry_out(self, plan: RetentionPlan, latest: str | None,
                   best_written: bool = False) -> list[Decision]:
        """Move the ``best`` pointer (unless ``best_written``: the save already did), log the
        decisions and delete what retention dropped."""
        if not best_written:
            self._update_best_pointer(plan)  # the best is protected, so it survives
        self._log(plan.events)
        for name in plan.doomed:
            self._manifests.pop(name, None)
        self._delete(plan.doomed)
        return plan.decisions

    def prune(self) -> list[Decision]:
        """Apply retention now (the manager must be writable); returns the decisions."""
        self._writable()
        self._set_aside_non_pointers()
        self._repair_latest()
        return self._apply_retention()

    def delete(self, step: int) -> None:
        """Delete the checkpoint at ``step`` now, and move the pointers if they named it.

        Raises:
            CheckpointNotFoundError: there is no checkpoint at ``step``.
        """
        self._writable()
        name = checkpoint_dir_name(step)
        if name not in {p.name for p in self.committed()}:
            raise CheckpointNotFoundError(f"{self.directory} has no checkpoint at step {step}")
        self._manifests.pop(name, None)
        self._unusable.discard(name)
        self._delete([name])
        self._log([{"event": "deleted", "checkpoint": name, "step": step,
                    "reasons": ["requested (CheckpointManager.delete)"]}])
        self._repair_pointers()

    def rollback(self, step: int, *, reason: str = "requested") -> list[Path]:
        """Make the checkpoint at ``step`` the latest again, so the run continues from it.

        Every newer checkpoint is moved (not deleted) into
        ``abandoned/<time>-after-step_NNNNNNNN/`` beside the checkpoints, the move is logged
        in ``decisions.jsonl``, and ``latest`` and ``best`` are pointed at what remains.
        Returns the new paths of the moved checkpoints (empty when nothing is newer).
        The checkpoint at ``step`` is verified first (every file read and hashed), since a
        damaged one could not become the latest.

        Raises:
            CheckpointNotFoundError: there is no checkpoint at ``step``.
            CheckpointCorruptError: the checkpoint at ``step`` fails verification (nothing is
                moved; the message names the newest valid step below it to roll back to).
        """
        self._writable()
        target = self.directory / checkpoint_dir_name(step)
        committed = self.committed()
        if target not in committed:
            raise CheckpointNotFoundError(f"{self.directory} has no checkpoint at step {step} "
                                          "to roll back to")
        # Before anything moves: rolling back to a damaged checkpoint would make an older one
        # the latest behind the caller's back (and move more than was asked).
        try:
            verify_checkpoint(target)
        except CkptlabError as exc:
            older = self._rollback_candidate(step - 1)
            advice = (f"call rollback({older[0]}) instead to continue from {older[1]}, the "
                      f"newest valid checkpoint below it (it moves {self._newer_names(older[0])} "
                      f"aside into {ABANDONED_SUBDIR}/), or put back a good copy of "
                      f"{target.name} first" if older is not None else
                      "no valid checkpoint below it is left to roll back to: put back a good "
                      f"copy of {target.name}, or start a new run directory")
            raise CheckpointCorruptError(
                f"cannot roll back to step {step} in {self.directory}: {target.name} is "
                f"damaged ({exc}); nothing was moved; {advice}") from exc
        newer = [p for p in committed if checkpoint_step(p) > step]
        if not newer:
            return []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.directory / ABANDONED_SUBDIR / f"{stamp}-after-{target.name}"
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{uuid.uuid4().hex[:6]}")
        aside.mkdir(parents=True)
        # Persistence (docs/crash-consistency.md; checked by the crash explorer, workload
        # `rollback`): the new folders' names are durable before anything moves into them (or
        # a power cut could orphan what moved), and each move before the next, oldest first,
        # so a power cut leaves a prefix of the moves: the newest checkpoint in place stays the
        # old newest until the last one has moved.
        fsync_dir(aside.parent)
        fsync_dir(self.directory)
        moved = []
        for path in newer:
            os.replace(path, aside / path.name)
            fsync_dir(aside)
            fsync_dir(self.directory)
            self._manifests.pop(path.name, None)
            self._unusable.discard(path.name)
            moved.append(aside / path.name)
        self._log([{"event": "rolled_back", "checkpoint": target.name, "step": step,
                    "moved": [p.name for p in newer],
                    "moved_to": str(aside.relative_to(self.directory)), "reason": reason}])
        self._history = None  # re-read without the abandoned saves
        self._repair_pointers()
        return moved

    def _writable(self) -> None:
        if not self.create:
            raise CkptlabError(f"{self.directory} was opened read-only")
        self.wait()
        self._lock.acquire()

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary and trash entries left by crashed saves or deletions.

        A checkpoint moved aside to be replaced, whose replacement never arrived, is put back.
        """
        return remove_leftovers(self.directory)
