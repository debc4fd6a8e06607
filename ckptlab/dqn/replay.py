"""A fixed-size replay buffer whose contents and write position are part of the checkpoint.

Introduced in notebook ``05_what_goes_in_a_checkpoint`` (why the buffer must be saved).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..engine import IncompatibleCheckpointError


class ReplayBuffer:
    """Circular storage of transitions ``(obs, action, reward, next_obs, terminated)``.

    ``terminated`` is 1 only when the episode truly ended (the pole fell); a time-limit
    truncation keeps bootstrapping from the next state, as it should.

    Args:
        capacity: the number of transitions kept; the oldest is overwritten first.
        obs_dim: length of an observation vector.
    """

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity, self.obs_dim = int(capacity), int(obs_dim)
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.position = 0  # next slot to write
        self.size = 0      # filled slots

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
            terminated: bool) -> None:
        i = self.position
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.actions[i], self.rewards[i], self.terminated[i] = action, reward, terminated
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """A uniform random batch, as tensors on ``device``: obs, actions, rewards, next_obs,
        terminated."""
        idx = rng.integers(0, self.size, size=batch_size)
        arrays = (self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                  self.terminated[idx])
        return tuple(torch.from_numpy(a).to(device) for a in arrays)

    def state_dict(self) -> dict[str, Any]:
        n = self.size  # only the filled part is saved
        return {"capacity": self.capacity, "obs_dim": self.obs_dim, "position": self.position,
                "size": n, "obs": self.obs[:n], "next_obs": self.next_obs[:n],
                "actions": self.actions[:n], "rewards": self.rewards[:n],
                "terminated": self.terminated[:n]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or int(state["obs_dim"]) != self.obs_dim:
            raise IncompatibleCheckpointError(
                f"replay buffer in the checkpoint holds {state['capacity']} transitions of "
                f"{state['obs_dim']} features, this one {self.capacity} of {self.obs_dim}; "
                "use the checkpoint's buffer_capacity and environment")
        n = int(state["size"])
        for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
            data = np.asarray(state[name])
            if data.shape[0] != n:
                raise IncompatibleCheckpointError(
                    f"replay buffer field '{name}' has {data.shape[0]} rows, expected {n}")
            getattr(self, name)[:n] = data
            getattr(self, name)[n:] = 0
        self.size, self.position = n, int(state["position"])
