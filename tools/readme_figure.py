"""Copy lesson 4's resumed-vs-uninterrupted figure (its first plot) to docs/ for the README,
so the picture on the front page is always the one the lesson produces.

    .venv/bin/python tools/readme_figure.py      (run after tools/refresh_notebooks.py)
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    nb = nbformat.read(REPO / "notebooks" / "04_interrupt_and_resume.ipynb", as_version=4)
    png = next(o["data"]["image/png"] for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    out = REPO / "docs" / "resume-vs-uninterrupted.png"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(base64.b64decode(png))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
