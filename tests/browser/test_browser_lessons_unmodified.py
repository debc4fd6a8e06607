"""A learner who only reads a lesson leaves the repository clean: in a real browser, open every
notebook in JupyterLab (started as ``make lab`` starts it), run its first cell, save it (what
autosave does) and close it; ``git status`` must then show nothing, and on the tested Python no
lesson may even be marked modified by opening it.

One extra notebook records another Python's version, as every lesson does for a learner on
another Python: opening it marks it modified, and the save must still write the same bytes
(the server hook of ``make lab``).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import uuid

import pytest
from browser_support import REPO, launch, requires_chromium, start_lab, stop_kernels

pytestmark = requires_chromium

ANOTHER_PYTHON = "another_python.ipynb"


def make_lab_arguments() -> list[str]:
    """The JupyterLab options of the Makefile's ``lab`` target that shape saving."""
    recipe = (REPO / "Makefile").read_text("utf-8").split("\nlab:", 1)[1].split("\n\n", 1)[0]
    hooks = re.findall(r"--ContentsManager\.pre_save_hook=\S+", recipe)
    assert hooks, "make lab starts JupyterLab without the hook that keeps lessons unmodified"
    return hooks


@pytest.fixture(scope="module")
def lab_as_make_lab_starts_it(tmp_path_factory):
    # window.jupyterapp lets the test open every notebook at once (their kernels start
    # together) and read each one's modified flag; everything else goes through the page.
    yield from start_lab(tmp_path_factory, extra_args=[*make_lab_arguments(),
                                                       "--LabApp.expose_app_in_browser=True"])


def git(root, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


# Every open notebook's path, whether its kernel is ready (idle, kernel info received) and
# whether its model is modified.
NOTEBOOK_STATES = """() => Array.from(window.jupyterapp.shell.widgets('main'))
    .filter(w => w.context && w.content && w.content.model && w.sessionContext)
    .map(w => ({path: w.context.path, dirty: w.context.model.dirty,
                ready: !!(w.sessionContext.session && w.sessionContext.session.kernel &&
                          w.sessionContext.session.kernel.status === 'idle' &&
                          w.content.model.getMetadata('language_info').version)}))"""


# Before the first cell runs in the notebook at ``path``: note when its kernel goes busy.
WATCH_KERNEL = """path => {
    const panel = Array.from(window.jupyterapp.shell.widgets('main'))
        .find(w => w.context && w.context.path === path);
    window.ckptlabBusy = false;
    panel.sessionContext.session.kernel.statusChanged.connect((kernel, status) => {
        if (status === 'busy') { window.ckptlabBusy = true; }
    });
}"""
# ...and that it ran: the kernel went busy and is idle again, the cell has its count back.
FIRST_CELL_RAN = """path => {
    const panel = Array.from(window.jupyterapp.shell.widgets('main'))
        .find(w => w.context && w.context.path === path);
    const cells = panel.content.model.cells;
    let first = null;
    for (let i = 0; i < cells.length && first === null; i++) {
        if (cells.get(i).type === 'code') { first = cells.get(i); }
    }
    return window.ckptlabBusy && panel.sessionContext.session.kernel.status === 'idle'
        && first.executionCount !== null;
}"""


def test_reading_every_lesson_in_jupyterlab_leaves_git_status_clean(lab_as_make_lab_starts_it):
    from playwright.sync_api import expect, sync_playwright

    url, token, root = lab_as_make_lab_starts_it
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    lesson = json.loads((root / "01_pipeline_trace.ipynb").read_text("utf-8"))
    lesson["metadata"]["language_info"]["version"] = "3.0.0"
    (root / ANOTHER_PYTHON).write_text(json.dumps(lesson, indent=1, sort_keys=True,
                                                  ensure_ascii=False) + "\n", "utf-8")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=learner", "-c", "user.email=learner@example.invalid",
        "commit", "-q", "-m", "as cloned")
    notebooks = sorted(p.name for p in root.glob("*.ipynb"))
    assert len(notebooks) >= 13

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/workspaces/w{uuid.uuid4().hex[:8]}?reset&token={token}")
            page.wait_for_function("window.jupyterapp !== undefined", timeout=90_000)
            page.evaluate("async () => { await window.jupyterapp.started; "
                          "await window.jupyterapp.restored; }")
            for name in notebooks:
                page.evaluate("async path => { await window.jupyterapp.commands.execute("
                              "'docmanager:open', {path}); }", name)
            page.wait_for_function(f"({NOTEBOOK_STATES})().filter(s => s.ready).length "
                                   f">= {len(notebooks)}", timeout=180_000, polling=500)
            page.wait_for_timeout(1_000)  # anything JupyterLab does once a kernel is ready
            dirty_on_open = {s["path"]: s["dirty"] for s in page.evaluate(NOTEBOOK_STATES)}
            assert sorted(dirty_on_open) == notebooks

            for name in notebooks:
                tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=name)
                tab.click()
                notebook = page.locator("#jp-main-dock-panel .jp-NotebookPanel:visible")
                code = notebook.locator(".jp-CodeCell")
                if code.count():
                    page.evaluate(WATCH_KERNEL, name)
                    code.first.locator(".jp-InputArea-editor").click()
                    page.keyboard.press("Control+Enter")
                    page.wait_for_function(FIRST_CELL_RAN, arg=name, timeout=60_000)
                else:  # only text: running the first cell renders it
                    notebook.locator(".jp-Cell").first.click()
                    page.keyboard.press("Control+Enter")
                page.keyboard.press("Control+s")   # what autosave does a little later
                expect(tab).not_to_have_class(re.compile("jp-mod-dirty"), timeout=15_000)
                tab.locator(".lm-TabBar-tabCloseIcon").click()
                expect(tab).to_have_count(0, timeout=15_000)
        finally:
            browser.close()
            stop_kernels(lab_as_make_lab_starts_it)

    status = git(root, "status", "--porcelain")
    assert status == "", f"reading the lessons changed tracked files:\n{status}\n" + \
        git(root, "diff")[:4000]
    assert dirty_on_open[ANOTHER_PYTHON], "the other-Python notebook was not even modified: " \
        "this test no longer checks the save hook"
    recorded = json.loads((root / "01_pipeline_trace.ipynb").read_text())["metadata"]
    if recorded["language_info"]["version"] == platform.python_version():
        marked = sorted(n for n, dirty in dirty_on_open.items() if dirty and n != ANOTHER_PYTHON)
        assert not marked, f"opening these marked them modified: {marked}"
