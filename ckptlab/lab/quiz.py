"""Quizzes for the lessons: JSON question banks, plain grading functions, an ipywidgets UI.

Question banks live in ``ckptlab/lab/quizzes/<lesson>.json``, shipped as package data
(schema: ``schema.json`` beside them). Three kinds of question:

* ``single`` / ``multiple``: recognition; every choice carries its own explanation of *why*
  it is right or wrong.
* ``recall``: the learner types an answer, and a ``model_answer`` is shown on request. It is
  graded in one of three ways, never by comparing whole sentences:

  - ``accept``: a number or a name (a component, a file). Obvious equivalents count: ``0``,
    ``zero`` and ``exactly zero``; ``2,000`` and ``step 2000``; ``the counters`` and
    ``counter`` (articles, punctuation, plurals and filler words are ignored; see
    :func:`normalise_name` and :func:`numbers_in`).
  - ``ideas``: prose checked by the ideas it must contain, each found by any of its phrasings
    (:func:`ideas_found`): a correct sentence in the learner's own words passes, a lone keyword
    does not.
  - neither: **self-checked**. The learner compares their answer with the model answer and
    marks it; that mark is counted apart from the graded score (:class:`Score`).

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
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .quiz_bank import (  # noqa: F401 (the banks, also reachable from here)
    QUIZ_DIR,
    Choice,
    Idea,
    Question,
    Quiz,
    QuizError,
    answer_words,
    load_quiz,
    normalise_name,
)

SEED_VARIABLE = "CKPTLAB_QUIZ_SEED"
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


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


_NUMBER_WORDS = {word: n for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS["no"] = 0  # "no difference", "no steps"
def numbers_in(text: str) -> set[float]:
    """The distinct numbers a short answer states, in digits or words (zero to twenty):
    ``"exactly zero"`` -> {0}, ``"from step 2,000"`` -> {2000}."""
    found: set[float] = set()
    for word in answer_words(text):
        if word in _NUMBER_WORDS:
            found.add(float(_NUMBER_WORDS[word]))
        else:
            try:
                found.add(float(word))
            except ValueError:
                continue
    return found


def ideas_found(question: Question, answer: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which of ``question.ideas`` a typed answer contains, and which it lacks: an idea is
    found when any of its phrasings appears in the answer as whole words (compared after
    :func:`normalise_name`, so case, punctuation and plurals do not matter)."""
    text = f" {normalise_name(answer)} "
    found, missing = [], []
    for idea in question.ideas:
        hit = any(f" {normalise_name(p)} " in text for p in idea.phrasings)
        (found if hit else missing).append(idea.name)
    return tuple(found), tuple(missing)


def grade_recall(question: Question, answer: str | float | None) -> Grade:
    """Grade a typed answer.

    * ``accept`` with numbers: right when the answer states exactly one distinct number and it
      is an accepted one (``0``, ``zero``, ``exactly zero``; ``2,000``, ``step 2000``).
    * ``accept`` with names: right when the answer names an accepted one, compared after
      :func:`normalise_name` (``the counters`` = ``counter``).
    * ``ideas``: right when every idea is found (:func:`ideas_found`); ``feedback`` lists
      ``(idea, found)`` pairs, shown only once the answer may be revealed.

    Raises:
        QuizError: an empty answer, a question that is not ``recall``, or a self-checked
            recall question (it is compared with the model answer by the learner).
    """
    if question.kind != "recall":
        raise QuizError(f"question {question.id!r} is a choice question: use grade")
    text = "" if answer is None else str(answer)
    if not text.strip():
        raise QuizError("type an answer first")
    if question.ideas:
        found, missing = ideas_found(question, text)
        feedback = tuple((name, name in found, "") for name in
                         (idea.name for idea in question.ideas))
        return Grade(question.id, not missing, (), feedback, answer_text=text)
    if not question.accept:
        raise QuizError("this question is self-checked: compare your answer with the model "
                        "answer, then mark it")
    stated, named = numbers_in(text), normalise_name(text)
    correct = False
    for accepted in question.accept:
        if isinstance(accepted, (int, float)):
            correct |= stated == {float(accepted)}
        else:
            correct |= bool(named) and named == normalise_name(accepted)
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
    self_total: int = 0                                   # self-checked questions
    self_marks: dict[str, bool] = field(default_factory=dict)

    def record(self, result: Grade) -> None:
        self.first.setdefault(result.question_id, result.correct)
        self.grades[result.question_id] = result

    def record_revealed(self, question_id: str) -> None:
        """The answer was shown before any attempt: the first try is lost."""
        self.first.setdefault(question_id, False)

    def record_self_check(self, question_id: str, had_it: bool) -> None:
        """The learner's own verdict on a self-checked answer (the latest one counts); kept
        apart from the graded score."""
        self.self_marks[question_id] = bool(had_it)

    @property
    def first_correct(self) -> int:
        return sum(self.first.values())

    @property
    def correct(self) -> int:
        return sum(g.correct for g in self.grades.values())

    def __str__(self) -> str:
        graded = (f"Score: first try {self.first_correct}/{self.total} · "
                  f"now {self.correct}/{self.total}")
        if not self.self_total:
            return graded
        return (graded + f" · self-checked: {sum(self.self_marks.values())} of "
                f"{self.self_total} marked right by you")


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


def _ideas_html(result: Grade) -> str:
    return "<ul style='margin:4px 0'>" + "".join(
        f"<li>{'&#10003;' if found else '&#10007;'} {html.escape(name)}</li>"
        for name, found, _ in result.feedback) + "</ul>"


def _recall_feedback_html(question: Question, result: Grade | None, *, reveal: bool) -> str:
    model = (f"<div><i>Model answer:</i> {html.escape(question.model_answer)}</div>"
             if reveal or (result is not None and result.correct) else "")
    if result is None:
        return model
    if question.ideas:
        found = sum(ok for _, ok, _ in result.feedback)
        if result.correct:
            return (f"<b style='color:#1a7f37'>Correct.</b> Your answer has every idea the "
                    f"answer needs:{_ideas_html(result)}{model}")
        if reveal:
            return (f"<b style='color:#cf222e'>Not yet.</b> The ideas the answer needs, and "
                    f"whether yours has them:{_ideas_html(result)}{model}")
        return (f"<b style='color:#cf222e'>Not yet.</b> Your answer has {found} of the "
                f"{len(question.ideas)} ideas the answer needs. Say what is missing and try "
                "again, or press <i>Show answer</i>.")
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

    A self-checked recall question has *Compare with the model answer* instead of Check and
    Show answer; once the model answer is shown, *I had it* and *I missed something* record the
    learner's own verdict (:meth:`Score.record_self_check`).

    Attributes for headless use: ``orders`` (per question, the bank indices in display order),
    ``selectors`` (a RadioButtons, a list of Checkbox widgets, or a Text), ``buttons`` (Check),
    ``reveal_buttons`` (Show answer, or Compare for a self-checked question),
    ``self_check_buttons`` (per question ``(had it, missed)`` or ``None``), ``feedback`` (HTML
    widgets), ``score`` and ``score_label``.

    With ``lesson`` (what :func:`show_quiz` passes), every answer is also recorded in the
    learner's progress file (:mod:`ckptlab.lab.progress`). Each feedback area is an ARIA live
    region (:mod:`ckptlab.lab.a11y`), so a screen reader announces the verdict.
    """

    def __init__(self, quiz: Quiz, seed: int | None = None, lesson: str | None = None) -> None:
        import ipywidgets as w

        from .a11y import mark_live

        self.quiz = quiz
        self.lesson = lesson
        self.seed = session_seed() if seed is None else int(seed)
        self.orders = [choice_order(q, self.seed) for q in quiz.questions]
        self.score = Score(sum(q.scored for q in quiz.questions),
                           self_total=sum(q.self_checked for q in quiz.questions))
        self.attempts = [0] * len(quiz.questions)
        self.revealed = [False] * len(quiz.questions)
        self.selectors: list[Any] = []
        self.buttons: list[Any] = []
        self.reveal_buttons: list[Any] = []
        self.self_check_buttons: list[tuple[Any, Any] | None] = []
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
                selector = w.Textarea(placeholder="type your answer",
                                      layout=w.Layout(width="70%", height="4em")) \
                    if question.ideas or question.self_checked else \
                    w.Text(placeholder="type your answer", layout=w.Layout(width="60%"))
                control = selector
                note = (" <i>(in your own words; then compare with the model answer and mark "
                        "it yourself)</i>" if question.self_checked else
                        " <i>(in your own words; checked for the ideas it needs)</i>"
                        if question.ideas else " <i>(type the answer)</i>")
            check = w.Button(description="Check", button_style="primary")
            reveal = w.Button(description="Compare with the model answer"
                              if question.self_checked else "Show answer",
                              layout=w.Layout(width="auto"))
            feedback = mark_live(w.HTML())
            check.on_click(lambda _, i=n - 1: self.check(i))
            reveal.on_click(lambda _, i=n - 1: self.reveal(i))
            marks = None
            if question.self_checked:
                marks = (w.Button(description="I had it", button_style="success"),
                         w.Button(description="I missed something", button_style="warning",
                                  layout=w.Layout(width="auto")))
                for box in marks:
                    box.layout.display = "none"   # shown with the model answer
                marks[0].on_click(lambda _, i=n - 1: self.mark_self_check(i, True))
                marks[1].on_click(lambda _, i=n - 1: self.mark_self_check(i, False))
            buttons = [check, reveal] if question.scored else [reveal, *marks]
            boxes.append(w.VBox([w.HTML(f"<b>{n}. {html.escape(question.prompt)}</b>{note}"),
                                 control, w.HBox(buttons), feedback]))
            self.selectors.append(selector)
            self.buttons.append(check)
            self.reveal_buttons.append(reveal)
            self.self_check_buttons.append(marks)
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
        self._record(index, correct=result.correct,
                     answer=result.answer_text if question.kind == "recall" else None)
        self._update_score()
        return result

    def reveal(self, index: int) -> None:
        """Show question ``index``'s answer (what Show answer does). Before any attempt this
        costs the first try."""
        question = self.quiz.questions[index]
        self.revealed[index] = True
        if question.scored:
            self.score.record_revealed(question.id)
            if not self.attempts[index]:
                self._record(index, correct=None, revealed_first=True)
        if question.self_checked:
            typed = str(self.selectors[index].value or "").strip()
            mine = (f"<div><i>Your answer:</i> {html.escape(typed)}</div>" if typed else
                    "<div><i>(You typed nothing: write your answer first, then compare.)</i>"
                    "</div>")
            self.feedback[index].value = (mine + _recall_feedback_html(question, None,
                                                                       reveal=True)
                                          + "<div>Did yours say the same, in any words?</div>")
            marks = self.self_check_buttons[index]
            if marks is not None and typed:
                for box in marks:
                    box.layout.display = None
        elif question.kind == "recall":
            self.feedback[index].value = _recall_feedback_html(question, None, reveal=True)
        else:
            correct = sorted(question.correct_indices)
            fake = Grade(question.id, False, (), tuple(
                (question.choices[i].text, True, question.choices[i].explanation)
                for i in correct))
            self.feedback[index].value = feedback_html(fake, reveal=True).replace(
                "Not quite.</b> The answer, explained:", "Answer:</b>")
        self._update_score()

    def mark_self_check(self, index: int, had_it: bool) -> None:
        """Record the learner's verdict on self-checked question ``index`` (what *I had it*
        and *I missed something* do)."""
        question = self.quiz.questions[index]
        if not question.self_checked:
            raise QuizError(f"question {question.id!r} is graded, not self-checked")
        if not self.revealed[index]:
            raise QuizError("compare with the model answer first")
        self.score.record_self_check(question.id, had_it)
        self._record(index, correct=None, self_mark=had_it,
                     answer=str(self.selectors[index].value or ""))
        self._update_score()

    def _record(self, index: int, **answer: Any) -> None:
        """Record an answer in the learner's progress file; a file that cannot be used is said
        under the question (and never overwritten), the quiz goes on."""
        if self.lesson is None:
            return
        from .progress import ProgressFileError, record_answer

        question = self.quiz.questions[index]
        try:
            record_answer(self.lesson, question.id, kind=question.kind, **answer)
        except ProgressFileError as exc:
            self.feedback[index].value += (f"<div><small>(progress not saved: "
                                           f"{html.escape(str(exc))})</small></div>")

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
            how = ("Write your answer, then compare it with the model answer." if q.self_checked
                   else "Write your answer; it is checked for these ideas: " + "; ".join(
                       html.escape(i.name) for i in q.ideas) + "." if q.ideas else
                   "Write your answer, then compare it with the model answer.")
            parts.append(f"<details><summary>Model answer</summary><p>"
                         f"{html.escape(q.model_answer)}</p><p><i>{how}</i></p></details>")
            continue
        order = choice_order(q, seed)
        letters = "ABCDEFGHIJ"
        parts.append("<ol type='A'>" + "".join(
            f"<li>{html.escape(q.choices[i].text)}</li>" for i in order) + "</ol>")
        items = "".join(
            f"<li><b>{letters[pos]}</b> "
            f"{'&#10003; right' if q.choices[i].correct else '&#10007; wrong'}"
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

    from .a11y import enable_live_regions

    lesson = None if Path(name).suffix else Path(name).name
    widget = QuizWidget(load_quiz(name), seed=seed, lesson=lesson)
    enable_live_regions()   # its feedback areas become live regions, in any lesson
    display(widget)
    return widget
