"""Presentation mode in a real browser: ``make present`` (tools/present.py) serves every lesson with
Voila, pre-run, in the presentation style; headless Chromium at 1280x720 opens each lesson, times
how long it takes to be usable (recorded in test-artifacts/presentation-ready.json; the figures
are in benchmarks/README.md), checks that it shows no code, operates one of its controls with the
keyboard alone and checks that the control's view changed in place - still one figure, no error.
The solutions are never listed nor served.

Slow by nature (every lesson runs once, in parallel, before the first page opens): about 6 to 10
minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from browser_support import ARTIFACTS, launch, requires_chromium

from benchmarks.presentation_ready import (
    free_port,
    lessons_served,
    open_lesson,
    start_presentation,
    stop,
    wait_until_preheated,
)

pytestmark = [requires_chromium, pytest.mark.skipif(
    importlib.util.find_spec("voila") is None,
    reason="Voilà is not installed: pip install -r requirements.txt")]

READY_LIMIT_S = 10.0   # the figure the issue asks for is ~3 s on an idle machine; the shared
                       # test machine gets a margin (the measured figure is recorded either way)


@dataclass(frozen=True)
class KeyboardUse:
    """How a learner uses one control of a lesson with the keyboard alone: reach the control
    with ARIA ``role`` and accessible name ``name``, press ``keys``, then - for controls that
    train - Tab to the ``button`` and press Enter."""

    role: str
    name: str
    keys: tuple[str, ...]
    button: str | None = None
    expect: str = ""               # text the redrawn view must then show
    timeout_s: float = 120
    figures: int | None = 1        # figures in the view after the change (None: not checked)
    quiz: bool = False             # the lesson's quiz: the feedback must land in a live region


KEYBOARD: dict[str, KeyboardUse] = {
    "01_pipeline_trace": KeyboardUse("slider", "stage", ("ArrowLeft",),
                                     expect="3. Checkpoint save"),
    "02_prediction_trace": KeyboardUse("slider", "epsilon", ("ArrowRight",),
                                       expect="epsilon 0.15"),
    "03_loss_curves": KeyboardUse("slider", "window (log)", ("ArrowLeft",),
                                  expect="over 20 updates"),
    "04_interrupt_and_resume": KeyboardUse("slider", "save every", ("ArrowLeft",),
                                           expect="saving every 500 steps"),
    "05_what_goes_in_a_checkpoint": KeyboardUse("checkbox", "optimizer", (" ",),
                                                button="Resume", expect="full checkpoint",
                                                timeout_s=240),
    "06_retention_strategies": KeyboardUse("combobox", "rule", ("ArrowDown",)),
    "07_failure_modes": KeyboardUse("combobox", "failure", ("ArrowDown",), button="Stage it",
                                    timeout_s=240, figures=None),
    "08_review": KeyboardUse("slider", "checkpoint", ("ArrowLeft",), figures=None),
    "09_when_one_machine_is_not_enough": KeyboardUse("combobox", "kill rank", ("ArrowUp",),
                                                     button="Kill and restart",
                                                     timeout_s=420, figures=None),
    "10_checkpointing_in_practice": KeyboardUse("combobox", "checkpoint", ("ArrowDown",)),
    "11_bring_your_own_library": KeyboardUse("", "", (), quiz=True, figures=None),
    "12_closing_review": KeyboardUse("", "", (), quiz=True, figures=None),
}


def chosen_lessons() -> list[str]:
    """The lessons served (CKPTLAB_TEST_PRESENT_ONLY="04 09" narrows them, to debug one)."""
    only = os.environ.get("CKPTLAB_TEST_PRESENT_ONLY", "").split()
    return [s for s in lessons_served() if not only or s[:2] in only]


@pytest.fixture(scope="module")
def presentation(tmp_path_factory):
    """The lessons pre-run by tools/present.py; yields the server's URL."""
    log = tmp_path_factory.mktemp("present") / "voila.log"
    port = free_port()
    only = os.environ.get("CKPTLAB_TEST_PRESENT_ONLY", "").split()
    server = start_presentation(port, only or None, log)
    try:
        warm = wait_until_preheated(server, len(chosen_lessons()), log)
        print(f"every lesson pre-run in {warm:.0f} s")
        yield f"http://127.0.0.1:{port}", warm
    finally:
        stop(server)
        print(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def timings():
    measured: dict[str, dict[str, float]] = {}
    yield measured
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "presentation-ready.json").write_text(json.dumps(measured, indent=1))


def test_solutions_are_never_listed_or_served(presentation, browser):
    url, _ = presentation
    page = browser.new_page()
    try:
        page.goto(f"{url}/voila/tree")
        page.get_by_text("01_pipeline_trace.ipynb").wait_for(timeout=30_000)
        listing = page.inner_text("body")
        assert "solutions" not in listing.lower()
        assert all(f"{stem}.ipynb" in listing for stem in lessons_served())
    finally:
        page.close()
    for path in ("voila/render/solutions.ipynb", "voila/files/solutions.ipynb",
                 "voila/render/../solutions.ipynb"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/{path}", timeout=30)
        assert refused.value.code in (403, 404)


def _live_view(page, role: str, name: str):
    """The control (ARIA ``role``, accessible ``name``) and the innermost widget box holding it
    and a live output area."""
    control = page.get_by_role(role, name=name, exact=True).first
    return control, page.locator(".widget-vbox").filter(has=control).filter(
        has=page.locator(".widget-output")).last


def _tab_to(page, name: str, limit: int = 40) -> None:
    """Press Tab until the focused element is the button called ``name``."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.innerText") \
                .strip() == name:
            return
    raise AssertionError(f"Tab never reached the {name!r} button")


def _use_quiz_by_keyboard(page) -> None:
    """Answer the quiz's first question with the keyboard; the verdict lands in a live region."""
    from playwright.sync_api import expect

    first = page.locator(".widget-radio-box input").first
    first.focus()
    page.keyboard.press("Space")
    _tab_to(page, "Check")
    page.keyboard.press("Enter")
    region = page.locator("[aria-live='polite']").filter(has_text="Correct.").or_(
        page.locator("[aria-live='polite']").filter(has_text="Not quite"))
    expect(region.first).to_be_visible(timeout=30_000)


@pytest.mark.parametrize("lesson", sorted(KEYBOARD))
def test_a_presented_lesson_is_ready_in_seconds_and_its_control_works_by_keyboard(
        presentation, browser, timings, lesson):

    url, _ = presentation
    if lesson not in chosen_lessons():
        pytest.skip(f"{lesson} is not served here")
    use = KEYBOARD[lesson]
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.set_default_timeout(60_000)
    try:
        timings[lesson] = open_lesson(page, url, lesson)
        assert timings[lesson]["ready_s"] < READY_LIMIT_S, timings[lesson]
        assert page.locator(".jp-InputArea-editor:visible, .cm-editor:visible").count() == 0, \
            "code is shown"
        if use.quiz:
            _use_quiz_by_keyboard(page)
            return
        control, view = _live_view(page, use.role, use.name)
        control.scroll_into_view_if_needed()
        assert control.evaluate("e => e.tabIndex") >= 0, "the control is not in the tab order"
        before = view.locator(".widget-output").first.inner_html()
        control.focus()   # where a learner's Tab presses arrive
        for key in use.keys:
            page.keyboard.press(key)
        if use.button:
            _tab_to(page, use.button)
            page.keyboard.press("Enter")
        deadline = time.monotonic() + use.timeout_s
        output = view.locator(".widget-output").first
        while True:
            now = output.inner_html()
            busy = "running" in view.inner_text()
            if now != before and not busy and use.expect in output.inner_text() + now:
                break
            assert time.monotonic() < deadline, (f"{lesson}: the view did not change within "
                                                 f"{use.timeout_s:.0f} s")
            page.wait_for_timeout(500)
        errors = view.locator(".ckptlab-error")
        assert errors.count() == 0, f"{lesson}: {errors.first.inner_text()}"
        if use.figures is not None:
            # One figure per control: the new view replaced the default in place.
            assert view.locator("img").count() == use.figures
        for image in view.locator("img").all():
            assert (image.get_attribute("alt") or "").strip(), "a figure without alt text"
        page.screenshot(path=str(ARTIFACTS / f"presentation-{lesson[:2]}.png"))
    finally:
        page.close()
