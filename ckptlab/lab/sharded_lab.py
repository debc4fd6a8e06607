"""What lesson 9 draws: a killed-and-restarted 2-rank run over the uninterrupted one, and the
same checkpoint resharded onto one rank.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..engine.distributed import read_sharded_state
from .figures import ROLE, caption, fmt
from .lessons import smooth

# (panel label, x key, y key) of the metrics a DQN rank records
_SERIES = (("loss (moving average)", "loss_steps", "losses"),
           ("episode return (rank 0)", "episode_end_steps", "episode_returns"))
_LOSS_WINDOW = 20


def rank0_metrics(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Rank 0's metrics component (losses, episode returns and the steps they belong to) from
    a sharded checkpoint, verified on read."""
    return read_sharded_state(checkpoint)[1]["rank_00000"]["metrics"]


def _series(metrics: Mapping[str, Any], key: str) -> np.ndarray:
    values = np.asarray(metrics[key], dtype=float)
    return smooth(values, _LOSS_WINDOW) if key == "losses" else values


def restart_figure(reference: Mapping[str, Any], restarted: Mapping[str, Any],
                   kill_step: int) -> tuple[Any, dict[str, float]]:
    """Loss and return of the restarted run drawn over the uninterrupted one, with the kill
    marked and their difference beside each.

    Returns the figure and the largest absolute difference of each series (``losses``,
    ``episode_returns``), measured on the curves drawn; the series must be of equal length.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1]})
    differences: dict[str, float] = {}
    for row, (label, steps, key) in enumerate(_SERIES):
        ya, yb = _series(reference, key), _series(restarted, key)
        if ya.shape != yb.shape:
            raise ValueError(f"the runs recorded a different number of {key} "
                             f"({len(ya)} and {len(yb)}): they cannot be compared point by point")
        axes[row, 0].plot(reference[steps], ya, color=ROLE["reference"], lw=4,
                          label="uninterrupted")
        axes[row, 0].plot(restarted[steps], yb, color=ROLE["resumed"], lw=1.2, ls="--",
                          label="killed + restarted")
        axes[row, 0].axvline(kill_step, color=ROLE["event"], ls=":", label="rank killed")
        axes[row, 0].set_ylabel(label)
        axes[row, 1].plot(reference[steps], yb - ya, color="black")
        axes[row, 1].set_title("difference")
        differences[key] = float(np.max(np.abs(yb - ya))) if len(ya) else 0.0
    axes[0, 0].legend(loc="upper right")
    axes[1, 0].set_xlabel("step (one environment step on every rank)")
    fig.tight_layout()
    caption(fig, f"Rank 0's loss and episode return of the 2-rank job whose rank was SIGKILLed "
                 f"at the save of step {kill_step} and restarted, drawn over the uninterrupted "
                 f"job: restarted minus uninterrupted, max |difference| = "
                 f"{fmt(max(differences.values(), default=0.0))} over "
                 f"{len(reference['losses'])} losses and {len(reference['episode_returns'])} "
                 "episode returns.")
    return fig, differences


def first_loss_difference(reference: Mapping[str, Any], other: Mapping[str, Any]) -> int | None:
    """The first step at which the two runs' recorded losses differ (``None``: never)."""
    return next((step for step, x, y in zip(reference["loss_steps"], reference["losses"],
                                            other["losses"]) if x != y), None)


def reshard_figure(reference: Mapping[str, Any], resharded: Mapping[str, Any],
                   reshard_step: int) -> Any:
    """The loss of a run resumed on another number of ranks, over the original run's."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot(reference["loss_steps"], _series(reference, "losses"), color=ROLE["reference"],
            lw=4, label="2 ranks")
    ax.plot(resharded["loss_steps"], _series(resharded, "losses"), color=ROLE["discarded"],
            lw=1.2, ls="--", label="resharded onto 1 rank")
    ax.axvline(reshard_step, color="black", ls=":", label="reshard")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.legend()
    fig.tight_layout()
    first = first_loss_difference(reference, resharded)
    return caption(fig, f"Rank 0's loss of the 2-rank run and of the same checkpoint at step "
                        f"{reshard_step} resumed on 1 rank: identical up to the reshard, "
                        + (f"the first loss that differs is at step {first}." if first is not None
                           else "and no loss differs after it."))
