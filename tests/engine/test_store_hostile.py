"""A hostile bucket gets the same typed refusals as a hostile directory: every manifest,
pointer, lease, log and header object is read with a bound, every manifest field is
type-checked (after a resealed self-hash too), and no manifest can make a reader fetch an
object outside its own checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from ckptlab import (
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointManager,
    RunLockedError,
    load_checkpoint_state,
    read_decision_log,
    verify_checkpoint,
)
from ckptlab.engine import read_pointer_record, read_tensor_table
from ckptlab.engine.format import manifest_self_hash

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


@pytest.fixture(scope="module")
def endpoint():
    with s3_support.moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def good_run(endpoint):
    """A bucket with one good run of two checkpoints, written once; each test gets a copy."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_support.environment(endpoint).items():
            patch.setenv(name, value)
        bucket = s3_support.new_bucket(endpoint)
        with CheckpointManager(f"s3://{bucket}/run") as manager:
            manager.register("model", torch.nn.Linear(8, 8))
            manager.save(1)
            manager.save(2)
    return bucket


@pytest.fixture
def run(endpoint, good_run, monkeypatch):
    """A fresh bucket holding a copy of the good run (copied inside the server, object by
    object): ``(s3 client, bucket, run URL)``."""
    for name, value in s3_support.environment(endpoint).items():
        monkeypatch.setenv(name, value)
    s3 = s3_support.client(endpoint)
    bucket = s3_support.new_bucket(endpoint)
    for item in s3.list_objects_v2(Bucket=good_run)["Contents"]:
        s3.copy_object(Bucket=bucket, Key=item["Key"],
                       CopySource={"Bucket": good_run, "Key": item["Key"]})
    return s3, bucket, f"s3://{bucket}/run"


def reseal(s3, bucket: str, step: int, change) -> None:
    """Change step's manifest and recompute its self-hash (a tamperer who knows the format)."""
    key = f"run/step_{step:08d}/manifest.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    change(manifest)
    manifest["manifest_sha256"] = manifest_self_hash(manifest)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())


@pytest.mark.parametrize("change, refusal", [
    (lambda m: m.update(object_data="../elsewhere"), "does not name this checkpoint's data"),
    (lambda m: m.update(object_data=m["object_data"].replace("00000002", "00000001")),
     "does not name this checkpoint's data"),
    (lambda m: m.update(object_data=["a list"]), "does not name this checkpoint's data"),
    (lambda m: m["files"]["tensors.safetensors"].update(bytes=2**50), "size"),
    (lambda m: m["files"].update({"../../secret": m["files"].pop("state.json")}),
     "file table"),
    (lambda m: m.update(step="two"), "step"),
    (lambda m: m.update(metrics=[1, 2]), "metrics"),
])
def test_a_resealed_hostile_manifest_is_refused_before_any_data_is_read(run, change, refusal):
    s3, bucket, url = run
    reseal(s3, bucket, 2, change)
    with pytest.raises(CheckpointCorruptError, match=refusal):
        load_checkpoint_state(f"{url}/step_00000002")


def test_an_oversized_manifest_or_data_object_is_refused_unread(run):
    s3, bucket, url = run
    s3.put_object(Bucket=bucket, Key="run/step_00000002/manifest.json",
                  Body=b" " * (16 * 1024 * 1024 + 1))
    with pytest.raises(CheckpointCorruptError, match="implausibly large"):
        verify_checkpoint(f"{url}/step_00000002")
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="run/step_00000001/manifest.json")["Body"].read())
    data = f"run/{manifest['object_data']}/state.json"
    s3.put_object(Bucket=bucket, Key=data, Body=b"{}" * 100_000)  # larger than recorded
    with pytest.raises(CheckpointCorruptError, match="bytes but the manifest records"):
        verify_checkpoint(f"{url}/step_00000001")


def test_a_hostile_safetensors_header_length_is_refused_by_inspect(run):
    s3, bucket, url = run
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="run/step_00000001/manifest.json")["Body"].read())
    key = f"run/{manifest['object_data']}/tensors.safetensors"
    size = manifest["files"]["tensors.safetensors"]["bytes"]
    s3.put_object(Bucket=bucket, Key=key, Body=(2**60).to_bytes(8, "little") + b"\0" * (size - 8))
    with pytest.raises(CheckpointCorruptError, match="header length"):
        read_tensor_table(f"{url}/step_00000001/tensors.safetensors")


@pytest.mark.parametrize("body", [b"\xff\xfe not json", b"[1, 2]",
                                  b'{"checkpoint": "../../etc", "step": 1}',
                                  b'{"checkpoint": "step_00000001"' + b" " * 70_000 + b"}"])
def test_a_hostile_pointer_reads_as_missing(run, body):
    s3, bucket, url = run
    s3.put_object(Bucket=bucket, Key="run/latest", Body=body)
    assert read_pointer_record(url, "latest") is None
    with CheckpointManager(url) as manager:  # the writer repairs it by CAS
        assert manager.latest_pointer() == "step_00000002"


def test_a_damaged_decision_log_object_is_skipped(run):
    s3, bucket, url = run
    before = read_decision_log(url)
    s3.put_object(Bucket=bucket, Key="run/decisions/00000000000000000000-bad.jsonl",
                  Body=b"\x00\xff{not json\n[1]\n" + b"9" * 5000 + b"\n")
    assert read_decision_log(url) == before and before


def test_a_garbage_lease_object_is_a_held_lease_until_it_lapses(run):
    s3, bucket, url = run
    s3.put_object(Bucket=bucket, Key="run/.writer-lease", Body=b"\x00garbage")
    with pytest.raises(RunLockedError, match="an unknown writer"):
        CheckpointManager(url)


def test_damage_to_either_data_object_is_reported_in_the_same_order_as_before(run):
    """The tensors' object is opened while state.json downloads: a damaged state.json is still
    the error reported (the early-opened tensors are closed unread), a truncated or missing
    tensors object is refused by its size before a byte is read, and a manager's restore falls
    back to the previous checkpoint with a warning in each case."""
    s3, bucket, url = run
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="run/step_00000002/manifest.json")["Body"].read())
    data = f"run/{manifest['object_data']}"
    good = {name: s3.get_object(Bucket=bucket, Key=f"{data}/{name}")["Body"].read()
            for name in ("state.json", "tensors.safetensors")}
    damages = [("state.json", good["state.json"][:-1] + b" ", "state.json"),
               ("tensors.safetensors", good["tensors.safetensors"][:-7],
                "bytes but the manifest records"),
               ("tensors.safetensors", None, "is missing")]
    for name, body, refusal in damages:
        if body is None:
            s3.delete_object(Bucket=bucket, Key=f"{data}/{name}")
        else:
            s3.put_object(Bucket=bucket, Key=f"{data}/{name}", Body=body)
        with pytest.raises(CheckpointCorruptError, match=refusal):
            load_checkpoint_state(f"{url}/step_00000002")
        with CheckpointManager(url, create=False) as reader:
            reader.register("model", torch.nn.Linear(8, 8))
            with pytest.warns(CheckpointFallbackWarning, match=refusal):
                assert reader.restore().step == 1
        s3.put_object(Bucket=bucket, Key=f"{data}/{name}", Body=good[name])
