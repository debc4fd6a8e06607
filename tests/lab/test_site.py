"""The rendered suite: an index in learning order, one self-contained HTML page per notebook
with embedded plots, readable quizzes and links between pages that work offline; a title per
page, navigation at the top and bottom, alt text on every figure, and a search that works in
the browser from file:// (checked in headless Chromium where there is one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser_support import launch, requires_chromium

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    before = sorted(p.name for p in (REPO / "notebooks").iterdir())
    out = tmp_path_factory.mktemp("site") / "site"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "build_site.py"), "--out",
                           str(out), "--no-execute"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (REPO / "notebooks").iterdir()) == before
    return out


def _pages(site: Path) -> list[str]:
    """The pages in the index's order (the lessons in learning order, then the solutions)."""
    return re.findall(r'<li><a href="([^"]+)\.html"', (site / "index.html").read_text())


def test_site_builds_from_committed_outputs(site):
    out = site
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert _pages(out) == [*notebooks, "solutions"], \
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
    for stem in notebooks:
        assert "VBox(children" not in (out / f"{stem}.html").read_text(), "widget repr shown"


def test_every_page_has_its_title_and_navigation_at_top_and_bottom(site):
    pages = _pages(site)
    for i, stem in enumerate(pages):
        page = (site / f"{stem}.html").read_text()
        heading = re.search(r"<h1[^>]*>(.*?)</h1>", page, re.S)
        title = re.search(r"<title>(.*?)</title>", page, re.S).group(1).strip()
        assert heading and title, f"{stem}: no title"
        h1 = re.sub(r"<[^>]+>|¶", "", heading.group(1)).strip()
        assert title.startswith(h1.replace("'", "&#39;")) or title.startswith(h1), (stem, title)
        navs = re.findall(r'<nav class="ckptlab-nav[^"]*"[^>]*>(.*?)</nav>', page, re.S)
        assert len(navs) == 2, f"{stem}: expected a navigation bar at the top and the bottom"
        body = page.split("<body", 1)[1]
        assert body.index("<nav") < body.index("<h1"), f"{stem}: the top bar is not on top"
        for nav in navs:
            assert 'href="index.html"' in nav
            prev = re.search(r'rel="prev" href="([^"]+)\.html"', nav)
            following = re.search(r'rel="next" href="([^"]+)\.html"', nav)
            assert (prev.group(1) if prev else None) == (pages[i - 1] if i else None), stem
            assert (following.group(1) if following else None) == \
                (pages[i + 1] if i + 1 < len(pages) else None), stem
        assert 'role="search"' in navs[0] and '<script src="search.js"></script>' in page


class _Images(HTMLParser):
    """Every ``<img>``'s alt attribute (``None`` when it has none), however it is quoted."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.alts: list[str | None] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs).get("alt"))


def test_every_figure_has_alt_text_and_captions_become_alt_text(site):
    captions = {}
    for path in (REPO / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            for output in cell.get("outputs", []):
                caption = output.get("metadata", {}).get("ckptlab", {}).get("caption")
                if caption:
                    captions.setdefault(path.stem, []).append(caption)
    for stem in _pages(site):
        alts = _Images((site / f"{stem}.html").read_text()).alts
        assert all(alt and alt.strip() for alt in alts), f"{stem}: an image without alt text"
        assert not [a for a in alts if "No description has been provided" in a], stem
        normalised = {" ".join(alt.split()) for alt in alts}
        for caption in captions.get(stem, []):
            assert " ".join(caption.split()) in normalised, \
                f"{stem}: the caption is not the figure's alt text: {caption[:80]}"


def test_alt_text_falls_back_to_the_cells_comment_then_the_heading():
    sys.path.insert(0, str(REPO / "tools"))
    import nbformat
    from build_site import add_alt_texts, figure_alt_text

    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=\n"})
    captioned = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="},
                                       metadata={"ckptlab": {"caption": "Loss: max |d| = 0"}})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Lesson\n\n## The `loss` curves"),
        nbformat.v4.new_code_cell("# loss against steps\nplot()", outputs=[png]),
        nbformat.v4.new_code_cell("plot()", outputs=[nbformat.from_dict(dict(png))]),
        nbformat.v4.new_code_cell("# drawn\nplot()", outputs=[captioned])])
    assert add_alt_texts(nb, "Lesson") == 3
    html_of = [c.outputs[0]["data"]["text/html"] for c in nb.cells[1:]]
    assert 'alt="Figure: loss against steps"' in html_of[0]
    assert 'alt="Figure in \u201cThe loss curves\u201d"' in html_of[1]
    assert 'alt="Loss: max |d| = 0"' in html_of[2]
    assert "base64,iVBORw0KGgo=\"" in html_of[0], "the picture's data must stay intact"
    assert figure_alt_text(captioned, nb.cells[3], "x") == "Loss: max |d| = 0"


def test_the_search_index_covers_every_page(site):
    script = (site / "search.js").read_text()
    data = script.split("window.CKPTLAB_SEARCH_INDEX = ", 1)[1].split(";\n", 1)[0]
    index = json.loads(data)
    assert {entry["page"] for entry in index} == {f"{p}.html" for p in _pages(site)}
    for entry in index:
        if entry["anchor"]:
            page = (site / entry["page"]).read_text()
            assert f'id="{entry["anchor"]}"' in page, entry


@requires_chromium
def test_the_search_finds_a_section_offline_and_opens_it(site):
    """In a real browser, from file:// (no server, no network): type, see results, follow."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.route("http*://**", lambda route: route.abort())   # offline
            page.goto((site / "01_pipeline_trace.html").as_uri())
            box = page.locator(".ckptlab-nav-top input[type=search]")
            box.fill("sigkill fsync")
            results = page.locator(".ckptlab-nav-top .ckptlab-search li a")
            expect(results.first).to_be_visible(timeout=10_000)
            assert results.count() >= 1
            target = results.first.get_attribute("href")
            assert re.match(r"\d\d_[a-z0-9_]+\.html#\S+", target), target
            results.first.click()
            page.wait_for_url(re.compile(re.escape(target.split("#")[0])))
            anchor = target.split("#", 1)[1]
            expect(page.locator(f'[id="{anchor}"]')).to_be_in_viewport(timeout=10_000)
            box = page.locator(".ckptlab-nav-top input[type=search]")
            box.fill("zzqx-not-a-word")
            expect(page.locator(".ckptlab-nav-top .ckptlab-search li").first).to_contain_text(
                "No lesson mentions")
            page.goto((site / "index.html").as_uri())
            page.locator("input[type=search]").fill("retention")
            expect(page.locator(".ckptlab-search li a").first).to_be_visible(timeout=10_000)
        finally:
            browser.close()
