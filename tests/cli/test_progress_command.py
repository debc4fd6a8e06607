"""`ckptlab progress`: the same map as the start page, a reset that keeps the old file, and a
damaged file named in one error line and left untouched."""

from __future__ import annotations

import json

import pytest

from ckptlab.cli import main
from ckptlab.lab.progress import record_answer, record_exercise


@pytest.fixture
def progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("CKPTLAB_PROGRESS_FILE", str(path))
    monkeypatch.delenv("CKPTLAB_PROGRESS", raising=False)
    return path


def test_progress_prints_the_map(progress_file, capsys):
    assert main(["progress"]) == 0
    assert "0 of" in capsys.readouterr().out
    record_answer("04_interrupt_and_resume", "sigkill", kind="single", correct=False)
    record_exercise("04_interrupt_and_resume", "lost_steps", True)
    assert main(["progress"]) == 0
    out = capsys.readouterr().out
    assert str(progress_file) in out
    line = next(line for line in out.splitlines() if line.startswith("Lesson 4:"))
    assert "started" in line and "0/" in line and line.rstrip().endswith("1/1")
    assert "To revisit:" in out and "04_interrupt_and_resume.ipynb" in out
    assert main(["progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "ckptlab-progress"


def test_progress_reset_keeps_the_old_record(progress_file, capsys):
    record_answer("01_pipeline_trace", "why-checkpoint", kind="single", correct=True)
    before = progress_file.read_bytes()
    assert main(["progress", "--reset"]) == 0
    out = capsys.readouterr().out
    kept = next(p for p in progress_file.parent.iterdir() if ".reset-" in p.name)
    assert str(kept) in out and kept.read_bytes() == before and not progress_file.exists()
    assert main(["progress", "--reset"]) == 0
    assert "nothing to reset" in capsys.readouterr().out


def test_a_damaged_progress_file_is_one_error_line_and_stays(progress_file, capsys):
    progress_file.write_text("{not json")
    assert main(["progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--reset" in err
    assert progress_file.read_text() == "{not json"
