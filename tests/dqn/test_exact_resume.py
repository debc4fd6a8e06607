"""Exact resume: interrupted-and-resumed runs end bit-for-bit equal to the uninterrupted run.

The in-process tests resume from checkpoints taken at many points, including mid-episode. The
subprocess tests run the real CLI and kill it with SIGKILL - between saves, and at every phase
of a save - then resume it with the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptlab import DQNConfig, Trainer, load_checkpoint_state
from ckptlab.engine import MANIFEST
from conftest import FAST, REPO, assert_equal, assert_same_state, run_cli


def final_checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def file_hashes(ckpt: Path) -> dict[str, str]:
    manifest = json.loads((ckpt / MANIFEST).read_text())
    return {name: entry["sha256"] for name, entry in manifest["files"].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, trained once for the whole module."""
    run_dir = tmp_path_factory.mktemp("reference")
    trainer = Trainer(DQNConfig(**FAST), run_dir)
    trainer.train()
    trainer.close()
    return final_checkpoint(run_dir, FAST["total_steps"])


@pytest.mark.parametrize("interrupt_at", [1, 333, 800, 1234, 2399])
def test_resume_from_a_checkpoint_taken_anywhere(tmp_path, reference, interrupt_at):
    config = DQNConfig(**FAST)
    first = Trainer(config, tmp_path)
    first.train(until_step=interrupt_at)
    mid_episode = first.runner.obs is not None
    first.save()  # an extra checkpoint exactly here, usually mid-episode
    first.close()
    del first

    second = Trainer(config, tmp_path)
    info = second.restore()
    assert info.step == interrupt_at
    second.train()
    second.close()
    final = final_checkpoint(tmp_path, config.total_steps)
    assert_same_state(reference, final)
    assert file_hashes(final) == file_hashes(reference)
    if interrupt_at in (333, 1234):
        assert mid_episode, "this interruption point was chosen to fall inside an episode"


def test_resume_with_different_bookkeeping_is_still_exact(tmp_path, reference):
    """Save cadence and evaluation are bookkeeping: changing them changes nothing learned."""
    config = DQNConfig(**{**FAST, "save_every_steps": 300})
    run = Trainer(config, tmp_path)
    run.train(until_step=900)
    run.close()
    resumed = Trainer(DQNConfig(**{**FAST, "save_every_steps": 0}), tmp_path)
    resumed.restore()
    resumed.train()
    _, ref_states = load_checkpoint_state(reference)
    _, states = load_checkpoint_state(final_checkpoint(tmp_path, FAST["total_steps"]))
    for name in ("agent", "replay_buffer", "rng", "env", "exploration", "progress"):
        assert_equal(ref_states[name], states[name], name)


# --------------------------------------------------------------------------------------------
# Real processes, real SIGKILL
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fast_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def train_cmd(run_dir: Path, config_file: Path) -> list[str]:
    return ["train", "--run-dir", str(run_dir), "--config", str(config_file), "--quiet"]


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory, fast_config_file) -> Path:
    run_dir = tmp_path_factory.mktemp("cli-reference")
    done = run_cli(*train_cmd(run_dir, fast_config_file))
    assert done.returncode == 0, done.stderr
    return final_checkpoint(run_dir, FAST["total_steps"])


@pytest.mark.parametrize("faults", [
    ["step@1111"],                                   # mid-episode, between saves
    ["save:files-written@1600"],                     # files written, not committed
    ["save:committed@1600"],                         # committed, pointer not updated
    ["save:pointer-temp@1600"],                      # pointer half-way
    ["save:pointer-updated@800", "step@1700", "save:files-written@2400"],  # killed 3 times
])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, fast_config_file, cli_reference,
                                                   faults):
    cmd = train_cmd(tmp_path, fast_config_file)
    for fault in faults:
        killed = run_cli(*cmd, env_extra={"CKPTLAB_FAULT": fault})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert f"injected SIGKILL at {fault}" in killed.stderr
    resumed = run_cli(*cmd)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout
    final = final_checkpoint(tmp_path, FAST["total_steps"])
    assert file_hashes(final) == file_hashes(cli_reference)
    assert_same_state(cli_reference, final)
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()
                 if p.name.startswith((".tmp-", ".trash-", ".replaced-"))]
    assert leftovers == []


def test_external_sigkill_at_an_unplanned_moment(tmp_path, fast_config_file, cli_reference):
    """Kill from outside, while training is running, with no cooperation from the process."""
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_FAULT"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "ckptlab", *train_cmd(tmp_path, fast_config_file)]
    cmd.remove("--quiet")  # epoch lines tell us how far it got
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "saved checkpoint step_00000800" in line:
            break
    time.sleep(0.15)  # somewhere after step 800, inside training or the next save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(*train_cmd(tmp_path, fast_config_file))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(cli_reference, final_checkpoint(tmp_path, FAST["total_steps"]))


def test_cli_and_library_runs_agree(cli_reference, reference):
    """The CLI is a thin shell over Trainer: same config, same bits."""
    assert file_hashes(cli_reference) == file_hashes(reference)


def test_trainer_restore_reads_each_file_once(tmp_path, fast_config, monkeypatch):
    """Verified while read: restore() hashes and decodes in the same pass over each file."""
    import ckptlab.engine.format as format_module

    trainer = Trainer(fast_config, tmp_path / "run")
    trainer.train(until_step=800)
    trainer.close()
    opened: list[str] = []
    real_open = format_module.open_regular

    def counting_open(path, max_bytes):
        opened.append(Path(path).name)
        return real_open(path, max_bytes)

    monkeypatch.setattr(format_module, "open_regular", counting_open)
    resumed = Trainer(fast_config, tmp_path / "run")
    info = resumed.restore()
    monkeypatch.undo()
    assert info.step == 800 and resumed.progress.step == 800
    for name in ("tensors.safetensors", "state.json"):
        assert opened.count(name) == 1, (name, opened)
    resumed.train()  # and the run goes on, from the state that was read
    assert resumed.progress.step == fast_config.total_steps
    resumed.close()
