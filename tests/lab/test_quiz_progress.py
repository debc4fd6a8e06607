"""The quiz records the learner's answers in the progress file, shows where it could not, and
puts its feedback in ARIA live regions; a question's section links the map to the lesson."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ckptlab.lab.a11y import LIVE_CLASS
from ckptlab.lab.progress import read_progress, summarise
from ckptlab.lab.quiz import QUIZ_DIR, QuizWidget, load_quiz

REPO = Path(__file__).resolve().parents[2]
LESSON = "04_interrupt_and_resume"


@pytest.fixture
def progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("CKPTLAB_PROGRESS_FILE", str(path))
    monkeypatch.delenv("CKPTLAB_PROGRESS", raising=False)
    return path


def wrong_position(widget, index):
    return next(p for p in range(len(widget.orders[index]))
                if p not in widget.correct_positions(index))


def test_answers_are_recorded_with_the_first_try(progress_file):
    widget = QuizWidget(load_quiz(LESSON), seed=0, lesson=LESSON)
    choice = [i for i, q in enumerate(widget.quiz.questions) if q.kind != "recall"]
    first, second = choice[0], choice[1]
    widget.choose(first, wrong_position(widget, first) if widget.quiz.questions[first].kind
                  == "single" else [wrong_position(widget, first)])
    widget.check(first)
    widget.choose(first, widget.correct_positions(first))
    widget.check(first)
    widget.reveal(second)                      # shown before any attempt: first try missed
    questions = read_progress(progress_file)["lessons"][LESSON]["questions"]
    one, two = (questions[widget.quiz.questions[i].id] for i in (first, second))
    assert (one["first_try"], one["correct"], one["attempts"]) == (False, True, 2)
    assert (two["first_try"], two["attempts"]) == (False, 0)
    row = next(r for r in summarise(read_progress(progress_file)) if r.lesson == LESSON)
    assert row.answered == 2 and row.first_try == 0 and row.correct_now == 1
    assert len(row.revisit) == 2


def test_a_typed_answer_is_recorded_as_typed(progress_file):
    quiz = load_quiz(LESSON)
    index = next(i for i, q in enumerate(quiz.questions) if q.kind == "recall" and q.scored)
    widget = QuizWidget(quiz, seed=0, lesson=LESSON)
    widget.selectors[index].value = "I think it is 42"
    widget.check(index)
    entry = read_progress(progress_file)["lessons"][LESSON]["questions"][quiz.questions[index].id]
    assert entry["kind"] == "recall" and entry["answer"] == "I think it is 42"


def test_without_a_lesson_nothing_is_recorded(progress_file):
    widget = QuizWidget(load_quiz(LESSON), seed=0)
    widget.reveal(0)
    assert not progress_file.exists()


def test_a_damaged_progress_file_is_named_under_the_question_and_left_alone(progress_file):
    progress_file.write_text("{oops")
    widget = QuizWidget(load_quiz(LESSON), seed=0, lesson=LESSON)
    index = next(i for i, q in enumerate(widget.quiz.questions) if q.kind == "single")
    widget.choose(index, widget.correct_positions(index))
    assert widget.check(index).correct
    assert "Correct." in widget.feedback[index].value
    assert "progress not saved" in widget.feedback[index].value
    assert progress_file.read_text() == "{oops"
    assert widget.score.first_correct == 1


def test_every_feedback_area_is_a_live_region():
    widget = QuizWidget(load_quiz(LESSON), seed=0)
    assert all(LIVE_CLASS in f._dom_classes for f in widget.feedback)


def test_every_named_section_is_a_heading_of_its_lesson():
    for bank in sorted(QUIZ_DIR.glob("[0-9][0-9]_*.json")):
        sections = {q.get("section") for q in json.loads(bank.read_text())["questions"]}
        sections.discard(None)
        if not sections:
            continue
        nb = nbformat.read(REPO / "notebooks" / f"{bank.stem}.ipynb", as_version=4)
        headings = {line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("#")}
        missing = sections - headings
        assert not missing, f"{bank.name}: no such heading in the lesson: {sorted(missing)}"


def test_a_scored_prediction_is_recorded(progress_file):
    import ipywidgets as widgets

    from ckptlab.lab.predict import Outcome, Prediction, PredictLiveView

    last = {}

    def render(x):
        last["value"] = 2 * x
        return f"twice {x} is {2 * x}"

    prediction = Prediction("double", lambda x: f"What is twice {x}?",
                            lambda x: [Outcome(2 * x, str(2 * x), "Doubling adds it to itself."),
                                       Outcome(x + 2, str(x + 2), "That adds 2 instead.")],
                            lambda **_: last["value"])
    view = PredictLiveView(render, {"x": widgets.IntSlider(value=3)}, [prediction],
                           run_button="Run", seed=0, lesson=LESSON)
    view.choose(0, "5")
    view.refresh()
    entries = read_progress(progress_file)["lessons"][LESSON]["questions"]
    (entry,) = entries.values()
    assert entry["kind"] == "predict" and entry["answer"] == "5"
    assert entry["first_try"] is False and entry["correct"] is False
    row = next(r for r in summarise(read_progress(progress_file)) if r.lesson == LESSON)
    assert row.predictions == 1


def test_a_missed_question_links_to_the_section_that_teaches_it(progress_file):
    from ckptlab.lab.progress import heading_anchor, record_answer

    question = next(q for q in load_quiz("07_failure_modes").questions if q.id == "pickle")
    assert question.section.startswith("Why `torch.load`")
    record_answer("07_failure_modes", "pickle", kind=question.kind, correct=False)
    row = next(r for r in summarise(read_progress(progress_file)) if r.lesson == "07_failure_modes")
    assert row.revisit[0].link == ("07_failure_modes.ipynb#Why-torch.load-without-"
                                   "weights_only=True-is-dangerous")
    assert heading_anchor("1. The `latest` and `best` pointers") == \
        "1.-The-latest-and-best-pointers"
