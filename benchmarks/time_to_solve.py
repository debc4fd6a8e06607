"""Benchmark 1: wall seconds and env steps until DQN solves CartPole-v1.

"Solved" means a greedy evaluation of 20 episodes first reaches a mean return >= 475. An
evaluation runs after every epoch (1000 steps); its cost is included in the wall time, as are
the checkpoints saved at the default cadence. Reported: per seed, and the median.

    python benchmarks/time_to_solve.py [--seeds 0 1 2] [--max-steps 60000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import describe  # noqa: E402
from ckptlab import DQNConfig, Trainer  # noqa: E402

THRESHOLD = 475.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max-steps", type=int, default=60_000)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    print(f"{'seed':>4s} {'solved':>6s} {'env steps':>9s} {'wall s':>7s}")
    steps, seconds = [], []
    for seed in args.seeds:
        config = DQNConfig(seed=seed, total_steps=args.max_steps, eval_episodes=20)
        with tempfile.TemporaryDirectory() as run_dir:
            t0 = time.perf_counter()
            trainer = Trainer(config, run_dir)  # saves at the default cadence, like a real run
            result = trainer.train(stop_when=lambda s: (s.eval_mean_return or 0) >= THRESHOLD)
            wall = time.perf_counter() - t0
            trainer.close()
        steps.append(result.final_step if result.stopped_early else float("inf"))
        seconds.append(wall if result.stopped_early else float("inf"))
        print(f"{seed:4d} {str(result.stopped_early):>6s} {result.final_step:9d} {wall:7.1f}",
              flush=True)
    print(f"median over {len(args.seeds)} seeds: {statistics.median(steps):.0f} env steps, "
          f"{statistics.median(seconds):.1f} s wall (target: <= 10 s)")


if __name__ == "__main__":
    main()
