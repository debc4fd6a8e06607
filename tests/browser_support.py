"""Shared helpers for the real-browser tests: JupyterLab on loopback + headless Chromium.

Every browser test module uses the session-wide ``jupyter_lab`` fixture (one JupyterLab server,
rooted at a temporary copy of notebooks/, so autosave never writes into the repository) and the
helpers below to open a notebook, run all cells and check that no error appeared.

Needs Debian's Chromium at /usr/bin/chromium (``make test`` and ``.ci/run`` install it) or
``CKPTLAB_CHROMIUM``.
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
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CKPTLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CKPTLAB_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# `make test` sets CKPTLAB_REQUIRE_BROWSER=1 after installing Chromium: there, a missing browser
# is a failure, not a skip, so a green run has run every test.
_MISSING = not Path(CHROMIUM).exists()
if _MISSING and os.environ.get("CKPTLAB_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"no Chromium at {CHROMIUM}, but CKPTLAB_REQUIRE_BROWSER=1: install it "
                       "with `apt-get install -y chromium` (tools/ensure_chromium.sh)")
requires_chromium = pytest.mark.skipif(
    _MISSING,
    reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium)"
           " or set CKPTLAB_CHROMIUM to a Chromium binary to run the browser test")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(tmp_path_factory, extra_args: Sequence[str] = ()):
    """A JupyterLab server on loopback, rooted at a temporary copy of the notebooks (with
    ``extra_args`` added to its command line)."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(REPO / "notebooks", root,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Render every cell, not only those near the viewport, so a test finds any control.
    notebook_settings = base / "settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True)
    (notebook_settings / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), "ckptlab-browser-test"
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", *extra_args]
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
                log = (base / "jupyterlab.log").read_text()[-3000:]
                pytest.fail(f"JupyterLab did not start:\n{log}")
            time.sleep(0.5)
    try:
        yield url, token, root
    finally:
        _stop(server, log)


def _stop(server, log) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def launch(playwright):
    """Headless Chromium with the flags this machine needs; close it when done."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_and_run_all(page, lab, notebook: str, *, timeout_ms: int = 180_000):
    """Open ``notebook`` in JupyterLab, wait for the kernel, Run All Cells, wait until idle.

    Returns the status-bar locator that reads "Idle" (to wait on again after a click).
    """
    from playwright.sync_api import expect

    url, token, _ = lab
    # A fresh workspace per page: the default one would reopen notebooks an earlier test left
    # open, and "Run All Cells" would then run in the wrong one.
    workspace = f"w{uuid.uuid4().hex[:8]}"
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={token}")
    # The toolbar says idle too early; the status bar's kernel text is reliable.
    idle = page.get_by_text("Python 3 (ipykernel) | Idle")
    expect(idle).to_be_visible(timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_timeout(1_000)
    expect(idle).to_be_visible(timeout=timeout_ms)
    return idle


def assert_no_errors(page) -> None:
    """No traceback in any output and no error box from a live control."""
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/"
                          "vnd.jupyter.stderr']", has_text="Error")
    assert errors.count() == 0, errors.first.inner_text()
    boxes = page.locator(".ckptlab-error")
    assert boxes.count() == 0, boxes.first.inner_text()


def stop_kernels(lab) -> None:
    """Shut down every kernel of the test JupyterLab (through its REST API)."""
    url, token, _ = lab
    with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=10) as response:
        kernels = json.loads(response.read())
    for kernel in kernels:
        request = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}?token={token}",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()
