"""Re-execute the lesson notebooks in place, so their committed outputs are current.

Why outputs are committed: a learner (or an instructor previewing the suite on a code host)
sees every table and plot without installing anything. To keep diffs reviewable, this script
removes what changes on every run without meaning anything: execution timings, widget-state
metadata and widget views (their text is only a repr); and runs with fixed seeds.
Each notebook runs with notebooks/ as its working directory; the lessons write only into
temporary directories, so nothing is left next to the sources but the refreshed notebook.

The notebook's ``kernelspec`` and ``language_info`` are kept exactly as the kernel reports
them (Python's version included): JupyterLab writes the running kernel's ``language_info``
into every notebook it opens and marks the notebook modified unless it is already equal, so
anything shorter makes a lesson "modified" the moment a learner opens it, and autosave then
rewrites the tracked file. ``--metadata-only`` writes just these two (every notebook,
solutions included), without executing anything.

    .venv/bin/python tools/refresh_notebooks.py [notebooks/01_pipeline_trace.ipynb ...]
    .venv/bin/python tools/refresh_notebooks.py --metadata-only [notebooks/...]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# What JupyterLab writes when it starts the lessons' kernel (and nothing else).
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def kernel_language_info(kernel_name: str = "python3") -> dict[str, Any]:
    """The ``language_info`` a freshly started kernel reports (what JupyterLab writes)."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name=kernel_name)
    try:
        return client.kernel_info(reply=True, timeout=60)["content"]["language_info"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def clean(nb: nbformat.NotebookNode) -> None:
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    # language_info stays as the executing kernel reported it (see the module docstring).
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


def write_kernel_metadata(paths: list[Path]) -> list[Path]:
    """Give each notebook the kernelspec and language_info JupyterLab would write; return the
    notebooks that changed (nothing else in them is touched)."""
    language_info = kernel_language_info()
    changed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if nb.metadata.get("kernelspec") == KERNELSPEC and \
                nb.metadata.get("language_info") == language_info:
            continue
        nb.metadata["kernelspec"] = dict(KERNELSPEC)
        nb.metadata["language_info"] = language_info
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def main() -> None:
    # A refresh is nobody's learning: the lessons' kernels record no progress (nor read
    # anyone's into the committed outputs), and never run in the presentation style.
    os.environ["CKPTLAB_PROGRESS"] = "off"
    os.environ.pop("CKPTLAB_PRESENTATION", None)
    args = sys.argv[1:]
    if args[:1] == ["--metadata-only"]:
        paths = [Path(p) for p in args[1:]] or sorted(NOTEBOOKS.glob("*.ipynb"))
        changed = write_kernel_metadata(paths)
        print(f"kernel metadata written into {len(changed)} of {len(paths)} notebooks")
        return
    paths = [Path(p) for p in args] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: executed in {refresh(path):.1f} s", flush=True)


if __name__ == "__main__":
    main()
