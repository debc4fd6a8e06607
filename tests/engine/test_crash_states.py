"""The crash-state explorer: recording, the persistence models, the fault switches, and every
write path of the engine explored under both models (issue 27)."""

from __future__ import annotations

import mmap
import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ckptlab.engine import crash_recovery, crash_states
from ckptlab.engine.crash_recovery import WORKLOADS, explore_operation
from ckptlab.engine.crash_states import (
    MODELS,
    CrashExplorerError,
    Fault,
    UnrecordedWriteError,
    record,
    states_at,
)

ENGINE = Path(crash_states.__file__).parent


def trees(recording, crash_point, model):
    """The distinct disks (as {path: content}) a crash after ``crash_point`` calls leaves."""
    found = set()
    for state in states_at(recording, crash_point, model):
        found.add(tuple(sorted((path, data) for path, (kind, data) in state.tree.items())))
    return found


# -- recording -----------------------------------------------------------------------------------

def test_recording_sees_every_way_the_engine_writes_and_replays_to_the_real_workspace(tmp_path):
    def operation():
        fd = os.open(tmp_path / "raw", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"abc")
        os.writev(fd, [b"de", memoryview(b"fg")])
        os.pwrite(fd, b"Z", 0)
        os.ftruncate(fd, 6)
        os.fsync(fd)
        os.close(fd)
        with open(tmp_path / "unbuffered", "xb", buffering=0) as f:
            f.write(b"1234")
        with open(tmp_path / "text", "w", encoding="utf-8") as f:
            f.write("hello\n")
        with open(tmp_path / "text", "a", encoding="utf-8") as f:
            f.write("again\n")
        (tmp_path / "bytes").write_bytes(b"path")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "x").write_text("x")
        os.replace(tmp_path / "bytes", tmp_path / "sub" / "moved")
        os.rename(tmp_path / "unbuffered", tmp_path / "renamed")
        os.link(tmp_path / "renamed", tmp_path / "hardlink")
        os.symlink("renamed", tmp_path / "symlink")
        os.unlink(tmp_path / "raw")
        shutil.rmtree(tmp_path / "sub")
        directory = os.open(tmp_path, os.O_RDONLY)
        os.fsync(directory)
        os.close(directory)
        connection = sqlite3.connect(tmp_path / "index.sqlite")
        connection.execute("CREATE TABLE t (x)")
        connection.commit()
        connection.close()

    recording = record(tmp_path, operation)
    kinds = {op.kind for op in recording.ops}
    assert kinds == {"create", "write", "truncate", "fsync", "mkdir", "rename", "link",
                     "symlink", "unlink", "rmdir"}
    assert recording.after["renamed"] == ("file", b"1234")
    assert recording.after["text"] == ("file", b"hello\nagain\n")
    assert "sub" not in recording.after and "raw" not in recording.after
    assert recording.after["index.sqlite"][1].startswith(b"SQLite format 3")
    assert not recording.outside


def test_a_write_the_recorder_cannot_see_fails_the_recording_loudly(tmp_path):
    (tmp_path / "mapped").write_bytes(bytes(16))

    def through_mmap():
        with open(tmp_path / "mapped", "r+b") as f, mmap.mmap(f.fileno(), 16) as memory:
            memory[:4] = b"oops"

    with pytest.raises(UnrecordedWriteError, match="mapped"):
        record(tmp_path, through_mmap)


def test_calls_it_cannot_model_are_refused(tmp_path):
    source = tmp_path / "source"
    source.write_bytes(b"data")

    def copy_by_sendfile():
        with open(source, "rb") as src, open(tmp_path / "copy", "wb") as dst:
            dst.flush()
            os.sendfile(dst.fileno(), src.fileno(), 0, 4)

    with pytest.raises(CrashExplorerError, match="sendfile"):
        record(tmp_path, copy_by_sendfile)


def test_changes_outside_the_allowed_paths_are_reported(tmp_path):
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    (workspace / "run").mkdir(parents=True)
    elsewhere.mkdir()

    def operation():
        (workspace / "run" / "ok").write_bytes(b"1")
        (workspace / "other").write_bytes(b"2")
        (elsewhere / "far").write_bytes(b"3")

    recording = record(workspace, operation, allowed=("run/",))
    assert recording.outside[0] == "create other"
    assert len(recording.outside) == 2 and "elsewhere/far" in recording.outside[1]


def test_an_fsync_on_a_pool_thread_completes_only_when_someone_waits_for_it(tmp_path):
    def operation():
        with ThreadPoolExecutor(1) as pool, open(tmp_path / "f", "xb", buffering=0) as f:
            f.write(b"first")
            pending = pool.submit(os.fsync, f.fileno())
            f.write(b"second")  # written while the fsync is in flight: not covered by it
            pending.result()

    recording = record(tmp_path, operation)
    assert [op.kind for op in recording.ops] == ["create", "write", "write", "fsync"]
    first_write, second_write, fsync = recording.ops[1:]
    assert fsync.covers == {first_write.id}
    # After the fsync, the first write is durable, the second may still be lost (and the
    # name too: its directory was never fsynced).
    assert trees(recording, 4, "ordered") == {
        (), (("f", b"first"),), (("f", b"firstsecond"),)}


# -- the persistence models -------------------------------------------------------------------

def test_ordered_keeps_a_prefix_of_names_while_adversarial_reorders_them(tmp_path):
    recording = record(tmp_path, lambda: [(tmp_path / n).write_bytes(b"") for n in "ab"])
    assert [op.describe() for op in recording.ops] == ["create a", "create b"]
    prefixes = {(), (("a", b""),), (("a", b""), ("b", b""))}
    assert trees(recording, 2, "ordered") == prefixes
    assert trees(recording, 2, "adversarial") == prefixes | {(("b", b""),)}


def test_unsynced_data_is_lost_page_by_page_in_order_or_in_any_order(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    data = b"x" * crash_states.PAGE + b"y" * 10
    recording = record(tmp_path, lambda: (tmp_path / "f").write_bytes(data))
    ordered = trees(recording, len(recording.ops), "ordered")
    assert ordered == {(("f", b""),), (("f", data[:crash_states.PAGE]),), (("f", data),)}
    hole = bytes(crash_states.PAGE) + b"y" * 10  # the first page lost, the second kept
    assert trees(recording, len(recording.ops), "adversarial") == ordered | {(("f", hole),)}


def test_fsync_of_the_file_and_of_its_directory_make_data_and_name_durable(tmp_path):
    def operation():
        with open(tmp_path / "tmp", "xb") as f:
            f.write(b"data")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path / "tmp", tmp_path / "final")
        directory = os.open(tmp_path, os.O_RDONLY)
        os.fsync(directory)
        os.close(directory)

    recording = record(tmp_path, operation)
    rename = [op.kind for op in recording.ops].index("rename")
    for model in MODELS:  # synced data: never torn; a rename: old name or new, never both
        assert trees(recording, rename + 1, model) == {
            (), (("tmp", b"data"),), (("final", b"data"),)}
        assert trees(recording, len(recording.ops), model) == {(("final", b"data"),)}


def test_a_workload_too_large_to_explore_exhaustively_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    recording = record(tmp_path, lambda: (tmp_path / "f").write_bytes(
        bytes(20 * crash_states.PAGE)))
    with pytest.raises(CrashExplorerError, match="too large"):
        list(states_at(recording, len(recording.ops), "adversarial"))
    assert len(list(states_at(recording, len(recording.ops), "ordered"))) == 21


# -- the fault switches: the explorer can fail --------------------------------------------------

def test_a_removed_fsync_of_the_tensor_file_is_found_and_its_crash_sequence_named():
    found = explore_operation("save-best-moves", "ordered",
                              fault=Fault(drop_fsync="*/tensors.safetensors"))
    assert found.violating_states > 0
    invariants = {v.invariant for v in found.violations}
    assert {"not-durable", "torn-committed"} <= invariants
    durable = next(v for v in found.violations if v.invariant == "not-durable")
    assert durable.crash_point == found.calls  # after save() returned
    assert "durable: " in durable.sequence and "rename run/checkpoints/.tmp-step_00000003" \
        in durable.sequence
    assert "lost: " in durable.sequence
    assert "write run/checkpoints/.tmp-step_00000003" in durable.sequence.split("lost: ")[1]


def test_a_rename_moved_before_the_data_is_durable_is_found():
    fault = Fault(rename_before_fsync=("run/checkpoints/step_*", "*/tensors.safetensors"))
    found = explore_operation("save", "ordered", fault=fault)
    assert found.violating_states > 0
    assert "torn-committed" in {v.invariant for v in found.violations}


def test_a_removed_directory_fsync_loses_a_save_that_returned():
    found = explore_operation("save", "ordered", fault=Fault(drop_fsync="run/checkpoints"))
    assert "not-durable" in {v.invariant for v in found.violations}


def test_the_fault_switches_live_in_the_explorer_only():
    for path in ENGINE.glob("*.py"):
        if path.stem not in ("crash_states", "crash_recovery"):
            text = path.read_text("utf-8")
            assert "drop_fsync" not in text and "rename_before_fsync" not in text, path.name


# -- regressions: what the explorer found, each with its crash sequence ---------------------------
# (every write path explored under both models: test_crash_states_every_write_path.py)

def test_a_decision_log_line_torn_by_a_power_cut_does_not_swallow_the_next(tmp_path):
    """Found by decision-log-append: a crash keeps the first page of an append that straddles a
    page boundary; the next event was appended to the torn line and never read back."""
    with crash_recovery.open_manager(tmp_path) as manager:
        crash_recovery._save(manager, 1, 1.0)
    log = tmp_path / crash_recovery.CHECKPOINTS / "decisions.jsonl"
    log.write_bytes(log.read_bytes() + b'{"time": "2026-01-01T00:00:00", "eve')
    with crash_recovery.open_manager(tmp_path) as manager:
        crash_recovery._save(manager, 2, 1.0)
    events = crash_recovery.read_decision_log(log.parent)
    assert events[-1]["event"] == "saved" and events[-1]["step"] == 2


def recorded_calls(tmp_path, name):
    workspace = tmp_path / name
    workspace.mkdir()
    return [op.describe() for op in crash_recovery.record_workload(WORKLOADS[name],
                                                                   workspace).ops]


def first(calls, prefix):
    return next(i for i, call in enumerate(calls) if call.startswith(prefix))


def test_a_deletion_makes_its_rename_durable_before_removing_anything(tmp_path):
    """Found by delete (adversarial): `unlink .trash-step_3/manifest.json` reached the disk,
    `rename step_3 -> .trash-step_3` did not: a committed step_3 without its manifest."""
    calls = recorded_calls(tmp_path, "delete")
    rename = first(calls, "rename run/checkpoints/step_00000003 -> run/checkpoints/.trash-")
    sync = calls.index("fsync run/checkpoints/")
    assert rename < sync < first(calls, "unlink run/checkpoints/.trash-")


def test_a_rollback_makes_its_folders_durable_first_and_each_move_before_the_next(tmp_path):
    """Found by rollback (adversarial): the moves into abandoned/<stamp>/ reached the disk but
    the folder's own name did not (both checkpoints orphaned); or step_3 moved and step_2 did
    not (a resume from step 2: neither the old state nor the new)."""
    calls = recorded_calls(tmp_path, "rollback")
    moves = [i for i, call in enumerate(calls) if call.startswith("rename run/checkpoints/step_")]
    assert len(moves) == 2 and "step_00000002 ->" in calls[moves[0]]
    assert first(calls, "mkdir run/checkpoints/abandoned/") < \
        calls.index("fsync run/checkpoints/abandoned/") < \
        calls.index("fsync run/checkpoints/") < moves[0]
    between = calls[moves[0] + 1:moves[1]]
    assert any(c.startswith("fsync run/checkpoints/abandoned/") for c in between)
    assert "fsync run/checkpoints/" in between


def test_an_export_makes_the_folder_it_creates_durable(tmp_path):
    """Found by export (adversarial): `mkdir export` never reached the disk, so an export that
    had returned vanished with its folder."""
    calls = recorded_calls(tmp_path, "export")
    assert first(calls, "mkdir export") < first(calls, "fsync ./") < \
        first(calls, "create export/.tmp-export-")
