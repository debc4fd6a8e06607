"""The metric history of a run: per-update loss, per-episode return, per-epoch summary.

It is part of the checkpoint, so a resumed run's curves continue the interrupted run's, and the
whole history can be compared bit for bit with an uninterrupted run's. ``None`` values of an
epoch summary (no loss yet, no episode finished) are stored as NaN. Wall-clock times are kept
out of it on purpose (they differ between any two runs); they live in the manifest.

Introduced in notebook ``03_loss_curves``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
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


_EPOCH_INTS = ("epoch", "end_step", "episodes")
_EPOCH_FLOATS = ("mean_loss", "mean_return", "epsilon", "eval_mean_return",
                 "eval_success_rate")
# Typed columns behind every series: (name, array.array type code, numpy dtype).
_COLUMNS = (
    ("loss_steps", "q", np.int64), ("losses", "d", np.float64),
    ("episode_end_steps", "q", np.int64), ("episode_returns", "d", np.float64),
    ("episode_lengths", "q", np.int64),
    *((f"epoch_{n}", "q", np.int64) for n in _EPOCH_INTS),
    *((f"epoch_{n}", "d", np.float64) for n in _EPOCH_FLOATS),  # NaN stands for None
    ("eval_step", "q", np.int64), ("eval_epoch", "q", np.int64),
    ("eval_episodes", "q", np.int64),            # episodes in each evaluation
    ("eval_returns", "d", np.float64),           # all evaluations' returns, concatenated
    ("eval_reached_time_limit", "B", np.uint8),  # likewise, 1 = survived to the time limit
)


class MetricHistory:
    """Append-only record of a run's learning signals.

    Every series is a typed ``array.array`` column: appending is as cheap as a list, numpy views
    it without copying, and saving costs one memory copy per column however long the run -
    no per-entry Python work, which keeps (async) saves cheap late in long runs. The epoch
    summaries and evaluations are also kept as objects for reading (:attr:`epochs`,
    :attr:`evaluations`).
    """

    def __init__(self) -> None:
        self._columns = {name: array(code) for name, code, _ in _COLUMNS}
        self.epochs: list[EpochSummary] = []
        self.evaluations: list[dict[str, Any]] = []

    def column(self, name: str) -> np.ndarray:
        """A read-only numpy view of one series (e.g. ``"losses"``, ``"episode_returns"``)."""
        dtype = next(d for n, _, d in _COLUMNS if n == name)
        view = _view(self._columns[name], dtype)
        view.flags.writeable = False
        return view

    @property
    def loss_steps(self) -> np.ndarray:
        return self.column("loss_steps")

    @property
    def losses(self) -> np.ndarray:
        return self.column("losses")

    @property
    def episode_end_steps(self) -> np.ndarray:
        return self.column("episode_end_steps")

    @property
    def episode_returns(self) -> np.ndarray:
        return self.column("episode_returns")

    @property
    def episode_lengths(self) -> np.ndarray:
        return self.column("episode_lengths")

    def record_loss(self, step: int, loss: float) -> None:
        self._columns["loss_steps"].append(step)
        self._columns["losses"].append(loss)

    def record_episode(self, end_step: int, episode_return: float, length: int) -> None:
        self._columns["episode_end_steps"].append(end_step)
        self._columns["episode_returns"].append(episode_return)
        self._columns["episode_lengths"].append(length)

    def record_epoch(self, summary: EpochSummary) -> None:
        self.epochs.append(summary)
        for name in _EPOCH_INTS:
            self._columns[f"epoch_{name}"].append(getattr(summary, name))
        for name in _EPOCH_FLOATS:
            value = getattr(summary, name)
            self._columns[f"epoch_{name}"].append(math.nan if value is None else value)

    def record_evaluation(self, step: int, epoch: int, returns: Sequence[float],
                          reached_time_limit: Sequence[bool]) -> dict[str, Any]:
        """Append one greedy evaluation; returns its record (as in :attr:`evaluations`)."""
        record = {"step": step, "epoch": epoch, "mean_return": float(np.mean(returns)),
                  "success_rate": float(np.mean(reached_time_limit)),
                  "returns": [float(r) for r in returns],
                  "reached_time_limit": [bool(r) for r in reached_time_limit]}
        self.evaluations.append(record)
        self._columns["eval_step"].append(step)
        self._columns["eval_epoch"].append(epoch)
        self._columns["eval_episodes"].append(len(returns))
        self._columns["eval_returns"].extend(record["returns"])
        self._columns["eval_reached_time_limit"].extend(map(int, record["reached_time_limit"]))
        return record

    def losses_between(self, first_step: int, last_step: int) -> list[float]:
        """Losses of updates made at steps in ``[first_step, last_step]``."""
        lo, hi = np.searchsorted(self.loss_steps, [first_step, last_step + 1])
        return self._columns["losses"][lo:hi].tolist()

    def returns_between(self, first_step: int, last_step: int) -> list[float]:
        """Returns of episodes that ended at steps in ``[first_step, last_step]``."""
        lo, hi = np.searchsorted(self.episode_end_steps, [first_step, last_step + 1])
        return self._columns["episode_returns"][lo:hi].tolist()

    def state_dict(self) -> dict[str, Any]:
        # Copies, so the saved state cannot change if training continues during a save.
        return {name: _view(self._columns[name], dtype).copy() for name, _, dtype in _COLUMNS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._columns = {name: array(code) for name, code, _ in _COLUMNS}
        self.epochs, self.evaluations = [], []
        for name, code, dtype in _COLUMNS:
            self._columns[name].frombytes(
                np.ascontiguousarray(state[name], dtype=dtype).tobytes())
        cols = {name: self._columns[name] for name, _, _ in _COLUMNS}
        for i in range(len(cols["epoch_epoch"])):
            floats = {n: cols[f"epoch_{n}"][i] for n in _EPOCH_FLOATS}
            self.epochs.append(EpochSummary(
                **{n: int(cols[f"epoch_{n}"][i]) for n in _EPOCH_INTS},
                **{n: (None if math.isnan(v) and n != "epsilon" else float(v))
                   for n, v in floats.items()}))
        offset = 0
        for i, count in enumerate(cols["eval_episodes"]):
            returns = cols["eval_returns"][offset:offset + count].tolist()
            reached = [bool(v) for v in cols["eval_reached_time_limit"][offset:offset + count]]
            offset += count
            self.evaluations.append({
                "step": int(cols["eval_step"][i]), "epoch": int(cols["eval_epoch"][i]),
                "mean_return": float(np.mean(returns)),
                "success_rate": float(np.mean(reached)), "returns": returns,
                "reached_time_limit": reached})


def _view(values: array, dtype: type) -> np.ndarray:
    """A zero-copy numpy view of an ``array.array`` (empty arrays included)."""
    return np.frombuffer(values, dtype=dtype) if len(values) else np.zeros(0, dtype=dtype)
