"""``rollback()`` on an S3-compatible store (moto's server on 127.0.0.1), with the guarantees
of the store's protocol: the newer checkpoints are kept in ``abandoned/`` (copied inside the
store, readable and verifiable there) before they are uncommitted, oldest first; pointers move
by compare-and-swap; a writer whose lease was taken over uncommits nothing; a rollback killed
part-way leaves either the old newest checkpoint or garbage the next writer removes."""

from __future__ import annotations

import json

import pytest
import torch

from ckptlab import (
    BestBy,
    CheckpointCorruptError,
    CheckpointManager,
    RollbackRequiredError,
    load_checkpoint_state,
    read_decision_log,
    verify_checkpoint,
)
from ckptlab.engine import read_pointer
from ckptlab.engine.remote import LeaseLostError

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


@pytest.fixture(scope="module")
def endpoint():
    with s3_support.moto_server() as url:
        yield url


class Holder:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


@pytest.fixture
def run(endpoint, monkeypatch, request):
    """A writer holding a run of three checkpoints, the middle one the best:
    ``(manager, holder, {step: saved value}, bucket)``; each holds ``request.param`` float32
    values (default 1024)."""
    for name, value in s3_support.environment(endpoint).items():
        monkeypatch.setenv(name, value)
    bucket = s3_support.new_bucket(endpoint)
    size = getattr(request, "param", 1024)
    holder = Holder(torch.zeros(size))
    manager = CheckpointManager(f"s3://{bucket}/run", best=BestBy("r", "max"))
    manager.register("h", holder)
    saved = {}
    for step, r in ((1, 1.0), (2, 3.0), (3, 2.0)):
        holder.value = torch.full((size,), float(step))
        holder.value[step] = -1.0
        saved[step] = holder.value.clone()
        manager.save(step, metrics={"r": r})
    yield manager, holder, saved, bucket
    manager.close()


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    s3 = s3_support.client(endpoint)
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def names(manager) -> list[str]:
    return [p.name for p in manager.committed()]


@pytest.mark.parametrize("run", [6 * 1024 * 1024 // 4], indirect=True)  # 6 MiB tensors
def test_rollback_keeps_the_newer_checkpoints_aside_and_the_run_continues(run, endpoint):
    manager, holder, saved, bucket = run
    store = manager.directory.store
    # S3 copies up to 5 GiB in one request; lowered, the 6 MiB objects go in two parts.
    store.copy_single_max, store.copy_part_bytes = 1024 * 1024, 5 * 1024 * 1024
    real_part_copy, parts = store.client.upload_part_copy, []
    store.client.upload_part_copy = lambda **kw: parts.append(kw) or real_part_copy(**kw)
    assert manager.best_pointer() == "step_00000002"
    with pytest.raises(RollbackRequiredError, match=r"rollback\(1\)"):
        manager.save(1)  # as on disk: a save below newer checkpoints is refused...
    moved = manager.rollback(1, reason="collapsed")  # ...until the rollback
    assert names(manager) == ["step_00000001"]
    assert manager.latest_pointer() == manager.best_pointer() == "step_00000001"
    assert [p.name for p in moved] == ["step_00000002", "step_00000003"]
    assert moved[0].parent.parent.url == f"s3://{bucket}/run/abandoned"
    assert len(parts) == 4  # each checkpoint's tensors object: 5 MiB + the rest
    for path, step in zip(moved, (2, 3)):  # kept: every byte, verifiable where it now is
        verify_checkpoint(path)
        _, states = load_checkpoint_state(path)
        assert torch.equal(states["h"]["value"], saved[step])
    [event] = [e for e in read_decision_log(f"s3://{bucket}/run")
               if e["event"] == "rolled_back"]
    assert event["moved"] == ["step_00000002", "step_00000003"]
    assert event["moved_to"] == f"abandoned/{moved[0].parent.name}" and \
        event["reason"] == "collapsed"
    assert keys(endpoint, bucket, "run/.data/step_00000002") == []  # nothing left behind
    holder.value = torch.ones(4)
    manager.save(2)  # the run continues from step 1
    manager.close()
    kept = keys(endpoint, bucket, "run/abandoned/")
    with CheckpointManager(f"s3://{bucket}/run") as reopened:  # its cleanup keeps the copies
        assert names(reopened) == ["step_00000001", "step_00000002"]
    assert keys(endpoint, bucket, "run/abandoned/") == kept
    assert read_pointer(f"s3://{bucket}/run", "latest") == "step_00000002"


def test_a_rollback_killed_after_an_uncommit_leaves_the_old_newest_then_finishes(run,
                                                                                 endpoint):
    manager, _, saved, bucket = run
    store = manager.directory.store
    real_delete, calls = store.delete, []

    def delete_then_crash(doomed):
        calls.append(list(doomed))
        if len(calls) == 2:  # step 2 is uncommitted; deleting its data "crashes"
            raise KeyboardInterrupt
        real_delete(doomed)

    store.delete = delete_then_crash
    with pytest.raises(KeyboardInterrupt):
        manager.rollback(1)
    store.delete = real_delete
    assert calls[0] == ["run/step_00000002/manifest.json"]  # uncommitted before its data goes
    assert names(manager) == ["step_00000001", "step_00000003"]  # the newest is still newest
    manager._lock.release()
    with CheckpointManager(f"s3://{bucket}/run") as again:  # cleans up, then finishes
        assert keys(endpoint, bucket, "run/.data/step_00000002") == []
        again.register("h", Holder(torch.zeros(1)))
        assert again.restore().step == 3
        assert [p.name for p in again.rollback(1)] == ["step_00000003"]
        assert names(again) == ["step_00000001"]
    # by checkpoint: two rollbacks within one second get folders "<stamp>-after-step_1" and
    # "<stamp>-after-step_1-<random>", which sort either way
    copies = sorted((p.removesuffix("/manifest.json")
                     for p in keys(endpoint, bucket, "run/abandoned/")
                     if p.endswith("/manifest.json")), key=lambda c: c.rsplit("/", 1)[1])
    assert [c.rsplit("/", 1)[1] for c in copies] == ["step_00000002", "step_00000003"]
    for copy in copies:
        _, states = load_checkpoint_state(f"s3://{bucket}/{copy}")
        assert torch.equal(states["h"]["value"], saved[int(copy[-8:])])


def test_a_rollback_killed_mid_copy_changes_nothing_and_its_copy_is_removed(run, endpoint):
    manager, _, _, bucket = run
    store = manager.directory.store
    real_copy = store.copy

    def copy_once_then_crash(source, key):
        if "/abandoned/" in key and keys(endpoint, bucket, "run/abandoned/"):
            raise KeyboardInterrupt
        return real_copy(source, key)

    store.copy = copy_once_then_crash
    with pytest.raises(KeyboardInterrupt):
        manager.rollback(1)
    store.copy = real_copy
    assert len(keys(endpoint, bucket, "run/abandoned/")) == 1  # a data object, no commit
    assert names(manager) == ["step_00000001", "step_00000002", "step_00000003"]
    manager._lock.release()
    CheckpointManager(f"s3://{bucket}/run").close()
    assert keys(endpoint, bucket, "run/abandoned/") == []


def test_a_writer_whose_lease_was_taken_over_uncommits_nothing(run, endpoint):
    manager, _, _, bucket = run
    taker = json.dumps({"owner": "another", "pid": 1, "host": "elsewhere"}).encode()
    s3_support.client(endpoint).put_object(Bucket=bucket, Key="run/.writer-lease", Body=taker)
    with pytest.raises(LeaseLostError, match="another writer took the run over"):
        manager.rollback(1)
    reader = CheckpointManager(f"s3://{bucket}/run", create=False)
    assert names(reader) == ["step_00000001", "step_00000002", "step_00000003"]
    assert reader.latest_pointer() == "step_00000003"
    assert keys(endpoint, bucket, "run/abandoned/") == []  # not even a copy was made


def test_rolling_back_to_a_damaged_checkpoint_moves_nothing(run, endpoint):
    manager, _, _, bucket = run
    [key] = [k for k in keys(endpoint, bucket, "run/.data/step_00000002-")
             if k.endswith("state.json")]
    s3_support.client(endpoint).put_object(Bucket=bucket, Key=key, Body=b"{}")
    with pytest.raises(CheckpointCorruptError, match=r"nothing was moved; call rollback\(1\)"):
        manager.rollback(2)
    assert names(manager) == ["step_00000001", "step_00000002", "step_00000003"]
    assert keys(endpoint, bucket, "run/abandoned/") == []
