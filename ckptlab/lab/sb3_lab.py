"""Lesson 11 (bring your own library): a Stable-Baselines3 PPO run, killed and resumed three
ways - SB3's own save and load, SB3 plus the saved generator states, and ckptlab's callback -
each drawn over the uninterrupted run; which pieces each way brings back; what an on-policy
checkpoint holds that a DQN checkpoint does not; the lesson's live control (where to kill,
which pieces to restore) and its exercise's environment.

Every run here is a real SB3 run (:mod:`ckptlab.sb3.run`); the killed one is a real process
killed with SIGKILL. The resumes run in the lesson's own process: building (or SB3's
``load``) seeds every global generator from the run's seed, exactly as in a new process.

Introduced in notebook ``11_bring_your_own_library``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from ..engine import CkptlabError, load_checkpoint_state
from ..engine.faults import ENV_VAR
from ..sb3 import PIECES, CkptlabCallback, apply_state
from ..sb3.callback import checkpoint_directory
from ..sb3.run import (
    SB3_SUBDIR,
    RunSpec,
    build_model,
    compare_runs,
    load_sb3,
    sb3_saver,
    write_final,
)
from .figures import LINESTYLES, OKABE_ITO, ROLE, caption, fmt
from .lessons import component_size_table

# -------------------------------------------------------------------------------------------
# The lesson's run
# -------------------------------------------------------------------------------------------

#: PPO on CartPole with 4 environments and VecNormalize: 256 timesteps per rollout.
LESSON_HYPERPARAMETERS = {"n_steps": 64, "batch_size": 128, "n_epochs": 4,
                          "learning_rate": 1e-3, "policy_kwargs": {"net_arch": [64, 64]}}
METHODS = ("SB3 save and load", "SB3 + saved RNG states", "ckptlab callback")
# Colour, line style and marker per way of resuming (colour is never the only cue).
METHOD_STYLES = {"SB3 save and load": (OKABE_ITO["vermillion"], "--", "s"),
                 "SB3 + saved RNG states": (OKABE_ITO["reddish_purple"], "-.", "^"),
                 "ckptlab callback": (ROLE["resumed"], "-", "o")}
#: What each way of resuming restores (the lesson's table of pieces checks it on a real run).
PIECE_NAMES = {
    "policy": "policy and optimizer",
    "progress": "counters and schedule progress",
    "envs": "sub-environments mid-episode, VecEnv buffers, spaces' generators, last observation",
    "normalization": "VecNormalize's statistics and discounted returns",
    "episode_stats": "SB3's episode-info buffer (rollout/ep_rew_mean)",
    "rng": "Python's, numpy's and torch's global generators",
}


def lesson_spec(mode: str = "fast", seed: int = 0) -> RunSpec:
    """The lesson's run: fast, 16 rollouts of 256 timesteps; full, 96 rollouts."""
    if mode not in ("fast", "full"):
        raise CkptlabError(f"mode must be 'fast' or 'full', not {mode!r}")
    fast = mode == "fast"
    return RunSpec(algo="ppo", env_id="CartPole-v1", n_envs=4, normalize=True, seed=seed,
                   total_timesteps=4_096 if fast else 24_576,
                   save_every=1_024 if fast else 4_096,
                   hyperparameters=LESSON_HYPERPARAMETERS)


def rollout_size(spec: RunSpec) -> int:
    """Timesteps between two rollout boundaries: ``n_steps * n_envs``."""
    return int(spec.settings()["n_steps"]) * spec.n_envs


@dataclass
class Trace:
    """A run seen at each rollout boundary: the timestep, the policy's parameters, and SB3's
    ``rollout/ep_rew_mean`` (nan before the first finished episode)."""

    steps: list[int] = field(default_factory=list)
    params: list[np.ndarray] = field(default_factory=list)
    ep_rew_mean: list[float] = field(default_factory=list)

    def at(self, step: int) -> int | None:
        """The index of ``step`` in this trace, if it was recorded."""
        return self.steps.index(step) if step in self.steps else None


class Recorder(BaseCallback):
    """Records a :class:`Trace` at every rollout boundary and at the end (changes nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.trace = Trace()

    def _record(self) -> None:
        model = self.model
        if self.trace.steps and self.trace.steps[-1] == model.num_timesteps:
            return
        params = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
        infos = model.ep_info_buffer or []
        self.trace.steps.append(int(model.num_timesteps))
        self.trace.params.append(params.numpy().copy())
        self.trace.ep_rew_mean.append(float(np.mean([i["r"] for i in infos])) if infos
                                      else math.nan)

    def _on_rollout_start(self) -> None:
        self._record()

    def _on_training_end(self) -> None:
        self._record()

    def _on_step(self) -> bool:
        return True


def train_uninterrupted(spec: RunSpec, run_dir: str | os.PathLike[str]) -> Trace:
    """The run, never interrupted, saving both ways at the same boundaries (ckptlab's
    checkpoints in ``run_dir/checkpoints``, SB3's in ``run_dir/sb3``)."""
    run_dir = Path(run_dir)
    recorder = Recorder()
    model = build_model(spec)
    model.learn(spec.total_timesteps, callback=CallbackList([
        CkptlabCallback(run_dir, save_every_steps=spec.save_every, verbose=0),
        sb3_saver(run_dir / SB3_SUBDIR, spec.save_every, with_rng=True), recorder]))
    return recorder.trace


@dataclass(frozen=True)
class KilledRun:
    """What a run killed with SIGKILL left: its directory, where it died, where it saved."""

    run_dir: Path
    killed_at: int
    saved_at: int          # the newest checkpoint's timestep: where every resume starts

    @property
    def lost(self) -> int:
        """Timesteps trained, then lost with the process."""
        return self.killed_at - self.saved_at


def run_and_kill(spec: RunSpec, run_dir: str | os.PathLike[str], kill_at: int) -> KilledRun:
    """Start ``python -m ckptlab.sb3.run`` (ckptlab's checkpoints and SB3's saves, at the same
    boundaries) in a new process, which is killed with SIGKILL right after timestep
    ``kill_at`` (a multiple of the number of environments)."""
    check_kill_at(spec, kill_at)
    run_dir = Path(run_dir)
    args = [sys.executable, "-m", "ckptlab.sb3.run", "--algo", spec.algo, "--env", spec.env_id,
            "--n-envs", str(spec.n_envs), "--seed", str(spec.seed),
            "--steps", str(spec.total_timesteps), "--save-every", str(spec.save_every),
            "--run-dir", str(run_dir), "--also-sb3-saves", "--set", json.dumps(spec.settings())]
    if not spec.normalize:
        args.append("--no-normalize")
    env = {**os.environ, ENV_VAR: f"step@{kill_at}"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != -signal.SIGKILL:
        raise CkptlabError(f"the training process was expected to die by SIGKILL but exited "
                           f"with {done.returncode}: {done.stderr.strip()[-400:]}")
    saved = sorted(checkpoint_directory(run_dir).glob("step_*"))
    return KilledRun(run_dir, kill_at, int(saved[-1].name[5:]) if saved else 0)


def check_kill_at(spec: RunSpec, kill_at: int) -> int:
    """A kill moment the run reaches: after the first save, before the end, a timestep the
    environments step to (a multiple of their number)."""
    if isinstance(kill_at, bool) or not isinstance(kill_at, (int, np.integer)):
        raise CkptlabError(f"the kill timestep must be a whole number (got {kill_at!r})")
    kill_at = int(kill_at)
    if not spec.save_every <= kill_at < spec.total_timesteps:
        raise CkptlabError(f"kill at a timestep from {spec.save_every} (the first save) to "
                           f"{spec.total_timesteps - 1} (got {kill_at})")
    if kill_at % spec.n_envs:
        raise CkptlabError(f"with {spec.n_envs} environments num_timesteps moves by "
                           f"{spec.n_envs}: kill at a multiple of {spec.n_envs} (got {kill_at})")
    return kill_at


def resume_one_way(spec: RunSpec, killed: KilledRun, method: str) -> Trace:
    """Resume the killed run with ``method`` (one of :data:`METHODS`) and train to the end.
    The killed run's directory is left as it was: ckptlab's resume continues in a copy of it
    (``<run_dir>-resumed``), since it writes the rest of the run's checkpoints there."""
    recorder = Recorder()
    if method == "ckptlab callback":
        copy = killed.run_dir.with_name(killed.run_dir.name + "-resumed")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(killed.run_dir, copy)
        model = build_model(spec)
        model.learn(spec.total_timesteps, callback=CallbackList([
            CkptlabCallback(copy, save_every_steps=spec.save_every, verbose=0), recorder]))
        return recorder.trace
    if method not in METHODS:
        raise CkptlabError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    model = load_sb3(spec, killed.run_dir / SB3_SUBDIR,
                     with_rng=method == "SB3 + saved RNG states")
    model.learn(spec.total_timesteps - model.num_timesteps, reset_num_timesteps=False,
                callback=recorder)
    return recorder.trace


def resume_three_ways(spec: RunSpec, killed: KilledRun) -> dict[str, Trace]:
    """The killed run resumed each way."""
    return {method: resume_one_way(spec, killed, method) for method in METHODS}


def distances(reference: Trace, resumed: Trace) -> tuple[list[int], list[float]]:
    """The L2 distance between the resumed run's policy parameters and the uninterrupted
    run's, at each rollout boundary both recorded."""
    steps, gaps = [], []
    for step, params in zip(resumed.steps, resumed.params):
        i = reference.at(step)
        if i is not None:
            steps.append(step)
            gaps.append(float(np.linalg.norm(params.astype(np.float64)
                                             - reference.params[i].astype(np.float64))))
    return steps, gaps


def three_ways_table(reference: Trace, runs: Mapping[str, Trace]) -> list[dict[str, Any]]:
    """One row per way of resuming: where its policy parted from the uninterrupted run's."""
    rows = []
    for method, trace in runs.items():
        steps, gaps = distances(reference, trace)
        first = next((s for s, g in zip(steps, gaps) if g > 0), None)
        rows.append({"resumed with": method,
                     "policy distance at the end": gaps[-1] if gaps else math.nan,
                     "first rollout that differs": "none" if first is None else first,
                     "ep_rew_mean at the end": trace.ep_rew_mean[-1],
                     "uninterrupted's": reference.ep_rew_mean[-1],
                     "identical": bool(gaps) and max(gaps) == 0.0})
    return rows


def plot_resumed(reference: Trace, runs: Mapping[str, Trace], *, saved_at: int,
                 killed_at: int | None = None, title: str = "") -> Any:
    """Left: SB3's ``rollout/ep_rew_mean`` of each run over the uninterrupted one's (the
    stretch trained twice shaded); right: each resumed policy's distance from the
    uninterrupted run's at every rollout boundary. Captioned with the measured distances."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.0))
    left.plot(reference.steps, reference.ep_rew_mean, color=ROLE["reference"], linewidth=6,
              linestyle="-", label="uninterrupted", zorder=1)
    for ax in (left, right):
        if killed_at is not None:
            ax.axvspan(saved_at, killed_at, color=ROLE["discarded"], alpha=0.25, zorder=0,
                       label=f"trained twice ({killed_at - saved_at} timesteps)")
            ax.axvline(killed_at, color=ROLE["event"], linestyle=":", linewidth=1.2)
        ax.axvline(saved_at, color=ROLE["checkpoint"], linestyle="--", linewidth=1)
        ax.set_xlabel("timesteps")
    ends = []
    for index, (method, trace) in enumerate(runs.items()):
        color, style, marker = METHOD_STYLES.get(
            method, (OKABE_ITO["blue"], LINESTYLES[index % len(LINESTYLES)], "o"))
        left.plot(trace.steps, trace.ep_rew_mean, color=color, linestyle=style,
                  linewidth=1.6, label=method)
        steps, gaps = distances(reference, trace)
        zero = bool(gaps) and max(gaps) == 0.0
        end = "exactly 0" if zero else f"{fmt(gaps[-1])} at the end" if gaps else "no overlap"
        ends.append(f"{method} {end}")
        right.plot(steps, gaps, color=color, linestyle=style, marker=marker, markersize=4,
                   linewidth=2.5 if zero else 1.6, label=f"{method}: {end}")
    left.set_ylabel("rollout/ep_rew_mean")
    left.set_title("episode return, as SB3 logs it")
    right.set_ylabel("|policy - uninterrupted policy| (L2)")
    right.set_title("difference from the uninterrupted run")
    left.legend(loc="upper left")
    right.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    where = (f"killed at timestep {killed_at} and resumed from the checkpoint at {saved_at}"
             if killed_at is not None else f"resumed from the checkpoint at {saved_at}")
    return caption(fig, f"Episode return (left) and the policy's distance from the "
                        f"uninterrupted run's (right), {where}: " + "; ".join(ends) + ".")


# -------------------------------------------------------------------------------------------
# Which pieces each way brings back
# -------------------------------------------------------------------------------------------

class _StateAtStart(BaseCallback):
    """Writes the run's complete state, in ckptlab's format, at the first rollout boundary of
    ``learn`` - the state training actually continues from - and stops."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.written: Path | None = None

    def _on_rollout_start(self) -> None:
        if self.written is None:
            self.written = write_final(self.model, self.directory)

    def _on_step(self) -> bool:
        return self.written is None


def pieces_brought_back(spec: RunSpec, killed: KilledRun,
                        reference_run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """For each way of resuming: which pieces of the state training continues from (at the
    first rollout boundary after the resume) equal the uninterrupted run's at that timestep.
    The killed run's directory is left as it was."""
    expected = checkpoint_directory(reference_run) / f"step_{killed.saved_at:08d}"
    rows: dict[str, dict[str, Any]] = {p: {"piece": PIECE_NAMES[p]} for p in PIECE_NAMES}
    with tempfile.TemporaryDirectory(prefix="ckptlab-lesson11-") as scratch:
        copy = Path(scratch) / "run"
        shutil.copytree(killed.run_dir, copy)
        for method in METHODS:
            probe = _StateAtStart(Path(scratch) / method.replace(" ", "_"))
            if method == "ckptlab callback":
                model = build_model(spec)
                model.learn(spec.total_timesteps, callback=CallbackList([
                    CkptlabCallback(copy, save_every_steps=spec.save_every, verbose=0,
                                    handle_signals=False), probe]))
            else:
                model = load_sb3(spec, copy / SB3_SUBDIR,
                                 with_rng=method == "SB3 + saved RNG states")
                model.learn(spec.total_timesteps - model.num_timesteps,
                            reset_num_timesteps=False, callback=probe)
            assert probe.written is not None
            differing = {c.name.split(".")[0] for c in compare_runs(expected, probe.written)
                         if not c.identical}
            for piece, row in rows.items():
                row[method] = "differs" if piece in differing else "same"
    return list(rows.values())


# -------------------------------------------------------------------------------------------
# On-policy vs DQN
# -------------------------------------------------------------------------------------------

ON_POLICY_NEEDS = (
    {"piece": "the rollout",
     "PPO (on-policy, SB3)": "saved at a rollout boundary, where the rollout buffer is empty; "
                             "a kill loses at most n_steps x n_envs timesteps",
     "DQN (ckptlab's run)": "no rollout: every transition goes to the replay buffer, which is "
                            "saved whole"},
    {"piece": "vectorised environments",
     "PPO (on-policy, SB3)": "n_envs sub-environments, each mid-episode, their Monitors, the "
                             "VecEnv's buffers and every space's generator",
     "DQN (ckptlab's run)": "one environment mid-episode"},
    {"piece": "normalisation statistics",
     "PPO (on-policy, SB3)": "VecNormalize's running mean and variance of observations and "
                             "returns, and each environment's discounted return",
     "DQN (ckptlab's run)": "none: raw observations"},
    {"piece": "schedules",
     "PPO (on-policy, SB3)": "progress remaining against the original total_timesteps: the "
                             "learning rate and clip range follow it",
     "DQN (ckptlab's run)": "the epsilon schedule's position, from the step counter"},
)


def contents_table(ppo_checkpoint: str | os.PathLike[str],
                   dqn_checkpoint: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The components of a real PPO checkpoint (ckptlab.sb3) beside ckptlab's DQN run's, with
    the bytes each takes (from the manifests)."""
    ppo = {row["component"]: row for row in component_size_table(ppo_checkpoint)}
    dqn = {row["component"]: row for row in component_size_table(dqn_checkpoint)}

    def size(row: Mapping[str, Any] | None) -> str:
        return "-" if row is None else f"{row['tensor bytes'] + row['JSON bytes']:,} B"

    return [{"component": name, "PPO (SB3, 4 envs, VecNormalize)": size(ppo.get(name)),
             "DQN (ckptlab's run)": size(dqn.get(name))}
            for name in [*ppo, *(n for n in dqn if n not in ppo)]]


# -------------------------------------------------------------------------------------------
# The live control: where to kill, which pieces to restore
# -------------------------------------------------------------------------------------------

def resume_with_pieces(spec: RunSpec, checkpoint: str | os.PathLike[str],
                       pieces: Sequence[str]) -> Trace:
    """A freshly built run given only ``pieces`` of ``checkpoint``'s state (the rest as a new
    process would have it), trained to the end. Without ``progress`` the counters start over
    at 0 (and so does the run, to ``total_timesteps``)."""
    unknown = sorted(set(pieces) - set(PIECES))
    if unknown:
        raise CkptlabError(f"unknown pieces {unknown}; choose from {list(PIECE_NAMES)}")
    _, states = load_checkpoint_state(checkpoint)
    model = build_model(spec)
    apply_state(model, states, Path(checkpoint).name, pieces=list(pieces))
    recorder = Recorder()
    model.learn(spec.total_timesteps - model.num_timesteps, reset_num_timesteps=False,
                callback=recorder)
    return recorder.trace


class ResumeLab:
    """The lesson's live control. ``render(kill_at, **pieces)`` resumes from the newest
    checkpoint at or before ``kill_at`` - the one a run killed there leaves, since a killed
    run's checkpoints are the uninterrupted run's (the lesson's kill shows it) - with the
    ticked pieces, and draws it over the uninterrupted run.

    Keeps its own copy of the uninterrupted run's checkpoints, so the lesson may delete its
    folders and the control still works after "Run all" (the copy goes with the kernel)."""

    def __init__(self, spec: RunSpec, reference_run: str | os.PathLike[str],
                 reference: Trace) -> None:
        self.spec, self.reference = spec, reference
        self._scratch = tempfile.TemporaryDirectory(prefix="ckptlab-lesson11-control-")
        self.directory = Path(self._scratch.name)
        for saved in sorted(checkpoint_directory(reference_run).glob("step_*")):
            shutil.copytree(saved, self.directory / saved.name)
        self.last_identical: bool | None = None  # the last render's verdict (for asserts)

    def close(self) -> None:
        """Remove the copied checkpoints now (otherwise when the kernel stops)."""
        self._scratch.cleanup()

    def checkpoint_for(self, kill_at: int) -> Path:
        kill_at = check_kill_at(self.spec, kill_at)
        saved = [p for p in sorted(self.directory.glob("step_*")) if int(p.name[5:]) <= kill_at]
        return saved[-1]

    def run(self, kill_at: int, pieces: Sequence[str]) -> tuple[Path, Trace]:
        checkpoint = self.checkpoint_for(kill_at)
        return checkpoint, resume_with_pieces(self.spec, checkpoint, pieces)

    def render(self, kill_at: int, **ticked: bool) -> list[Any]:
        pieces = [p for p in PIECE_NAMES if ticked.get(p, False)]
        checkpoint, trace = self.run(kill_at, pieces)
        saved_at = int(checkpoint.name[5:])
        missing = [p for p in PIECE_NAMES if p not in pieces]
        label = "all pieces" if not missing else "without " + ", ".join(missing)
        restarted = trace.steps[0] != saved_at
        if restarted:  # the counters began again at 0: draw it from where it resumed
            trace = _shifted(trace, saved_at, self.spec.total_timesteps)
        steps, gaps = distances(self.reference, trace)
        same = bool(gaps) and max(gaps) == 0.0
        self.last_identical = same and _same_returns(self.reference, trace)
        verdict = ("identical to the uninterrupted run: the same policy and the same logged "
                   "returns at every rollout" if same and _same_returns(self.reference, trace)
                   else "the same policy, but other logged returns" if same
                   else f"another run: its policy ends {gaps[-1]:.3g} away from the "
                        "uninterrupted run's")
        if restarted:
            verdict += (f" (the counters started over at 0, so SB3 trained all "
                        f"{self.spec.total_timesteps} timesteps again; drawn from the resume)")
        fig = plot_resumed(self.reference, {label: trace}, saved_at=saved_at, killed_at=kill_at,
                           title=f"killed at timestep {kill_at}, resumed from the checkpoint "
                                 f"at {saved_at}, {label}")
        return [fig, f"{label}: {verdict}."]


def _shifted(trace: Trace, start: int, total: int) -> Trace:
    """``trace`` as if its first boundary were at ``start`` (cut at ``total``)."""
    offset = start - trace.steps[0]
    keep = [i for i, step in enumerate(trace.steps) if step + offset <= total]
    return Trace([trace.steps[i] + offset for i in keep], [trace.params[i] for i in keep],
                 [trace.ep_rew_mean[i] for i in keep])


def _same_returns(reference: Trace, trace: Trace) -> bool:
    for step, value in zip(trace.steps, trace.ep_rew_mean):
        i = reference.at(step)
        if i is not None and not (value == reference.ep_rew_mean[i]
                                  or (math.isnan(value) and math.isnan(reference.ep_rew_mean[i]))):
            return False
    return True


def resume_controls(spec: RunSpec, kill_at: int) -> dict[str, Any]:
    """The kill-timestep slider and one checkbox per piece (all ticked)."""
    import ipywidgets as widgets

    controls: dict[str, Any] = {"kill_at": widgets.IntSlider(
        value=kill_at, min=spec.save_every, max=spec.total_timesteps - spec.n_envs,
        step=spec.n_envs, description="kill at", continuous_update=False,
        style={"description_width": "initial"}, layout=widgets.Layout(width="420px"))}
    for piece in PIECE_NAMES:
        controls[piece] = widgets.Checkbox(value=True, description=piece, indent=False,
                                           layout=widgets.Layout(width="150px"))
    return controls


# -------------------------------------------------------------------------------------------
# The exercise: an environment of your own
# -------------------------------------------------------------------------------------------

class Glider(gym.Env):
    """A glider in a gusty wind - an environment ckptlab has never seen. The agent pushes left,
    not at all, or right to keep it near the middle; the wind drifts every step.

    Its future depends on its position, its velocity, the wind and its step count (an
    episode ends after 60 steps), and on its random generator, which ckptlab saves for any
    gymnasium environment.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Discrete(3)
    MAX_STEPS = 60

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(-0.5, 0.5))
        self.velocity = 0.0
        self.wind = float(self.np_random.normal(0.0, 0.3))
        self.steps = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.wind = 0.9 * self.wind + 0.1 * float(self.np_random.normal())
        self.velocity = 0.9 * self.velocity + 0.05 * (int(action) - 1) + 0.03 * self.wind
        self.position += self.velocity
        self.steps += 1
        crashed = abs(self.position) > 2.0
        return (self._observation(), 1.0 - abs(self.position), crashed,
                self.steps >= self.MAX_STEPS, {})

    def _observation(self) -> np.ndarray:
        return np.array([self.position, self.velocity, self.wind], dtype=np.float32)


def _glider_model(env_class: type) -> Any:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(env_class, n_envs=2, seed=0)
    return PPO("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
               policy_kwargs={"net_arch": [16]})


class _StopAt(BaseCallback):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        return self.model.num_timesteps < self.step


def glider_resume_differences(env_class: type, directory: str | os.PathLike[str], *,
                              total: int = 640, stop_at: int = 330) -> list[str]:
    """Train a PPO on ``env_class`` (2 environments) straight to ``total``, and again stopped
    after ``stop_at`` and resumed by the same code; the paths where the two final states
    differ (empty: the resume was exact). Refusals (a missing ``get_state``) are raised."""
    directory = Path(directory)
    straight, stopped = directory / "straight", directory / "stopped"
    every = 128
    _glider_model(env_class).learn(total, callback=CkptlabCallback(
        straight, save_every_steps=every, verbose=0, handle_signals=False))
    _glider_model(env_class).learn(total, callback=CallbackList([CkptlabCallback(
        stopped, save_every_steps=every, verbose=0, handle_signals=False), _StopAt(stop_at)]))
    _glider_model(env_class).learn(total, callback=CkptlabCallback(
        stopped, save_every_steps=every, verbose=0, handle_signals=False))
    name = sorted(checkpoint_directory(straight).glob("step_*"))[-1].name
    return [path for c in compare_runs(checkpoint_directory(straight) / name,
                                       checkpoint_directory(stopped) / name)
            for path in c.differing]


def lesson_workdir() -> Path:
    """The lesson's temporary folder (named ``ckptlab-lesson11-*``, removed at its end)."""
    return Path(tempfile.mkdtemp(prefix="ckptlab-lesson11-"))


__all__ = ["LESSON_HYPERPARAMETERS", "METHODS", "PIECE_NAMES", "ON_POLICY_NEEDS", "Trace",
           "Recorder", "KilledRun", "lesson_spec", "rollout_size", "train_uninterrupted",
           "run_and_kill", "check_kill_at", "resume_one_way", "resume_three_ways",
           "distances", "three_ways_table", "plot_resumed", "pieces_brought_back",
           "contents_table", "resume_with_pieces", "ResumeLab", "resume_controls", "Glider",
           "glider_resume_differences", "lesson_workdir"]
