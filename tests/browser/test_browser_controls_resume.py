"""Lessons 4 and 5 in a real browser (JupyterLab + headless Chromium): run all, then move every
live control (pressing the button of those that train) and check that the output it drives
visibly changed and that no error or traceback appeared anywhere.

Needs Debian's Chromium at /usr/bin/chromium; skips, saying so, where there is none.
"""

from __future__ import annotations

import pytest
from browser_support import ARTIFACTS, assert_no_errors, launch, open_and_run_all, requires_chromium
from controls_resume_flows import exercise_lesson4, exercise_lesson5

pytestmark = requires_chromium


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
            open_and_run_all(page, jupyter_lab, lesson, timeout_ms=300_000)
            assert_no_errors(page)
            exercise(page)
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / f"browser-controls-{lesson[:2]}.png"))
        finally:
            browser.close()
