"""A small Stable-Baselines3 run (PPO or DQN), checkpointed three ways: the command the tests
kill with SIGKILL, the lesson's runs and the benchmarks' all come from here.

::

    python -m ckptlab.sb3.run --algo ppo --run-dir runs/ppo --steps 20000
    # kill it (kill -9, SIGTERM, Ctrl-C) at any moment and run the same command again

``--method`` chooses how the run is checkpointed and resumed:

``ckptlab``   :class:`~ckptlab.sb3.CkptlabCallback` (exact);
``sb3``       SB3's own ``model.save`` (+ ``VecNormalize.save`` and ``save_replay_buffer``, as
              SB3's documentation advises), resumed with ``load(env=...)`` and
              ``learn(remaining, reset_num_timesteps=False)``;
``sb3-rng``   the same, plus the saved states of Python's, numpy's and torch's global
              generators, restored after ``load`` (the usual forum workaround).

Every method saves at the same rollout boundaries (the first after every ``--save-every``
timesteps) and writes the run's final state in ckptlab's format to ``RUN_DIR/final``, so runs
can be compared component by component (:func:`compare_runs`). The two SB3 methods load
SB3's own pickles - that is what they demonstrate; ckptlab's own loading never unpickles.

:class:`RunServer` runs many of these in forked children of one warm interpreter (the tests'
twenty kills would otherwise pay Python's and torch's start-up each time).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import (
    CheckpointManager,
    CkptlabError,
    ComponentComparison,
    GlobalRNG,
    committed_checkpoints,
    compare_checkpoints,
    read_pointer,
)
from ..engine.faults import ENV_VAR, fault_point
from ._envs import WALL_CLOCK

ALGORITHMS = ("ppo", "dqn")
METHODS = ("ckptlab", "sb3", "sb3-rng")
FINAL_SUBDIR = "final"
SB3_SUBDIR = "sb3"

# Small, fast settings: a few seconds per run on one core, several episodes ending mid-rollout,
# every counter moving (updates, target syncs, exploration decay).
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 64, "batch_size": 64, "n_epochs": 2, "learning_rate": 1e-3,
            "policy_kwargs": {"net_arch": [32, 32]}},
    "dqn": {"buffer_size": 2_000, "learning_starts": 200, "train_freq": 4,
            "target_update_interval": 150, "exploration_fraction": 0.3, "learning_rate": 1e-3,
            "batch_size": 32, "policy_kwargs": {"net_arch": [32, 32]}},
}


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run: the same spec builds the same model and environment."""

    algo: str = "ppo"
    env_id: str = "CartPole-v1"
    n_envs: int = 3
    normalize: bool = True
    seed: int = 0
    total_timesteps: int = 3_072
    save_every: int = 768
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise CkptlabError(f"algo must be one of {', '.join(ALGORITHMS)} (got {self.algo!r})")
        for name in ("n_envs", "total_timesteps", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CkptlabError(f"{name} must be a whole number >= 1 (got {value!r})")

    def settings(self) -> dict[str, Any]:
        return {**DEFAULT_HYPERPARAMETERS[self.algo], **dict(self.hyperparameters)}


def build_env(spec: RunSpec) -> Any:
    """The spec's vectorised environment: ``n_envs`` seeded copies, ``VecNormalize`` on top."""
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        env = make_vec_env(spec.env_id, n_envs=spec.n_envs, seed=spec.seed)
    except gym.error.Error as exc:
        raise CkptlabError(f"cannot create environment {spec.env_id!r} ({exc}); try "
                           "CartPole-v1, Acrobot-v1 or Pendulum-v1") from None
    return VecNormalize(env) if spec.normalize else env


def algorithm_class(spec: RunSpec) -> Any:
    from stable_baselines3 import DQN, PPO

    return {"ppo": PPO, "dqn": DQN}[spec.algo]


def build_model(spec: RunSpec, env: Any = None) -> Any:
    """The spec's model on CPU, seeded (what the interrupted and the resumed run both call)."""
    env = build_env(spec) if env is None else env
    algorithm = algorithm_class(spec)
    try:
        return algorithm("MlpPolicy", env, seed=spec.seed, device="cpu", **spec.settings())
    except (TypeError, ValueError, AssertionError) as exc:  # SB3's checks of its arguments
        env.close()
        raise CkptlabError(f"{algorithm.__name__} refused these settings "
                           f"({spec.settings()}): {exc}") from None


# --------------------------------------------------------------------------------------------
# The three ways to checkpoint and resume
# --------------------------------------------------------------------------------------------

def _fault_callback() -> Any:
    """A callback with only the fault point, for the SB3 methods (the kill tests)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class FaultPoint(BaseCallback):
        def _on_step(self) -> bool:
            fault_point("step", self.model.num_timesteps)
            return True

    return FaultPoint()


def sb3_saver(directory: Path, every: int, with_rng: bool) -> Any:
    """A callback that saves the way SB3's documentation shows, at the rollout boundary after
    every ``every`` timesteps (where ckptlab saves too)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SB3Saver(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.pending = False

        def _on_step(self) -> bool:
            if self.model.num_timesteps % every == 0:
                self.pending = True
            fault_point("step", self.model.num_timesteps)
            return True

        def _on_rollout_start(self) -> None:
            if self.pending:
                self.pending = False
                save_sb3(self.model, directory, with_rng)

    return SB3Saver()


def save_sb3(model: Any, directory: Path, with_rng: bool) -> Path:
    """SB3's own save of ``model`` into ``directory/step_N`` (+ its pointer ``latest``)."""
    step = model.num_timesteps
    target = directory / f"step_{step:08d}"
    temp = directory / f".tmp-step_{step:08d}"
    temp.mkdir(parents=True, exist_ok=True)
    model.save(temp / "model.zip")
    normalize = model.get_vec_normalize_env()
    if normalize is not None:
        normalize.save(str(temp / "vecnormalize.pkl"))
    if hasattr(model, "replay_buffer"):
        model.save_replay_buffer(temp / "replay_buffer.pkl")
    if with_rng:
        with CheckpointManager(temp / "rng") as manager:  # pickle-free, but only the seeds
            manager.register("rng", GlobalRNG())
            manager.save(step)
    os.replace(temp, target)
    pointer = directory / ".latest.tmp"
    pointer.write_text(target.name)
    os.replace(pointer, directory / "latest")
    return target


def load_sb3(spec: RunSpec, directory: Path, with_rng: bool) -> Any:
    """Resume the SB3 way: a fresh environment, ``VecNormalize.load``, ``Algo.load`` (which
    resets the environment), ``load_replay_buffer`` and, with ``with_rng``, the generators."""
    from stable_baselines3.common.vec_env import VecNormalize

    saved = directory / (directory / "latest").read_text().strip()
    env = build_env(RunSpec(**{**asdict(spec), "normalize": False}))
    if spec.normalize:
        env = VecNormalize.load(str(saved / "vecnormalize.pkl"), env)  # SB3's pickle
    model = algorithm_class(spec).load(saved / "model.zip", env=env, device="cpu")
    if (saved / "replay_buffer.pkl").exists():
        model.load_replay_buffer(saved / "replay_buffer.pkl")
    if with_rng:
        with CheckpointManager(saved / "rng", create=False) as manager:
            manager.register("rng", GlobalRNG())
            manager.restore()
    return model


def train(spec: RunSpec, run_dir: str | os.PathLike[str], method: str = "ckptlab", *,
          extra_callbacks: Sequence[Any] = (), also_sb3_saves: bool = False,
          verbose: int = 1) -> Any:
    """Train ``spec`` in ``run_dir`` to ``spec.total_timesteps`` with ``method``, resuming what
    the directory holds; write the final state to ``run_dir/final``. Returns the model.

    ``also_sb3_saves`` (method ``ckptlab``) also writes SB3's own saves, with the generators'
    states, at the same boundaries into ``run_dir/sb3`` - so one killed run can be resumed all
    three ways (lesson 11)."""
    from stable_baselines3.common.callbacks import CallbackList

    from .callback import CkptlabCallback

    if method not in METHODS:
        raise CkptlabError(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    run_dir = Path(run_dir)
    torch.set_num_threads(1)
    if method == "ckptlab":
        model = build_model(spec)
        callback = CkptlabCallback(run_dir, save_every_steps=spec.save_every, verbose=verbose)
        extra = [sb3_saver(run_dir / SB3_SUBDIR, spec.save_every, True)] if also_sb3_saves \
            else []
        model.learn(spec.total_timesteps,
                    callback=CallbackList([callback, *extra, *extra_callbacks]))
        if model.num_timesteps >= spec.total_timesteps:
            write_final(model, run_dir)
        return model
    directory = run_dir / SB3_SUBDIR
    with_rng = method == "sb3-rng"
    saver = sb3_saver(directory, spec.save_every, with_rng)
    if (directory / "latest").exists():
        model = load_sb3(spec, directory, with_rng)
        if verbose:
            print(f"Resuming the SB3 way from {directory / 'latest'} "
                  f"(timestep {model.num_timesteps} of {spec.total_timesteps}).", flush=True)
        remaining = spec.total_timesteps - model.num_timesteps
        model.learn(remaining, callback=CallbackList([saver, *extra_callbacks]),
                    reset_num_timesteps=False)
    else:
        model = build_model(spec)
        model.learn(spec.total_timesteps, callback=CallbackList([saver, *extra_callbacks]))
    write_final(model, run_dir)
    return model


def write_final(model: Any, run_dir: Path) -> Path:
    """The model's complete state, in ckptlab's format, in ``run_dir/final`` (for comparison)."""
    from ._state import run_components

    with CheckpointManager(Path(run_dir) / FINAL_SUBDIR, keep_last=1) as manager:
        for name, component in run_components(model).items():
            manager.register(name, component)
        return manager.save(model.num_timesteps).path


def final_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """The final state a finished run wrote (see :func:`write_final`)."""
    directory = Path(run_dir) / FINAL_SUBDIR
    name = read_pointer(directory, "latest")
    if name is None:
        raise CkptlabError(f"{run_dir} has no final state: the run did not finish")
    return directory / name


def compare_runs(a: str | os.PathLike[str],
                 b: str | os.PathLike[str]) -> list[ComponentComparison]:
    """Compare two checkpoints component by component, bit for bit, skipping wall-clock
    values (kept under ``wall_clock`` keys; they differ between any two runs)."""
    result = compare_checkpoints(a, b)
    for comparison in result:
        comparison.differing = [path for path in comparison.differing
                                if f"/{WALL_CLOCK}" not in path]
    return result


def differing_components(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """The names of the components that differ (empty: identical but for wall-clock times)."""
    return [c.name for c in compare_runs(a, b) if not c.identical]


# --------------------------------------------------------------------------------------------
# The command line, and many runs from one warm interpreter
# --------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> tuple[RunSpec, Path, str, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m ckptlab.sb3.run",
        description="Train a small Stable-Baselines3 run, checkpointed so that a killed run "
                    "resumes exactly (run the same command again).")
    parser.add_argument("--algo", choices=ALGORITHMS, default="ppo")
    parser.add_argument("--env", default="CartPole-v1", help="a gymnasium classic-control id")
    parser.add_argument("--n-envs", type=int, default=3)
    parser.add_argument("--no-normalize", action="store_true", help="without VecNormalize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3_072, help="total_timesteps")
    parser.add_argument("--save-every", type=int, default=768)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--method", choices=METHODS, default="ckptlab")
    parser.add_argument("--also-sb3-saves", action="store_true",
                        help="with --method ckptlab: also save the SB3 way, into RUN_DIR/sb3")
    parser.add_argument("--set", metavar="JSON", default="{}",
                        help='hyperparameters over the defaults, e.g. \'{"n_steps": 128}\'')
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.set)
    except json.JSONDecodeError as exc:
        parser.error(f"--set is not JSON: {exc}")
    if not isinstance(overrides, dict):
        parser.error("--set must be a JSON object")
    spec = RunSpec(algo=args.algo, env_id=args.env, n_envs=args.n_envs,
                   normalize=not args.no_normalize, seed=args.seed,
                   total_timesteps=args.steps, save_every=args.save_every,
                   hyperparameters=overrides)
    if args.also_sb3_saves and args.method != "ckptlab":
        parser.error("--also-sb3-saves goes with --method ckptlab")
    return spec, args.run_dir, args.method, args.also_sb3_saves


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (errors: one ``error:`` line, status 2)."""
    try:
        spec, run_dir, method, also_sb3 = parse_args(argv)
        model = train(spec, run_dir, method, also_sb3_saves=also_sb3)
    except CkptlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = model.num_timesteps >= spec.total_timesteps
    print(f"{'Finished' if done else 'Stopped'} at timestep {model.num_timesteps} of "
          f"{spec.total_timesteps}.", flush=True)
    return 0


def serve(requests: Any = None, replies: Any = None) -> None:
    """Answer one JSON request per line - ``{"args": [...], "fault": "step@1234", "log":
    "path"}`` - by running :func:`main` in a forked child (killed by ``CKPTLAB_FAULT`` if it
    names a moment the run reaches) and replying ``{"returncode": ...}`` (``-9``: SIGKILLed).
    The parent only imports; it never trains, so every child starts from the same clean state.
    """
    import stable_baselines3  # noqa: F401 - imported once, before any fork

    requests = sys.stdin if requests is None else requests
    replies = sys.stdout if replies is None else replies
    torch.set_num_threads(1)
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: one real training process
            code = 1
            try:
                with open(request["log"], "ab") as log:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
                os.environ.pop(ENV_VAR, None)
                if request.get("fault"):
                    os.environ[ENV_VAR] = request["fault"]
                random.seed(), np.random.seed()  # a new process's globals are not the parent's
                code = main(request["args"])
            except BaseException:  # the child must never return into the server's loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        replies.write(json.dumps({"returncode": code}) + "\n")
        replies.flush()


class RunServer:
    """A :func:`serve` process: ``run(args, fault)`` trains in a fresh forked process.

    Use as a context manager; each call blocks until its process exits or is killed.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from ckptlab.sb3.run import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.runs = 0

    def run(self, args: Sequence[str], fault: str | None = None) -> tuple[int, str]:
        """Run ``python -m ckptlab.sb3.run ARGS`` as a forked process; ``(status, output)``."""
        self.runs += 1
        log = self.log_dir / f"run_{self.runs:03d}.log"
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"args": list(args), "fault": fault,
                                             "log": str(log)}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise CkptlabError(f"the run server stopped (exit status {self.process.wait()})")
        return int(json.loads(reply)["returncode"]), log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self) -> RunServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_steps(run_dir: str | os.PathLike[str]) -> list[int]:
    """Steps of the committed ckptlab checkpoints in ``run_dir`` (oldest first)."""
    from .callback import checkpoint_directory

    return [int(p.name.rsplit("_", 1)[1])
            for p in committed_checkpoints(checkpoint_directory(run_dir))]


if __name__ == "__main__":
    sys.exit(main())
