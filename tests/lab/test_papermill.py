"""Notebooks run with non-default parameters: through papermill's injected parameters, and
through the environment variables their `parameters` cell reads (the knob nbval runs share)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run(tmp_path: Path, name: str, **kwargs) -> str:
    out = tmp_path / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False, **kwargs)
    nb = nbformat.read(out, as_version=4)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_papermill_parameters_override_the_defaults(tmp_path):
    text = run(tmp_path, "01_pipeline_trace.ipynb", parameters={"SEED": 3})
    assert "mode fast, seed 3" in text
    assert "largest weight difference = 0.0" in text  # the lesson's claim held with seed 3


def test_environment_variables_reach_the_parameters_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTLAB_SEED", "5")
    text = run(tmp_path, "01_pipeline_trace.ipynb")
    assert "mode fast, seed 5" in text


def test_a_bad_mode_fails_loudly(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="MODE must be"):
        run(tmp_path, "03_loss_curves.ipynb", parameters={"MODE": "slow"})
