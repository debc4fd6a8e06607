"""Automatic checks for the lessons' exercises: pass, fail with a specific message, or not
done yet.

Rules every check follows:

* The expected answer is computed live from a real run or ckptlab's own code, never stored
  and never written in the learner's cell.
* An unchanged template (``None``, or a function that still raises ``NotImplementedError``)
  is reported as *not done yet*, so a lesson runs top to bottom (and under nbval) untouched.
* A wrong answer gets a message naming what kind of wrong it is (wrong type, off by one, a
  missing piece, ...); anything the learner's code raises is reported, never a traceback.
* The hint is shown only after a failed attempt, or on request with :func:`hint`; the
  solutions are in ``notebooks/solutions.ipynb``, not in the lessons.
* Every verdict - pass or fail, not *not done yet* - is recorded in the learner's progress
  file (:func:`ckptlab.lab.progress.records_exercise`), which the start page's map shows.

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

import atexit
import html
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .a11y import EXERCISE_CLASS
from .progress import records_exercise

HINTS: dict[str, str] = {
    "skip_optimizer": (
        "Build the new Trainer, keep a copy of its optimizer's fresh state_dict(), restore the "
        "checkpoint, then load that fresh optimizer state back. Train with train(until_step=...) "
        "and compare the Q-networks' state_dict() tensors name by name."),
    "greedy": ("The greedy agent takes the action with the highest estimated return; numpy "
               "has a function that returns the *position* of the largest value."),
    "moving_average": ("The output has one point per input value. Near the start there are "
                       "fewer than `window` values to average: use the ones that exist."),
    "lost_steps": ("Checkpoints exist only at multiples of the save interval. Which is the "
                   "last one at or before the kill? Everything after it is trained again."),
    "omission": ("Compare the clues with the lesson's table of what each piece does: which "
                 "piece changes epsilon, which changes the very first batch, which pauses "
                 "learning, which changes only the size of the first updates, and which "
                 "keeps the runs together for a while?"),
    "retention": ("Three constraints: the best checkpoint must be saved at all (does your "
                  "save policy ever save at its step?), protected (protect_best) and the "
                  "total on disk must stay under the budget (fewer checkpoints kept); the "
                  "crash loss is the gap between a crash and the newest checkpoint alive."),
    "find_corrupt": ("The manifest lists every file with the SHA-256 it had when saved. "
                     "Recompute each file's hash with hashlib and compare."),
    "own_loop": ("A resumable loop: register every object whose state decides the next step "
                 "(the model, the optimizer, the data generator, your counter, and the "
                 "process-wide random generators that torch.randn without generator= draws "
                 "from: GlobalRNG()) with the manager, call restore_latest() before the loop, "
                 "continue from the restored step, and save with manager.save(step) on a "
                 "schedule."),
}


def hint(exercise: str) -> str:
    """The hint for ``exercise`` (on request; checks show it only after a failed attempt)."""
    try:
        return HINTS[exercise]
    except KeyError:
        raise KeyError(f"no exercise {exercise!r}; known: {sorted(HINTS)}") from None


@dataclass(frozen=True)
class ExerciseResult:
    """``passed`` is None while the exercise is not done yet. ``hint`` is shown only with a
    failure."""

    passed: bool | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "NOT DONE YET"}[self.passed]
        return f"{status}: {self.message}" + (f"\nHint: {self.hint}"
                                               if self.hint and self.passed is False else "")

    def _repr_html_(self) -> str:
        color = {True: "#1a7f37", False: "#cf222e", None: "#9a6700"}[self.passed]
        status = {True: "PASS", False: "FAIL", None: "Not done yet"}[self.passed]
        extra = (f"<br><i>Hint:</i> {html.escape(self.hint)}" if self.hint and
                 self.passed is False else "")
        # a status message (and its output area a live region, ckptlab.lab.a11y): a screen
        # reader announces the verdict; the word PASS/FAIL carries it, not only the colour
        return (f"<div class='{EXERCISE_CLASS}' role='status' "
                f"style='border-left:4px solid {color};padding:4px 10px'>"
                f"<b style='color:{color}'>{status}</b> &mdash; {html.escape(self.message)}"
                f"{extra}</div>")


def _not_done(what: str, exercise: str) -> ExerciseResult:
    return ExerciseResult(None, f"{what}, then run this cell again (a hint, if you want one: "
                                f"hint({exercise!r}))")


def _fail(message: str, exercise: str) -> ExerciseResult:
    # A learner's error can quote a path inside the check's scratch folder: never print it.
    scratch = re.escape(str(Path(tempfile.gettempdir()))) + r"/ckptlab-exercise-[^/\s'\"]*"
    return ExerciseResult(False, re.sub(scratch, "<the check's folder>", message),
                          HINTS[exercise])


def _attempt(fn: Callable[..., Any], label: str, exercise: str,
             *args: Any) -> tuple[Any, ExerciseResult | None]:
    """Call the learner's function: ``(value, None)``, or ``(None, result)`` when it is not
    written yet or raised (a learner's bug is a result, not a crash)."""
    if not callable(fn):
        return None, _fail(f"expected a function, got {type(fn).__name__}", exercise)
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, _not_done("replace `raise NotImplementedError` with your code", exercise)
    except Exception as exc:
        return None, _fail(f"{label} raised {type(exc).__name__}: {exc}", exercise)


def _as_number(answer: Any) -> float | None:
    """A plain number from an int, float, numpy or 0-d torch value; None for anything else."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        return float(answer.item())
    if isinstance(answer, (int, float, np.integer, np.floating)):
        return float(answer)
    return None


def keep_until_exit(path: str | Path) -> None:
    """Remove ``path`` when the kernel stops, not now: a lesson's last cell calls this instead
    of deleting its folder, so "Run all, then do the exercises" still finds the lesson's runs.

    Returns nothing, so a cell ending with it shows no (machine-specific) path."""
    atexit.register(shutil.rmtree, Path(path), ignore_errors=True)


def _scratch(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"ckptlab-exercise-{prefix}-")


# -- lesson 1 ---------------------------------------------------------------------------------
def _max_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@records_exercise("01_pipeline_trace", "skip_optimizer")
def check_skip_optimizer(fn: Callable[..., Any] | None, config: Any, checkpoint_step: int,
                         steps: int) -> ExerciseResult:
    """Lesson 1: ``fn(checkpoint, original_weights, steps)`` restores ``checkpoint`` into a new
    Trainer *except the optimizer*, trains ``steps`` more steps and returns the largest
    absolute difference between its Q-network's weights and ``original_weights`` (the original
    run's, ``steps`` after the checkpoint).

    The check trains its own run (``config``, saved at ``checkpoint_step``) in a scratch folder,
    so it needs nothing from the lesson's folder, and computes the same difference itself.
    """
    from ..dqn.train import Trainer

    if fn is None:
        return _not_done("define the function", "skip_optimizer")
    with _scratch("lesson1") as tmp:
        with Trainer(config, Path(tmp) / "run") as original:
            original.train(until_step=checkpoint_step)
            info = original.save()
            saved = {k: v.detach().clone() for k, v in original.agent.q_net.state_dict().items()}
            original.train(until_step=checkpoint_step + steps)
            weights = {k: v.detach().clone()
                       for k, v in original.agent.q_net.state_dict().items()}
        got, failed = _attempt(fn, "your function", "skip_optimizer", info.path,
                               {k: v.clone() for k, v in weights.items()}, steps)
        if failed:
            return failed
        with Trainer(config) as resumed:
            fresh_optimizer = resumed.agent.optimizer.state_dict()
            resumed.restore(info.path)
            resumed.agent.optimizer.load_state_dict(fresh_optimizer)
            resumed.train(until_step=checkpoint_step + steps)
            expected = _max_difference(resumed.agent.q_net.state_dict(), weights)
    value = _as_number(got)
    if value is None:
        return _fail(f"your function returned {type(got).__name__}; return one number, the "
                     "largest absolute difference (a float)", "skip_optimizer")
    if math.isnan(value):
        return _fail("your function returned nan", "skip_optimizer")
    if value < 0:
        return _fail(f"{value:.3g} is negative: a difference's size is its absolute value",
                     "skip_optimizer")
    if value == 0.0:
        return _fail("0 means the weights ended identical: the optimizer was restored after "
                     "all (or both sides are the same network). Skip only the optimizer.",
                     "skip_optimizer")
    if math.isclose(value, expected, rel_tol=1e-5, abs_tol=0.0):
        return ExerciseResult(True, f"largest weight difference {expected:.3g} after {steps} "
                                    "steps. Same seed, same weights, same buffer, same random "
                                    "numbers: only Adam's running averages were missing, and the "
                                    "runs went apart. It is not 'only the seed'.")
    if math.isclose(value, _max_difference(saved, weights), rel_tol=1e-5):
        return _fail(f"{value:.3g} is the difference between the checkpoint and the original "
                     f"{steps} steps later: train the restored trainer {steps} more steps "
                     "before comparing", "skip_optimizer")
    return _fail(f"{value:.3g} is not the largest difference this check measures; check that "
                 f"you trained exactly {steps} steps after the checkpoint (until step "
                 f"{checkpoint_step + steps}), skipped only the optimizer, and took the maximum "
                 "over every tensor", "skip_optimizer")


# -- lesson 2 ---------------------------------------------------------------------------------
@records_exercise("02_prediction_trace", "greedy")
def check_greedy_policy(policy: Callable[[np.ndarray], int] | None,
                        q_value_batches: Sequence[np.ndarray]) -> ExerciseResult:
    """Lesson 2: ``greedy(q_values) -> action`` picks the action with the largest Q-value."""
    if policy is None:
        return _not_done("define `greedy(q_values)`", "greedy")
    # Real Q-values, plus pairs that make each action the best (a constant answer fails).
    cases = [*q_value_batches, np.array([0.3, 1.2]), np.array([2.5, -0.4]),
             np.array([-1.0, -0.2])]
    for q in cases:
        expected = int(np.argmax(q))
        got, failed = _attempt(policy, f"greedy({q.round(3).tolist()})", "greedy", np.array(q))
        if failed:
            return failed
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, np.integer)):
            return _fail(f"greedy returned {got!r} ({type(got).__name__}); an action is a "
                         "whole number, the index of an action", "greedy")
        if got == int(np.argmin(q)) and got != expected:
            return _fail(f"for Q-values {q.round(3).tolist()} you chose {got}, the action "
                         "with the *lowest* estimated return", "greedy")
        if got != expected:
            return _fail(f"for Q-values {q.round(3).tolist()} you chose {got}, which is not "
                         "an action here (CartPole has actions 0 and 1)", "greedy")
    return ExerciseResult(True, f"correct on all {len(cases)} cases")


# -- lesson 3 ---------------------------------------------------------------------------------
@records_exercise("03_loss_curves", "moving_average")
def check_moving_average(fn: Callable[[Sequence[float], int], Sequence[float]] | None,
                         values: Sequence[float], window: int) -> ExerciseResult:
    """Lesson 3: a trailing moving average (the first points average what exists)."""
    from .lessons import smooth

    if fn is None:
        return _not_done("define `moving_average(values, window)`", "moving_average")
    expected = smooth(values, window)
    got, failed = _attempt(fn, "moving_average", "moving_average", list(values), window)
    if failed:
        return failed
    try:
        got = np.asarray(got, dtype=float)
    except (TypeError, ValueError):
        return _fail(f"moving_average returned {type(got).__name__}; return a list of "
                     "numbers", "moving_average")
    if got.ndim != 1 or got.shape != expected.shape:
        n = got.shape[0] if got.ndim else 0
        extra = (f" (did you start at index {window - 1}? the first points average fewer "
                 "values)" if n == len(values) - window + 1 else "")
        return _fail(f"{n} points for {len(values)} values{extra}", "moving_average")
    if np.allclose(got, expected, rtol=1e-9, atol=1e-9):
        return ExerciseResult(True, f"matches on all {len(values)} points")
    for other in (window - 1, window + 1):
        if other >= 1 and np.allclose(got, smooth(values, other), rtol=1e-9, atol=1e-9):
            return _fail(f"off by one: your points average the last {other} values, not "
                         f"{window}", "moving_average")
    if np.allclose(got, np.asarray(values, dtype=float)):
        return _fail("the values came back unchanged", "moving_average")
    i = int(np.argmax(~np.isclose(got, expected)))
    return _fail(f"point {i} is {got[i]:.3f}, expected {expected[i]:.3f}", "moving_average")


# -- lesson 4 ---------------------------------------------------------------------------------
@records_exercise("04_interrupt_and_resume", "lost_steps")
def check_lost_steps(answer: Any, save_every: int, killed_after: int) -> ExerciseResult:
    """Lesson 4: the steps a crash costs = steps since the last checkpoint."""
    if answer is None:
        return _not_done("set `lost` to a number of steps", "lost_steps")
    value = _as_number(answer)
    if value is None:
        return _fail(f"{answer!r} ({type(answer).__name__}) is not a number of steps",
                     "lost_steps")
    if not float(value).is_integer():
        return _fail(f"{value} is not a whole number of steps", "lost_steps")
    value = int(value)
    last = (killed_after // save_every) * save_every
    expected = killed_after - last
    if value == expected:
        return ExerciseResult(True, f"{expected} steps: the last checkpoint was at step {last}, "
                                    f"so steps {last + 1}-{killed_after} are trained again")
    if abs(value - expected) == 1:
        return _fail(f"off by one: {value}. Steps {last + 1} to {killed_after} are lost; "
                     "count them", "lost_steps")
    if value == killed_after:
        return _fail(f"{value} is every step of the run: only the steps after the last "
                     "checkpoint are lost", "lost_steps")
    if value == save_every:
        return _fail(f"{value} is a whole interval, the worst case; here the kill came before "
                     "the next save was due", "lost_steps")
    if value == last:
        return _fail(f"{value} is where the resume starts, not how many steps are lost",
                     "lost_steps")
    return _fail(f"{value} is not it", "lost_steps")


# -- lesson 5 ---------------------------------------------------------------------------------
# Drawn from these (each leaves its own fingerprint in the clues); answers may name any of
# ANSWER_CHOICES.
MYSTERY_PIECES = ("optimizer", "counters", "rng", "env")
ANSWER_CHOICES = ("optimizer", "replay_buffer", "counters", "rng", "env")
ALL_PIECES = ("weights", "optimizer", "replay_buffer", "counters", "rng", "env", "metrics")
_WHAT_IT_WOULD_SHOW = {
    "weights": "the agent would play badly at once: losses and returns far off from the start",
    "optimizer": "the first loss equal to the uninterrupted run's (same weights, same batch) "
                 "and different from the second update on (a fresh Adam steps differently)",
    "replay_buffer": "losses far off from the very first update, the batches drawn from the few "
                     "transitions collected since the resume",
    "counters": "epsilon back at 1 right after the resume (and no updates until the step "
                "count passes learning_starts again)",
    "rng": "a different loss from the very first update (another batch is drawn), and the "
           "smoothed losses apart within a few updates",
    "env": "losses close to the uninterrupted run's (the first may even be equal: same "
           "buffer, same generator) and smoothed losses together for hundreds of steps, then "
           "apart as the new episode's experience fills the batches",
    "metrics": "nothing at all: the metric history changes no step",
}


@dataclass(frozen=True)
class MysteryRun:
    """Lesson 5's mystery: a resume with every piece but ``missing``, and what it did.
    ``missing`` is drawn by seed; the check reads it from here, never from the learner's cell."""

    missing: str
    after: Any          # ablation.AfterResume
    reference: Any      # the uninterrupted run's AfterResume

    def clues(self) -> dict[str, Any]:
        """What a learner can read off the run (the same numbers the plots show)."""
        from .ablation import separation_step

        run, ref = self.after, self.reference
        first_equal = bool(len(run.losses) and len(ref.losses)
                           and run.loss_steps[0] == ref.loss_steps[0]
                           and run.losses[0] == ref.losses[0])
        n = min(len(run.losses), len(ref.losses))
        same = 0
        while (same < n and run.loss_steps[same] == ref.loss_steps[same]
               and run.losses[same] == ref.losses[same]):
            same += 1
        return {"epsilon right after the resume": round(float(run.epsilons[0]), 3),
                "first update (steps after the resume)":
                    int(run.loss_steps[0]) if len(run.loss_steps) else None,
                "first loss equal to the uninterrupted run's": first_equal,
                "updates with exactly the uninterrupted run's loss, before the first "
                "difference": same,
                "smoothed losses >5% apart from step": separation_step(run, ref)}

    def __repr__(self) -> str:  # never print the answer
        return "MysteryRun(missing=<hidden>)"


def mystery_piece(seed: int) -> str:
    """The piece lesson 5's mystery run leaves out for ``seed`` (one of MYSTERY_PIECES)."""
    return random.Random(f"mystery:{seed}").choice(MYSTERY_PIECES)


def draw_mystery(seed: int, checkpoint: str | Path, config: Any, steps: int,
                 reference: Any, eval_key_step: int) -> MysteryRun:
    """Resume ``checkpoint`` with one piece, drawn by ``seed``, left out; train ``steps``."""
    from .ablation import continue_training, resume_partially

    missing = mystery_piece(seed)
    trainer = resume_partially(checkpoint, config, frozenset(ALL_PIECES) - {missing})
    try:
        after = continue_training(trainer, steps, eval_key_step=eval_key_step)
    finally:
        trainer.close()
    return MysteryRun(missing, after, reference)


@records_exercise("05_what_goes_in_a_checkpoint", "omission")
def check_omission(answer: Any, mystery: MysteryRun) -> ExerciseResult:
    """Lesson 5: name the piece of state whose omission caused the mystery run's divergence."""
    choices = list(ANSWER_CHOICES)
    if answer is None:
        return _not_done(f"set `answer` to one of {choices}", "omission")
    if not isinstance(answer, str):
        return _fail(f"{answer!r} is a {type(answer).__name__}; answer with one name, a "
                     f"string from {choices}", "omission")
    name = answer.strip().lower().replace(" ", "_")
    if name in ("weights", "metrics"):
        return _fail(f"without {name}: {_WHAT_IT_WOULD_SHOW[name]}. Not this run.", "omission")
    if name not in choices:
        return _fail(f"{answer!r} is not one of {choices}", "omission")
    if name == mystery.missing:
        return ExerciseResult(True, f"yes: {name}. Without it you see "
                                    f"{_WHAT_IT_WOULD_SHOW[name]}, as this run did.")
    return _fail(f"without {name} you would see {_WHAT_IT_WOULD_SHOW[name]}; compare with "
                 "this run's clues", "omission")


# -- lesson 6 ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetentionVerdict:
    """What replaying a strategy over the recorded run showed."""

    best_kept: bool
    peak_bytes: int
    peak_step: int
    worst_loss: int
    worst_crash_step: int
    final_steps: list[int]


def judge_strategy(outcome: Any, best_step: int, total_steps: int) -> RetentionVerdict:
    """Read a replayed strategy's outcome: is the best checkpoint there at the end, the most
    bytes on disk at any time, and the most steps a crash at any moment would cost (the gap
    between the crash and the newest checkpoint alive just before it)."""
    peak_step, peak = max(outcome.disk_bytes, key=lambda sb: sb[1], default=(0, 0))
    worst, worst_at, newest, previous = 0, 0, 0, 0
    observations = list(outcome.alive) + [(total_steps + 1, None)]
    for step, alive in observations:
        # a crash just before `step` (the state at step - 1) resumes from `newest`
        if step - 1 - newest > worst:
            worst, worst_at = step - 1 - newest, step - 1
        if alive is not None:
            newest = max(alive, default=0)
        previous = step
    del previous
    return RetentionVerdict(best_step in outcome.final_steps, int(peak), int(peak_step),
                            int(worst), int(worst_at), list(outcome.final_steps))


@records_exercise("06_retention_strategies", "retention")
def check_retention_choice(choice: Any, recorded: Sequence[str | Path], best_step: int,
                           disk_budget_bytes: int, max_lost_steps: int,
                           total_steps: int) -> ExerciseResult:
    """Lesson 6: a :class:`~ckptlab.lab.retention_lab.Strategy` that, replayed over the
    recorded run, keeps the best policy, never has more than ``disk_budget_bytes`` on disk
    and never lets a crash cost more than ``max_lost_steps`` steps."""
    from .retention_lab import Strategy, replay_strategy

    if choice is None:
        return _not_done("set `choice` to a Strategy(...)", "retention")
    if not isinstance(choice, Strategy):
        return _fail(f"`choice` is a {type(choice).__name__}; build a Strategy(name, "
                     "save_policy=..., retention=[...], ...)", "retention")
    missing = [str(p) for p in recorded if not Path(p).is_dir()]
    if missing:
        return ExerciseResult(None, "the recorded run is gone (its folder was removed); run "
                                    "the lesson from the top again")
    with _scratch("lesson6") as tmp:
        try:
            outcome = replay_strategy(recorded, choice, Path(tmp) / "replay")
        except Exception as exc:  # a learner's bad policy object is a result, not a crash
            return _fail(f"replaying your strategy raised {type(exc).__name__}: {exc}",
                         "retention")
    verdict = judge_strategy(outcome, best_step, total_steps)
    problems = []
    if not verdict.best_kept:
        if best_step not in outcome.saved_steps:
            problems.append(f"the best policy (step {best_step}) was never saved: your save "
                            "policy skipped that step")
        else:
            when, why = outcome.deleted().get(best_step, (None, "?"))
            problems.append(f"the best policy (step {best_step}) was saved, then deleted at "
                            f"the save of step {when} ({why})")
    if verdict.peak_bytes > disk_budget_bytes:
        problems.append(f"{verdict.peak_bytes:,} bytes on disk after the save at step "
                        f"{verdict.peak_step}: over the budget of {disk_budget_bytes:,}")
    if verdict.worst_loss > max_lost_steps:
        problems.append(f"a crash at step {verdict.worst_crash_step} would lose "
                        f"{verdict.worst_loss} steps, more than {max_lost_steps}")
    if problems:
        return _fail("; ".join(problems), "retention")
    return ExerciseResult(True, f"'{choice.name}' keeps the best policy (step {best_step}), "
                                f"peaks at {verdict.peak_bytes:,} of {disk_budget_bytes:,} "
                                f"bytes, and a crash costs at most {verdict.worst_loss} "
                                f"steps; at the end it keeps steps {verdict.final_steps}")


# -- lesson 7 ---------------------------------------------------------------------------------
@records_exercise("07_failure_modes", "find_corrupt")
def check_find_corrupt(fn: Callable[[Path], str | None] | None,
                       checkpoint: str | Path) -> ExerciseResult:
    """Lesson 7: ``find_corrupt(checkpoint_dir)`` -> the name of the file whose SHA-256 does not
    match the manifest, or None when every file matches. Checked on three copies of
    ``checkpoint``: intact, with a damaged tensor file, with a damaged state file."""
    from .failures import flip_byte

    if fn is None:
        return _not_done("define `find_corrupt(checkpoint)`", "find_corrupt")
    if not Path(checkpoint).is_dir():
        return ExerciseResult(None, "the lesson's checkpoint is gone (its folder was "
                                    "removed); run the lesson from the top again")
    with _scratch("lesson7") as tmp:
        for damaged in (None, "tensors.safetensors", "state.json"):
            copy = Path(tmp) / f"copy-{damaged}"
            shutil.copytree(checkpoint, copy)
            if damaged:
                flip_byte(copy / damaged)
            got, failed = _attempt(fn, "find_corrupt", "find_corrupt", copy)
            if failed:
                return failed
            what = "an intact checkpoint" if damaged is None else f"a damaged {damaged}"
            if isinstance(got, Path) or (isinstance(got, str) and "/" in got):
                if damaged is not None and Path(got).name == damaged:
                    return _fail(f"on {what} you returned a path; return only the file's "
                                 f"name ({damaged!r})", "find_corrupt")
            if got is not None and not isinstance(got, (str, Path)):
                return _fail(f"on {what} you returned a {type(got).__name__}; return one "
                             "file name (a string) or None", "find_corrupt")
            if got != damaged:
                if damaged is None:
                    return _fail(f"on an intact checkpoint you answered {got!r}; every hash "
                                 "matches there, so the answer is None", "find_corrupt")
                if got is None:
                    return _fail(f"on {what} you answered None: the damaged file was not "
                                 "noticed (compare every file listed in the manifest)",
                                 "find_corrupt")
                return _fail(f"on {what} you answered {got!r}", "find_corrupt")
    return ExerciseResult(True, "right on an intact checkpoint and on two damaged ones")


# -- lesson 8 ---------------------------------------------------------------------------------
class _Killed(BaseException):
    """Raised inside the learner's loop by the check's hook: the loop stops at once, like a
    killed process (a BaseException, so an ``except Exception`` in the loop cannot catch it)."""


def _state_of(component: Any) -> Any:
    if isinstance(component, torch.Generator):
        return component.get_state()
    return component.state_dict()


def _first_difference(a: Any, b: Any, path: str) -> str | None:
    """Where two states differ (None when equal bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return path
        same = (a.dtype == b.dtype and a.shape == b.shape
                and bool(torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a,
                                     b.view(torch.uint8) if b.dtype == torch.bool else b)))
        return None if same else path
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path} (keys {sorted(map(str, set(a) ^ set(b)))})"
        for k in a:
            found = _first_difference(a[k], b[k], f"{path}/{k}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return path
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}/{i}")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else path


def _holds_global_rng(state: Any) -> bool:
    """Whether a saved component state holds the process-wide generators (GlobalRNG's keys,
    alone or beside others as in the DQN run's rng component)."""
    from ..engine.global_rng import GLOBAL_RNG_KEYS

    return isinstance(state, Mapping) and set(GLOBAL_RNG_KEYS) <= set(state)


def _run_and_sigkill(fn: Callable[..., Any], directory: Path, total_steps: int,
                     kill_after: int) -> tuple[list[int], ExerciseResult | None]:
    """Run the learner's loop in a forked process that SIGKILLs itself right after step
    ``kill_after``: no cleanup, no last save, no lock release by the loop - a real crash.
    Returns the steps it reported, and a result if it failed before the kill."""
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child() -> None:
        def after_step(step: int) -> None:
            writer.send(("step", int(step)))
            if step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            fn(directory, total_steps, after_step)
            writer.send(("finished", ""))
        except NotImplementedError:
            writer.send(("not done", ""))
        except BaseException as exc:  # reported to the parent, which shows it
            writer.send(("raised", f"{type(exc).__name__}: {exc}"))

    process = context.Process(target=child, daemon=True)
    process.start()
    writer.close()
    process.join(timeout=600)
    if process.is_alive():
        process.kill()
        process.join()
        return [], _fail("your loop ran for 10 minutes without reaching the kill", "own_loop")
    events = []
    while reader.poll():
        try:
            events.append(reader.recv())
        except EOFError:
            break
    reader.close()
    steps = [value for kind, value in events if kind == "step"]
    for kind, value in events:
        if kind == "not done":
            return steps, _not_done("fill in the parts marked `your code here`", "own_loop")
        if kind == "raised":
            return steps, _fail(f"your loop raised {value}", "own_loop")
    return steps, None


@records_exercise("08_review", "own_loop")
def check_own_loop(fn: Callable[..., Any] | None, total_steps: int = 60,
                   kill_after: int = 37) -> ExerciseResult:
    """Lesson 8: ``fn(run_dir, total_steps, after_step)`` is the learner's training loop,
    checkpointed with a :class:`~ckptlab.engine.CheckpointManager`; it calls
    ``after_step(step)`` after every step and returns ``{name: component}``.

    The check runs it uninterrupted in one folder; in another it runs it in a forked process
    that is killed with SIGKILL right after step ``kill_after`` (where fork is unavailable,
    ``after_step`` raises instead, so nothing after that line runs), then calls it again, which
    must resume. Both final states must be equal bit for bit, the second call must have
    resumed (not started over), and the checkpoint must hold every returned component,
    including at least one of the learner's own classes.
    """
    from ..engine import (
        CheckpointManager,
        CkptlabError,
        RollbackRequiredError,
        RunLockedError,
        load_checkpoint_state,
    )

    if fn is None:
        return _not_done("define your training loop", "own_loop")
    if not callable(fn):
        return _fail(f"expected your loop function, got {type(fn).__name__}", "own_loop")

    def run(directory: Path, kill: int | None) -> tuple[Any, list[int], ExerciseResult | None]:
        seen: list[int] = []

        def after_step(step: int) -> None:
            seen.append(int(step))
            if kill is not None and step == kill:
                raise _Killed

        try:
            return fn(directory, total_steps, after_step), seen, None
        except _Killed:
            return None, seen, None
        except NotImplementedError:
            return None, seen, _not_done("fill in the parts marked `your code here`", "own_loop")
        except RollbackRequiredError:
            # It saved a step below the checkpoints it left before the kill: it never restored.
            return None, seen, _fail("after the kill your loop started again from step 1 and "
                                     "tried to save over the newer checkpoints: restore the "
                                     "latest checkpoint (manager.restore_latest()) and continue "
                                     "from its step", "own_loop")
        except RunLockedError:
            # Its message names the holder's command line (a path of this machine): say what
            # it means instead.
            return None, seen, _fail(
                "your loop raised RunLockedError: the stopped loop still holds the run "
                "directory's writer lock (open the manager with `with CheckpointManager(...) "
                "as manager:` so it is released)", "own_loop")
        except CkptlabError as exc:
            return None, seen, _fail(f"your loop raised {type(exc).__name__}: {exc}",
                                     "own_loop")
        except Exception as exc:
            return None, seen, _fail(f"your loop raised {type(exc).__name__}: {exc}",
                                     "own_loop")

    with _scratch("lesson8") as tmp:
        straight, _, failed = run(Path(tmp) / "uninterrupted", None)
        if failed:
            return failed
        if not isinstance(straight, Mapping) or not straight:
            return _fail(f"your loop returned {type(straight).__name__}; return a dict "
                         "{name: component} of everything it trains with", "own_loop")
        try:
            straight_states = {k: _state_of(v) for k, v in straight.items()}
        except NotImplementedError:
            return _not_done("write state_dict() and load_state_dict()", "own_loop")
        except Exception as exc:
            return _fail(f"state_dict() of a returned component raised "
                         f"{type(exc).__name__}: {exc}", "own_loop")
        killed_dir = Path(tmp) / "killed"
        if "fork" in multiprocessing.get_all_start_methods():
            before, failed = _run_and_sigkill(fn, killed_dir, total_steps, kill_after)
        else:  # no fork here: stop the loop by an exception instead (nothing after runs)
            _, before, failed = run(killed_dir, kill_after)
        if failed:
            return failed
        if before[-1:] != [kill_after]:
            return _fail(f"the loop ended before step {kill_after}; run {total_steps} steps "
                         "and call after_step(step) after each", "own_loop")
        resumed, after, failed = run(killed_dir, None)
        checkpoints = CheckpointManager(killed_dir, create=False).committed() \
            if killed_dir.is_dir() else []
        if not checkpoints:
            return failed or _fail("nothing was saved in run_dir: no checkpoint for the resume "
                                   "to start from (save with manager.save(step))", "own_loop")
        _, saved = load_checkpoint_state(checkpoints[-1])
        own = [name for name, c in straight.items()
               if not type(c).__module__.startswith(("torch", "numpy", "ckptlab"))]
        # A missing component is the root cause even when the resumed call then failed (an
        # unregistered step counter restarts at 1 and its first save is refused).
        unsaved = sorted(set(straight) - set(saved))
        if unsaved:
            return _fail(f"{unsaved} not in your checkpoint (it holds {sorted(saved)}): "
                         "register every component with the manager", "own_loop")
        if failed:
            return failed
        if not own:
            return _fail("every component is a library object; write and register your own "
                         "class with state_dict()/load_state_dict() (the step counter)",
                         "own_loop")
        if not after or after[0] == 1:
            return _fail("after the kill your loop started again from step 1: restore the "
                         "latest checkpoint (manager.restore_latest()) and continue from its "
                         "step", "own_loop")
        if not isinstance(resumed, Mapping) or sorted(resumed) != sorted(straight):
            return _fail("the resumed call returned other components than the uninterrupted "
                         "one", "own_loop")
        for name in straight:
            where = _first_difference(straight_states[name], _state_of(resumed[name]), name)
            if where:
                differs = (f"killed at step {kill_after} and resumed from step {after[0] - 1}, "
                           f"the final state differs from the uninterrupted run's at {where}")
                if not any(_holds_global_rng(state) for state in saved.values()):
                    return _fail(f"{differs}, and your checkpoint holds no state of the "
                                 "process-wide random generators: anything drawn from them "
                                 "(torch.randn without generator=, dropout, np.random, "
                                 "random) differs after the resume. Register GlobalRNG() "
                                 "(from ckptlab) with the manager", "own_loop")
                return _fail(f"{differs}: something that decides the next steps was not "
                             "saved or not restored", "own_loop")
    return ExerciseResult(True, f"killed after step {kill_after}, resumed from step "
                                f"{after[0] - 1}: the final state equals the uninterrupted "
                                f"run's bit for bit, including your own {own}")


HINTS["rank_counts"] = ("every rank holds buffer_capacity / N transitions and samples "
                        "batch_size / N per update, so N must divide both (try the % operator)")


@records_exercise("09_when_one_machine_is_not_enough", "rank_counts")
def check_rank_counts(answer: Sequence[int] | set[int] | None, buffer_capacity: int,
                      batch_size: int, candidates: Sequence[int] = range(1, 9)
                      ) -> ExerciseResult:
    """Lesson 9: the rank counts (among ``candidates``) a run's state can be split into."""
    if answer is None:
        return _not_done("set `allowed` to a set of rank counts", "rank_counts")
    if isinstance(answer, (str, bytes)):
        return _fail(f"{answer!r} is text: give a set of whole numbers, like {{1, 2}}",
                     "rank_counts")
    try:
        given = {int(n) for n in answer}
    except (TypeError, ValueError):
        return _fail(f"{answer!r} is not a collection of whole numbers", "rank_counts")
    expected = {n for n in candidates if buffer_capacity % n == 0 and batch_size % n == 0}
    if given == expected:
        return ExerciseResult(True, f"yes: {sorted(expected)}")
    wrong, missing = sorted(given - expected), sorted(expected - given)
    return _fail("not quite: " + "; ".join(
        ([f"{wrong} cannot split the state evenly"] if wrong else [])
        + ([f"{len(missing)} allowed count(s) missing"] if missing else [])), "rank_counts")


HINTS["own_env"] = ("get_state() must return everything the glider's next steps depend on - "
                    "its position, velocity, wind and step count - and set_state(state) must "
                    "put each of them back; its random generator ckptlab saves for you")


@records_exercise("11_bring_your_own_library", "own_env")
def check_own_env(env_class: Any) -> ExerciseResult:
    """Lesson 11: ``env_class`` is the learner's subclass of the lesson's ``Glider`` with
    ``get_state()`` and ``set_state(state)``. The check trains a small PPO on it straight
    through, and again stopped mid-run and resumed by :class:`ckptlab.sb3.CkptlabCallback`;
    the two final states must be equal bit for bit."""
    from ..engine import CkptlabError
    from ..sb3 import UnsupportedEnvironmentError
    from .sb3_lab import Glider, glider_resume_differences

    if env_class is None:
        return _not_done("set `answer` to your environment class", "own_env")
    if not (isinstance(env_class, type) and issubclass(env_class, Glider)):
        return _fail(f"expected your subclass of Glider, got {env_class!r}", "own_env")
    with _scratch("lesson11") as tmp:
        try:
            differing = glider_resume_differences(env_class, tmp)
        except NotImplementedError:
            return _not_done("write get_state() and set_state(state)", "own_env")
        except UnsupportedEnvironmentError:
            return _fail("ckptlab refused the environment: it has no get_state() and "
                         "set_state(state) methods (both are needed)", "own_env")
        except (CkptlabError, TypeError) as exc:  # e.g. a value that cannot be stored
            return _fail(f"saving or restoring your state failed: {exc}", "own_env")
        except Exception as exc:
            return _fail(f"your environment raised {type(exc).__name__}: {exc}", "own_env")
    if differing:
        return _fail(f"stopped and resumed, the run differs from the uninterrupted one (first "
                     f"at {differing[0]}): something the glider's future depends on is not in "
                     "get_state() or not put back by set_state()", "own_env")
    return ExerciseResult(True, "stopped mid-run and resumed, the PPO run on your glider "
                                "equals the uninterrupted one bit for bit")
