"""Two checks added to every lesson that nbval runs, in the same kernel, so that each lesson is
executed once per test run instead of once for nbval and once more for these:

* **Run all, then the exercise.** After the lesson's last cell (its clean-up included), the
  exercise cell runs again with its tested solution from ``notebooks/solutions.ipynb`` written
  in place of the template, as a learner would, and its check must say PASS.
* **Nothing left behind.** The kernel runs with a ``TMPDIR`` of its own; once the lesson (and the
  exercise) ran, the kernel is shut down gracefully (so its exit handlers run, as when a
  learner closes the notebook) and nothing named ``ckptlab*`` may remain there.

Quizzes shuffle their choices, and lesson 5 draws its mystery, from the learner's session seed;
under pytest that seed is fixed so every run sees the same lessons (override with
CKPTLAB_QUIZ_SEED=N).
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"

os.environ.setdefault("CKPTLAB_QUIZ_SEED", "0")  # inherited by every kernel

try:
    from nbval.plugin import IPyNbCell, IPyNbFile
except ImportError:  # pytest -p no:nbval: there are no notebook items to extend
    IPyNbCell = IPyNbFile = None


def exercise_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The lesson's exercise cell (tagged ``ckptlab.exercise`` in its metadata), if any."""
    return next((c for c in nb.cells if "exercise" in c.metadata.get("ckptlab", {})), None)


def solution_for(stem: str) -> str:
    """The tested solution of lesson ``stem``, from ``notebooks/solutions.ipynb``."""
    nb = nbformat.read(NOTEBOOKS / "solutions.ipynb", as_version=4)
    cell = next((c for c in nb.cells
                 if c.metadata.get("ckptlab", {}).get("solution_for") == stem), None)
    if cell is None:
        raise LookupError(f"notebooks/solutions.ipynb has no solution for {stem}")
    return re.search(r"```python\n(.*?)```", cell.source, re.S).group(1)


def answered_exercise(exercise_source: str, solution: str) -> str:
    """The exercise cell as a learner completes it: the answer goes in before the check call."""
    check_call = [m.start() for m in re.finditer(r"\n[\w.]*check_\w+\(", exercise_source)][-1]
    return (exercise_source[:check_call] + "\n\n" + solution + "\n"
            + exercise_source[check_call:])


if IPyNbCell is not None:

    class ExerciseAfterRunAll(IPyNbCell):
        """The exercise cell, answered, run after the whole lesson in the lesson's kernel."""

        def runtest(self) -> None:
            super().runtest()  # raises on any error in the cell
            shown = " ".join(str(o.get("data", {}).get("text/html", "")) + o.get("text", "")
                             for o in self.test_outputs)
            if "PASS" not in shown:
                pytest.fail(f"the solution did not pass the exercise's check: {shown}",
                            pytrace=False)

    class NothingLeftBehind(pytest.Item):
        """Shut the lesson's kernel down gracefully; its TMPDIR must hold nothing of ours."""

        def __init__(self, *, tmpdir: Path, **kwargs) -> None:
            super().__init__(**kwargs)
            self.tmpdir = tmpdir

        def runtest(self) -> None:
            kernel = self.parent.kernel
            # Skip only the final garbage-collection walk over torch's heap (about a second
            # per kernel); exit handlers still run, and a clean-up that relied on collecting a
            # reference cycle at exit would now be caught instead of passing by luck.
            kernel.await_reply(kernel.execute_cell_input("import gc; gc.freeze()",
                                                         allow_stdin=False), timeout=30)
            kernel.kc.shutdown()  # a shutdown request: the kernel runs its exit handlers
            deadline = time.monotonic() + 60
            while kernel.km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if kernel.km.is_alive():
                pytest.fail("the kernel did not shut down within 60 s", pytrace=False)
            kernel.kc.stop_channels()
            left = sorted(p.name for p in self.tmpdir.iterdir() if p.name.startswith("ckptlab"))
            if left:
                pytest.fail(f"left behind in the kernel's temporary folder: {left}",
                            pytrace=False)

        def reportinfo(self):
            return self.path, None, f"{self.parent.name}::nothing left behind"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """After each lesson's last cell: its answered exercise (if any), then the clean-up check."""
    if IPyNbCell is None:
        return
    extended: list[pytest.Item] = []
    for index, item in enumerate(items):
        extended.append(item)
        following = items[index + 1] if index + 1 < len(items) else None
        last_of_notebook = isinstance(item, IPyNbCell) and (
            following is None or following.parent is not item.parent)
        if not last_of_notebook:
            continue
        notebook = item.parent
        exercise = exercise_cell(notebook.nb)
        if exercise is not None:
            cell = nbformat.v4.new_code_cell(
                answered_exercise(exercise.source, solution_for(Path(notebook.name).stem)))
            extended.append(ExerciseAfterRunAll.from_parent(
                notebook, name="exercise after Run all", cell_num=item.cell_num + 1,
                cell=cell, options=defaultdict(bool, check=False)))
        tmpdir = Path(config._tmp_path_factory.mktemp(  # type: ignore[attr-defined]
            f"kernel-tmp-{Path(notebook.name).stem}", numbered=True))
        notebook.stash[_KERNEL_TMPDIR] = tmpdir
        extended.append(NothingLeftBehind.from_parent(notebook, name="nothing left behind",
                                                      tmpdir=tmpdir))
    items[:] = extended


_KERNEL_TMPDIR = pytest.StashKey[Path]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Quiz answers and exercise checks record the learner's progress (ckptlab/lab/progress.py):
    under pytest - every test and every lesson's kernel, which inherits the variable - they go
    to a temporary file, never to the user's own record."""
    if "CKPTLAB_PROGRESS_FILE" not in os.environ:
        folder = session.config._tmp_path_factory.mktemp("progress")  # type: ignore[attr-defined]
        os.environ["CKPTLAB_PROGRESS_FILE"] = str(folder / "progress.json")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    """Start each lesson's kernel with its own TMPDIR (the kernel starts in the setup of the
    notebook's first cell; the variable is restored right after)."""
    notebook = item.parent
    tmpdir = (notebook.stash.get(_KERNEL_TMPDIR, None)
              if IPyNbFile is not None and isinstance(notebook, IPyNbFile)
              and notebook.kernel is None else None)
    if tmpdir is None:
        yield
        return
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmpdir)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
