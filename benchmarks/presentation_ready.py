"""How long a projected lesson takes to be usable: ``make present`` (tools/present.py), every lesson
pre-run, then each lesson opened in headless Chromium and timed until its text is there and its
first live control is drawn and enabled.

    .venv/bin/python benchmarks/presentation_ready.py [04 05 ...]

Prints one line per lesson and writes ``test-artifacts/presentation-ready.json``. The browser test
(tests/browser/test_browser_presentation.py) uses the same functions; benchmarks/README.md
records the figures.

"Ready" is measured from the moment the page is requested to the moment both the lesson's key
insight (its last text) is visible and its first live control - a slider, drop-down, button or
quiz choice - is drawn and enabled, i.e. connected to the lesson's kernel.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("CKPTLAB_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM = os.environ.get("CKPTLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# The first live control of a lesson page, once drawn and connected to the kernel.
CONTROL = (".widget-slider .noUi-handle, .widget-dropdown select:enabled, "
           ".jupyter-button:enabled, .widget-radio-box input:enabled, "
           ".widget-checkbox input:enabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_presentation(port: int, preheat: list[str] | None, log_path: Path,
                       refill_delay_s: float = 3600) -> subprocess.Popen:
    """``tools/present.py`` on ``port``; ``preheat`` lessons pre-run (None: all). A refill
    delay of an hour keeps the pool from re-running a lesson while others are measured."""
    command = [sys.executable, str(REPO / "tools" / "present.py"), "--port", str(port),
               "--refill-delay", str(refill_delay_s)]
    if preheat is not None:
        command += ["--preheat", *preheat]
    log = open(log_path, "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"})
    server.log_file = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/tree", timeout=2).close()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"the presentation did not start:\n{log_path.read_text()}")
            time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    server.log_file.close()  # type: ignore[attr-defined]


def wait_until_preheated(server: subprocess.Popen, kernels: int, log_path: Path,
                         timeout_s: float = 1800, quiet_s: float = 8) -> float:
    """Wait until ``kernels`` pre-run kernels exist and every process under the server has been
    idle (under 5 % of a core in all) for ``quiet_s`` seconds: each lesson has run to its end.
    Returns the seconds it took."""
    import psutil

    started = time.monotonic()
    root = psutil.Process(server.pid)
    quiet_since = None
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise RuntimeError(f"the presentation stopped:\n{log_path.read_text()[-3000:]}")
        filled = log_path.read_text().count("is filled with")
        procs = root.children(recursive=True)
        busy = 0.0
        for proc in procs:
            try:
                busy += proc.cpu_percent(interval=None)
            except psutil.Error:
                continue
        time.sleep(1.0)
        busy = 0.0
        for proc in procs:
            try:
                busy += proc.cpu_percent(interval=None)
            except psutil.Error:
                continue
        if filled >= kernels and busy < 5.0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return time.monotonic() - started - quiet_s
        else:
            quiet_since = None
    raise TimeoutError(f"the lessons were still running after {timeout_s:.0f} s")


def open_lesson(page, url: str, lesson: str, timeout_ms: int = 120_000) -> dict[str, float]:
    """Open a presented lesson and time it: ``{"key_insight_s", "ready_s"}``."""
    from playwright.sync_api import expect

    started = time.monotonic()
    page.goto(f"{url}/voila/render/{lesson}.ipynb", timeout=timeout_ms)
    expect(page.get_by_text("Key insight").first).to_be_visible(timeout=timeout_ms)
    text_s = time.monotonic() - started
    expect(page.locator(CONTROL).first).to_be_visible(timeout=timeout_ms)
    return {"key_insight_s": round(text_s, 2), "ready_s": round(time.monotonic() - started, 2)}


def lessons_served() -> list[str]:
    sys.path.insert(0, str(REPO / "tools"))
    from present import lessons

    return [p.stem for p in lessons()]


def main() -> None:
    from playwright.sync_api import sync_playwright

    chosen = sys.argv[1:]
    stems = [s for s in lessons_served() if not chosen or s[:2] in chosen or s in chosen]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "presentation-bench.log"
    port = free_port()
    server = start_presentation(port, [s[:2] for s in stems], log_path)
    try:
        warm = wait_until_preheated(server, len(stems), log_path)
        print(f"{len(stems)} lessons pre-run in {warm:.0f} s", flush=True)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for stem in stems:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                results[stem] = open_lesson(page, f"http://127.0.0.1:{port}", stem)
                print(f"{stem}: usable in {results[stem]['ready_s']:.2f} s", flush=True)
                page.close()
            browser.close()
    finally:
        stop(server)
    out = ARTIFACTS / "presentation-ready.json"
    out.write_text(json.dumps({"preheat_s": round(warm, 1), "lessons": results}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
