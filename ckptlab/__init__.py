"""ckptlab: checkpoint an RL agent's training so that a resumed run *is* the uninterrupted run.

The package behind the ckptlab teaching notebooks, usable on its own::

    from ckptlab import DQNConfig, Trainer

    with Trainer(DQNConfig(total_steps=20_000), run_dir="runs/demo", keep_last=3) as trainer:
        if trainer.checkpoints.committed():
            trainer.restore()      # newest valid checkpoint; corrupt ones are skipped
        trainer.train()

For any other ``state_dict()`` object, use :class:`CheckpointManager` directly.
"""

__version__ = "0.1.0"

from .agent import DQNAgent, LinearSchedule, QNetwork  # noqa: E402
from .catalog import Catalog  # noqa: E402
from .checkpoint import (  # noqa: E402
    FORMAT_VERSION,
    CheckpointFallbackWarning,
    CheckpointInfo,
    CheckpointManager,
    CheckpointWriteError,
    Stateful,
    latest_valid_checkpoint,
    load_checkpoint_state,
    read_decision_log,
    verify_checkpoint,
)
from .compare import compare_checkpoints  # noqa: E402
from .config import DQNConfig, diff_configs  # noqa: E402
from .envs import EnvRunner, Evaluation, GreedyEvaluator, capture_env_state, make_env, \
    restore_env_state  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CkptlabError,
    ForeignFileError,
    IncompatibleCheckpointError,
    UnsupportedEnvironmentError,
    UnsupportedFormatError,
)
from .lock import RunLockedError  # noqa: E402
from .metrics import EpochSummary, MetricHistory  # noqa: E402
from .partial import export_checkpoint, load_components, load_parameters  # noqa: E402
from .policies import (  # noqa: E402
    AnyOf,
    BestBy,
    EveryNEpisodes,
    EveryNSteps,
    EveryTSeconds,
    Final,
    Hybrid,
    KeepEveryKSteps,
    KeepLastN,
    KeepTopK,
    OnImprovement,
    OnStart,
)
from .replay import ReplayBuffer  # noqa: E402
from .rng import RNGStates, seed_everything  # noqa: E402
from .train import TrainProgress, Trainer, TrainResult  # noqa: E402

__all__ = [
    "__version__", "FORMAT_VERSION",
    "DQNAgent", "LinearSchedule", "QNetwork", "ReplayBuffer", "RNGStates", "seed_everything",
    "DQNConfig", "diff_configs", "Trainer", "TrainProgress", "TrainResult",
    "EnvRunner", "Evaluation", "GreedyEvaluator", "make_env", "capture_env_state",
    "restore_env_state", "EpochSummary", "MetricHistory",
    "CheckpointManager", "CheckpointInfo", "CheckpointFallbackWarning", "Stateful",
    "verify_checkpoint", "latest_valid_checkpoint", "load_checkpoint_state", "read_decision_log",
    "compare_checkpoints", "Catalog", "export_checkpoint", "load_components", "load_parameters",
    "AnyOf", "EveryNSteps", "EveryNEpisodes", "EveryTSeconds", "OnStart", "OnImprovement",
    "Hybrid", "Final", "KeepLastN", "KeepTopK", "KeepEveryKSteps", "BestBy",
    "CheckpointWriteError", "RunLockedError",
    "CkptlabError", "CheckpointCorruptError", "CheckpointNotFoundError", "ForeignFileError",
    "IncompatibleCheckpointError", "UnsupportedEnvironmentError", "UnsupportedFormatError",
]
