"""ckptlab: checkpoint training so that a resumed run *is* the uninterrupted run.

Its layers, each a subpackage that imports only from the layers listed before it:

* :mod:`ckptlab.engine` - atomic, verified, pickle-free checkpoints of any ``state_dict()``
  objects: :class:`CheckpointManager`, save and retention policies, partial loads, export, the
  catalog. Needs only torch, numpy and safetensors (in a clone of ckptlab's repository,
  ``pip install -c requirements.txt .``).
* :mod:`ckptlab.dqn` - a complete DQN run (config, agent, envs, replay, RNG, metrics, the
  Trainer, resume) that resumes bit for bit. Needs the ``rl`` extra.
* :mod:`ckptlab.sb3` - exact resume for Stable-Baselines3 runs (``CkptlabCallback``). Needs the
  ``sb3`` extra.
* :mod:`ckptlab.lab` - what the lesson notebooks use (tables, plots, quizzes, exercise checks).
  Needs the ``lab`` extra.
* :mod:`ckptlab.cli` - the ``ckptlab`` command (``python -m ckptlab``).

Every module, what it holds and what to touch when changing it: ``docs/architecture.md``.

This module only re-exports. Engine names are imported eagerly; DQN names load on first use
(PEP 562), so ``from ckptlab import CheckpointManager`` works without gymnasium::

    from ckptlab import CheckpointManager, KeepLastN

    with CheckpointManager("runs/mnist/checkpoints", retention=[KeepLastN(3)]) as manager:
        manager.register("model", model)
        manager.register("optimizer", optimizer)
        manager.restore_latest()          # None on a fresh run
        ...
        manager.save(step, metrics={"val_acc": acc})

The DQN run::

    from ckptlab import DQNConfig, Trainer

    with Trainer(DQNConfig(total_steps=20_000), run_dir="runs/demo", keep_last=3) as trainer:
        if trainer.checkpoints.committed():
            trainer.restore()      # newest valid checkpoint; corrupt ones are skipped
        trainer.train()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .engine import (
    FORMAT_VERSION,
    AnyOf,
    BestBy,
    Catalog,
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointInfo,
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointWriteError,
    CkptlabError,
    EveryNSteps,
    EveryTSeconds,
    Final,
    ForeignFileError,
    GlobalRNG,
    Hybrid,
    IncompatibleCheckpointError,
    KeepEveryKSteps,
    KeepEveryTSeconds,
    KeepLastN,
    KeepTopK,
    MissingExtraError,
    OnImprovement,
    OnStart,
    RollbackRequiredError,
    RunLockedError,
    Stateful,
    UnsupportedFormatError,
    compare_checkpoints,
    export_checkpoint,
    latest_valid_checkpoint,
    load_checkpoint_state,
    load_components,
    load_parameters,
    read_decision_log,
    seed_global_generators,
    verify_checkpoint,
)
from .engine.version import __version__

# Names of the DQN run, imported on first use: the engine must work without its extra.
_LAZY = {name: "ckptlab.dqn" for name in (
    "DQNAgent", "LinearSchedule", "QNetwork", "ReplayBuffer", "RNGStates", "seed_everything",
    "DQNConfig", "diff_configs", "Trainer", "TrainProgress", "TrainResult", "EnvRunner",
    "Evaluation", "GreedyEvaluator", "make_env", "capture_env_state", "restore_env_state",
    "EpochSummary", "MetricHistory", "UnsupportedEnvironmentError", "EveryNEpisodes",
    "UnsavedRunWarning")}
# Stable-Baselines3 (the sb3 extra): reachable as ckptlab.CkptlabCallback, but left out of
# __all__ so that `from ckptlab import *` never needs stable-baselines3.
_LAZY.update({name: "ckptlab.sb3" for name in ("CkptlabCallback", "UnsupportedRunError")})
if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs (never run)
    from .dqn import (
        DQNAgent,
        DQNConfig,
        EnvRunner,
        EpochSummary,
        Evaluation,
        EveryNEpisodes,
        GreedyEvaluator,
        LinearSchedule,
        MetricHistory,
        QNetwork,
        ReplayBuffer,
        RNGStates,
        Trainer,
        TrainProgress,
        TrainResult,
        UnsavedRunWarning,
        UnsupportedEnvironmentError,
        capture_env_state,
        diff_configs,
        make_env,
        restore_env_state,
        seed_everything,
    )
    from .sb3 import CkptlabCallback as CkptlabCallback  # (kept out of __all__)
    from .sb3 import UnsupportedRunError as UnsupportedRunError
# Which extra each optional layer needs, and what it installs.
_EXTRAS = {"ckptlab.dqn": ("rl", "gymnasium, tqdm"),
           "ckptlab.sb3": ("sb3", "stable-baselines3"),
           "ckptlab.lab": ("lab", "JupyterLab, ipywidgets, matplotlib, nbval, papermill")}


def install_command(extra: str) -> str:
    """The command that installs ``extra`` with the tested versions: the README's, run in the
    top folder of a clone of ckptlab's repository (ckptlab is not on a public index, and
    requirements.txt holds the pins, torch's included)."""
    return f'pip install -c requirements.txt ".[{extra}]"'


def install_advice(extra: str, libraries: str) -> str:
    """How a missing-extra message ends: which extra, what it installs, where to run what."""
    return (f"install the '{extra}' extra ({libraries}) by running, in the top folder of a "
            f"clone of ckptlab's repository (see the README): {install_command(extra)}")


def missing_extra_error(exc: ModuleNotFoundError, layer: str,
                        needed_by: str) -> MissingExtraError | None:
    """The :class:`MissingExtraError` to raise for ``exc``, met while importing or running
    ``layer`` (``ckptlab.dqn``, ``ckptlab.sb3``, ``ckptlab.lab`` or a module inside one) for
    ``needed_by``: its one-line message says what needs the missing library, which extra to
    install and how. ``None`` when no extra would help (ckptlab itself is missing a module:
    a bug, to be raised as it is)."""
    missing = (exc.name or "").split(".")[0]
    layer = ".".join(layer.split(".")[:2])
    if not missing or missing == "ckptlab" or layer not in _EXTRAS:
        return None
    extra, libraries = _EXTRAS[layer]
    return MissingExtraError(
        f"{needed_by} needs {missing}, which is not installed: "
        f"{install_advice(extra, libraries)}", name=missing)


def import_layer(module: str, needed_by: str | None = None) -> Any:
    """Import ``ckptlab.dqn``, ``ckptlab.sb3`` or ``ckptlab.lab`` (or a module inside one).

    If a library of its extra is missing, raise :class:`MissingExtraError` (an ``ImportError``)
    whose one-line message says what needs it, which extra to install and how.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        error = missing_extra_error(exc, module, needed_by or module)
        if error is None:
            raise  # a bug in ckptlab itself, not an extra to install
        raise error from None


def __getattr__(name: str) -> Any:  # PEP 562: the DQN run's names, loaded when first used
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptlab' has no attribute {name!r}")
    value = getattr(import_layer(module, needed_by=f"ckptlab.{name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "FORMAT_VERSION",
    "DQNAgent", "LinearSchedule", "QNetwork", "ReplayBuffer", "RNGStates", "seed_everything",
    "DQNConfig", "diff_configs", "Trainer", "TrainProgress", "TrainResult", "UnsavedRunWarning",
    "EnvRunner", "Evaluation", "GreedyEvaluator", "make_env", "capture_env_state",
    "restore_env_state", "EpochSummary", "MetricHistory",
    "CheckpointManager", "CheckpointInfo", "CheckpointFallbackWarning", "Stateful",
    "GlobalRNG", "seed_global_generators",
    "verify_checkpoint", "latest_valid_checkpoint", "load_checkpoint_state", "read_decision_log",
    "compare_checkpoints", "Catalog", "export_checkpoint", "load_components", "load_parameters",
    "AnyOf", "EveryNSteps", "EveryNEpisodes", "EveryTSeconds", "OnStart", "OnImprovement",
    "Hybrid", "Final", "KeepLastN", "KeepTopK", "KeepEveryKSteps", "KeepEveryTSeconds", "BestBy",
    "CheckpointWriteError", "RunLockedError", "RollbackRequiredError",
    "CkptlabError", "MissingExtraError", "CheckpointCorruptError", "CheckpointNotFoundError",
    "ForeignFileError",
    "IncompatibleCheckpointError", "UnsupportedEnvironmentError", "UnsupportedFormatError",
]
