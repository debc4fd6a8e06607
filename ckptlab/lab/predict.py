"""Predict, then run: the learner states what a demonstration will do before the real run
answers, and the prediction is scored beside the run's outcome.

A :class:`Prediction` is a question that depends on a live control's values ("the run saves
every 500 steps and is killed after step 3210: from which step will it resume?"), with its
possible answers (:class:`Outcome`) and a way to read the true one off the run that just
happened. :class:`PredictLiveView` adds the questions to a :class:`~ckptlab.lab.widgets.LiveView`:
one set of choices per question, refreshed whenever a control moves; pressing the run button
runs the real demonstration and then grades each prediction through the quiz machinery
(:func:`ckptlab.lab.quiz.grade`: choices shown in an order seeded by the learner's session,
first tries counted by :class:`ckptlab.lab.quiz.Score`). A prediction left blank is not scored.

:func:`show_predict_live` displays it as one output: a live kernel shows the control with its
questions and an empty live area (no outcome before the learner has predicted), while a static
render - an exported page, a code host, nbval - shows the questions, the default run's result
and, collapsed, what that run answered.

Used by lessons 4, 5, 7 and 9. Introduced in notebook ``04_interrupt_and_resume``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import CkptlabError
from .a11y import mark_live
from .quiz import Choice, Grade, Question, Score, choice_order, grade, session_seed
from .widgets import LiveView, static_html, to_displayable


@dataclass(frozen=True)
class Outcome:
    """One possible answer to a prediction: ``key`` is what :attr:`Prediction.answer`
    returns when the run did this; ``explanation`` says why it happens (or does not)."""

    key: Hashable
    text: str
    explanation: str


@dataclass(frozen=True)
class Prediction:
    """A question about a run, asked before it and answered by it.

    Args:
        id: a short name; with the control values it identifies the question, so a first try
            is counted once per setting.
        prompt: control values -> the question.
        outcomes: control values -> the possible answers (keys unique).
        answer: control values -> the key of what the last run did (called after the run).
    """

    id: str
    prompt: Callable[..., str]
    outcomes: Callable[..., Sequence[Outcome]]
    answer: Callable[..., Hashable]

    def question(self, values: Mapping[str, Any], truth: Hashable | None = None) -> Question:
        """The prediction for ``values`` as a single-choice quiz question; the outcome whose
        key is ``truth`` is marked correct (none before the run).

        Raises:
            CkptlabError: two outcomes share a key, or ``truth`` is not one of them.
        """
        outcomes = list(self.outcomes(**values))
        keys = [o.key for o in outcomes]
        if len(set(keys)) != len(keys):
            raise CkptlabError(f"prediction {self.id!r}: outcome keys repeat ({keys})")
        if truth is not None and truth not in keys:
            raise CkptlabError(f"prediction {self.id!r}: the run did {truth!r}, which is not "
                               f"among the answers offered ({keys})")
        setting = json.dumps({k: values[k] for k in sorted(values)}, default=str)
        return Question(f"{self.id} {setting}", self.prompt(**values), "single",
                        tuple(Choice(o.text, o.key == truth, o.explanation) for o in outcomes))


def _static_question_html(questions: Sequence[Question], seed: int) -> str:
    parts = ["<div class='ckptlab-predict-static'><p><b>Predict, then run.</b> "
             "<i>Before the run below, answer:</i></p>"]
    for q in questions:
        parts.append(f"<p>{html.escape(q.prompt)}</p><ol type='A'>" + "".join(
            f"<li>{html.escape(q.choices[i].text)}</li>" for i in choice_order(q, seed))
            + "</ol>")
    return "".join(parts) + "</div>"


def _static_answer_html(questions: Sequence[Question]) -> str:
    items = []
    for q in questions:
        right = next(c for c in q.choices if c.correct)
        items.append(f"<li>{html.escape(q.prompt)} &mdash; <b>&#10003; "
                     f"{html.escape(right.text)}</b>: {html.escape(right.explanation)}</li>")
    return ("<details class='ckptlab-predict-answer'><summary>What the run answered</summary>"
            f"<ul>{''.join(items)}</ul></details>")


class PredictLiveView(LiveView):
    """A :class:`~ckptlab.lab.widgets.LiveView` with predictions asked above its run button.

    Attributes for headless use (besides LiveView's): ``predictions``, ``pickers`` (one
    RadioButtons per prediction, options in the seeded order of the current question),
    ``verdict`` (HTML: the predictions against the run), ``score`` and ``score_label``.
    """

    def __init__(self, render: Callable[..., Any], controls: Mapping[str, Any],
                 predictions: Sequence[Prediction], *, run_button: str,
                 seed: int | None = None,
                 hint: str = "Predict, then press the button: a real run answers.",
                 lesson: str | None = None) -> None:
        import ipywidgets as widgets

        if not predictions:
            raise CkptlabError("a predicting control needs at least one prediction")
        super().__init__(render, controls, run_button=run_button, hint=hint)
        self.predictions = list(predictions)
        self.lesson = lesson   # with it, each scored prediction goes to the progress file
        self.seed = session_seed() if seed is None else int(seed)
        self.score = Score(0)
        self.prompts = [widgets.HTML() for _ in self.predictions]
        self.pickers = [widgets.RadioButtons(options=[], value=None,
                                             layout=widgets.Layout(width="auto"))
                        for _ in self.predictions]
        self.verdict = mark_live(widgets.HTML())
        self.score_label = widgets.HTML()
        self._questions: list[Question] = []
        self._orders: list[tuple[int, ...]] = []
        for control in self.controls.values():
            control.observe(lambda _: self.ask(), names="value")
        self.ask()
        asked = widgets.VBox(
            [widgets.HTML("<b>Predict, then run.</b> <i>Your answer is scored against what "
                          "the run does (first tries count).</i>")]
            + [widgets.VBox([prompt, picker])
               for prompt, picker in zip(self.prompts, self.pickers)],
            layout=widgets.Layout(border="1px solid #c4b5fd", padding="4px 8px",
                                  margin="4px 0"))
        row = widgets.HBox(list(self.controls.values()),
                           layout=widgets.Layout(flex_flow="row wrap"))
        self.widget = widgets.VBox([row, asked, widgets.HBox([self.button]), self.status,
                                    self.verdict, self.output, self.score_label])
        self._update_score()

    def questions(self, truths: Sequence[Hashable | None] | None = None) -> list[Question]:
        """The questions for the current control values (marked with ``truths``, if given)."""
        values = self.values()
        truths = truths or [None] * len(self.predictions)
        return [p.question(values, t) for p, t in zip(self.predictions, truths)]

    def ask(self) -> None:
        """Pose the questions for the current control values (clears earlier choices)."""
        self._questions = self.questions()
        self._orders = [choice_order(q, self.seed) for q in self._questions]
        for q, order, prompt, picker in zip(self._questions, self._orders, self.prompts,
                                            self.pickers):
            prompt.value = html.escape(q.prompt)
            picker.options = [q.choices[i].text for i in order]
            picker.value = None

    def choose(self, index: int, text: str) -> None:
        """Select the answer ``text`` of prediction ``index``, as a learner clicking would."""
        self.pickers[index].value = text

    def correct_text(self, index: int, truth: Hashable) -> str:
        """The answer text of prediction ``index`` whose key is ``truth`` (for tests)."""
        outcomes = self.predictions[index].outcomes(**self.values())
        return next(o.text for o in outcomes if o.key == truth)

    def refresh(self) -> None:
        """Run the demonstration, then grade each prediction made against what it did."""
        chosen = [None if picker.value is None else
                  order[list(picker.options).index(picker.value)]
                  for picker, order in zip(self.pickers, self._orders)]
        super().refresh()
        if self.last_error is not None:
            self.verdict.value = ""
            return
        values = self.values()
        try:
            truths = [p.answer(**values) for p in self.predictions]
            answered = self.questions(truths)
        except CkptlabError as exc:
            self.verdict.value = f"<span style='color:#cf222e'>{html.escape(str(exc))}</span>"
            return
        lines = []
        for question, pick in zip(answered, chosen):
            right = next(c for c in question.choices if c.correct)
            if pick is None:
                lines.append(f"<li>{html.escape(question.prompt)} <i>No prediction made (not "
                             f"scored).</i> The run: <b>{html.escape(right.text)}</b>. "
                             f"{html.escape(right.explanation)}</li>")
                continue
            result: Grade = grade(question, pick)
            self.score.record(result)
            mine = question.choices[pick]
            saved = self._record(question.id, mine.text, result.correct)
            mark = ("<b style='color:#1a7f37'>&#10003; right.</b>" if result.correct else
                    "<b style='color:#cf222e'>&#10007; not this time.</b>")
            why = "" if result.correct else \
                f" Your answer: <i>{html.escape(mine.text)}</i> &mdash; " \
                f"{html.escape(mine.explanation)}"
            lines.append(f"<li>{html.escape(question.prompt)} {mark} The run: "
                         f"<b>{html.escape(right.text)}</b>. {html.escape(right.explanation)}"
                         f"{why}{saved}</li>")
        self.verdict.value = ("<div class='ckptlab-predict-verdict' style='border-left:4px "
                              "solid #7c3aed;padding:2px 10px'><b>Your prediction, and what "
                              f"the run did:</b><ul style='margin:4px 0'>{''.join(lines)}"
                              "</ul></div>")
        self._update_score()

    def _record(self, prediction_id: str, prediction: str, matched: bool) -> str:
        """Record a scored prediction in the learner's progress file; returns a note to show
        when the file cannot be used (it is never overwritten)."""
        if self.lesson is None:
            return ""
        from .progress import ProgressFileError, record_prediction

        try:
            record_prediction(self.lesson, prediction_id, prediction, matched)
        except ProgressFileError as exc:
            return f" <small>(progress not saved: {html.escape(str(exc))})</small>"
        return ""

    def _update_score(self) -> None:
        made = len(self.score.first)
        self.score_label.value = (
            "<small>Predictions: none scored yet</small>" if not made else
            f"<b>Predictions: {self.score.first_correct} of {made} right at the first try "
            f"&middot; now {self.score.correct} of {made}</b>")


def show_predict_live(render: Callable[..., Any], controls: Mapping[str, Any],
                      predictions: Sequence[Prediction], *, run_button: str,
                      seed: int | None = None, hint: str | None = None,
                      lesson: str | None = None) -> PredictLiveView:
    """Display a predicting control as one output: in a live kernel the control with its
    questions and an empty live area (the learner predicts before seeing any outcome); without a
    kernel the questions, the default run's result and, collapsed, what that run answered.

    The default run is made either way (the lesson's asserts check it). Returns the
    :class:`PredictLiveView`, so a test can choose answers and call ``refresh()``.
    """
    from IPython.display import display

    view = PredictLiveView(render, controls, predictions, run_button=run_button, seed=seed,
                           lesson=lesson, **({"hint": hint} if hint is not None else {}))
    values = view.values()
    shown = to_displayable(render(**values))
    answered = view.questions([p.answer(**values) for p in view.predictions])
    view.default_html = (_static_question_html(view.questions(), view.seed) + static_html(shown)
                         + _static_answer_html(answered))
    display(view)
    return view


__all__ = ["Outcome", "PredictLiveView", "Prediction", "show_predict_live"]
