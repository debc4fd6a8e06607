"""Hyperparameters of a DQN training run, as one documented dataclass.

Every field says what it does and whether changing it on resume would change the results:

* ``"trajectory"`` fields decide what the agent does and learns; resuming with a different value
  is refused, because the resumed run could no longer equal the uninterrupted one.
* ``"numerics"`` fields (device, thread count) keep the algorithm the same but can change the
  last bits of floating-point results; a change is allowed and reported.
* ``"bookkeeping"`` fields (run length, cadences of saving and evaluation) change nothing the
  agent does; changing them is always allowed. Evaluation uses its own environments and seeds,
  so it never changes the course of training.

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine import CkptlabError, IncompatibleCheckpointError

Role = Literal["trajectory", "numerics", "bookkeeping"]


def _f(default: Any, role: Role, doc: str) -> Any:
    return field(default=default, metadata={"role": role, "doc": doc})


@dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of a DQN run (defaults solve CartPole-v1 in a few seconds on a CPU)."""

    env_id: str = _f("CartPole-v1", "trajectory",
                     "Gymnasium environment id; discrete actions, 1-D observation vector.")
    seed: int = _f(0, "trajectory",
                   "Seeds network init, exploration, replay sampling and the environment.")
    total_steps: int = _f(30_000, "bookkeeping",
                          "Environment steps to train for; extend it to train a finished run "
                          "longer.")
    steps_per_epoch: int = _f(1_000, "bookkeeping",
                              "Environment steps per epoch (one row of the epoch summary).")
    hidden_sizes: tuple[int, ...] = _f((128, 128), "trajectory",
                                       "Widths of the Q-network's hidden layers.")
    learning_rate: float = _f(4e-3, "trajectory", "Adam learning rate.")
    gamma: float = _f(0.99, "trajectory", "Discount factor.")
    batch_size: int = _f(128, "trajectory", "Transitions per gradient update.")
    buffer_capacity: int = _f(50_000, "trajectory", "Replay buffer size in transitions.")
    learning_starts: int = _f(1_000, "trajectory",
                              "Steps of experience collected before the first update.")
    train_every: int = _f(4, "trajectory", "Environment steps between gradient updates.")
    target_update_every: int = _f(100, "trajectory",
                                  "Steps between copies of the online network into the target.")
    epsilon_start: float = _f(1.0, "trajectory", "Exploration rate at step 0.")
    epsilon_end: float = _f(0.04, "trajectory", "Exploration rate after the decay.")
    exploration_steps: int = _f(5_000, "trajectory",
                                "Steps over which epsilon decays linearly (absolute, so "
                                "extending total_steps keeps the schedule).")
    max_grad_norm: float = _f(10.0, "trajectory", "Gradient-norm clip per update.")
    double_dqn: bool = _f(True, "trajectory",
                          "Pick next actions with the online net, value them with the target.")
    eval_every_epochs: int = _f(1, "bookkeeping", "Greedy evaluation cadence, in epochs.")
    eval_episodes: int = _f(10, "bookkeeping", "Greedy episodes per evaluation.")
    save_every_steps: int = _f(5_000, "bookkeeping",
                               "Steps between checkpoints (0: only the final one).")
    device: str = _f("auto", "numerics", "'cpu', 'cuda', or 'auto' (CUDA when available).")
    num_threads: int = _f(1, "numerics",
                          "torch CPU threads; 1 is fastest for small nets and reproducible.")

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            if kind is tuple:
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value)
            elif kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            if not ok:
                problems.append(f"{f.name} must be {kind.__name__} (got {value!r})")
            elif kind is float and not math.isfinite(value):
                problems.append(f"{f.name} must be a finite number (got {value!r})")
        if problems:
            raise CkptlabError("invalid DQNConfig: " + "; ".join(problems))
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        for f in dataclasses.fields(self):  # 1 and 1.0 are the same learning rate
            if type(f.default) is float:
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        positive = ("total_steps", "steps_per_epoch", "batch_size", "buffer_capacity",
                    "train_every", "target_update_every", "eval_every_epochs", "eval_episodes",
                    "num_threads")
        problems += [f"{n} must be positive (got {getattr(self, n)})" for n in positive
                     if getattr(self, n) <= 0]
        non_negative = ("seed", "learning_starts", "exploration_steps", "save_every_steps")
        problems += [f"{n} must be >= 0 (got {getattr(self, n)})" for n in non_negative
                     if getattr(self, n) < 0]
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0:
            problems.append(f"hidden_sizes must be positive widths (got {self.hidden_sizes})")
        if not 0.0 < self.gamma <= 1.0:
            problems.append(f"gamma must be in (0, 1] (got {self.gamma})")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be positive (got {self.learning_rate})")
        for n in ("epsilon_start", "epsilon_end"):
            if not 0.0 <= getattr(self, n) <= 1.0:
                problems.append(f"{n} must be in [0, 1] (got {getattr(self, n)})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda' (got {self.device!r})")
        if self.seed >= 2**63:
            problems.append("seed must be below 2**63")
        if problems:
            raise CkptlabError("invalid DQNConfig: " + "; ".join(problems))

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict of every field."""
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DQNConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IncompatibleCheckpointError(
                f"config has unknown field(s) {', '.join(unknown)}; it was written by another "
                "version of ckptlab")
        return cls(**data)

    @staticmethod
    def role(name: str) -> Role:
        """Whether field ``name`` is trajectory, numerics or bookkeeping (see module docs)."""
        return _FIELDS[name].metadata["role"]


_FIELDS = {f.name: f for f in dataclasses.fields(DQNConfig)}


@dataclass(frozen=True)
class ConfigChange:
    """One field whose value differs between a checkpoint's config and the new one."""

    name: str
    old: Any
    new: Any
    role: Role

    def __str__(self) -> str:
        return f"{self.name}: {self.old!r} -> {self.new!r} ({self.role})"


def diff_configs(old: DQNConfig, new: DQNConfig) -> list[ConfigChange]:
    """List the fields that differ, in declaration order, each with its role."""
    return [ConfigChange(name, getattr(old, name), getattr(new, name), DQNConfig.role(name))
            for name in _FIELDS if getattr(old, name) != getattr(new, name)]


def check_world_size(config: DQNConfig, world_size: int) -> None:
    """Refuse a rank count the run's state cannot be split into (before anything starts).

    Raises:
        CkptlabError: ``buffer_capacity`` or ``batch_size`` is not divisible by the rank count.
    """
    bad = [f"{name} {getattr(config, name)}" for name in ("buffer_capacity", "batch_size")
           if getattr(config, name) % world_size]
    if bad:
        fits = [n for n in range(1, 9) if not config.buffer_capacity % n
                and not config.batch_size % n]
        raise CkptlabError(
            f"cannot split {' and '.join(bad)} evenly across {world_size} ranks (each rank "
            f"holds an equal share); use a rank count that divides both, e.g. "
            f"{', '.join(map(str, fits))} (nothing was started or changed)")
