"""docs/instructor-guide.md names, for every lesson 1-12, the misconceptions it targets, each
with the question that exposes it: a question of that lesson's quiz bank, cited as
`NN_lesson.json: question-id`, or a question to ask the room and the control or run that
answers it. Every cited bank and question id exists (issue 25)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ckptlab.lab.quiz import QUIZ_DIR, load_quiz

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "instructor-guide.md"
LESSONS = range(1, 13)

CITATION = re.compile(r"`(\d\d_[A-Za-z0-9_]+)\.json: ([A-Za-z0-9_-]+)`")
LESSON_HEADING = re.compile(r"^### (\d+) ", re.MULTILINE)


def lesson_sections(text: str) -> dict[int, str]:
    """Each ``### N title`` section of the guide's lesson-by-lesson part, by lesson number."""
    part = text.split("## Lesson by lesson", 1)[1].split("\n## ", 1)[0]
    heads = list(LESSON_HEADING.finditer(part))
    return {int(h.group(1)): part[h.start():(heads[i + 1].start() if i + 1 < len(heads)
                                              else len(part))]
            for i, h in enumerate(heads)}


def misconceptions(section: str) -> list[str]:
    """The section's ``- Misconception: ...`` bullets, each with its continuation lines."""
    return [m.group(0) for m in re.finditer(r"^- Misconception:.*(?:\n  .*)*", section,
                                            re.MULTILINE)]


def bank_of(lesson: int) -> str:
    (path,) = QUIZ_DIR.glob(f"{lesson:02d}_*.json")
    return path.stem


def unknown_citations(text: str) -> list[str]:
    """The ``bank.json: id`` citations in ``text`` whose bank or question id does not exist."""
    wrong = []
    for bank, qid in CITATION.findall(text):
        if not (QUIZ_DIR / f"{bank}.json").is_file():
            wrong.append(f"{bank}.json (no such bank)")
        elif qid not in {q.id for q in load_quiz(bank).questions}:
            wrong.append(f"{bank}.json: {qid} (no such question)")
    return wrong


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text("utf-8")


def test_every_lesson_lists_misconceptions(guide):
    sections = lesson_sections(guide)
    missing = [n for n in LESSONS if not misconceptions(sections.get(n, ""))]
    assert not missing, f"lessons without a misconceptions entry in the guide: {missing}"


def test_every_misconception_names_the_question_that_exposes_it(guide):
    unexposed = []
    for n, section in lesson_sections(guide).items():
        own_bank = bank_of(n)
        for bullet in misconceptions(section):
            cited = {bank for bank, _ in CITATION.findall(bullet)}
            in_the_room = "Ask the room:" in bullet and "Answered by:" in bullet
            if own_bank not in cited and not in_the_room:
                unexposed.append(f"lesson {n}: {' '.join(bullet.split())[:90]}")
    assert not unexposed, ("each misconception needs a question of its lesson's bank "
                           "(`NN_lesson.json: id`) or 'Ask the room: ...' with 'Answered by: "
                           f"...': {unexposed}")


def test_every_cited_question_exists(guide):
    assert len(CITATION.findall(guide)) >= len(LESSONS)
    assert not unknown_citations(guide)


def test_a_wrong_citation_is_caught():
    assert unknown_citations("`06_retention_strategies.json: keep-last-risk`") == []
    assert unknown_citations("`06_retention_strategies.json: keep-last-riks`") == [
        "06_retention_strategies.json: keep-last-riks (no such question)"]
    assert unknown_citations("`99_no_lesson.json: keep-last-risk`") == [
        "99_no_lesson.json (no such bank)"]
