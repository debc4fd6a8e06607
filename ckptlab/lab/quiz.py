"""Quizzes for the lessons: JSON question banks, plain grading functions, an ipywidgets UI.

Question banks live in ``ckptlab/lab/quizzes/<lesson>.json``, shipped as package data
(schema: ``schema.json`` beside them). Three kinds of question:

* ``single`` / ``multiple``: recognition; every choice carries its own explanation of *why*
  it is right or wrong.
* ``recall``: the learner types an answer; a ``model_answer`` is shown on request, and where
  the answer is checkable (a number, a file name, a component) ``accept`` lists the answers
  graded as correct (case-insensitive strings, or numbers).

What keeps the quiz honest (a learner who guesses should not score):

* Choice order is shuffled per question from a seed (:func:`choice_order`); the seed is the
  learner's session seed (:func:`session_seed`: ``CKPTLAB_QUIZ_SEED`` or one drawn per kernel),
  so neighbours see different orders and a rerun under nbval sees the same one.
* :class:`Score` counts the *first* attempt of every question ("first try 2/4 · now 4/4").
* After a wrong first attempt the feedback explains what was chosen, never the correct answer;
  that is revealed by a second attempt or by an explicit "Show answer" (which counts as a
  missed first try when used before answering).
* The static view (:func:`quiz_static_html`: exported site, code host, projector) poses every
  question with its choices, each answer in its own collapsed block. In a live kernel the
  widget replaces it: both are one display output, so no answers sit under the live widget.

Headless use (what the tests do)::

    widget = QuizWidget(load_quiz("01_pipeline_trace"), seed=0)
    widget.choose(0, widget.correct_positions(0))
    widget.buttons[0].click()
    assert widget.score.first_correct == 1

Introduced in notebook ``01_pipeline_trace``.
"""

from __future__ import annotations

import functools
import html
import json
import os
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..engine import CkptlabError

# Package data: shipped inside the wheel, so the quizzes work from any install.
QUIZ_DIR = Path(__file__).resolve().parent / "quizzes"
SEED_VARIABLE = "CKPTLAB_QUIZ_SEED"
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class QuizError(CkptlabError):
    """A malformed question bank, or an answer that cannot be graded."""


@dataclass(frozen=True)
class Choice:
    text: str
    correct: bool
    explanation: str


@dataclass(frozen=True)
class Question:
    """One question. ``choices`` is empty for ``recall``; ``model_answer`` and ``accept`` are
    used by ``recall`` only."""

    id: str
    prompt: str
    kind: Literal["single", "multiple", "recall"]
    choices: tuple[Choice, ...] = ()
    model_answer: str = ""
    accept: tuple[str | float, ...] = ()

    @property
    def correct_indices(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.choices) if c.correct)

    @property
    def scored(self) -> bool:
        """Counts in the score: every recognition question, and recall that can be checked."""
        return self.kind != "recall" or bool(self.accept)


@dataclass(frozen=True)
class Quiz:
    title: str
    questions: tuple[Question, ...]


def _parse_question(q: Any, source: str, n: int) -> Question:
    try:
        kind = q["kind"]
        if kind == "recall":
            accept = tuple(a if isinstance(a, (int, float)) and not isinstance(a, bool)
                           else str(a) for a in q.get("accept", []))
            return Question(str(q["id"]), str(q["prompt"]), kind,
                            model_answer=str(q["model_answer"]), accept=accept)
        choices = tuple(Choice(str(c["text"]), bool(c["correct"]), str(c["explanation"]))
                        for c in q["choices"])
        return Question(str(q["id"]), str(q["prompt"]), kind, choices)
    except (KeyError, TypeError) as exc:
        raise QuizError(f"{source}: question {n} is missing {exc}") from None


def _parse(data: Any, source: str) -> Quiz:
    """Build a :class:`Quiz` from decoded JSON, checking what the schema cannot."""
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise QuizError(f"{source}: expected an object with a 'questions' list")
    questions, ids = [], set()
    for n, q in enumerate(data["questions"], start=1):
        question = _parse_question(q, source, n)
        if question.kind not in ("single", "multiple", "recall"):
            raise QuizError(f"{source}: question {question.id!r} has kind {question.kind!r}")
        if question.id in ids:
            raise QuizError(f"{source}: duplicate question id {question.id!r}")
        ids.add(question.id)
        if question.kind == "recall":
            if not question.model_answer.strip():
                raise QuizError(f"{source}: recall question {question.id!r} needs a "
                                "model_answer")
            questions.append(question)
            continue
        n_correct = len(question.correct_indices)
        if (len(question.choices) < 2 or n_correct == 0
                or (question.kind == "single" and n_correct != 1)):
            raise QuizError(f"{source}: question {question.id!r} needs >= 2 choices and "
                            f"{'exactly one' if question.kind == 'single' else 'at least one'}"
                            " correct choice")
        if any(not c.explanation.strip() for c in question.choices):
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


# -- choice order ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _drawn_seed() -> int:
    return secrets.randbelow(10_000)


def session_seed() -> int:
    """The learner's quiz seed: ``CKPTLAB_QUIZ_SEED`` when set (tests, nbval, a teacher who
    wants one order for the class), else a number drawn once per kernel session."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise QuizError(f"{SEED_VARIABLE}={value!r} is not a whole number") from None
    return _drawn_seed()


def choice_order(question: Question, seed: int) -> tuple[int, ...]:
    """The order in which ``question``'s choices are shown: bank indices, shuffled by a
    generator seeded with ``seed`` and the question's id (each question its own order)."""
    order = list(range(len(question.choices)))
    random.Random(f"{seed}:{question.id}").shuffle(order)
    return tuple(order)


# -- grading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grade:
    """The result of grading one answer (choice indices refer to the bank's order)."""

    question_id: str
    correct: bool
    selected: tuple[int, ...]
    feedback: tuple[tuple[str, bool, str], ...]  # (choice text, is correct, explanation)
    answer_text: str = ""                        # recall: what was typed


def grade(question: Question, selected: int | Sequence[int] | None) -> Grade:
    """Grade a recognition answer: one choice index (bank order) for single-choice questions,
    a collection of indices for multiple-choice ones (all correct choices and nothing else).

    ``feedback`` lists the selected choices first, then the correct ones not selected; what a
    learner is *shown* of it depends on the attempt (see :func:`feedback_html`).

    Raises:
        QuizError: nothing selected, an index out of range, several for a single choice, or
            a recall question (use :func:`grade_recall`).
    """
    if question.kind == "recall":
        raise QuizError(f"question {question.id!r} asks for a typed answer: use grade_recall")
    if selected is None or (not isinstance(selected, int) and len(selected) == 0):
        raise QuizError("choose an answer first")
    chosen = (selected,) if isinstance(selected, int) else tuple(sorted(set(selected)))
    if question.kind == "single" and len(chosen) != 1:
        raise QuizError(f"question {question.id!r} takes exactly one answer")
    for i in chosen:
        if not isinstance(i, int) or not 0 <= i < len(question.choices):
            raise QuizError(f"choice {i!r} does not exist (0..{len(question.choices) - 1})")
    correct = set(chosen) == question.correct_indices
    shown = list(chosen) + sorted(question.correct_indices - set(chosen))
    feedback = tuple((question.choices[i].text, question.choices[i].correct,
                      question.choices[i].explanation) for i in shown)
    return Grade(question.id, correct, chosen, feedback)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("`'\".").lower())


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("_", "").strip())
    except ValueError:
        return None


def grade_recall(question: Question, answer: str | float | None) -> Grade:
    """Grade a typed answer against ``question.accept`` (case and surrounding spaces, quotes
    and a final full stop ignored; numbers compared as numbers, so ``1,200`` = ``1200``).

    Raises:
        QuizError: an empty answer, a question that is not ``recall``, or a recall question
            without ``accept`` (it is checked against the model answer by the learner).
    """
    if question.kind != "recall":
        raise QuizError(f"question {question.id!r} is a choice question: use grade")
    text = "" if answer is None else str(answer)
    if not text.strip():
        raise QuizError("type an answer first")
    if not question.accept:
        raise QuizError("this question has no automatic check: compare your answer with the "
                        "model answer")
    typed_number = _as_number(text)
    correct = False
    for accepted in question.accept:
        if isinstance(accepted, (int, float)):
            correct |= typed_number is not None and abs(typed_number - accepted) < 1e-9
        else:
            correct |= _normalise(text) == _normalise(accepted)
    return Grade(question.id, correct, (), (), answer_text=text)


@dataclass
class Score:
    """The first and the latest grade of every scored question.

    ``first_correct`` counts questions right at the first attempt (a revealed answer counts
    as a missed first attempt); ``correct`` counts them by the latest attempt.
    """

    total: int
    first: dict[str, bool] = field(default_factory=dict)
    grades: dict[str, Grade] = field(default_factory=dict)

    def record(self, result: Grade) -> None:
        self.first.setdefault(result.question_id, result.correct)
        self.grades[result.question_id] = result

    def record_revealed(self, question_id: str) -> None:
        """The answer was shown before any attempt: the first try is lost."""
        self.first.setdefault(question_id, False)

    @property
    def first_correct(self) -> int:
        return sum(self.first.values())

    @property
    def correct(self) -> int:
        return sum(g.correct for g in self.grades.values())

    def __str__(self) -> str:
        return (f"Score: first try {self.first_correct}/{self.total} · "
                f"now {self.correct}/{self.total}")


def feedback_html(result: Grade, *, reveal: bool) -> str:
    """The feedback block under a choice question after Check.

    Right: the explanation of every correct choice. Wrong and ``reveal`` false (a first
    attempt): only why each *chosen* choice is wrong (a chosen correct choice is not named,
    so the learner cannot assemble the answer from the feedback) and how many ticks are
    missing or extra. Wrong and ``reveal`` true: every chosen and every correct choice, marked.
    """
    if result.correct or reveal:
        head = ("<b style='color:#1a7f37'>Correct.</b>" if result.correct
                else "<b style='color:#cf222e'>Not quite.</b> The answer, explained:")
        items = "".join(
            f"<li>{'&#10003;' if ok else '&#10007;'} <i>{html.escape(text)}</i>: "
            f"{html.escape(why)}</li>" for text, ok, why in result.feedback
            if ok or not result.correct)
        return f"{head}<ul style='margin:4px 0'>{items}</ul>"
    chosen = result.feedback[:len(result.selected)]
    wrong = [(text, why) for text, ok, why in chosen if not ok]
    items = "".join(f"<li><i>{html.escape(text)}</i>: {html.escape(why)}</li>"
                    for text, why in wrong)
    missing = sum(1 for _, ok, _ in result.feedback[len(result.selected):] if ok)
    notes = []
    if wrong and len(result.selected) > 1:
        notes.append(f"{len(wrong)} of your {len(result.selected)} ticks should not be there")
    if missing:
        notes.append(f"{missing} correct choice{'s are' if missing > 1 else ' is'} not ticked")
    tail = f"<br>{html.escape('; '.join(notes))}." if notes else ""
    return (f"<b style='color:#cf222e'>Not quite.</b><ul style='margin:4px 0'>{items}</ul>"
            f"{tail} Think again and try once more, or press <i>Show answer</i>.")


def _recall_feedback_html(question: Question, result: Grade | None, *, reveal: bool) -> str:
    model = (f"<div><i>Model answer:</i> {html.escape(question.model_answer)}</div>"
             if reveal or (result is not None and result.correct) else "")
    if result is None:
        return model
    if result.correct:
        return f"<b style='color:#1a7f37'>Correct.</b>{model}"
    return (f"<b style='color:#cf222e'>Not what the lesson showed.</b> "
            f"({html.escape(result.answer_text)!s}) "
            + (model or "Look back at the run above and try again, or press "
                        "<i>Show answer</i>."))


class QuizWidget:
    """An ipywidgets quiz: per question a RadioButtons (single), Checkboxes (multiple) or a
    Text box (recall) in a seeded order, Check and Show answer buttons and a feedback area;
    the score (first try and now) underneath.

    Attributes for headless use: ``orders`` (per question, the bank indices in display order),
    ``selectors`` (a RadioButtons, a list of Checkbox widgets, or a Text), ``buttons`` (Check),
    ``reveal_buttons`` (Show answer), ``feedback`` (HTML widgets), ``score`` and
    ``score_label``.
    """

    def __init__(self, quiz: Quiz, seed: int | None = None) -> None:
        import ipywidgets as w

        self.quiz = quiz
        self.seed = session_seed() if seed is None else int(seed)
        self.orders = [choice_order(q, self.seed) for q in quiz.questions]
        self.score = Score(sum(q.scored for q in quiz.questions))
        self.attempts = [0] * len(quiz.questions)
        self.revealed = [False] * len(quiz.questions)
        self.selectors: list[Any] = []
        self.buttons: list[Any] = []
        self.reveal_buttons: list[Any] = []
        self.feedback: list[Any] = []
        self.score_label = w.HTML(f"<b>{html.escape(str(self.score))}</b>")
        boxes = [w.HTML(f"<h4>{html.escape(quiz.title)}</h4><small>choice order "
                        f"#{self.seed}; your score counts first tries</small>")]
        for n, (question, order) in enumerate(zip(quiz.questions, self.orders), start=1):
            labels = [question.choices[i].text for i in order]
            if question.kind == "single":
                selector: Any = w.RadioButtons(options=labels, value=None,
                                               layout=w.Layout(width="auto"))
                control = selector
                note = ""
            elif question.kind == "multiple":
                selector = [w.Checkbox(value=False, description=label, indent=False,
                                       layout=w.Layout(width="auto")) for label in labels]
                control = w.VBox(selector)
                note = " <i>(choose all that apply)</i>"
            else:
                selector = w.Text(placeholder="type your answer",
                                  layout=w.Layout(width="60%"))
                control = selector
                note = (" <i>(then compare with the model answer)</i>" if not question.scored
                        else " <i>(type the answer)</i>")
            check = w.Button(description="Check", button_style="primary")
            reveal = w.Button(description="Show answer")
            feedback = w.HTML()
            check.on_click(lambda _, i=n - 1: self.check(i))
            reveal.on_click(lambda _, i=n - 1: self.reveal(i))
            buttons = [check, reveal] if question.scored else [reveal]
            boxes.append(w.VBox([w.HTML(f"<b>{n}. {html.escape(question.prompt)}</b>{note}"),
                                 control, w.HBox(buttons), feedback]))
            self.selectors.append(selector)
            self.buttons.append(check)
            self.reveal_buttons.append(reveal)
            self.feedback.append(feedback)
        boxes.append(self.score_label)
        self.widget = w.VBox(boxes)

    # -- reading and setting answers (display order <-> bank order) ------------------------
    def correct_positions(self, index: int) -> list[int]:
        """Display positions of question ``index``'s correct choices (for tests)."""
        question = self.quiz.questions[index]
        return [pos for pos, i in enumerate(self.orders[index]) if question.choices[i].correct]

    def choose(self, index: int, positions: int | Sequence[int]) -> None:
        """Select choices by display position, as a learner clicking would."""
        question, selector = self.quiz.questions[index], self.selectors[index]
        positions = [positions] if isinstance(positions, int) else list(positions)
        if question.kind == "single":
            selector.value = selector.options[positions[0]]
        elif question.kind == "multiple":
            for pos, box in enumerate(selector):
                box.value = pos in positions
        else:
            raise QuizError(f"question {question.id!r} takes typed text: set .value")

    def selection(self, index: int) -> int | list[int] | str | None:
        """The learner's current answer to question ``index``: bank indices, or the text."""
        question, selector, order = (self.quiz.questions[index], self.selectors[index],
                                     self.orders[index])
        if question.kind == "single":
            return (None if selector.value is None
                    else order[selector.options.index(selector.value)])
        if question.kind == "multiple":
            return [order[pos] for pos, box in enumerate(selector) if box.value]
        return selector.value

    # -- the buttons ------------------------------------------------------------------------
    def check(self, index: int) -> Grade | None:
        """Grade question ``index`` and show the result (what the Check button does)."""
        question = self.quiz.questions[index]
        try:
            if question.kind == "recall":
                result = grade_recall(question, self.selection(index))
            else:
                result = grade(question, self.selection(index))  # type: ignore[arg-type]
        except QuizError as exc:
            self.feedback[index].value = (f"<span style='color:#9a6700'>"
                                          f"{html.escape(str(exc))}</span>")
            return None
        except Exception as exc:  # shown, never swallowed: callbacks hide exceptions
            self.feedback[index].value = (f"<pre style='color:#cf222e'>internal error: "
                                          f"{html.escape(repr(exc))}</pre>")
            raise
        self.attempts[index] += 1
        self.score.record(result)
        reveal = self.revealed[index] or self.attempts[index] >= 2
        if question.kind == "recall":
            self.feedback[index].value = _recall_feedback_html(question, result, reveal=reveal)
        else:
            self.feedback[index].value = feedback_html(result, reveal=reveal)
        self._update_score()
        return result

    def reveal(self, index: int) -> None:
        """Show question ``index``'s answer (what Show answer does). Before any attempt this
        costs the first try."""
        question = self.quiz.questions[index]
        self.revealed[index] = True
        if question.scored:
            self.score.record_revealed(question.id)
        if question.kind == "recall":
            self.feedback[index].value = _recall_feedback_html(question, None, reveal=True)
        else:
            correct = sorted(question.correct_indices)
            fake = Grade(question.id, False, (), tuple(
                (question.choices[i].text, True, question.choices[i].explanation)
                for i in correct))
            self.feedback[index].value = feedback_html(fake, reveal=True).replace(
                "Not quite.</b> The answer, explained:", "Answer:</b>")
        self._update_score()

    def _update_score(self) -> None:
        self.score_label.value = f"<b>{html.escape(str(self.score))}</b>"

    # -- display ----------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, with the static view as this same output's HTML: a live kernel
        shows the widget only; an exported page or a code host, which cannot run it, shows
        the static view."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data = dict(data)
        data["text/html"] = quiz_static_html(self.quiz, self.seed)
        data["text/plain"] = f"{self.quiz.title} (interactive in a running kernel)"
        return data


def quiz_static_html(quiz: Quiz, seed: int = 0) -> str:
    """The quiz for reading without a kernel: every question with its choices (in the
    seeded order), each answer and its explanations in its own collapsed block."""
    parts = [f"<div class='ckptlab-quiz-static'><h4>{html.escape(quiz.title)}</h4>"
             "<p><i>Answer each question first; its answers and explanations are in the "
             "collapsed block under it.</i></p>"]
    for n, q in enumerate(quiz.questions, start=1):
        parts.append(f"<p><b>{n}. {html.escape(q.prompt)}</b>"
                     + (" <i>(choose all that apply)</i>" if q.kind == "multiple" else "")
                     + "</p>")
        if q.kind == "recall":
            parts.append(f"<details><summary>Model answer</summary><p>"
                         f"{html.escape(q.model_answer)}</p></details>")
            continue
        order = choice_order(q, seed)
        letters = "ABCDEFGHIJ"
        parts.append("<ol type='A'>" + "".join(
            f"<li>{html.escape(q.choices[i].text)}</li>" for i in order) + "</ol>")
        items = "".join(
            f"<li><b>{letters[pos]}</b> {'&#10003; right' if q.choices[i].correct else '&#10007; wrong'}"
            f" &mdash; {html.escape(q.choices[i].explanation)}</li>"
            for pos, i in enumerate(order))
        parts.append(f"<details><summary>Answer {n}: answers and explanations</summary>"
                     f"<ul>{items}</ul></details>")
    parts.append("</div>")
    return "".join(parts)


def show_quiz(name: str, seed: int | None = None) -> QuizWidget:
    """Load lesson ``name``'s quiz and display it: the live widget in a kernel, the static view
    (questions, choices, collapsed answers) wherever widgets cannot run."""
    from IPython.display import display

    widget = QuizWidget(load_quiz(name), seed=seed)
    display(widget)
    return widget
