"""Predict, then run (issue 24): the question a live control asks before its run, graded through
the quiz machinery once the real run has answered; the static render (question, the default
run's result, the answer folded); and the predictions of lessons 4, 5, 7 and 9."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import ipywidgets as widgets
import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")

from ckptlab import CkptlabError, DQNConfig, Trainer  # noqa: E402
from ckptlab.lab.ablation import (  # noqa: E402
    FULL,
    LOSS_BEHAVIOURS,
    WhatToSaveLab,
    continue_training,
    loss_behaviour,
    resume_with,
)
from ckptlab.lab.fault_lab import FAULTS, FaultPicker, FaultReport  # noqa: E402
from ckptlab.lab.predict import Outcome, Prediction, PredictLiveView, show_predict_live  # noqa: E402
from ckptlab.lab.quiz import choice_order  # noqa: E402
from ckptlab.lab.rank_kill_lab import RANK0_ONLY_PHASES, RankKillPicker  # noqa: E402
from ckptlab.lab.resume_lab import KillResumeLab  # noqa: E402
from conftest import FAST  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from refresh_notebooks import clean  # noqa: E402

WIDGET = "application/vnd.jupyter.widget-view+json"


class Doubler:
    """A toy demonstration: doubles its input, and can be told to double wrongly."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.runs = 0

    def render(self, x: int) -> str:
        self.runs += 1
        self.last = 2 * x
        return f"twice {x} is {self.last}"

    def predictions(self) -> list[Prediction]:
        return [Prediction(
            "double", lambda x: f"What is twice {x}?",
            lambda x: [Outcome(2 * x, str(2 * x), "Doubling adds the number to itself."),
                       Outcome(x + 2, str(x + 2), "That adds 2; doubling adds the number."),
                       Outcome(x * x, str(x * x), "That squares the number.")],
            lambda **_: self.last)]


def view_of(demo: Doubler, value: int = 3) -> PredictLiveView:
    return PredictLiveView(demo.render, {"x": widgets.IntSlider(value=value, min=1, max=9)},
                           demo.predictions(), run_button="Run", seed=5)


def test_a_right_prediction_is_scored_after_the_run_answers_it():
    demo = Doubler()
    view = view_of(demo)
    question = view.questions()[0]
    assert list(view.pickers[0].options) == [question.choices[i].text
                                             for i in choice_order(question, 5)]
    assert demo.runs == 0 and not any(c.correct for c in question.choices)  # asked first
    view.choose(0, "6")
    view.button.click()
    assert demo.runs == 1 and "twice 3 is 6" in str(view.output.outputs)
    assert "right." in view.verdict.value and "The run: <b>6</b>" in view.verdict.value
    assert "1 of 1 right at the first try" in view.score_label.value


def test_the_first_try_counts_per_setting_and_a_blank_prediction_is_not_scored():
    demo = Doubler()
    view = view_of(demo)
    view.choose(0, "5")                       # 3 + 2: wrong
    view.refresh()
    assert "not this time" in view.verdict.value and "That adds 2" in view.verdict.value
    view.choose(0, "6")
    view.refresh()                            # right now, but the first try stays wrong
    assert "0 of 1 right at the first try" in view.score_label.value
    assert "now 1 of 1" in view.score_label.value
    view.controls["x"].value = 4              # another setting: another question, choices reset
    assert view.pickers[0].value is None and "8" in view.pickers[0].options
    view.refresh()                            # no prediction made
    assert "No prediction made" in view.verdict.value and "twice 4 is 8" in str(
        view.output.outputs)
    assert "of 1 right" in view.score_label.value   # still one scored question


def test_an_answer_outside_the_offered_outcomes_is_an_error_not_a_wrong_grade():
    prediction = Prediction("p", lambda **_: "q?", lambda **_: [Outcome(1, "one", "x" * 30)],
                            lambda **_: 2)
    with pytest.raises(CkptlabError, match="not among the answers"):
        prediction.question({}, truth=2)
    twice = Prediction("p", lambda **_: "q?", lambda **_: [Outcome(1, "a", "x"),
                                                          Outcome(1, "b", "y")], lambda **_: 1)
    with pytest.raises(CkptlabError, match="repeat"):
        twice.question({})


def test_the_static_render_shows_the_question_then_the_run_and_folds_the_answer(monkeypatch):
    """One output: a live front end renders the widget, whose live area stays empty until the
    learner runs it (no spoiler of the default run); a committed notebook, once cleaned, keeps
    the question, the default run's result and the folded answer, in that order."""
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    demo = Doubler()
    view = show_predict_live(demo.render, {"x": widgets.IntSlider(value=3)}, demo.predictions(),
                             run_button="Run", seed=0)
    assert shown == [view] and demo.runs == 1 and view.output.outputs == ()
    bundle = view._repr_mimebundle_()
    assert WIDGET in bundle
    page = bundle["text/html"]
    question, result, answer = (page.index("What is twice 3?"), page.index("twice 3 is 6"),
                                page.index("What the run answered"))
    assert question < result < answer and "<details" in page[result:]
    assert page.index("6</b>") > answer           # the right answer only inside the fold
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "x", outputs=[nbformat.v4.new_output("display_data", data=bundle)])])
    clean(nb)
    assert list(nb.cells[0].outputs[0]["data"]) == ["text/html"]


# -- lesson 4 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kill_lab(tmp_path_factory):
    config = DQNConfig(**{**FAST, "total_steps": 1_600})
    with Trainer(config, tmp_path_factory.mktemp("reference")) as trainer:
        reference = trainer.train().last_checkpoint.path
    lab = KillResumeLab(config, reference)
    yield lab
    lab.close()


def test_lesson4_offers_the_real_misconceptions_and_the_run_answers(kill_lab):
    resume, final = kill_lab.predictions()
    keys = [o.key for o in resume.outcomes(kill_at_step=1_000, save_every=400)]
    assert keys == [800, 1_000, 1_200, 0]     # last save, the kill, the next save, the start
    early = resume.outcomes(kill_at_step=300, save_every=800)
    assert early[0].key == 0 and early[0].text == "From the start (step 0)"
    assert [o.key for o in final.outcomes()] == ["identical", "close", "different"]
    with pytest.raises(CkptlabError, match="press Kill & resume"):
        resume.answer()
    view = PredictLiveView(kill_lab.render,
                           {"kill_at_step": widgets.IntSlider(value=1_000, max=1_599),
                            "save_every": widgets.Dropdown(options=[400, 800], value=400)},
                           kill_lab.predictions(), run_button="Kill & resume", seed=1)
    view.choose(0, "From step 1000")           # the misconception: the kill step
    view.choose(1, view.correct_text(1, "identical"))
    view.refresh()
    assert resume.answer() == 800 and final.answer() == "identical"
    assert "The run: <b>From step 800</b>" in view.verdict.value
    assert "1 of 2 right at the first try" in view.score_label.value


# -- lesson 5 --------------------------------------------------------------------------------

def test_lesson5_classifies_what_the_loss_does(tmp_path):
    config = DQNConfig(**{**FAST, "total_steps": 10**6})
    with Trainer(config, tmp_path / "run") as trainer:
        trainer.train(until_step=800)
        checkpoint = trainer.checkpoints.committed()[-1]
        full = continue_training(trainer, 400, eval_key_step=1_200)
    assert loss_behaviour(resume_with(checkpoint, config, FULL - {"metrics"}, 400, 1_200),
                          full) == "identical"
    assert loss_behaviour(resume_with(checkpoint, config, FULL - {"counters"}, 400, 1_200),
                          full) == "pause"
    assert loss_behaviour(resume_with(checkpoint, config, FULL - {"rng"}, 400, 1_200),
                          full) == "early"
    lab = WhatToSaveLab(checkpoint, config, 400, 1_200, reference=full)
    try:
        (prediction,) = lab.predictions()
        ticks = {piece: piece != "counters" for piece in FULL}
        assert "without counters" in prediction.prompt(**ticks)
        assert "counters" not in prediction.prompt(mystery=True, **ticks)
        assert [o.key for o in prediction.outcomes()] == list(LOSS_BEHAVIOURS)
        lab.render(**ticks)
        assert prediction.answer() == "pause"
    finally:
        lab.close()


# -- lesson 7 --------------------------------------------------------------------------------

def report(verify, resumed_from):
    return FaultReport("corrupt:state", 1000, None, [], "step_00001000", verify, [],
                       resumed_from, 1500, [], 0.0)


def test_lesson7_reads_verify_and_the_resume_off_the_staged_report():
    picker = FaultPicker()
    verify, resume = picker.predictions()
    with pytest.raises(CkptlabError, match="Stage it"):
        verify.answer()
    for fault in FAULTS:
        assert [o.key for o in verify.outcomes(fault=fault)] == ["ok", "refused", "absent"]
        assert [o.key for o in resume.outcomes(fault=fault)] == [1000, 500, 0]
    picker.last = report([("step_00000500", "ok"), ("step_00001000", "SHA-256 differs")], 500)
    assert verify.answer() == "refused" and resume.answer() == 500
    picker.last = report([("step_00000500", "ok")], 500)
    assert verify.answer() == "absent"
    picker.last = report([("step_00000500", "ok"), ("step_00001000", "ok")], 1000)
    assert verify.answer() == "ok" and resume.answer() == 1000


# -- lesson 9 --------------------------------------------------------------------------------

def test_lesson9_distinguishes_a_restart_a_fresh_start_and_no_kill_at_all(tmp_path):
    (tmp_path / "step_00000600").mkdir()
    picker = RankKillPicker(SimpleNamespace(), tmp_path / "step_00000600", step=400,
                            save_every=200)
    try:
        resume, identical = picker.predictions()
        assert [o.key for o in resume.outcomes(rank=1, phase="step")] == [400, 200, 0,
                                                                          "no kill"]
        outcome = SimpleNamespace(attempts=("a", "b"), resumed_from_step=200, identical=True,
                                  rows=lambda: [{"restart resumed from": "step 200"}])
        picker.remember(1, "save:shard-written", outcome)
        picker.render(1, "save:shard-written")              # remembered: nothing is trained
        assert resume.answer() == 200 and identical.answer() == "yes"
        picker.remember(1, RANK0_ONLY_PHASES[1], SimpleNamespace(
            attempts=("a",), resumed_from_step=None, identical=True, rows=lambda: []))
        picker.render(1, RANK0_ONLY_PHASES[1])
        assert resume.answer() == "no kill"
        with pytest.raises(CkptlabError, match="unknown phase"):
            picker.run(0, "save:lunch")
    finally:
        picker.close()
