"""Resume, in one place: where a run continues from, whether it may, and the record it leaves.

Three questions are answered here and nowhere else:

1. **Where from?** :func:`find_resume_checkpoint` turns ``--resume auto|never|PATH`` and a run
   directory into the checkpoint to continue (the newest valid one, skipping corrupt ones).
2. **May it?** :func:`check_config_compatible` compares the checkpoint's config with the one
   the run will use. ``trajectory`` fields must match (or the change must be allowed
   explicitly); ``numerics`` changes warn; ``bookkeeping`` changes pass silently.
3. **What is recorded?** :func:`plan_resume` bundles the answers into a :class:`ResumePlan`,
   whose ``record`` goes into every later manifest (``resumed_from``) and whose ``lineage``
   names the parent checkpoint when the run continues another run's checkpoint in a new
   directory (the original is never touched).

The check runs once per resume: a training job (``ckptlab train``, each rank of ``--nproc``)
plans in :func:`ckptlab.dqn.job.prepare_resume` before it builds the Trainer (so a refused
resume creates nothing) and hands the plan to :meth:`Trainer.resume_from`;
:meth:`Trainer.restore` plans and resumes in one call.

Introduced in notebook ``04_interrupt_and_resume``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import (
    ABANDONED_SUBDIR,
    CHECKPOINTS_SUBDIR,
    CheckpointInfo,
    CkptlabError,
    IncompatibleCheckpointError,
    RollbackRequiredError,
    checkpoint_step,
    committed_checkpoints,
    latest_valid_checkpoint,
    verify_checkpoint,
)
from ..engine.location import StorePath, as_location
from .config import ConfigChange, DQNConfig, diff_configs


@dataclass(frozen=True)
class ResumePlan:
    """A checked decision to continue ``checkpoint`` with ``config``.

    Attributes:
        checkpoint: the verified checkpoint to load.
        config: the configuration the resumed run uses.
        changes: every field that differs from the checkpoint's config (already allowed).
        record: what later manifests store under ``resumed_from``.
        lineage: the parent run's record when continuing another run's checkpoint (a new
            lineage), or the checkpoint's own lineage when continuing in its own directory.
        rollback: the newer checkpoints of the same directory that resuming moves aside into
            ``abandoned/`` (an explicit rollback; empty otherwise).
    """

    checkpoint: CheckpointInfo
    config: DQNConfig
    changes: tuple[ConfigChange, ...]
    record: dict[str, Any]
    lineage: dict[str, Any] | None
    rollback: tuple[str, ...] = ()


def find_resume_checkpoint(run_dir: str | os.PathLike[str],
                           resume: str | os.PathLike[str] = "auto") -> CheckpointInfo | None:
    """The checkpoint a run in ``run_dir`` continues from, or ``None`` for a fresh start.

    Args:
        run_dir: the run directory (its checkpoints live in ``run_dir/checkpoints``).
        resume: ``"auto"`` (the run's own newest valid checkpoint, if any), ``"never"`` (a
            fresh run; refused if the directory already holds checkpoints), or a path to a
            checkpoint, a checkpoints directory or another run directory.

    Raises:
        CkptlabError: the request would mix two runs in one directory or overwrite a run;
            nothing is changed.
    """
    run_dir = as_location(run_dir)  # a local path, or an s3:// location
    if isinstance(run_dir, Path) and run_dir.exists() and not run_dir.is_dir():
        raise CkptlabError(f"--run-dir {run_dir} exists and is not a directory")
    own_dir = run_dir / CHECKPOINTS_SUBDIR
    has_own = bool(committed_checkpoints(own_dir))
    if resume == "never":
        if has_own:
            raise CkptlabError(
                f"{run_dir} already holds checkpoints; continue it with --resume auto or "
                "choose another --run-dir (nothing was changed)")
        return None
    if resume == "auto":
        return latest_valid_checkpoint(own_dir) if has_own else None
    info = latest_valid_checkpoint(resume)
    if has_own:
        refuse_mixing_runs(info, own_dir, advice="Choose an empty --run-dir")
    return info


def refuse_mixing_runs(info: CheckpointInfo, checkpoints_dir: Path | StorePath, *,
                       advice: str) -> None:
    """A run directory holds one run: another run's checkpoint ``info`` may start the run
    whose checkpoints go to ``checkpoints_dir`` only while it has none, or retention would
    delete the directory's own checkpoints under the other run's.

    Raises:
        CkptlabError: the resume would mix two runs; the message ends with ``advice``.
    """
    if (info.path.parent.resolve() != checkpoints_dir.resolve()
            and committed_checkpoints(checkpoints_dir)):
        raise CkptlabError(
            f"{checkpoints_dir.parent} already holds checkpoints of its own; resuming "
            f"{info.path} into it would mix two runs. {advice} (nothing was changed)")


def checkpoint_config(info: CheckpointInfo) -> DQNConfig:
    """The DQN configuration a checkpoint was trained with.

    Raises:
        IncompatibleCheckpointError: the checkpoint records none (not written by the Trainer).
    """
    if info.config is None:
        raise IncompatibleCheckpointError(
            f"{info.path} records no DQN config; it was not written by ckptlab's Trainer "
            "('python -m ckptlab train')")
    try:
        return DQNConfig.from_dict(info.config)
    except CkptlabError:
        raise
    except (TypeError, ValueError) as exc:  # a field of the wrong type
        raise IncompatibleCheckpointError(
            f"{info.path} records a DQN config this ckptlab cannot use ({exc})") from None


# Settings whose change no resume can honour: the checkpoint's state has their shape (the
# networks' layers, the buffer's arrays, the environment's state), so they are refused even
# with allow_config_change.
STRUCTURAL_FIELDS = frozenset({"env_id", "hidden_sizes", "buffer_capacity"})

# What a deliberate change of a field does on resume, where that is not what one would guess.
_CHANGE_EFFECTS = {
    "seed": "every random generator continues from its saved state, so training goes on "
            "exactly as before; only what is seeded afresh from here on (the evaluation "
            "episodes) uses the new seed",
}


def check_config_compatible(info: CheckpointInfo, config: DQNConfig,
                            allow_changes: bool = False) -> list[ConfigChange]:
    """Compare ``config`` with the checkpoint's; return the differences.

    Raises:
        IncompatibleCheckpointError: a ``trajectory`` field differs (the resumed run could not
            continue the original) and ``allow_changes`` is false. The message lists every
            difference as ``field: old -> new``.
    """
    changes = diff_configs(checkpoint_config(info), config)

    def refuse(differences: list[ConfigChange], why: str) -> IncompatibleCheckpointError:
        return IncompatibleCheckpointError(
            f"{info.path} was trained with a different configuration: "
            + "; ".join(str(c) for c in differences) + ". " + why)

    structural = [c for c in changes if c.name in STRUCTURAL_FIELDS]
    if structural:
        raise refuse(structural, "The saved networks, replay buffer or environment state "
                     "would not fit, not even as a deliberate branch: resume with the "
                     "checkpoint's values, or start a new run (nothing was changed)")
    blocking = [c for c in changes if c.role == "trajectory"]
    if blocking and not allow_changes:
        raise refuse(blocking, "These settings change what the agent learns, so the run would "
                     "no longer continue the original: resume with the checkpoint's values, "
                     "or pass --allow-config-change (allow_config_change=True) to branch off "
                     "deliberately")
    for change in changes:
        if change.role == "numerics":
            warnings.warn(f"resuming with {change}: results may differ in the last bits from "
                          "an uninterrupted run", stacklevel=3)
        elif change.name in _CHANGE_EFFECTS:
            warnings.warn(f"config changed on resume ({change}): "
                          f"{_CHANGE_EFFECTS[change.name]}", stacklevel=3)
        elif change.role == "trajectory":
            warnings.warn(f"config changed on resume ({change}): from here on this run "
                          "differs from its parent", stacklevel=3)
    return changes


def newer_checkpoints(info: CheckpointInfo) -> tuple[list[str], list[str]]:
    """The checkpoints of ``info``'s own directory with a higher step: ``(all, valid)``."""
    newer = [p for p in committed_checkpoints(info.path.parent)
             if checkpoint_step(p) > info.step]
    valid = []
    for path in newer:
        try:
            verify_checkpoint(path)
        except CkptlabError:
            continue
        valid.append(path.name)
    return [p.name for p in newer], valid


def plan_resume(info: CheckpointInfo, config: DQNConfig, *, allow_config_change: bool = False,
                run_checkpoints: str | os.PathLike[str] | None = None,
                allow_rollback: bool = False) -> ResumePlan:
    """Check that ``config`` may continue ``info`` and prepare what the resumed run records.

    Args:
        info: a verified checkpoint.
        config: the configuration the resumed run will use.
        allow_config_change: accept ``trajectory`` changes (a deliberate branch).
        run_checkpoints: the checkpoints directory the resumed run writes to; when it is not
            the checkpoint's own directory, the run starts a new lineage naming the parent.
        allow_rollback: continue an older checkpoint of the same directory although newer
            valid ones exist; they are moved aside into ``abandoned/`` when the run resumes
            (and logged), so ``latest`` and retention see one history.

    Raises:
        RollbackRequiredError: the resume would roll back over newer valid checkpoints and
            ``allow_rollback`` is false; nothing is changed.
    """
    changes = check_config_compatible(info, config, allow_config_change)
    record = {"path": str(info.path.resolve()), "step": info.step,
              "manifest_sha256": info.manifest.get("manifest_sha256"),
              "config_changes": [{"field": c.name, "old": c.old, "new": c.new, "role": c.role}
                                 for c in changes]}
    same_run = (run_checkpoints is not None
                and info.path.parent.resolve() == as_location(run_checkpoints).resolve())
    lineage = info.manifest.get("lineage") if same_run else {
        "parent": record, "parent_lineage": info.manifest.get("lineage")}
    rollback: tuple[str, ...] = ()
    if same_run:
        newer, valid = newer_checkpoints(info)
        if valid and not allow_rollback:
            raise RollbackRequiredError(
                f"{info.path.parent} holds newer valid checkpoints than {info.name} "
                f"({', '.join(valid)}); continuing {info.name} here would roll the run back. "
                "Pass --rollback (allow_rollback=True) to move them aside into "
                f"{ABANDONED_SUBDIR}/ and continue from {info.name}, or resume into a new "
                "--run-dir (nothing was changed)")
        if valid:  # an explicit rollback; unusable newer ones alone are a plain fallback
            rollback = tuple(newer)
    return ResumePlan(info, config, tuple(changes), record, lineage, rollback)
