"""A DQN run's save, explored crash state by crash state, each resumed with ``--resume auto``.

The engine's explorer (:mod:`ckptlab.engine.crash_states`, :mod:`ckptlab.engine.crash_recovery`)
checks every write path with a small state. This module adds the run on top: a real DQN
training segment whose last step saves a checkpoint is recorded, and on every disk a power
cut could leave, the run is resumed the way ``python -m ckptlab train --resume auto`` does it
(:func:`find_resume_checkpoint` on the directory as the crash left it, :func:`plan_resume`, a
new :class:`Trainer` - which opens the directory and so removes leftovers and repairs the
pointers - and :meth:`Trainer.resume_from`), then trained on to its next save.

A DQN checkpoint's files span several pages (the generators' states alone are about 10 KB),
so disks that differ only in the bytes inside ``.tmp-``/``.trash-`` entries - which no reader
opens and the next writer removes whole - are resumed once
(:func:`~ckptlab.engine.crash_states.without_leftover_bytes`); every state is still
constructed, and the engine's explorations check those bytes with every disk.

Introduced in notebook ``07_failure_modes``; see ``docs/crash-consistency.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..engine.crash_recovery import (
    CheckContext,
    Facts,
    Workload,
    check_recovered,
    checker,
    context_for,
    record_workload,
)
from ..engine.crash_states import MODELS, Exploration, Fault, explore, without_leftover_bytes
from ..engine.errors import CkptlabError
from .config import DQNConfig
from .job import PreparedRun, TrainJob, prepare_resume
from .train import Trainer

TINY = DQNConfig(hidden_sizes=(8,), buffer_capacity=16, batch_size=4, learning_starts=8,
                 steps_per_epoch=20, total_steps=60, save_every_steps=20, eval_episodes=1,
                 exploration_steps=40, target_update_every=10, train_every=4)
"""A DQN run small enough to explore: checkpoints every 20 steps, 60 steps in all."""


def dqn_save_workload(config: DQNConfig = TINY) -> Workload:
    """The last training segment of a run (``save_every_steps`` steps ending in its final
    save), after two saves; recovery is ``--resume auto``, then training to the next save."""
    every = config.save_every_steps
    if config.total_steps < 3 * every:
        raise CkptlabError("the DQN crash workload needs total_steps >= 3 * save_every_steps")

    def prepare(workspace: Path) -> Trainer:
        trainer = Trainer(config, workspace / "run")
        trainer.train(until_step=config.total_steps - every)
        return trainer

    def operation(workspace: Path, trainer: Trainer) -> None:
        trainer.train(until_step=config.total_steps)

    def resume_auto(workspace: Path, raw: Facts, context: CheckContext
                    ) -> list[tuple[str, str]]:
        return resume_and_continue(workspace / "run", raw, context, config)

    return Workload("dqn-save", f"a DQN run's save at step {config.total_steps}", prepare,
                    operation, finish=lambda trainer: trainer.close(), allowed=("run/",),
                    recover=resume_auto)


def _prepare_resume_auto(run_dir: Path, config: DQNConfig) -> PreparedRun:
    """:func:`.job.prepare_resume` of ``ckptlab train --run-dir RUN_DIR --config FILE
    --resume auto``, the file holding ``config`` (written outside the crash state's folder)."""
    with tempfile.TemporaryDirectory(prefix="ckptlab-crash-config-") as folder:
        config_file = Path(folder) / "config.json"
        config_file.write_text(json.dumps(config.to_dict()))
        return prepare_resume(TrainJob(run_dir, resume="auto", config_file=config_file,
                                       quiet=True))


def resume_and_continue(run_dir: Path, raw: Facts, context: CheckContext,
                        config: DQNConfig) -> list[tuple[str, str]]:
    """``--resume auto`` on a crash state, then training on to the next save.

    Returns the invariants broken: the resume must pick the checkpoint a resume picks on the
    raw disk, load it without help, leave the directory recovered (:func:`check_recovered`),
    and the next save must be the newest valid checkpoint.
    """
    found: list[tuple[str, str]] = []
    # Train past the original end: total_steps is bookkeeping, allowed to change on resume.
    longer = dataclasses.replace(config, total_steps=config.total_steps + 2 *
                                 config.save_every_steps)
    try:  # the CLI's own preparation (find, config, plan), as `ckptlab train --resume auto`
        prepared = _prepare_resume_auto(run_dir, longer)
    except Exception as exc:  # reported, never swallowed: the CLI would stop here
        return [("recovery-failed", f"--resume auto failed: {type(exc).__name__}: {exc}")]
    info, plan = prepared.checkpoint, prepared.plan
    if (info.name if info is not None else None) != raw.newest:
        found.append(("resume-point", f"--resume auto picked "
                      f"{info.name if info else 'nothing'}, a resume picks {raw.newest}"))
    try:
        with Trainer(prepared.config, run_dir) as trainer:
            found += check_recovered(context.observe(run_dir.parent), raw, context)
            start = 0
            if plan is not None:
                trainer.resume_from(plan)
                start = trainer.progress.step
                if start != info.step:  # type: ignore[union-attr]
                    found.append(("recovery-failed", f"resumed at step {start}, the "
                                  f"checkpoint is at {info.step}"))  # type: ignore[union-attr]
            result = trainer.train(until_step=start + config.save_every_steps)
        newest = context.observe(run_dir.parent).newest
        expected = f"step_{result.final_step:08d}"
        if newest != expected:
            found.append(("cannot-continue", f"after training on to step {result.final_step}, "
                          f"a resume picks {newest}, expected {expected}"))
    except Exception as exc:
        found.append(("recovery-failed", f"{type(exc).__name__}: {exc}"))
    return found


def explore_dqn_save(model: str, *, config: DQNConfig = TINY, fault: Fault | None = None,
                     workdir: str | os.PathLike[str] | None = None) -> Exploration:
    """Record a DQN run's save and resume it with ``--resume auto`` on every crash state
    under ``model`` (one of :data:`~ckptlab.engine.crash_states.MODELS`)."""
    if model not in MODELS:
        raise CkptlabError(f"unknown persistence model {model!r}; use one of "
                           f"{', '.join(MODELS)}")
    workload = dqn_save_workload(config)
    if workdir is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        workdir = "/dev/shm"
    scratch = Path(tempfile.mkdtemp(prefix="ckptlab-crash-dqn-", dir=workdir))
    try:
        workspace = scratch / "workspace"
        workspace.mkdir()
        recording = record_workload(workload, workspace, fault)
        context = context_for(recording, workload)
        return explore(recording, model, checker(workload, context), operation=workload.name,
                       same_for_check=without_leftover_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
