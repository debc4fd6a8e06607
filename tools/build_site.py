"""Build the rendered suite: every notebook executed and exported to HTML, plus an index page
in learning order. Plots are embedded (no external files) and each quiz appears with its
collapsed answers-and-explanations block, so the pages work offline and on a projector
without a kernel.

Every page has its lesson's title, links to the previous and next page and to the index at
its top and bottom, and a search box: ``search.js`` holds an index of every section of every
page and searches it in the browser (no server, works from ``file://``). Each figure's alt text
is its caption (see :func:`figure_alt_text`).

    .venv/bin/python tools/build_site.py [--out site] [--no-execute]

``--no-execute`` exports the committed outputs as they are (fast); by default every notebook is
executed first, in a temporary copy of the notebooks directory.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from bs4 import BeautifulSoup
from nbclient import NotebookClient
from nbconvert import HTMLExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refresh_notebooks import clean  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SEARCH_SCRIPT = Path(__file__).resolve().parent / "site_search.js"
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)

# The navigation bar and the search box, on every page.
SITE_STYLE = """<style>
.ckptlab-nav{font-family:system-ui,sans-serif;display:flex;flex-wrap:wrap;gap:.4em 1.2em;
align-items:center;max-width:1100px;margin:.6em auto;padding:.5em 1em;
border:1px solid #d0d7de;border-radius:6px;background:#f6f8fa;font-size:15px;line-height:1.4}
.ckptlab-nav a{color:#0550ae}
.ckptlab-search{position:relative;margin-left:auto}
.ckptlab-search input{font-size:15px;padding:.25em .5em;width:16em}
.ckptlab-search ul{position:absolute;right:0;z-index:10;width:34em;max-width:90vw;
max-height:70vh;overflow:auto;margin:.2em 0 0;padding:.3em .8em;list-style:none;
background:#fff;border:1px solid #d0d7de;border-radius:6px;box-shadow:0 4px 12px #0002}
.ckptlab-search li{margin:.5em 0}
.ckptlab-snippet{display:block;color:#57606a;font-size:13px}
</style>"""


def title_of(nb: nbformat.NotebookNode) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return "untitled"


def _plain(markdown: str) -> str:
    """A heading's text without markdown emphasis, code marks or link targets."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"[*_`]", "", text).strip()


def figure_alt_text(output: nbformat.NotebookNode, cell: nbformat.NotebookNode,
                    heading: str) -> str:
    """The alt text of a figure on the site: its caption, where the lesson gave one
    (``ckptlab.lab.figures`` records it in the output's metadata as
    ``{"ckptlab": {"caption": ...}}``); else the first comment line of the cell that drew it;
    else the heading of the section it appears in."""
    caption = output.get("metadata", {}).get("ckptlab", {}).get("caption")
    if isinstance(caption, str) and caption.strip():
        return caption.strip()
    for line in cell.source.splitlines():
        if line.strip().startswith("#") and line.strip("# \t"):
            return "Figure: " + line.strip().lstrip("#").strip()
    return f"Figure in \u201c{heading}\u201d"


def add_alt_texts(nb: nbformat.NotebookNode, title: str) -> int:
    """Give every plotted image (``image/png`` without its own HTML) an ``<img>`` with its
    alt text (:func:`figure_alt_text`); an output that brings its own HTML (a captioned
    figure) is shown as it is. Returns how many images were given one."""
    heading, count = title, 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = HEADING.findall(cell.source)
            heading = _plain(headings[-1]) if headings else heading
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data and "text/html" not in data:
                alt = html.escape(figure_alt_text(output, cell, heading), quote=True)
                png = "".join(str(data["image/png"]).split())
                data["text/html"] = f'<img alt="{alt}" src="data:image/png;base64,{png}">'
                count += 1
    return count


def search_sections(page_html: str, page: str, title: str) -> list[dict[str, str]]:
    """The page's text, one entry per section (a heading and the prose under it), for the
    search index."""
    soup = BeautifulSoup(page_html, "html.parser")
    sections = [{"page": page, "title": title, "heading": title, "anchor": "", "text": ""}]
    for block in soup.select(".jp-MarkdownOutput"):
        for element in block.find_all(True, recursive=False):
            if re.fullmatch(r"h[1-6]", element.name) and element.get("id"):
                for link in element.select("a.anchor-link"):
                    link.decompose()
                sections.append({"page": page, "title": title, "heading":
                                 element.get_text(" ", strip=True),
                                 "anchor": element["id"], "text": ""})
            else:
                text = element.get_text(" ", strip=True)
                sections[-1]["text"] = f"{sections[-1]['text']} {text}".strip()
    return [s for s in sections if s["text"] or s["anchor"]]


def navigation(pages: list[tuple[str, str]], i: int, *, search: bool) -> str:
    """The bar linking page ``i`` to the index, the previous and the next page (and, at the
    top, the search box)."""
    links = ['<a href="index.html">All lessons</a>']
    if i > 0:
        stem, title = pages[i - 1]
        links.append(f'<a rel="prev" href="{stem}.html">\u2190 {html.escape(title)}</a>')
    if i + 1 < len(pages):
        stem, title = pages[i + 1]
        links.append(f'<a rel="next" href="{stem}.html">{html.escape(title)} \u2192</a>')
    form = ('<form class="ckptlab-search" role="search"><input type="search" '
            'placeholder="Search the lessons" aria-label="Search the lessons">'
            '<ul hidden></ul></form>' if search else "")
    where, label = ("top", "Lessons") if search else ("bottom", "Lessons (end of page)")
    return (f'<nav class="ckptlab-nav ckptlab-nav-{where}" aria-label="{label}">'
            f'{"".join(links)}{form}</nav>')


def build(out: Path, execute: bool) -> list[tuple[str, str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    # Markdown images (the start page's picture, ../docs/...) are embedded like the plots.
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    pages, bodies = [], {}
    with tempfile.TemporaryDirectory(prefix="ckptlab-site-") as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        # nbconvert embeds only images below the notebook's folder: give it the README's
        # pictures there, and point the markdown at that copy.
        shutil.copytree(NOTEBOOKS.parent / "docs", work / "docs")
        # The lessons in order, then the solutions to their exercises (markdown only).
        for path in [*sorted(work.glob("[0-9][0-9]_*.ipynb")), work / "solutions.ipynb"]:
            nb = nbformat.read(path, as_version=4)
            started = time.perf_counter()
            if execute:
                NotebookClient(nb, timeout=600, kernel_name="python3",
                               resources={"metadata": {"path": str(work)}}).execute()
            elapsed = time.perf_counter() - started
            clean(nb)  # widget views need a kernel; the quiz's HTML fallback stays
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source = cell.source.replace("](../docs/", "](docs/")
            title = title_of(nb)
            add_alt_texts(nb, title)
            name = title if "ckptlab" in title.lower() else f"{title} \u2014 ckptlab"
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {
                "path": str(work), "name": name}})
            # Links between lessons point at the exported pages.
            body = re.sub(r'href="(\d\d_[A-Za-z0-9_]+|solutions)\.ipynb"', r'href="\1.html"',
                          body)
            bodies[path.stem] = body
            pages.append((path.stem, title, elapsed))
            print(f"{path.stem}.html" + (f" (executed in {elapsed:.1f} s)" if execute else ""),
                  flush=True)
    # Navigation needs every page's title, the search every page's text: written last.
    titles = [(stem, title) for stem, title, _ in pages]
    index: list[dict[str, str]] = []
    for i, (stem, title) in enumerate(titles):
        body = bodies[stem]
        index += search_sections(body, f"{stem}.html", title)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + SITE_STYLE +
                      navigation(titles, i, search=True), body, count=1)
        body = body.replace("</body>", navigation(titles, i, search=False) +
                            '<script src="search.js"></script></body>', 1)
        (out / f"{stem}.html").write_text(body, "utf-8")
    (out / "search.js").write_text(
        "window.CKPTLAB_SEARCH_INDEX = " + json.dumps(index, ensure_ascii=True) + ";\n" +
        SEARCH_SCRIPT.read_text("utf-8"), "utf-8")
    items = "\n".join(
        f'<li><a href="{html.escape(stem)}.html">{html.escape(title)}</a></li>'
        for stem, title, _ in pages)
    (out / "index.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ckptlab - checkpointing an agent's training progress</title>
<style>body{{font-family:system-ui,sans-serif;max-width:760px;margin:3em auto;
line-height:1.5;padding:0 1em}} li{{margin:.4em 0}}</style>{SITE_STYLE}</head>
<body><form class="ckptlab-search" role="search" style="margin:0 0 1em auto;width:max-content">
<input type="search" placeholder="Search the lessons" aria-label="Search the lessons">
<ul hidden></ul></form>
<h1>ckptlab: checkpointing an agent's training progress</h1>
<p>The lessons in learning order, executed, with every plot embedded, then the solutions to
the exercises. Each quiz question shows its choices, with its answer in its own collapsed block;
to answer them interactively and move the live controls, open the notebooks in JupyterLab
(<code>make lab</code>) or present them with <code>make present</code>.</p>
<ol start="0">
{items}
</ol>
<p><small>Built {time.strftime('%Y-%m-%d')} by <code>tools/build_site.py</code>.</small></p>
<script src="search.js"></script>
</body></html>
""", "utf-8")
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("site"))
    parser.add_argument("--no-execute", action="store_true",
                        help="export the committed outputs without running the notebooks")
    args = parser.parse_args()
    pages = build(args.out, execute=not args.no_execute)
    print(f"{len(pages)} pages and index.html in {args.out}/ (open {args.out}/index.html)")


if __name__ == "__main__":
    main()
