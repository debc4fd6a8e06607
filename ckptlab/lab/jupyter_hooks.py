"""A Jupyter server hook that keeps the lessons unmodified when a learner only reads them.

JupyterLab writes the running kernel's ``language_info`` (Python's exact version included)
into every notebook it opens, and marks the notebook modified unless it is already equal;
autosave then rewrites the file. The lessons are committed with the ``language_info`` of the
tested Python (``tools/refresh_notebooks.py``), so on that Python nothing changes. On any
other Python (a learner's laptop), :func:`keep_tracked_language_info` puts the file's own
``language_info`` back into the notebook just before the server writes it, so a save (autosave
included) of a lesson the learner did not change writes the same bytes, and ``git status``
stays clean; the learner's own changes are saved as usual.

``make lab`` starts JupyterLab with it::

    jupyter lab --ContentsManager.pre_save_hook=ckptlab.lab.jupyter_hooks.keep_tracked_language_info
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def keep_tracked_language_info(model: dict[str, Any], path: str, contents_manager: Any,
                               **kwargs: Any) -> None:
    """Jupyter server ``pre_save_hook``: a notebook saved over a file that records
    ``language_info`` for the same language keeps the file's record (the server writes
    ``model`` after this returns)."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    incoming = model["content"].setdefault("metadata", {}).get("language_info")
    on_disk = Path(contents_manager.root_dir, *path.strip("/").split("/"))
    try:
        recorded = json.loads(on_disk.read_text("utf-8")).get("metadata", {}).get(
            "language_info")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return  # a new notebook, or a file that is not one: nothing recorded to keep
    if isinstance(recorded, dict) and isinstance(incoming, dict) \
            and recorded.get("name") == incoming.get("name"):
        model["content"]["metadata"]["language_info"] = recorded
