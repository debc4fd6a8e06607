"""The DQN run: a complete RL training run whose checkpoints resume it exactly.

Built on :mod:`ckptlab.engine`; needs the ``rl`` extra (gymnasium, tqdm; in a clone of
ckptlab's repository, ``pip install -c requirements.txt ".[rl]"``).

Its modules, one line each, are in the module map of docs/architecture.md (the one list;
``tests/test_module_map.py`` keeps it true).
"""

from .agent import DQNAgent, LinearSchedule, QNetwork, resolve_device
from .config import ConfigChange, DQNConfig, diff_configs
from .envs import (
    EnvRunner,
    Evaluation,
    GreedyEvaluator,
    UnsupportedEnvironmentError,
    capture_env_state,
    make_env,
    restore_env_state,
)
from .metrics import EpochSummary, MetricHistory
from .policies import EPISODE_END, EPOCH_END, EveryNEpisodes
from .replay import ReplayBuffer
from .resume import (
    ResumePlan,
    check_config_compatible,
    checkpoint_config,
    find_resume_checkpoint,
    plan_resume,
)
from .rng import RNGStates, seed_everything
from .train import Trainer, TrainProgress, TrainResult, UnsavedRunWarning, format_epoch

__all__ = [
    "DQNAgent", "LinearSchedule", "QNetwork", "resolve_device", "ConfigChange", "DQNConfig",
    "diff_configs", "EnvRunner", "Evaluation", "GreedyEvaluator", "UnsupportedEnvironmentError",
    "capture_env_state", "make_env", "restore_env_state", "EpochSummary", "MetricHistory",
    "ReplayBuffer", "EveryNEpisodes", "EPISODE_END", "EPOCH_END", "ResumePlan",
    "check_config_compatible", "checkpoint_config",
    "find_resume_checkpoint", "plan_resume", "RNGStates", "seed_everything", "Trainer",
    "TrainProgress", "TrainResult", "UnsavedRunWarning", "format_epoch",
]
