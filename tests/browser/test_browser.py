"""A learner's view, in a real browser: JupyterLab + headless Chromium driven by playwright.

Opens lesson 1 in JupyterLab (served on loopback from a temporary copy of the notebooks, so
nothing is written into the repository), runs all cells, checks that the plots render as
images, answers the quiz in the page - a wrong choice first: its explanation shows, the answer does
not; then the right one: "Correct", and the score keeps the first try ("first try 0/5 · now
1/5"); then a typed recall answer in other words than the bank's ("Adam's state" for "the
optimizer") - and saves a screenshot to ``test-artifacts/``. No static
answers block shows under the live widget.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/run`` installs it); skips, saying so,
where there is none.
"""

from __future__ import annotations

from browser_support import (
    ARTIFACTS,
    REPO,
    assert_no_errors,
    launch,
    open_and_run_all,
    requires_chromium,
)

LESSON = "01_pipeline_trace.ipynb"

pytestmark = requires_chromium


def test_lesson_runs_renders_plots_and_quiz_works_in_a_real_browser(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    from ckptlab.lab.quiz import load_quiz

    questions = sum(q.scored for q in load_quiz(LESSON.removesuffix(".ipynb")).questions)
    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            open_and_run_all(page, jupyter_lab, LESSON)
            quiz = page.locator(".widget-vbox", has_text="Quiz: the checkpoint pipeline").first
            expect(quiz).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Key insight")).to_be_visible(timeout=60_000)
            assert_no_errors(page)

            images = page.locator(".jp-OutputArea-output img")
            assert images.count() >= 4, f"only {images.count()} plots rendered"
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert all(w > 100 for w in widths), widths

            # In a live kernel the widget replaces the static view: no answers block under it.
            expect(page.get_by_text("answers and explanations")).to_have_count(0)
            expect(quiz).to_contain_text("choice order #")

            first = quiz.locator(".widget-radio-box").first
            check = quiz.get_by_role("button", name="Check").first
            feedback = quiz.locator(".widget-html-content", has_text="Not quite")
            first.get_by_text("A larger replay buffer for the rest of the run").click()
            check.click()
            expect(feedback.first).to_be_visible(timeout=15_000)
            expect(quiz).to_contain_text("it adds no transitions")  # why that choice is wrong
            # ...without giving the answer away on a first attempt
            expect(feedback.first).not_to_contain_text("Training that continues from step 35,000")
            expect(quiz).to_contain_text(f"Score: first try 0/{questions} · now 0/{questions}")

            first.get_by_text("Training that continues from step 35,000 exactly").click()
            check.click()
            expect(quiz).to_contain_text("Correct.", timeout=15_000)
            # the score keeps the first try: right now, but wrong at first
            expect(quiz).to_contain_text(f"Score: first try 0/{questions} · now 1/{questions}")

            # a recall question, typed in the learner's words and auto-checked, right at once
            recall = quiz.locator(".widget-vbox", has_text="leave out? (its name)").last
            recall.locator("input").fill("Adam's state")
            recall.get_by_role("button", name="Check").click()
            expect(recall).to_contain_text("Correct.", timeout=15_000)
            expect(quiz).to_contain_text(f"Score: first try 1/{questions} · now 2/{questions}")
            quiz.scroll_into_view_if_needed()
            shot = ARTIFACTS / "browser-lesson1-quiz.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    # JupyterLab worked on the temporary copy only.
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before
