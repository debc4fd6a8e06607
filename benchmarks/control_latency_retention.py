"""Latency of the live controls of lessons 6, 7 and 8, as a learner feels them.

Each control is driven through the same :class:`~ckptlab.lab.widgets.LiveView` the notebooks
use (render + PNG encoding + filling the output area; only the browser's drawing is left out),
on the run lesson 6 records in fast mode. Printed: median and worst time per control, and the
CPU seconds per move (what it costs on an otherwise idle machine, where the two cores are not
shared), and the ratio to its target - instant controls "well under a second" (target 1 s),
the fault picker, which trains, "about 10 s or less" (target 10 s). The baseline in the same
process is the default render each notebook does at run-all time.

    python benchmarks/control_latency_retention.py            # about 2 minutes
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402

from benchmarks._machine import describe  # noqa: E402
from ckptlab import DQNConfig, Trainer  # noqa: E402
from ckptlab.lab.fault_lab import FAULTS, fault_view  # noqa: E402
from ckptlab.lab.retention_lab import RULES, checkpoint_view, record_run, strategy_view  # noqa: E402
from ckptlab.lab.widgets import LiveView  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and of the finished processes it started (training runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


CPU: dict[int, list[float]] = {}  # id(list of wall times) -> the CPU times of the same moves


def timed(view: LiveView, moves: list[tuple[str, object]]) -> list[float]:
    """Apply each (control, value) move and time the redraw it triggers (wall clock; the
    CPU time of each move is kept in CPU)."""
    times, cpu = [], []
    for name, value in moves:
        cpu_started = cpu_seconds()
        started = time.perf_counter()
        if view.button is None:
            view.controls[name].value = value  # observe() redraws synchronously
        else:
            view.controls[name].value = value
            view.refresh()                     # what the button does
        times.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - cpu_started)
        assert view.last_error is None, f"{name}={value}: {view.last_error}"
    CPU[id(times)] = cpu
    return times


def report(label: str, times: list[float], target: float, baseline: float) -> None:
    median, worst = statistics.median(times), max(times)
    cpu = statistics.median(CPU[id(times)])
    print(f"{label:36s} {len(times):3d} {median:8.3f} {worst:8.3f} {cpu:7.3f} {target:7.0f} "
          f"{median / target:8.2f} {median / baseline:9.2f}")


def main() -> None:
    print(describe())
    print(f"load average before: {os.getloadavg()[0]:.1f} (the machine may be shared)")
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-") as tmp:
        config = DQNConfig(seed=0, total_steps=8_000, steps_per_epoch=500, save_every_steps=500,
                           learning_starts=500, eval_episodes=5)  # lesson 6, fast mode
        started = time.perf_counter()
        with Trainer(config, Path(tmp) / "recorded") as trainer:
            trainer.train()
        run = record_run(trainer.checkpoints.committed())
        print(f"recorded {len(run.steps)} checkpoints in {time.perf_counter() - started:.1f} s")

    builder = LiveView(functools.partial(strategy_view, run), {
        "rule": widgets.Dropdown(options=list(RULES), value="top K"),
        "n": widgets.IntSlider(value=3, min=1, max=8),
        "k": widgets.IntSlider(value=3, min=1, max=8),
        "smoothing": widgets.IntSlider(value=1, min=1, max=5),
        "every": widgets.IntSlider(value=2000, min=500, max=8000, step=500),
        "budget_kb": widgets.IntSlider(value=0, min=0, max=10_000, step=100),
        "step": widgets.IntSlider(value=8000, min=500, max=8000, step=500)})
    picker = LiveView(functools.partial(checkpoint_view, run), {
        "step": widgets.SelectionSlider(options=run.steps, value=run.steps[-1]),
        "episodes": widgets.IntSlider(value=3, min=1, max=3)})

    started = time.perf_counter()
    strategy_view(run, "top K")                        # warm-up, and the run-all baseline
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    builder.refresh()
    baseline = min(baseline, time.perf_counter() - started)

    print(f"\nbaseline: the builder's default render, {baseline:.3f} s\n")
    print(f"{'control':36s} {'n':>3s} {'median s':>8s} {'worst s':>8s} {'cpu s':>7s} "
          f"{'target':>7s} {'÷target':>8s} {'÷baseline':>9s}")
    report("06 builder: rule", timed(builder, [("rule", r) for r in RULES] * 2), 1, baseline)
    report("06 builder: N / K / smoothing", timed(builder, [
        ("rule", "hybrid"), ("k", 2), ("smoothing", 3), ("k", 4), ("smoothing", 1),
        ("rule", "keep last N"), ("n", 2), ("n", 5)]), 1, baseline)
    report("06 builder: every-K", timed(builder, [("rule", "milestones + last N")] + [
        ("every", e) for e in (1000, 1500, 2500, 4000)]), 1, baseline)
    report("06 builder: disk budget", timed(builder, [
        ("budget_kb", b) for b in (3000, 2500, 4000, 6000, 0)]), 1, baseline)
    report("06 time scrubber (step)", timed(builder, [
        ("step", s) for s in range(500, 8001, 500)]), 1, baseline)
    report("06/08 checkpoint picker: step", timed(picker, [
        ("step", s) for s in run.steps[::2]]), 1, baseline)
    report("06/08 checkpoint picker: episodes", timed(picker, [
        ("episodes", e) for e in (1, 2, 3, 1)]), 1, baseline)

    stage = LiveView(fault_view, {"fault": widgets.Dropdown(options=list(FAULTS))},
                     run_button="Stage it")
    kills = [("fault", f) for f in FAULTS if f.startswith("kill:")]
    corruptions = [("fault", f) for f in FAULTS if f.startswith("corrupt:")]
    report("07 fault picker: kill at a phase", timed(stage, kills), 10, baseline)
    report("07 fault picker: corrupt a file", timed(stage, corruptions), 10, baseline)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
