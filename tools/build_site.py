"""Build the rendered suite: every notebook executed and exported to HTML, plus an index page
in learning order. Plots are embedded (no external files) and each quiz appears with its
collapsed answers-and-explanations block, so the pages work offline and on a projector
without a kernel.

    .venv/bin/python tools/build_site.py [--out site] [--no-execute]

``--no-execute`` exports the committed outputs as they are (fast); by default every notebook is
executed first, in a temporary copy of the notebooks directory.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refresh_notebooks import clean  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def title_of(nb: nbformat.NotebookNode) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if match:
                return match.group(1).strip()
    return "untitled"


def build(out: Path, execute: bool) -> list[tuple[str, str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    # Markdown images (the start page's picture, ../docs/...) are embedded like the plots.
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    pages = []
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
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(work)}})
            # Links between lessons point at the exported pages.
            body = re.sub(r'href="(\d\d_[A-Za-z0-9_]+|solutions)\.ipynb"', r'href="\1.html"',
                          body)
            (out / f"{path.stem}.html").write_text(body, "utf-8")
            pages.append((path.stem, title_of(nb), elapsed))
            print(f"{path.stem}.html" + (f" (executed in {elapsed:.1f} s)" if execute else ""),
                  flush=True)
    items = "\n".join(
        f'<li><a href="{html.escape(stem)}.html">{html.escape(title)}</a></li>'
        for stem, title, _ in pages)
    (out / "index.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ckptlab - checkpointing an agent's training progress</title>
<style>body{{font-family:system-ui,sans-serif;max-width:760px;margin:3em auto;
line-height:1.5;padding:0 1em}} li{{margin:.4em 0}}</style></head>
<body><h1>ckptlab: checkpointing an agent's training progress</h1>
<p>The lessons in learning order, executed, with every plot embedded, then the solutions to
the exercises. Each quiz question shows its choices, with its answer in its own collapsed block;
to answer them interactively and move the live controls, open the notebooks in JupyterLab
(<code>make lab</code>) or present them with <code>make present</code>.</p>
<ol start="0">
{items}
</ol>
<p><small>Built {time.strftime('%Y-%m-%d')} by <code>tools/build_site.py</code>.</small></p>
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
