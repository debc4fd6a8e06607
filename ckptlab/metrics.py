"""The metric history of a run: per-update loss, per-episode return, per-epoch summary.

It is part of the checkpoint, so a resumed run's curves continue the interrupted run's, and the
whole history can be compared bit for bit with an uninterrupted run's. Wall-clock times are kept
out of it on purpose (they differ between any two runs); they live in the manifest.

Introduced in notebook ``03_loss_curves``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EpochSummary:
    """One row of the epoch-by-epoch training trace."""

    epoch: int
    end_step: int
    mean_loss: float | None          # None before learning starts
    mean_return: float | None        # of episodes finished during the epoch; None if none did
    episodes: int                    # episodes finished during the epoch
    epsilon: float                   # exploration rate at the end of the epoch
    eval_mean_return: float | None   # greedy evaluation, if one ran at the end of this epoch
    eval_success_rate: float | None  # fraction of greedy episodes reaching the time limit


class MetricHistory:
    """Append-only record of a run's learning signals."""

    def __init__(self) -> None:
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.episode_end_steps: list[int] = []
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.epochs: list[EpochSummary] = []
        self.evaluations: list[dict[str, Any]] = []

    def record_loss(self, step: int, loss: float) -> None:
        self.loss_steps.append(step)
        self.losses.append(loss)

    def record_episode(self, end_step: int, episode_return: float, length: int) -> None:
        self.episode_end_steps.append(end_step)
        self.episode_returns.append(episode_return)
        self.episode_lengths.append(length)

    def losses_between(self, first_step: int, last_step: int) -> list[float]:
        """Losses of updates made at steps in ``[first_step, last_step]``."""
        steps = np.asarray(self.loss_steps)
        lo, hi = np.searchsorted(steps, [first_step, last_step + 1])
        return self.losses[lo:hi]

    def returns_between(self, first_step: int, last_step: int) -> list[float]:
        """Returns of episodes that ended at steps in ``[first_step, last_step]``."""
        steps = np.asarray(self.episode_end_steps)
        lo, hi = np.searchsorted(steps, [first_step, last_step + 1])
        return self.episode_returns[lo:hi]

    def state_dict(self) -> dict[str, Any]:
        # Long per-step series go to safetensors as arrays; summaries stay readable JSON.
        return {
            "loss_steps": np.asarray(self.loss_steps, dtype=np.int64),
            "losses": np.asarray(self.losses, dtype=np.float64),
            "episode_end_steps": np.asarray(self.episode_end_steps, dtype=np.int64),
            "episode_returns": np.asarray(self.episode_returns, dtype=np.float64),
            "episode_lengths": np.asarray(self.episode_lengths, dtype=np.int64),
            "epochs": [asdict(e) for e in self.epochs],
            "evaluations": list(self.evaluations),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loss_steps = [int(s) for s in state["loss_steps"]]
        self.losses = [float(v) for v in state["losses"]]
        self.episode_end_steps = [int(s) for s in state["episode_end_steps"]]
        self.episode_returns = [float(v) for v in state["episode_returns"]]
        self.episode_lengths = [int(v) for v in state["episode_lengths"]]
        self.epochs = [EpochSummary(**e) for e in state["epochs"]]
        self.evaluations = [dict(e) for e in state["evaluations"]]
