"""A learner's progress through the lessons, kept in one small file on their own machine.

What is recorded, lesson by lesson: every quiz question's first try (and whether it is right
now), recall answers as typed, predictions, and every exercise check that passed or failed. The
start page (:func:`show_progress`) and ``ckptlab progress`` read it back as a map: lessons
done, first-try scores, exercises passed, and what to revisit (each missed question linked to
the lesson section that teaches it). Nothing ever leaves the machine: there is no network code
here, only this file.

Where the file is (the first that applies):

* ``CKPTLAB_PROGRESS=off``: nothing is read or written (``make present`` sets it: a class
  answering on the projector is not one learner);
* ``CKPTLAB_PROGRESS_FILE``: that file (the tests and nbval use a temporary one);
* ``CKPTLAB_DATA_DIR``: ``progress.json`` in that folder;
* otherwise the user's data folder: ``$XDG_DATA_HOME/ckptlab`` (default
  ``~/.local/share/ckptlab``) on Linux, ``~/Library/Application Support/ckptlab`` on macOS,
  ``%LOCALAPPDATA%\\ckptlab`` on Windows, always ending in ``progress.json``.

The format (version 1), UTF-8 JSON::

    {
      "format": "ckptlab-progress",
      "version": 1,
      "created": "2026-12-01T09:30:00+00:00",
      "updated": "2026-12-01T10:05:12+00:00",
      "lessons": {
        "04_interrupt_and_resume": {
          "questions": {
            "sigkill": {"kind": "single", "first_try": false, "correct": true,
                        "attempts": 2, "first_at": "...", "last_at": "..."},
            "lost-steps": {"kind": "recall", "first_try": true, "correct": true,
                           "attempts": 1, "answer": "1200", "first_at": "...", "last_at": "..."}
          },
          "exercises": {
            "lost_steps": {"passed": true, "attempts": 2, "first_passed_at": "...",
                           "last_at": "...", "message": "1200 steps: ..."}
          }
        }
      }
    }

``first_try`` is the verdict of the first attempt (``false`` too when the answer was shown
before any attempt) and never changes; ``correct`` is the latest verdict. A self-checked recall
question has ``first_try: null`` and the learner's own ``self_mark``; a prediction has
``kind: "predict"`` and whether it matched the run in ``correct``. Typed answers are cut at
2000 characters.

Safety: every change is a read-modify-write under an operating-system lock on
``progress.json.lock`` (two kernels answering at once both land), written to a temporary file,
flushed and renamed over the old one, so a crash leaves the old file or the new one, never half
of one. A file that is not valid JSON, or not a ckptlab progress file, is **never**
overwritten: every read and write stops with :class:`ProgressFileError`, whose message names
the file and the way out (``ckptlab progress --reset``, which moves it aside, never deletes it).

Introduced in notebook ``00_start_here``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import html
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import CkptlabError
from ..engine.lock import try_lock, unlock

FORMAT = "ckptlab-progress"
VERSION = 1
FILE_NAME = "progress.json"
SWITCH_VARIABLE = "CKPTLAB_PROGRESS"
FILE_VARIABLE = "CKPTLAB_PROGRESS_FILE"
DIR_VARIABLE = "CKPTLAB_DATA_DIR"
ANSWER_LIMIT = 2000          # characters of a typed answer kept
LOCK_TIMEOUT_S = 10.0

# Every lesson's exercises, by the name its check records (the notebooks' exercise cells carry
# the same name in their metadata; tests/lab/test_progress_file.py keeps the two in step).
EXERCISES: dict[str, tuple[str, ...]] = {
    "01_pipeline_trace": ("skip_optimizer",),
    "02_prediction_trace": ("greedy",),
    "03_loss_curves": ("moving_average",),
    "04_interrupt_and_resume": ("lost_steps",),
    "05_what_goes_in_a_checkpoint": ("omission",),
    "06_retention_strategies": ("retention",),
    "07_failure_modes": ("find_corrupt",),
    "08_review": ("own_loop",),
    "09_when_one_machine_is_not_enough": ("rank_counts",),
    "10_checkpointing_in_practice": ("body_pattern",),
    "11_bring_your_own_library": ("own_env",),
    "12_closing_review": ("run_plan",),
}


class ProgressFileError(CkptlabError):
    """The progress file cannot be used as it is (unreadable, not JSON, another program's,
    or from a newer ckptlab); it is left untouched."""


# --------------------------------------------------------------------------------------------
# where the file is
# --------------------------------------------------------------------------------------------

def user_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The platform's folder for this user's application data, ``.../ckptlab``."""
    env = os.environ if environ is None else environ
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        base = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "ckptlab"
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        return home / "Library" / "Application Support" / "ckptlab"
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "ckptlab"


def progress_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The progress file this process uses, or ``None`` when recording is switched off
    (``CKPTLAB_PROGRESS=off``). See the module docstring for the order of the settings."""
    env = os.environ if environ is None else environ
    if env.get(SWITCH_VARIABLE, "").strip().lower() in ("off", "0", "no", "false"):
        return None
    if env.get(FILE_VARIABLE, "").strip():
        return Path(env[FILE_VARIABLE]).expanduser()
    if env.get(DIR_VARIABLE, "").strip():
        return Path(env[DIR_VARIABLE]).expanduser() / FILE_NAME
    return user_data_dir(env) / FILE_NAME


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def empty_progress() -> dict[str, Any]:
    """A new, empty progress record."""
    now = _now()
    return {"format": FORMAT, "version": VERSION, "created": now, "updated": now,
            "lessons": {}}


# --------------------------------------------------------------------------------------------
# the file: read, locked update, reset
# --------------------------------------------------------------------------------------------

def _reset_hint(path: Path) -> str:
    return (f"it was left as it is. Move it away, or run `ckptlab progress --reset` (it keeps "
            f"the old file as {path.name}.reset-<time>) to start a new record")


def validate(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it is a progress record this ckptlab can use; :class:`ProgressFileError`
    naming ``path`` otherwise."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProgressFileError(f"{path} is not a ckptlab progress file (no \"format\": "
                                f"\"{FORMAT}\"); {_reset_hint(path)}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProgressFileError(f"{path} has no valid format version; {_reset_hint(path)}")
    if version > VERSION:
        raise ProgressFileError(f"{path} was written by a newer ckptlab (progress format "
                                f"{version}, this one reads {VERSION}): upgrade ckptlab; the "
                                "file was left as it is")
    lessons = data.get("lessons")
    if not isinstance(lessons, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("questions", {}), dict)
            and isinstance(v.get("exercises", {}), dict) for v in lessons.values()):
        raise ProgressFileError(f"{path} is damaged (\"lessons\" is not a mapping of lessons "
                                f"to questions and exercises); {_reset_hint(path)}")
    return data


def read_progress(path: Path | None = None) -> dict[str, Any]:
    """The progress record at ``path`` (default: :func:`progress_path`); an empty one when the
    file does not exist yet or recording is off.

    Raises:
        ProgressFileError: the file exists but is not a usable progress record.
    """
    path = progress_path() if path is None else path
    if path is None:
        return empty_progress()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return empty_progress()
    except OSError as exc:
        raise ProgressFileError(f"cannot read the progress file {path}: "
                                f"{exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProgressFileError(f"{path} is not valid JSON ({exc}); "
                                f"{_reset_hint(path)}") from None
    return validate(data, path)


@contextlib.contextmanager
def _locked(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the operating-system lock of ``path`` (``<path>.lock``): one writer at a time,
    across processes; released by the OS if the holder dies."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while not try_lock(fd):
            if time.monotonic() > deadline:
                raise ProgressFileError(f"the progress file {path} stayed locked for "
                                        f"{timeout_s:.0f} s by another program; try again")
            time.sleep(0.01)
        try:
            yield
        finally:
            unlock(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` beside ``path``, flush it to disk and rename it over ``path``."""
    payload = (json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def update_progress(change: Callable[[dict[str, Any]], None],
                    path: Path | None = None) -> dict[str, Any] | None:
    """Apply ``change`` to the record under the file's lock and write it back atomically;
    return the new record (``None`` when recording is off).

    Raises:
        ProgressFileError: the existing file is not a usable progress record (it is not
            touched), or the folder cannot be written.
    """
    path = progress_path() if path is None else path
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            data = read_progress(path)
            change(data)
            data["updated"] = _now()
            _write_atomically(path, data)
    except OSError as exc:
        raise ProgressFileError(f"cannot write the progress file {path}: "
                                f"{exc.strerror or exc}") from None
    return data


def reset_progress(path: Path | None = None) -> Path | None:
    """Start a new record: the current file (valid or not) is renamed to
    ``progress.json.reset-<UTC time>`` beside it, never deleted. Returns where it went, or
    ``None`` when there was no file."""
    path = progress_path() if path is None else path
    if path is None or not path.exists():
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = path.with_name(f"{path.name}.reset-{stamp}")
    with _locked(path):
        os.replace(path, backup)
    return backup


# --------------------------------------------------------------------------------------------
# recording (what the quiz and the exercise checks call)
# --------------------------------------------------------------------------------------------

def _lesson(data: dict[str, Any], lesson: str) -> dict[str, Any]:
    entry = data["lessons"].setdefault(lesson, {})
    entry.setdefault("questions", {})
    entry.setdefault("exercises", {})
    return entry


def record_answer(lesson: str, question_id: str, *, kind: str, correct: bool | None,
                  answer: str | None = None, revealed_first: bool = False,
                  self_mark: bool | None = None,
                  path: Path | None = None) -> dict[str, Any] | None:
    """Record one answer to a question of ``lesson``'s quiz.

    ``correct`` is this attempt's verdict (``None`` for an attempt that has none: a
    self-checked answer). ``revealed_first`` records that the answer was shown before any
    attempt (the first try counts as missed). ``self_mark`` is the learner's own verdict on a
    self-checked answer. The first try is kept from the first call; later calls update
    ``correct``, ``attempts`` and ``answer``.
    """
    def change(data: dict[str, Any]) -> None:
        questions = _lesson(data, lesson)["questions"]
        now = _now()
        entry = questions.get(question_id)
        if entry is None:
            entry = questions[question_id] = {
                "kind": kind, "attempts": 0, "first_at": now,
                "first_try": False if revealed_first else correct}
        entry["kind"] = kind
        entry["last_at"] = now
        if not revealed_first:
            entry["attempts"] = int(entry.get("attempts", 0)) + 1
        if correct is not None:
            entry["correct"] = bool(correct)
        if answer is not None:
            entry["answer"] = str(answer)[:ANSWER_LIMIT]
        if self_mark is not None:
            entry["self_mark"] = bool(self_mark)

    return update_progress(change, path)


def record_prediction(lesson: str, prediction_id: str, prediction: str, matched: bool | None,
                      path: Path | None = None) -> dict[str, Any] | None:
    """Record a prediction made before a run (``matched``: whether the run bore it out, when
    that can be judged)."""
    return record_answer(lesson, prediction_id, kind="predict", correct=matched,
                         answer=prediction, path=path)


def record_exercise(lesson: str, exercise: str, passed: bool, message: str = "",
                    path: Path | None = None) -> dict[str, Any] | None:
    """Record one checked attempt at an exercise (an untouched template is not an attempt)."""
    def change(data: dict[str, Any]) -> None:
        exercises = _lesson(data, lesson)["exercises"]
        now = _now()
        entry = exercises.setdefault(exercise, {"passed": False, "attempts": 0,
                                                "first_passed_at": None})
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        entry["last_at"] = now
        entry["message"] = str(message)[:ANSWER_LIMIT]
        if passed and not entry.get("passed"):
            entry["first_passed_at"] = now
        entry["passed"] = bool(entry.get("passed")) or bool(passed)
        entry["last_passed"] = bool(passed)

    return update_progress(change, path)


def records_exercise(lesson: str, exercise: str) -> Callable[[Callable[..., Any]],
                                                              Callable[..., Any]]:
    """Decorate an exercise check so that every verdict it returns (pass or fail, not *not
    done yet*) is recorded. A progress file that cannot be used never hides the verdict: the
    reason is added to the result's message instead."""
    def wrap(check: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(check)
        def checked(*args: Any, **kwargs: Any) -> Any:
            result = check(*args, **kwargs)
            passed = getattr(result, "passed", None)
            if passed is None:
                return result
            try:
                record_exercise(lesson, exercise, bool(passed), getattr(result, "message", ""))
            except ProgressFileError as exc:
                if dataclasses.is_dataclass(result):
                    return dataclasses.replace(result, message=f"{result.message} (progress "
                                                               f"not saved: {exc})")
            return result

        return checked

    return wrap


# --------------------------------------------------------------------------------------------
# the map: what the start page and `ckptlab progress` show
# --------------------------------------------------------------------------------------------

def heading_anchor(heading: str) -> str:
    """The fragment JupyterLab (and nbconvert) give a markdown heading: its rendered text -
    without code marks or emphasis - with spaces as hyphens (``"Kill, resume, compare"`` ->
    ``"Kill,-resume,-compare"``; ``"1. The `latest` pointer"`` -> ``"1.-The-latest-pointer"``)."""
    import re

    return re.sub(r"[`*]", "", heading.strip()).replace(" ", "-")


def lesson_label(lesson: str) -> str:
    """``"04_interrupt_and_resume"`` -> ``"Lesson 4: interrupt and resume"``."""
    number, _, rest = lesson.partition("_")
    if number.isdigit():
        return f"Lesson {int(number)}: {rest.replace('_', ' ')}" if int(number) else \
            f"Start: {rest.replace('_', ' ')}"
    return lesson.replace("_", " ")


@dataclass(frozen=True)
class Revisit:
    """Something to go back to: a question missed at the first try, or an exercise not yet
    passed, with the lesson section to reread."""

    lesson: str
    what: str            # the question's prompt, or "exercise <name>"
    section: str         # a heading of the lesson
    link: str            # "<lesson>.ipynb#<anchor>", relative to notebooks/


@dataclass(frozen=True)
class LessonProgress:
    """One row of the progress map."""

    lesson: str
    questions: int                 # graded questions in the lesson's quiz
    answered: int                  # of those, how many have a first try
    first_try: int                 # of those, how many were right at the first try
    correct_now: int
    exercises: int
    exercises_passed: int
    self_checked: int = 0          # self-checked recall questions marked "I had it"
    predictions: int = 0           # predictions recorded
    revisit: tuple[Revisit, ...] = field(default_factory=tuple)

    @property
    def started(self) -> bool:
        return bool(self.answered or self.exercises_passed or self.revisit or self.predictions)

    @property
    def done(self) -> bool:
        """Every graded question tried and every exercise passed."""
        return (self.answered >= self.questions and self.exercises_passed >= self.exercises
                and (self.questions or self.exercises) > 0)

    @property
    def status(self) -> str:
        return "done" if self.done else "started" if self.started else "not started"


def _quiz_lessons() -> list[str]:
    from .quiz_bank import QUIZ_DIR

    return sorted(p.stem for p in QUIZ_DIR.glob("[0-9][0-9]_*.json"))


def summarise(data: Mapping[str, Any], lessons: Sequence[str] | None = None) -> \
        list[LessonProgress]:
    """The progress map of a record: one :class:`LessonProgress` per lesson (default: every
    lesson that has a quiz bank), in order."""
    from .quiz_bank import QuizError, load_quiz

    rows = []
    for lesson in (_quiz_lessons() if lessons is None else lessons):
        record = data.get("lessons", {}).get(lesson, {})
        answers = record.get("questions", {})
        done_exercises = record.get("exercises", {})
        try:
            questions = load_quiz(lesson).questions
        except QuizError:
            questions = ()
        graded = [q for q in questions if q.scored]
        revisit = []
        for q in graded:
            entry = answers.get(q.id)
            if entry is not None and entry.get("first_try") is False:
                section = getattr(q, "section", "") or "Quiz"
                revisit.append(Revisit(lesson, q.prompt, section,
                                       f"{lesson}.ipynb#{heading_anchor(section)}"))
        expected = EXERCISES.get(lesson, ())
        for name in expected:
            entry = done_exercises.get(name)
            if entry is not None and not entry.get("passed"):
                revisit.append(Revisit(lesson, f"exercise {name}", "Exercise",
                                       f"{lesson}.ipynb#Exercise"))
        rows.append(LessonProgress(
            lesson=lesson, questions=len(graded),
            answered=sum(1 for q in graded if q.id in answers
                         and answers[q.id].get("first_try") is not None),
            first_try=sum(1 for q in graded if answers.get(q.id, {}).get("first_try") is True),
            correct_now=sum(1 for q in graded if answers.get(q.id, {}).get("correct") is True),
            exercises=len(expected),
            exercises_passed=sum(1 for n in expected if done_exercises.get(n, {}).get("passed")),
            self_checked=sum(1 for q in questions if q.self_checked
                             and answers.get(q.id, {}).get("self_mark") is True),
            predictions=sum(1 for a in answers.values() if a.get("kind") == "predict"),
            revisit=tuple(revisit)))
    return rows


def progress_text(rows: Sequence[LessonProgress], path: Path | None) -> str:
    """The map as plain text (what ``ckptlab progress`` prints)."""
    lines = [f"Progress file: {path if path is not None else 'off (CKPTLAB_PROGRESS=off)'}", ""]
    width = max((len(lesson_label(r.lesson)) for r in rows), default=10)
    lines.append(f"{'lesson':<{width}}  {'status':<11}  {'quiz, first try':<15}  exercises")
    for r in rows:
        quiz = f"{r.first_try}/{r.questions}" + (f" ({r.answered} tried)"
                                                 if r.answered < r.questions else "")
        ex = f"{r.exercises_passed}/{r.exercises}" if r.exercises else "-"
        lines.append(f"{lesson_label(r.lesson):<{width}}  {r.status:<11}  {quiz:<15}  {ex}")
    done = sum(r.done for r in rows)
    lines += ["", f"{done} of {len(rows)} lessons done."]
    revisit = [v for r in rows for v in r.revisit]
    if revisit:
        lines += ["", "To revisit:"]
        lines += [f"- {lesson_label(v.lesson)}, section \"{v.section}\" "
                  f"(notebooks/{v.link.split('#')[0]}): {v.what}" for v in revisit]
    elif any(r.started for r in rows):
        lines += ["", "Nothing to revisit: every question tried so far was right the first "
                      "time."]
    return "\n".join(lines)


def progress_html(rows: Sequence[LessonProgress], *, location: str = "") -> str:
    """The map as HTML (the start page): one row per lesson, then what to revisit, each item
    a link to its lesson section."""
    esc = html.escape
    body = []
    for r in rows:
        mark = {"done": "&#10003; done", "started": "&#9684; started",
                "not started": "&middot; not started"}[r.status]
        quiz = f"{r.first_try}/{r.questions}" if r.answered else "-"
        tried = f" <small>({r.answered} of {r.questions} tried)</small>" \
            if 0 < r.answered < r.questions else ""
        ex = f"{r.exercises_passed}/{r.exercises}" if r.exercises else "-"
        body.append(f"<tr><td><a href='{esc(r.lesson)}.ipynb'>{esc(lesson_label(r.lesson))}"
                    f"</a></td><td>{mark}</td><td>{quiz}{tried}</td><td>{ex}</td></tr>")
    revisit = [v for r in rows for v in r.revisit]
    if revisit:
        items = "".join(f"<li><a href='{esc(v.link)}'>{esc(lesson_label(v.lesson))} &rarr; "
                        f"{esc(v.section)}</a>: {esc(v.what)}</li>" for v in revisit)
        after = f"<p><b>To revisit</b> (missed at the first try):</p><ul>{items}</ul>"
    elif any(r.started for r in rows):
        after = "<p>Nothing to revisit: every question tried so far was right the first time.</p>"
    else:
        after = ("<p>Nothing recorded yet: answer a quiz or run an exercise check in any "
                 "lesson, and it appears here.</p>")
    done = sum(r.done for r in rows)
    where = f"<p><small>{esc(location)}</small></p>" if location else ""
    return ("<div class='ckptlab-progress'><table class='ckptlab-table'><caption>Your progress: "
            f"{done} of {len(rows)} lessons done</caption><thead><tr><th scope='col'>lesson</th>"
            "<th scope='col'>status</th><th scope='col'>quiz, first try</th>"
            "<th scope='col'>exercises passed</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table>" + after + where + "</div>")


STATIC_MAP_HTML = (
    "<div class='ckptlab-progress'><p><b>Your progress map</b> appears here when this notebook "
    "runs in JupyterLab: the lessons you finished, your first-try quiz scores, the exercises "
    "you passed, and the questions to revisit, each linked to its lesson section. It is read "
    "from a small file on your machine (<code>ckptlab progress</code> prints it in a "
    "terminal).</p></div>")


class ProgressMap:
    """The start page's progress map: a live view that reads the progress file when shown,
    when *Refresh* is pressed, and every ``poll_s`` seconds while the file changes (so a quiz
    answered in another lesson appears here without a click).

    Displayed, it is one output: the live widget in a kernel, and a static note (never anyone's
    data) wherever widgets cannot run - a code host, the rendered site, a committed output.
    """

    def __init__(self, path: Path | None = None, poll_s: float = 2.0) -> None:
        import threading

        import ipywidgets as widgets

        self.path = progress_path() if path is None else path
        self.view = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="read the progress file again")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.widget = widgets.VBox([self.view, self.refresh_button])
        self._seen: float | None = None
        self._stop = threading.Event()
        self.refresh()
        if self.path is not None and poll_s > 0:
            self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True,
                                            name="ckptlab-progress-map")
            self._thread.start()

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime_ns if self.path is not None else None
        except OSError:
            return None

    def _poll(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if self._mtime() != self._seen:
                self.refresh()

    def stop(self) -> None:
        """Stop watching the file."""
        self._stop.set()

    def refresh(self) -> None:
        """Read the file again and redraw the map (a damaged file is named, never rewritten)."""
        self._seen = self._mtime()
        if self.path is None:
            self.view.value = ("<p>Progress recording is off (<code>CKPTLAB_PROGRESS=off</code>)"
                               ".</p>")
            return
        try:
            rows = summarise(read_progress(self.path))
        except ProgressFileError as exc:
            self.view.value = (f"<div class='ckptlab-error' role='alert'><b>error:</b> "
                               f"{html.escape(str(exc))}</div>")
            return
        self.view.value = progress_html(
            rows, location=f"Kept on this machine only, in {self.path}. Reset: "
                           "ckptlab progress --reset.")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/html"] = STATIC_MAP_HTML
        data["text/plain"] = "Your progress map (live in a running kernel)"
        return data


def show_progress(path: Path | None = None) -> ProgressMap:
    """Display the progress map (the start page calls this)."""
    from IPython.display import display

    progress_map = ProgressMap(path)
    display(progress_map)
    return progress_map
