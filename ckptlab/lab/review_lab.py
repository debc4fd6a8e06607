"""Lesson 8's picture of the whole story: the resumed run drawn over the uninterrupted one.

Introduced in notebook ``08_review``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .lessons import metrics_from_checkpoint, smooth


def resume_overlay(reference: str | os.PathLike[str], resumed: str | os.PathLike[str], *,
                   killed_at_step: int, resumed_from_step: int, window: int = 50) -> Any:
    """Loss and greedy return of two runs' final checkpoints, one drawn over the other.

    The resumed run's curves are dashed over the uninterrupted run's solid ones; the redone
    segment (from the checkpoint it resumed from to the kill) is shaded. A third panel shows the
    absolute difference per update, which is zero everywhere when the resume is exact.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    ref, res = metrics_from_checkpoint(reference), metrics_from_checkpoint(resumed)
    fig, (loss_ax, return_ax, diff_ax) = plt.subplots(1, 3, figsize=(14, 3.4))
    for history, style, color, label in ((ref, "-", "#1d4ed8", "uninterrupted"),
                                         (res, "--", "#f59e0b", "killed and resumed")):
        loss_ax.plot(history.loss_steps, smooth(history.losses, window), style, color=color,
                     linewidth=1.6, label=f"{label} (moving average of {window})")
        evals = history.evaluations
        return_ax.plot([e["step"] for e in evals], [e["mean_return"] for e in evals],
                       style, marker="o", color=color, label=label)
    n = min(len(ref.losses), len(res.losses))
    diff = np.abs(np.asarray(ref.losses[:n], float) - np.asarray(res.losses[:n], float))
    diff_ax.plot(ref.loss_steps[:n], diff, color="#15803d")
    diff_ax.set_ylim(-0.05, max(1.0, float(diff.max()) * 1.1))
    diff_ax.set_title(f"|loss difference| per update (max {diff.max():.3g})", fontsize=9)
    loss_ax.set_ylabel("Huber TD loss")
    return_ax.set_ylabel("greedy return")
    for ax in (loss_ax, return_ax, diff_ax):
        ax.axvspan(resumed_from_step, killed_at_step, color="#fecaca", alpha=0.5,
                   label="trained twice (lost to the kill)" if ax is loss_ax else None)
        ax.axvline(killed_at_step, color="#b91c1c", linewidth=1.2,
                   label="killed here" if ax is loss_ax else None)
        ax.set_xlabel("environment step")
        ax.tick_params(labelsize=8)
    loss_ax.legend(fontsize=7)
    return_ax.legend(fontsize=7)
    fig.suptitle(f"killed (SIGKILL) after step {killed_at_step}, resumed from the checkpoint at "
                 f"step {resumed_from_step}: the dashed curves lie exactly on the solid ones",
                 fontsize=10)
    fig.tight_layout()
    return fig
