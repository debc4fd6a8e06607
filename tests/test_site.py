"""The rendered suite: an index in learning order, one self-contained HTML page per notebook
with embedded plots, readable quizzes and links between pages that work offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_site_builds_from_committed_outputs(tmp_path):
    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "build_site.py"), "--out",
                           str(out), "--no-execute"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    index = (out / "index.html").read_text()
    links = re.findall(r'href="([^"]+)\.html"', index)
    assert links == [*notebooks, "solutions"], \
        "the index must list every lesson, in learning order, then the solutions"
    assert "Lesson 1" in (out / "solutions.html").read_text()
    for stem in notebooks:
        page = (out / f"{stem}.html").read_text()
        assert ".ipynb\"" not in page, f"{stem}: a link still points at a notebook"
        if stem != "00_start_here":
            assert "data:image/png;base64," in page, f"{stem}: no embedded plot"
            assert "<details>" in page and "answers and explanations" in page, \
                f"{stem}: the quiz is not readable without a kernel"
    start = (out / "00_start_here.html").read_text()
    assert 'href="01_pipeline_trace.html"' in start
    assert "data:image/png;base64," in start, "the start page's picture is not embedded"
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before
    for stem in notebooks:
        assert "VBox(children" not in (out / f"{stem}.html").read_text(), "widget repr shown"
