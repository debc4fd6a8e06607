"""The functions behind the live controls of lessons 06 (strategy builder, time scrubber,
checkpoint picker), 07 (fault picker) and 08 (the review run's overlay)."""

from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ckptlab import CkptlabError, DQNConfig, Trainer  # noqa: E402
from ckptlab.lab import fault_lab, retention_lab  # noqa: E402
from ckptlab.lab.retention_lab import (  # noqa: E402
    RULES,
    build_strategy,
    checkpoint_view,
    moment,
    play_checkpoint,
    record_run,
    replay_strategy,
    simulate_strategy,
    strategy_view,
)

CONFIG = dict(seed=0, total_steps=2_000, steps_per_epoch=250, save_every_steps=250,
              learning_starts=250, eval_episodes=2, hidden_sizes=[32, 32],
              buffer_capacity=2_000, exploration_steps=1_000)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A small run with a checkpoint every 250 steps: (checkpoint paths, RecordedRun)."""
    root = tmp_path_factory.mktemp("recorded")
    with Trainer(DQNConfig(**CONFIG), root / "run") as trainer:
        trainer.train()
    paths = trainer.checkpoints.committed()
    return paths, record_run(paths)


def html_of(obj) -> str:
    return obj.data if hasattr(obj, "data") else str(obj)


# -- lesson 06: the recorded run and the in-memory replay -------------------------------------

def test_record_run_holds_manifests_sizes_and_policies(recorded):
    paths, run = recorded
    assert run.steps == list(range(250, 2_001, 250)) and run.save_every == 250
    assert [c.name for c in run.checkpoints] == [p.name for p in paths]
    sizes = [c.size_bytes for c in run.checkpoints]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], "the replay buffer grows"
    assert run.best_step() in run.steps
    with pytest.raises(CkptlabError, match="no checkpoint at step 333"):
        run.checkpoint(333)
    with pytest.raises(CkptlabError, match="at least one checkpoint"):
        record_run([])


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("budget_kb", [0, 400])
def test_simulation_decides_exactly_like_the_real_manager(recorded, tmp_path, rule, budget_kb):
    paths, run = recorded
    strategy = build_strategy(run, rule, n=2, k=2, smoothing=2, every=1000, budget_kb=budget_kb)
    simulated = simulate_strategy(run, strategy)
    # A fresh strategy object: save policies remember the best value they have seen.
    real = replay_strategy(paths, build_strategy(run, rule, n=2, k=2, smoothing=2, every=1000,
                                                 budget_kb=budget_kb), tmp_path / "real")
    assert simulated.saved_steps == real.saved_steps
    assert simulated.alive == real.alive
    assert simulated.disk_bytes == real.disk_bytes
    assert simulated.final_steps == real.final_steps
    # Every save and every deletion, with its reasons, as the manager logs them.
    def changes(events):
        return [{k: v for k, v in e.items() if k != "time"} for e in events
                if e.get("event") == "saved" or e.get("action") == "delete"]

    assert changes(simulated.decisions) == changes(real.decisions)
    assert simulated.deleted() == real.deleted()


def test_simulation_does_not_consume_the_strategys_save_policy(recorded):
    _, run = recorded
    strategy = build_strategy(run, "save if improved")
    first = simulate_strategy(run, strategy)
    assert simulate_strategy(run, strategy).saved_steps == first.saved_steps


def test_top_k_keeps_the_best_k_and_the_latest(recorded):
    _, run = recorded
    outcome = simulate_strategy(run, build_strategy(run, "top K", k=2))
    returns = {c.step: c.metrics["eval_return"] for c in run.checkpoints}
    top = sorted(returns, key=lambda s: (-returns[s], s))[:2]
    assert set(outcome.final_steps) == set(top) | {run.end_step}


def test_disk_budget_holds_after_every_save(recorded):
    _, run = recorded
    budget_kb = 3 * run.largest_bytes // 1000
    outcome = simulate_strategy(run, build_strategy(run, "keep all", budget_kb=budget_kb))
    assert all(used <= budget_kb * 1000 for _, used in outcome.disk_bytes)
    assert len(outcome.final_steps) < len(run.steps)
    assert any("disk budget" in e["reasons"][0] for e in outcome.decisions
               if e.get("action") == "delete")


@pytest.mark.parametrize("kwargs, message", [
    (dict(rule="keep last N", n=0), "N must be at least 1"),
    (dict(rule="top K", k=0), "K must be at least 1"),
    (dict(rule="top K", smoothing=0), "smoothing must be at least 1"),
    (dict(rule="hybrid", every=300), "multiple of 250"),
    (dict(rule="milestones + last N", every=0), "multiple of 250"),
    (dict(rule="keep all", budget_kb=-5), "cannot be negative"),
    (dict(rule="keep all", budget_kb=1), "smaller than one checkpoint"),
    (dict(rule="keep the nice ones"), "unknown rule"),
])
def test_bad_builder_values_get_a_clear_message(recorded, kwargs, message):
    _, run = recorded
    with pytest.raises(CkptlabError, match=message):
        build_strategy(run, **kwargs)
    with pytest.raises(CkptlabError, match=message):  # the live view says the same
        strategy_view(run, **kwargs)


def test_budget_just_below_the_largest_checkpoint_is_refused_and_at_it_accepted(recorded):
    _, run = recorded
    largest_kb = -(-run.largest_bytes // 1000)
    with pytest.raises(CkptlabError, match=f"at least {largest_kb} kB"):
        build_strategy(run, "keep all", budget_kb=largest_kb - 1)
    assert build_strategy(run, "keep all", budget_kb=largest_kb).disk_budget_bytes \
        == largest_kb * 1000


def test_moment_says_what_is_on_disk_and_why_the_last_one_went(recorded):
    _, run = recorded
    outcome = simulate_strategy(run, build_strategy(run, "keep last N", n=2))
    first = moment(outcome, run.steps[0])
    assert first.present == [run.steps[0]] and first.last_deletion is None
    at = moment(outcome, 1_000)
    assert at.present == [750, 1_000]
    assert at.disk_bytes == sum(run.checkpoint(s).size_bytes for s in (750, 1_000))
    assert at.last_deletion == (500, 1_000, "not among the 2 newest (#3)")
    assert moment(outcome, 1_100).step == 1_000  # between saves: the directory after the last
    with pytest.raises(CkptlabError, match="before the first recorded checkpoint"):
        moment(outcome, 10)


def test_strategy_view_answers_with_a_figure_and_the_moment(recorded):
    _, run = recorded
    fig, table = strategy_view(run, "keep last N", n=2, step=1_000)
    assert hasattr(fig, "savefig")
    text = html_of(table)
    assert "750, 1000 (2 checkpoints)" in text
    assert "checkpoint 500, at the save of step 1000: not among the 2 newest" in text
    assert "(no budget)" in text
    plt.close(fig)
    fig, table = strategy_view(run, "keep all", budget_kb=5 * run.largest_bytes // 1000)
    assert "budget" in html_of(table) and "kB of a" in html_of(table)
    plt.close(fig)
    with pytest.raises(CkptlabError, match="outside the recorded run"):
        strategy_view(run, "top K", step=99_999)


def test_controls_keep_working_after_the_run_directory_is_deleted(tmp_path):
    with Trainer(DQNConfig(**{**CONFIG, "total_steps": 750}), tmp_path / "run") as trainer:
        trainer.train()
    run = record_run(trainer.checkpoints.committed())
    shutil.rmtree(tmp_path / "run")
    fig, _ = strategy_view(run, "top K", k=1, step=500)
    plt.close(fig)
    _, fig = checkpoint_view(run, 500, episodes=1)
    plt.close(fig)


# -- lesson 06: the checkpoint picker ----------------------------------------------------------

def test_playing_a_checkpoint_reproduces_its_recorded_evaluation(recorded):
    _, run = recorded
    for c in run.checkpoints[1::3]:
        played = play_checkpoint(run, c.step, episodes=CONFIG["eval_episodes"])
        assert played.mean_return == c.metrics["eval_return"]
    one = play_checkpoint(run, run.end_step, episodes=1)
    assert len(one.returns) == 1


def test_bad_picker_values_get_a_clear_message(recorded):
    _, run = recorded
    with pytest.raises(CkptlabError, match="episodes must be between 1 and 10"):
        play_checkpoint(run, run.end_step, episodes=0)
    with pytest.raises(CkptlabError, match="no checkpoint at step 5"):
        checkpoint_view(run, 5)


def test_checkpoint_view_shows_manifest_metrics_size_and_played_returns(recorded):
    _, run = recorded
    c = run.checkpoints[-1]
    table, fig = checkpoint_view(run, c.step, episodes=2)
    text = html_of(table)
    assert c.name in text and str(round(c.size_bytes / 1000)) in text
    assert "eval_return" in text and "replay buffer (kB)" in text
    assert "played returns" in fig.axes[0].get_title()
    plt.close(fig)


# -- lesson 06: the Play button ----------------------------------------------------------------

def test_attach_play_adds_a_linked_play_button(recorded):
    import ipywidgets as widgets

    from ckptlab.lab.widgets import LiveView

    _, run = recorded
    slider = widgets.IntSlider(value=run.end_step, min=run.steps[0], max=run.end_step,
                               step=run.save_every)
    view = LiveView(lambda step: str(step), {"step": slider})
    play = retention_lab.attach_play(view, "step", interval_ms=300)
    assert play in view.widget.children[0].children
    assert (play.min, play.max, play.step, play.interval) == (slider.min, slider.max,
                                                               slider.step, 300)
    with pytest.raises(CkptlabError, match="no control named 'time'"):
        retention_lab.attach_play(view, "time")


# -- lesson 07: the fault picker ---------------------------------------------------------------

def test_fault_picker_refuses_unknown_faults_and_steps():
    with pytest.raises(CkptlabError, match="unknown fault 'kill:later'"):
        fault_lab.stage_fault("kill:later")
    with pytest.raises(CkptlabError, match="a save step inside the run"):
        fault_lab.stage_fault("corrupt:tensors", at_step=700)
    with pytest.raises(CkptlabError, match="unknown fault"):
        fault_lab.fault_view("nothing")


def test_every_save_phase_has_a_fault():
    from ckptlab.engine.faults import LOCAL_PHASES

    assert {f"kill:{p}" for p in LOCAL_PHASES} <= set(fault_lab.FAULTS)
    assert {"corrupt:tensors", "corrupt:state", "corrupt:manifest"} <= set(fault_lab.FAULTS)


def test_kill_before_commit_leaves_a_temporary_dir_and_resumes_from_the_previous_save():
    report = fault_lab.stage_fault("kill:save:files-written")
    assert report.exit_status == -9
    assert any(name.startswith(".tmp-step_00001000") for name in report.listing)
    assert "step_00001000" not in report.listing and report.latest == "step_00000500"
    assert report.verify == [("step_00000500", "ok")]
    assert (report.resumed_from, report.final_step) == (500, 1_500)
    assert not any(name.startswith(".tmp-") for name in report.listing_after_resume)


def test_kill_after_commit_resumes_from_the_new_checkpoint_although_latest_lags():
    report = fault_lab.stage_fault("kill:save:committed")
    assert report.exit_status == -9 and "step_00001000" in report.listing
    assert report.latest == "step_00000500"   # the pointer was not updated...
    assert report.resumed_from == 1_000       # ...but resume finds the newest valid checkpoint
    assert all(verdict == "ok" for _, verdict in report.verify)


@pytest.mark.parametrize("what, message", [("tensors", "SHA-256 does not match"),
                                           ("manifest", "manifest")])
def test_corruption_is_detected_and_the_run_falls_back(what, message):
    report = fault_lab.stage_fault(f"corrupt:{what}")
    assert report.exit_status is None
    assert dict(report.verify)["step_00000500"] == "ok"
    assert message in dict(report.verify)["step_00001000"]
    assert report.warnings and report.resumed_from == 500 and report.final_step == 1_500
    rows = fault_lab.fault_rows(report)
    text = " ".join(r["answer"] for r in rows)
    assert "<run>" in text and "/tmp" not in text, "no machine path in what the learner sees"


# -- lesson 08: the review overlay -------------------------------------------------------------

def test_resume_overlay_draws_identical_runs_with_zero_difference(tmp_path):
    from ckptlab.lab.review_lab import resume_overlay

    config = DQNConfig(**{**CONFIG, "total_steps": 1_000, "save_every_steps": 500})
    with Trainer(config, tmp_path / "reference") as trainer:
        trainer.train()
    with Trainer(config, tmp_path / "resumed") as trainer:
        trainer.train(until_step=700)   # "killed" after 700; the last save was at 500
    with Trainer(config, tmp_path / "resumed") as trainer:
        trainer.restore()
        trainer.train()
    final = "checkpoints/step_00001000"
    fig = resume_overlay(tmp_path / "reference" / final, tmp_path / "resumed" / final,
                         killed_at_step=700, resumed_from_step=500)
    assert "max 0" in fig.axes[2].get_title()
    assert "killed (SIGKILL) after step 700" in fig._suptitle.get_text()
    plt.close(fig)
