"""Environments: creation, mid-episode snapshots, the training-env runner, greedy evaluation.

Other libraries reset the environment when they resume, so the resumed run starts a new episode
the uninterrupted run never saw. ckptlab snapshots the environment mid-episode instead: its
physical state, its RNG, the time-limit counter and the wrapper flags, plus (in
:class:`EnvRunner`) the current observation and the running episode return.

Introduced in notebook ``05_what_goes_in_a_checkpoint`` (what resetting the env breaks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from ..engine import CkptlabError, IncompatibleCheckpointError


class UnsupportedEnvironmentError(CkptlabError):
    """An environment ckptlab cannot train on or cannot snapshot mid-episode."""


# Per-episode attributes of classic-control environments besides ``state``.
_EPISODE_ATTRS = ("steps_beyond_terminated", "last_u")
# Per-episode attributes of the standard wrappers gym.make adds.
_WRAPPER_ATTRS = ("_elapsed_steps", "_has_reset")


def make_env(env_id: str) -> gym.Env:
    """Create a gymnasium environment suitable for DQN, or explain why it is not.

    Raises:
        UnsupportedEnvironmentError: unknown id, continuous actions, or non-vector observations.
    """
    try:
        env = gym.make(env_id, disable_env_checker=True)
    except gym.error.Error as exc:
        raise UnsupportedEnvironmentError(
            f"cannot create environment {env_id!r} ({exc}); try CartPole-v1, Acrobot-v1 or "
            "MountainCar-v0") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise UnsupportedEnvironmentError(
            f"{env_id} has {type(env.action_space).__name__} actions; DQN needs a discrete "
            "action space (try CartPole-v1, Acrobot-v1 or MountainCar-v0)")
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        env.close()
        raise UnsupportedEnvironmentError(
            f"{env_id} observations are {space}; ckptlab's MLP needs a 1-D Box observation")
    return env


def _wrapper_chain(env: gym.Env) -> list[Any]:
    chain, layer = [], env
    while True:
        chain.append(layer)
        if not hasattr(layer, "env"):
            return chain
        layer = layer.env


def capture_env_state(env: gym.Env) -> dict[str, Any]:
    """Everything that decides an environment's future, without pickle.

    Supports environments whose unwrapped class keeps its dynamics in ``state`` (gymnasium's
    classic-control family) and any environment that implements ``get_state()`` /
    ``set_state(state)`` returning checkpointable values.
    """
    core = env.unwrapped
    if hasattr(core, "get_state") and hasattr(core, "set_state"):
        physical: dict[str, Any] = {"custom": core.get_state()}
    elif hasattr(core, "state"):
        state = core.state
        physical = {"state": None if state is None else np.array(state, dtype=np.float64)}
        physical.update({a: getattr(core, a) for a in _EPISODE_ATTRS if hasattr(core, a)})
    else:
        raise UnsupportedEnvironmentError(
            f"cannot snapshot {env.spec.id if env.spec else type(core).__name__} mid-episode: "
            "it has no 'state' attribute; give its class get_state()/set_state() methods")
    rng = core._np_random  # None until the first seeded reset
    return {
        "wrappers": [type(layer).__name__ for layer in _wrapper_chain(env)],
        "wrapper_attrs": [{a: getattr(layer, a) for a in _WRAPPER_ATTRS if hasattr(layer, a)}
                          for layer in _wrapper_chain(env)],
        "physical": physical,
        "np_random": None if rng is None else rng.bit_generator.state,
        "np_random_seed": getattr(core, "_np_random_seed", None),
    }


def restore_env_state(env: gym.Env, saved: Mapping[str, Any]) -> None:
    """Put ``env`` back into the exact state :func:`capture_env_state` recorded."""
    chain = _wrapper_chain(env)
    names = [type(layer).__name__ for layer in chain]
    if names != list(saved["wrappers"]):
        raise IncompatibleCheckpointError(
            f"environment wrappers differ: checkpoint has {' > '.join(saved['wrappers'])}, "
            f"this env has {' > '.join(names)}")
    for layer, attrs in zip(chain, saved["wrapper_attrs"]):
        for name, value in attrs.items():
            setattr(layer, name, value)
    core, physical = env.unwrapped, saved["physical"]
    if "custom" in physical:
        core.set_state(physical["custom"])
    else:
        state = physical["state"]
        core.state = None if state is None else np.array(state, dtype=np.float64)
        for name in _EPISODE_ATTRS:
            if name in physical:
                setattr(core, name, physical[name])
    if saved["np_random"] is None:
        core._np_random = None
    else:
        bit_generator = getattr(np.random, saved["np_random"]["bit_generator"])()
        bit_generator.state = saved["np_random"]
        core._np_random = np.random.Generator(bit_generator)
    if saved["np_random_seed"] is not None:
        core._np_random_seed = saved["np_random_seed"]


@dataclass
class StepResult:
    """What one environment step produced, for the training loop."""

    obs: np.ndarray
    action: int
    reward: float
    next_obs: np.ndarray
    terminated: bool
    episode_done: bool


class EnvRunner:
    """The training environment plus the episode in progress; a checkpointable component.

    The first episode is reset with ``seed``; later episodes continue the env's own RNG, which
    is saved, so every episode after a resume starts where the uninterrupted run's did.
    """

    def __init__(self, env_id: str, seed: int) -> None:
        self.env_id, self.seed = env_id, seed
        self.env = make_env(env_id)
        self.obs: np.ndarray | None = None  # None: an episode must be started
        self.episode_return = 0.0
        self.episode_length = 0
        self.episodes_started = 0

    @property
    def obs_dim(self) -> int:
        return int(self.env.observation_space.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.env.action_space.n)

    def current_obs(self) -> np.ndarray:
        """The observation the agent acts on next, starting a new episode if needed."""
        if self.obs is None:
            seed = self.seed if self.episodes_started == 0 else None
            self.obs, _ = self.env.reset(seed=seed)
            self.episodes_started += 1
            self.episode_return, self.episode_length = 0.0, 0
        return self.obs

    def step(self, action: int) -> StepResult:
        obs = self.current_obs()
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.episode_return += float(reward)
        self.episode_length += 1
        done = bool(terminated or truncated)
        self.obs = None if done else next_obs
        return StepResult(obs, action, float(reward), next_obs, bool(terminated), done)

    def state_dict(self) -> dict[str, Any]:
        return {"env_id": self.env_id, "env": capture_env_state(self.env), "obs": self.obs,
                "episode_return": self.episode_return, "episode_length": self.episode_length,
                "episodes_started": self.episodes_started}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["env_id"] != self.env_id:
            raise IncompatibleCheckpointError(
                f"the checkpoint's environment is {state['env_id']}, this run's is "
                f"{self.env_id}; use --env {state['env_id']} or a new run directory")
        restore_env_state(self.env, state["env"])
        obs = state["obs"]
        self.obs = None if obs is None else np.array(obs, dtype=self.env.observation_space.dtype)
        self.episode_return = float(state["episode_return"])
        self.episode_length = int(state["episode_length"])
        self.episodes_started = int(state["episodes_started"])

    def close(self) -> None:
        self.env.close()


@dataclass(frozen=True)
class Evaluation:
    """Greedy evaluation results at one training step."""

    step: int
    returns: tuple[float, ...]
    reached_time_limit: tuple[bool, ...]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def success_rate(self) -> float:
        """Fraction of episodes that survived to the time limit (CartPole: 500 steps)."""
        return float(np.mean(self.reached_time_limit))


class GreedyEvaluator:
    """Runs greedy episodes in lockstep (one batched forward pass per step).

    Its environments and seeds are its own — derived from ``(seed, step)`` — so evaluating at
    any cadence never changes the course of training and needs no checkpointed state.
    """

    def __init__(self, env_id: str, episodes: int, seed: int) -> None:
        self.envs = [make_env(env_id) for _ in range(episodes)]
        self.seed = seed

    def evaluate(self, policy: Any, step: int) -> Evaluation:
        """``policy(obs_batch) -> actions`` is called on the still-running episodes."""
        seeds = np.random.SeedSequence([self.seed, 0xE7A1, step]).generate_state(len(self.envs))
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self.envs, seeds)]
        returns = [0.0] * len(self.envs)
        survived = [False] * len(self.envs)
        running = list(range(len(self.envs)))
        while running:
            actions = policy(np.stack([obs[i] for i in running]))
            still = []
            for i, action in zip(running, actions):
                obs[i], reward, terminated, truncated, _ = self.envs[i].step(int(action))
                returns[i] += float(reward)
                if terminated or truncated:
                    survived[i] = bool(truncated and not terminated)
                else:
                    still.append(i)
            running = still
        return Evaluation(step, tuple(returns), tuple(survived))

    def close(self) -> None:
        for env in self.envs:
            env.close()
