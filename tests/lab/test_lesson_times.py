"""Every lesson states its time honestly: the minutes in its first cell match what its path takes
a learner (tools/lesson_times.py: reading, figures, controls, quiz, exercise), and the start page
and the instructor guide say the same."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from lesson_times import estimate, lessons, stated_minutes  # noqa: E402


def test_every_lesson_states_a_time_within_five_minutes_of_its_path():
    wrong = {}
    for path in lessons():
        stated, modelled = stated_minutes(path), estimate(path).minutes
        if stated is None or abs(stated - modelled) > 5:
            wrong[path.stem] = (stated, round(modelled, 1))
    assert not wrong, f"stated vs estimated minutes (python tools/lesson_times.py): {wrong}"


def test_the_start_page_and_the_guide_quote_the_lessons_times():
    start = (REPO / "notebooks" / "00_start_here.ipynb").read_text("utf-8")
    guide = (REPO / "docs" / "instructor-guide.md").read_text("utf-8")
    for path in lessons():
        minutes = stated_minutes(path)
        assert re.search(rf"{path.stem}\.ipynb\) \| [^|]+ \| {minutes} min \|", start), path.stem
        number = int(path.stem[:2])
        assert re.search(rf"^###.*\b{number} [^(\n]*\(about {minutes} min", guide,
                         re.MULTILINE), path.stem


def test_the_estimate_counts_what_a_learner_does():
    first = estimate(REPO / "notebooks" / "01_pipeline_trace.ipynb")
    assert first.exercise == 10 and first.controls >= 3 and first.quiz >= 5
    assert first.reading > 3 and first.looking > 1
    review = estimate(REPO / "notebooks" / "12_closing_review.ipynb")
    assert review.exercise == 10 and review.quiz > first.quiz   # a planning exercise
