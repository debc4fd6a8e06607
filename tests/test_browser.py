"""A learner's view, in a real browser: JupyterLab + headless Chromium driven by playwright.

Opens lesson 1 in JupyterLab (served on loopback from a temporary copy of the notebooks, so
nothing is written into the repository), runs all cells, checks that the plots render as
images, answers the quiz in the page - a wrong choice shows its explanation, the right one shows
"Correct" and the score updates - and saves a screenshot to ``test-artifacts/``.

Needs Debian's Chromium at /usr/bin/chromium (``.ci/run`` installs it); skips, saying so,
where there is none.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CKPTLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CKPTLAB_ARTIFACTS", REPO / "test-artifacts"))
LESSON = "01_pipeline_trace.ipynb"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)"
           " or set CKPTLAB_CHROMIUM to a Chromium binary to run the browser test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on loopback, rooted at a temporary copy of the notebooks."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), "ckptlab-browser-test"
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(base / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start:\n{(base / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, token, root
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_lesson_runs_renders_plots_and_quiz_works_in_a_real_browser(lab):
    from playwright.sync_api import expect, sync_playwright

    from ckptlab.lab.quiz import load_quiz

    url, token, root = lab
    questions = len(load_quiz(LESSON.removesuffix(".ipynb")).questions)
    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/{LESSON}?token={token}")
            # The toolbar says idle too early; the status bar's kernel text is reliable.
            idle = page.get_by_text("Python 3 (ipykernel) | Idle")
            expect(idle).to_be_visible(timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            # The quiz is near the end: once it is there, everything above has run.
            quiz = page.locator(".widget-vbox", has_text="Quiz: the checkpoint pipeline").first
            expect(quiz).to_be_visible(timeout=180_000)
            expect(page.get_by_text("Key insight")).to_be_visible(timeout=60_000)
            expect(idle).to_be_visible(timeout=60_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/"
                                  "vnd.jupyter.stderr']", has_text="Error")
            assert errors.count() == 0, errors.first.inner_text()

            images = page.locator(".jp-OutputArea-output img")
            assert images.count() >= 4, f"only {images.count()} plots rendered"
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            assert all(w > 100 for w in widths), widths

            first = quiz.locator(".widget-radio-box").first
            check = quiz.get_by_role("button", name="Check").first
            feedback = quiz.locator(".widget-html-content", has_text="Not quite")
            first.get_by_text("To increase the size of the training data").click()
            check.click()
            expect(feedback.first).to_be_visible(timeout=15_000)
            expect(quiz).to_contain_text("adds no new experience")
            expect(quiz).to_contain_text(f"Score: 0 / {questions}")

            first.get_by_text("To save progress and avoid losing work").click()
            check.click()
            expect(quiz).to_contain_text("Correct.", timeout=15_000)
            expect(quiz).to_contain_text(f"Score: 1 / {questions}")
            quiz.scroll_into_view_if_needed()
            shot = ARTIFACTS / "browser-lesson1-quiz.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    # JupyterLab worked on the temporary copy only.
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before
