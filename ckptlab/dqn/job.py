"""A training job as data, and the functions that run it: one process, a launcher, a rank.

``ckptlab train`` turns its flags into a :class:`TrainJob` and calls :func:`run_job`. The
processes the DQN run starts itself - each rank of ``--nproc N``, the runs of ``ckptlab demo``
and of lessons 4, 7 and 9 - run the same function through this layer's own entry point,
``python -m ckptlab.dqn JOB_JSON`` (:func:`job_command`, :func:`main`), never through the
command line.

Every way in prepares a resume the same way, before anything is created, so a refused resume
changes nothing: :func:`prepare_resume` finds the checkpoint (``--resume auto|never|PATH``),
builds the config (the checkpoint's, then ``--config``, then the flags), checks and plans the
resume, and says whether the run is already finished.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import (
    CHECKPOINTS_SUBDIR,
    AnyOf,
    CheckpointInfo,
    CkptlabError,
    EveryNSteps,
    EveryTSeconds,
    Final,
    IncompatibleCheckpointError,
    OnImprovement,
    OnStart,
    RetentionPolicy,
    SavePolicy,
)
from ..engine.console import EXIT_OK
from ..engine.location import StorePath, as_location
from ..engine.policies import retention_rules
from ..engine.sharded import is_sharded, sharded_load_error
from .config import DQNConfig, check_world_size
from .policies import EveryNEpisodes
from .resume import ResumePlan, checkpoint_config, find_resume_checkpoint, plan_resume
from .train import Trainer

# The DQN layer's process entry point (ckptlab/dqn/__main__.py), which every process the DQN
# run starts itself runs.
ENTRY_MODULE = "ckptlab.dqn"
# The settings a job may override in the config (the rest come from --config or the
# checkpoint).
CONFIG_OVERRIDES = ("env_id", "total_steps", "seed", "save_every_steps", "device")


@dataclass(frozen=True)
class TrainJob:
    """Everything ``ckptlab train`` is asked to do, as plain typed data (JSON round trip:
    :meth:`to_json`, :meth:`from_json`). The defaults are the command line's.

    Attributes:
        run_dir: the run directory (a local path or an ``s3://`` location).
        resume: ``"auto"``, ``"never"`` or a checkpoint / run directory to start from (see
            :func:`~ckptlab.dqn.resume.find_resume_checkpoint`).
        config_file: a JSON file of :class:`DQNConfig` fields (``--config``).
        env_id, total_steps, seed, save_every_steps, device: config fields given on their
            own; they win over ``config_file`` and the checkpoint's config.
        allow_config_change, rollback: see :func:`~ckptlab.dqn.resume.plan_resume`.
        save_every_episodes, save_every_seconds, save_on_start, save_on_improvement,
            min_delta: when to save besides every ``save_every_steps`` and at the end.
        async_save: write checkpoints in a background thread.
        keep_last, keep_top, keep_top_smooth, keep_every, disk_budget: what to keep (see
            :func:`~ckptlab.engine.policies.retention_rules`); the default keeps everything.
        quiet: no progress bar, no epoch lines.
        shard_model: several ranks shard the Q-network and Adam (FSDP2) instead of DDP.
        nproc, nnodes, max_restarts, rdzv_endpoint, rdzv_id: launch ranks under torch's
            elastic agent (``nproc`` per node); ``nproc`` unset and one node: one process.
    """

    run_dir: Path | StorePath
    resume: str = "auto"
    config_file: Path | None = None
    env_id: str | None = None
    total_steps: int | None = None
    seed: int | None = None
    save_every_steps: int | None = None
    device: str | None = None
    allow_config_change: bool = False
    rollback: bool = False
    save_every_episodes: int | None = None
    save_every_seconds: float | None = None
    save_on_start: bool = False
    save_on_improvement: bool = False
    min_delta: float = 0.0
    async_save: bool = False
    keep_last: int | None = None
    keep_top: int | None = None
    keep_top_smooth: int = 1
    keep_every: int | None = None
    disk_budget: int | None = None
    quiet: bool = False
    shard_model: bool = False
    nproc: int | None = None
    nnodes: int = 1
    max_restarts: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    # -- what the job asks for ------------------------------------------------------------
    @property
    def launches(self) -> bool:
        """Whether this job launches ranks (``--nproc`` or several nodes)."""
        return self.nproc is not None or self.nnodes > 1

    def rank_job(self) -> TrainJob:
        """The job each launched rank runs: this one without the launcher's options."""
        return dataclasses.replace(self, nproc=None, nnodes=1, max_restarts=0,
                                   rdzv_endpoint=None, rdzv_id=None)

    def config(self, checkpoint: CheckpointInfo | None) -> DQNConfig:
        """The config the run uses: the checkpoint's (when resuming), then ``config_file``,
        then the fields given on their own.

        Raises:
            CkptlabError: ``config_file`` is missing, not JSON, or names unknown fields.
        """
        overrides = read_config_file(self.config_file) if self.config_file else {}
        overrides.update({name: getattr(self, name) for name in CONFIG_OVERRIDES
                          if getattr(self, name) is not None})
        if checkpoint is None:
            return DQNConfig(**overrides)
        return dataclasses.replace(checkpoint_config(checkpoint), **overrides)

    def save_policy(self, config: DQNConfig) -> SavePolicy:
        """When to save: every ``config.save_every_steps`` steps, at the end, and whatever
        else the job asks for."""
        policies: list[SavePolicy] = [EveryNSteps(config.save_every_steps), Final()]
        if self.save_every_episodes:
            policies.append(EveryNEpisodes(self.save_every_episodes))
        if self.save_every_seconds:
            policies.append(EveryTSeconds(self.save_every_seconds))
        if self.save_on_start:
            policies.append(OnStart())
        if self.save_on_improvement:
            policies.append(OnImprovement("eval_return", "max", self.min_delta))
        return AnyOf(*policies)

    def retention(self) -> list[RetentionPolicy]:
        """What to keep (``disk_budget`` is the manager's own argument)."""
        return retention_rules(keep_last=self.keep_last, keep_top=self.keep_top,
                               keep_top_smooth=self.keep_top_smooth,
                               keep_every=self.keep_every)

    # -- as JSON (how a launcher tells its ranks, and a parent process its child) ----------
    def to_json(self) -> str:
        """This job as one line of JSON (paths and locations as text)."""
        # Not dataclasses.asdict: it deep-copies every value, and an s3:// run_dir holds its
        # store's client (connection pool, locks), which cannot be copied.
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        fields["run_dir"] = str(self.run_dir)
        fields["config_file"] = str(self.config_file) if self.config_file else None
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        """The job :meth:`to_json` wrote.

        Raises:
            CkptlabError: ``text`` is not such a job.
        """
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CkptlabError(f"the training job is not JSON ({exc})") from None
        known = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or "run_dir" not in fields or set(fields) - known:
            unknown = sorted(set(fields) - known) if isinstance(fields, dict) else []
            raise CkptlabError("the training job must be a JSON object of TrainJob fields "
                               "with a run_dir" + (f"; unknown: {', '.join(unknown)}"
                                                   if unknown else ""))
        fields["run_dir"] = as_location(fields["run_dir"])
        if fields.get("config_file") is not None:
            fields["config_file"] = Path(fields["config_file"])
        return cls(**fields)


def read_config_file(path: Path) -> dict[str, Any]:
    """The :class:`DQNConfig` fields a ``--config`` JSON file sets.

    Raises:
        CkptlabError: the file is missing, not JSON, or names unknown fields.
    """
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise CkptlabError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CkptlabError(f"--config {path} is not readable JSON ({exc})") from None
    known = {f.name for f in dataclasses.fields(DQNConfig)}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else []
        raise CkptlabError(f"--config {path} must be a JSON object of DQNConfig fields"
                           + (f"; unknown: {', '.join(extra)}" if extra else ""))
    return data


# --------------------------------------------------------------------------------------------
# Preparing a resume: one function for every way in
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedRun:
    """Where a job starts: the checkpoint it continues (``None``: a new run), the config it
    trains with, and the checked :class:`ResumePlan` (``None`` for a new run)."""

    checkpoint: CheckpointInfo | None
    config: DQNConfig
    plan: ResumePlan | None

    @property
    def finished(self) -> bool:
        """Whether the checkpoint already reached the config's ``total_steps``."""
        return self.checkpoint is not None and self.checkpoint.step >= self.config.total_steps

    def finished_line(self, run_dir: Path | StorePath) -> str:
        """What a finished run says instead of training."""
        info = self.checkpoint
        assert info is not None
        return (f"The run in {run_dir} is already finished: {info.name} is at step "
                f"{info.step} of {self.config.total_steps}. Nothing to do; pass --steps N "
                f"with N > {info.step} to train longer.")


def prepare_resume(job: TrainJob, *, world_size: int | None = None,
                   agree: Callable[[Callable[[], CheckpointInfo | None]],
                                   CheckpointInfo | None] | None = None) -> PreparedRun:
    """Find the checkpoint ``job`` continues, build its config, check and plan the resume.

    Nothing is created or changed, so a refused resume changes nothing.

    Args:
        job: the job.
        world_size: ``None`` for one process; else the number of ranks of a sharded run,
            which must split the run's state evenly and resume sharded checkpoints only.
        agree: how several ranks agree on the checkpoint (e.g.
            :meth:`ShardedCheckpointer.agree_on_checkpoint`: rank 0 finds it, every rank
            gets it); default: find it here.

    Raises:
        CkptlabError: the resume is refused (the request would mix two runs, the config
            does not fit, the resume would roll back without ``job.rollback``, a sharded
            checkpoint in one process or a single-process one on several ranks, a rank
            count that does not divide the state, or a rollback on several ranks).
    """
    def find() -> CheckpointInfo | None:
        return find_resume_checkpoint(job.run_dir, job.resume)

    info = agree(find) if agree is not None else find()
    if world_size is None and info is not None and is_sharded(info.manifest):  # [distributed]
        raise sharded_load_error(info.path, info.manifest)
    config = job.config(info)
    if world_size is not None:
        check_world_size(config, world_size)
    if info is None:
        return PreparedRun(None, config, None)
    plan = plan_resume(info, config, allow_config_change=job.allow_config_change,
                       run_checkpoints=job.run_dir / CHECKPOINTS_SUBDIR,
                       allow_rollback=job.rollback)
    if world_size is not None:
        if plan.rollback:
            raise CkptlabError(
                f"a distributed run cannot roll back yet: {info.path.parent} holds newer "
                f"checkpoints than {info.name} ({', '.join(plan.rollback)}). Move them out of "
                "that directory yourself (nothing is deleted by this refusal), then resume "
                "with the same command without --rollback")
        if not is_sharded(info.manifest):
            raise IncompatibleCheckpointError(
                f"{info.path} was written by a single process; resume it without --nproc, or "
                "start the distributed run in another --run-dir")
    return PreparedRun(info, config, plan)


# --------------------------------------------------------------------------------------------
# Running a job
# --------------------------------------------------------------------------------------------

def train_single(job: TrainJob) -> int:
    """Train (or resume) ``job`` in this one process, saying where it starts and ends;
    returns the exit status (130 after Ctrl-C outside the Trainer's own handling)."""
    prepared = prepare_resume(job)
    info, config, plan = prepared.checkpoint, prepared.config, prepared.plan
    if prepared.finished:
        print(prepared.finished_line(job.run_dir))
        return EXIT_OK
    say = None if job.quiet else _print_line
    trainer = Trainer(config, job.run_dir, retention=job.retention(),
                      disk_budget_bytes=job.disk_budget, save_policy=job.save_policy(config),
                      async_save=job.async_save, handle_signals=True,
                      progress_bar=not job.quiet, log=say)
    try:
        if info is not None and plan is not None:
            trainer.resume_from(plan)
            print(f"Resuming from {info.path} (step {info.step} of {config.total_steps}, "
                  f"epoch {trainer.progress.epoch}, episode {trainer.progress.episode}).",
                  flush=True)
        else:
            print(f"Starting a new run in {job.run_dir}: {config.env_id}, seed {config.seed}, "
                  f"{config.total_steps} steps, device {trainer.device}.", flush=True)
        try:
            result = trainer.train()
        except KeyboardInterrupt:
            print(f"\nInterrupted at step {trainer.progress.step}. Run the same command again "
                  "to resume from the last checkpoint.", file=sys.stderr)
            return 130
    finally:
        trainer.close()
    if result.interrupted_by:
        saved = result.last_checkpoint.path if result.last_checkpoint else "nothing"
        print(f"Received {result.interrupted_by} at step {result.final_step}: saved {saved} "
              "and stopped. Run the same command to resume.", flush=True)
        return EXIT_OK
    evaluation = result.last_evaluation
    score = (f"; last evaluation: mean return {evaluation.mean_return:.1f}, "
             f"{100 * evaluation.success_rate:.0f}% of episodes reached the time limit"
             if evaluation else "")
    where = f"; final checkpoint {result.last_checkpoint.path}" if result.last_checkpoint else ""
    print(f"Finished at step {result.final_step} in {result.train_seconds:.1f} s{score}{where}.")
    return EXIT_OK


def _print_line(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


# --------------------------------------------------------------------------------------------
# The DQN layer's own processes
# --------------------------------------------------------------------------------------------

def job_command(job: TrainJob, *, unbuffered: bool = False) -> list[str]:
    """The command that runs ``job`` in a new process: ``python -m ckptlab.dqn JOB_JSON``."""
    return [sys.executable, *(["-u"] if unbuffered else []), "-m", ENTRY_MODULE, job.to_json()]
