"""Every prose question of the real banks (not only a made-up one) is graded by its ideas
(issue 24): its own model answer passes, and no single phrasing - one keyword - passes alone
where the question needs two ideas or more."""

from __future__ import annotations

import pytest

from ckptlab.lab.quiz import QUIZ_DIR, grade_recall, ideas_found, load_quiz

IDEAS_QUESTIONS = [(bank.stem, q) for bank in sorted(QUIZ_DIR.glob("*.json"))
                   if bank.name != "schema.json" for q in load_quiz(bank).questions if q.ideas]


def test_the_banks_have_prose_questions_graded_by_ideas():
    assert len(IDEAS_QUESTIONS) >= 7
    assert all(len(q.ideas) >= 2 for _, q in IDEAS_QUESTIONS)


@pytest.mark.parametrize("question", [q for _, q in IDEAS_QUESTIONS],
                         ids=[f"{bank}:{q.id}" for bank, q in IDEAS_QUESTIONS])
def test_the_model_answer_passes_and_no_lone_keyword_does(question):
    result = grade_recall(question, question.model_answer)
    assert result.correct, (question.model_answer, ideas_found(question, question.model_answer))
    for idea in question.ideas:
        for phrasing in idea.phrasings:
            assert not grade_recall(question, phrasing).correct, phrasing
