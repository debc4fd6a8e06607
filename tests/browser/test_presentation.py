"""Presentation mode (`make present`): Voilà serves lessons 4 and 5 on loopback as live pages
with the code hidden; in headless Chromium every control is moved (the button pressed for those
that train) and the output it drives must visibly change, with no error on the page.

Needs Debian's Chromium at /usr/bin/chromium and Voilà (requirements.txt); skips, saying so,
where either is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from browser_support import ARTIFACTS, REPO, _free_port, _stop, launch, requires_chromium
from controls_resume_flows import exercise_lesson4, exercise_lesson5

pytestmark = [requires_chromium, pytest.mark.skipif(
    importlib.util.find_spec("voila") is None,
    reason="Voilà is not installed: pip install -r requirements.txt")]


def voila_command(root, port: int) -> list[str]:
    """What `make present` runs (see the Makefile), on a given port and folder."""
    return [sys.executable, "-m", "voila", str(root), "--no-browser", "--Voila.ip=127.0.0.1",
            f"--port={port}"]


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    """Voilà on loopback, serving a temporary copy of the notebooks."""
    base = tmp_path_factory.mktemp("voila")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port = _free_port()
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1"}
    log = open(base / "voila.log", "w")
    server = subprocess.Popen(voila_command(root, port), stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"Voilà did not start:\n{(base / 'voila.log').read_text()[-3000:]}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        _stop(server, log)
        print((base / "voila.log").read_text()[-2000:])


def test_the_make_target_runs_the_presentation_launcher():
    # tools/present.py builds the curated tree and runs Voila on loopback with pre-run kernels
    # (tests/lab/test_present_tree.py checks its command; tests/browser/ runs it).
    makefile = (REPO / "Makefile").read_text()
    assert "present: setup" in makefile and "tools/present.py $(LESSON)" in makefile
    assert "--Voila.ip=127.0.0.1" in (REPO / "tools" / "present.py").read_text()


@pytest.mark.parametrize("lesson, exercise", [
    ("04_interrupt_and_resume.ipynb", exercise_lesson4),
    ("05_what_goes_in_a_checkpoint.ipynb", exercise_lesson5),
], ids=["lesson04", "lesson05"])
def test_a_presented_lesson_hides_code_and_its_controls_answer(voila, lesson, exercise):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{voila}/voila/render/{lesson}", timeout=300_000)
            # Voilà shows the page once every cell has run
            expect(page.get_by_text("Key insight")).to_be_visible(timeout=300_000)
            assert page.locator(".jp-InputArea-editor:visible, .CodeMirror:visible, "
                                ".cm-editor:visible").count() == 0, "code is shown"
            assert "import " not in page.inner_text("body")
            # A predicting control (lesson 4's Kill & resume) draws its figure only once the
            # learner has predicted and run it (the exercise below does); a live view draws its
            # default inside its widget, which renders after the page: wait for one.
            expect(page.locator(".jp-OutputArea-output img").first).to_be_visible(
                timeout=60_000)
            exercise(page)
            body = page.inner_text("body")
            assert "Traceback" not in body and page.locator(".ckptlab-error").count() == 0
            page.screenshot(path=str(ARTIFACTS / f"presentation-{lesson[:2]}.png"),
                            full_page=False)
        finally:
            browser.close()
