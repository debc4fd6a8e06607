"""Lesson 10's live controls in a real browser: JupyterLab + headless Chromium.

Run All, then move each control and check that the view it drives is redrawn (a new image,
different from the default one rendered above the controls) and that no error appeared.
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

LESSON = "10_checkpointing_in_practice.ipynb"

pytestmark = requires_chromium


def _live_image(page, index: int) -> str:
    """The ``src`` of the image in the ``index``-th live output area (after a control moved)."""
    from playwright.sync_api import expect

    live = page.locator(".widget-output").nth(index).locator("img")
    expect(live.first).to_be_visible(timeout=60_000)
    return live.first.get_attribute("src")


def test_lesson_10_controls_redraw_in_a_real_browser(jupyter_lab):
    from playwright.sync_api import expect, sync_playwright

    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            open_and_run_all(page, jupyter_lab, LESSON, timeout_ms=300_000)
            expect(page.get_by_text("Key insight")).to_be_visible(timeout=60_000)
            assert_no_errors(page)
            shown = page.locator(".jp-OutputArea-output img").evaluate_all(
                "imgs => imgs.map(i => i.getAttribute('src'))")

            # 1. The checkpoint picker: the baseline's policy is loaded and played.
            picker = page.locator(".widget-dropdown select").first
            picker.scroll_into_view_if_needed()
            picker.select_option(label="step_00000000")
            # The live area starts with the default's figure: wait for the new one's text
            # (the kernel may still be running the cells below) before reading its image.
            expect(page.locator(".widget-output").nth(0)).to_contain_text(
                "step_00000000", timeout=120_000)
            played = _live_image(page, 0)
            assert played not in shown, "the picker did not redraw its view"

            # 2. How often to save: a new save cost redraws the curve and the advice.
            readout = page.locator(".widget-readout").nth(1)  # 0: episodes, 1: save cost
            readout.scroll_into_view_if_needed()
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("100")  # 10 ** 2: a value the log slider can show exactly
            page.keyboard.press("Enter")
            expect(page.locator(".widget-output").nth(1)).to_contain_text(
                "Saves costing 100 s", timeout=60_000)
            curve = _live_image(page, 1)
            assert curve not in shown and curve != played
            assert_no_errors(page)
            page.screenshot(path=str(ARTIFACTS / "browser-lesson10-controls.png"))
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-lesson10-last.png"), full_page=False)
            browser.close()
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before
