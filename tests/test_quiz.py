"""Quiz engine: banks validated against the schema and balanced (no position, no length tells
the answer), seeded shuffles, first-attempt scoring, feedback that withholds the answer until a
second attempt or "Show answer", recall questions, and the static view."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from ckptlab.lab.quiz import (QUIZ_DIR, Question, QuizError, QuizWidget, choice_order, grade,
                              grade_recall, load_quiz, quiz_static_html, session_seed)

# Every bank in the package, including lessons added later (09_*, 10_*, ...).
BANKS = sorted(p for p in QUIZ_DIR.glob("*.json") if p.name != "schema.json")
SCHEMA = json.loads((QUIZ_DIR / "schema.json").read_text())
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def choice_questions():
    for bank in BANKS:
        for q in load_quiz(bank).questions:
            if q.kind != "recall":
                yield bank.stem, q


def test_there_is_a_bank_per_lesson_notebook():
    notebooks = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                       if not p.stem.startswith("00_"))
    assert notebooks and set(notebooks) <= {b.stem for b in BANKS}


@pytest.mark.parametrize("bank", BANKS, ids=lambda p: p.stem)
def test_bank_matches_schema_and_rules(bank):
    data = json.loads(bank.read_text())
    jsonschema.validate(data, SCHEMA)
    quiz = load_quiz(bank)  # the semantic rules the schema cannot express
    recall = [q for q in quiz.questions if q.kind == "recall"]
    assert 1 <= len(recall) <= 2, f"{bank.stem}: {len(recall)} recall questions, want 1-2"
    assert len(quiz.questions) - len(recall) >= 3
    for q in quiz.questions:
        for c in q.choices:  # an explanation says why, not just "Yes (lesson 1)."
            assert len(c.explanation.split()) >= 6, (bank.stem, q.id, c.explanation)


def test_schema_knows_the_recall_kind_and_rejects_bad_questions():
    recall = {"id": "r", "prompt": "How many?", "kind": "recall",
              "model_answer": "Four: the three best and the latest.", "accept": [4, "four"]}
    choice = {"id": "a", "prompt": "Prompt?", "kind": "single",
              "choices": [{"text": "x", "correct": True,
                           "explanation": "because this is the reason it is right"},
                          {"text": "y", "correct": False,
                           "explanation": "because this is the reason it is wrong"}]}
    jsonschema.validate({"title": "t", "questions": [choice, {**choice, "id": "b"}, recall]},
                        SCHEMA)
    for bad in ({**recall, "model_answer": ""}, {**recall, "accept": [True]},
                {**recall, "choices": []}, {**choice, "kind": "recall"},
                {**choice, "choices": [{"text": "x", "correct": True}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"title": "t", "questions": [choice, choice, bad]}, SCHEMA)


def test_banks_are_balanced_across_the_suite():
    """A guesser gains nothing: no position holds more than 40% of the correct answers of the
    single-choice questions, the longest (or shortest) choice is correct in at most 40% of the
    questions, and 'tick all but the last' (or 'tick all') wins at most 40% of multiple ones."""
    positions, longest, shortest, singles, n = Counter(), 0, 0, 0, 0
    all_but_last = tick_all = multiples = 0
    for _, q in choice_questions():
        n += 1
        lengths = [len(c.text) for c in q.choices]
        longest += q.choices[lengths.index(max(lengths))].correct
        if q.kind == "single":
            singles += 1
            positions[next(iter(q.correct_indices))] += 1
            shortest += q.choices[lengths.index(min(lengths))].correct
        else:
            multiples += 1
            last = len(q.choices) - 1
            all_but_last += q.correct_indices == frozenset(range(last))
            tick_all += q.correct_indices == frozenset(range(last + 1))
    print(f"positions {dict(positions)} of {singles}; longest correct {longest}/{n}; "
          f"shortest correct {shortest}/{singles}; all-but-last {all_but_last}/{multiples}")
    assert max(positions.values()) <= 0.40 * singles, positions
    assert longest <= 0.40 * n, f"the longest choice is correct in {longest} of {n}"
    assert shortest <= 0.40 * singles, f"the shortest choice is correct in {shortest}"
    assert all_but_last <= 0.40 * multiples and tick_all <= 0.40 * multiples


def test_no_two_lessons_open_with_the_same_question():
    openers = [load_quiz(b).questions[0].prompt for b in BANKS]
    assert len(set(openers)) == len(openers), Counter(openers).most_common(2)
    ids = [(b.stem, q.id) for b in BANKS for q in load_quiz(b).questions]
    prompts = Counter(q.prompt for b in BANKS for q in load_quiz(b).questions)
    assert prompts.most_common(1)[0][1] == 1, prompts.most_common(1)
    assert ids


def test_loader_rejects_semantic_errors(tmp_path):
    def bank(questions):
        path = tmp_path / "b.json"
        path.write_text(json.dumps({"title": "t", "questions": questions}))
        return path

    choice = lambda correct: {"text": "x", "correct": correct, "explanation": "because"}  # noqa
    two_right = {"id": "a", "prompt": "p", "kind": "single", "choices": [choice(True)] * 2}
    with pytest.raises(QuizError, match="exactly one"):
        load_quiz(bank([two_right]))
    one = {"id": "a", "prompt": "p", "kind": "single", "choices": [choice(True), choice(False)]}
    with pytest.raises(QuizError, match="duplicate"):
        load_quiz(bank([one, one]))
    with pytest.raises(QuizError, match="model_answer"):
        load_quiz(bank([{"id": "r", "prompt": "p", "kind": "recall", "model_answer": " "}]))
    with pytest.raises(QuizError, match="no question bank"):
        load_quiz(tmp_path / "missing.json")


# -- shuffle ---------------------------------------------------------------------------------
def test_shuffle_same_seed_same_order_and_every_order_reachable():
    for _, q in choice_questions():
        assert choice_order(q, 5) == choice_order(q, 5)
        assert sorted(choice_order(q, 5)) == list(range(len(q.choices)))
    three = next(q for _, q in choice_questions() if len(q.choices) == 3)
    four = next(q for _, q in choice_questions() if len(q.choices) == 4)
    for q in (three, four):
        seen = {choice_order(q, seed) for seed in range(2000)}
        assert seen == set(itertools.permutations(range(len(q.choices)))), len(seen)
    # questions of one quiz get their own orders, not one shared permutation
    quiz = load_quiz("02_prediction_trace")
    orders = {choice_order(q, 1) for q in quiz.questions if len(q.choices) == 3}
    assert len({choice_order(q, s) for s in range(3) for q in quiz.questions
                if len(q.choices) == 3}) > 1 and orders


def test_session_seed_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CKPTLAB_QUIZ_SEED", "42")
    assert session_seed() == 42
    widget = QuizWidget(load_quiz("01_pipeline_trace"))
    assert widget.seed == 42 and "#42" in widget.widget.children[0].value
    monkeypatch.setenv("CKPTLAB_QUIZ_SEED", "x")
    with pytest.raises(QuizError, match="whole number"):
        session_seed()
    monkeypatch.delenv("CKPTLAB_QUIZ_SEED")
    assert session_seed() == session_seed()  # drawn once per session


def test_widget_shows_choices_in_the_seeded_order():
    quiz = load_quiz("01_pipeline_trace")
    for seed in (0, 1, 2):
        widget = QuizWidget(quiz, seed=seed)
        single = next(i for i, q in enumerate(quiz.questions) if q.kind == "single")
        labels = list(widget.selectors[single].options)
        assert labels == [quiz.questions[single].choices[i].text for i in widget.orders[single]]
        widget.choose(single, widget.correct_positions(single))
        assert widget.check(single).correct


# -- grading and feedback --------------------------------------------------------------------
def first_single(quiz):
    return next(i for i, q in enumerate(quiz.questions) if q.kind == "single")


def test_grade_single_and_multiple():
    quiz = load_quiz("01_pipeline_trace")
    single = quiz.questions[first_single(quiz)]
    right = next(iter(single.correct_indices))
    assert grade(single, right).correct
    assert not grade(single, (right + 1) % len(single.choices)).correct
    multiple = next(q for q in quiz.questions if q.kind == "multiple")
    assert grade(multiple, sorted(multiple.correct_indices)).correct
    assert not grade(multiple, sorted(multiple.correct_indices)[:1]).correct


@pytest.mark.parametrize("answer,message", [(None, "choose an answer"), ([], "choose"),
                                            (99, "does not exist"), ([0, 1], "exactly one")])
def test_grade_raises_on_bad_input(answer, message):
    quiz = load_quiz("01_pipeline_trace")
    with pytest.raises(QuizError, match=message):
        grade(quiz.questions[first_single(quiz)], answer)


def test_first_attempt_scoring_and_withheld_answer():
    quiz = load_quiz("01_pipeline_trace")
    widget = QuizWidget(quiz, seed=3)
    i = first_single(quiz)
    question = quiz.questions[i]
    right = next(iter(question.correct_indices))
    wrong = [j for j in range(len(question.choices)) if j != right]
    widget.buttons[i].click()  # nothing chosen: a message, not an exception
    assert "choose an answer" in widget.feedback[i].value and widget.score.first_correct == 0
    widget.choose(i, widget.orders[i].index(wrong[0]))
    widget.buttons[i].click()
    first = widget.feedback[i].value
    assert "Not quite" in first
    assert question.choices[wrong[0]].explanation[:40] in first      # why the choice is wrong
    assert question.choices[right].text not in first                 # ...but not the answer
    assert question.choices[right].explanation[:40] not in first
    widget.choose(i, widget.orders[i].index(wrong[1]))
    widget.buttons[i].click()  # a second wrong attempt reveals the answer
    assert question.choices[right].text in widget.feedback[i].value
    widget.choose(i, widget.orders[i].index(right))
    widget.buttons[i].click()
    assert "Correct" in widget.feedback[i].value
    total = widget.score.total
    assert widget.score.first_correct == 0 and widget.score.correct == 1
    assert f"first try 0/{total} · now 1/{total}" in widget.score_label.value


def test_show_answer_before_answering_costs_the_first_try():
    quiz = load_quiz("03_loss_curves")
    widget = QuizWidget(quiz, seed=0)
    i = first_single(quiz)
    question = quiz.questions[i]
    widget.reveal_buttons[i].click()
    assert question.choices[next(iter(question.correct_indices))].text in widget.feedback[i].value
    widget.choose(i, widget.correct_positions(i))
    widget.buttons[i].click()
    assert widget.score.first_correct == 0 and widget.score.correct == 1
    j = next(k for k, q in enumerate(quiz.questions) if q.kind != "recall" and k != i)
    widget.choose(j, widget.correct_positions(j))
    widget.buttons[j].click()  # right at once: counts in both
    assert widget.score.first_correct == 1 and widget.score.correct == 2


def test_multiple_choice_first_feedback_does_not_name_the_correct_ticks():
    quiz = load_quiz("01_pipeline_trace")
    widget = QuizWidget(quiz, seed=0)
    i = next(k for k, q in enumerate(quiz.questions) if q.kind == "multiple")
    question = quiz.questions[i]
    correct = sorted(question.correct_indices)
    wrong = next(j for j in range(len(question.choices)) if j not in correct)
    widget.choose(i, [widget.orders[i].index(correct[0]), widget.orders[i].index(wrong)])
    widget.buttons[i].click()
    text = widget.feedback[i].value
    assert question.choices[wrong].explanation[:30] in text
    assert all(question.choices[c].explanation[:30] not in text for c in correct)
    assert "should not be there" in text and "not ticked" in text


def test_recall_questions_are_auto_checked_where_checkable():
    numeric = Question("n", "How many?", "recall", model_answer="Four, because...",
                       accept=(4,))
    named = Question("f", "Which file?", "recall", model_answer="manifest.json lists...",
                     accept=("manifest.json",))
    free = Question("w", "Why?", "recall", model_answer="Because...")
    assert grade_recall(numeric, " 4 ").correct and grade_recall(numeric, "4.0").correct
    assert not grade_recall(numeric, "3").correct and not grade_recall(numeric, "four").correct
    assert grade_recall(named, "Manifest.JSON").correct
    assert grade_recall(named, "`manifest.json`.").correct
    assert not grade_recall(named, "state.json").correct
    with pytest.raises(QuizError, match="type an answer"):
        grade_recall(named, "  ")
    with pytest.raises(QuizError, match="no automatic check"):
        grade_recall(free, "because")
    assert not free.scored and numeric.scored


def test_recall_in_the_widget_hides_the_model_answer_until_asked():
    quiz = load_quiz("07_failure_modes")
    widget = QuizWidget(quiz, seed=0)
    i = next(k for k, q in enumerate(quiz.questions) if q.kind == "recall")
    question = quiz.questions[i]
    widget.selectors[i].value = "state.json"
    widget.buttons[i].click()
    assert "Not what" in widget.feedback[i].value
    assert question.model_answer not in widget.feedback[i].value
    widget.selectors[i].value = "manifest.json"
    widget.buttons[i].click()
    assert "Correct" in widget.feedback[i].value
    assert widget.score.grades[question.id].correct and not widget.score.first[question.id]
    free_quiz = load_quiz("08_review")
    widget = QuizWidget(free_quiz, seed=0)
    k = next(k for k, q in enumerate(free_quiz.questions) if q.kind == "recall" and not q.scored)
    assert widget.score.total == sum(q.scored for q in free_quiz.questions)
    widget.reveal_buttons[k].click()
    assert html_escape(free_quiz.questions[k].model_answer) in widget.feedback[k].value


def html_escape(text):
    import html

    return html.escape(text)


# -- static view -----------------------------------------------------------------------------
@pytest.mark.parametrize("bank", BANKS, ids=lambda p: p.stem)
def test_static_view_poses_questions_with_answers_collapsed_one_by_one(bank):
    quiz = load_quiz(bank)
    page = quiz_static_html(quiz, seed=0)
    outside = re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    assert page.count("<details>") == len(quiz.questions)
    for q in quiz.questions:
        assert html_escape(q.prompt) in outside
        for c in q.choices:
            assert html_escape(c.text) in outside          # every choice visible
            assert html_escape(c.explanation) not in outside  # explanations collapsed
        if q.kind == "recall":
            assert html_escape(q.model_answer) not in outside
    assert "&#10003;" not in outside and "&#10007;" not in outside  # no verdicts outside


def test_live_widget_and_static_view_are_one_output():
    """In a kernel the widget view wins; an exported page shows the static HTML instead. No
    answers block is displayed under the live widget."""
    widget = QuizWidget(load_quiz("02_prediction_trace"), seed=0)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"] == quiz_static_html(widget.quiz, 0)
    assert "VBox" not in bundle["text/plain"]


def test_exported_page_keeps_the_static_view_and_drops_the_widget(tmp_path):
    """What tools/refresh_notebooks.py and tools/build_site.py do to a quiz output: the widget
    view goes (it needs a kernel), the static view stays and is what the page shows."""
    import sys

    import nbformat
    from nbconvert import HTMLExporter

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from refresh_notebooks import clean

    widget = QuizWidget(load_quiz("04_interrupt_and_resume"), seed=0)
    output = nbformat.v4.new_output("display_data", data=widget._repr_mimebundle_())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("show_quiz(...)",
                                                                   outputs=[output])])
    clean(nb)
    assert list(nb.cells[0].outputs[0]["data"]) == ["text/html"]
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    assert "answers and explanations" in page and "<details>" in page
    assert "VBox(children" not in page
