"""The command line on an S3-compatible store (moto's server on 127.0.0.1): inspect, verify,
ls, prune and export read and change a run in a bucket, and a location ckptlab cannot use is
one error line before anything is written - never a local folder named after the URL."""

from __future__ import annotations

import json

import pytest

from ckptlab import DQNConfig, Trainer
from conftest import FAST, REPO, run_cli

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    """A short DQN run written to a bucket: ``(environment, run URL)``."""
    with s3_support.moto_server() as url:
        environment = s3_support.environment(url)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            bucket = s3_support.new_bucket(url)
            run = f"s3://{bucket}/runs/a"
            config = DQNConfig(**{**FAST, "total_steps": 1200, "save_every_steps": 400})
            with Trainer(config, run) as trainer:
                trainer.train()
            yield environment, run, tmp_path_factory.mktemp("export")


def test_verify_inspect_and_ls_read_the_run_in_the_bucket(store_run):
    environment, run, _ = store_run
    verified = run_cli("verify", run, env_extra=environment)
    assert verified.returncode == 0, verified.stderr
    assert "3 of 3 checkpoint(s) valid" in verified.stdout
    inspected = run_cli("inspect", run, "--json", env_extra=environment)
    assert inspected.returncode == 0, inspected.stderr
    described = json.loads(inspected.stdout)
    assert described["path"] == f"{run}/checkpoints/step_00001200"
    assert described["status"] == "valid" and described["components"]["agent"]["tensors"] > 0
    listed = run_cli("ls", run.rsplit("/", 2)[0], "--json", env_extra=environment)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["run"], r["step"], r["status"]) for r in rows] == \
        [("runs/a", step, "valid") for step in (400, 800, 1200)]


def test_export_and_prune_on_the_bucket(store_run):
    environment, run, out = store_run
    exported = run_cli("export", run, "--out", str(out), env_extra=environment)
    assert exported.returncode == 0, exported.stderr
    assert (out / "weights.safetensors").stat().st_size > 0
    pruned = run_cli("prune", run, "--keep-last", "1", env_extra=environment)
    assert pruned.returncode == 0, pruned.stderr
    verified = run_cli("verify", run, env_extra=environment)
    kept = [line.split()[1] for line in verified.stdout.splitlines() if line.startswith("OK")]
    assert "step_00001200" in kept and "step_00000400" not in kept


@pytest.mark.parametrize("location, refusal", [
    ("gs://bucket/run", "cannot store checkpoints at gs:// locations"),
    ("s3:/bucket/run", "is not a valid URL"),
    ("s3://Not_A_Bucket/run", "is not an S3 bucket name"),
])
def test_a_location_ckptlab_cannot_use_is_one_error_line_and_writes_nothing(tmp_path,
                                                                          location, refusal):
    done = run_cli("train", "--run-dir", location, "--steps", "100")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error:") and refusal in line
    assert not any(p.name.endswith(":") for p in REPO.iterdir())  # no folder named s3: / gs:
