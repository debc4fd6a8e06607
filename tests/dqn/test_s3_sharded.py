"""Sharded checkpoints of a 2-rank run on an S3-compatible store (moto's server on 127.0.0.1):
``ckptlab train --nproc 2 --run-dir s3://...``. Each rank uploads its part and its DCP data
object under the save's own data prefix; rank 0 alone commits, by creating the manifest
object, after the barrier. A rank SIGKILLed while it uploads leaves no checkpoint (the restart
resumes from the previous one and ends bit for bit as the uninterrupted run), and a 2-rank
checkpoint in the bucket reshards onto 1 rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from ckptlab.cli import main  # noqa: E402
from ckptlab.engine import committed_checkpoints, read_manifest, verify_checkpoint  # noqa: E402
from ckptlab.engine.distributed import (  # noqa: E402
    compare_sharded_checkpoints,
    read_sharded_state,
)

s3_support = pytest.importorskip("s3_support")
pytest.importorskip("moto", reason="moto (the test S3 server) is not installed")

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"learning_starts": 100, "steps_per_epoch": 200, "eval_episodes": 2,
          "hidden_sizes": [16, 16], "buffer_capacity": 2000, "batch_size": 32}
STEPS = 400
TIMEOUT = 420


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``(environment, bucket, endpoint, scratch folder)`` on one moto server; the
    uninterrupted 2-rank run, saving asynchronously, is written to
    ``s3://<bucket>/uninterrupted``."""
    with s3_support.moto_server() as endpoint:
        environment = {**s3_support.environment(endpoint), "CKPTLAB_S3_LEASE_SECONDS": "2"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            bucket = s3_support.new_bucket(endpoint)
            scratch = tmp_path_factory.mktemp("s3-sharded")
            # async saves: each upload in a background thread of every rank (the same bits)
            done = _train(environment, scratch, f"s3://{bucket}/uninterrupted", "--nproc", "2",
                          "--async-save")
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            yield environment, bucket, endpoint, scratch


def _train(environment: dict[str, str], scratch: Path, run: str, *args: str,
           steps: int = STEPS, **extra: str) -> subprocess.CompletedProcess[str]:
    config = scratch / "config.json"
    config.write_text(json.dumps(CONFIG))
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_RANK_FAULT"}
    env.update(environment, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    cmd = [sys.executable, "-m", "ckptlab", "train", "--run-dir", run, "--config",
           str(config), "--steps", str(steps), "--save-every", "200", "--quiet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=scratch)


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    s3 = s3_support.client(endpoint)
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def _data_prefixes(endpoint: str, bucket: str, run: str) -> set[str]:
    base = f"{run}/checkpoints/.data/"
    return {key[len(base):].split("/")[0] for key in _keys(endpoint, bucket, base)}


def test_a_two_rank_run_in_the_bucket_commits_one_manifest_object_per_save(store, capsys):
    _, bucket, endpoint, _ = store
    checkpoints = f"s3://{bucket}/uninterrupted/checkpoints"
    found = committed_checkpoints(checkpoints)
    assert [p.name for p in found] == ["step_00000200", "step_00000400"]
    named = set()
    for checkpoint in found:
        info = verify_checkpoint(checkpoint)  # every object of both ranks, hashed
        assert info.manifest["sharded"]["world_size"] == 2
        prefix = info.manifest["object_data"]
        named.add(prefix.split("/", 1)[1])
        objects = {key.split(f"{prefix}/", 1)[1] for key in
                   _keys(endpoint, bucket, f"uninterrupted/checkpoints/{prefix}/")}
        assert objects == set(info.manifest["files"])  # what the manifest lists, nothing else
        assert {"dcp/__0_0.bin", "dcp/__1_0.bin", "dcp/index.json",
                "rank_00001/state.json"} <= objects
    assert _data_prefixes(endpoint, bucket, "uninterrupted") == named  # no uncommitted data
    assert main(["verify", f"s3://{bucket}/uninterrupted"]) == 0
    assert "2 of 2 checkpoint(s) valid" in capsys.readouterr().out


def test_a_rank_killed_mid_upload_leaves_no_checkpoint_and_the_restart_is_exact(store):
    environment, bucket, endpoint, scratch = store
    run = f"s3://{bucket}/killed"
    done = _train(environment, scratch, run, "--nproc", "2", "--max-restarts", "1",
                  CKPTLAB_RANK_FAULT="1:save:uploading@400")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "injected SIGKILL of rank 1 at save:uploading@400" in out
    starts = [line for line in done.stdout.splitlines() if line.startswith("[restart")]
    # The killed save of step 400 was never committed: the restart resumes from step 200.
    assert starts[1].startswith("[restart 1] Resuming 2 rank(s) from step_00000200"), starts
    final = f"step_{STEPS:08d}"
    differing = [c.name for c in compare_sharded_checkpoints(
        f"s3://{bucket}/uninterrupted/checkpoints/{final}", f"{run}/checkpoints/{final}")
        if not c.identical]
    assert not differing, differing
    named = {read_manifest(p)["object_data"].split("/", 1)[1]
             for p in committed_checkpoints(f"{run}/checkpoints")}
    assert _data_prefixes(endpoint, bucket, "killed") == named  # the killed save's data: gone


def test_a_two_rank_checkpoint_in_the_bucket_reshards_onto_one_rank(store):
    environment, bucket, _, scratch = store
    source = f"s3://{bucket}/uninterrupted/checkpoints/step_{STEPS:08d}"
    run = f"s3://{bucket}/one-rank"
    done = _train(environment, scratch, run, "--nproc", "1", "--resume", source,
                  steps=STEPS + 200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "RESHARDED" in done.stderr and "NOT bit-identical" in done.stderr
    info, states = read_sharded_state(f"{run}/checkpoints/step_{STEPS + 200:08d}")
    assert info.manifest["sharded"]["world_size"] == 1
    assert info.manifest["resharded_from"]["world_size"] == 2
    # 2 x 400 transitions (one per rank per step) merged onto one rank, then 200 more
    assert states["rank_00000"]["replay_buffer"]["size"] == 2 * STEPS + 200
