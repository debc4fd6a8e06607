"""The headless demonstration: kill a real training process, resume it, compare bit for bit.

``python -m ckptlab demo`` trains one run without interruption and the same configuration in a
separate process that is killed with SIGKILL mid-run (mid-episode, between checkpoints), then
resumes it with the same command and compares the two final checkpoints component by
component. Notebook ``04_interrupt_and_resume`` tells the same story with plots.

Each run is the job ``ckptlab train --run-dir RUN --config RUN/config.json --quiet`` runs,
in a process of its own (``python -m ckptlab.dqn JOB_JSON``, :mod:`ckptlab.dqn.job`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..engine import (
    CHECKPOINTS_SUBDIR,
    CheckpointManager,
    CkptlabError,
    ComponentComparison,
    checkpoint_dir_name,
    checkpoint_step,
    compare_checkpoints,
)
from ..engine.faults import ENV_VAR
from .config import DQNConfig
from .job import TrainJob, job_command


@dataclass
class InterruptedRun:
    """What happened to a run that was killed and resumed."""

    run_dir: Path
    killed_at_step: int
    resumed_from_step: int
    final_checkpoint: Path

    @property
    def steps_redone(self) -> int:
        """Steps between the last checkpoint and the kill, trained twice."""
        return self.killed_at_step - self.resumed_from_step


def _start(job: TrainJob, fault: str | None = None) -> subprocess.Popen[str]:
    """Run ``job`` in a new process (this ckptlab, whatever the working directory)."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if fault:
        env[ENV_VAR] = fault
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent,
                                                      env.get("PYTHONPATH")]))
    return subprocess.Popen(job_command(job), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate()
    return proc.returncode, err


def _train_job(config: DQNConfig, run_dir: Path) -> TrainJob:
    """The job of ``ckptlab train --run-dir RUN_DIR --config RUN_DIR/config.json --quiet``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    config_file.write_text(json.dumps(config.to_dict(), indent=1))
    return TrainJob(run_dir, config_file=config_file, quiet=True)


def train_in_subprocess(config: DQNConfig, run_dir: Path,
                        fault: str | None = None) -> tuple[int, str, str]:
    """Run what ``python -m ckptlab train`` runs for ``config`` in ``run_dir``, in a new
    process; with ``fault``
    (``PHASE@STEP``, see :mod:`ckptlab.faults`) the process SIGKILLs itself there.

    Returns (exit status, stdout, stderr); -9 means it was killed by SIGKILL.
    Introduced in notebook ``07_failure_modes``.
    """
    proc = _start(_train_job(config, run_dir), fault=fault)
    out, err = proc.communicate()
    return proc.returncode, out, err


def run_killed_and_resumed(config: DQNConfig, run_dir: Path, kill_at_step: int
                           ) -> InterruptedRun:
    """Train ``config`` in a subprocess, SIGKILL it after ``kill_at_step``, then resume it.

    Introduced in notebook ``04_interrupt_and_resume``.
    """
    if not 0 < kill_at_step < config.total_steps:
        raise CkptlabError(f"kill_at_step must be between 1 and {config.total_steps - 1}")
    job = _train_job(config, run_dir)
    code, err = _finish(_start(job, fault=f"step@{kill_at_step}"))
    if code != -signal.SIGKILL:
        raise CkptlabError(f"the training process was expected to die by SIGKILL but exited "
                           f"with {code}: {err.strip()[-500:]}")
    manager = CheckpointManager(run_dir / CHECKPOINTS_SUBDIR, create=False)
    resumed_from = manager.latest_valid().step if manager.committed() else 0
    code, err = _finish(_start(job))
    if code != 0:
        raise CkptlabError(f"resuming failed: {err.strip()[-500:]}")
    final = run_dir / CHECKPOINTS_SUBDIR / checkpoint_dir_name(config.total_steps)
    return InterruptedRun(run_dir, kill_at_step, resumed_from, final)


def start_uninterrupted(config: DQNConfig, run_dir: Path) -> subprocess.Popen[str]:
    """Start training ``config`` start to finish in a subprocess (see :func:`finish_run`)."""
    return _start(_train_job(config, run_dir))


def finish_run(proc: subprocess.Popen[str], config: DQNConfig, run_dir: Path) -> Path:
    """Wait for a run started by :func:`start_uninterrupted`; return its final checkpoint."""
    code, err = _finish(proc)
    if code != 0:
        raise CkptlabError(f"training failed: {err.strip()[-500:]}")
    return run_dir / CHECKPOINTS_SUBDIR / checkpoint_dir_name(config.total_steps)


def stop_gracefully(config: DQNConfig, run_dir: Path, after_epoch: int) -> tuple[int, str]:
    """Train in a subprocess and send it SIGTERM once epoch ``after_epoch`` has finished.

    Returns the step at which the process saved and stopped, and its message.
    Introduced in notebook ``04_interrupt_and_resume``.
    """
    # not quiet: the epoch lines tell us how far it got
    proc = _start(dataclasses.replace(_train_job(config, run_dir), quiet=False))
    assert proc.stdout is not None
    marker = f"epoch {after_epoch:3d}"
    for line in proc.stdout:
        if line.startswith(marker):
            proc.send_signal(signal.SIGTERM)
            break
    message = ""
    for line in proc.stdout:
        if line.startswith("Received SIGTERM"):
            message = line.strip()
    code, err = _finish(proc)
    if code != 0 or not message:
        raise CkptlabError(f"the graceful stop did not happen (exit {code}): "
                           f"{err.strip()[-300:]}")
    return int(message.split("at step ")[1].split(":")[0]), message


@dataclass
class LostWork:
    """One row of the save-interval experiment."""

    save_every: int
    last_checkpoint_step: int
    lost_steps: int
    saves: int
    save_seconds: float
    train_seconds: float

    @property
    def overhead(self) -> float:
        """Share of training time spent saving."""
        return self.save_seconds / self.train_seconds


def lost_work_by_interval(config: DQNConfig, intervals: list[int], kill_at_step: int,
                          directory: Path) -> list[LostWork]:
    """For each save interval: train until ``kill_at_step`` (where a crash would strike),
    then measure what is on disk: the work a crash would lose, and what saving cost.

    Introduced in notebook ``04_interrupt_and_resume``.
    """
    from .train import Trainer

    rows = []
    for every in intervals:
        cfg = dataclasses.replace(config, save_every_steps=every)
        with Trainer(cfg, directory / f"every-{every}") as trainer:
            result = trainer.train(until_step=kill_at_step)
            committed = trainer.checkpoints.committed() if trainer.checkpoints else []
            last = checkpoint_step(committed[-1]) if committed else 0
        rows.append(LostWork(every, last, kill_at_step - last, result.saves,
                             result.save_seconds, result.train_seconds))
    return rows


def format_comparison(rows: list[ComponentComparison]) -> str:
    """A small table: component, leaves compared, identical or what differs."""
    lines = [f"{'component':15s} {'values':>7s}  result"]
    for row in rows:
        verdict = "identical" if row.identical else (
            f"DIFFERENT ({len(row.differing)} values, max |diff| {row.max_abs_diff:.3g}; "
            f"first: {row.differing[0]})")
        lines.append(f"{row.name:15s} {row.leaves:7d}  {verdict}")
    return "\n".join(lines)


def main(run_dir: Path | None, total_steps: int, kill_at_step: int, seed: int) -> int:
    """Run the demonstration; return 0 when the resumed run is bit-for-bit identical."""
    config = DQNConfig(total_steps=total_steps, seed=seed, save_every_steps=2_000)
    with tempfile.TemporaryDirectory(prefix="ckptlab-demo-") as tmp:
        root = run_dir if run_dir is not None else Path(tmp)
        print(f"Training {config.total_steps} steps of {config.env_id} (seed {seed}) twice, "
              f"saving every {config.save_every_steps} steps.", flush=True)
        # Both runs train at the same time, one process per core; each is single-threaded
        # and deterministic, so running them side by side changes no bits.
        proc = start_uninterrupted(config, root / "uninterrupted")
        run = run_killed_and_resumed(config, root / "interrupted", kill_at_step)
        reference = finish_run(proc, config, root / "uninterrupted")
        print("  uninterrupted run: finished", flush=True)
        print(f"  interrupted run: killed with SIGKILL after step {run.killed_at_step}, "
              f"resumed from the checkpoint at step {run.resumed_from_step} "
              f"({run.steps_redone} steps trained again), finished", flush=True)
        rows = compare_checkpoints(reference, run.final_checkpoint)
        print("\nFinal state, resumed run vs uninterrupted run:")
        print(format_comparison(rows))
        same = all(r.identical for r in rows)
        print("\nResult: the resumed run is " + (
            "bit-for-bit identical to the uninterrupted run." if same else
            "NOT identical to the uninterrupted run."))
        if run_dir is not None:
            print(f"Runs kept in {run_dir}.")
        return 0 if same else 1
