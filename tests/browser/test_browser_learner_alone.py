"""A learner alone, in JupyterLab and headless Chromium: in lesson 1, the stage stepper is moved
with the keyboard and its figure is replaced in place (one figure, its caption as alt text);
a wrong quiz answer's feedback appears in an ARIA live region; and the start page's progress map,
open in another tab, updates by itself to show the missed question, linked to its section.

Runs its own JupyterLab with its own temporary progress file, so other browser tests that answer
quizzes cannot change what this one sees.
"""

from __future__ import annotations

import os
import re

import pytest
from browser_support import (
    ARTIFACTS,
    assert_no_errors,
    launch,
    open_and_run_all,
    requires_chromium,
    start_lab,
    stop_kernels,
)

pytestmark = requires_chromium
LESSON = "01_pipeline_trace"


@pytest.fixture(scope="module")
def own_lab(tmp_path_factory):
    progress = tmp_path_factory.mktemp("learner") / "progress.json"
    saved = {k: os.environ.get(k) for k in ("CKPTLAB_PROGRESS_FILE", "CKPTLAB_PROGRESS")}
    os.environ["CKPTLAB_PROGRESS_FILE"] = str(progress)
    os.environ.pop("CKPTLAB_PROGRESS", None)
    lab = start_lab(tmp_path_factory)
    try:
        yield next(lab), progress
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        lab.close()


def _wrong_choice(question: int = 0) -> tuple[str, str]:
    """The first question's prompt and a wrong choice as the kernel shows it (seed 0)."""
    from ckptlab.lab.quiz import QuizWidget, load_quiz

    widget = QuizWidget(load_quiz(LESSON), seed=int(os.environ.get("CKPTLAB_QUIZ_SEED", "0")))
    q = widget.quiz.questions[question]
    wrong = next(p for p in range(len(q.choices)) if p not in widget.correct_positions(question))
    return q.prompt, q.choices[widget.orders[question][wrong]].text


def test_a_learner_alone_moves_a_control_answers_and_sees_the_map_update(own_lab):
    from playwright.sync_api import expect, sync_playwright

    lab, progress = own_lab
    prompt, wrong = _wrong_choice()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        start, lesson = context.new_page(), context.new_page()
        try:
            # The start page, open beside the lesson: nothing recorded yet.
            open_and_run_all(start, lab, "00_start_here.ipynb")
            progress_map = start.locator(".ckptlab-progress").filter(has_text="Your progress")
            expect(progress_map.first).to_contain_text("Nothing recorded yet", timeout=60_000)

            open_and_run_all(lesson, lab, f"{LESSON}.ipynb")
            expect(lesson.get_by_text("Key insight")).to_be_visible(timeout=60_000)
            assert_no_errors(lesson)

            # One figure per control: the stepper's cell holds one figure, before and after a
            # move made with the keyboard alone.
            handle = lesson.get_by_role("slider", name="stage", exact=True)
            cell = lesson.locator(".jp-CodeCell").filter(has=handle)
            images = cell.locator("img")
            expect(images).to_have_count(1)
            before = images.first.get_attribute("src")
            assert "stage 4" in images.first.get_attribute("alt")
            handle.focus()
            assert handle.evaluate("e => e.tabIndex") >= 0
            lesson.keyboard.press("ArrowLeft")
            expect(cell.locator("img").first).to_have_attribute(
                "alt", re.compile("stage 3, checkpoint save"), timeout=60_000)
            expect(cell.locator("img")).to_have_count(1)
            assert cell.locator("img").first.get_attribute("src") != before
            caption = cell.locator("figcaption").first.inner_text()
            assert caption == cell.locator("img").first.get_attribute("alt")

            # A wrong first answer: the feedback is announced from a live region that was there
            # before it.
            quiz = lesson.locator(".widget-vbox").filter(has_text=prompt).last
            region = quiz.locator("[aria-live='polite']").first
            expect(region).to_be_attached(timeout=30_000)
            quiz.get_by_text(wrong, exact=True).click()
            quiz.get_by_role("button", name="Check").first.click()
            expect(region).to_contain_text("Not quite", timeout=30_000)
            assert region.get_attribute("role") == "status"

            # The start page's map shows it by itself: started, 0 right at the first try, and
            # the missed question to revisit, linked to its lesson.
            expect(progress_map.first).to_contain_text("To revisit", timeout=30_000)
            expect(progress_map.first).to_contain_text(prompt)
            row = progress_map.first.locator("tr").filter(has_text="Lesson 1:")
            expect(row).to_contain_text("started")
            link = progress_map.first.locator(f"a[href^='{LESSON}.ipynb#']").first
            expect(link).to_be_visible()
            start.screenshot(path=str(ARTIFACTS / "browser-progress-map.png"))
            assert '"first_try": false' in progress.read_text()
        finally:
            browser.close()
            stop_kernels(lab)
