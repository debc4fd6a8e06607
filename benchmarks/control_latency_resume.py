"""Benchmark: how long lesson 4's and 5's live controls take to answer (issue: controls that
train finish in about 10 s or less, instant ones in well under a second, on 2 CPU cores).

Each latency is the control's whole callback as the widget runs it - the real training plus
turning the result into displayable images and tables (``to_displayable``) - with the lessons'
fast-mode configurations. As a baseline measured in the same process, it also times one
uninterrupted training run of the lesson-4 configuration, and reports each training control
as a ratio of it.

    python benchmarks/control_latency_resume.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from benchmarks._machine import describe  # noqa: E402
from ckptlab import DQNConfig, Trainer  # noqa: E402
from ckptlab.dqn.demo import lost_work_by_interval  # noqa: E402
from ckptlab.lab.ablation import COMPONENTS, FULL, WhatToSaveLab, continue_training  # noqa: E402
from ckptlab.lab.resume_lab import KillResumeLab, plot_save_tradeoff  # noqa: E402
from ckptlab.lab.widgets import to_displayable  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    print(describe())
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-controls-") as tmp:
        work = Path(tmp)
        # Lesson 4 (fast mode): 4000 steps, a checkpoint every 1000.
        config = DQNConfig(seed=0, total_steps=4_000, save_every_steps=1_000,
                           learning_starts=500, eval_episodes=5)
        t0 = time.perf_counter()
        with Trainer(config, work / "uninterrupted") as trainer:
            reference = trainer.train().last_checkpoint.path
        baseline = time.perf_counter() - t0
        print(f"\nbaseline: one uninterrupted run of {config.total_steps} steps: {baseline:.2f} s")

        lab = KillResumeLab(config, reference)
        print("\nlesson 4, Kill & resume (trains; target about 10 s or less)")
        print(f"{'kill after':>10s} {'save every':>10s} {'seconds':>8s} {'x baseline':>10s}")
        for kill, every in [(2_345, 1_000), (1, 250), (3_999, 2_000), (2_001, 500)]:
            s = timed(lambda: to_displayable(lab.render(kill_at_step=kill, save_every=every)))
            print(f"{kill:10d} {every:10d} {s:8.2f} {s / baseline:10.2f}")
        lab.close()

        small = DQNConfig(seed=0, total_steps=4_000, learning_starts=500, hidden_sizes=(64, 64))
        intervals = [100, 250, 500, 1000, 2000]
        measured = lost_work_by_interval(small, intervals, 2_345, work / "intervals")
        print("\nlesson 4, save-interval chooser (instant; target well under 1 s)")
        for every in intervals:
            s = timed(lambda: to_displayable(plot_save_tradeoff(measured, every)))
            print(f"  save every {every:5d}: {s:.3f} s")

        # Lesson 5 (fast mode): checkpoint at 2000, 2000 steps after each resume.
        config5 = DQNConfig(seed=0, total_steps=10**6, learning_starts=500,
                            save_every_steps=2_000)
        original = Trainer(config5, work / "run")
        original.train(until_step=2_000)
        checkpoint = original.checkpoints.committed()[-1]
        continue_training(original, 2_000, eval_key_step=4_000)
        original.close()
        t0 = time.perf_counter()
        what = WhatToSaveLab(checkpoint, config5, 2_000, 4_000)
        print("\nlesson 5, Resume with the ticked pieces (trains; target about 10 s or less)")
        print("  (the full resume it compares with, computed once: "
              f"{time.perf_counter() - t0:.2f} s)")
        for name, pieces, mystery in [("all but optimizer", FULL - {"optimizer"}, False),
                                      ("weights only", {"weights"}, False),
                                      ("all but env, mystery", FULL - {"env"}, True),
                                      ("full", FULL, False)]:
            ticks = {p: p in pieces for p in COMPONENTS}
            s = timed(lambda: to_displayable(what.render(mystery=mystery, **ticks)))
            print(f"  {name:22s} {s:6.2f} s  ({s / baseline:.2f} x baseline)")
        what.close()


if __name__ == "__main__":
    main()
