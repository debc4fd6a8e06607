"""Real Stable-Baselines3 training processes killed with SIGKILL at random moments (between
saves and in the middle of a save), each resumed by running the same command again: the final
state must equal the uninterrupted run's bit for bit, for PPO and DQN, with several
environments and VecNormalize. The same kill with SB3's own save/load (and with SB3 plus the
saved generator states) is the documented contrast: it finishes, but not as the same run.

Every process is forked from one warm interpreter (ckptlab.sb3.run.RunServer), so a kill costs
only the training it interrupts; one SIGTERM test runs ``python -m ckptlab.sb3.run`` itself.
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

pytest.importorskip("stable_baselines3")

from ckptlab.engine.faults import PHASES  # noqa: E402
from ckptlab.sb3.callback import checkpoint_directory  # noqa: E402
from ckptlab.sb3.run import (  # noqa: E402
    RunServer,
    committed_steps,
    compare_runs,
    differing_components,
    final_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]
TOTAL, SAVE_EVERY, N_ENVS = 2_048, 256, 2  # PPO's rollout: 128 timesteps, DQN's: 8
COMMON = ["--steps", str(TOTAL), "--save-every", str(SAVE_EVERY), "--n-envs", str(N_ENVS)]
RUNS = {
    "ppo": ["--algo", "ppo", *COMMON],
    "dqn": ["--algo", "dqn", *COMMON],
    # another classic-control environment for each: continuous actions for PPO
    "ppo-pendulum": ["--algo", "ppo", "--env", "Pendulum-v1", *COMMON],
    "dqn-acrobot": ["--algo", "dqn", "--env", "Acrobot-v1", *COMMON],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RunServer(tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def references(server, tmp_path_factory) -> dict[str, Path]:
    """Each run, never interrupted (saving at the same cadence as the interrupted ones)."""
    root = tmp_path_factory.mktemp("references")
    done = {}
    for name, args in RUNS.items():
        status, log = server.run([*args, "--run-dir", str(root / name)])
        assert status == 0, log
        done[name] = root / name
    return done


def final(run_dir: Path) -> Path:
    return checkpoint_directory(run_dir) / f"step_{TOTAL:08d}"


def assert_identical(reference: Path, resumed: Path) -> None:
    comparisons = compare_runs(final(reference), final(resumed))
    assert {c.name for c in comparisons} >= {"policy", "policy.optimizer", "progress", "envs",
                                            "normalization", "episode_stats", "rng"}
    differing = {c.name: c.differing[:3] for c in comparisons if not c.identical}
    assert not differing, f"the resumed run differs from the uninterrupted one: {differing}"


@pytest.mark.parametrize("name", ["ppo", "dqn"])
def test_sigkills_at_random_moments_then_the_same_command_resumes_bit_for_bit(
        name, server, references, tmp_path):
    """Kill, run the same command, kill the resumed process, ... five times, two of them in
    the middle of a save; then let it finish. Every resume starts from the newest committed
    checkpoint, nothing committed is lost, and the end is the uninterrupted run's."""
    rng = random.Random(f"sb3-{name}-20261204")
    args = [*RUNS[name], "--run-dir", str(tmp_path)]
    position, kills, phases = 0, 0, []
    while kills < 5:
        if kills in (1, 3):  # mid-save: at the next checkpoint's step, a random phase of it
            phase = rng.choice(PHASES[1:])
            step = (position // SAVE_EVERY + 1) * SAVE_EVERY
        else:  # between saves, mid-episode, mid-rollout: any timestep ahead
            phase = "step"
            step = position + N_ENVS * rng.randint(1, 2 * SAVE_EVERY // N_ENVS)
        if step >= TOTAL:
            break
        before = committed_steps(tmp_path) if checkpoint_directory(tmp_path).exists() else []
        status, log = server.run(args, fault=f"{phase}@{step}")
        assert status == -signal.SIGKILL, log
        kills += 1
        phases.append(phase)
        after = committed_steps(tmp_path)
        assert set(before) <= set(after), f"kill {kills} lost committed checkpoints"
        if before:
            assert f"Resuming from {checkpoint_directory(tmp_path)}" in log, log
            assert f"(timestep {max(before)} of {TOTAL})" in log, log
        position = max(after, default=0)
    assert kills == 5 and sum(p != "step" for p in phases) == 2, phases
    status, log = server.run(args)
    assert status == 0, log
    assert f"Finished at timestep {TOTAL} of {TOTAL}" in log
    assert_identical(references[name], tmp_path)


@pytest.mark.parametrize("name", ["ppo-pendulum", "dqn-acrobot"])
def test_another_classic_control_environment_resumes_bit_for_bit(name, server, references,
                                                                 tmp_path):
    args = [*RUNS[name], "--run-dir", str(tmp_path)]
    status, log = server.run(args, fault=f"step@{TOTAL // 2 + N_ENVS}")
    assert status == -signal.SIGKILL, log
    status, log = server.run(args)
    assert status == 0 and "Resuming from" in log, log
    assert_identical(references[name], tmp_path)


@pytest.mark.parametrize("name, method", [("ppo", "sb3"), ("dqn", "sb3"), ("ppo", "sb3-rng")])
def test_contrast_sb3s_own_save_and_load_finish_but_not_as_the_same_run(
        name, method, server, references, tmp_path):
    """The documented contrast, asserted: the same kill, resumed with SB3's ``save``/``load``
    (+ ``VecNormalize.save`` and ``save_replay_buffer``) and ``learn(remaining,
    reset_num_timesteps=False)``, with or without the saved global generators. The counters
    come back, so the run ends at the same timestep - with another policy: ``load`` resets
    the environments, the Monitor, VecNormalize's returns, and the generators go on
    elsewhere."""
    args = [*RUNS[name], "--run-dir", str(tmp_path), "--method", method]
    status, log = server.run(args, fault=f"step@{TOTAL // 2 + N_ENVS}")
    assert status == -signal.SIGKILL, log
    status, log = server.run(args)
    assert status == 0 and "Resuming the SB3 way" in log, log
    ours, theirs = final_checkpoint(references[name]), final_checkpoint(tmp_path)
    comparisons = {c.name: c for c in compare_runs(ours, theirs)}
    assert comparisons["policy"].differing and comparisons["policy"].max_abs_diff > 0
    differing = set(differing_components(ours, theirs))
    assert {"policy", "policy.optimizer", "envs"} <= differing
    # the generators drew as many numbers either way: restored, they end where ours do
    assert ("rng" in differing) == (method == "sb3")
    # not a broken harness: SB3 does bring its counters back
    progress = comparisons["progress"].differing
    assert not [p for p in progress if p.endswith(("/num_timesteps", "/_total_timesteps"))]


def test_sigterm_saves_at_the_next_rollout_boundary_and_the_same_command_resumes(
        references, tmp_path):
    """``python -m ckptlab.sb3.run`` itself: SIGTERM while it trains, a clean exit with a
    checkpoint saved because of the signal, then the same command finishes the run exactly."""
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_FAULT"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "ckptlab.sb3.run", *RUNS["ppo"], "--run-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (checkpoint_directory(tmp_path) / "latest").exists():  # training, saved once
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Received SIGTERM: saved the checkpoint at timestep" in out, out + err
    stopped = int(out.split("at timestep ")[1].split(".")[0])
    assert stopped < TOTAL and stopped in committed_steps(tmp_path)
    manifest = json.loads((checkpoint_directory(tmp_path) / f"step_{stopped:08d}" /
                           "manifest.json").read_text())
    # Saved because of the signal - unless the signal came during a regular save at this very
    # boundary (the test signals as soon as the first checkpoint appears), which covered it.
    assert "received SIGTERM" in manifest["save_reasons"] or stopped % SAVE_EVERY == 0, \
        manifest["save_reasons"]
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"(timestep {stopped} of {TOTAL})" in resumed.stdout
    assert_identical(references["ppo"], tmp_path)
