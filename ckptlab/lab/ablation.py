"""What goes in a checkpoint: resume with only some pieces of the state and measure the damage.

Each ablation level restores a growing set of pieces from the same checkpoint into a fresh
trainer (built with the same seed) and trains on; :func:`divergence` compares what happens next
with the complete resume, which is the uninterrupted run.

Introduced in notebook ``05_what_goes_in_a_checkpoint``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dqn.config import DQNConfig
from ..dqn.train import Trainer
from ..engine import CkptlabError, load_checkpoint_state

# (label, pieces restored); each level adds to the previous one.
ABLATION_LEVELS: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (label, frozenset(pieces)) for label, pieces in (
        ("weights only", {"weights"}),
        ("+ optimizer", {"weights", "optimizer"}),
        ("+ replay buffer", {"weights", "optimizer", "replay_buffer"}),
        ("+ counters & exploration", {"weights", "optimizer", "replay_buffer", "counters"}),
        ("+ RNG states", {"weights", "optimizer", "replay_buffer", "counters", "rng"}),
        ("+ environment state", {"weights", "optimizer", "replay_buffer", "counters", "rng",
                                 "env"}),
        ("full checkpoint", {"weights", "optimizer", "replay_buffer", "counters", "rng", "env",
                             "metrics"}),
    ))

WHY_IT_MATTERS = {
    "weights": "what the agent knows; without them it starts from scratch",
    "optimizer": "Adam's running averages of past gradients; without them the first updates "
                 "after the resume are too large and in different directions",
    "replay_buffer": "the experience it learns from; resumed empty, learning does not pause: "
                     "the step counter is past learning_starts, so updates go on at once, each "
                     "drawing a whole batch (with replacement) from the handful of transitions "
                     "collected since the resume - the loss spikes, then settles as the buffer "
                     "refills",
    "counters": "step and episode counters and the exploration schedule; without them epsilon "
                "jumps back to 1 (random actions again), and with the step counter back at 0 "
                "no update happens until it passes learning_starts again: learning pauses",
    "rng": "the random generators; without them exploration and batch sampling draw other "
           "numbers from the very first step, so learning takes another path at once",
    "env": "the episode in progress; without it the environment resets and the resumed run "
           "plays an episode the original never saw - the first batches are almost the same "
           "(the buffer is), then the new experience pulls the runs apart",
    "metrics": "the metric history; it changes nothing the agent does, but without it the "
               "resumed run's curves start from nothing",
}


def mystery_level() -> str:
    """The ablation level lesson 5's exercise shows as a mystery (the answer is in the
    lesson's solution, not in the exercise cell)."""
    return next(label for label, pieces in LEAVE_ONE_OUT
                if pieces == FULL - {"env"})  # everything but the env state


def resume_partially(checkpoint: str | os.PathLike[str], config: DQNConfig,
                     pieces: frozenset[str]) -> Trainer:
    """A fresh trainer (same config and seed) with only ``pieces`` restored from
    ``checkpoint``; everything else keeps the fresh trainer's initial values."""
    trainer = Trainer(config)
    _, states = load_checkpoint_state(Path(checkpoint))
    agent = states["agent"]
    if "weights" in pieces:
        trainer.agent.q_net.load_state_dict(agent["q_net"])
        trainer.agent.target_net.load_state_dict(agent["target_net"])
    if "optimizer" in pieces:
        trainer.agent.optimizer.load_state_dict(agent["optimizer"])
        trainer.agent.updates = int(agent["updates"])
    if "replay_buffer" in pieces:
        trainer.buffer.load_state_dict(states["replay_buffer"])
    if "counters" in pieces:
        trainer.progress.load_state_dict(states["progress"])
        trainer.exploration.load_state_dict(states["exploration"])
    if "rng" in pieces:
        trainer.rng.load_state_dict(states["rng"])
    if "env" in pieces:
        trainer.runner.load_state_dict(states["env"])
    if "metrics" in pieces:
        trainer.metrics.load_state_dict(states["metrics"])
    return trainer


@dataclass
class AfterResume:
    """What a trainer did in the steps after a resume (steps counted from the resume)."""

    loss_steps: np.ndarray
    losses: np.ndarray
    episode_end_steps: np.ndarray
    episode_returns: np.ndarray
    epsilons: np.ndarray          # epsilon at each step after the resume
    final_weights: dict[str, torch.Tensor]
    final_greedy_return: float


def continue_training(trainer: Trainer, steps: int, eval_key_step: int) -> AfterResume:
    """Train ``steps`` more steps and record what happened, relative to the resume.

    The final greedy evaluation uses the seeds of ``eval_key_step`` for every trainer, so all
    ablation levels are judged on the same evaluation episodes.
    """
    start = trainer.progress.step
    n_losses, n_episodes = len(trainer.metrics.losses), len(trainer.metrics.episode_returns)
    epsilons = np.empty(steps)
    for i in range(steps):
        epsilons[i] = trainer.exploration.value()
        trainer.step()
    m = trainer.metrics
    evaluation = trainer.evaluator.evaluate(
        lambda batch: trainer.agent.q_values(batch).argmax(1), eval_key_step)
    return AfterResume(
        loss_steps=np.asarray(m.loss_steps[n_losses:]) - start,
        losses=np.asarray(m.losses[n_losses:]),
        episode_end_steps=np.asarray(m.episode_end_steps[n_episodes:]) - start,
        episode_returns=np.asarray(m.episode_returns[n_episodes:]),
        epsilons=epsilons,
        final_weights={k: v.detach().cpu().clone()
                       for k, v in trainer.agent.q_net.state_dict().items()},
        final_greedy_return=evaluation.mean_return)


def first_update(run: AfterResume) -> int | None:
    """The step (after the resume) of ``run``'s first gradient update; ``None`` if none."""
    return int(run.loss_steps[0]) if len(run.loss_steps) else None


def separation_step(run: AfterResume, reference: AfterResume, tolerance: float = 0.05,
                    window: int = 25) -> int | None:
    """The first step after the resume at which both runs made an update and their smoothed
    losses (each over its own last ``window`` updates) are more than ``tolerance`` (relative)
    apart; ``None`` if they never are.

    Updates are matched by step: a run that makes no update where the reference does (it
    paused, see :func:`first_update`) is compared where both updated, so a pause shows as a
    pause, not as a separation at the reference's first update.
    """
    from .lessons import smooth

    if len(run.losses) == 0 or len(reference.losses) == 0:
        return None
    a, b = smooth(run.losses, window), smooth(reference.losses, window)
    common, ia, ib = np.intersect1d(run.loss_steps, reference.loss_steps, assume_unique=True,
                                    return_indices=True)
    apart = np.abs(a[ia] - b[ib]) > tolerance * np.abs(b[ib])
    hits = np.flatnonzero(apart)
    return int(common[hits[0]]) if hits.size else None


def divergence(run: AfterResume, reference: AfterResume) -> dict[str, float | int | None]:
    """How far ``run`` strays from ``reference``: its first update (a run that restarts its
    step counter pauses until ``learning_starts``), the first step (after the resume) at which
    an update's loss differs at all (or an update happens in one run and not the other), the
    step at which the runs visibly separate (smoothed losses more than 5% apart where both
    updated), the gap in final greedy return, the final weight distance."""
    first = None
    n = min(len(run.losses), len(reference.losses))
    for i in range(n):
        if run.loss_steps[i] != reference.loss_steps[i] or run.losses[i] != reference.losses[i]:
            first = int(min(run.loss_steps[i], reference.loss_steps[i]))
            break
    if first is None and len(run.losses) != len(reference.losses):
        first = int(reference.loss_steps[n] if n < len(reference.losses) else run.loss_steps[n])
    distance = float(torch.sqrt(sum(((run.final_weights[k].double() -
                                      reference.final_weights[k].double()) ** 2).sum()
                                    for k in reference.final_weights)))
    return {"first update (steps after resume)": first_update(run),
            "first divergence (steps after resume)": first,
            "separates (>5% apart) at": separation_step(run, reference),
            "final greedy return": run.final_greedy_return,
            "return gap": abs(run.final_greedy_return - reference.final_greedy_return),
            "final weight distance": distance}


# -- leave one out: which missing piece causes what ------------------------------------------

COMPONENTS: tuple[str, ...] = ("weights", "optimizer", "replay_buffer", "counters", "rng",
                               "env", "metrics")
"""Every piece of a checkpoint that :func:`resume_partially` can restore or leave out."""

FULL = frozenset(COMPONENTS)

# (label, pieces restored): the full checkpoint minus one piece each, then the full one. Unlike
# the cumulative levels above, each run differs from the full resume by exactly one piece, so
# what it does differently is caused by that piece alone.
LEAVE_ONE_OUT: tuple[tuple[str, frozenset[str]], ...] = (
    *((f"without {piece}", FULL - {piece}) for piece in COMPONENTS),
    ("full checkpoint", FULL),
)


def check_pieces(pieces: object) -> frozenset[str]:
    """The pieces to restore, checked: a non-empty set of names from :data:`COMPONENTS`.

    Raises:
        CkptlabError: the set is empty or names something a checkpoint does not hold.
    """
    chosen = frozenset([pieces] if isinstance(pieces, str) else pieces)  # type: ignore[arg-type]
    unknown = sorted(chosen - FULL)
    if unknown:
        raise CkptlabError(f"unknown checkpoint piece(s) {', '.join(map(repr, unknown))}; "
                           f"choose from {', '.join(COMPONENTS)}")
    if not chosen:
        raise CkptlabError("no piece of the checkpoint is selected: tick at least one (with "
                           "none, nothing is resumed - that is a new run from scratch)")
    return chosen


def resume_with(checkpoint: str | os.PathLike[str], config: DQNConfig, pieces: object,
                steps: int, eval_key_step: int) -> AfterResume:
    """Resume from ``checkpoint`` with only ``pieces`` restored and train ``steps`` more steps
    (see :func:`resume_partially` and :func:`continue_training`)."""
    chosen = check_pieces(pieces)
    if steps < 1:
        raise CkptlabError(f"train at least one step after the resume, not {steps}")
    trainer = resume_partially(checkpoint, config, chosen)
    try:
        return continue_training(trainer, steps, eval_key_step)
    finally:
        trainer.close()


def separation_title(run: AfterResume, reference: AfterResume) -> str:
    """"identical", or what the run's loss does against the reference's: a pause in learning
    (no update until later than the reference's first), and where the smoothed losses
    separate."""
    first = divergence(run, reference)["first divergence (steps after resume)"]
    if first is None:
        return "identical to the full resume"
    mine, theirs = first_update(run), first_update(reference)
    paused = mine is None or (theirs is not None and mine > theirs)
    if paused:
        pause = ("no update at all" if mine is None
                 else f"no update until +{mine} (learning paused)")
        apart = separation_step(run, reference)
        return pause + (f", then apart at +{apart}" if apart is not None else "")
    apart = separation_step(run, reference)
    return (f"separates at step +{apart}" if apart is not None else
            f"differs from +{first}, never more than 5% apart")


EARLY_SEPARATION = 100
"""Steps after the resume within which a separation counts as "at once" (lesson 5)."""

LOSS_BEHAVIOURS: dict[str, str] = {
    "identical": "Stay identical to the full resume",
    "pause": "Make no update at first (learning pauses), then go its own way",
    "early": f"Pull apart within the first {EARLY_SEPARATION} steps",
    "late": "Stay close for hundreds of steps, then pull apart",
    "close": "Differ slightly, never more than 5% apart",
}


def loss_behaviour(run: AfterResume, reference: AfterResume) -> str:
    """What ``run``'s loss does against ``reference``'s, as one key of
    :data:`LOSS_BEHAVIOURS`: identical, a pause in learning, a separation within
    :data:`EARLY_SEPARATION` steps or later, or a difference that never reaches 5%."""
    if divergence(run, reference)["first divergence (steps after resume)"] is None:
        return "identical"
    mine, theirs = first_update(run), first_update(reference)
    if mine is None or (theirs is not None and mine > theirs):
        return "pause"
    apart = separation_step(run, reference)
    if apart is None:
        return "close"
    return "early" if apart <= EARLY_SEPARATION else "late"


def plot_separation(ax: Any, run: AfterResume, reference: AfterResume, *,
                    label: str = "resumed", window: int = 25) -> None:
    """The loss the separation is judged on (smoothed over ``window`` updates): ``run`` over
    the full resume, with the separation step marked."""
    from .figures import ROLE
    from .lessons import smooth

    ax.plot(reference.loss_steps, smooth(reference.losses, window), color=ROLE["reference"],
            linewidth=4, label="full resume")
    ax.plot(run.loss_steps, smooth(run.losses, window), color=ROLE["resumed"], linewidth=1.2,
            linestyle="--", label=label)
    apart = separation_step(run, reference)
    if apart is not None:
        ax.axvline(apart, color=ROLE["event"], linestyle=":", linewidth=1.5)


class WhatToSaveLab:
    """The "what to save" control: resume from one checkpoint with the ticked pieces only and
    overlay the result on the full resume.

    Keeps its own copy of the checkpoint (so the lesson may delete its folders).

    Args:
        checkpoint: the checkpoint every resume starts from.
        config: the configuration it was trained with.
        steps: steps trained after each resume.
        eval_key_step: the evaluation seeds (see :func:`continue_training`).
        reference: the full resume's result, if already computed (else it is computed once).
    """

    def __init__(self, checkpoint: str | os.PathLike[str], config: DQNConfig, steps: int,
                 eval_key_step: int, reference: AfterResume | None = None) -> None:
        import shutil
        import tempfile

        self._scratch = tempfile.TemporaryDirectory(prefix="ckptlab-what-to-save-")
        self.checkpoint = Path(self._scratch.name) / Path(checkpoint).name
        shutil.copytree(checkpoint, self.checkpoint)
        self.config, self.steps, self.eval_key_step = config, steps, eval_key_step
        self.reference = reference if reference is not None else resume_with(
            self.checkpoint, config, FULL, steps, eval_key_step)
        self.last: AfterResume | None = None   # what the last render trained

    def predictions(self) -> list[Any]:
        """What the learner predicts before pressing *Resume*: what the run's loss will do
        against the full resume's (answered by :func:`loss_behaviour` on the run just made).
        With *mystery* on, the question does not name the pieces left out."""
        from .predict import Outcome, Prediction

        why = {
            "identical": "Only the metric history can be left out without a trace: it feeds "
                         "the curves, not the agent. Any other missing piece changes the next "
                         "updates or actions.",
            "pause": "Without the counters the step counter starts again at 0, below "
                     "learning_starts, so no update happens for a while; epsilon is back at 1 "
                     "too.",
            "early": "Without the weights, the optimizer, the replay buffer or the random "
                     "generators the next updates differ at once (another network, other steps, "
                     "other batches).",
            "late": "Without the environment's episode the first batches still come from the "
                    "saved buffer; the runs part only when the new episode's experience reaches "
                    "the batches.",
            "close": "A difference that never grows past 5% in these steps: the missing piece "
                     "changes little of what the next updates see.",
        }

        def prompt(mystery: bool = False, **ticked: bool) -> str:
            missing = [p for p in COMPONENTS if not ticked.get(p)]
            what = ("the mystery run" if mystery else "a resume with every piece" if not missing
                    else "a resume without " + ", ".join(missing))
            return (f"Compared with the full resume, what will the smoothed loss of {what} do "
                    f"in the {self.steps} steps after the resume?")

        def answer(**_: Any) -> str:
            if self.last is None:
                raise CkptlabError("no run yet: press Resume first")
            return loss_behaviour(self.last, self.reference)

        return [Prediction("what-to-save-loss", prompt,
                           lambda **_: [Outcome(key, text, why[key])
                                        for key, text in LOSS_BEHAVIOURS.items()],
                           answer)]

    def run(self, pieces: object) -> AfterResume:
        """Resume with ``pieces`` and train on."""
        return resume_with(self.checkpoint, self.config, pieces, self.steps, self.eval_key_step)

    def render(self, mystery: bool = False, **ticked: bool) -> list[Any]:
        """Resume with the ticked pieces (keyword per piece: ``weights=True`` ...), overlay on
        the full resume and say where they separate. ``mystery`` hides which pieces were
        restored, so a class can guess them from the plot."""
        import matplotlib.pyplot as plt

        unknown = sorted(set(ticked) - FULL)
        if unknown:
            raise CkptlabError(f"unknown checkpoint piece(s) {unknown}; choose from "
                               f"{', '.join(COMPONENTS)}")
        pieces = check_pieces({name for name, on in ticked.items() if on})
        run = self.last = self.run(pieces)
        name = "mystery run" if mystery else (
            "full checkpoint" if pieces == FULL else
            "without " + ", ".join(p for p in COMPONENTS if p not in pieces))
        fig, (ax, rax) = plt.subplots(1, 2, figsize=(12, 3.2),
                                      gridspec_kw={"width_ratios": [3, 2]})
        from .figures import ROLE, caption

        plot_separation(ax, run, self.reference, label=name)
        verdict = separation_title(run, self.reference)
        ax.set_title(f"{name}: {verdict}", fontsize="medium")
        ax.set_xlabel("steps after the resume")
        ax.set_ylabel("loss (smoothed)")
        ax.legend()
        rax.plot(self.reference.epsilons, color=ROLE["reference"], linewidth=4,
                 label="full resume")
        rax.plot(run.epsilons, color=ROLE["resumed"], linewidth=1.2, linestyle="--",
                 label=name)
        rax.set_ylim(0, 1.05)
        rax.set_xlabel("steps after the resume")
        rax.set_ylabel("epsilon")
        rax.legend()
        fig.tight_layout()
        caption(fig, f"Smoothed loss (left) and exploration rate (right) of the {name} over "
                     f"the full resume's, {self.steps} steps after the resume: {verdict}; "
                     f"epsilon right after the resume {run.epsilons[0]:.2f} (full resume "
                     f"{self.reference.epsilons[0]:.2f}).")
        d = divergence(run, self.reference)
        restored = "(hidden)" if mystery else ", ".join(p for p in COMPONENTS if p in pieces)
        text = (f"restored: {restored}\nfinal greedy return {d['final greedy return']:.1f} "
                f"(full resume: {self.reference.final_greedy_return:.1f}); final weight "
                f"distance to the full resume {d['final weight distance']:.3g}")
        return [fig, text]

    def close(self) -> None:
        """Remove the copy of the checkpoint (also done when garbage-collected)."""
        self._scratch.cleanup()


def what_to_save_controls(default: frozenset[str] = FULL - {"optimizer"}) -> dict[str, Any]:
    """One checkbox per piece (ticked as in ``default``) and a "mystery" toggle that hides the
    checkboxes, for :class:`WhatToSaveLab.render` via :func:`~ckptlab.lab.widgets.show_live`."""
    import ipywidgets as widgets

    boxes = {piece: widgets.Checkbox(value=piece in default, description=piece, indent=False,
                                     layout=widgets.Layout(width="130px"))
             for piece in COMPONENTS}
    mystery = widgets.ToggleButton(value=False, description="mystery",
                                   tooltip="hide which pieces are restored")

    def hide(change: Any) -> None:
        for box in boxes.values():
            box.layout.visibility = "hidden" if change["new"] else "visible"

    mystery.observe(hide, names="value")
    return {**boxes, "mystery": mystery}
