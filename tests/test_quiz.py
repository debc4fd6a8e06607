"""Quiz engine and exercise checks: banks validated against the schema, grading, the widget
driven headlessly (set .value, .click()), the kernel-less fallback, pass/fail exercises."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from ckptlab import QNetwork
from ckptlab.lab.exercises import check_greedy_policy, check_moving_average, check_parameter_count
from ckptlab.lab.quiz import QUIZ_DIR, QuizError, QuizWidget, grade, load_quiz, quiz_fallback_html

BANKS = sorted(p for p in QUIZ_DIR.glob("*.json") if p.name != "schema.json")
LESSON_QUESTION = "Why is checkpointing important during agent training?"


def test_there_is_a_bank_per_lesson_notebook():
    notebooks = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-9]_*.ipynb"))
    assert notebooks and [b.stem for b in BANKS if b.stem in notebooks] == notebooks


@pytest.mark.parametrize("bank", BANKS, ids=lambda p: p.stem)
def test_bank_matches_schema_and_rules(bank):
    schema = json.loads((QUIZ_DIR / "schema.json").read_text())
    data = json.loads(bank.read_text())
    jsonschema.validate(data, schema)
    quiz = load_quiz(bank)  # the semantic rules the schema cannot express
    assert len(quiz.questions) >= 3
    if bank.stem.startswith("01_"):
        assert LESSON_QUESTION in [q.prompt for q in quiz.questions]


def test_schema_rejects_a_choice_without_explanation():
    schema = json.loads((QUIZ_DIR / "schema.json").read_text())
    bad = {"title": "t", "questions": [{"id": "a", "prompt": "Prompt?", "kind": "single",
                                        "choices": [{"text": "x", "correct": True}]}] * 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


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
    with pytest.raises(QuizError, match="no question bank"):
        load_quiz(tmp_path / "missing.json")


def test_grade_single_and_multiple():
    quiz = load_quiz("01_pipeline_trace")
    single = next(q for q in quiz.questions if q.prompt == LESSON_QUESTION)
    right = next(i for i, c in enumerate(single.choices) if c.correct)
    assert grade(single, right).correct
    wrong = grade(single, (right + 1) % len(single.choices))
    assert not wrong.correct
    # the wrong choice's explanation and the right one's are both shown
    assert {text for text, _, _ in wrong.feedback} == {
        single.choices[(right + 1) % len(single.choices)].text, single.choices[right].text}
    multiple = next(q for q in quiz.questions if q.kind == "multiple")
    assert grade(multiple, sorted(multiple.correct_indices)).correct
    assert not grade(multiple, sorted(multiple.correct_indices)[:1]).correct


@pytest.mark.parametrize("answer,message", [(None, "choose an answer"), ([], "choose"),
                                            (99, "does not exist"), ([0, 1], "exactly one")])
def test_grade_raises_on_bad_input(answer, message):
    single = load_quiz("01_pipeline_trace").questions[0]
    with pytest.raises(QuizError, match=message):
        grade(single, answer)


def test_widget_headless_wrong_then_right_updates_score():
    widget = QuizWidget(load_quiz("01_pipeline_trace"))
    question = widget.quiz.questions[0]
    radio = widget.selectors[0]
    widget.buttons[0].click()  # nothing chosen: a message, not an exception
    assert "choose an answer" in widget.feedback[0].value and widget.score.correct == 0
    wrong = next(c for c in question.choices if not c.correct)
    radio.value = wrong.text
    widget.buttons[0].click()
    assert "Not quite" in widget.feedback[0].value
    assert wrong.explanation.split(":")[0] in widget.feedback[0].value
    radio.value = next(c.text for c in question.choices if c.correct)
    widget.buttons[0].click()
    assert "Correct" in widget.feedback[0].value
    assert widget.score.correct == 1 and "1 / 4" in widget.score_label.value
    boxes = widget.selectors[1]  # the multiple-choice question
    for box, choice in zip(boxes, widget.quiz.questions[1].choices):
        box.value = choice.correct
    widget.buttons[1].click()
    assert widget.score.correct == 2


def test_fallback_html_has_answers_in_a_collapsed_block():
    quiz = load_quiz("02_prediction_trace")
    page = quiz_fallback_html(quiz)
    assert page.startswith("<details>") and page.endswith("</details>")
    for q in quiz.questions:
        assert all(c.explanation.split("'")[0][:20] in page for c in q.choices)


def test_exercise_checks_pass_fail_and_not_answered():
    net = QNetwork(4, 2, (8, 8))
    n = sum(p.numel() for p in net.parameters())
    assert check_parameter_count(n, net).passed is True
    failed = check_parameter_count(n - 8 - 8 - 2, net)
    assert failed.passed is False and "biases" in failed.message and failed.hint
    assert check_parameter_count(None, net).passed is None
    qs = [np.array([0.1, 0.7]), np.array([2.0, -1.0])]
    assert check_greedy_policy(lambda q: int(np.argmax(q)), qs).passed
    assert not check_greedy_policy(lambda q: 0, [np.array([1.0, 0.0])]).passed  # constant
    assert not check_greedy_policy(lambda q: 1 / 0, qs).passed  # a learner's bug: a FAIL
    values = [1.0, 5.0, 3.0, 7.0]
    good = lambda v, w: [float(np.mean(v[max(0, i - w + 1): i + 1])) for i in range(len(v))]  # noqa
    assert check_moving_average(good, values, 2).passed
    assert not check_moving_average(lambda v, w: v, values, 2).passed
    assert "PASS" in check_moving_average(good, values, 2)._repr_html_()


def test_lesson_4_to_8_exercise_checks(tmp_path):
    from ckptlab.lab.exercises import (check_checklist, check_find_corrupt, check_keep_last,
                                   check_lost_steps, check_omission)

    assert check_lost_steps(1200, 1500, 7200).passed
    assert not check_lost_steps(7200, 1500, 7200).passed
    assert check_lost_steps(None, 1500, 7200).passed is None
    assert not check_lost_steps(1200.7, 1500, 7200).passed
    choices = ["counters", "rng", "env"]
    assert check_omission("env", "env", choices).passed
    assert not check_omission("rng", "env", choices).passed
    assert not check_omission("weights!", "env", choices).passed
    assert check_keep_last(lambda s, n: sorted(s)[-n:]).passed
    assert not check_keep_last(lambda s, n: s[:n]).passed
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    import hashlib

    for name in ("tensors.safetensors", "state.json"):
        (ckpt / name).write_bytes(name.encode() * 10)
    files = {n: {"sha256": hashlib.sha256((ckpt / n).read_bytes()).hexdigest()}
             for n in ("tensors.safetensors", "state.json")}
    (ckpt / "manifest.json").write_text(json.dumps({"files": files}))

    def finder(path):
        manifest = json.loads((path / "manifest.json").read_text())
        return next((n for n, e in manifest["files"].items()
                     if hashlib.sha256((path / n).read_bytes()).hexdigest() != e["sha256"]),
                    None)

    assert check_find_corrupt(finder, ckpt).passed

    assert not check_find_corrupt(lambda p: "state.json", ckpt).passed
    assert check_find_corrupt(lambda p: (_ for _ in ()).throw(NotImplementedError()),
                              ckpt).passed is None
    names = ["agent", "replay_buffer", "exploration", "progress", "env", "rng", "metrics"]
    assert check_checklist(set(names), names).passed
    assert not check_checklist({"agent"}, names).passed
    assert not check_checklist({"agent", "model"}, names).passed
