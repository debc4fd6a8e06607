"""Lessons 4 and 5 in a real browser (JupyterLab + headless Chromium): run all, then move every
live control (pressing the button of those that train) and check that the output it drives
visibly changed and that no error or traceback appeared anywhere.

Needs Debian's Chromium at /usr/bin/chromium; skips, saying so, where there is none.
"""

from __future__ import annotations

import pytest

from browser_support import ARTIFACTS, assert_no_errors, launch, requires_chromium
from controls_resume_flows import exercise_lesson4, exercise_lesson5

pytestmark = requires_chromium


def open_and_run_all_in_own_workspace(page, lab, notebook: str, timeout_ms: int = 300_000):
    """Like browser_support.open_and_run_all, but in a workspace of the notebook's own: the
    default workspace would also reopen the notebooks earlier tests left open, and one of
    them could be the tab "Run All Cells" applies to."""
    from playwright.sync_api import expect

    url, token, _ = lab
    page.goto(f"{url}/lab/workspaces/ckptlab-{notebook[:2]}/tree/{notebook}?token={token}")
    idle = page.get_by_text("Python 3 (ipykernel) | Idle")
    expect(idle).to_be_visible(timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    expect(page.get_by_text("Python 3 (ipykernel) | Busy")).to_be_visible(timeout=30_000)
    expect(idle).to_be_visible(timeout=timeout_ms)


@pytest.mark.parametrize("lesson, exercise", [
    ("04_interrupt_and_resume.ipynb", exercise_lesson4),
    ("05_what_goes_in_a_checkpoint.ipynb", exercise_lesson5),
], ids=["lesson04", "lesson05"])
def test_every_control_changes_its_output_without_errors(jupyter_lab, lesson, exercise):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            open_and_run_all_in_own_workspace(page, jupyter_lab, lesson)
            assert_no_errors(page)
            exercise(page)
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / f"browser-controls-{lesson[:2]}.png"))
        finally:
            browser.close()
