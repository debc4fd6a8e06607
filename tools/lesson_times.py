"""How long a lesson takes a learner, from what the learner has to do in it - not only how long its
cells run.

    .venv/bin/python tools/lesson_times.py           # one line per lesson, and the stated time

The model walks a lesson's path and adds up, for a careful first pass:

* reading its text at 130 words a minute (technical prose with tables and formulas; code cells
  count at a third of their words: a learner skims them, and reads the comments);
* looking at each figure (40 s) and each table (20 s) in its committed outputs;
* each live control (3 min: two or three settings tried, the result read) and each control
  that asks for a prediction first (1 min more);
* the quiz: 1 min per choice question, 2 min per typed answer;
* the exercise: 10 min (write, check, read the feedback, often a second try);
* running the cells: the time ``tools/refresh_notebooks.py`` measures, about half a minute.

``estimate(path)`` returns the minutes and their breakdown; each lesson states its time in its
first cell ("*Time: about N minutes*"), and tests/lab/test_lesson_times.py keeps the two within
five minutes of each other. The model is an estimate from the lesson's content, not a measurement
of learners; it is the same rule for every lesson, so the times compare.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
sys.path.insert(0, str(REPO))

WORDS_PER_MINUTE = 130
CODE_WEIGHT = 1 / 3
FIGURE_S, TABLE_S = 40, 20
CONTROL_MIN, PREDICT_MIN = 3.0, 1.0
CHOICE_MIN, RECALL_MIN = 1.0, 2.0
EXERCISE_MIN = 10.0
RUN_MIN = 0.5
STATED = re.compile(r"\*Time: about (\d+) minutes")


@dataclass(frozen=True)
class Estimate:
    lesson: str
    reading: float
    looking: float
    controls: float
    quiz: float
    exercise: float
    running: float = RUN_MIN

    @property
    def minutes(self) -> float:
        return (self.reading + self.looking + self.controls + self.quiz + self.exercise
                + self.running)

    @property
    def rounded(self) -> int:
        """To the nearest 5 minutes, at least 5."""
        return max(5, int(5 * round(self.minutes / 5)))


def _words(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9][A-Za-z0-9'_.-]*", text))


def estimate(path: Path) -> Estimate:
    nb = json.loads(path.read_text("utf-8"))
    reading = figures = tables = controls = predicts = 0.0
    exercise = 0.0
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            reading += _words(source)
            continue
        reading += CODE_WEIGHT * _words(source)
        if "show_live(" in source or "show_predict_live(" in source:
            controls += 1
        if "show_predict_live(" in source:
            predicts += 1
        if "exercise" in cell.get("metadata", {}).get("ckptlab", {}):
            exercise = EXERCISE_MIN
        for output in cell.get("outputs", []):
            html = "".join(output.get("data", {}).get("text/html", ""))
            figures += html.count("<img") + ("image/png" in output.get("data", {}))
            tables += html.count("<table")
    quiz = 0.0
    bank = REPO / "ckptlab" / "lab" / "quizzes" / f"{path.stem}.json"
    if bank.exists():
        for question in json.loads(bank.read_text("utf-8"))["questions"]:
            quiz += RECALL_MIN if question["kind"] == "recall" else CHOICE_MIN
    return Estimate(path.stem, reading / WORDS_PER_MINUTE,
                    (figures * FIGURE_S + tables * TABLE_S) / 60,
                    controls * CONTROL_MIN + predicts * PREDICT_MIN, quiz, exercise)


def stated_minutes(path: Path) -> int | None:
    """The time the lesson states in its first cell, if it states one."""
    first = "".join(json.loads(path.read_text("utf-8"))["cells"][0]["source"])
    match = STATED.search(first)
    return int(match.group(1)) if match else None


def lessons() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if p.stem != "00_start_here")


def main() -> None:
    print(f"{'lesson':<36} {'read':>5} {'look':>5} {'ctrl':>5} {'quiz':>5} {'exer':>5} "
          f"{'total':>6} {'stated':>6}")
    for path in lessons():
        e = estimate(path)
        print(f"{e.lesson:<36} {e.reading:5.1f} {e.looking:5.1f} {e.controls:5.1f} "
              f"{e.quiz:5.1f} {e.exercise:5.1f} {e.minutes:6.1f} {stated_minutes(path) or '-':>6}")


if __name__ == "__main__":
    main()
