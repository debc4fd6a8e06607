"""The lessons carry the kernel metadata JupyterLab writes (so opening one changes nothing),
and the server hook of ``make lab`` keeps a lesson's bytes on another Python too."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

from ckptlab.lab.jupyter_hooks import keep_tracked_language_info

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
from refresh_notebooks import KERNELSPEC, kernel_language_info  # noqa: E402


def test_every_notebook_records_what_the_kernel_reports():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 12
    metadata = {p.name: json.loads(p.read_text("utf-8"))["metadata"] for p in notebooks}
    reported = kernel_language_info()
    versions = set()
    for name, meta in metadata.items():
        assert meta["kernelspec"] == KERNELSPEC, name
        recorded = meta["language_info"]
        versions.add(recorded.get("version"))
        # Every field JupyterLab writes, else it rewrites the notebook on open.
        assert set(recorded) == set(reported), (name, sorted(recorded))
        assert {k: v for k, v in recorded.items() if k != "version"} == \
            {k: v for k, v in reported.items() if k != "version"}, name
    assert len(versions) == 1, f"the notebooks record several Pythons: {versions}"
    if platform.python_version() == versions.pop():
        assert all(meta["language_info"] == reported for meta in metadata.values())


def _save(tmp_path, incoming: dict, *, type_: str = "notebook", name: str = "lesson.ipynb"):
    model = {"type": type_, "content": {"metadata": {"language_info": incoming}, "cells": []}}
    keep_tracked_language_info(model=model, path=f"/notebooks/{name}",
                               contents_manager=SimpleNamespace(root_dir=str(tmp_path)))
    return model["content"]["metadata"]["language_info"]


def test_the_save_hook_keeps_the_files_language_info_for_the_same_language(tmp_path):
    tracked = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "lesson.ipynb").write_text(
        json.dumps({"metadata": {"language_info": tracked}, "cells": []}))
    learners = {"name": "python", "version": "3.12.3", "mimetype": "text/x-python"}
    assert _save(tmp_path, learners) == tracked
    other_language = {"name": "julia", "version": "1.10"}
    assert _save(tmp_path, other_language) == other_language
    assert _save(tmp_path, learners, name="new.ipynb") == learners     # nothing on disk yet
    assert _save(tmp_path, learners, type_="file") == learners        # not a notebook
    (tmp_path / "notebooks" / "broken.ipynb").write_text("{not json")
    assert _save(tmp_path, learners, name="broken.ipynb") == learners
