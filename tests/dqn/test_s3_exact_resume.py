"""The DQN run against an S3-compatible store (moto's server on 127.0.0.1): ``ckptlab train
--run-dir s3://...`` killed with SIGKILL and resumed with the same command ends bit for bit
equal to the uninterrupted run, and so does the run rolled back in place to an older
checkpoint of the bucket (the newer ones kept in ``abandoned/``)."""

from __future__ import annotations

import json
import time

import pytest

from ckptlab import DQNConfig, Trainer, verify_checkpoint
from ckptlab.engine import committed_checkpoints, read_decision_log
from conftest import FAST, assert_same_state, run_cli

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")

LEASE_SECONDS = 2  # the killed writer's lease; it lapses a whole second later (Last-Modified)


@pytest.fixture(scope="module")
def endpoint():
    with s3_support.moto_server() as url:
        yield url


def test_a_run_killed_and_resumed_on_the_store_equals_the_uninterrupted_run(
        endpoint, tmp_path, monkeypatch):
    environment = s3_support.environment(endpoint)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bucket = s3_support.new_bucket(endpoint)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FAST))
    run = f"s3://{bucket}/runs/cartpole"
    args = ["train", "--run-dir", run, "--config", str(config), "--quiet"]
    killed = run_cli(*args, env_extra={**environment, "CKPTLAB_FAULT": "step@1234",
                                       "CKPTLAB_S3_LEASE_SECONDS": str(LEASE_SECONDS)})
    assert killed.returncode == -9, killed.stderr[-2000:]
    killed_at = time.monotonic()
    # The uninterrupted run trains while the killed writer's lease lapses.
    reference = Trainer(DQNConfig(**FAST), tmp_path / "reference")
    reference.train()
    reference.close()
    time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1.1 - time.monotonic()))
    resumed = run_cli(*args, env_extra=environment)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {run}/checkpoints/step_00000800" in resumed.stdout
    last = f"step_{FAST['total_steps']:08d}"
    expected = tmp_path / "reference" / "checkpoints" / last
    assert_same_state(expected, f"{run}/checkpoints/{last}")
    checkpoints = committed_checkpoints(f"{run}/checkpoints")
    assert [p.name for p in checkpoints] == ["step_00000800", "step_00001600", last]
    manifests = {p.name: verify_checkpoint(p).manifest for p in checkpoints}

    # Rolled back in place to step 1600 and trained on with the same settings: the same bits.
    with Trainer(DQNConfig(**FAST), run) as again:
        again.restore(f"{run}/checkpoints/step_00001600", allow_rollback=True)
        again.train()
    assert_same_state(expected, f"{run}/checkpoints/{last}")
    [event] = [e for e in read_decision_log(f"{run}/checkpoints")
               if e["event"] == "rolled_back"]
    assert event["moved"] == [last]
    # What was moved aside is the very commit, and every byte of it verifies where it now is.
    kept = verify_checkpoint(f"{run}/checkpoints/{event['moved_to']}/{last}")
    assert kept.manifest == manifests[last]


def test_a_job_on_the_store_goes_to_a_new_process_as_json(endpoint, monkeypatch):
    from ckptlab.dqn.job import TrainJob
    from ckptlab.engine.location import StorePath, as_location

    for name, value in s3_support.environment(endpoint).items():
        monkeypatch.setenv(name, value)
    job = TrainJob(as_location("s3://bucket/runs/a"), total_steps=100, quiet=True)
    again = TrainJob.from_json(job.to_json())  # an s3:// run_dir holds a client: no deepcopy
    assert isinstance(again.run_dir, StorePath) and again.run_dir.url == "s3://bucket/runs/a"
    assert again == job
