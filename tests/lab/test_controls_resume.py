"""The functions behind lesson 4's and 5's live controls: kill & resume, the save-interval
trade-off, and resuming with a chosen set of checkpoint pieces (including bad values)."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from ckptlab import CkptlabError, DQNConfig, Trainer  # noqa: E402
from ckptlab.dqn.demo import LostWork  # noqa: E402
from ckptlab.lab.ablation import (  # noqa: E402
    COMPONENTS,
    FULL,
    LEAVE_ONE_OUT,
    WhatToSaveLab,
    check_pieces,
    continue_training,
    divergence,
    mystery_level,
    resume_with,
    separation_title,
    what_to_save_controls,
)
from ckptlab.lab.resume_lab import (  # noqa: E402
    KillResumeLab,
    check_kill_step,
    check_save_interval,
    expected_lost_steps,
    kill_and_resume,
    plot_save_tradeoff,
    tradeoff_rows,
    worst_case_lost_steps,
)
from conftest import FAST  # noqa: E402


@pytest.fixture(scope="module")
def small() -> DQNConfig:
    return DQNConfig(**{**FAST, "total_steps": 1_600})


@pytest.fixture(scope="module")
def uninterrupted(small, tmp_path_factory):
    """The uninterrupted run's final checkpoint."""
    with Trainer(small, tmp_path_factory.mktemp("reference")) as trainer:
        return trainer.train().last_checkpoint.path


# -- lesson 4: kill & resume ------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -5, 1_600, 10_000])
def test_a_kill_step_outside_the_run_is_refused_with_the_allowed_range(bad):
    with pytest.raises(CkptlabError, match=r"outside the run.*between 1 and 1599"):
        check_kill_step(bad, 1_600)


@pytest.mark.parametrize("bad", [2.5, "100", True, None])
def test_a_kill_step_that_is_not_a_whole_number_is_refused(bad):
    with pytest.raises(CkptlabError, match="whole number"):
        check_kill_step(bad, 1_600)


@pytest.mark.parametrize("bad", [0, -100, 2.5, None])
def test_a_save_interval_must_be_a_positive_number(bad):
    with pytest.raises(CkptlabError, match="positive number"):
        check_save_interval(bad)


def test_kill_and_resume_redoes_the_steps_after_the_last_save_and_ends_identical(
        small, uninterrupted, tmp_path):
    result = kill_and_resume(small, 1_000, 800, uninterrupted, tmp_path)
    assert (result.kill_at_step, result.resumed_from_step, result.steps_redone) == (1_000, 800, 200)
    assert result.identical and result.max_abs_diff == 0.0
    for name, lost in result.discarded.items():
        assert lost.steps.size and lost.steps.min() > 800 and lost.steps.max() <= 1_000, name
        ref = result.reference[name]
        # deterministic: what the killed attempt did is what the resumed run redid
        assert np.array_equal(lost.values, ref.values[np.isin(ref.steps, lost.steps)]), name
        mine = result.resumed[name]
        assert np.array_equal(mine.steps, ref.steps) and np.array_equal(mine.values, ref.values)


def test_killed_before_the_first_save_resumes_from_the_start(small, uninterrupted, tmp_path):
    result = kill_and_resume(small, 300, 800, uninterrupted, tmp_path)
    assert result.resumed_from_step == 0 and result.steps_redone == 300
    assert result.identical


def test_a_reference_from_another_configuration_is_refused(small, uninterrupted, tmp_path):
    other = dataclasses.replace(small, learning_rate=1e-3)
    with pytest.raises(CkptlabError, match="different configuration"):
        kill_and_resume(other, 1_000, 800, uninterrupted, tmp_path)


def test_a_reference_that_is_not_the_end_of_the_run_is_refused(small, tmp_path):
    with Trainer(small, tmp_path / "partial") as trainer:
        trainer.train(until_step=800)
        middle = trainer.checkpoints.committed()[-1]
    with pytest.raises(CkptlabError, match="not at the end of the run"):
        kill_and_resume(small, 1_000, 800, middle, tmp_path)


def test_the_control_renders_a_figure_and_the_difference_and_cleans_up(small, uninterrupted):
    lab = KillResumeLab(small, uninterrupted)
    try:
        figure, text = lab.render(kill_at_step=1_000, save_every=400)
        assert hasattr(figure, "savefig")
        assert "resumed from the checkpoint at step 800" in text
        assert "200 steps trained twice" in text and "max abs difference 0" in text
        assert lab.last is not None and lab.last.save_every == 400
        with pytest.raises(CkptlabError, match="outside the run"):
            lab.render(kill_at_step=1_600, save_every=400)
        assert [p.name for p in lab.directory.iterdir()] == ["uninterrupted"]
    finally:
        lab.close()
    assert not lab.directory.exists()


# -- lesson 4: the trade-off ------------------------------------------------------------------

def _measured() -> list[LostWork]:
    return [LostWork(100, 2_300, 45, 23, 0.23, 5.0), LostWork(1_000, 2_000, 345, 2, 0.02, 4.0)]


def test_expected_and_worst_case_loss_follow_the_interval():
    assert expected_lost_steps(1_000) == 499.5 and worst_case_lost_steps(1_000) == 999
    # the expectation is the mean over every step a crash could strike
    assert expected_lost_steps(250) == np.mean([k % 250 for k in range(1, 250 * 40 + 1)])
    rows = tradeoff_rows(_measured())
    assert [r["saves"] for r in rows] == [23, 2]
    assert rows[0]["overhead (% of training)"] == pytest.approx(100 * 0.23 / 5.0)


def test_the_tradeoff_view_marks_a_measured_interval_and_refuses_others():
    figure, table = plot_save_tradeoff(_measured(), 1_000)
    assert hasattr(figure, "savefig") and "499.5" in table.data and "999" in table.data
    with pytest.raises(CkptlabError, match=r"choose one of \[100, 1000\]"):
        plot_save_tradeoff(_measured(), 500)


# -- lesson 5: what to save -------------------------------------------------------------------

def test_leave_one_out_differs_from_the_full_checkpoint_by_exactly_one_piece():
    labels = [label for label, _ in LEAVE_ONE_OUT]
    assert labels[-1] == "full checkpoint" and len(labels) == len(COMPONENTS) + 1
    for (label, pieces), piece in zip(LEAVE_ONE_OUT, COMPONENTS):
        assert FULL - pieces == {piece} and label == f"without {piece}"
    assert FULL - dict(LEAVE_ONE_OUT)[mystery_level()] == {"env"}


@pytest.mark.parametrize("bad, message", [(set(), "no piece"), ([], "no piece"),
                                          ({"weights", "gradients"}, "unknown")])
def test_an_empty_or_unknown_component_set_is_refused(bad, message):
    with pytest.raises(CkptlabError, match=message):
        check_pieces(bad)


@pytest.fixture(scope="module")
def middle(small, tmp_path_factory):
    """A checkpoint at step 800 and the uninterrupted run's next 400 steps."""
    config = dataclasses.replace(small, total_steps=10**6)
    trainer = Trainer(config, tmp_path_factory.mktemp("middle"))
    trainer.train(until_step=800)
    checkpoint = trainer.checkpoints.committed()[-1]
    reference = continue_training(trainer, 400, eval_key_step=1_200)
    trainer.close()
    return config, checkpoint, reference


def test_resuming_with_every_piece_is_the_uninterrupted_run(middle):
    config, checkpoint, reference = middle
    full = resume_with(checkpoint, config, FULL, 400, eval_key_step=1_200)
    assert divergence(full, reference)["first divergence (steps after resume)"] is None
    assert separation_title(full, reference) == "identical to the full resume"
    without_optimizer = resume_with(checkpoint, config, FULL - {"optimizer"}, 400, 1_200)
    assert separation_title(without_optimizer, full).startswith(("separates at step +",
                                                                 "differs from +"))
    with pytest.raises(CkptlabError, match="at least one step"):
        resume_with(checkpoint, config, FULL, 0, 1_200)


def test_the_what_to_save_control_overlays_names_or_hides_and_refuses_nothing_ticked(middle):
    config, checkpoint, _ = middle
    lab = WhatToSaveLab(checkpoint, config, 400, 1_200)
    try:
        ticks = {piece: piece != "counters" for piece in COMPONENTS}
        figure, text = lab.render(mystery=False, **ticks)
        assert "without counters" in figure.axes[0].get_title()
        assert "restored: weights, optimizer, replay_buffer, rng, env, metrics" in text
        figure, text = lab.render(mystery=True, **ticks)
        title = figure.axes[0].get_title()
        assert title.startswith("mystery run: ") and "counters" not in title + text
        assert "(hidden)" in text
        with pytest.raises(CkptlabError, match="no piece"):
            lab.render(**{piece: False for piece in COMPONENTS})
        with pytest.raises(CkptlabError, match="unknown"):
            lab.render(weights=True, gradients=True)
    finally:
        lab.close()


def test_the_mystery_toggle_hides_the_checkboxes():
    controls = what_to_save_controls()
    assert set(controls) == {*COMPONENTS, "mystery"}
    assert [p for p in COMPONENTS if not controls[p].value] == ["optimizer"]
    controls["mystery"].value = True
    assert all(controls[p].layout.visibility == "hidden" for p in COMPONENTS)
    controls["mystery"].value = False
    assert all(controls[p].layout.visibility == "visible" for p in COMPONENTS)


def test_a_bad_value_in_the_live_view_shows_a_message_not_a_traceback(middle):
    from ckptlab.lab.widgets import LiveView

    config, checkpoint, _ = middle
    lab = WhatToSaveLab(checkpoint, config, 50, 850)
    try:
        controls = what_to_save_controls(default=frozenset())
        view = LiveView(lab.render, controls, run_button="Resume")
        view.refresh()
        assert isinstance(view.last_error, CkptlabError)
        shown = view.output.outputs[0]["data"]["text/html"]
        assert "no piece of the checkpoint is selected" in shown and "Traceback" not in shown
    finally:
        lab.close()
