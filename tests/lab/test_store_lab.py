"""Lesson 10's object-storage section (ckptlab.lab.store_lab): the lesson's S3 server starts on
127.0.0.1 and stops with the environment restored; a DQN run in the bucket killed by SIGKILL
while a save uploads leaves data without a commit object, the next writer waits for the dead
writer's lease, removes that data and resumes from the previous checkpoint, and the checkpoint
it writes at the killed step equals the uninterrupted run's bit for bit."""

from __future__ import annotations

import os

import pytest

from ckptlab import CkptlabError, DQNConfig, Trainer
from conftest import FAST

store_lab = pytest.importorskip("ckptlab.lab.store_lab")
pytest.importorskip("moto", reason="moto (the lesson's S3 server) is not installed")


def test_a_kill_mid_upload_falls_back_and_the_resumed_run_is_the_uninterrupted_one(
        tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    config = DQNConfig(**{**FAST, "total_steps": 800, "save_every_steps": 400})
    with Trainer(config, tmp_path / "local") as uninterrupted:
        uninterrupted.train()
    with store_lab.local_s3_server() as s3:
        assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
        assert s3.endpoint.startswith("http://127.0.0.1:")
        result = store_lab.kill_mid_upload_and_resume(
            config, s3, tmp_path / "local" / "checkpoints", tmp_path, kill_step=800)
    assert "AWS_ENDPOINT_URL" not in os.environ  # restored when the server stopped
    assert result.killed_returncode == -9
    assert result.killed_message == "ckptlab: injected SIGKILL at save:uploading@800"
    assert result.committed_after_kill == ["step_00000400"]
    assert result.newest_valid_after_kill == result.latest_after_kill == "step_00000400"
    killed = [row for row in result.after_kill if "step_00000800" in row["object"]]
    assert killed and all(row["object"].startswith(".data/step_00000800-")
                          and "never committed" in row["what it is"] for row in killed)
    assert result.refused_holder_pid == result.killed_pid
    assert result.resumed_from == "step_00000400"
    [removed] = result.removed
    assert killed[0]["object"].startswith(f".data/{removed}/")
    assert not any("never committed" in row["what it is"] for row in result.after_resume)
    assert result.differing == []
    fields = {row["field"]: row["value"] for row in result.commit}
    assert fields["step"] == 800 and fields["object_data"].startswith(".data/step_00000800-")
    assert [row["seen"] for row in result.summary_rows()][-1] == "every component identical"
    # Nothing local but the config file it was given a folder for.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "store-run-config.json"]


def test_the_server_stops_and_the_kill_step_must_be_a_later_save():
    config = DQNConfig(**{**FAST, "total_steps": 800, "save_every_steps": 400})
    with pytest.raises(CkptlabError, match="kill_step must be a save after the first"):
        store_lab.kill_mid_upload_and_resume(config, None, "unused", "unused", kill_step=400)
    with store_lab.local_s3_server() as s3:
        endpoint = s3.endpoint
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x",
                          config=Config(retries={"max_attempts": 1}))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.list_buckets()  # nothing listens there any more
