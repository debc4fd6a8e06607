"""The DQN run against an S3-compatible store (moto's server on 127.0.0.1): ``ckptlab train
--run-dir s3://...`` killed with SIGKILL and resumed with the same command ends bit for bit
equal to the uninterrupted run, and the store's commands work on it."""

from __future__ import annotations

import json

import pytest

from ckptlab import DQNConfig, Trainer
from conftest import FAST, assert_same_state, run_cli

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


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
    reference = Trainer(DQNConfig(**FAST), tmp_path / "reference")
    reference.train()
    reference.close()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FAST))
    run = f"s3://{bucket}/runs/cartpole"
    args = ["train", "--run-dir", run, "--config", str(config), "--quiet"]
    killed = run_cli(*args, env_extra={**environment, "CKPTLAB_FAULT": "step@1234",
                                       "CKPTLAB_S3_LEASE_SECONDS": "2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    import time

    time.sleep(3.1)  # the killed writer's lease lapses
    resumed = run_cli(*args, env_extra=environment)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {run}/checkpoints/step_00000800" in resumed.stdout
    final = f"{run}/checkpoints/step_{FAST['total_steps']:08d}"
    assert_same_state(tmp_path / "reference" / "checkpoints" / f"step_{FAST['total_steps']:08d}",
                      final)
    verified = run_cli("verify", run, env_extra=environment)
    assert verified.returncode == 0 and "3 of 3 checkpoint(s) valid" in verified.stdout, \
        verified.stdout + verified.stderr
