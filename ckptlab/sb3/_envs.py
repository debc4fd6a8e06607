"""The vectorised environment of a Stable-Baselines3 run, captured and restored exactly.

What decides the future of an SB3 ``VecEnv`` besides the agent:

* each sub-environment mid-episode: its physical state, its RNG, the time-limit counter, the
  order-enforcing flag (all through :func:`ckptlab.dqn.envs.capture_env_state`) and SB3's
  ``Monitor`` (the running episode's rewards, the finished episodes' returns and lengths);
* the ``DummyVecEnv`` itself: its observation, reward, done and info buffers, the last actions,
  and the seeds and options waiting for the next ``reset()``;
* every action and observation space's own generator (DQN explores with
  ``action_space.sample()``);
* the vectorised wrappers: ``VecNormalize``'s running statistics and discounted returns
  (kept apart, as the ``normalization`` component), ``VecMonitor``'s counters.

``DummyVecEnv`` resets a finished sub-environment inside the same ``step`` (the terminal
observation goes into that step's infos), so between two steps no reset is ever pending: the
state is the new episode's, plus the infos that carried the old one's end.

Nothing is approximated. A wrapper or an environment this module does not know is refused,
by name, unless it implements the small protocol ``get_state() -> state`` and
``set_state(state)`` (checkpointable values: numbers, strings, arrays, lists, dicts), or is
declared stateless by the caller. Wall-clock values (``Monitor``'s start time and episode times,
the ``t`` of SB3's episode infos) are kept under keys named ``wall_clock``: they differ between
any two runs, so comparisons skip them (see :data:`WALL_CLOCK`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from ..dqn.envs import UnsupportedEnvironmentError, capture_env_state, restore_env_state
from ..engine import CkptlabError, IncompatibleCheckpointError

#: The key under which wall-clock values are stored; comparisons of two runs skip it.
WALL_CLOCK = "wall_clock"

# gymnasium wrappers whose every attribute is set once in __init__ (nothing changes per step).
_STATELESS_GYM_WRAPPERS = frozenset({
    "FlattenObservation", "ClipAction", "RescaleAction", "TransformObservation",
    "TransformReward", "TransformAction", "DtypeObservation", "ReshapeObservation",
    "RescaleObservation", "FilterObservation", "ClipReward",
})
# Standard wrappers whose per-episode state capture_env_state records (_elapsed_steps,
# _has_reset), or that only check the API once (PassiveEnvChecker: its flags are kept below).
_RECORDED_GYM_WRAPPERS = frozenset({"TimeLimit", "OrderEnforcing", "PassiveEnvChecker"})
_CHECKER_FLAGS = ("checked_reset", "checked_step", "checked_render", "checked_data_reuse")
_STATELESS_VEC_WRAPPERS = (VecTransposeImage, VecCheckNan, VecExtractDictObs)
# gymnasium's own environments whose dynamics live in ``state`` (what capture_env_state reads).
_STATE_ATTRIBUTE_MODULE = "gymnasium.envs.classic_control"


def has_state_protocol(obj: Any) -> bool:
    """Whether ``obj``'s class implements ``get_state()`` and ``set_state(state)``."""
    cls = type(obj)
    return callable(getattr(cls, "get_state", None)) and callable(getattr(cls, "set_state", None))


def _env_label(env: gym.Env, index: int | None = None) -> str:
    core = env.unwrapped
    spec = getattr(env, "spec", None) or getattr(core, "spec", None)
    name = spec.id if spec is not None else f"{type(core).__module__}.{type(core).__name__}"
    return name if index is None else f"sub-environment {index} ({name})"


# --------------------------------------------------------------------------------------------
# Spaces: each one's generator
# --------------------------------------------------------------------------------------------

def _rng_state(generator: np.random.Generator | None) -> dict[str, Any] | None:
    return None if generator is None else generator.bit_generator.state


def _rng_from_state(state: Mapping[str, Any] | None) -> np.random.Generator | None:
    if state is None:
        return None
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = dict(state)
    return np.random.Generator(bit_generator)


def _space_tree(space: gym.Space) -> list[gym.Space]:
    """``space`` and every sub-space of a composite one, depth first."""
    found = [space]
    children = getattr(space, "spaces", None)
    if isinstance(children, Mapping):
        children = list(children.values())
    if isinstance(children, (list, tuple)):
        for child in children:
            if isinstance(child, gym.Space):
                found += _space_tree(child)
    return found


def reachable_spaces(model_spaces: Iterable[gym.Space], venv: VecEnv) -> list[gym.Space]:
    """Every distinct space object a run can sample from, in a fixed order: the model's, each
    vectorised layer's, then each sub-environment's (every wrapper layer, then the core).
    The same code building the same run gives the same list (and the same aliasing)."""
    candidates: list[gym.Space] = list(model_spaces)
    for layer in vec_chain(venv):
        candidates += [layer.action_space, layer.observation_space]
    base = vec_chain(venv)[-1]
    for env in getattr(base, "envs", []):
        for layer in _gym_chain(env):
            for name in ("_action_space", "_observation_space", "action_space",
                         "observation_space"):
                value = layer.__dict__.get(name)
                if isinstance(value, gym.Space):
                    candidates.append(value)
    seen: set[int] = set()
    spaces: list[gym.Space] = []
    for space in candidates:
        for member in _space_tree(space):
            if id(member) not in seen:
                seen.add(id(member))
                spaces.append(member)
    return spaces


def capture_spaces(spaces: Sequence[gym.Space]) -> dict[str, Any]:
    return {"kinds": [type(space).__name__ for space in spaces],
            "generators": [_rng_state(space._np_random) for space in spaces]}


def restore_spaces(spaces: Sequence[gym.Space], state: Mapping[str, Any]) -> None:
    for space, saved in zip(spaces, state["generators"]):
        space._np_random = _rng_from_state(saved)


def check_spaces(spaces: Sequence[gym.Space], state: Mapping[str, Any]) -> None:
    kinds = [type(space).__name__ for space in spaces]
    if kinds != list(state["kinds"]):
        raise IncompatibleCheckpointError(
            f"the run's action and observation spaces differ: the checkpoint has "
            f"{', '.join(state['kinds'])}, this run has {', '.join(kinds)}")


# --------------------------------------------------------------------------------------------
# One sub-environment: SB3's Monitor, gymnasium's wrappers, the core environment
# --------------------------------------------------------------------------------------------

def _gym_chain(env: gym.Env) -> list[Any]:
    chain, layer = [], env
    while True:
        chain.append(layer)
        if not isinstance(layer, gym.Wrapper):
            return chain
        layer = layer.env


def _split_episode_info(info: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
    """An SB3 episode info without its wall-clock ``t``, and the ``t``."""
    entry = dict(info)
    return entry, entry.pop("t", None)


def _join_episode_info(entry: Mapping[str, Any], t: float | None) -> dict[str, Any]:
    info = dict(entry)
    if t is not None:
        info["t"] = t
    return info


def split_infos(infos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Step infos, their episode summaries' wall-clock ``t`` kept apart."""
    entries, times = [], []
    for info in infos:
        entry = dict(info)
        t = None
        if isinstance(entry.get("episode"), Mapping):
            entry["episode"], t = _split_episode_info(entry["episode"])
        entries.append(entry)
        times.append(t)
    return {"entries": entries, WALL_CLOCK: times}


def join_infos(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    infos = []
    for entry, t in zip(state["entries"], state[WALL_CLOCK]):
        info = dict(entry)
        if t is not None:
            info["episode"] = _join_episode_info(info["episode"], t)
        infos.append(info)
    return infos


def _monitor_state(monitor: Monitor) -> dict[str, Any]:
    return {"rewards": list(monitor.rewards), "needs_reset": monitor.needs_reset,
            "episode_returns": list(monitor.episode_returns),
            "episode_lengths": list(monitor.episode_lengths),
            "total_steps": monitor.total_steps,
            "current_reset_info": dict(monitor.current_reset_info),
            WALL_CLOCK: {"t_start": monitor.t_start,
                         "episode_times": list(monitor.episode_times)}}


def _load_monitor(monitor: Monitor, state: Mapping[str, Any]) -> None:
    monitor.rewards = [float(r) for r in state["rewards"]]
    monitor.needs_reset = bool(state["needs_reset"])
    monitor.episode_returns = [float(r) for r in state["episode_returns"]]
    monitor.episode_lengths = [int(n) for n in state["episode_lengths"]]
    monitor.total_steps = int(state["total_steps"])
    monitor.current_reset_info = dict(state["current_reset_info"])
    monitor.t_start = float(state[WALL_CLOCK]["t_start"])
    monitor.episode_times = [float(t) for t in state[WALL_CLOCK]["episode_times"]]


def check_snapshottable(env: gym.Env, index: int,
                        stateless: Sequence[type] = ()) -> None:
    """Refuse, naming it, an environment or wrapper whose state ckptlab cannot capture."""
    chain = _gym_chain(env)
    for layer in chain[:-1]:
        name = type(layer).__name__
        known = (isinstance(layer, Monitor) or has_state_protocol(layer)
                 or isinstance(layer, tuple(stateless))
                 or (type(layer).__module__.startswith("gymnasium.")
                     and name in _STATELESS_GYM_WRAPPERS | _RECORDED_GYM_WRAPPERS))
        if not known:
            raise UnsupportedEnvironmentError(
                f"cannot checkpoint {_env_label(env, index)} exactly: its wrapper {name} "
                f"({type(layer).__module__}) may hold state ckptlab does not know. Give {name} "
                "get_state() and set_state(state) methods, or pass it in stateless_wrappers "
                "if it holds none")
    core = chain[-1]
    if has_state_protocol(core):
        return
    if type(core).__module__.startswith(_STATE_ATTRIBUTE_MODULE) and hasattr(core, "state"):
        return
    raise UnsupportedEnvironmentError(
        f"cannot checkpoint {_env_label(env, index)} mid-episode: ckptlab knows gymnasium's "
        f"classic-control environments, and {type(core).__module__}.{type(core).__name__} is "
        "not one. Give its class get_state() -> state and set_state(state) methods (numbers, "
        "strings, arrays, lists and dicts) that hold everything its future depends on")


def capture_sub_env(env: gym.Env) -> dict[str, Any]:
    """One sub-environment mid-episode (call :func:`check_snapshottable` first)."""
    layers = []
    for layer in _gym_chain(env)[:-1]:
        if isinstance(layer, Monitor):
            layers.append({"monitor": _monitor_state(layer)})
        elif has_state_protocol(layer):
            layers.append({"custom": layer.get_state()})
        elif type(layer).__name__ == "PassiveEnvChecker":
            layers.append({"checker": {f: getattr(layer, f) for f in _CHECKER_FLAGS
                                       if hasattr(layer, f)}})
        else:
            layers.append({})
    return {"layers": layers, "core": capture_env_state(env)}


def restore_sub_env(env: gym.Env, state: Mapping[str, Any]) -> None:
    restore_env_state(env, state["core"])  # checks the wrapper names first
    for layer, saved in zip(_gym_chain(env)[:-1], state["layers"]):
        if "monitor" in saved:
            _load_monitor(layer, saved["monitor"])
        elif "custom" in saved:
            layer.set_state(saved["custom"])
        elif "checker" in saved:
            for flag, value in saved["checker"].items():
                setattr(layer, flag, value)
            layer._previous_data = None  # only its API check compares it


# --------------------------------------------------------------------------------------------
# The vectorised environment and its wrappers
# --------------------------------------------------------------------------------------------

def vec_chain(venv: VecEnv) -> list[VecEnv]:
    """The vectorised wrappers from the outside in, ending with the base ``VecEnv``."""
    chain = [venv]
    while isinstance(chain[-1], VecEnvWrapper):
        chain.append(chain[-1].venv)
    return chain


def _rms_state(rms: RunningMeanStd | Mapping[str, RunningMeanStd]) -> Any:
    if isinstance(rms, Mapping):
        return {key: _rms_state(value) for key, value in rms.items()}
    return {"mean": np.array(rms.mean, dtype=np.float64), "var": np.array(rms.var),
            "count": np.float64(rms.count).reshape(())}


def _load_rms(rms: RunningMeanStd | Mapping[str, RunningMeanStd], state: Any) -> None:
    if isinstance(rms, Mapping):
        for key, value in rms.items():
            _load_rms(value, state[key])
        return
    rms.mean = np.array(state["mean"], dtype=np.float64)
    rms.var = np.array(state["var"], dtype=np.float64)
    rms.count = float(state["count"])


_VEC_NORMALIZE_SETTINGS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma",
                           "epsilon", "training", "norm_obs_keys")


def normalization_state(venv: VecNormalize) -> dict[str, Any]:
    """``VecNormalize``'s running statistics, discounted returns and last raw values."""
    settings = {name: getattr(venv, name) for name in _VEC_NORMALIZE_SETTINGS}
    if settings["norm_obs_keys"] is not None:
        settings["norm_obs_keys"] = list(settings["norm_obs_keys"])
    return {"obs_rms": _rms_state(venv.obs_rms) if venv.norm_obs else None,
            "ret_rms": _rms_state(venv.ret_rms), "returns": np.array(venv.returns),
            "old_obs": _copy_obs(getattr(venv, "old_obs", None)),
            "old_reward": np.array(venv.old_reward), "settings": settings}


def check_normalization(venv: VecNormalize, state: Mapping[str, Any]) -> None:
    current = normalization_state(venv)["settings"]
    saved = dict(state["settings"])
    changed = [f"{name}: {saved.get(name)!r} -> {current[name]!r}" for name in current
               if saved.get(name) != current[name]]
    if changed:
        raise IncompatibleCheckpointError(
            "VecNormalize is set up differently from the checkpoint's (" + "; ".join(changed)
            + "); build it as the interrupted run did")


def load_normalization(venv: VecNormalize, state: Mapping[str, Any]) -> None:
    if state["obs_rms"] is not None:
        _load_rms(venv.obs_rms, state["obs_rms"])
    _load_rms(venv.ret_rms, state["ret_rms"])
    venv.returns = np.array(state["returns"], dtype=np.float64)
    venv.old_obs = _copy_obs(state["old_obs"])
    venv.old_reward = np.array(state["old_reward"])


def _copy_obs(obs: Any) -> Any:
    if obs is None:
        return None
    if isinstance(obs, Mapping):
        return {key: np.array(value) for key, value in obs.items()}
    return np.array(obs)


def _vec_monitor_state(venv: VecMonitor) -> dict[str, Any]:
    return {"episode_returns": np.array(venv.episode_returns),
            "episode_lengths": np.array(venv.episode_lengths),
            "episode_count": venv.episode_count, WALL_CLOCK: {"t_start": venv.t_start}}


def _load_vec_monitor(venv: VecMonitor, state: Mapping[str, Any]) -> None:
    venv.episode_returns = np.array(state["episode_returns"])
    venv.episode_lengths = np.array(state["episode_lengths"])
    venv.episode_count = int(state["episode_count"])
    venv.t_start = float(state[WALL_CLOCK]["t_start"])


def check_vec_env(venv: VecEnv, stateless_wrappers: Sequence[type] = ()) -> None:
    """Refuse, by name, any part of ``venv`` whose state ckptlab cannot capture exactly."""
    chain = vec_chain(venv)
    for layer in chain[:-1]:
        if isinstance(layer, (VecNormalize, VecMonitor, *_STATELESS_VEC_WRAPPERS,
                              *stateless_wrappers)) or has_state_protocol(layer):
            continue
        raise UnsupportedEnvironmentError(
            f"cannot checkpoint the vectorised wrapper {type(layer).__name__} exactly: ckptlab "
            "knows VecNormalize, VecMonitor and the stateless VecTransposeImage, VecCheckNan "
            f"and VecExtractDictObs. Give {type(layer).__name__} get_state() and "
            "set_state(state) methods, or pass it in stateless_wrappers if it holds none")
    base = chain[-1]
    if not isinstance(base, DummyVecEnv):
        if has_state_protocol(base):
            return
        hint = (" (its environments live in other processes; use DummyVecEnv, which steps "
                "them in this one)" if type(base).__name__ == "SubprocVecEnv" else "")
        raise UnsupportedEnvironmentError(
            f"cannot checkpoint a {type(base).__name__} exactly{hint}; ckptlab captures "
            "DummyVecEnv, or any VecEnv with get_state() and set_state(state) methods")
    for index, env in enumerate(base.envs):
        check_snapshottable(env, index, stateless_wrappers)


def _base_state(base: DummyVecEnv) -> dict[str, Any]:
    actions = getattr(base, "actions", None)
    return {
        "num_envs": base.num_envs,
        "sub_envs": [capture_sub_env(env) for env in base.envs],
        "buf_obs": [np.array(base.buf_obs[key]) for key in base.keys],
        "buf_dones": np.array(base.buf_dones), "buf_rews": np.array(base.buf_rews),
        "buf_infos": split_infos(base.buf_infos),
        "reset_infos": split_infos(base.reset_infos),
        "actions": None if actions is None else np.array(actions),
        "seeds": list(base._seeds), "options": [dict(o) for o in base._options],
    }


def _load_base(base: DummyVecEnv, state: Mapping[str, Any]) -> None:
    for env, saved in zip(base.envs, state["sub_envs"]):
        restore_sub_env(env, saved)
    for key, saved in zip(base.keys, state["buf_obs"]):
        np.copyto(base.buf_obs[key], saved)
    np.copyto(base.buf_dones, state["buf_dones"])
    np.copyto(base.buf_rews, state["buf_rews"])
    base.buf_infos = join_infos(state["buf_infos"])
    base.reset_infos = join_infos(state["reset_infos"])
    if state["actions"] is not None:
        base.actions = np.array(state["actions"])
    elif hasattr(base, "actions"):
        del base.actions
    base._seeds = [None if s is None else int(s) for s in state["seeds"]]
    base._options = [dict(o) for o in state["options"]]


def capture_vec_env(venv: VecEnv) -> dict[str, Any]:
    """Every layer of ``venv`` but ``VecNormalize``'s statistics (see
    :func:`normalization_state`), which are a component of their own."""
    layers: list[dict[str, Any]] = []
    for layer in vec_chain(venv):
        if isinstance(layer, VecMonitor):
            layers.append({"vec_monitor": _vec_monitor_state(layer)})
        elif isinstance(layer, DummyVecEnv):
            layers.append({"dummy": _base_state(layer)})
        elif isinstance(layer, VecNormalize) or not has_state_protocol(layer):
            layers.append({})
        else:
            layers.append({"custom": layer.get_state()})
    return {"classes": [type(layer).__name__ for layer in vec_chain(venv)], "layers": layers}


def check_vec_state(venv: VecEnv, state: Mapping[str, Any]) -> None:
    classes = [type(layer).__name__ for layer in vec_chain(venv)]
    if classes != list(state["classes"]):
        raise IncompatibleCheckpointError(
            f"the vectorised environment differs: the checkpoint's is "
            f"{' > '.join(state['classes'])}, this run's is {' > '.join(classes)}")
    base, saved = vec_chain(venv)[-1], state["layers"][-1]
    if "dummy" in saved:
        if saved["dummy"]["num_envs"] != base.num_envs:
            raise IncompatibleCheckpointError(
                f"the checkpoint's run had {saved['dummy']['num_envs']} environments, this one "
                f"has {base.num_envs}")
        for index, (env, sub) in enumerate(zip(base.envs, saved["dummy"]["sub_envs"])):
            names = [type(layer).__name__ for layer in _gym_chain(env)]
            if names != list(sub["core"]["wrappers"]):
                raise IncompatibleCheckpointError(
                    f"{_env_label(env, index)} differs: the checkpoint's is "
                    f"{' > '.join(sub['core']['wrappers'])}, this run's is {' > '.join(names)}")


def restore_vec_env(venv: VecEnv, state: Mapping[str, Any]) -> None:
    for layer, saved in zip(vec_chain(venv), state["layers"]):
        if "vec_monitor" in saved:
            _load_vec_monitor(layer, saved["vec_monitor"])
        elif "dummy" in saved:
            _load_base(layer, saved["dummy"])
        elif "custom" in saved:
            layer.set_state(saved["custom"])


def find_vec_normalize(venv: VecEnv) -> VecNormalize | None:
    for layer in vec_chain(venv):
        if isinstance(layer, VecNormalize):
            return layer
    return None


def stateless_classes(names: Iterable[type | str]) -> tuple[type, ...]:
    """Check the ``stateless_wrappers`` argument: classes, never names (a typo must fail)."""
    classes = tuple(names)
    for cls in classes:
        if not isinstance(cls, type):
            raise CkptlabError(f"stateless_wrappers takes wrapper classes, not {cls!r}")
    return classes


__all__ = ["WALL_CLOCK", "UnsupportedEnvironmentError", "has_state_protocol",
           "check_vec_env", "capture_vec_env", "check_vec_state", "restore_vec_env",
           "normalization_state", "check_normalization", "load_normalization",
           "find_vec_normalize", "reachable_spaces", "capture_spaces", "check_spaces",
           "restore_spaces", "split_infos", "join_infos", "vec_chain", "stateless_classes"]
