"""Re-execute the lesson notebooks in place, so their committed outputs are current.

Why outputs are committed: a learner (or an instructor previewing the suite on a code host)
sees every table and plot without installing anything. To keep diffs reviewable, this script
removes what changes on every run without meaning anything: execution timings, kernel and
widget-state metadata and widget views (their text is only a repr); and runs with fixed seeds.
Each notebook runs with notebooks/ as its working directory; the lessons write only into
temporary directories, so nothing is left next to the sources but the refreshed notebook.

    .venv/bin/python tools/refresh_notebooks.py [notebooks/01_pipeline_trace.ipynb ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def clean(nb: nbformat.NotebookNode) -> None:
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            # A widget view needs a live kernel, and its text/plain is only a repr: drop the
            # view. An output that carries its own static HTML (the quiz) keeps that HTML;
            # any other widget output goes.
            kept = []
            for o in cell.get("outputs", []):
                data = o.get("data", {})
                if "application/vnd.jupyter.widget-view+json" in data:
                    if "text/html" not in data:
                        continue
                    o["data"] = {"text/html": data["text/html"]}
                kept.append(o)
            cell.outputs = kept
            for output in cell.outputs:
                output.get("metadata", {}).pop("execution", None)


def refresh(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - started
    clean(nb)
    nbformat.write(nb, path)
    return elapsed


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: executed in {refresh(path):.1f} s", flush=True)


if __name__ == "__main__":
    main()
