"""Moving lesson 4's and 5's live controls in a real page (JupyterLab or Voilà: both render the
same ipywidgets), asserting each time that the output it drives visibly changed and that no
error appeared. Used by test_browser_controls_resume.py and test_presentation.py."""

from __future__ import annotations

import time

# Controls that train answer in about 10 s on an idle 2-core machine; the shared test machine
# may be much slower, so the waits are generous.
TRAINING_TIMEOUT_MS = 180_000


def live_view(page, button: str):
    """The innermost widget box holding a live view whose controls include ``button``."""
    return page.locator(".widget-vbox").filter(has=page.get_by_role("button", name=button,
                                                                    exact=True)).filter(
        has=page.locator(".widget-output")).last


def _output_html(view) -> str:
    return view.locator(".widget-output").first.inner_html()


def wait_for_change(view, before: str, timeout_ms: int = TRAINING_TIMEOUT_MS) -> str:
    """Wait until the live output differs from ``before`` and the view is not busy; return it.

    Fails on an error box, or when nothing changed in time.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        status = view.locator(".widget-html").first.inner_text()
        now = _output_html(view)
        text = view.locator(".widget-output").first.inner_text()
        if "running" not in status and now != before and text.strip():
            # The status and the output are separate widget models, and the page may draw the
            # status first: a cleared or half-drawn output must settle before it is read.
            time.sleep(1.0)
            if _output_html(view) != now:
                continue
            errors = view.locator(".ckptlab-error")
            assert errors.count() == 0, errors.first.inner_text()
            assert "Traceback" not in view.inner_text()
            return now
        time.sleep(0.5)
    raise AssertionError(f"the live output did not change within {timeout_ms / 1000:.0f} s; "
                         f"status: {view.locator('.widget-html').first.inner_text()!r}")


def set_slider_readout(view, value: int) -> None:
    """Type ``value`` into an IntSlider's editable readout (how a learner sets an exact step)."""
    readout = view.locator(".widget-readout").first
    readout.click()
    readout.press("Control+a")
    readout.type(str(value))
    readout.press("Enter")


def exercise_lesson4(page) -> None:
    """Kill & resume at another step and interval; move the save-interval chooser."""
    from playwright.sync_api import expect

    kill = live_view(page, "Kill & resume")
    expect(kill).to_be_visible(timeout=60_000)
    kill.scroll_into_view_if_needed()
    # the default render is ordinary output above the controls; the live area starts empty
    before = _output_html(kill)
    set_slider_readout(kill, 3_500)
    kill.locator("select").first.select_option(label="500")
    kill.get_by_role("button", name="Kill & resume").click()
    expect(kill.locator(".widget-output").first).to_contain_text(
        "killed after step 3500", timeout=TRAINING_TIMEOUT_MS)
    after = wait_for_change(kill, before)
    text = kill.locator(".widget-output").first.inner_text()
    assert "killed after step 3500" in text and "resumed from the checkpoint at step 3500" in text
    assert "max abs difference 0" in text and "<img" in after
    # and once more: a different kill gives a different picture
    set_slider_readout(kill, 2_750)
    kill.get_by_role("button", name="Kill & resume").click()
    # Wait for this run's own summary: the output can be read half-drawn otherwise.
    expect(kill.locator(".widget-output").first).to_contain_text(
        "killed after step 2750", timeout=TRAINING_TIMEOUT_MS)
    again = wait_for_change(kill, after)
    assert "killed after step 2750" in kill.locator(".widget-output").first.inner_text()
    assert again != after

    # the save-interval chooser answers at once, without a button
    trade = page.locator(".widget-vbox").filter(has=page.locator(".widget-output")).filter(
        has=page.locator(".widget-hslider")).filter(
        has_not=page.get_by_role("button", name="Kill & resume")).last
    trade.scroll_into_view_if_needed()
    before = _output_html(trade)
    handle = trade.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")  # 1000 -> 2000
    # the expected loss at 2000 steps
    expect(trade.locator(".widget-output").first).to_contain_text("999.5", timeout=60_000)
    after = wait_for_change(trade, before, timeout_ms=60_000)
    handle.press("ArrowLeft")
    handle.press("ArrowLeft")  # -> 500
    wait_for_change(trade, after, timeout_ms=60_000)
    deadline = time.monotonic() + 60
    while "249.5" not in trade.locator(".widget-output").first.inner_text():
        assert time.monotonic() < deadline, "the chooser did not reach 500"
        time.sleep(0.5)


def exercise_lesson5(page) -> None:
    """Resume with other pieces ticked, then as a mystery run."""
    from playwright.sync_api import expect

    view = live_view(page, "Resume")
    expect(view).to_be_visible(timeout=60_000)
    view.scroll_into_view_if_needed()
    before = _output_html(view)
    # default: all but the optimizer
    view.get_by_role("checkbox", name="optimizer", exact=True).check()
    view.get_by_role("checkbox", name="env", exact=True).uncheck()
    output = view.locator(".widget-output").first
    view.get_by_role("button", name="Resume", exact=True).click()
    # Wait for this run's own summary: the output can change (a redraw) before the run starts.
    expect(output).to_contain_text(
        "restored: weights, optimizer, replay_buffer, counters, rng, metrics",
        timeout=TRAINING_TIMEOUT_MS)
    after = wait_for_change(view, before)
    view.get_by_role("button", name="mystery").click()
    expect(view.get_by_role("checkbox", name="env", exact=True)).to_be_hidden(timeout=10_000)
    view.get_by_role("button", name="Resume", exact=True).click()
    expect(output).to_contain_text("restored: (hidden)", timeout=TRAINING_TIMEOUT_MS)
    wait_for_change(view, after)
    text = output.inner_text()
    assert "env" not in text, text
