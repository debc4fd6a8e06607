"""ckptlab: checkpoint an RL agent's training so that a resumed run *is* the uninterrupted run.

The package behind the ckptlab teaching notebooks, usable on its own::

    from ckptlab import DQNConfig, Trainer

    trainer = Trainer(DQNConfig(total_steps=20_000), run_dir="runs/demo", keep_last=3)
    if trainer.checkpoints.committed():
        trainer.restore()          # newest valid checkpoint; corrupt ones are skipped
    trainer.train()

For any other ``state_dict()`` object, use :class:`CheckpointManager` directly.
"""

__version__ = "0.1.0"

from .agent import DQNAgent, LinearSchedule, QNetwork  # noqa: E402
from .checkpoint import (  # noqa: E402
    FORMAT_VERSION,
    CheckpointFallbackWarning,
    CheckpointInfo,
    CheckpointManager,
    Stateful,
    latest_valid_checkpoint,
    load_checkpoint_state,
    verify_checkpoint,
)
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
from .metrics import EpochSummary, MetricHistory  # noqa: E402
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
    "verify_checkpoint", "latest_valid_checkpoint", "load_checkpoint_state",
    "CkptlabError", "CheckpointCorruptError", "CheckpointNotFoundError", "ForeignFileError",
    "IncompatibleCheckpointError", "UnsupportedEnvironmentError", "UnsupportedFormatError",
]
