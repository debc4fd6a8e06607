"""The suite's recorded reference material: the long "full mode" run in ``data/``.

A class has no time to train 50 000 steps, but long-horizon curves are where some lessons'
points show best: the greedy return reaching the 500-step limit and falling off it again, the
loss rising while the agent improves, the best checkpoint lying far before the last one.
``data/full-mode-run/run.json`` holds such a run, recorded once with its provenance
(``provenance.json`` beside it: command, commit, date, versions) by
``tools/record_reference_data.py full-run``: its complete metric history and every checkpoint's
manifest metrics and size.

    from ckptlab.lab.figures import show_figure
    from ckptlab.lab.recorded import load_full_run, plot_full_run
    show_figure(plot_full_run(load_full_run()))

or, without a notebook: ``python -m ckptlab.lab.recorded --out long-run.png``.

Introduced in ``docs/instructor-guide.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dqn.metrics import MetricHistory
from ..engine import CkptlabError
from .figures import OKABE_ITO, ROLE, caption

DATA_VARIABLE = "CKPTLAB_REFERENCE_DATA"
FULL_RUN = Path("full-mode-run") / "run.json"


def data_dir() -> Path:
    """The repository's ``data/`` folder (``CKPTLAB_REFERENCE_DATA`` points elsewhere)."""
    if os.environ.get(DATA_VARIABLE):
        return Path(os.environ[DATA_VARIABLE])
    return Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class RecordedRun:
    """A recorded run: its configuration, metric history, checkpoints and provenance."""

    config: dict[str, Any]
    history: MetricHistory
    checkpoints: list[dict[str, Any]]     # {"step", "metrics", "bytes"} per checkpoint
    provenance: dict[str, Any]

    def best_checkpoint(self) -> dict[str, Any]:
        """The first checkpoint with the highest ``eval_return``."""
        scored = [c for c in self.checkpoints if c["metrics"].get("eval_return") is not None]
        return max(scored, key=lambda c: (c["metrics"]["eval_return"], -c["step"]))


def load_full_run(path: str | os.PathLike[str] | None = None) -> RecordedRun:
    """Read the recorded full-mode run (default: ``data/full-mode-run/run.json``).

    Raises:
        CkptlabError: the file is missing (it ships in the repository, not in the wheel) or is
            not a recorded run.
    """
    path = data_dir() / FULL_RUN if path is None else Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
        provenance = json.loads((path.parent / "provenance.json").read_text("utf-8"))
    except FileNotFoundError as exc:
        raise CkptlabError(f"no recorded run at {exc.filename}: it is in the repository's "
                           "data/ folder (clone the repository, or set "
                           f"{DATA_VARIABLE})") from None
    except (OSError, ValueError) as exc:
        raise CkptlabError(f"{path} is not a readable recorded run ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != "ckptlab-recorded-run":
        raise CkptlabError(f"{path} is not a ckptlab recorded run")
    history = MetricHistory()
    # JSON's null stands for NaN (an epoch without a loss or an evaluation)
    history.load_state_dict({name: [math.nan if v is None else v for v in values]
                             for name, values in data["metrics"].items()})
    return RecordedRun(data["config"], history, data["checkpoints"], provenance)


def plot_full_run(run: RecordedRun, window: int = 200) -> Any:
    """Loss (log scale, with a moving average) and greedy return over the whole recorded run,
    the best checkpoint starred and the last one marked, with a data-derived caption."""
    import matplotlib.pyplot as plt

    from .lessons import smooth

    history = run.history
    fig, (loss_ax, return_ax) = plt.subplots(2, 1, figsize=(12, 5.6), sharex=True)
    loss_ax.plot(history.loss_steps, history.losses, color=OKABE_ITO["sky_blue"], linewidth=0.3,
                 alpha=0.5, label="loss per update")
    averaged = smooth(history.losses, window)
    loss_ax.plot(history.loss_steps, averaged, color=OKABE_ITO["blue"], linewidth=2,
                 linestyle="-", label=f"moving average ({window} updates)")
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("Huber TD loss")
    evals = history.evaluations
    steps = [e["step"] for e in evals]
    means = [e["mean_return"] for e in evals]
    return_ax.plot(steps, means, "o-", color=OKABE_ITO["green"], markersize=3,
                   label="greedy evaluation (mean return)")
    best, last = run.best_checkpoint(), run.checkpoints[-1]
    return_ax.plot([best["step"]], [best["metrics"]["eval_return"]], "*", markersize=16,
                   color=ROLE["best"], markeredgecolor="black",
                   label=f"best checkpoint (step {best['step']})")
    return_ax.axvline(last["step"], color=ROLE["checkpoint"], linestyle=":",
                      label=f"last checkpoint (step {last['step']})")
    return_ax.set_ylim(0, 530)
    return_ax.set_ylabel("greedy return")
    return_ax.set_xlabel("environment step")
    return_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    loss_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"The recorded full-mode run: {run.config['total_steps']:,} steps of "
                 f"{run.config['env_id']}, seed {run.config['seed']}")
    fig.tight_layout()
    first_500 = next((s for s, m in zip(steps, means) if m >= 500), None)
    low = int(np.argmin(averaged)) if averaged.size else 0
    rise = float(averaged[-1] / averaged[low]) if averaged.size and averaged[low] > 0 else 1.0
    last_return = last["metrics"].get("eval_return")
    return caption(fig, f"Loss and greedy return over the {run.config['total_steps']:,} steps "
                        "of the recorded full-mode run: the greedy return "
                        + (f"first reaches 500 at step {first_500:,}" if first_500 else
                           f"peaks at {max(means):.0f}")
                        + f", the best checkpoint is at step {best['step']:,} (return "
                        f"{best['metrics']['eval_return']:.0f}) and the last at step "
                        f"{last['step']:,} (return "
                        + (f"{last_return:.0f}" if last_return is not None else "none")
                        + f"); the averaged loss ends {rise:.1f} times above its lowest point.")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .figures import figure_view, lab_rc

    parser = argparse.ArgumentParser(description="Draw the recorded full-mode run to a PNG.")
    parser.add_argument("--out", type=Path, default=Path("full-mode-run.png"))
    parser.add_argument("--presentation", action="store_true", help="projector font sizes")
    args = parser.parse_args()
    matplotlib.rcParams.update(lab_rc(args.presentation))
    view = figure_view(plot_full_run(load_full_run()))
    args.out.write_bytes(view.png)
    print(f"{args.out}: {view.caption}")


if __name__ == "__main__":
    main()
