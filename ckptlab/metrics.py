"""The metric history of a run: per-update loss, per-episode return, per-epoch summary.

It is part of the checkpoint, so a resumed run's curves continue the interrupted run's, and the
whole history can be compared bit for bit with an uninterrupted run's. Wall-clock times are kept
out of it on purpose (they differ between any two runs); they live in the manifest.

Introduced in notebook ``03_loss_curves``.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
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
    """Append-only record of a run's learning signals.

    Per-step series are kept in typed ``array.array`` buffers: appending is as cheap as a list,
    and numpy views them without copying, so saving a long history costs no conversion.
    """

    def __init__(self) -> None:
        self.loss_steps = array("q")
        self.losses = array("d")
        self.episode_end_steps = array("q")
        self.episode_returns = array("d")
        self.episode_lengths = array("q")
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
        lo, hi = np.searchsorted(_view(self.loss_steps, np.int64), [first_step, last_step + 1])
        return self.losses[lo:hi].tolist()

    def returns_between(self, first_step: int, last_step: int) -> list[float]:
        """Returns of episodes that ended at steps in ``[first_step, last_step]``."""
        lo, hi = np.searchsorted(_view(self.episode_end_steps, np.int64),
                                 [first_step, last_step + 1])
        return self.episode_returns[lo:hi].tolist()

    def state_dict(self) -> dict[str, Any]:
        # Long per-step series go to safetensors as arrays; summaries stay readable JSON.
        # Copies, so the saved state cannot change if training continues during the save.
        return {
            "loss_steps": _view(self.loss_steps, np.int64).copy(),
            "losses": _view(self.losses, np.float64).copy(),
            "episode_end_steps": _view(self.episode_end_steps, np.int64).copy(),
            "episode_returns": _view(self.episode_returns, np.float64).copy(),
            "episode_lengths": _view(self.episode_lengths, np.int64).copy(),
            "epochs": [dict(vars(e)) for e in self.epochs],  # asdict() deep-copies: slow
            "evaluations": list(self.evaluations),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def typed(code: str, values: Any) -> array:
            out = array(code)
            out.frombytes(np.ascontiguousarray(values, dtype=np.dtype(code)).tobytes())
            return out

        self.loss_steps = typed("q", state["loss_steps"])
        self.losses = typed("d", state["losses"])
        self.episode_end_steps = typed("q", state["episode_end_steps"])
        self.episode_returns = typed("d", state["episode_returns"])
        self.episode_lengths = typed("q", state["episode_lengths"])
        self.epochs = [EpochSummary(**e) for e in state["epochs"]]
        self.evaluations = [dict(e) for e in state["evaluations"]]


def _view(values: array, dtype: type) -> np.ndarray:
    """A zero-copy numpy view of an ``array.array`` (empty arrays included)."""
    return np.frombuffer(values, dtype=dtype) if len(values) else np.zeros(0, dtype=dtype)
