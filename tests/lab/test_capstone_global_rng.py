"""Lesson 8's capstone draws noise from torch's global generator: its solution registers
GlobalRNG, and the check names GlobalRNG when a loop resumes without the global generators."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import torch

from ckptlab.lab import exercises as ex

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _solution() -> str:
    nb = nbformat.read(NOTEBOOKS / "solutions.ipynb", as_version=4)
    cell = next(c for c in nb.cells
                if c.metadata.get("ckptlab", {}).get("solution_for") == "08_review")
    return re.search(r"```python\n(.*?)```", cell.source, re.S).group(1)


def _loop(code: str):
    namespace = {"torch": torch}
    exec(code, namespace)
    return namespace["my_training"]


def test_the_template_draws_from_the_global_generator_and_the_solution_saves_it():
    nb = nbformat.read(NOTEBOOKS / "08_review.ipynb", as_version=4)
    template = next(c.source for c in nb.cells
                    if c.metadata.get("ckptlab", {}).get("exercise") == "own_loop")
    assert "torch.randn(32, 1)" in template and "GlobalRNG" in template
    assert 'manager.register("rng", GlobalRNG())' in _solution()
    assert "GlobalRNG()" in ex.hint("own_loop")


def test_without_the_global_generators_the_check_fails_and_names_globalrng():
    without = _solution().replace('        manager.register("rng", GlobalRNG())', "        pass")
    result = ex.check_own_loop(_loop(without))
    assert result.passed is False, result
    assert "process-wide random generators" in result.message
    assert "Register GlobalRNG()" in result.message
    assert ex.check_own_loop(_loop(_solution())).passed
