""""Run all, then do the exercises" works in every lesson: each lesson runs top to bottom in a
fresh kernel (its last cell included), then its tested solution from notebooks/solutions.ipynb
replaces the template in its exercise cell, that cell runs again, and the check must say
PASS. The kernel gets its own
temporary directory, which must be empty once the kernel has stopped (nothing left behind)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def exercise_lessons() -> list[str]:
    stems = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if any("exercise" in c.metadata.get("ckptlab", {}) for c in nb.cells):
            stems.append(path.stem)
    return stems


def solution_for(stem: str) -> str:
    nb = nbformat.read(NOTEBOOKS / "solutions.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("ckptlab", {}).get("solution_for") == stem)
    return re.search(r"```python\n(.*?)```", cell.source, re.S).group(1)


def test_every_lesson_with_a_quiz_has_an_exercise_and_a_solution():
    lessons = exercise_lessons()
    assert [f"0{n}" for n in range(1, 9)] == [s[:2] for s in lessons[:8]]
    for stem in lessons:
        assert solution_for(stem).strip()


@pytest.mark.parametrize("stem", exercise_lessons())
def test_run_all_then_the_exercise_passes(stem, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    exercise = next(c for c in nb.cells if "exercise" in c.metadata.get("ckptlab", {}))
    # The learner, after Run all, writes the answer into the exercise cell (in place of the
    # template) and runs that cell again.
    check_call = [m.start() for m in re.finditer(r"\n[\w.]*check_\w+\(", exercise.source)][-1]
    answered = (exercise.source[:check_call] + "\n\n" + solution_for(stem) + "\n"
                + exercise.source[check_call:])
    nb.cells.append(nbformat.v4.new_code_cell(answered))
    kernel_tmp = tmp_path / "kernel-tmp"
    kernel_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(kernel_tmp), "CKPTLAB_QUIZ_SEED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")]))}
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute(env=env)
    outputs = nb.cells[-1].outputs
    shown = " ".join(str(o.get("data", {}).get("text/html", "")) + o.get("text", "")
                     for o in outputs)
    assert "PASS" in shown, shown
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    left = sorted(p.name for p in kernel_tmp.iterdir())
    assert not [n for n in left if n.startswith("ckptlab")], f"left behind: {left}"
