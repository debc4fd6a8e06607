"""How fast the live controls of lessons 01-03 answer: seconds from a control's new value to
the PNG and table the learner sees (render + PNG encoding, as ``LiveView.refresh`` does).

Goal (issue 10): instant controls answer in well under a second on a 2-core laptop CPU.

    PYTHONPATH=. python benchmarks/control_latency_early.py [--repeats 5]

Uses a small real run (2,400 steps, 64-unit layers) shaped like the lessons' runs; lesson 2's
network in the notebook has 128-unit layers, so its activation panels are drawn here at that
size too (a second agent with the lesson's hidden sizes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from benchmarks._machine import describe  # noqa: E402
from ckptlab import DQNConfig, Trainer  # noqa: E402
from ckptlab.lab.explore_early import (  # noqa: E402
    loss_curves_view,
    pipeline_examples,
    pipeline_stage_view,
    prediction_view,
)
from ckptlab.lab.lessons import parameter_changes  # noqa: E402
from ckptlab.lab.widgets import to_displayable  # noqa: E402


def timed(render, values, repeats: int) -> tuple[float, float, float]:
    """Median and worst wall-clock seconds, and median CPU seconds, of
    ``to_displayable(render(**v))`` over the values, repeated. CPU time is what the answer
    costs; wall time is what the learner waits (higher on a busy machine)."""
    walls, cpus = [], []
    for _ in range(repeats):
        for v in values:
            started, cpu = time.perf_counter(), time.process_time()
            to_displayable(render(**v))
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
    return statistics.median(walls), max(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        config = DQNConfig(hidden_sizes=[128, 128], total_steps=2_400, steps_per_epoch=400,
                           learning_starts=300, buffer_capacity=3_000, target_update_every=100,
                           exploration_steps=1_500, eval_episodes=2, save_every_steps=0)
        with Trainer(config, Path(tmp) / "run") as trainer:
            initial = {k: v.clone() for k, v in trainer.agent.q_net.state_dict().items()}
            trainer.train(until_step=800)
            info = trainer.save()
            changes = parameter_changes(initial, trainer.agent.q_net.state_dict())
            examples = pipeline_examples(initial_weights=initial, initial_epsilon=1.0,
                                         initial_buffer=0, weight_changes=changes,
                                         checkpoint=info, resumed_equal=[True] * len(changes),
                                         steps_after_resume=0, max_difference_after=0.0)
            trainer.train()
            state = trainer.rng.generator.bit_generator.state
            obs = trainer.buffer.obs[:len(trainer.buffer)]
            history = trainer.metrics
            epochs = len(history.epochs)
            to_displayable(pipeline_stage_view(1, examples))  # warm-up: fonts, first draw

            results = {
                "01 stage stepper": timed(lambda stage: pipeline_stage_view(stage, examples),
                                          [{"stage": s} for s in (1, 2, 3, 4)], args.repeats),
                "02 buffer index": timed(
                    lambda index: prediction_view(trainer.agent, obs, state, index=index),
                    [{"index": i} for i in (0, 100, 1000, 2000)], args.repeats),
                "02 epsilon slider": timed(
                    lambda epsilon: prediction_view(trainer.agent, obs, state, epsilon=epsilon),
                    [{"epsilon": e} for e in (0.0, 0.1, 0.5, 1.0)], args.repeats),
                "02 typed features": timed(
                    lambda angle: prediction_view(trainer.agent, obs, state,
                                                  source="my features", pole_angle=angle),
                    [{"angle": a} for a in (-0.2, 0.0, 0.2)], args.repeats),
                "03 smoothing window": timed(
                    lambda window: loss_curves_view(history, window=window, epoch=1,
                                                    saved_steps=(800, 1600, 2400)),
                    [{"window": w} for w in (1, 10, 100, 1000)], args.repeats),
                "03 epoch cursor": timed(
                    lambda epoch: loss_curves_view(history, window=50, epoch=epoch,
                                                   saved_steps=(800, 1600, 2400)),
                    [{"epoch": e} for e in range(1, epochs + 1)], args.repeats),
            }
    print(f"{'control':<22} {'median s':>9} {'worst s':>9} {'median CPU s':>13}")
    for name, (median, worst, cpu) in results.items():
        print(f"{name:<22} {median:>9.3f} {worst:>9.3f} {cpu:>13.3f}")
    worst = max(w for _, w, _ in results.values())
    print(f"slowest answer: {worst:.3f} s wall (goal: well under 1 s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
