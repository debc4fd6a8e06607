"""Append (or refresh) the previous / next links at the end of every lesson notebook.

    .venv/bin/python tools/add_navigation.py          # rewrite the navigation cells in place
    .venv/bin/python tools/add_navigation.py --check  # exit 1 if any is missing or stale

Each notebook ends with one markdown cell (id ``navigation-links``) linking, relatively, to the
previous and next lesson of the learning path in :data:`LESSONS` and to the start page. Only
lessons present in ``notebooks/`` are linked, so after adding a lesson, run this again
(``tests/lab/test_notebook_hygiene.py`` fails until the links are up to date). Nothing but that last
cell is touched; outputs and other cells are left exactly as they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_ID = "navigation-links"

# The learning path, in order: notebook stem -> the title the links show.
LESSONS = {
    "00_start_here": "Start here",
    "01_pipeline_trace": "Lesson 1 — The checkpoint pipeline",
    "02_prediction_trace": "Lesson 2 — One prediction",
    "03_loss_curves": "Lesson 3 — The training trace",
    "04_interrupt_and_resume": "Lesson 4 — Interrupted vs uninterrupted",
    "05_what_goes_in_a_checkpoint": "Lesson 5 — What a checkpoint must hold",
    "06_retention_strategies": "Lesson 6 — Which checkpoints to keep",
    "07_failure_modes": "Lesson 7 — Failure modes",
    "08_review": "Lesson 8 — Review",
    "09_when_one_machine_is_not_enough": "Lesson 9 — When one machine is not enough",
    "10_checkpointing_in_practice": "Lesson 10 — Checkpointing in practice",
    "11_bring_your_own_library": "Lesson 11 — Bring your own library",
    "12_closing_review": "Lesson 12 — Closing review",
}


def present_lessons(directory: Path = NOTEBOOKS) -> list[str]:
    """The lessons of the learning path that exist in ``directory``, in order."""
    return [stem for stem in LESSONS if (directory / f"{stem}.ipynb").exists()]


def navigation_markdown(stem: str, present: list[str]) -> str:
    """The navigation cell's text for lesson ``stem`` among the ``present`` lessons."""
    i = present.index(stem)
    parts = []
    if i > 0:
        prev = present[i - 1]
        parts.append(f"**← Previous:** [{LESSONS[prev]}]({prev}.ipynb)")
    if i + 1 < len(present):
        nxt = present[i + 1]
        parts.append(f"**Next →** [{LESSONS[nxt]}]({nxt}.ipynb)")
    if stem != "00_start_here" and "00_start_here" in present and \
            (i == 0 or present[i - 1] != "00_start_here"):
        parts.append("[All lessons](00_start_here.ipynb)")
    return "---\n\n" + " &nbsp;·&nbsp; ".join(parts)


def is_navigation(cell: dict) -> bool:
    return cell.get("id") == CELL_ID


def update(path: Path, present: list[str], check: bool) -> bool:
    """Make ``path``'s last cell its navigation cell; return whether anything changed."""
    nb = nbformat.read(path, as_version=4)
    text = navigation_markdown(path.stem, present)
    last = nb.cells[-1] if nb.cells else None
    if last is not None and is_navigation(last) and last.cell_type == "markdown" \
            and last.source == text and not any(is_navigation(c) for c in nb.cells[:-1]):
        return False
    if not check:
        nb.cells = [c for c in nb.cells if not is_navigation(c)]
        nb.cells.append(nbformat.v4.new_markdown_cell(text, id=CELL_ID))
        nbformat.write(nb, path)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a navigation cell is missing or stale")
    args = parser.parse_args()
    present = present_lessons()
    stale = [stem for stem in present
             if update(NOTEBOOKS / f"{stem}.ipynb", present, args.check)]
    unknown = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                     if p.stem not in LESSONS)
    if unknown:
        print(f"not in LESSONS (add them to tools/add_navigation.py): {', '.join(unknown)}")
    if args.check:
        if stale:
            print(f"navigation missing or stale in: {', '.join(stale)}; run "
                  "python tools/add_navigation.py")
        return 1 if stale or unknown else 0
    print(f"navigation updated in {len(stale)} of {len(present)} notebooks")
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
