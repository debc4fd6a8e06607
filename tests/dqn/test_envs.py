"""Environment snapshots: a restored env continues exactly where the original was."""

import numpy as np
import pytest

from ckptlab import UnsupportedEnvironmentError, capture_env_state, make_env, restore_env_state
from ckptlab.dqn.envs import EnvRunner
from ckptlab.engine.serialization import join_state, split_state


def rollout(env, actions):
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs.tobytes(), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append(("reset", obs.tobytes()))
    return out


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_mid_episode_snapshot_continues_identically(env_id):
    rng = np.random.default_rng(0)
    original = make_env(env_id)
    original.reset(seed=5)
    for a in rng.integers(0, original.action_space.n, 7):
        original.step(int(a))
    # Through the same encoding a checkpoint uses (JSON tree + tensors), not a live copy.
    tree, tensors = split_state(capture_env_state(original), "env")
    copy = make_env(env_id)
    restore_env_state(copy, join_state(tree, tensors))
    # Long enough to cross episode ends, so the env's own RNG (used by reset) is exercised.
    actions = [int(a) for a in rng.integers(0, original.action_space.n, 1200)]
    assert rollout(copy, actions) == rollout(original, actions)


def test_time_limit_counter_is_restored():
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    copy = make_env("CartPole-v1")
    restore_env_state(copy, capture_env_state(env))
    assert copy._elapsed_steps == 3


def test_runner_state_includes_the_episode_in_progress():
    runner = EnvRunner("CartPole-v1", seed=1)
    for _ in range(5):
        runner.step(1)
    state = runner.state_dict()
    assert state["episode_length"] == 5 and state["episode_return"] == 5.0
    other = EnvRunner("CartPole-v1", seed=99)
    other.load_state_dict(state)
    assert np.array_equal(other.current_obs(), runner.current_obs())
    assert [other.step(0).next_obs.tobytes() for _ in range(3)] == \
           [runner.step(0).next_obs.tobytes() for _ in range(3)]


@pytest.mark.parametrize("env_id,message", [
    ("NoSuchEnv-v0", "cannot create environment"),
    ("Pendulum-v1", "discrete action"),
])
def test_unsupported_environments_are_explained(env_id, message):
    with pytest.raises(UnsupportedEnvironmentError, match=message):
        make_env(env_id)
