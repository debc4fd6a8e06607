"""``ckptlab train``'s flags become a typed TrainJob, which the DQN run runs; the processes the
DQN run starts itself run that job through ``python -m ckptlab.dqn``, not the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab.cli import build_parser, main
from ckptlab.cli.train import job_from_args
from ckptlab.dqn.job import TrainJob, job_command, prepare_resume
from conftest import FAST, REPO

SMALL = {**FAST, "total_steps": 400, "save_every_steps": 200}
# Flags whose job field is named differently (the rest are named as their dest).
RENAMED = {"config": "config_file"}


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_train_flag_is_a_job_field_and_every_job_field_a_flag():
    dests = {RENAMED.get(a.dest, a.dest) for a in _train_parser()._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(TrainJob)}


def test_the_flags_reach_the_job_and_the_job_survives_json(tmp_path):
    args = build_parser().parse_args([
        "train", "--run-dir", str(tmp_path / "run"), "--config", "c.json", "--env", "Acrobot-v1",
        "--steps", "900", "--seed", "3", "--save-every", "300", "--save-every-episodes", "4",
        "--save-every-seconds", "2.5", "--save-on-start", "--save-on-improvement",
        "--min-delta", "0.5", "--async-save", "--keep-last", "2", "--keep-top", "1",
        "--keep-top-smooth", "3", "--keep-every", "600", "--disk-budget", "2MB",
        "--allow-config-change", "--device", "cpu", "--resume", "never", "--rollback",
        "--quiet", "--nproc", "2", "--max-restarts", "1", "--nnodes", "2",
        "--rdzv-endpoint", "h:1", "--rdzv-id", "j", "--shard-model"])
    job = job_from_args(args)
    assert job == TrainJob(
        tmp_path / "run", resume="never", config_file=Path("c.json"), env_id="Acrobot-v1",
        total_steps=900, seed=3, save_every_steps=300, device="cpu", allow_config_change=True,
        rollback=True, save_every_episodes=4, save_every_seconds=2.5, save_on_start=True,
        save_on_improvement=True, min_delta=0.5, async_save=True, keep_last=2, keep_top=1,
        keep_top_smooth=3, keep_every=600, disk_budget=2_000_000, quiet=True,
        shard_model=True, nproc=2, nnodes=2, max_restarts=1, rdzv_endpoint="h:1",
        rdzv_id="j")
    assert TrainJob.from_json(job.to_json()) == job
    rank = TrainJob.from_json(job.rank_job().to_json())
    assert not rank.launches and rank == dataclasses.replace(
        job, nproc=None, nnodes=1, max_restarts=0, rdzv_endpoint=None, rdzv_id=None)
    assert [type(r).__name__ for r in job.retention()] == ["KeepLastN", "KeepTopK",
                                                           "KeepEveryKSteps"]


def test_every_caller_prepares_a_resume_alike(tmp_path, capsys):
    """The single process and the launcher's check: the same checkpoint, config and plan, and
    the same 'already finished' line."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--config", str(config), "--quiet"]) == 0
    job = TrainJob(run, config_file=config)
    prepared = prepare_resume(job)
    assert prepared.checkpoint.name == "step_00000400" and prepared.finished
    assert prepared.config.total_steps == 400 and prepared.plan is not None
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == prepared.finished_line(run)
    longer = prepare_resume(dataclasses.replace(job, total_steps=600))
    assert not longer.finished and longer.plan.checkpoint == longer.checkpoint
    # On two ranks the same preparation refuses the single-process checkpoint, by name.
    with pytest.raises(Exception, match="was written by a single process; resume it without"):
        prepare_resume(dataclasses.replace(job, total_steps=600), world_size=2)


def test_another_runs_checkpoint_into_a_used_run_dir_is_one_line_and_changes_nothing(
        tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL))
    for name in ("a", "b"):
        assert main(["train", "--run-dir", str(tmp_path / name), "--config", str(config),
                     "--quiet"]) == 0
    before = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--run-dir", str(tmp_path / "b"), "--config", str(config),
                 "--resume", str(tmp_path / "a"), "--steps", "600"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'b'} already holds checkpoints of its own; resuming "
                   f"{tmp_path / 'a' / 'checkpoints' / 'step_00000400'} into it would mix two "
                   "runs. Choose an empty --run-dir (nothing was changed)"]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == before


def test_the_dqn_entry_point_runs_a_job_and_refuses_a_bad_one_in_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = job_command(TrainJob(tmp_path / "run", config_file=config, quiet=True))
    assert command[1:3] == ["-m", "ckptlab.dqn"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Starting a new run in {tmp_path / 'run'}: CartPole-v1")
    assert "Finished at step 400" in done.stdout
    assert (tmp_path / "run" / "checkpoints" / "step_00000400").is_dir()
    bad = subprocess.run([sys.executable, "-m", "ckptlab.dqn", '{"steps": 3}'],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "error: the training job must be a JSON object of TrainJob fields with a run_dir; "
        "unknown: steps"]
