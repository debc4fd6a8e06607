"""``ckptlab train``: the flags become a :class:`~ckptlab.dqn.job.TrainJob`, which the DQN run
runs - in this process, as the launcher of ``--nproc N`` ranks, or as one rank when this
process is a worker started by ``torchrun --nproc-per-node N -m ckptlab train ...``.

Needs the ``rl`` extra (:mod:`ckptlab.cli.main` imports this module when the command runs).
"""

from __future__ import annotations

import argparse

from ..dqn.job import TrainJob
from ..dqn.runner import run_job


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The job ``ckptlab train``'s parsed flags ask for."""
    return TrainJob(
        run_dir=args.run_dir, resume=args.resume, config_file=args.config,
        env_id=args.env_id, total_steps=args.total_steps, seed=args.seed,
        save_every_steps=args.save_every_steps, device=args.device,
        allow_config_change=args.allow_config_change, rollback=args.rollback,
        save_every_episodes=args.save_every_episodes,
        save_every_seconds=args.save_every_seconds, save_on_start=args.save_on_start,
        save_on_improvement=args.save_on_improvement, min_delta=args.min_delta,
        async_save=args.async_save, keep_last=args.keep_last, keep_top=args.keep_top,
        keep_top_smooth=args.keep_top_smooth, keep_every=args.keep_every,
        disk_budget=args.disk_budget, quiet=args.quiet, shard_model=args.shard_model,
        nproc=args.nproc, nnodes=args.nnodes, max_restarts=args.max_restarts,
        rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) as the flags say; returns the exit status."""
    return run_job(job_from_args(args))
