"""Lesson 8's picture of the whole story: the resumed run drawn over the uninterrupted one.

Introduced in notebook ``08_review``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .figures import OKABE_ITO, ROLE, caption, fmt
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
    for history, style, color, width, label in (
            (ref, "-", ROLE["reference"], 4, "uninterrupted"),
            (res, "--", ROLE["resumed"], 1.6, "killed and resumed")):
        loss_ax.plot(history.loss_steps, smooth(history.losses, window), style, color=color,
                     linewidth=width, label=f"{label} (moving average of {window})")
        evals = history.evaluations
        return_ax.plot([e["step"] for e in evals], [e["mean_return"] for e in evals],
                       style, marker="o", color=color, label=label)
    n = min(len(ref.losses), len(res.losses))
    diff = np.abs(np.asarray(ref.losses[:n], float) - np.asarray(res.losses[:n], float))
    diff_ax.plot(ref.loss_steps[:n], diff, color="black")
    diff_ax.set_ylim(-0.05, max(1.0, float(diff.max()) * 1.1))
    diff_ax.set_title(f"|loss difference| per update (max {diff.max():.3g})", fontsize="medium")
    loss_ax.set_ylabel("Huber TD loss")
    return_ax.set_ylabel("greedy return")
    for ax in (loss_ax, return_ax, diff_ax):
        ax.axvspan(resumed_from_step, killed_at_step, color=OKABE_ITO["yellow"], alpha=0.35,
                   label="trained twice (lost to the kill)" if ax is loss_ax else None)
        ax.axvline(killed_at_step, color=ROLE["event"], linewidth=1.2, linestyle=":",
                   label="killed here" if ax is loss_ax else None)
        ax.set_xlabel("environment step")
    loss_ax.legend()
    return_ax.legend()
    fig.suptitle(f"killed (SIGKILL) after step {killed_at_step}, resumed from the checkpoint at "
                 f"step {resumed_from_step}: the dashed curves lie exactly on the solid ones")
    fig.tight_layout()
    return caption(fig, f"Loss and greedy return of a run killed with SIGKILL after step "
                        f"{killed_at_step} and resumed from step {resumed_from_step}, drawn "
                        f"over the uninterrupted run: |loss difference| per update, max "
                        f"{fmt(float(diff.max()) if n else 0.0)} over {n} updates.")
