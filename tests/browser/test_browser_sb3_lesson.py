"""Lesson 11 (bring your own library) in a real browser: JupyterLab + headless Chromium.

Run All, then move its live control - where the Stable-Baselines3 run is killed and which
pieces the resume restores - and check that each *Kill & resume* redraws the view with that
run's own verdict, and that no error appeared anywhere.

Needs Debian's Chromium at /usr/bin/chromium; skips, saying so, where there is none.
"""

from __future__ import annotations

from browser_support import ARTIFACTS, assert_no_errors, launch, open_and_run_all, requires_chromium
from controls_resume_flows import (
    TRAINING_TIMEOUT_MS,
    _output_html,
    live_view,
    set_slider_readout,
    wait_for_change,
)

pytestmark = requires_chromium

LESSON = "11_bring_your_own_library.ipynb"


def test_lesson_11_kill_and_resume_control_redraws_in_a_real_browser(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            open_and_run_all(page, jupyter_lab, LESSON, timeout_ms=300_000)
            expect(page.get_by_text("Key insight")).to_be_visible(timeout=60_000)
            assert_no_errors(page)
            view = live_view(page, "Kill & resume")
            expect(view).to_be_visible(timeout=60_000)
            view.scroll_into_view_if_needed()
            output = view.locator(".widget-output").first
            expect(output).to_contain_text("all pieces: identical")   # the default
            before = _output_html(view)

            # Kill earlier, and resume without the random generators: another run.
            set_slider_readout(view, 1_600)
            view.get_by_role("checkbox", name="rng", exact=True).uncheck()
            view.get_by_role("button", name="Kill & resume", exact=True).click()
            expect(output).to_contain_text("without rng: another run",
                                           timeout=TRAINING_TIMEOUT_MS)
            after = wait_for_change(view, before)
            assert "killed at timestep 1600" in after and "<img" in after

            # The generators back, the episode buffer out: the policy stays exact, the logs not.
            view.get_by_role("checkbox", name="rng", exact=True).check()
            view.get_by_role("checkbox", name="episode_stats", exact=True).uncheck()
            view.get_by_role("button", name="Kill & resume", exact=True).click()
            expect(output).to_contain_text("the same policy, but other logged returns",
                                           timeout=TRAINING_TIMEOUT_MS)
            wait_for_change(view, after)
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / "browser-lesson11-control.png"))
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-lesson11-last.png"), full_page=False)
            browser.close()
