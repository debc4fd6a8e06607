"""The learner's progress file (ckptlab/lab/progress.py): where it is, what it records, that two
kernels writing at once both land, that a damaged or foreign file is never overwritten, and
that a reset keeps the old file."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from pathlib import Path

import nbformat
import pytest

from ckptlab.lab import progress
from ckptlab.lab.progress import (
    EXERCISES,
    ProgressFileError,
    read_progress,
    record_answer,
    record_exercise,
    records_exercise,
    reset_progress,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "data" / "progress.json"


def test_where_the_file_is(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": ""}
    if sys.platform.startswith("linux"):
        assert progress.progress_path(env) == tmp_path / ".local/share/ckptlab/progress.json"
    assert progress.progress_path({**env, "CKPTLAB_DATA_DIR": "/x"}) == Path("/x/progress.json")
    assert progress.progress_path({**env, "CKPTLAB_DATA_DIR": "/x",
                                   "CKPTLAB_PROGRESS_FILE": "/y/p.json"}) == Path("/y/p.json")
    assert progress.progress_path({**env, "CKPTLAB_PROGRESS_FILE": "/y/p.json",
                                   "CKPTLAB_PROGRESS": "off"}) is None


def test_the_tests_never_touch_the_learners_own_file():
    # conftest.py points every test and every nbval kernel at a temporary file
    assert progress.progress_path() != progress.user_data_dir() / "progress.json"


def test_answers_keep_the_first_try_and_the_latest_verdict(path):
    record_answer("04_interrupt_and_resume", "sigkill", kind="single", correct=False, path=path)
    record_answer("04_interrupt_and_resume", "sigkill", kind="single", correct=True, path=path)
    record_answer("04_interrupt_and_resume", "lost-steps", kind="recall", correct=True,
                  answer="1200", path=path)
    record_answer("04_interrupt_and_resume", "graceful", kind="single", correct=None,
                  revealed_first=True, path=path)  # "Show answer" before any attempt
    data = read_progress(path)
    assert data["format"] == "ckptlab-progress" and data["version"] == 1
    questions = data["lessons"]["04_interrupt_and_resume"]["questions"]
    assert questions["sigkill"]["first_try"] is False and questions["sigkill"]["correct"] is True
    assert questions["sigkill"]["attempts"] == 2
    assert questions["lost-steps"] == {**questions["lost-steps"], "first_try": True,
                                       "answer": "1200", "attempts": 1}
    assert questions["graceful"]["first_try"] is False and questions["graceful"]["attempts"] == 0
    # the file is plain, documented JSON
    assert json.loads(path.read_text("utf-8")) == data


def test_exercises_record_passes_and_failures(path):
    record_exercise("04_interrupt_and_resume", "lost_steps", False, "off by one", path=path)
    entry = read_progress(path)["lessons"]["04_interrupt_and_resume"]["exercises"]["lost_steps"]
    assert entry["passed"] is False and entry["attempts"] == 1
    record_exercise("04_interrupt_and_resume", "lost_steps", True, "1200 steps", path=path)
    record_exercise("04_interrupt_and_resume", "lost_steps", False, "broke it again", path=path)
    entry = read_progress(path)["lessons"]["04_interrupt_and_resume"]["exercises"]["lost_steps"]
    assert entry["passed"] is True and entry["last_passed"] is False and entry["attempts"] == 3
    assert entry["first_passed_at"]


def test_recording_switched_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTLAB_PROGRESS", "off")
    monkeypatch.setenv("CKPTLAB_DATA_DIR", str(tmp_path))
    assert record_answer("01_pipeline_trace", "why-checkpoint", kind="single",
                         correct=True) is None
    assert list(tmp_path.iterdir()) == []


def _write_answers(path: Path, name: str, start: float) -> None:
    while time.time() < start:   # both processes exist by then; then they race
        time.sleep(0.001)
    for i in range(40):
        record_answer("01_pipeline_trace", f"{name}-{i}", kind="single", correct=i % 2 == 0,
                      path=path)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_two_kernels_writing_at_once_lose_nothing(path):
    path.parent.mkdir(parents=True)
    start = time.time() + 0.5
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=_write_answers, args=(path, name, start))
               for name in ("kernel-a", "kernel-b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    questions = read_progress(path)["lessons"]["01_pipeline_trace"]["questions"]
    assert len(questions) == 80, f"lost {80 - len(questions)} of 80 answers"
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("content, says", [
    (b"{\"format\": \"ckptlab-progress\", \"version\": 1, \"less", "not valid JSON"),
    (b"\xff\xfe not even text", "not valid JSON"),
    (b"[1, 2, 3]", "not a ckptlab progress file"),
    (b"{\"theme\": \"dark\"}", "not a ckptlab progress file"),
    (b"{\"format\": \"ckptlab-progress\", \"version\": 1, \"lessons\": [1]}", "damaged"),
    (b"{\"format\": \"ckptlab-progress\", \"version\": 7, \"lessons\": {}}", "newer ckptlab"),
], ids=["truncated", "binary", "a-list", "foreign", "damaged", "newer"])
def test_a_damaged_or_foreign_file_is_named_and_never_overwritten(path, content, says):
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ProgressFileError, match=says) as caught:
        record_answer("01_pipeline_trace", "why-checkpoint", kind="single", correct=True,
                      path=path)
    assert str(path) in str(caught.value)
    if says != "newer ckptlab":
        assert "ckptlab progress --reset" in str(caught.value)
    with pytest.raises(ProgressFileError):
        read_progress(path)
    assert path.read_bytes() == content, "the file was changed"


def test_reset_keeps_the_old_file_beside_the_new_record(path):
    record_answer("01_pipeline_trace", "why-checkpoint", kind="single", correct=True, path=path)
    before = path.read_bytes()
    backup = reset_progress(path)
    assert backup is not None and backup.parent == path.parent
    assert backup.name.startswith("progress.json.reset-") and backup.read_bytes() == before
    assert not path.exists() and read_progress(path)["lessons"] == {}
    assert reset_progress(path) is None   # nothing left to reset
    # a damaged file can be reset too, and is kept
    path.write_bytes(b"garbage")
    assert reset_progress(path).read_bytes() == b"garbage"


def test_the_map_shows_scores_exercises_and_what_to_revisit(path):
    lesson = "04_interrupt_and_resume"
    record_answer(lesson, "sigkill", kind="single", correct=False, path=path)
    record_answer(lesson, "sigkill", kind="single", correct=True, path=path)
    record_answer(lesson, "graceful", kind="single", correct=True, path=path)
    record_exercise(lesson, "lost_steps", True, path=path)
    record_exercise("03_loss_curves", "moving_average", False, path=path)
    rows = {r.lesson: r for r in summarise(read_progress(path))}
    four = rows[lesson]
    assert (four.first_try, four.answered, four.correct_now) == (1, 2, 2)
    assert (four.exercises, four.exercises_passed, four.status) == (1, 1, "started")
    assert [v.what for v in four.revisit] == [
        next(q.prompt for q in progress_quiz(lesson) if q.id == "sigkill")]
    assert four.revisit[0].link.startswith(f"{lesson}.ipynb#")
    assert rows["03_loss_curves"].revisit[0].what == "exercise moving_average"
    assert rows["01_pipeline_trace"].status == "not started"
    text = progress.progress_text(list(rows.values()), path)
    assert "To revisit" in text and "sigkill" not in text and str(path) in text
    page = progress.progress_html(list(rows.values()))
    assert f"href='{four.revisit[0].link}'" in page


def test_a_lesson_is_done_when_every_question_is_tried_and_every_exercise_passed(path):
    lesson = "04_interrupt_and_resume"
    for q in progress_quiz(lesson):
        if q.scored:
            record_answer(lesson, q.id, kind=q.kind, correct=True, path=path)
    assert next(r for r in summarise(read_progress(path)) if r.lesson == lesson).status \
        == "started"
    record_exercise(lesson, "lost_steps", True, path=path)
    row = next(r for r in summarise(read_progress(path)) if r.lesson == lesson)
    assert row.done and row.first_try == row.questions and not row.revisit


def progress_quiz(lesson):
    from ckptlab.lab.quiz import load_quiz

    return load_quiz(lesson).questions


def test_an_exercise_check_records_its_verdict_but_not_an_untouched_template(path, monkeypatch):
    from ckptlab.lab.exercises import ExerciseResult

    monkeypatch.setenv("CKPTLAB_PROGRESS_FILE", str(path))
    verdicts = iter([ExerciseResult(None, "not done yet"), ExerciseResult(False, "no"),
                     ExerciseResult(True, "yes")])
    check = records_exercise("04_interrupt_and_resume", "lost_steps")(lambda: next(verdicts))
    assert check().passed is None and not path.exists()
    assert check().passed is False and check().passed is True
    entry = read_progress(path)["lessons"]["04_interrupt_and_resume"]["exercises"]["lost_steps"]
    assert entry["attempts"] == 2 and entry["passed"] is True
    # a damaged progress file never hides the verdict; it is named in the message instead
    path.write_bytes(b"garbage")
    result = records_exercise("04_interrupt_and_resume", "lost_steps")(
        lambda: ExerciseResult(True, "right"))()
    assert result.passed is True and "progress not saved" in result.message
    assert path.read_bytes() == b"garbage"


def test_every_lessons_exercise_is_known_to_the_map():
    found = {}
    for notebook in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(notebook, as_version=4)
        names = tuple(c.metadata["ckptlab"]["exercise"] for c in nb.cells
                      if "exercise" in c.metadata.get("ckptlab", {}))
        if names:
            found[notebook.stem] = names
    assert found == EXERCISES, ("add each lesson's exercise cells (metadata ckptlab.exercise) "
                                "to EXERCISES in ckptlab/lab/progress.py")
