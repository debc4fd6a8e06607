"""Issue 24 in a real browser (JupyterLab + headless Chromium): a learner predicts before a run
and the run scores the prediction; and answers recall questions in their own words.

* Lesson 4: the control asks its questions before any outcome is on the page; the learner picks
  a kill step and an interval, answers "from which step will it resume?" and "how will it end?",
  presses *Kill & resume*, and the real run scores both predictions beside its figure.
* Lesson 12 (the closing review): a prose answer reduced to one keyword is told how many of the
  needed ideas it has, without the answer; a correct sentence in other words than the model
  answer is graded right; a self-checked answer is compared with the model answer and marked by
  the learner, and that mark is counted apart from the graded score.

Needs Debian's Chromium at /usr/bin/chromium; skips, saying so, where there is none.
"""

from __future__ import annotations

from browser_support import ARTIFACTS, assert_no_errors, launch, open_and_run_all, requires_chromium
from controls_resume_flows import TRAINING_TIMEOUT_MS, live_view, set_slider_readout

pytestmark = requires_chromium


def test_a_prediction_is_scored_by_the_real_run_and_prose_recall_is_graded_fairly(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    # The kernel answers every click; on a loaded 2-core machine that can take seconds.
    expect.set_options(timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            open_and_run_all(page, jupyter_lab, "04_interrupt_and_resume.ipynb",
                             timeout_ms=300_000)
            assert_no_errors(page)
            view = live_view(page, "Kill & resume")
            view.scroll_into_view_if_needed()
            # Live, the questions come first and no outcome of the default run is shown.
            expect(view).to_contain_text("Predict, then run.")
            expect(page.get_by_text("What the run answered")).to_have_count(0)
            expect(view.locator(".widget-output").first).not_to_contain_text("killed after")
            set_slider_readout(view, 3_500)
            view.locator("select").first.select_option(label="500")
            expect(view).to_contain_text("killed after step 3500. From which step")
            view.get_by_text("From step 3500", exact=True).click()
            view.get_by_text("Identical, bit for bit", exact=True).click()
            view.get_by_role("button", name="Kill & resume").click()
            verdict = view.locator(".ckptlab-predict-verdict")
            expect(verdict).to_contain_text("The run: From step 3500",
                                            timeout=TRAINING_TIMEOUT_MS)
            expect(verdict).not_to_contain_text("not this time")
            expect(view).to_contain_text("Predictions: 2 of 2 right at the first try")
            expect(view.locator(".widget-output").first).to_contain_text(
                "resumed from the checkpoint at step 3500")
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / "browser-predict-lesson4.png"))

            open_and_run_all(page, jupyter_lab, "12_closing_review.ipynb")
            assert_no_errors(page)
            quiz = page.locator(".widget-vbox", has_text="Closing review: the whole path").first
            prose = quiz.locator(".widget-vbox", has_text="why does ckptlab fsync").last
            prose.scroll_into_view_if_needed()
            prose.locator("textarea").fill("durable")
            prose.get_by_role("button", name="Check").click()
            expect(prose).to_contain_text("Your answer has 1 of the 2 ideas")
            expect(prose).not_to_contain_text("Model answer")           # not given away
            prose.locator("textarea").fill(
                "So the bytes are really stored on the disk, not just cached, before the "
                "directory is renamed and the checkpoint becomes visible.")
            prose.get_by_role("button", name="Check").click()
            expect(prose).to_contain_text("Correct.")
            expect(quiz).to_contain_text("Score: first try 0/")          # the first try stays

            own = quiz.locator(".widget-vbox", has_text="how would you convince").last
            own.scroll_into_view_if_needed()
            own.locator("textarea").fill(
                "Kill it with SIGKILL, restart it, and compare every value of the final state "
                "with an uninterrupted run.")
            own.get_by_role("button", name="Compare with the model answer").click()
            expect(own).to_contain_text("Model answer")
            own.get_by_role("button", name="I had it").click()
            expect(quiz).to_contain_text("self-checked: 1 of 1 marked right by you")
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / "browser-recall-lesson12.png"))
        finally:
            browser.close()
