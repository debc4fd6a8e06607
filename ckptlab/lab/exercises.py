"""Automatic checks for the lessons' exercises: pass or fail, with a hint.

Each check compares the learner's answer with a value computed live from ckptlab objects
(never a stored number), and returns an :class:`ExerciseResult` that notebooks display.

Introduced in notebooks ``01_pipeline_trace`` to ``03_loss_curves``.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from torch import nn


@dataclass(frozen=True)
class ExerciseResult:
    """``passed`` is None when the exercise has not been attempted yet."""

    passed: bool | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "NOT ANSWERED YET"}[self.passed]
        return f"{status}: {self.message}" + (f"\nHint: {self.hint}" if self.hint and
                                               not self.passed else "")

    def _repr_html_(self) -> str:
        color = {True: "#1a7f37", False: "#cf222e", None: "#9a6700"}[self.passed]
        status = {True: "PASS", False: "FAIL", None: "Not answered yet"}[self.passed]
        hint = (f"<br><i>Hint:</i> {html.escape(self.hint)}" if self.hint and not self.passed
                else "")
        return (f"<div style='border-left:4px solid {color};padding:4px 10px'>"
                f"<b style='color:{color}'>{status}</b> &mdash; {html.escape(self.message)}"
                f"{hint}</div>")


_NOT_DONE = "replace `raise NotImplementedError` with your code"


def _attempt(fn: Callable[..., Any], label: str, hint: str,
             *args: Any) -> tuple[Any, ExerciseResult | None]:
    """Call the learner's function: ``(value, None)``, or ``(None, result)`` when it is not
    written yet or raised (a learner's bug is a result, not a crash)."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, ExerciseResult(None, _NOT_DONE, hint)
    except Exception as exc:
        return None, ExerciseResult(False, f"{label} raised {exc!r}", hint)


def check_parameter_count(answer: int | None, network: nn.Module) -> ExerciseResult:
    """Lesson 1: how many numbers does the Q-network hold (weights and biases)?"""
    hint = ("every nn.Linear(in, out) holds in*out weights plus out biases; "
            "sum(p.numel() for p in network.parameters()) counts them all")
    if answer is None:
        return ExerciseResult(None, "set `answer` to a whole number", hint)
    expected = sum(p.numel() for p in network.parameters())
    if int(answer) == expected:
        return ExerciseResult(True, f"the network holds {expected:,} numbers - exactly what "
                                    "every checkpoint must store for it (twice: online and "
                                    "target network)")
    off = "too few: did you forget the biases?" if answer < expected else "too many"
    return ExerciseResult(False, f"{answer:,} is {off}", hint)


def check_greedy_policy(policy: Callable[[np.ndarray], int] | None,
                        q_value_batches: Sequence[np.ndarray]) -> ExerciseResult:
    """Lesson 2: write ``greedy(q_values) -> action`` that picks the best action."""
    hint = "the greedy action is the index of the largest Q-value: np.argmax(q_values)"
    if policy is None:
        return ExerciseResult(None, "define `greedy(q_values)`", hint)
    # Real Q-values, plus pairs that make each action the best (a constant answer fails).
    cases = [*q_value_batches, np.array([0.3, 1.2]), np.array([2.5, -0.4]),
             np.array([-1.0, -0.2])]
    for q in cases:
        expected = int(np.argmax(q))
        got, failed = _attempt(policy, f"greedy({q.round(3).tolist()})", hint, np.array(q))
        if failed:
            return failed
        if got != expected:
            return ExerciseResult(False, f"for Q-values {q.round(3).tolist()} you chose "
                                         f"{got!r}, the greedy action is {expected}", hint)
    return ExerciseResult(True, f"correct on all {len(cases)} cases")


def check_moving_average(fn: Callable[[Sequence[float], int], Sequence[float]] | None,
                         values: Sequence[float], window: int) -> ExerciseResult:
    """Lesson 3: write a trailing moving average (the first points average what exists)."""
    from .lessons import smooth

    hint = ("point i is the mean of values[max(0, i - window + 1) : i + 1]; the output has "
            "as many points as the input")
    if fn is None:
        return ExerciseResult(None, "define `moving_average(values, window)`", hint)
    expected = smooth(values, window)
    got, failed = _attempt(fn, "moving_average", hint, list(values), window)
    if failed:
        return failed
    got = np.asarray(got, dtype=float)
    if got.shape != expected.shape:
        return ExerciseResult(False, f"{got.shape[0] if got.ndim else 0} points for "
                                     f"{len(values)} values", hint)
    if not np.allclose(got, expected, rtol=1e-9, atol=1e-9):
        i = int(np.argmax(~np.isclose(got, expected)))
        return ExerciseResult(False, f"point {i} is {got[i]:.3f}, expected {expected[i]:.3f}",
                              hint)
    return ExerciseResult(True, f"matches on all {len(values)} points")


def check_lost_steps(answer: int | None, save_every: int, killed_after: int) -> ExerciseResult:
    """Lesson 4: the steps a crash costs = steps since the last checkpoint."""
    hint = ("checkpoints exist at multiples of the save interval; the last one before the kill "
            "is at (killed_after // save_every) * save_every")
    if answer is None:
        return ExerciseResult(None, "set `lost` to a number of steps", hint)
    if not float(answer).is_integer():
        return ExerciseResult(False, f"{answer} is not a whole number of steps", hint)
    expected = killed_after - (killed_after // save_every) * save_every
    if int(answer) == expected:
        return ExerciseResult(True, f"{expected} steps: the last checkpoint was at step "
                                    f"{killed_after - expected}")
    return ExerciseResult(False, f"{answer} is not it", hint)


def check_omission(answer: str | None, expected: str, choices: Sequence[str]) -> ExerciseResult:
    """Lesson 5: name the piece of state whose omission caused a divergence."""
    hint = ("epsilon back at 1 points at the counters; losses far apart from the first updates "
            "at the random generators (other batches); losses that stay close for a while and "
            "then separate at the environment (same batches at first, new experience later)")
    if answer is None:
        return ExerciseResult(None, f"set `answer` to one of {list(choices)}", hint)
    if answer not in choices:
        return ExerciseResult(False, f"{answer!r} is not one of {list(choices)}", hint)
    if answer == expected:
        return ExerciseResult(True, f"yes: {expected}")
    return ExerciseResult(False, f"{answer} is present in that run", hint)


def check_keep_last(fn: Callable[[Sequence[int], int], Sequence[int]] | None) -> ExerciseResult:
    """Lesson 6: write ``keep_last(steps, n)`` -> the steps KeepLastN(n) keeps."""
    from ..engine import CheckpointRecord, KeepLastN, decide_retention

    hint = "sort the steps, keep the n largest: sorted(steps)[-n:]"
    if fn is None:
        return ExerciseResult(None, "define `keep_last(steps, n)`", hint)
    cases = [([500, 1000, 1500, 2000], 2), ([3000, 1000, 2000], 1), ([7, 3, 5, 1, 9], 3)]
    for steps, n in cases:
        records = [CheckpointRecord(f"step_{s:08d}", s, {}, 1) for s in steps]
        expected = sorted(d.step for d in decide_retention(records, [KeepLastN(n)]) if d.keep)
        got, failed = _attempt(fn, f"keep_last({steps}, {n})", hint, list(steps), n)
        if failed:
            return failed
        got = sorted(got)
        if got != expected:
            return ExerciseResult(False, f"keep_last({steps}, {n}) gave {got}, KeepLastN "
                                         f"keeps {expected}", hint)
    return ExerciseResult(True, f"agrees with KeepLastN on all {len(cases)} cases")


def check_find_corrupt(fn: Callable[[Path], str | None] | None,
                       checkpoint: Path) -> ExerciseResult:
    """Lesson 7: write ``find_corrupt(checkpoint_dir)`` -> the name of the file whose SHA-256
    does not match the manifest, or None when every file matches. Checked on three copies of
    ``checkpoint``: intact, with a damaged tensor file, with a damaged state file."""
    import shutil
    import tempfile

    from .failures import flip_byte

    hint = ("read manifest.json; for each name in manifest['files'], compare "
            "hashlib.sha256((checkpoint / name).read_bytes()).hexdigest() with its 'sha256'")
    if fn is None:
        return ExerciseResult(None, "define `find_corrupt(checkpoint)`", hint)
    with tempfile.TemporaryDirectory(prefix="ckptlab-exercise-") as tmp:
        for damaged in (None, "tensors.safetensors", "state.json"):
            copy = Path(tmp) / f"copy-{damaged}"
            shutil.copytree(checkpoint, copy)
            if damaged:
                flip_byte(copy / damaged)
            got, failed = _attempt(fn, "find_corrupt", hint, copy)
            if failed:
                return failed
            if got != damaged:
                what = "an intact checkpoint" if damaged is None else f"a damaged {damaged}"
                return ExerciseResult(False, f"on {what} you answered {got!r}", hint)
    return ExerciseResult(True, "right on an intact checkpoint and on two damaged ones")


def check_checklist(answer: set[str] | None, trainer_components: Sequence[str]) -> ExerciseResult:
    """Lesson 8: which components must a checkpoint hold for an exact resume?"""
    required = {"agent", "replay_buffer", "exploration", "progress", "env", "rng"}
    hint = ("everything that decides what happens next; lesson 5's ablation removed them one "
            f"at a time. The trainer's components are {sorted(trainer_components)}")
    if answer is None:
        return ExerciseResult(None, "set `answer` to a set of component names", hint)
    unknown = set(answer) - set(trainer_components)
    if unknown:
        return ExerciseResult(False, f"not components of the trainer: {sorted(unknown)}", hint)
    missing = required - set(answer)
    if missing:
        return ExerciseResult(False, f"without {sorted(missing)} the resumed run drifts away",
                              hint)
    return ExerciseResult(True, "that is everything that decides the future"
                          + ("; and the metric history keeps the curves continuous"
                             if "metrics" in answer else
                             " (add 'metrics' too, so the curves continue)"))


def check_rank_counts(answer: Sequence[int] | set[int] | None, buffer_capacity: int,
                      batch_size: int, candidates: Sequence[int] = range(1, 9)
                      ) -> ExerciseResult:
    """Lesson 9: the rank counts (among ``candidates``) a run's state can be split into."""
    hint = ("every rank holds buffer_capacity / N transitions and samples batch_size / N per "
            "update, so N must divide both (try the % operator)")
    if answer is None:
        return ExerciseResult(None, "set `allowed` to a set of rank counts", hint)
    try:
        given = {int(n) for n in answer}
    except (TypeError, ValueError):
        return ExerciseResult(False, f"{answer!r} is not a collection of whole numbers", hint)
    expected = {n for n in candidates if buffer_capacity % n == 0 and batch_size % n == 0}
    if given == expected:
        return ExerciseResult(True, f"yes: {sorted(expected)}")
    wrong, missing = sorted(given - expected), sorted(expected - given)
    return ExerciseResult(False, "not quite: " + "; ".join(
        ([f"{wrong} cannot split the state evenly"] if wrong else [])
        + ([f"{len(missing)} allowed count(s) missing"] if missing else [])), hint)
