"""Lesson 4's live controls: kill a run where the learner chooses, resume it, compare; and weigh
the work a crash loses against what saving costs.

* :func:`kill_and_resume` trains a run with a chosen save interval, kills it after a chosen
  step, resumes it from what survived on disk and compares its final state with the
  uninterrupted run's; :func:`plot_kill_and_resume` draws the overlay and difference panels.
  :class:`KillResumeLab` holds the uninterrupted run so the lesson's "Kill & resume" button
  only trains the interrupted one.
* :func:`plot_save_tradeoff` puts the expected and worst-case lost steps of a save interval next
  to the save overhead measured by :func:`ckptlab.dqn.demo.lost_work_by_interval` (instant: it
  trains nothing).
* :func:`write_then_sigkill` shows what a SIGKILL test cannot see: bytes a process wrote but
  never fsynced are all there after the kill, because the kernel (and its page cache) lives on.

The kill here happens in the notebook's own process: the interrupted attempt's ``Trainer`` is
dropped after the kill step without another save, so exactly what a SIGKILL leaves survives -
the checkpoints already committed to disk. (The lesson's main run, and ``python -m ckptlab
demo``, do the same with a real SIGKILL of a separate process; starting one costs seconds of
imports a live control cannot afford.)

Introduced in notebook ``04_interrupt_and_resume``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dqn.config import DQNConfig
from ..dqn.demo import LostWork
from ..dqn.metrics import MetricHistory
from ..dqn.resume import check_config_compatible
from ..engine import CkptlabError, ComponentComparison, compare_checkpoints, latest_valid_checkpoint
from .figures import GREY, OKABE_ITO, ROLE, caption, fmt

SMOOTHING = 50  # updates in the loss moving average of the overlay


@dataclass
class Curve:
    """One series of a run: the steps and the values recorded at them."""

    steps: np.ndarray
    values: np.ndarray

    def after(self, first_step: int) -> Curve:
        """The part recorded after ``first_step``."""
        keep = self.steps > first_step
        return Curve(self.steps[keep], self.values[keep])


def run_curves(history: MetricHistory) -> dict[str, Curve]:
    """The series the overlay draws: smoothed loss per update and return per episode."""
    from .lessons import smooth

    return {"loss (moving average)": Curve(np.array(history.loss_steps),
                                           smooth(np.array(history.losses), SMOOTHING)),
            "episode return": Curve(np.array(history.episode_end_steps),
                                    np.array(history.episode_returns))}


@dataclass
class KillAndResume:
    """A run killed after ``kill_at_step`` and resumed, next to the uninterrupted run."""

    total_steps: int
    save_every: int
    kill_at_step: int
    resumed_from_step: int           # the newest checkpoint that survived the kill (0: none)
    reference: dict[str, Curve]      # the uninterrupted run
    resumed: dict[str, Curve]        # the killed-and-resumed run, start to finish
    discarded: dict[str, Curve]      # what the killed attempt did after its last checkpoint
    comparison: list[ComponentComparison]  # final state: resumed vs uninterrupted

    @property
    def steps_redone(self) -> int:
        """Steps the killed attempt trained after its last checkpoint: lost, trained again."""
        return self.kill_at_step - self.resumed_from_step

    @property
    def identical(self) -> bool:
        """Whether every component of the final state equals the uninterrupted run's."""
        return all(c.identical for c in self.comparison)

    @property
    def max_abs_diff(self) -> float:
        """The largest absolute difference between the two final states' numbers."""
        return max((c.max_abs_diff for c in self.comparison), default=0.0)


def check_kill_step(kill_at_step: int, total_steps: int) -> int:
    """``kill_at_step`` as an int, or a :class:`CkptlabError` saying which steps are allowed."""
    if isinstance(kill_at_step, bool) or not isinstance(kill_at_step, (int, np.integer)):
        raise CkptlabError(f"the kill step must be a whole number of steps, not "
                           f"{kill_at_step!r}")
    if not 0 < kill_at_step < total_steps:
        raise CkptlabError(f"kill step {kill_at_step} is outside the run: it has "
                           f"{total_steps} steps, so kill it after a step between 1 and "
                           f"{total_steps - 1}")
    return int(kill_at_step)


def check_save_interval(save_every: int) -> int:
    """``save_every`` as a positive int, or a :class:`CkptlabError`."""
    if isinstance(save_every, bool) or not isinstance(save_every, (int, np.integer)) \
            or save_every < 1:
        raise CkptlabError(f"the save interval must be a positive number of steps, not "
                           f"{save_every!r}")
    return int(save_every)


def kill_and_resume(config: DQNConfig, kill_at_step: int, save_every: int,
                    reference_checkpoint: str | os.PathLike[str],
                    directory: str | os.PathLike[str]) -> KillAndResume:
    """Train ``config`` saving every ``save_every`` steps, kill it after ``kill_at_step``,
    resume it from its newest checkpoint, train to the end and compare with the uninterrupted
    run whose final checkpoint is ``reference_checkpoint``.

    The run lives in a new directory under ``directory``. The save interval changes only when
    the run saves, never what it learns, so one uninterrupted run serves every choice.

    Raises:
        CkptlabError: the kill step is outside the run, the interval is not a positive number,
            or ``reference_checkpoint`` is not the end of an uninterrupted run of ``config``.
    """
    from ..dqn.train import Trainer

    kill_at_step = check_kill_step(kill_at_step, config.total_steps)
    save_every = check_save_interval(save_every)
    reference = latest_valid_checkpoint(reference_checkpoint)
    check_config_compatible(reference, config)
    if reference.step != config.total_steps:
        raise CkptlabError(f"{reference.path.name} is at step {reference.step}, not at the end "
                           f"of the run ({config.total_steps}): give the uninterrupted run's "
                           "final checkpoint")
    cfg = dataclasses.replace(config, save_every_steps=save_every)
    run_dir = Path(tempfile.mkdtemp(prefix=f"kill-{kill_at_step}-every-{save_every}-",
                                    dir=directory))

    attempt = Trainer(cfg, run_dir)
    try:
        attempt.train(until_step=kill_at_step)
        assert attempt.checkpoints is not None
        committed = attempt.checkpoints.committed()
        # The kill: the attempt's memory is lost; only committed checkpoints survive.
        attempt_curves = run_curves(attempt.metrics)
    finally:
        attempt.close()  # releases the run directory's lock; writes nothing
    with Trainer(cfg, run_dir) as resumed:
        resumed_from = resumed.restore().step if committed else 0
        final = resumed.train().last_checkpoint
        resumed_curves = run_curves(resumed.metrics)
    assert final is not None and final.step == cfg.total_steps
    return KillAndResume(
        total_steps=cfg.total_steps, save_every=save_every, kill_at_step=kill_at_step,
        resumed_from_step=resumed_from,
        reference=run_curves(_history(reference.path)), resumed=resumed_curves,
        discarded={name: curve.after(resumed_from) for name, curve in attempt_curves.items()},
        comparison=compare_checkpoints(reference.path, final.path))


def _history(checkpoint: Path) -> MetricHistory:
    from .lessons import metrics_from_checkpoint

    return metrics_from_checkpoint(checkpoint)


def plot_kill_and_resume(result: KillAndResume) -> Any:
    """The overlay (left) and difference (right) panels of a killed-and-resumed run.

    The redone segment (last checkpoint -> kill) is shaded, the kill step labelled, and the
    killed attempt's discarded work drawn as a wide orange band under the other lines.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(result.reference), 2, figsize=(12, 5.2), sharex=True,
                             gridspec_kw={"width_ratios": [3, 1]})
    largest = 0.0
    for (name, ref), (ax, dax) in zip(result.reference.items(), axes):
        mine, lost = result.resumed[name], result.discarded[name]
        ax.axvspan(result.resumed_from_step, result.kill_at_step, facecolor=OKABE_ITO["yellow"],
                   alpha=0.35, hatch="..", edgecolor=GREY, linewidth=0,
                   label=f"redone: {result.resumed_from_step}\u2192{result.kill_at_step}")
        ax.plot(lost.steps, lost.values, color=ROLE["discarded"], linewidth=7, alpha=0.55,
                solid_capstyle="butt", label="discarded attempt (killed)")
        ax.plot(ref.steps, ref.values, color=ROLE["reference"], linewidth=4,
                label="uninterrupted")
        ax.plot(mine.steps, mine.values, color=ROLE["resumed"], linewidth=1.2, linestyle="--",
                label="killed + resumed")
        ax.axvline(result.kill_at_step, color=ROLE["event"], linestyle="--")
        ax.annotate(f"killed after step {result.kill_at_step}", (result.kill_at_step, 1),
                    xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", color=ROLE["event"], fontsize="small")
        ax.set_ylabel(name)
        n = min(len(ref.values), len(mine.values))
        difference = mine.values[:n] - ref.values[:n]
        largest = max(largest, float(np.max(np.abs(difference))) if n else 0.0)
        dax.plot(ref.steps[:n], difference, color="black")
        dax.axvspan(result.resumed_from_step, result.kill_at_step, facecolor=OKABE_ITO["yellow"],
                    alpha=0.35)
        dax.set_title("resumed \u2212 uninterrupted", fontsize="medium")
        dax.locator_params(axis="x", nbins=3)
    axes[0, 0].legend(ncol=2, loc="lower right")
    axes[-1, 0].set_xlabel("environment step")
    axes[-1, 1].set_xlabel("environment step")
    fig.suptitle(f"save every {result.save_every} steps, killed after step "
                 f"{result.kill_at_step}, resumed from step {result.resumed_from_step}")
    fig.tight_layout()
    names = " and ".join(result.reference)
    return caption(fig, f"{names[0].upper()}{names[1:]} of a run saving every "
                        f"{result.save_every} steps, killed after step {result.kill_at_step} "
                        f"and resumed from step {result.resumed_from_step}, drawn over the "
                        f"uninterrupted run: resumed minus uninterrupted, max |difference| = "
                        f"{fmt(largest)} over {result.total_steps} steps.")


def describe_kill_and_resume(result: KillAndResume) -> str:
    """What happened, in two lines, with the measured difference."""
    source = (f"the checkpoint at step {result.resumed_from_step}" if result.resumed_from_step
              else "the start (no checkpoint had been committed yet)")
    verdict = ("identical to the uninterrupted run in every component" if result.identical
               else "DIFFERENT from the uninterrupted run: " + ", ".join(
                   c.name for c in result.comparison if not c.identical))
    return (f"killed after step {result.kill_at_step}; resumed from {source}; "
            f"{result.steps_redone} steps trained twice.\n"
            f"final state: {verdict}; max abs difference {result.max_abs_diff:g}")


class KillResumeLab:
    """The "Kill & resume" control: keeps a copy of the uninterrupted run's final checkpoint
    (so the lesson may delete its own folders) and a private scratch directory.

    Args:
        config: the run's configuration (its ``save_every_steps`` is the default choice).
        reference_checkpoint: the uninterrupted run's final checkpoint.
    """

    def __init__(self, config: DQNConfig, reference_checkpoint: str | os.PathLike[str]) -> None:
        self.config = config
        self._scratch = tempfile.TemporaryDirectory(prefix="ckptlab-kill-resume-")
        self.directory = Path(self._scratch.name)
        source = latest_valid_checkpoint(reference_checkpoint).path
        self.reference = self.directory / "uninterrupted" / source.name
        shutil.copytree(source, self.reference)
        self.last: KillAndResume | None = None  # what the last render showed

    def run(self, kill_at_step: int, save_every: int) -> KillAndResume:
        """Kill and resume once (see :func:`kill_and_resume`); the run's folder is removed."""
        before = set(self.directory.iterdir())
        try:
            return kill_and_resume(self.config, kill_at_step, save_every, self.reference,
                                   self.directory)
        finally:
            for path in set(self.directory.iterdir()) - before:
                shutil.rmtree(path, ignore_errors=True)

    def render(self, kill_at_step: int, save_every: int) -> list[Any]:
        """What the control shows: the figure and the measured difference."""
        result = self.last = self.run(kill_at_step, save_every)
        return [plot_kill_and_resume(result), describe_kill_and_resume(result)]

    def predictions(self) -> list[Any]:
        """What the learner predicts before pressing *Kill & resume*: the step the run resumes
        from, and whether its final state equals the uninterrupted run's (both answered by
        :attr:`last`, the run just made)."""
        from .predict import Outcome, Prediction

        total = self.config.total_steps

        def resume_outcomes(kill_at_step: int, save_every: int) -> list[Outcome]:
            kill = check_kill_step(kill_at_step, total)
            every = check_save_interval(save_every)
            last = kill // every * every
            found: dict[int, Outcome] = {}
            for key, text, why in (
                    (last, f"From step {last}" if last else "From the start (step 0)",
                     "The newest checkpoint committed before the kill: everything after it is "
                     "lost and trained again." if last else "No checkpoint had been committed "
                     "before the kill, so the run starts over, and still ends identical."),
                    (kill, f"From step {kill}",
                     "A kill saves nothing: the steps after the last checkpoint are lost and "
                     "trained again."),
                    (last + every, f"From step {last + every}",
                     "That save was due after the kill; the killed process never reached it."),
                    (0, "From the start (step 0)",
                     "Checkpoints written before a kill survive it; only a run without any "
                     "starts over.")):
                if key <= total:
                    found.setdefault(key, Outcome(key, text, why))
            return list(found.values())

        resume = Prediction(
            "kill-resume-step",
            lambda kill_at_step, save_every: (
                f"The run saves every {save_every} steps and is killed after step "
                f"{kill_at_step}. From which step will it resume?"),
            resume_outcomes, lambda **_: self._last().resumed_from_step)
        same = Prediction(
            "kill-final-state",
            lambda **_: "Compared with the uninterrupted run, the resumed run's final state "
                        "will be:",
            lambda **_: [
                Outcome("identical", "Identical, bit for bit",
                        "Every piece of state that decides the next steps was saved and "
                        "restored, so the steps trained again repeat the same computation."),
                Outcome("close", "Equal up to floating-point noise",
                        "Saving and loading add no noise (raw bytes, no rounding); on one "
                        "machine with the same library versions the runs are equal, not "
                        "close."),
                Outcome("different", "Different, but just as good",
                        "With the complete state restored nothing is left to make it differ: "
                        "RL is random only through its generators, and they are restored.")],
            lambda **_: ("identical" if self._last().identical else
                         "close" if self._last().max_abs_diff < 1e-3 else "different"))
        return [resume, same]

    def _last(self) -> KillAndResume:
        if self.last is None:
            raise CkptlabError("no run yet: press Kill & resume first")
        return self.last

    def close(self) -> None:
        """Remove the scratch directory (also done when the object is garbage-collected)."""
        self._scratch.cleanup()


# -- how often to save ----------------------------------------------------------------------

def expected_lost_steps(save_every: int) -> float:
    """Steps a crash at a uniformly random step loses on average: (interval - 1) / 2."""
    return (check_save_interval(save_every) - 1) / 2


def worst_case_lost_steps(save_every: int) -> int:
    """Steps a crash loses at worst (killed just before a save): interval - 1."""
    return check_save_interval(save_every) - 1


def tradeoff_rows(measured: Sequence[LostWork]) -> list[dict[str, Any]]:
    """One table row per measured interval: lost steps (expected, worst) and save overhead."""
    return [{"save every": r.save_every,
             "expected steps lost (\u2248 interval/2)": expected_lost_steps(r.save_every),
             "worst case (\u2248 interval)": worst_case_lost_steps(r.save_every),
             "saves": r.saves, "time saving (ms)": 1000 * r.save_seconds,
             "overhead (% of training)": 100 * r.overhead} for r in measured]


def plot_save_tradeoff(measured: Sequence[LostWork], save_every: int) -> list[Any]:
    """Expected and worst-case lost steps against the measured save overhead, with
    ``save_every`` (one of the measured intervals) marked and its row shown.

    Raises:
        CkptlabError: ``save_every`` was not measured.
    """
    import matplotlib.pyplot as plt

    from .lessons import show_table

    save_every = check_save_interval(save_every)
    intervals = [r.save_every for r in measured]
    if save_every not in intervals:
        raise CkptlabError(f"no measurement for a save interval of {save_every} steps; "
                           f"choose one of {intervals}")
    rows = tradeoff_rows(measured)
    chosen = rows[intervals.index(save_every)]
    fig, ax = plt.subplots(figsize=(8.5, 3.4))
    ax.plot(intervals, [r["worst case (\u2248 interval)"] for r in rows], "v-",
            color=ROLE["event"], label="worst case lost (interval \u2212 1)")
    ax.plot(intervals, [r["expected steps lost (\u2248 interval/2)"] for r in rows], "o-.",
            color=ROLE["discarded"], label="expected lost ((interval \u2212 1)/2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("save interval (steps)")
    ax.set_ylabel("steps lost to a crash (\u25bc \u25cf)")
    ax2 = ax.twinx()
    ax2.plot(intervals, [r["overhead (% of training)"] for r in rows], "s--",
             color=ROLE["resumed"], label="measured save overhead")
    ax2.set_ylabel("save overhead, % of training (\u25a0)")
    ax2.set_ylim(bottom=0)
    ax2.grid(False)
    ax.axvline(save_every, color="black", linewidth=1)
    ax.set_title(f"every {save_every} steps: lose {chosen['expected steps lost (≈ interval/2)']:g}"
                 f" steps on average, {chosen['worst case (≈ interval)']} at worst; saving "
                 f"costs {chosen['overhead (% of training)']:.2g}% of training time",
                 fontsize="medium")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center",
              bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    caption(fig, f"Steps a crash loses (expected and worst case) and the measured save overhead "
                 f"for save intervals of {intervals[0]} to {intervals[-1]} steps, log scales; "
                 f"saving every {save_every} steps loses "
                 f"{chosen['expected steps lost (≈ interval/2)']:g} steps on average and "
                 f"{chosen['worst case (≈ interval)']} at worst, for "
                 f"{chosen['overhead (% of training)']:.2g}% of the training time.")
    return [fig, show_table([chosen], floatfmt=".4g")]


# -- what SIGKILL models, and what it cannot ------------------------------------------------

@dataclass(frozen=True)
class UnsyncedWrite:
    """A file written without fsync by a process that then SIGKILLed itself."""

    exit_status: int        # -9: the process died of SIGKILL
    bytes_written: int      # what the process handed to write()
    bytes_read_back: int    # what the file holds after the kill
    intact: bool            # every byte read back equals the byte written

    def describe(self) -> str:
        """One line for the lesson."""
        return (f"the writer exited with status {self.exit_status} (killed by SIGKILL) without "
                f"ever calling fsync; the file holds {self.bytes_read_back:,} of the "
                f"{self.bytes_written:,} bytes written, "
                + ("every one of them intact." if self.intact else "NOT all of them intact."))


_WRITE_THEN_KILL = """\
import os, signal, sys
data = bytes(range(256)) * (int(sys.argv[2]) // 256)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, data)                      # into the kernel's page cache; no fsync, no close
os.kill(os.getpid(), signal.SIGKILL)
"""


def write_then_sigkill(path: str | os.PathLike[str], size: int = 1 << 20) -> UnsyncedWrite:
    """Start a process that writes ``size`` bytes to ``path`` with a plain ``write()`` - no
    fsync, not even a close - and SIGKILLs itself; then read the file back.

    The bytes are all there: a SIGKILL ends the process, not the kernel, and the kernel writes
    its page cache out to the disk later whether or not anyone called fsync. A power cut or an
    operating-system crash at that moment could have lost them. That is why a SIGKILL test can
    never catch a missing or misordered fsync.

    Raises:
        CkptlabError: ``size`` is not a positive multiple of 256, or the platform has no
            SIGKILL (Windows).
    """
    if not hasattr(signal, "SIGKILL"):
        raise CkptlabError("this demonstration needs SIGKILL, which Windows does not have")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 256:
        raise CkptlabError(f"size must be a positive multiple of 256 bytes, not {size!r}")
    target = Path(path)
    done = subprocess.run([sys.executable, "-c", _WRITE_THEN_KILL, str(target), str(size)],
                          capture_output=True, timeout=60, check=False)
    expected = bytes(range(256)) * (size // 256)
    read_back = target.read_bytes() if target.exists() else b""
    return UnsyncedWrite(done.returncode, size, len(read_back), read_back == expected)
