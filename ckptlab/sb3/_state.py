"""A Stable-Baselines3 run's complete training state, as ckptlab components.

SB3's own ``save()`` writes the policy, the optimizer and the algorithm's attributes into a
zip of pickles; it leaves out every random generator, the environments mid-episode,
``VecNormalize``'s statistics and the replay buffer (separate pickles), and its ``load()``
resets the environments. The components here hold all of it, pickle-free:

=====================  ========================================================================
``policy``             the policy's networks (for DQN: online and target Q-networks)
``policy.optimizer``   the optimizer's state (one component per optimizer SB3 saves)
``progress``           ``num_timesteps``, ``_n_updates``, ``_episode_num``, the progress of the
                       schedules against the original total, DQN's ``_n_calls`` and
                       ``exploration_rate``; the hyperparameters (checked on resume, not loaded)
``envs``               every sub-environment mid-episode, the VecEnv's buffers, every space's
                       generator, the observation the agent acts on next
``normalization``      ``VecNormalize``'s running statistics and discounted returns (if used)
``episode_stats``      SB3's episode-info and success buffers (what ``rollout/ep_rew_mean`` logs)
``rng``                Python's, numpy's and torch's global generators (and CUDA's): SB3 samples
                       actions from torch's, DQN explores and both shuffle batches with numpy's
``replay_buffer``      the stored transitions and write position (off-policy algorithms)
=====================  ========================================================================

An on-policy run (PPO, A2C) is saved at a rollout boundary - after the update, before the
next rollout's first step - where its rollout buffer is empty. SB3 keeps a rollout's position
in a local variable of ``collect_rollouts`` and clears the buffer on entry, so a half-collected
rollout could not be re-entered without replacing SB3's loop; at a boundary nothing is lost
but the rollout in progress (``n_steps * n_envs`` steps, usually seconds).
"""

from __future__ import annotations

import copy
import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr

from ..engine import CkptlabError, GlobalRNG, IncompatibleCheckpointError, Stateful
from . import _envs
from ._envs import WALL_CLOCK


class UnsupportedRunError(CkptlabError):
    """A Stable-Baselines3 setting whose state ckptlab cannot capture exactly (yet)."""


# Attributes that change as a run trains, restored from the checkpoint. Any other attribute
# is a setting: compared on resume, never loaded (a difference is refused, or allowed on
# request), so an attribute this list misses is refused, never silently dropped.
COUNTERS = ("num_timesteps", "_total_timesteps", "_episode_num", "_n_updates",
            "_current_progress_remaining", "_n_calls", "exploration_rate")
# Attributes that are neither state nor settings: wall-clock, logging, placement, and the
# objects that other components hold.
_NOT_SETTINGS = frozenset({
    "start_time", "_num_timesteps_at_start", "_custom_logger", "_logger", "verbose",
    "tensorboard_log", "device", "_last_obs", "_last_episode_starts", "_last_original_obs",
    "ep_info_buffer", "ep_success_buffer", "env", "_vec_normalize_env", "policy",
    "replay_buffer", "rollout_buffer", "action_noise", "_ckptlab_restored_from",
})
NOT_COMPARED = "<not compared>"


def describe_setting(value: Any) -> Any:
    """A JSON value standing for a setting, equal for equal settings across processes."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (torch.Tensor, np.ndarray, torch.nn.Module, torch.optim.Optimizer)):
        return NOT_COMPARED
    if isinstance(value, (list, tuple)):
        return [describe_setting(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe_setting(v) for k, v in value.items()}
    if isinstance(value, gym.Space):
        return repr(value)
    text = repr(value)
    return NOT_COMPARED if " at 0x" in text else text  # a lambda's repr changes every run


def settings_of(model: BaseAlgorithm) -> dict[str, Any]:
    """The model's settings (hyperparameters, spaces, classes), described comparably."""
    return {name: describe_setting(value) for name, value in sorted(vars(model).items())
            if name not in COUNTERS and name not in _NOT_SETTINGS}


def _same(a: Any, b: Any) -> bool:
    if a == NOT_COMPARED or b == NOT_COMPARED:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def setting_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for every setting that differs."""
    return [f"{name}: {_short(saved.get(name, '<absent>'))} -> "
            f"{_short(current.get(name, '<absent>'))}"
            for name in sorted(set(saved) | set(current))
            if name not in saved or name not in current or not _same(saved[name], current[name])]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_supported(model: BaseAlgorithm, stateless_wrappers: Sequence[type] = ()) -> None:
    """Refuse, before any training, what ckptlab cannot capture exactly."""
    if not isinstance(model, (OnPolicyAlgorithm, OffPolicyAlgorithm)):
        raise UnsupportedRunError(
            f"{type(model).__name__} is neither an on-policy nor an off-policy SB3 algorithm; "
            "ckptlab.sb3 checkpoints PPO, A2C, DQN, SAC and TD3")
    if model.env is None:
        raise UnsupportedRunError("the model has no environment; build it with one")
    if getattr(model, "use_sde", False):
        raise UnsupportedRunError(
            f"{type(model).__name__}(use_sde=True) is not supported: gSDE redraws its noise "
            "matrix from torch's generator before each rollout's first step, ahead of any "
            "point a checkpoint can be taken at; train with use_sde=False")
    if model.action_noise is not None:
        raise UnsupportedRunError(
            f"action noise ({type(model.action_noise).__name__}) is not captured yet; "
            "ckptlab.sb3 checkpoints runs without action_noise")
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None and type(buffer).__name__ not in ("ReplayBuffer", "DictReplayBuffer"):
        raise UnsupportedRunError(
            f"the replay buffer {type(buffer).__name__} is not supported; ckptlab.sb3 "
            "captures ReplayBuffer and DictReplayBuffer")
    _envs.check_vec_env(model.env, stateless_wrappers)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------

class TorchPart:
    """One of the torch objects SB3's own save writes (``policy``, ``policy.optimizer``,
    ``actor.optimizer``, ...), found by the same dotted name."""

    def __init__(self, model: BaseAlgorithm, name: str) -> None:
        self.model, self.name = model, name

    def state_dict(self) -> dict[str, Any]:
        return recursive_getattr(self.model, self.name).state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        target = recursive_getattr(self.model, self.name)
        if isinstance(target, torch.optim.Optimizer):
            # An optimizer adopts the given tensors and then updates them in place: a copy
            # keeps the decoded state reusable (the lessons restore one state several times).
            state = copy.deepcopy(state)
        target.load_state_dict(state)

    def check(self, state: Mapping[str, Any]) -> None:
        target = recursive_getattr(self.model, self.name)
        if isinstance(target, torch.nn.Module):
            mine = {k: tuple(v.shape) for k, v in target.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in state.items()}
            if mine != theirs:
                differing = sorted(set(mine) ^ set(theirs)) or \
                    [k for k in mine if mine[k] != theirs[k]]
                raise IncompatibleCheckpointError(
                    f"the {self.name} network differs from the checkpoint's (first difference: "
                    f"{differing[0]}); build the model with the same policy and net_arch")


class TorchVariables:
    """Torch tensors SB3 saves by name besides state dicts (SAC's ``log_ent_coef``)."""

    def __init__(self, model: BaseAlgorithm, names: Sequence[str]) -> None:
        self.model, self.names = model, list(names)

    def state_dict(self) -> dict[str, Any]:
        return {name: recursive_getattr(self.model, name).detach().clone()
                for name in self.names}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for name in self.names:
                recursive_getattr(self.model, name).copy_(state[name])

    def check(self, state: Mapping[str, Any]) -> None:
        if sorted(state) != sorted(self.names):
            raise IncompatibleCheckpointError(
                f"the checkpoint holds the torch variables {sorted(state)}, this model has "
                f"{sorted(self.names)}")


class Progress:
    """Counters and schedule progress (restored), and the settings (compared)."""

    def __init__(self, model: BaseAlgorithm, allow_config_change: bool = False) -> None:
        self.model, self.allow_config_change = model, allow_config_change

    def state_dict(self) -> dict[str, Any]:
        model = self.model
        state: dict[str, Any] = {
            "algorithm": type(model).__name__,
            "counters": {name: getattr(model, name) for name in COUNTERS if hasattr(model, name)},
            "settings": settings_of(model),
        }
        if isinstance(model, OnPolicyAlgorithm):
            # Saved between rollouts: the rollout buffer is empty, no step of the next one taken.
            state["rollout"] = {"collected_steps": 0, "n_steps": model.n_steps}
        return state

    def check(self, state: Mapping[str, Any]) -> None:
        name = type(self.model).__name__
        if state["algorithm"] != name:
            raise IncompatibleCheckpointError(
                f"the checkpoint is of a {state['algorithm']} run, this model is a {name}")
        missing = [c for c in state["counters"] if not hasattr(self.model, c)]
        if missing:
            raise IncompatibleCheckpointError(
                f"this {name} has no {', '.join(missing)}; the checkpoint was written by another "
                "version of Stable-Baselines3")
        changes = setting_changes(state["settings"], settings_of(self.model))
        if changes and not self.allow_config_change:
            raise IncompatibleCheckpointError(
                "the model is built differently from the interrupted run's (" + "; ".join(changes)
                + "); resuming would not continue that run. Build it as the run was built, or "
                "pass allow_config_change=True to continue with the new settings")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state["counters"].items():
            current = getattr(self.model, name)
            setattr(self.model, name, type(current)(value) if isinstance(current, (int, float))
                    and not isinstance(current, bool) else value)


class Envs:
    """The vectorised environment mid-episode, every space's generator, and the observation
    the agent acts on next (``_last_obs``, ``_last_episode_starts``, ``_last_original_obs``)."""

    def __init__(self, model: BaseAlgorithm) -> None:
        self.model = model

    def _spaces(self) -> list[gym.Space]:
        model = self.model
        return _envs.reachable_spaces([model.action_space, model.observation_space], model.env)

    def state_dict(self) -> dict[str, Any]:
        model = self.model
        return {"vec_env": _envs.capture_vec_env(model.env),
                "spaces": _envs.capture_spaces(self._spaces()),
                "last_obs": _copy(model._last_obs),
                "last_episode_starts": _copy(model._last_episode_starts),
                "last_original_obs": _copy(model._last_original_obs)}

    def check(self, state: Mapping[str, Any]) -> None:
        _envs.check_vec_state(self.model.env, state["vec_env"])
        _envs.check_spaces(self._spaces(), state["spaces"])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        model = self.model
        _envs.restore_vec_env(model.env, state["vec_env"])
        _envs.restore_spaces(self._spaces(), state["spaces"])
        model._last_obs = _copy(state["last_obs"])
        model._last_episode_starts = _copy(state["last_episode_starts"])
        model._last_original_obs = _copy(state["last_original_obs"])


class Normalization:
    """``VecNormalize``'s running statistics, discounted returns and last raw values."""

    def __init__(self, venv: Any) -> None:
        self.venv = venv

    def state_dict(self) -> dict[str, Any]:
        return _envs.normalization_state(self.venv)

    def check(self, state: Mapping[str, Any]) -> None:
        _envs.check_normalization(self.venv, state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _envs.load_normalization(self.venv, state)


class EpisodeStats:
    """SB3's windows of recent episode infos and successes (``rollout/ep_rew_mean``)."""

    def __init__(self, model: BaseAlgorithm) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        infos = list(self.model.ep_info_buffer or [])
        split = [_envs.split_infos([{"episode": info}]) for info in infos]
        return {"ep_info_buffer": {"entries": [s["entries"][0]["episode"] for s in split],
                                   WALL_CLOCK: [s[WALL_CLOCK][0] for s in split]},
                "ep_success_buffer": [bool(x) for x in (self.model.ep_success_buffer or [])],
                "initialized": self.model.ep_info_buffer is not None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        model = self.model
        if not state["initialized"]:
            model.ep_info_buffer = model.ep_success_buffer = None
            return
        saved = state["ep_info_buffer"]
        infos = _envs.join_infos({"entries": [{"episode": e} for e in saved["entries"]],
                                  WALL_CLOCK: saved[WALL_CLOCK]})
        window = model._stats_window_size
        model.ep_info_buffer = deque((info["episode"] for info in infos), maxlen=window)
        model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=window)


_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones",
                  "timeouts")


class ReplayBufferState:
    """An off-policy run's stored transitions (only the rows written) and write position."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def _rows(self) -> int:
        return self.buffer.buffer_size if self.buffer.full else self.buffer.pos

    def state_dict(self) -> dict[str, Any]:
        buffer, rows = self.buffer, self._rows()
        arrays: dict[str, Any] = {}
        for name in _BUFFER_ARRAYS:
            value = getattr(buffer, name, None)
            if isinstance(value, Mapping):
                arrays[name] = {key: np.array(v[:rows]) for key, v in value.items()}
            elif value is not None:
                arrays[name] = np.array(value[:rows])
        return {"class": type(buffer).__name__, "buffer_size": buffer.buffer_size,
                "n_envs": buffer.n_envs, "pos": buffer.pos, "full": buffer.full,
                "optimize_memory_usage": buffer.optimize_memory_usage, "arrays": arrays}

    def check(self, state: Mapping[str, Any]) -> None:
        buffer = self.buffer
        mine = (type(buffer).__name__, buffer.buffer_size, buffer.n_envs,
                buffer.optimize_memory_usage)
        theirs = (state["class"], state["buffer_size"], state["n_envs"],
                  state["optimize_memory_usage"])
        if mine != theirs:
            raise IncompatibleCheckpointError(
                f"the replay buffer differs from the checkpoint's ((class, size per env, envs, "
                f"optimize_memory_usage): {theirs} -> {mine})")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        buffer = self.buffer
        for name, saved in state["arrays"].items():
            target = getattr(buffer, name)
            if isinstance(saved, Mapping):
                for key, rows in saved.items():
                    target[key][:len(rows)] = rows
            else:
                target[:len(saved)] = saved
        buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])


def _copy(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: np.array(v) for key, v in value.items()}
    return np.array(value)


# --------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------

#: The component names, in the order they are restored.
PIECES = ("policy", "progress", "envs", "normalization", "episode_stats", "rng",
          "replay_buffer")


def run_components(model: BaseAlgorithm, *,
                   allow_config_change: bool = False) -> dict[str, Stateful]:
    """Every component of ``model``'s training state, by name (see the module docstring)."""
    state_dicts, variables = model._get_torch_save_params()
    components: dict[str, Stateful] = {name: TorchPart(model, name) for name in state_dicts}
    if variables:
        components["torch_variables"] = TorchVariables(model, variables)
    components["progress"] = Progress(model, allow_config_change)
    components["envs"] = Envs(model)
    venv = _envs.find_vec_normalize(model.env)
    if venv is not None:
        components["normalization"] = Normalization(venv)
    components["episode_stats"] = EpisodeStats(model)
    components["rng"] = GlobalRNG()
    if isinstance(model, OffPolicyAlgorithm):
        components["replay_buffer"] = ReplayBufferState(model.replay_buffer)
    return components


def piece_of(component: str) -> str:
    """The piece (see :data:`PIECES`) a component belongs to: ``policy.optimizer`` and
    ``torch_variables`` are part of ``policy``."""
    if component in PIECES:
        return component
    return "policy"


def apply_state(model: BaseAlgorithm, states: Mapping[str, Any], source: str, *,
                allow_config_change: bool = False,
                pieces: Sequence[str] | None = None) -> None:
    """Load a decoded checkpoint into ``model``: every component is checked against the
    model before anything is loaded, so a refused checkpoint leaves the model untouched.

    ``pieces`` restores only some pieces (the lessons' experiments; a real resume restores
    all). Raises :class:`IncompatibleCheckpointError` naming what does not fit.
    """
    components = run_components(model, allow_config_change=allow_config_change)
    missing = [name for name in components if name not in states]
    extra = [name for name in states if name not in components]
    if missing or extra:
        raise IncompatibleCheckpointError(
            f"{source} does not fit this run: "
            + "; ".join(filter(None, [
                f"it lacks {', '.join(missing)}" if missing else "",
                f"it has {', '.join(extra)} that this run does not" if extra else ""]))
            + " (a VecNormalize or a replay buffer added or removed?)")
    if pieces is not None:
        unknown = sorted(set(pieces) - set(PIECES))
        if unknown:
            raise CkptlabError(f"unknown pieces {unknown}; choose from {list(PIECES)}")
    chosen = {name: c for name, c in components.items()
              if pieces is None or piece_of(name) in pieces}
    for name, component in chosen.items():
        check = getattr(component, "check", None)
        if check is not None:
            check(states[name])
    for name, component in chosen.items():
        component.load_state_dict(states[name])
    model._ckptlab_restored_from = source  # read (and cleared) by CkptlabCallback


__all__ = ["UnsupportedRunError", "COUNTERS", "PIECES", "run_components", "apply_state",
           "check_supported", "settings_of", "setting_changes", "piece_of"]
