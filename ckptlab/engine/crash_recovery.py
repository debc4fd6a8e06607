"""Every write path of the engine, explored crash state by crash state (see :mod:`.crash_states`).

Each :class:`Workload` builds a small starting state in a scratch workspace, runs one engine
operation while its file-system calls are recorded, and names the recovery that follows a
crash. :func:`explore_operation` then checks every crash state of that operation under a
persistence model against the invariants below, and reports the states explored and the
violations found, each with the crash sequence that leads to it.

The invariants (``O``: the workspace before the operation, ``N``: after it; a checkpoint is
compared file by file):

* ``accepted-differs`` - no checkpoint that ``verify`` accepts differs from the checkpoint
  saved under its name in ``O`` or ``N``;
* ``resume-point`` - the checkpoint a resume picks (``latest_valid_checkpoint``, what
  ``restore()`` and ``--resume auto`` load) is ``O``'s newest valid one or ``N``'s;
* ``not-durable`` - once the operation has returned, a crash leaves ``N``'s checkpoints,
  exactly (what the operation promised is durable);
* ``lost-checkpoint`` - a checkpoint that both ``O`` and ``N`` hold (in place or moved aside
  into ``abandoned/``) is never lost or damaged;
* ``log-damaged`` - the decision log reads back as ``O``'s events followed by some of the
  events the operation appended, in order;
* ``recovery-failed`` - opening the directory for writing (which removes leftovers and repairs
  the pointers) and restoring succeed with no human help, and restore loads the checkpoint
  the resume picked;
* after that recovery: ``leftovers`` (no ``.tmp-``, ``.trash-`` or ``.replaced-`` entry is
  left), ``torn-committed`` (every committed checkpoint verifies: none a human would have to
  delete), ``not-old-or-new`` (every committed checkpoint is ``O``'s or ``N``'s under its
  name), ``latest-wrong`` (``latest`` names the newest valid checkpoint), ``best-wrong``
  (``best`` is absent or names a valid checkpoint);
* ``cannot-continue`` / ``log-append-lost`` - the next save succeeds, is the newest valid
  checkpoint, and its decision-log event reads back;
* ``outside`` - the operation changed nothing outside the paths it may change (the run
  directory; the output directory of an export; the catalog's own file).

Raw pointers are not checked: ``latest`` and ``best`` may be stale or even name a checkpoint
that a crash left out, because no reader trusts them (resume scans the directories; a
manager recomputes ``best`` by the metric the pointer records) and recovery repairs them.

Introduced in notebook ``07_failure_modes``; see ``docs/crash-consistency.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .catalog import Catalog
from .crash_states import (
    MODELS,
    CrashExplorerError,
    Exploration,
    Fault,
    Recording,
    explore,
    fsyncs_skipped,
    materialise,
    record,
)
from .errors import CheckpointCorruptError, CheckpointNotFoundError
from .format import BEST, DECISIONS, LATEST, REPLACED_PREFIX, TEMP_PREFIX, TRASH_PREFIX
from .manager import CheckpointManager
from .partial import export_checkpoint
from .policies import BestBy
from .reader import (
    committed_checkpoints,
    latest_valid_checkpoint,
    read_decision_log,
    read_pointer,
    verify_checkpoint,
)

CHECKPOINTS = "run/checkpoints"
"""Where the workloads keep their checkpoints, relative to the workspace."""

_LEFTOVER_PREFIXES = (TEMP_PREFIX, TRASH_PREFIX, REPLACED_PREFIX)


class Counter:
    """A component without tensors: its state is JSON (``state.json``)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = int(state["value"])


def small_components(seed: int = 0) -> dict[str, Any]:
    """The state every engine workload saves: a 3-to-2 linear layer and a counter (a few
    hundred bytes per file, so every crash state is explored, not a sample)."""
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return {"model": model, "counter": Counter(seed)}


def open_manager(workspace: Path, seed: int = 0, **options: Any) -> CheckpointManager:
    """A writing manager on the workspace's checkpoints, with :func:`small_components`
    registered (``best`` by the ``score`` metric unless ``options`` say otherwise)."""
    options.setdefault("best", BestBy("score", "max"))
    manager = CheckpointManager(workspace / CHECKPOINTS, **options)
    for name, component in small_components(seed).items():
        manager.register(name, component)
    return manager


def _save(manager: CheckpointManager, step: int, score: float) -> None:
    """Save ``step`` with new component values (so every checkpoint differs)."""
    components = small_components(step)
    for name, component in manager.components.items():
        component.load_state_dict(components[name].state_dict())
    manager.save(step, metrics={"score": score})


# -- what is observed on a disk -----------------------------------------------------------------

@dataclass
class Facts:
    """What the readers see in one workspace (nothing is changed to find out)."""

    committed: dict[str, dict[str, bytes]]   # name -> relative file path -> bytes
    valid: set[str]
    newest: str | None                      # what a resume picks
    aside: dict[str, dict[str, bytes]]      # abandoned/... checkpoints, by relative path
    events: list[dict[str, Any]]
    latest: str | None
    best: str | None
    leftovers: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)

    def contents(self) -> set[tuple[tuple[str, bytes], ...]]:
        """Every valid checkpoint's files, in place or moved aside, as hashable values."""
        found = {_frozen(self.committed[name]) for name in self.valid}
        return found | {_frozen(files) for files in self.aside.values()}


def _frozen(files: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted(files.items()))


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def observe(workspace: Path, checkpoints: str = CHECKPOINTS,
            verified: dict[tuple[tuple[str, bytes], ...], bool] | None = None) -> Facts:
    """What verify, a resume and the pointer readers see in ``workspace``.

    ``verified`` remembers verify's verdict on each checkpoint's exact bytes (verification
    reads nothing else), so that a checkpoint that recurs in many crash states is hashed once.
    """
    directory = workspace / checkpoints
    problems: list[tuple[str, str]] = []
    committed: dict[str, dict[str, bytes]] = {}
    valid: set[str] = set()
    newest = None
    verified = {} if verified is None else verified
    try:
        for path in committed_checkpoints(directory):
            files = committed[path.name] = _files(path)
            key = _frozen(files)
            if key not in verified:
                try:
                    verify_checkpoint(path)
                    verified[key] = True
                except CheckpointCorruptError:
                    verified[key] = False
            if verified[key]:
                valid.add(path.name)
        if committed:
            newest = latest_valid_checkpoint(directory).name
    except (CheckpointCorruptError, CheckpointNotFoundError):
        newest = None
    except Exception as exc:  # a reader that fails on a crash state needs a human: report it
        problems.append(("reader-failed", f"{type(exc).__name__}: {exc}"))
    aside = {}
    abandoned = directory / "abandoned"
    if abandoned.is_dir():
        aside = {str(p.relative_to(directory)): _files(p)
                 for p in sorted(abandoned.glob("*/step_*")) if p.is_dir()}
    leftovers = sorted(p.name for p in directory.iterdir()
                       if p.name.startswith(_LEFTOVER_PREFIXES)) if directory.is_dir() else []
    return Facts(committed, valid, newest, aside, read_decision_log(directory),
                 read_pointer(directory, LATEST), read_pointer(directory, BEST), leftovers,
                 problems)


# -- the invariants -------------------------------------------------------------------------------

@dataclass
class CheckContext:
    """What a crash state is compared with: the workspace before and after the operation."""

    before: Facts
    after: Facts
    checkpoints: str = CHECKPOINTS
    extras: dict[str, Any] = field(default_factory=dict)  # what a workload's checks compare
    verified: dict[tuple[tuple[str, bytes], ...], bool] = field(default_factory=dict)

    def observe(self, workspace: Path) -> Facts:
        """:func:`observe`, remembering verdicts across the crash states of one exploration."""
        return observe(workspace, self.checkpoints, self.verified)


def check_raw(state: Facts, context: CheckContext, final: bool) -> list[tuple[str, str]]:
    """The invariants on a crash state as the power cut left it."""
    before, after = context.before, context.after
    found = list(state.problems)
    for name in sorted(state.valid):
        files = state.committed[name]
        if files not in (before.committed.get(name), after.committed.get(name)):
            found.append(("accepted-differs", f"verify accepts {name}, which differs from "
                          "every checkpoint saved under that name"))
    expected = {after.newest} if final else {before.newest, after.newest}
    if state.newest not in expected:
        found.append(("not-durable" if final else "resume-point",
                      f"a resume would continue from {state.newest or 'nothing'}, expected "
                      f"{' or '.join(sorted(str(e) for e in expected))}"))
    kept = before.contents() & after.contents()
    missing = kept - state.contents()
    if missing:
        found.append(("lost-checkpoint", f"{len(missing)} checkpoint(s) that the operation "
                      "keeps are gone or damaged"))
    if final:
        now = {name: state.committed[name] for name in state.valid}
        promised = {name: after.committed[name] for name in after.valid}
        if now != promised or state.aside != after.aside:
            found.append(("not-durable", "after the operation returned, a power cut leaves "
                          f"{sorted(now) + sorted(state.aside)}, not "
                          f"{sorted(promised) + sorted(after.aside)}"))
    old = before.events
    appended = after.events[len(old):]
    if state.events[:len(old)] != old or not _subsequence(state.events[len(old):], appended):
        found.append(("log-damaged", "the decision log does not read back as the old events "
                      "followed by some of the new ones"))
    return found


def _subsequence(items: list[Any], of: list[Any]) -> bool:
    remaining = iter(of)
    return all(any(item == candidate for candidate in remaining) for item in items)


def check_recovered(state: Facts, raw: Facts, context: CheckContext) -> list[tuple[str, str]]:
    """The invariants once the directory was opened for writing (leftovers removed, pointers
    repaired)."""
    before, after = context.before, context.after
    found = list(state.problems)
    # a checkpoint damaged before the operation began (bit rot, a human) is verify's to report
    damaged_before = {name for name, files in state.committed.items()
                      if name not in before.valid and files == before.committed.get(name)}
    if state.leftovers:
        found.append(("leftovers", f"{', '.join(state.leftovers)} survived recovery"))
    for name in sorted(set(state.committed) - state.valid - damaged_before):
        found.append(("torn-committed", f"{name} is committed but fails verification (a human "
                      "would have to remove it)"))
    for name, files in sorted(state.committed.items()):
        if files not in (before.committed.get(name), after.committed.get(name)):
            found.append(("not-old-or-new", f"{name} is neither the checkpoint before the "
                          "operation nor the one after it"))
    if state.newest != raw.newest:
        found.append(("recovery-failed", f"recovery changed the resume point from {raw.newest} "
                      f"to {state.newest}"))
    if state.latest != state.newest and state.latest not in damaged_before:
        found.append(("latest-wrong", f"after recovery latest names {state.latest}, the newest "
                      f"valid checkpoint is {state.newest}"))
    if state.best is not None and state.best not in state.valid:
        found.append(("best-wrong", f"after recovery best names {state.best}, which is not a "
                      "valid checkpoint"))
    return found


# -- the operations -------------------------------------------------------------------------------

Recovery = Callable[[Path, Facts, CheckContext], list[tuple[str, str]]]
"""A recovery: run it on a materialised crash state (``raw``: what the power cut left) and
return the invariants it broke."""


def _save_next_and_find_it(directory: Path, raw: Facts,
                           save: Callable[[int], Any]) -> list[tuple[str, str]]:
    """After recovery, the run goes on: save the step after the newest committed one, then a
    resume must pick it and the decision log must end with its event."""
    found = []
    step = max((int(name[5:]) for name in raw.committed), default=0) + 1
    save(step)
    newest = latest_valid_checkpoint(directory).name
    if newest != f"step_{step:08d}":
        found.append(("cannot-continue", f"after saving step {step}, a resume picks {newest}"))
    events = read_decision_log(directory)
    if not events or events[-1].get("step") != step:
        found.append(("log-append-lost", f"the decision-log event of the save of step {step} "
                      "after recovery does not read back"))
    return found


def recover_and_continue(workspace: Path, raw: Facts,
                         context: CheckContext) -> list[tuple[str, str]]:
    """The engine's recovery: open the directory for writing, restore the newest valid
    checkpoint into fresh components, then save the next step."""
    found: list[tuple[str, str]] = []
    try:
        manager = open_manager(workspace, best=None)
    except Exception as exc:  # reported, never swallowed: recovery needed a human
        return [("recovery-failed", f"opening the directory failed: {type(exc).__name__}: "
                 f"{exc}")]
    try:
        found += check_recovered(context.observe(workspace), raw, context)
        if raw.newest is not None:
            restored = manager.restore()
            if restored.name != raw.newest:
                found.append(("recovery-failed", f"restore loaded {restored.name}, a resume "
                              f"picks {raw.newest}"))
        found += _save_next_and_find_it(workspace / context.checkpoints, raw,
                                        lambda step: _save(manager, step, 0.0))
    except Exception as exc:
        found.append(("recovery-failed", f"{type(exc).__name__}: {exc}"))
    finally:
        manager.close()
    return found


def recover_sharded(workspace: Path, raw: Facts,
                    context: CheckContext) -> list[tuple[str, str]]:
    """The recovery of a sharded run (world size 1 stands in for the ranks): open the directory
    through a :class:`.distributed.ShardedCheckpointer` (leftovers, pointers), read back the
    checkpoint a resume picks and compare every tensor and the rank's own part with what was
    saved at that step, then save the next step and find it as the newest."""
    import torch.distributed as dist

    from .distributed import ShardedCheckpointer, read_sharded_state

    found: list[tuple[str, str]] = []
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    checkpointer = None
    try:
        try:
            checkpointer = ShardedCheckpointer(workspace / context.checkpoints,
                                               best=BestBy("score", "max"))
        except Exception as exc:  # reported, never swallowed: recovery needed a human
            return [("recovery-failed", f"opening the directory failed: "
                     f"{type(exc).__name__}: {exc}")]
        found += check_recovered(context.observe(workspace), raw, context)
        directory = workspace / context.checkpoints
        if raw.newest is not None:
            info, states = read_sharded_state(directory / raw.newest)
            expected = small_components(info.step)
            model = states["dcp/model"]
            if (sorted(model) != sorted(expected["model"].state_dict())
                    or not all(torch.equal(model[k], v)
                               for k, v in expected["model"].state_dict().items())
                    or states["rank_00000"].get("counter")
                    != expected["counter"].state_dict()):
                found.append(("recovery-failed", f"{raw.newest} reads back other values than "
                              f"the save of step {info.step} wrote"))
        found += _save_next_and_find_it(directory, raw,
                                        lambda step: _sharded_save(checkpointer, step))
    except Exception as exc:
        found.append(("recovery-failed", f"{type(exc).__name__}: {exc}"))
    finally:
        try:
            if checkpointer is not None:
                checkpointer.close()
        finally:
            if started:
                dist.destroy_process_group()
    return found


@dataclass(frozen=True)
class Workload:
    """One engine operation to explore.

    Attributes:
        name: how reports name it.
        summary: what it does, in a few words.
        prepare: builds the starting state in the workspace (not recorded); returns what
            ``operation`` and ``finish`` need.
        operation: the recorded operation.
        finish: releases what ``prepare`` held (called after the recording).
        allowed: workspace-relative paths the operation may change.
        recover: the recovery and its checks (default: :func:`recover_and_continue`).
        extra: further checks of each crash state: ``(workspace, final, context) -> found``.
    """

    name: str
    summary: str
    prepare: Callable[[Path], Any]
    operation: Callable[[Path, Any], Any]
    finish: Callable[[Any], None] = lambda held: None
    allowed: tuple[str, ...] = ("run/",)
    recover: Recovery | None = recover_and_continue
    extra: tuple[Callable[[Path, bool, CheckContext], list[tuple[str, str]]], ...] = ()


def _two_saves(workspace: Path, **options: Any) -> CheckpointManager:
    manager = open_manager(workspace, **options)
    _save(manager, 1, 5.0)
    _save(manager, 2, 3.0)
    return manager


def _three_saves(workspace: Path, **options: Any) -> CheckpointManager:
    manager = _two_saves(workspace, **options)
    _save(manager, 3, 4.0)
    return manager


def _three_then_keep_last_1(workspace: Path) -> CheckpointManager:
    _three_saves(workspace).close()
    return open_manager(workspace, keep_last=1)


def _close(manager: CheckpointManager) -> None:
    manager.close()


def _save_async(manager: CheckpointManager, **options: Any) -> None:
    components = small_components(3)
    for name, component in manager.components.items():
        component.load_state_dict(components[name].state_dict())
    manager.save_async(3, metrics={"score": 9.0}, **options)
    manager.wait()


def _damaged_step_3(workspace: Path) -> CheckpointManager:
    _three_saves(workspace).close()
    tensors = workspace / CHECKPOINTS / "step_00000003" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01  # one flipped bit: the copy of step 3 on disk no longer verifies
    tensors.write_bytes(bytes(data))
    return open_manager(workspace)


def _crashed_directory(workspace: Path) -> None:
    """Three checkpoints as a crash left them: a stale ``latest``, no ``best``, leftovers."""
    _three_saves(workspace).close()
    directory = workspace / CHECKPOINTS
    (directory / LATEST).write_text('{"checkpoint": "step_00000001", "step": 1}\n')
    (directory / BEST).unlink()
    leftover = directory / f"{TEMP_PREFIX}step_00000004-0badcafe"
    leftover.mkdir()
    (leftover / "tensors.safetensors").write_bytes(b"half a file")
    trash = directory / f"{TRASH_PREFIX}step_00000000-0badcafe"
    trash.mkdir()
    (trash / "manifest.json").write_bytes(b"{}")


def _log_near_page_end(workspace: Path) -> CheckpointManager:
    """Two checkpoints and a decision log that ends 60 bytes before a page boundary, so the
    next append straddles it (a power cut can then keep half of it)."""
    manager = _two_saves(workspace, keep_last=5)
    log = workspace / CHECKPOINTS / DECISIONS
    size = log.stat().st_size
    pad = 4096 - 60 - size - len('{"time": "2026-01-01T00:00:00", "event": "note", "pad": ""}\n')
    if pad < 0:
        raise CrashExplorerError("the decision-log workload's log grew past a page")
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"time": "2026-01-01T00:00:00", "event": "note", "pad": "' + "x" * pad + '"}\n')
    return manager


def _export_prepare(workspace: Path) -> None:
    _two_saves(workspace).close()


def _export(workspace: Path, held: Any = None) -> None:
    export_checkpoint(workspace / "run", workspace / "export", source="model", what="both")


EXPORTED = ("weights.safetensors", "metadata.json")


def check_export(workspace: Path, final: bool, context: CheckContext) -> list[tuple[str, str]]:
    """Each exported file is whole or absent; after a crash, exporting what is missing
    completes the export with the same bytes and no leftovers."""
    found = []
    out = workspace / "export"
    expected = context.extras["exported"]
    for name in EXPORTED:
        path = out / name
        if path.exists() and not _same_export(path.read_bytes(), expected[name]):
            found.append(("torn-export", f"{name} exists but differs from what was exported"))
        elif final and not path.exists():
            found.append(("not-durable", f"{name} is missing after the export returned"))
    if found:
        return found
    missing = [name for name in EXPORTED if not (out / name).exists()]
    if not missing:
        return found  # (a leftover temporary file is removed by the next export here)
    what = "both" if len(missing) == 2 else \
        ("weights" if missing[0] == "weights.safetensors" else "metadata")
    try:
        export_checkpoint(workspace / "run", out, source="model", what=what)
    except Exception as exc:
        return [("recovery-failed", f"exporting {what} again failed: "
                 f"{type(exc).__name__}: {exc}")]
    for name in EXPORTED:
        if not _same_export((out / name).read_bytes(), expected[name]):
            found.append(("recovery-failed", f"exporting again gave another {name}"))
    if any(p.name.startswith(".tmp-export-") for p in out.iterdir()):
        found.append(("leftovers", "a temporary export file survived the next export"))
    return found


def _same_export(data: bytes, expected: bytes) -> bool:
    """Equal exports: the same bytes, or safetensors files with the same header (its
    metadata is a map, written in no fixed order) and the same tensor bytes."""
    if data == expected:
        return True
    try:
        size, other = int.from_bytes(data[:8], "little"), int.from_bytes(expected[:8], "little")
        return size == other and data[8 + size:] == expected[8 + size:] and \
            json.loads(data[8:8 + size]) == json.loads(expected[8:8 + size])
    except ValueError:
        return False


def _catalog_prepare(workspace: Path) -> None:
    manager = _two_saves(workspace)
    Catalog(workspace).rebuild()
    _save(manager, 3, 4.0)
    manager.close()


def _catalog_rows(workspace: Path) -> list[tuple[Any, ...]]:
    return [(row.path, row.step, row.status, row.metrics)
            for row in Catalog(workspace).query()]


def check_catalog(workspace: Path, final: bool, context: CheckContext) -> list[tuple[str, str]]:
    """The index reads back as before or after the rebuild (never needs deleting by hand),
    and the next rebuild indexes every checkpoint."""
    rows_before, rows_after = context.extras["catalog_rows"]
    try:
        rows = _catalog_rows(workspace)
    except Exception as exc:
        return [("recovery-failed", f"listing the catalog failed: {type(exc).__name__}: "
                 f"{exc}")]
    found = []
    # The index is a cache that every `ls` rebuilds first: it need not be durable, so even
    # after the rebuild returned the old index is a right answer.
    if rows not in (rows_before, rows_after):
        found.append(("not-old-or-new", f"the catalog lists {len(rows)} rows, neither the old "
                      "index nor the new"))
    try:
        Catalog(workspace).rebuild()
        if _catalog_rows(workspace) != rows_after:
            found.append(("recovery-failed", "rebuilding the catalog gave another index"))
    except Exception as exc:
        found.append(("recovery-failed", f"rebuilding the catalog failed: "
                      f"{type(exc).__name__}: {exc}"))
    if any(p.name.startswith(".ckptlab-catalog.sqlite.tmp") for p in workspace.iterdir()):
        found.append(("leftovers", "a temporary index survived the next rebuild"))
    return found


def _sharded_prepare(workspace: Path) -> Any:
    """A sharded checkpointer with world size 1 in this process (a stand-in for the ranks:
    rank 0 writes its part, the DCP files and the manifest, then commits)."""
    import torch.distributed as dist

    from .distributed import ShardedCheckpointer

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    checkpointer = ShardedCheckpointer(workspace / CHECKPOINTS, best=BestBy("score", "max"))
    for step in (1, 2):
        _sharded_save(checkpointer, step)
    return checkpointer, started


def _sharded_save(checkpointer: Any, step: int) -> None:
    components = small_components(step)
    checkpointer.save(step, dcp_state={"model": components["model"].state_dict()},
                      rank_states={"counter": components["counter"].state_dict()},
                      metrics={"score": float(step)})


def _sharded_finish(held: Any) -> None:
    import torch.distributed as dist

    checkpointer, started = held
    checkpointer.close()
    if started:
        dist.destroy_process_group()


def _manager_op(method: str, *args: Any, **kwargs: Any) -> Callable[[Path, Any], Any]:
    return lambda workspace, manager: getattr(manager, method)(*args, **kwargs)


def _saving(step: int, score: float) -> Callable[[Path, Any], Any]:
    return lambda workspace, manager: _save(manager, step, score)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("save", "sync save, best stays", _two_saves, _saving(3, 1.0), _close),
    Workload("save-best-moves", "sync save that becomes the best", _two_saves,
             _saving(3, 9.0), _close),
    Workload("save-async-copy", "save_async(copy=True), then wait", _two_saves,
             lambda ws, m: _save_async(m), _close),
    Workload("save-async-copy-background", "save_async(copy_in_background=True)", _two_saves,
             lambda ws, m: _save_async(m, copy_in_background=True), _close),
    Workload("save-async-no-copy", "save_async(copy=False), then wait", _two_saves,
             lambda ws, m: _save_async(m, copy=False), _close),
    Workload("save-retention", "sync save, new best; keep_last=2 deletes the oldest",
             lambda ws: _two_saves(ws, keep_last=2), _saving(3, 9.0), _close),
    Workload("save-over-damaged-step", "save a step whose directory is damaged (replace)",
             _damaged_step_3, _saving(3, 1.0), _close),
    Workload("prune", "prune() with keep_last=1: deletes one checkpoint",
             _three_then_keep_last_1, _manager_op("prune"), _close),
    Workload("delete", "delete(3): the newest, named by latest", _three_saves,
             _manager_op("delete", 3), _close),
    Workload("rollback", "rollback(1): steps 2 and 3 moved into abandoned/", _three_saves,
             _manager_op("rollback", 1), _close),
    Workload("decision-log-append", "prune() that only logs (an append across a page)",
             _log_near_page_end, _manager_op("prune"), _close),
    Workload("open-repairs-pointers", "open a crashed directory: leftovers, stale latest",
             _crashed_directory, lambda ws, held: CheckpointManager(
                 ws / CHECKPOINTS, best=BestBy("score", "max")).close()),
    Workload("export", "export_checkpoint(weights and metadata)", _export_prepare, _export,
             allowed=("export/",), extra=(check_export,)),
    Workload("catalog-rebuild", "Catalog.rebuild() over an older index", _catalog_prepare,
             lambda ws, held: Catalog(ws).rebuild(), allowed=(".ckptlab-catalog.sqlite*",),
             extra=(check_catalog,)),
    Workload("sharded-commit", "a sharded save's commit (world size 1 stands in)",
             _sharded_prepare, lambda ws, held: _sharded_save(held[0], 3), _sharded_finish,
             recover=recover_sharded),
]}
"""Every write path of the engine, by name."""


def context_for(recording: Recording, workload: Workload) -> CheckContext:
    """Observe the workspace before and after the operation (each materialised at the
    workspace's path), for the checks to compare crash states with."""
    facts = []
    extras: dict[str, Any] = {}
    with fsyncs_skipped(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a damaged checkpoint in a workload is deliberate)
        for name, tree in (("before", recording.before), ("after", recording.after)):
            shutil.rmtree(recording.workspace)
            materialise(tree, recording.workspace)
            facts.append(observe(recording.workspace))
            if check_catalog in workload.extra:
                extras.setdefault("catalog_rows", []).append(
                    _catalog_rows(recording.workspace))
            if check_export in workload.extra and name == "after":
                extras["exported"] = {n: (recording.workspace / "export" / n).read_bytes()
                                      for n in EXPORTED}
    return CheckContext(facts[0], facts[1], extras=extras)


def checker(workload: Workload, context: CheckContext
            ) -> Callable[[Path, bool], list[tuple[str, str]]]:
    """The check :func:`.crash_states.explore` runs on each crash state of ``workload``."""

    def check(workspace: Path, final: bool) -> list[tuple[str, str]]:
        raw = context.observe(workspace)
        found = check_raw(raw, context, final)
        for extra in workload.extra:
            found += extra(workspace, final, context)
        if workload.recover is not None:
            found += workload.recover(workspace, raw, context)
        return found

    return check


def record_workload(workload: Workload, workspace: Path,
                    fault: Fault | None = None) -> Recording:
    """Prepare ``workload`` in ``workspace`` (an empty directory) and record its operation."""
    with fsyncs_skipped():
        held = workload.prepare(workspace)
    try:
        return record(workspace, lambda: workload.operation(workspace, held),
                      allowed=workload.allowed, fault=fault)
    finally:
        workload.finish(held)


def _memory_dir() -> str | None:
    """``/dev/shm`` when it is a writable directory (a tmpfs on Linux), else ``None``."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else None


def explore_operation(name: str | Workload, model: str, *, fault: Fault | None = None,
                      workdir: str | os.PathLike[str] | None = None) -> Exploration:
    """Record the operation ``name`` (one of :data:`WORKLOADS`, or a :class:`Workload`) in a
    scratch workspace and check every crash state under ``model``.

    ``workdir``: where the scratch workspace goes (default: a new directory in memory,
    ``/dev/shm``, where there is one - every crash state is written there and removed again -
    else in the temporary directory), removed afterwards.
    """
    workload = WORKLOADS[name] if isinstance(name, str) else name
    if model not in MODELS:
        raise CrashExplorerError(f"unknown persistence model {model!r}; use one of "
                                 f"{', '.join(MODELS)}")
    scratch = Path(tempfile.mkdtemp(prefix="ckptlab-crash-", dir=workdir or _memory_dir()))
    try:
        workspace = scratch / "workspace"
        workspace.mkdir()
        recording = record_workload(workload, workspace, fault)
        context = context_for(recording, workload)
        return explore(recording, model, checker(workload, context),
                       operation=workload.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def explore_all(models: Sequence[str] = MODELS, names: Iterable[str] | None = None
                ) -> list[Exploration]:
    """:func:`explore_operation` for every workload (or those named) under every model."""
    return [explore_operation(name, model) for name in (names or WORKLOADS)
            for model in models]
