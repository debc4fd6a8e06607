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

import numpy as np
import torch

from ..engine import load_checkpoint_state
from ..dqn.config import DQNConfig
from ..dqn.train import Trainer

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
    "replay_buffer": "the experience it learns from; an empty buffer means different batches "
                     "and a pause in learning until it refills",
    "counters": "step and episode counters and the exploration schedule; without them epsilon "
                "jumps back to 1 and the agent explores at random again",
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
    return next(label for label, pieces in ABLATION_LEVELS
                if "env" not in pieces and "rng" in pieces)  # everything but the env state


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


def separation_step(run: AfterResume, reference: AfterResume, tolerance: float = 0.05,
                    window: int = 25) -> int | None:
    """The first step after the resume at which the two runs' smoothed losses are more than
    ``tolerance`` (relative) apart, update by update; ``None`` if they never are."""
    from .lessons import smooth

    n = min(len(run.losses), len(reference.losses))
    if n == 0:
        return None
    a, b = smooth(run.losses[:n], window), smooth(reference.losses[:n], window)
    apart = np.abs(a - b) > tolerance * np.abs(b)
    if run.loss_steps[:n].tolist() != reference.loss_steps[:n].tolist():
        apart |= run.loss_steps[:n] != reference.loss_steps[:n]  # updates at other steps
    hits = np.flatnonzero(apart)
    return int(reference.loss_steps[hits[0]]) if hits.size else None


def divergence(run: AfterResume, reference: AfterResume) -> dict[str, float | int | None]:
    """How far ``run`` strays from ``reference``: the first step (after the resume) at which
    an update's loss differs at all, the step at which the runs visibly separate (smoothed
    losses more than 5% apart), the gap in final greedy return, the final weight distance."""
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
    return {"first divergence (steps after resume)": first,
            "separates (>5% apart) at": separation_step(run, reference),
            "final greedy return": run.final_greedy_return,
            "return gap": abs(run.final_greedy_return - reference.final_greedy_return),
            "final weight distance": distance}
