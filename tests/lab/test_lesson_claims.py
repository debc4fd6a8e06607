"""Claims the lessons make about what a run does, checked on real runs (issue 24): each test
fails on the sentence or the function that used to teach the wrong model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from ckptlab import DQNConfig, Trainer  # noqa: E402
from ckptlab.lab.ablation import (  # noqa: E402
    FULL,
    WHY_IT_MATTERS,
    continue_training,
    divergence,
    first_update,
    resume_with,
    separation_title,
)
from conftest import FAST  # noqa: E402


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory):
    """A checkpoint at step 800, the full resume's next 400 steps, and the resumes without
    the replay buffer and without the counters."""
    config = DQNConfig(**{**FAST, "total_steps": 10**6})
    with Trainer(config, tmp_path_factory.mktemp("run")) as trainer:
        trainer.train(until_step=800)
        checkpoint = trainer.checkpoints.committed()[-1]
        full = continue_training(trainer, 400, eval_key_step=1_200)
    runs = {piece: resume_with(checkpoint, config, FULL - {piece}, 400, eval_key_step=1_200)
            for piece in ("replay_buffer", "counters")}
    return config, full, runs


def test_an_empty_replay_buffer_does_not_pause_learning_it_spikes_the_loss(resumed_runs):
    config, full, runs = resumed_runs
    empty = runs["replay_buffer"]
    assert first_update(empty) == first_update(full) == config.train_every  # no pause
    assert empty.losses[0] > full.losses[0]  # a batch drawn from a handful of transitions
    assert "does not pause" in WHY_IT_MATTERS["replay_buffer"]
    assert "pause in learning until it refills" not in WHY_IT_MATTERS["replay_buffer"]


def test_reset_counters_pause_learning_and_the_title_says_so(resumed_runs):
    config, full, runs = resumed_runs
    reset = runs["counters"]
    assert reset.epsilons[0] == 1.0 and full.epsilons[0] < 1.0
    assert first_update(reset) > config.learning_starts >= first_update(full)
    title = separation_title(reset, full)
    # not "separates at step +4": at +4 only the full resume updated
    assert title.startswith(f"no update until +{first_update(reset)}"), title
    assert divergence(reset, full)["first update (steps after resume)"] == first_update(reset)
    assert "learning_starts" in WHY_IT_MATTERS["counters"]
    assert "pauses" in WHY_IT_MATTERS["counters"]


def test_runs_that_update_on_the_same_steps_are_titled_by_their_separation(resumed_runs):
    _, full, runs = resumed_runs
    assert separation_title(runs["replay_buffer"], full).startswith("separates at step +")
    assert separation_title(dataclasses.replace(full), full) == "identical to the full resume"


# -- lesson 10: what a run without checkpoints costs -----------------------------------------

def _simulated_completion(work, mtbf, interval, save, runs, rng):
    """Monte Carlo of the model expected_completion_time states: failures at exponential
    times, each one sending the run back to its last completed save."""
    segments = [interval] * int(work // interval) + ([work % interval] if work % interval else [])
    total = 0.0
    for _ in range(runs):
        for seconds in segments:
            need = seconds + save
            while True:
                failure = rng.exponential(mtbf)
                if failure >= need:
                    total += need
                    break
                total += failure
    return total / runs


@pytest.mark.parametrize("interval, save", [(None, 0.0), (1.0, 0.1), (1.5, 0.0)])
def test_expected_completion_time_matches_a_simulation_of_its_model(interval, save):
    from ckptlab.lab.practice import expected_completion_time

    work, mtbf = 4.0, 1.5
    formula = expected_completion_time(work, mtbf, interval_s=interval, save_s=save)
    simulated = _simulated_completion(work, mtbf, interval or work, save, 20_000,
                                      np.random.default_rng(0))
    assert formula == pytest.approx(simulated, rel=0.05)


def test_a_day_without_checkpoints_failing_every_2_hours_takes_years_not_36_hours():
    from ckptlab.lab.practice import checkpoint_advice, expected_completion_time

    hour = 3600.0
    without = expected_completion_time(24 * hour, 2 * hour) / hour
    assert without == pytest.approx(2 * (np.exp(12) - 1), rel=1e-9) and without > 3e5
    advice = checkpoint_advice(5, 2, 24)
    assert "3.3e+05 h" in advice and "with these saves 24.9 h" in advice
    assert "12 h" not in advice  # the old "redo 12 h" assumed exactly one failure


# -- lesson 4: what a SIGKILL test cannot see ------------------------------------------------

def test_bytes_never_fsynced_survive_a_sigkill_so_sigkill_cannot_test_fsync(tmp_path):
    from ckptlab import CkptlabError
    from ckptlab.lab.resume_lab import write_then_sigkill

    result = write_then_sigkill(tmp_path / "unsynced.bin", size=1 << 16)
    assert result.exit_status == -9 and result.intact
    assert result.bytes_read_back == result.bytes_written == 1 << 16
    assert "without ever calling fsync" in result.describe()
    with pytest.raises(CkptlabError, match="multiple of 256"):
        write_then_sigkill(tmp_path / "x", size=100)


def test_lesson_4_and_its_quiz_no_longer_equate_sigkill_with_a_power_cut():
    import json

    from ckptlab.lab.quiz import load_quiz

    lesson = json.loads((Path(__file__).resolve().parents[2] / "notebooks"
                         / "04_interrupt_and_resume.ipynb").read_text())
    text = " ".join("".join(c["source"]) for c in lesson["cells"]
                    if c["cell_type"] == "markdown").lower()
    quiz = load_quiz("04_interrupt_and_resume")
    explanations = " ".join(c.explanation for q in quiz.questions for c in q.choices).lower()
    for said in (text, explanations):
        assert "pulling the plug" not in said and "pulled plug" not in said
        assert "after any interruption" not in said
    assert "page cache" in text and "fsync" in text and "power" in text


# -- lesson 7: the order of the commit and the pointer ---------------------------------------

def test_killed_after_the_commit_and_at_the_pointer_swap_leave_the_same_state():
    """The next `latest` is written to its temporary file with the checkpoint's files, before
    the commit; the two phases are therefore indistinguishable on disk, and the picker says so."""
    import re

    from ckptlab.lab.fault_lab import FAULTS, stage_fault

    def state(report):
        return ([re.sub(r"-[0-9a-f]{8}$", "-<tag>", name) for name in report.listing],
                report.latest, report.verify, report.resumed_from, report.final_step)

    committed, pointer = stage_fault("kill:save:committed"), stage_fault("kill:save:pointer-temp")
    assert state(committed) == state(pointer)
    assert any(name.startswith(".tmp-latest-") for name in committed.listing)
    assert "same state" in FAULTS["kill:save:pointer-temp"]
    assert "before the commit" in FAULTS["kill:save:pointer-temp"]


# -- lesson 12: plan a long run --------------------------------------------------------------

def test_the_run_plan_check_knows_the_wrong_models_it_meets():
    import math

    from ckptlab.lab.practice import check_run_plan, expected_completion_time, optimal_interval

    setting = {"run_hours": 48, "mtbf_hours": 6, "save_seconds": 30}
    every = optimal_interval(30, 6 * 3600)
    right = {"save_every_s": every,
             "finish_with_h": expected_completion_time(48 * 3600, 6 * 3600, interval_s=every,
                                                       save_s=30) / 3600,
             "finish_without_h": 6 * math.expm1(8)}
    assert check_run_plan(right, **setting).passed
    assert check_run_plan(None, **setting).passed is None
    naive = check_run_plan({"save_every_s": math.sqrt(30 * 6 * 3600), "finish_with_h": 48,
                            "finish_without_h": 72}, **setting)
    assert naive.passed is False and "factor 2" in naive.message
    assert "restarts the run from zero" in naive.message and "leaves out" in naive.message
    assert check_run_plan({"save_every_s": 1}, **setting).passed is False


# -- the start page and the lessons' ends ---------------------------------------------------

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _markdown(path):
    import json

    return ["".join(c["source"]) for c in json.loads(path.read_text("utf-8"))["cells"]
            if c["cell_type"] == "markdown"]


def test_every_lesson_ends_with_further_reading():
    """Lessons 1-12 each close with a "Further reading" list of real links (lesson 11 had
    none)."""
    lessons = [p for p in LESSONS if p.stem[:2] != "00"]
    assert [int(p.stem[:2]) for p in lessons] == list(range(1, 13))
    for path in lessons:
        reading = [m for m in _markdown(path) if m.startswith("## Further reading")]
        assert len(reading) == 1, path.stem
        items = [line for line in reading[0].splitlines() if line.startswith("- ")]
        assert items and all("](http" in item for item in items), path.stem


def test_the_glossary_states_the_learning_starts_of_every_lesson():
    """The glossary's "learning_starts" sentence is true of each lesson's runs (it once said
    500 for every lesson but 1 and 9; lesson 11's run uses 200, lesson 7's staged faults 250)."""
    import re

    from ckptlab.lab.fault_lab import fault_config

    glossary = next(m for m in _markdown(NOTEBOOKS / "00_start_here.ipynb") if "## Glossary" in m)
    sentence = next(line for line in glossary.splitlines() if "`learning_starts`" in line)
    by_value: dict[int, set[int]] = {}
    for path in LESSONS:
        code = path.read_text("utf-8")
        for value in re.findall(r"learning_starts=(\d[\d_]*)", code):
            by_value.setdefault(int(value.replace("_", "")), set()).add(int(path.stem[:2]))
    others = max(by_value, key=lambda v: len(by_value[v]))
    assert others == 500, by_value
    for value, lessons in by_value.items():
        if value != others:
            named = " and ".join(str(n) for n in sorted(lessons))
            assert f"{value} in lesson{'s' if len(lessons) > 1 else ''} {named}" in sentence, \
                (value, lessons, sentence)
    assert f"{fault_config().learning_starts} in lesson 7's staged faults" in sentence
    assert f"{others} in the lessons' other runs" in sentence
    assert f"{DQNConfig().learning_starts} by default" in sentence


def test_the_closing_reviews_size_is_told_as_it_is():
    """README, the start page and lesson 12 name how many questions the closing review asks;
    the number is the bank's."""
    from ckptlab.lab.quiz import load_quiz

    words = {15: "fifteen", 16: "sixteen", 17: "seventeen", 18: "eighteen", 19: "nineteen",
             20: "twenty"}
    count = len(load_quiz("12_closing_review").questions)
    assert count in words, count
    texts = {"README.md": (NOTEBOOKS.parent / "README.md").read_text("utf-8"),
             "00_start_here": (NOTEBOOKS / "00_start_here.ipynb").read_text("utf-8"),
             "12_closing_review": (NOTEBOOKS / "12_closing_review.ipynb").read_text("utf-8")}
    for name, text in texts.items():
        told = {n for n, word in words.items() if f"{word} scenario" in text
                or f"{word} questions" in text or f"asks {word}" in text}
        assert told == {count}, (name, told, count)
