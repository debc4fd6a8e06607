"""Interruptions of real training processes: SIGTERM, and a long series of SIGKILLs at random
moments (during training, during a save, during a pointer update), each followed by a resume.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptlab.engine.faults import LOCAL_PHASES
from conftest import FAST, REPO, assert_same_state, run_cli

LONGER = {**FAST, "total_steps": 4_000, "save_every_steps": 200}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "longer.json"
    path.write_text(json.dumps(LONGER))
    return path


def train_args(run_dir: Path, config_file: Path, *extra: str) -> list[str]:
    return ["train", "--run-dir", str(run_dir), "--config", str(config_file), "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config_file) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    done = run_cli(*train_args(run_dir, config_file))
    assert done.returncode == 0, done.stderr
    return run_dir / "checkpoints" / f"step_{LONGER['total_steps']:08d}"


def committed_steps(run_dir: Path) -> set[int]:
    return {int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*")}


def test_sigterm_finishes_the_step_saves_and_exits_cleanly(tmp_path, config_file, reference):
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_FAULT"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "ckptlab", *train_args(tmp_path, config_file)]
    cmd.remove("--quiet")  # we wait for an epoch line
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    for line in proc.stdout:
        if line.startswith("epoch   2"):
            break
    time.sleep(0.1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    message = None
    for line in proc.stdout:  # the message is printed after the checkpoint is committed
        if line.startswith("Received SIGTERM"):
            message = line.strip()
            break
    saved_after = time.monotonic() - sent
    rest, err = proc.communicate(timeout=30)
    exited_after = time.monotonic() - sent
    assert proc.returncode == 0, err
    assert message is not None and "Run the same command to resume" in message, rest
    assert saved_after < 1.0, f"took {saved_after:.2f} s to save after SIGTERM"
    assert exited_after < 5.0, f"took {exited_after:.2f} s to exit after SIGTERM"
    stopped_at = int(message.split("at step ")[1].split(":")[0])
    assert stopped_at in committed_steps(tmp_path), "the stop step was not saved"
    manifest = json.loads((tmp_path / "checkpoints" / f"step_{stopped_at:08d}" /
                           "manifest.json").read_text())
    # Saved because of the signal - unless a regular save had just covered this very step.
    assert manifest["save_reasons"] == ["received SIGTERM"] or \
        stopped_at % LONGER["save_every_steps"] == 0, manifest["save_reasons"]
    resumed = run_cli(*train_args(tmp_path, config_file))
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {stopped_at} of" in resumed.stdout
    assert_same_state(reference, tmp_path / "checkpoints" / reference.name)


def test_twenty_sigkills_at_random_moments(tmp_path, config_file, reference):
    """Kill, resume, kill the resumed process, ... 20 times; then let it finish.

    Each kill is at a random step and a random phase (training, mid-save, mid-pointer update),
    chosen ahead of the resumed process's position so every resume makes progress. Every
    resume must succeed, nothing committed may be lost (only retention may delete), and the
    final state must equal the uninterrupted run's.
    """
    rng = random.Random(20261122)
    total = LONGER["total_steps"]
    position = 0  # the step the next process will resume from (lower bound)
    kills = 0
    args = train_args(tmp_path, config_file)
    while kills < 20 and position < total:
        lo = position + 1
        step = rng.randint(lo, min(total - 1, lo + 150))
        phase = rng.choice(LOCAL_PHASES)
        if phase != "step":  # saves happen only at multiples of save_every
            every = LONGER["save_every_steps"]
            step = min(total, max(every, ((step + every - 1) // every) * every))
        before = committed_steps(tmp_path) if (tmp_path / "checkpoints").exists() else set()
        done = run_cli(*args, env_extra={"CKPTLAB_FAULT": f"{phase}@{step}"})
        if done.returncode == 0:  # the run finished before reaching the planned fault
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        kills += 1
        after = committed_steps(tmp_path)
        assert before <= after, f"kill {kills} lost committed checkpoints: {before - after}"
        position = max(after) if after else 0
    assert kills == 20
    final = run_cli(*args)
    assert final.returncode == 0, final.stderr
    assert_same_state(reference, tmp_path / "checkpoints" / reference.name)
