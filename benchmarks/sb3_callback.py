"""Benchmark 7: ckptlab's Stable-Baselines3 callback - its share of an SB3 PPO run's wall time
at its default cadence, and the time to solve CartPole-v1 for SB3 PPO, SB3 PPO with the
callback, and ckptlab's own DQN, in one run of this script.

Part 1. SB3's PPO with all its defaults on ``make_vec_env("CartPole-v1", n_envs=4)`` trains
``--overhead-timesteps`` with ``CkptlabCallback(run_dir)`` at its defaults (a checkpoint at the
first rollout boundary after every 10 000 timesteps, the final one, SIGTERM handling). The time
spent inside the callback - every call SB3 makes into it, the saves included - is measured
directly and divided by the run's wall time. The same run without the callback is timed too
(interleaved), for context: the machine's drift is larger than the difference.

Part 2. *Solved* = a greedy evaluation of 20 episodes reaches a mean return >= 475, as in
``time_to_solve.py``. PPO uses rl-zoo's CartPole hyperparameters (8 environments, n_steps 32,
batch 256, 20 epochs, gae_lambda 0.8, gamma 0.98, linear schedules from 1e-3 and 0.2) and is
evaluated at the first rollout boundary after every ``--eval-every`` timesteps; ckptlab's DQN
(default ``DQNConfig``) after every epoch of 1000 steps, as in ``time_to_solve.py``. Wall times
include the evaluations (given apart) and, for the runs with checkpoints, the saves. The callback
never changes a run: with and without it PPO needs the same timesteps (checked).

    python benchmarks/sb3_callback.py [--overhead-timesteps 100000] [--seeds 0 1 2]
                                      [--max-timesteps 200000] [--eval-every 5000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback, CallbackList  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from benchmarks._machine import describe  # noqa: E402
from ckptlab import DQNConfig, Trainer  # noqa: E402
from ckptlab.sb3 import CkptlabCallback  # noqa: E402

THRESHOLD = 475.0


class TimedCkptlabCallback(CkptlabCallback):
    """CkptlabCallback, with the time of every call SB3 makes into it added up: wall time,
    and this thread's CPU time (which a busy machine's other processes do not inflate)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = {"step": 0.0, "boundary": 0.0, "start and end": 0.0}
        self.cpu_seconds = 0.0

    def _timed(self, part: str, call: Any, *args: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            self.cpu_seconds += time.thread_time() - c0
            self.seconds[part] += time.perf_counter() - t0

    def on_step(self) -> bool:
        return self._timed("step", super().on_step)

    def on_rollout_start(self) -> None:
        self._timed("boundary", super().on_rollout_start)

    def on_rollout_end(self) -> None:
        self._timed("boundary", super().on_rollout_end)

    def on_training_start(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        self._timed("start and end", super().on_training_start, locals_, globals_)

    def on_training_end(self) -> None:
        self._timed("start and end", super().on_training_end)


def default_ppo(seed: int) -> PPO:
    return PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=4, seed=seed), seed=seed,
               device="cpu")


def overhead(timesteps: int, seed: int) -> None:
    print(f"\n1. The callback's share of a PPO run (SB3 defaults, 4 envs, {timesteps} "
          "timesteps, callback at its defaults)")
    walls: dict[str, float] = {}
    for label in ("without", "with"):  # interleaved: without, with
        with tempfile.TemporaryDirectory() as run_dir:
            model = default_ppo(seed)
            callback = TimedCkptlabCallback(run_dir, verbose=0) if label == "with" else None
            t0, c0 = time.perf_counter(), time.thread_time()
            model.learn(timesteps, callback=callback)
            walls[label], cpu = time.perf_counter() - t0, time.thread_time() - c0
        if callback is not None:
            inside = sum(callback.seconds.values())
            parts = ", ".join(f"{k} {v:.3f} s" for k, v in callback.seconds.items())
            print(f"   run with the callback: {walls[label]:.1f} s wall, {cpu:.1f} s CPU; "
                  f"inside the callback {inside:.3f} s wall ({parts}), "
                  f"{callback.cpu_seconds:.3f} s CPU; {callback.saves} saves, "
                  f"{callback.save_seconds:.3f} s in them")
            print(f"   the callback's share: {100 * callback.cpu_seconds / cpu:.2f}% of the "
                  f"run's CPU time, {100 * inside / walls[label]:.2f}% of its wall time "
                  "(goal: <= 1%)")
    print(f"   for context, the same run without it: {walls['without']:.1f} s wall "
          f"(difference {walls['with'] - walls['without']:+.1f} s: the machine's drift is "
          "larger than the callback)")


class SolveCheck(BaseCallback):
    """Greedy evaluation (20 episodes, its own environment) at the first rollout boundary
    after every ``every`` timesteps; stops learn() once the mean return reaches 475."""

    def __init__(self, every: int, seed: int) -> None:
        super().__init__()
        self.every, self.seed = every, seed
        self.next_eval, self.solved_at, self.eval_seconds = every, None, 0.0
        self.eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=10_000 + seed)

    def _on_rollout_start(self) -> None:
        if self.solved_at is None and self.model.num_timesteps >= self.next_eval:
            self.next_eval += self.every
            t0 = time.perf_counter()
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=20,
                                      deterministic=True)
            self.eval_seconds += time.perf_counter() - t0
            if mean >= THRESHOLD:
                self.solved_at = self.model.num_timesteps

    def _on_step(self) -> bool:
        return self.solved_at is None


def zoo_ppo(seed: int) -> PPO:
    """rl-zoo's tuned PPO for CartPole-v1."""
    def linear(start: float):
        return lambda progress: progress * start

    return PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), n_steps=32,
               batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
               learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, device="cpu")


Outcome = tuple[int | None, float, float, float]  # timesteps to solve, wall s, eval s, CPU s


def solve_ppo(seed: int, max_timesteps: int, every: int, with_callback: bool) -> Outcome:
    with tempfile.TemporaryDirectory() as run_dir:
        model = zoo_ppo(seed)
        check = SolveCheck(every, seed)
        callbacks = [check] + ([CkptlabCallback(run_dir, verbose=0)] if with_callback else [])
        t0, c0 = time.perf_counter(), time.thread_time()
        model.learn(max_timesteps, callback=CallbackList(callbacks))
        return (check.solved_at, time.perf_counter() - t0, check.eval_seconds,
                time.thread_time() - c0)


def solve_dqn(seed: int, max_timesteps: int) -> Outcome:
    config = DQNConfig(seed=seed, total_steps=max_timesteps, eval_episodes=20)
    with tempfile.TemporaryDirectory() as run_dir:
        t0, c0 = time.perf_counter(), time.thread_time()
        trainer = Trainer(config, run_dir)  # saves at the default cadence, like a real run
        evaluate = trainer.evaluate
        spent = [0.0]

        def timed_evaluate() -> Any:
            t = time.perf_counter()
            try:
                return evaluate()
            finally:
                spent[0] += time.perf_counter() - t

        trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
        result = trainer.train(stop_when=lambda s: (s.eval_mean_return or 0) >= THRESHOLD)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        trainer.close()
    return (result.final_step if result.stopped_early else None), wall, spent[0], cpu


def time_to_solve(seeds: list[int], max_timesteps: int, every: int) -> None:
    print(f"\n2. Time to solve CartPole-v1 (20 greedy episodes, mean >= {THRESHOLD:g}; at most "
          f"{max_timesteps} timesteps)")
    print(f"   {'method':28s} {'seed':>4s} {'timesteps':>9s} {'wall s':>7s} "
          f"{'of which eval':>13s} {'CPU s':>6s}")
    results: dict[str, list[Outcome]] = {}
    for seed in seeds:
        for method in ("SB3 PPO", "SB3 PPO + CkptlabCallback", "ckptlab DQN"):
            if method == "ckptlab DQN":
                outcome = solve_dqn(seed, max_timesteps)
            else:
                outcome = solve_ppo(seed, max_timesteps, every, method != "SB3 PPO")
            results.setdefault(method, []).append(outcome)
            steps, wall, spent, cpu = outcome
            print(f"   {method:28s} {seed:4d} {steps if steps else 'no':>9} {wall:7.1f} "
                  f"{spent:13.1f} {cpu:6.1f}", flush=True)
        same = results["SB3 PPO"][-1][0] == results["SB3 PPO + CkptlabCallback"][-1][0]
        print(f"   (seed {seed}: the callback {'did not change' if same else 'CHANGED'} "
              "the timesteps PPO needed)")
    print("   medians:")
    for method, outcomes in results.items():
        steps = [s if s else float("inf") for s, _, _, _ in outcomes]
        walls = [w if s else float("inf") for s, w, _, _ in outcomes]
        evals = [e for _, _, e, _ in outcomes]
        cpus = [c if s else float("inf") for s, _, _, c in outcomes]
        print(f"   {method:28s} {statistics.median(steps):9.0f} timesteps, "
              f"{statistics.median(walls):6.1f} s wall ({statistics.median(evals):5.1f} s of "
              f"it evaluating), {statistics.median(cpus):6.1f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead-timesteps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-timesteps", type=int, default=200_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-solve", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {describe()}")
    if not args.skip_overhead:
        overhead(args.overhead_timesteps, seed=0)
    if not args.skip_solve:
        time_to_solve(args.seeds, args.max_timesteps, args.eval_every)


if __name__ == "__main__":
    main()
