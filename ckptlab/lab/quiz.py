"""Quizzes for the lessons: JSON question banks, a plain grading function, an ipywidgets UI.

Question banks live in ``ckptlab/lab/quizzes/<lesson>.json``, shipped as package data
(schema: ``schema.json`` beside them).
Every choice carries its own explanation, shown after answering, right or wrong.

* :func:`grade` is a plain function: it raises :class:`QuizError` on bad input, so it is easy
  to test and never fails silently.
* :class:`QuizWidget` only *displays*: its Check buttons call :func:`grade` and show the
  result (ipywidgets would hide an exception raised inside a callback, so the callback turns
  every problem into a visible message instead).
* :func:`quiz_fallback_html` is the same quiz for places where widgets cannot render (an
  exported HTML page): the questions, with answers and explanations behind a ``<details>``.

Headless use (what the tests do)::

    widget = QuizWidget(load_quiz("01_pipeline_trace"))
    widget.selectors[0].value = widget.selectors[0].options[1]
    widget.buttons[0].click()
    assert widget.score.correct == 1

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..engine import CkptlabError

# Package data: shipped inside the wheel, so the quizzes work from any install.
QUIZ_DIR = Path(__file__).resolve().parent / "quizzes"


class QuizError(CkptlabError):
    """A malformed question bank, or an answer that cannot be graded."""


@dataclass(frozen=True)
class Choice:
    text: str
    correct: bool
    explanation: str


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str
    kind: Literal["single", "multiple"]
    choices: tuple[Choice, ...]

    @property
    def correct_indices(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.choices) if c.correct)


@dataclass(frozen=True)
class Quiz:
    title: str
    questions: tuple[Question, ...]


def _parse(data: Any, source: str) -> Quiz:
    """Build a :class:`Quiz` from decoded JSON, checking what the schema cannot."""
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise QuizError(f"{source}: expected an object with a 'questions' list")
    questions, ids = [], set()
    for n, q in enumerate(data["questions"], start=1):
        try:
            choices = tuple(Choice(str(c["text"]), bool(c["correct"]), str(c["explanation"]))
                            for c in q["choices"])
            question = Question(str(q["id"]), str(q["prompt"]), q["kind"], choices)
        except (KeyError, TypeError) as exc:
            raise QuizError(f"{source}: question {n} is missing {exc}") from None
        if question.kind not in ("single", "multiple"):
            raise QuizError(f"{source}: question {question.id!r} has kind {question.kind!r}")
        if question.id in ids:
            raise QuizError(f"{source}: duplicate question id {question.id!r}")
        ids.add(question.id)
        n_correct = len(question.correct_indices)
        if len(choices) < 2 or n_correct == 0 or (question.kind == "single" and n_correct != 1):
            raise QuizError(f"{source}: question {question.id!r} needs >= 2 choices and "
                            f"{'exactly one' if question.kind == 'single' else 'at least one'}"
                            " correct choice")
        if any(not c.explanation.strip() for c in choices):
            raise QuizError(f"{source}: every choice of {question.id!r} needs an explanation")
        questions.append(question)
    return Quiz(str(data.get("title", source)), tuple(questions))


def load_quiz(name: str | os.PathLike[str]) -> Quiz:
    """Load a question bank by lesson name (``"01_pipeline_trace"``) or path."""
    path = Path(name)
    if not path.suffix:
        path = QUIZ_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise QuizError(f"no question bank at {path}") from None
    except json.JSONDecodeError as exc:
        raise QuizError(f"{path} is not valid JSON: {exc}") from None
    return _parse(data, path.name)


@dataclass(frozen=True)
class Grade:
    """The result of grading one answer."""

    question_id: str
    correct: bool
    selected: tuple[int, ...]
    feedback: tuple[tuple[str, bool, str], ...]  # (choice text, is correct, explanation)


def grade(question: Question, selected: int | Sequence[int] | None) -> Grade:
    """Grade an answer: one choice index for single-choice questions, a collection of
    indices for multiple-choice ones (all correct choices and nothing else).

    Feedback holds the explanation of every selected choice and of every correct choice.

    Raises:
        QuizError: nothing selected, an index out of range, or several for a single choice.
    """
    if selected is None or (not isinstance(selected, int) and len(selected) == 0):
        raise QuizError("choose an answer first")
    chosen = (selected,) if isinstance(selected, int) else tuple(sorted(set(selected)))
    if question.kind == "single" and len(chosen) != 1:
        raise QuizError(f"question {question.id!r} takes exactly one answer")
    for i in chosen:
        if not isinstance(i, int) or not 0 <= i < len(question.choices):
            raise QuizError(f"choice {i!r} does not exist (0..{len(question.choices) - 1})")
    correct = set(chosen) == question.correct_indices
    shown = sorted(set(chosen) | question.correct_indices)
    feedback = tuple((question.choices[i].text, question.choices[i].correct,
                      question.choices[i].explanation) for i in shown)
    return Grade(question.id, correct, chosen, feedback)


@dataclass
class Score:
    """Latest grade per question; a question counts once, by its latest answer."""

    total: int
    grades: dict[str, Grade] = field(default_factory=dict)

    def record(self, result: Grade) -> None:
        self.grades[result.question_id] = result

    @property
    def correct(self) -> int:
        return sum(g.correct for g in self.grades.values())

    def __str__(self) -> str:
        return f"Score: {self.correct} / {self.total}"


def feedback_html(result: Grade) -> str:
    """The feedback block shown under a question after Check."""
    head = ("<b style='color:#1a7f37'>Correct.</b>" if result.correct
            else "<b style='color:#cf222e'>Not quite.</b>")
    items = "".join(
        f"<li>{'&#10003;' if ok else '&#10007;'} <i>{html.escape(text)}</i>: "
        f"{html.escape(why)}</li>" for text, ok, why in result.feedback)
    return f"{head}<ul style='margin:4px 0'>{items}</ul>"


class QuizWidget:
    """An ipywidgets quiz: per question a RadioButtons (single) or Checkboxes (multiple),
    a Check button and a feedback area; a running score underneath.

    Attributes for headless use: ``selectors`` (one per question: a RadioButtons, or a list
    of Checkbox widgets), ``buttons``, ``feedback`` (HTML widgets), ``score`` (a
    :class:`Score`) and ``score_label``.
    """

    def __init__(self, quiz: Quiz) -> None:
        import ipywidgets as w

        self.quiz = quiz
        self.score = Score(len(quiz.questions))
        self.selectors: list[Any] = []
        self.buttons: list[Any] = []
        self.feedback: list[Any] = []
        self.score_label = w.HTML(f"<b>{self.score}</b>")
        boxes = [w.HTML(f"<h4>{html.escape(quiz.title)}</h4>")]
        for n, question in enumerate(quiz.questions, start=1):
            labels = [c.text for c in question.choices]
            if question.kind == "single":
                selector: Any = w.RadioButtons(options=labels, value=None,
                                               layout=w.Layout(width="auto"))
                control = selector
            else:
                selector = [w.Checkbox(value=False, description=label, indent=False,
                                       layout=w.Layout(width="auto")) for label in labels]
                control = w.VBox(selector)
            button = w.Button(description="Check", button_style="primary")
            feedback = w.HTML()
            button.on_click(lambda _, i=n - 1: self.check(i))
            kind = "" if question.kind == "single" else " <i>(choose all that apply)</i>"
            boxes.append(w.VBox([w.HTML(f"<b>{n}. {html.escape(question.prompt)}</b>{kind}"),
                                 control, button, feedback]))
            self.selectors.append(selector)
            self.buttons.append(button)
            self.feedback.append(feedback)
        boxes.append(self.score_label)
        self.widget = w.VBox(boxes)

    def selection(self, index: int) -> int | list[int] | None:
        """The learner's current answer to question ``index`` as choice indices."""
        question, selector = self.quiz.questions[index], self.selectors[index]
        if question.kind == "single":
            return None if selector.value is None else selector.options.index(selector.value)
        return [i for i, box in enumerate(selector) if box.value]

    def check(self, index: int) -> Grade | None:
        """Grade question ``index`` and show the result (what the Check button does)."""
        try:
            result = grade(self.quiz.questions[index], self.selection(index))
        except QuizError as exc:
            self.feedback[index].value = f"<span style='color:#9a6700'>{html.escape(str(exc))}" \
                                         "</span>"
            return None
        except Exception as exc:  # shown, never swallowed: callbacks hide exceptions
            self.feedback[index].value = (f"<pre style='color:#cf222e'>internal error: "
                                          f"{html.escape(repr(exc))}</pre>")
            raise
        self.score.record(result)
        self.feedback[index].value = feedback_html(result)
        self.score_label.value = f"<b>{self.score}</b>"
        return result

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        display(self.widget)
        display(HTML(quiz_fallback_html(self.quiz)))


def quiz_fallback_html(quiz: Quiz) -> str:
    """The quiz as static HTML: questions listed, answers and explanations collapsed."""
    parts = [f"<details><summary><b>{html.escape(quiz.title)}: answers and explanations</b> "
             "(for reading without a running kernel; try the quiz above first)</summary>"]
    for n, q in enumerate(quiz.questions, start=1):
        items = "".join(
            f"<li>{'<b>&#10003; ' if c.correct else ''}{html.escape(c.text)}"
            f"{'</b>' if c.correct else ''} &mdash; {html.escape(c.explanation)}</li>"
            for c in q.choices)
        parts.append(f"<p><b>{n}. {html.escape(q.prompt)}</b></p><ul>{items}</ul>")
    parts.append("</details>")
    return "".join(parts)


def show_quiz(name: str) -> QuizWidget:
    """Load lesson ``name``'s quiz and display it (widget plus collapsible fallback)."""
    from IPython.display import display

    widget = QuizWidget(load_quiz(name))
    display(widget)
    return widget
