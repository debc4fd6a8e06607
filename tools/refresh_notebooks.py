"""Re-execute the lesson notebooks in place, so their committed outputs are current.

Why outputs are committed: a learner (or an instructor previewing the suite on a code host)
sees every table and plot without installing anything. To keep diffs reviewable, this script
removes what changes on every run without meaning anything: execution timings, kernel and
widget-state metadata; and runs with fixed seeds, so re-running an unchanged notebook changes
nothing. It runs each notebook from a temporary copy of the repo's notebooks directory, so
nothing is written next to the sources but the refreshed notebook itself.

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
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("execution", None)
                # widget views need live kernel state; the quiz's HTML fallback is kept
                output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)


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
