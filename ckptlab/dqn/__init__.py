"""The DQN run: a complete RL training run whose checkpoints resume it exactly.

Built on :mod:`ckptlab.engine`; needs the ``rl`` extra (``pip install "ckptlab[rl]"``:
gymnasium, tqdm).

Modules:
    config   the hyperparameters (a documented dataclass) and what changing each one means
    agent    the Q-network, the DQN update and the exploration schedule
    envs     gymnasium environments, snapshotted mid-episode; greedy evaluation
    replay   the replay buffer
    rng      every random generator the run uses, captured and restored
    metrics  losses, returns and per-epoch summaries
    train    the Trainer: the loop, its save policy, graceful stop on SIGTERM/SIGINT
    resume   where a run resumes from, the config compatibility check, the lineage record
    job      a training job as data (what ``ckptlab train`` asks for) and the functions that
             run it: one process, the ``--nproc`` launcher, a rank; ``python -m ckptlab.dqn``
    distributed  data-parallel ranks (DDP or FSDP2) with sharded checkpoints
    demo     kill a real training process, resume it, compare with an uninterrupted run
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
