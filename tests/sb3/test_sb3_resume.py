"""ckptlab.sb3 in one process: every piece of an SB3 run's state is needed (leave one out and
the run diverges), resume() continues exactly, and what cannot be resumed exactly is refused
by name before anything is trained or written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback, CallbackList  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import (  # noqa: E402
    DummyVecEnv,
    VecEnvWrapper,
    VecNormalize,
)

from ckptlab.engine import (  # noqa: E402
    AnyOf,
    CheckpointFallbackWarning,
    CkptlabError,
    EveryNCounts,
    EveryNSteps,
    ForeignFileError,
    IncompatibleCheckpointError,
    OnImprovement,
    load_checkpoint_state,
    read_decision_log,
)
from ckptlab.sb3 import (  # noqa: E402
    PIECES,
    CkptlabCallback,
    UnsupportedEnvironmentError,
    UnsupportedRunError,
    apply_state,
    resume,
)
from ckptlab.sb3.callback import checkpoint_directory  # noqa: E402
from ckptlab.sb3.run import RunSpec, build_model, compare_runs, write_final  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOTAL, EVERY = 768, 128   # PPO's rollout: 32 steps x 2 envs = 64 timesteps
SPEC = RunSpec(algo="ppo", n_envs=2, total_timesteps=TOTAL, save_every=EVERY,
               hyperparameters={"n_steps": 32, "batch_size": 32})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """As every run of the suite: one thread (the fastest for these networks, and exact)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StopAt(BaseCallback):
    """Ends learn() once the run reaches ``step`` (an interruption, without a process)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        return self.model.num_timesteps < self.step


def callback(run_dir: Path, **kwargs) -> CkptlabCallback:
    return CkptlabCallback(run_dir, save_every_steps=EVERY, verbose=0, **kwargs)


def final(run_dir: Path) -> Path:
    return checkpoint_directory(run_dir) / f"step_{TOTAL:08d}"


def differing(a: Path, b: Path) -> dict[str, list[str]]:
    return {c.name: c.differing for c in compare_runs(final(a), final(b)) if not c.identical}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    build_model(SPEC).learn(TOTAL, callback=callback(run_dir))
    return run_dir


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run stopped after timestep 420 (mid-rollout): its newest checkpoint is at 384."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    build_model(SPEC).learn(TOTAL, callback=CallbackList([callback(run_dir), StopAt(420)]))
    return run_dir


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_the_same_script_again_resumes_exactly(reference, interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    model = build_model(SPEC)
    cb = callback(run_dir)
    model.learn(TOTAL, callback=cb)
    assert cb.restored_from is not None and cb.restored_from.step == 384
    assert not differing(reference, run_dir)


def test_resume_then_learn_the_remaining_timesteps_resumes_exactly(reference, interrupted,
                                                                   tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    model = resume(run_dir, lambda: build_model(SPEC))
    assert model.num_timesteps == 384 and model._n_updates == 384 // 64 * 2
    model.learn(TOTAL - model.num_timesteps, reset_num_timesteps=False,
                callback=callback(run_dir))
    assert not differing(reference, run_dir)
    # the same, restored piece by piece from one decoded state (what the lesson does)
    _, states = load_checkpoint_state(checkpoint_directory(interrupted) / "step_00000384")
    for _ in range(2):
        model = build_model(SPEC)
        apply_state(model, states, "step 384", pieces=PIECES)
        model.learn(TOTAL - model.num_timesteps, reset_num_timesteps=False)
        assert all(c.identical for c in compare_runs(final(reference),
                                                     write_final(model, tmp_path / "all")))


@pytest.mark.parametrize("left_out", ["rng", "envs", "normalization", "progress"])
def test_leaving_any_piece_out_changes_the_run(reference, interrupted, tmp_path, left_out):
    """The test above can fail: restore all but one piece and the run is another one."""
    model = build_model(SPEC)
    _, states = load_checkpoint_state(checkpoint_directory(interrupted) / "step_00000384")
    apply_state(model, states, "step 384", pieces=[p for p in PIECES if p != left_out])
    model.learn(TOTAL - model.num_timesteps, reset_num_timesteps=False)
    assert model.num_timesteps >= TOTAL
    comparisons = compare_runs(final(reference), write_final(model, tmp_path))
    assert "policy" in {c.name for c in comparisons if not c.identical}


def test_async_saves_hold_the_same_state(reference, interrupted, tmp_path):
    """Written in a background thread while training goes on, the checkpoints hold exactly
    what the synchronous ones hold, and the run resumes from them exactly."""
    run_dir = tmp_path / "async"
    build_model(SPEC).learn(TOTAL, callback=CallbackList([callback(run_dir, async_save=True),
                                                          StopAt(420)]))
    assert all(c.identical for c in compare_runs(
        checkpoint_directory(interrupted) / "step_00000384",
        checkpoint_directory(run_dir) / "step_00000384"))
    build_model(SPEC).learn(TOTAL, callback=callback(run_dir, async_save=True))
    assert not differing(reference, run_dir)


def test_a_damaged_newest_checkpoint_falls_back_and_still_resumes_exactly(
        reference, interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    newest = checkpoint_directory(run_dir) / "step_00000384"
    with open(newest / "tensors.safetensors", "r+b") as handle:
        handle.seek(-3, 2)
        byte = handle.read(1)
        handle.seek(-3, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cb = callback(run_dir)
    with pytest.warns(CheckpointFallbackWarning):
        build_model(SPEC).learn(TOTAL, callback=cb)
    assert cb.restored_from.step == 256
    assert not differing(reference, run_dir)


def test_the_checkpoint_holds_no_pickle_and_an_sb3_zip_is_refused(interrupted, tmp_path):
    names = {p.name for p in (checkpoint_directory(interrupted) / "step_00000384").iterdir()}
    assert names == {"manifest.json", "state.json", "tensors.safetensors"}
    model = build_model(SPEC)
    model.save(tmp_path / "model.zip")
    with pytest.raises(ForeignFileError):
        resume(tmp_path, lambda: build_model(SPEC), checkpoint=tmp_path / "model.zip")


def test_other_save_policies_and_retention_work_and_resume_exactly(tmp_path):
    """Improvement and episode-count policies, asked about every step and carried out at the
    next rollout boundary; retention keeps the last 2 (and the best); the policies' state
    goes with the checkpoint, so the resumed run saves where the uninterrupted one did."""
    def policy():
        return AnyOf(OnImprovement("ep_rew_mean", min_delta=2.0),
                     EveryNCounts(7, counter="episode", event="episode_end"))

    def run(run_dir, *extra):
        cb = CkptlabCallback(run_dir, save_policy=policy(), keep_last=2, verbose=0)
        build_model(SPEC).learn(TOTAL, callback=CallbackList([cb, *extra]))

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    saves = [e for e in read_decision_log(checkpoint_directory(straight))
             if e["event"] == "saved"]
    kept = [json.loads((p / "manifest.json").read_text())
            for p in checkpoint_directory(straight).glob("step_*")]
    assert len(saves) > len(kept) and len(kept) <= 3  # retention: the last 2, and the best
    assert all(entry["step"] % 64 == 0 for entry in saves)  # at rollout boundaries
    reasons = " ".join(r for m in kept for r in m["save_reasons"])
    assert "every 7 episodes" in reasons or "ep_rew_mean improved" in reasons, reasons
    run(stopped, StopAt(400))
    run(stopped)
    assert not differing(straight, stopped)
    saved = sorted(p.name for p in checkpoint_directory(straight).glob("step_*"))
    assert saved == sorted(p.name for p in checkpoint_directory(stopped).glob("step_*"))


def other_algorithm(name: str):
    from stable_baselines3 import A2C, SAC, TD3

    if name == "A2C":
        env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0))
        return A2C("MlpPolicy", env, n_steps=16, seed=0, device="cpu",
                   policy_kwargs={"net_arch": [16]})
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    return {"SAC": SAC, "TD3": TD3}[name](
        "MlpPolicy", env, learning_starts=64, buffer_size=1_000, batch_size=32, train_freq=4,
        seed=0, device="cpu", policy_kwargs={"net_arch": [16]})


@pytest.mark.parametrize("name", ["A2C", "SAC", "TD3"])
def test_a2c_sac_and_td3_resume_exactly_too(name, tmp_path):
    """SAC's entropy coefficient (a torch variable and its optimizer) and TD3's delayed
    updates ride along: every torch object SB3's own save names is a component."""
    total, every = 400, 64
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    other_algorithm(name).learn(total, callback=CkptlabCallback(straight, verbose=0,
                                                                save_every_steps=every))
    other_algorithm(name).learn(total, callback=CallbackList([
        CkptlabCallback(stopped, verbose=0, save_every_steps=every), StopAt(230)]))
    cb = CkptlabCallback(stopped, verbose=0, save_every_steps=every)
    other_algorithm(name).learn(total, callback=cb)
    assert 0 < cb.restored_from.step < 230
    last = sorted(checkpoint_directory(straight).glob("step_*"))[-1].name
    assert last == sorted(checkpoint_directory(stopped).glob("step_*"))[-1].name
    assert all(c.identical for c in compare_runs(checkpoint_directory(straight) / last,
                                                 checkpoint_directory(stopped) / last))


# -- refused, by name, before anything is trained or written ----------------------------------

def test_another_setting_is_refused_with_the_difference(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    other = RunSpec(**{**SPEC.__dict__, "hyperparameters": {**SPEC.hyperparameters,
                                                            "learning_rate": 5e-4}})
    with pytest.raises(IncompatibleCheckpointError, match=r"learning_rate: 0\.001 -> 0\.0005"):
        build_model(other).learn(TOTAL, callback=callback(run_dir))
    assert sorted(p.name for p in checkpoint_directory(run_dir).glob("step_*")) == \
        ["step_00000128", "step_00000256", "step_00000384"]
    model = resume(run_dir, lambda: build_model(other), allow_config_change=True)
    assert model.num_timesteps == 384


def test_another_total_is_refused_and_the_resume_mistake_is_explained(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    with pytest.raises(IncompatibleCheckpointError, match="learn.total_timesteps=768."):
        build_model(SPEC).learn(2 * TOTAL, callback=callback(run_dir))
    model = resume(run_dir, lambda: build_model(SPEC))
    # SB3 adds num_timesteps to the total when reset_num_timesteps=False
    with pytest.raises(IncompatibleCheckpointError, match=r"model\.learn\(384, reset_num"):
        model.learn(TOTAL, reset_num_timesteps=False, callback=callback(run_dir))


def test_resume_never_refuses_a_directory_with_checkpoints(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    with pytest.raises(CkptlabError, match="already holds checkpoints"):
        build_model(SPEC).learn(TOTAL, callback=callback(run_dir, resume="never"))


def test_a_step_cadence_the_envs_cannot_hit_is_refused(tmp_path):
    cb = CkptlabCallback(tmp_path, save_policy=EveryNSteps(101), verbose=0)
    with pytest.raises(CkptlabError, match=r"EveryNSteps\(101\).*multiple of 2"):
        build_model(SPEC).learn(TOTAL, callback=cb)
    assert not checkpoint_directory(tmp_path).exists() or \
        not list(checkpoint_directory(tmp_path).glob("step_*"))


def test_gsde_is_refused(tmp_path):
    model = PPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), use_sde=True,
                n_steps=32, batch_size=32, seed=0, device="cpu")
    with pytest.raises(UnsupportedRunError, match="use_sde"):
        model.learn(64, callback=callback(tmp_path))


class Walk(gym.Env):
    """A random walk that is not gymnasium's: its future is in ``position`` and its RNG."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.t = 0.0, 0
        return np.array([self.position], np.float32), {}

    def step(self, action):
        self.position += (1.0 if action else -1.0) + float(self.np_random.normal())
        self.t += 1
        done = abs(self.position) > 4 or self.t >= 30
        return np.array([self.position], np.float32), -abs(self.position), done, False, {}


class WalkWithState(Walk):
    def get_state(self):
        return {"position": self.position, "t": self.t}

    def set_state(self, state):
        self.position, self.t = float(state["position"]), int(state["t"])


def walk_model(env_class: type) -> PPO:
    env = make_vec_env(env_class, n_envs=2, seed=0)
    return PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu",
               policy_kwargs={"net_arch": [16]})


def test_an_unknown_environment_is_refused_by_name(tmp_path):
    with pytest.raises(UnsupportedEnvironmentError,
                       match=r"sub-environment 0 .*Walk.*get_state\(\)"):
        walk_model(Walk).learn(TOTAL, callback=callback(tmp_path))
    assert not list(tmp_path.rglob("step_*"))


def test_an_environment_with_get_state_and_set_state_resumes_exactly(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    walk_model(WalkWithState).learn(TOTAL, callback=callback(straight))
    walk_model(WalkWithState).learn(TOTAL, callback=CallbackList([callback(stopped),
                                                                  StopAt(300)]))
    walk_model(WalkWithState).learn(TOTAL, callback=callback(stopped))
    assert not differing(straight, stopped)


class Counting(gym.Wrapper):
    """A wrapper with state of its own."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


class Halve(gym.RewardWrapper):
    """A wrapper without state."""

    def reward(self, reward):
        return reward / 2


class Noop(VecEnvWrapper):
    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        return self.venv.step_wait()


def test_an_unknown_wrapper_is_refused_unless_declared_stateless(tmp_path):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, wrapper_class=Counting)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu")
    with pytest.raises(UnsupportedEnvironmentError, match="wrapper Counting"):
        model.learn(128, callback=callback(tmp_path / "a"))
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, wrapper_class=Halve)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, seed=0, device="cpu")
    model.learn(128, callback=callback(tmp_path / "b", stateless_wrappers=[Halve]))
    assert (checkpoint_directory(tmp_path / "b") / "step_00000128").is_dir()
    vec = Noop(DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    with pytest.raises(UnsupportedEnvironmentError, match="vectorised wrapper Noop"):
        PPO("MlpPolicy", vec, n_steps=32, batch_size=32, device="cpu").learn(
            64, callback=callback(tmp_path / "c"))


def test_the_extra_missing_is_one_line_naming_it():
    script = ("import sys; sys.modules['stable_baselines3'] = None\n"
              "import ckptlab\n"
              "try:\n    import ckptlab.sb3\n"
              "except ckptlab.MissingExtraError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ckptlab.sb3 needs stable_baselines3"), done.stdout
    assert 'clone of ckptlab\'s repository (see the README): pip install -c requirements.txt ' \
        '".[sb3]"' in done.stdout, done.stdout
    assert len(done.stdout.strip().splitlines()) == 1


def test_no_warning_from_a_clean_resume(interrupted, tmp_path):
    run_dir = copy_run(interrupted, tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointFallbackWarning)
        resume(run_dir, lambda: build_model(SPEC))


@pytest.mark.parametrize("args, words", [
    (["--set", '{"bogus": 1}'], "PPO refused these settings"),
    (["--env", "Nope-v0"], "cannot create environment 'Nope-v0'"),
    (["--algo", "dqn", "--env", "Pendulum-v1"], "DQN refused these settings"),
    (["--steps", "0"], "total_timesteps must be a whole number >= 1"),
    (["--env", "FrozenLake-v1", "--no-normalize"], "FrozenLake-v1"),
])
def test_the_run_command_says_what_is_wrong_in_one_line(args, words, tmp_path, capsys):
    from ckptlab.sb3.run import main

    assert main([*args, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("step_*"))
