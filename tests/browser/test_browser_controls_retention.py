"""Lessons 6, 7 and 8 in a real browser (JupyterLab + headless Chromium): run all, then move
every live control (pressing the button of the one that trains) and check that the output it
drives visibly changed and that no error or traceback appeared anywhere.

Needs Debian's Chromium at /usr/bin/chromium; skips, saying so, where there is none.
"""

from __future__ import annotations

import time

import pytest
from browser_support import ARTIFACTS, assert_no_errors, launch, open_and_run_all, requires_chromium

pytestmark = requires_chromium


def live_view(page, label: str):
    """The LiveView (controls, status, live output) holding the control labelled ``label``."""
    return page.locator(".widget-vbox").filter(
        has=page.locator("label.widget-label", has_text=label)).first


def live_output(view) -> str:
    return view.locator(".widget-output").first.inner_html()


def wait_for_change(view, before: str, what: str, timeout_s: float = 90) -> str:
    """Wait until the live output differs from ``before``, shows a picture or a table, and
    has stopped changing (a redraw replaces the output piece by piece)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = live_output(view)
        if now != before and ("<img" in now or "<table" in now) \
                and "running" not in view.inner_text():
            time.sleep(1.0)
            if live_output(view) == now:
                assert "ckptlab-error" not in now, f"{what}: {view.inner_text()[-600:]}"
                return now
            continue
        time.sleep(0.3)
    raise AssertionError(f"{what}: the output did not change within {timeout_s:.0f} s; "
                         f"the view shows: {view.inner_text()[-600:]}")


def slider(view, page, label: str):
    return view.locator(".widget-slider", has=page.locator("label", has_text=label)).first


def nudge(view, page, label: str, key: str, what: str, before: str) -> str:
    """Move the slider ``label`` one step with the keyboard and wait for the redraw."""
    handle = slider(view, page, label).locator(".noUi-handle").first
    handle.focus()
    handle.press(key)
    return wait_for_change(view, before, what)


def type_value(view, page, label: str, value: int, what: str, before: str) -> str:
    """Type ``value`` into a slider's readout (as a learner can) and wait for the redraw."""
    readout = slider(view, page, label).locator(".widget-readout").first
    readout.click()
    readout.press("Control+a")
    readout.type(str(value))
    readout.press("Enter")
    return wait_for_change(view, before, what)


def choose(view, label: str, option: str, what: str, before: str) -> str:
    view.locator(".widget-dropdown", has=view.page.locator("label", has_text=label)) \
        .locator("select").first.select_option(label=option)
    return wait_for_change(view, before, what)


def exercise_picker(page, episodes_label: str = "episodes") -> None:
    """The checkpoint picker: another checkpoint, then fewer episodes."""
    view = live_view(page, "checkpoint")
    view.scroll_into_view_if_needed()
    html = live_output(view)  # empty until the first move: the default is above the controls
    html = nudge(view, page, "checkpoint", "ArrowLeft", "checkpoint picker: step", html)
    nudge(view, page, episodes_label, "ArrowLeft", "checkpoint picker: episodes", html)


def exercise_lesson6(page) -> None:
    view = live_view(page, "disk budget (kB)")
    view.scroll_into_view_if_needed()
    html = live_output(view)
    html = choose(view, "rule", "hybrid", "builder: rule", html)
    html = nudge(view, page, "K (keep top)", "ArrowLeft", "builder: K", html)
    html = nudge(view, page, "smoothing", "ArrowRight", "builder: smoothing", html)
    html = nudge(view, page, "every (steps)", "ArrowRight", "builder: every", html)
    html = choose(view, "rule", "milestones + last N", "builder: rule again", html)
    html = nudge(view, page, "N (keep last)", "ArrowRight", "builder: N", html)
    html = type_value(view, page, "disk budget (kB)", 3000, "builder: disk budget", html)
    assert "of a 3,000 kB budget" in html, view.inner_text()[-800:]
    html = nudge(view, page, "step t", "ArrowLeft", "builder: step scrubber", html)
    step = slider(view, page, "step t").locator(".widget-readout").first
    at = step.inner_text()
    view.locator(".widget-play button").first.click()  # Play: steps on to the end
    html = wait_for_change(view, html, "builder: Play")
    assert step.inner_text() != at, "Play did not move the step slider"
    exercise_picker(page)


def option(fault: str) -> str:
    """The fault picker's label for ``fault`` (as lesson 7 builds it)."""
    from ckptlab.lab.fault_lab import FAULTS

    return f"{fault}: {FAULTS[fault]}"


def exercise_lesson7(page) -> None:
    view = live_view(page, "failure")
    view.scroll_into_view_if_needed()
    html = live_output(view)
    view.locator("select").first.select_option(label=option("kill:save:pointer-temp"))
    view.get_by_role("button", name="Stage it").click()
    html = wait_for_change(view, html, "fault picker: kill at pointer-temp", timeout_s=240)
    assert "kill:save:pointer-temp at step 1000" in html and "run resumed from" in html
    view.locator("select").first.select_option(label=option("corrupt:tensors"))
    view.get_by_role("button", name="Stage it").click()
    html = wait_for_change(view, html, "fault picker: corrupt tensors", timeout_s=240)
    assert "SHA-256 does not match" in html
    exercise_power_cut(page)


def exercise_power_cut(page) -> None:
    """Lesson 7's power-cut control: the crash point, the persistence model and the save."""
    from ckptlab.lab.power_cut import FAULTS, MODEL_LABELS

    view = live_view(page, "cut after call")
    view.scroll_into_view_if_needed()
    html = live_output(view)
    html = nudge(view, page, "cut after call", "ArrowRight", "power cut: crash point", html)
    html = choose(view, "persistence", MODEL_LABELS["adversarial"], "power cut: model", html)
    html = choose(view, "the save", FAULTS["no-tensor-fsync"], "power cut: the save", html)
    assert "break an invariant" in html and "persistence model" in html


@pytest.mark.parametrize("lesson, exercise", [
    ("06_retention_strategies.ipynb", exercise_lesson6),
    ("07_failure_modes.ipynb", exercise_lesson7),
    ("08_review.ipynb", exercise_picker),
], ids=["lesson06", "lesson07", "lesson08"])
def test_every_control_changes_its_output_without_errors(jupyter_lab, lesson, exercise):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            open_and_run_all(page, jupyter_lab, lesson, timeout_ms=400_000)
            assert_no_errors(page)
            exercise(page)
            assert_no_errors(page)
        finally:
            page.screenshot(path=str(ARTIFACTS / f"browser-controls-{lesson[:2]}.png"),
                            full_page=True)
            browser.close()
