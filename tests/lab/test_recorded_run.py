"""The recorded full-mode run in data/ (the instructor guide's long-horizon curves): readable,
with its provenance, and drawn with a caption that states what the data shows."""

from __future__ import annotations

import json
import re

import matplotlib
import pytest

matplotlib.use("Agg")

from ckptlab.engine import CkptlabError  # noqa: E402
from ckptlab.lab.figures import caption_of, figure_view  # noqa: E402
from ckptlab.lab.recorded import data_dir, load_full_run, plot_full_run  # noqa: E402


def test_the_recorded_run_is_complete_and_says_where_it_came_from():
    run = load_full_run()
    assert run.provenance["command"] == "python tools/record_reference_data.py full-run"
    assert re.fullmatch(r"[0-9a-f]{40}", run.provenance["commit"]) and run.provenance["recorded"]
    total = run.config["total_steps"]
    assert total >= 50_000 and run.history.loss_steps[-1] <= total
    assert [e["step"] for e in run.history.evaluations] == \
        list(range(run.config["steps_per_epoch"], total + 1, run.config["steps_per_epoch"]))
    assert [c["step"] for c in run.checkpoints][-1] == total
    # the manifests' eval_return is the history's evaluation at the same step
    by_step = {e["step"]: e["mean_return"] for e in run.history.evaluations}
    assert all(c["metrics"]["eval_return"] == by_step[c["step"]] for c in run.checkpoints
               if c["metrics"].get("eval_return") is not None)


def test_its_figure_caption_is_derived_from_the_data():
    run = load_full_run()
    best = run.best_checkpoint()
    fig = plot_full_run(run)
    text = caption_of(fig)
    assert f"best checkpoint is at step {best['step']:,}" in text
    assert f"last at step {run.checkpoints[-1]['step']:,}" in text
    assert figure_view(fig).png.startswith(b"\x89PNG")


def test_a_missing_recorded_run_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTLAB_REFERENCE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(CkptlabError, match="data/ folder"):
        load_full_run()
    (tmp_path / "full-mode-run").mkdir()
    (tmp_path / "full-mode-run" / "run.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "full-mode-run" / "provenance.json").write_text("{}")
    with pytest.raises(CkptlabError, match="not a ckptlab recorded run"):
        load_full_run()
