"""The functions behind the live controls of lessons 01-03 (ckptlab.lab.explore_early), on a
small real run: each answers for good values, changes its answer when the control moves, and
refuses bad values with a CkptlabError that says what to do."""

from __future__ import annotations

import math
from functools import partial

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from ckptlab import CkptlabError, DQNConfig, Trainer  # noqa: E402
from ckptlab.lab.explore_early import (  # noqa: E402
    SMOOTHING_WINDOWS,
    epsilon_action_shares,
    loss_curves_controls,
    loss_curves_view,
    observation_for,
    pipeline_controls,
    pipeline_examples,
    pipeline_stage_view,
    prediction_controls,
    prediction_view,
)
from ckptlab.lab.lessons import epoch_trace_rows, loss_and_return_rose_together, parameter_changes  # noqa: E402
from ckptlab.lab.widgets import LiveView, to_displayable  # noqa: E402
from conftest import FAST  # noqa: E402


def png(result) -> bytes:
    """The figure of a view's result, as PNG bytes (what the learner sees change)."""
    return next(obj.png for obj in to_displayable(result) if hasattr(obj, "png"))


def html_of(result) -> str:
    return next(obj.data for obj in to_displayable(result) if hasattr(obj, "data")
                and isinstance(obj.data, str))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Lesson 1's run in small: build, train, save, resume, continue both."""
    work = tmp_path_factory.mktemp("early")
    config = DQNConfig(**{**FAST, "save_every_steps": 0})
    trainer = Trainer(config, work / "run")
    initial = {k: v.clone() for k, v in trainer.agent.q_net.state_dict().items()}
    epsilon0, buffer0 = trainer.exploration.value(), len(trainer.buffer)
    trainer.train(until_step=800)
    changes = parameter_changes(initial, trainer.agent.q_net.state_dict())
    info = trainer.save()
    fresh = Trainer(config)
    fresh.restore(info.path)
    equal = [torch.equal(a, b) for a, b in zip(trainer.agent.q_net.state_dict().values(),
                                               fresh.agent.q_net.state_dict().values())]
    trainer.train(until_step=1200)
    fresh.train(until_step=1200)
    diff = max((a - b).abs().max().item() for a, b in zip(trainer.agent.q_net.parameters(),
                                                          fresh.agent.q_net.parameters()))
    examples = pipeline_examples(initial_weights=initial, initial_epsilon=epsilon0,
                                 initial_buffer=buffer0, weight_changes=changes,
                                 checkpoint=info, resumed_equal=equal, steps_after_resume=400,
                                 max_difference_after=diff)
    yield dict(trainer=trainer, examples=examples, info=info, equal=equal)
    trainer.close()
    fresh.close()


# -- lesson 1 ----------------------------------------------------------------------------------

def test_pipeline_examples_are_this_runs_numbers(run):
    first, second, third, fourth = run["examples"]
    n = sum(p.numel() for p in run["trainer"].agent.q_net.parameters())
    assert f"{n:,} random weights" in first and "epsilon 1.00" in first
    assert second.startswith("800 steps")
    assert f"{run['info'].manifest['episode']} episodes" in second
    assert third.startswith(run["info"].name) and "every hash verified" in third
    assert fourth.startswith(f"{len(run['equal'])} of {len(run['equal'])} tensors")
    assert "difference from the uninterrupted agent is 0" in fourth


def test_pipeline_stage_view_highlights_each_stage_differently(run):
    images = {png(pipeline_stage_view(stage, run["examples"])) for stage in (1, 2, 3, 4)}
    assert len(images) == 4
    table = html_of(pipeline_stage_view(3, run["examples"]))
    assert "3. Checkpoint save" in table and run["info"].name in table
    assert "this run" in table and "input" in table and "operation" in table


@pytest.mark.parametrize("stage", [0, 5, -1, 2.5, True, "2", None])
def test_pipeline_stage_view_refuses_a_stage_that_does_not_exist(run, stage):
    with pytest.raises(CkptlabError, match="stage must be a whole number from 1 to 4"):
        pipeline_stage_view(stage, run["examples"])


def test_pipeline_stage_view_needs_four_examples():
    assert pipeline_controls(4)["stage"].value == 4
    with pytest.raises(CkptlabError, match="stage must be a whole number"):
        pipeline_controls(0)
    with pytest.raises(CkptlabError, match="one example per stage"):
        pipeline_stage_view(1, ["only one"])


def test_pipeline_examples_refuse_an_empty_run(run):
    with pytest.raises(CkptlabError, match="run the lesson's cells above first"):
        pipeline_examples(initial_weights={}, initial_epsilon=1.0, initial_buffer=0,
                          weight_changes=[], checkpoint=run["info"], resumed_equal=[],
                          steps_after_resume=0, max_difference_after=0.0)


def test_stage_stepper_redraws_through_live_view(run):
    view = LiveView(lambda stage: pipeline_stage_view(stage, run["examples"]),
                    pipeline_controls())
    view.controls["stage"].value = 4
    assert view.renders == 1 and view.last_error is None
    assert "4. Training resume" in view.output.outputs[-1]["data"]["text/html"]


# -- lesson 2 ----------------------------------------------------------------------------------

def _rng_state(run):
    return run["trainer"].rng.generator.bit_generator.state


def test_observation_for_reads_the_buffer_or_the_features(run):
    buffer = run["trainer"].buffer
    obs = observation_for(buffer.obs[:len(buffer)], source="replay buffer", index=7,
                          features=())
    assert np.array_equal(obs, buffer.obs[7])
    typed = observation_for(buffer.obs, source="my features", index=0,
                            features=(0.1, -0.2, 0.03, 0.4))
    assert typed.dtype == np.float32 and np.allclose(typed, [0.1, -0.2, 0.03, 0.4])


@pytest.mark.parametrize("index", [-1, 10**6, 1.5, True])
def test_observation_for_refuses_an_index_outside_the_buffer(run, index):
    buffer = run["trainer"].buffer
    with pytest.raises(CkptlabError, match=f"from 0 to {len(buffer) - 1}"):
        observation_for(buffer.obs[:len(buffer)], source="replay buffer", index=index,
                        features=())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_observation_for_refuses_non_finite_features(run, bad):
    with pytest.raises(CkptlabError, match="pole angle .rad. must be a finite number"):
        observation_for(run["trainer"].buffer.obs, source="my features", index=0,
                        features=(0.0, 0.0, bad, 0.0))


def test_observation_for_refuses_wrong_counts_and_sources(run):
    with pytest.raises(CkptlabError, match="need 4 features"):
        observation_for(run["trainer"].buffer.obs, source="my features", index=0,
                        features=(0.0, 1.0))
    with pytest.raises(CkptlabError, match="source must be one of"):
        observation_for(run["trainer"].buffer.obs, source="camera", index=0, features=())
    with pytest.raises(CkptlabError, match="buffer is empty"):
        observation_for(np.zeros((0, 4), np.float32), source="replay buffer", index=0,
                        features=())


def test_epsilon_shares_follow_epsilon_greedy_and_leave_the_run_alone(run):
    agent, obs = run["trainer"].agent, run["trainer"].buffer.obs[3]
    state = _rng_state(run)
    before = run["trainer"].rng.generator.bit_generator.state
    greedy = agent.greedy_action(obs)
    assert epsilon_action_shares(agent, obs, 0.0, state)[greedy] == 1.0
    shares = epsilon_action_shares(agent, obs, 0.1, state, decisions=4000)
    # epsilon/2: a random pick is "other" half the time
    assert abs(shares[1 - greedy] - 0.05) < 0.02
    assert np.array_equal(shares, epsilon_action_shares(agent, obs, 0.1, state, decisions=4000))
    assert run["trainer"].rng.generator.bit_generator.state == before


def test_epsilon_shares_are_exactly_the_agents_own_decisions(run):
    agent, obs = run["trainer"].agent, run["trainer"].buffer.obs[11]
    state = _rng_state(run)
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    picks = [agent.act(obs, 0.3, rng) for _ in range(500)]
    direct = np.bincount(picks, minlength=agent.n_actions) / len(picks)
    assert np.array_equal(epsilon_action_shares(agent, obs, 0.3, state, decisions=500), direct)


@pytest.mark.parametrize("epsilon", [-0.1, 1.5, math.nan])
def test_epsilon_shares_refuse_a_non_probability(run, epsilon):
    with pytest.raises(CkptlabError, match="epsilon must be a probability from 0 to 1"):
        epsilon_action_shares(run["trainer"].agent, run["trainer"].buffer.obs[0], epsilon,
                              _rng_state(run))


def test_prediction_view_answers_each_control(run):
    trainer = run["trainer"]
    obs = trainer.buffer.obs[:len(trainer.buffer)]

    def view(**kw):
        result = prediction_view(trainer.agent, obs, _rng_state(run), **kw)
        return png(result), html_of(result)

    base_png, base_html = view()
    assert "push left" in base_html and "push right" in base_html and "(greedy)" in base_html
    q = trainer.agent.q_values(obs[0])
    assert f"{q[0]:.4g}" in base_html and f"{q[1]:.4g}" in base_html
    assert view(index=5)[0] != base_png
    eps_png, eps_html = view(epsilon=0.9)
    assert eps_html != base_html and "epsilon 0.90" in eps_html
    assert view(source="my features", pole_angle=0.2)[0] != base_png
    # the same values give the same answer: deterministic
    assert view() == (base_png, base_html)


def test_prediction_controls_cover_the_buffer(run):
    controls = prediction_controls(len(run["trainer"].buffer))
    assert controls["index"].max == len(run["trainer"].buffer) - 1
    assert set(controls) == {"source", "index", "cart_position", "cart_velocity",
                             "pole_angle", "pole_velocity", "epsilon"}
    with pytest.raises(CkptlabError, match="buffer is empty"):
        prediction_controls(0)


def test_a_bad_feature_shows_a_message_in_the_live_view(run):
    import ipywidgets as widgets

    trainer = run["trainer"]
    view = LiveView(partial(prediction_view, trainer.agent, trainer.buffer.obs, _rng_state(run),
                            source="my features"),
                    {"pole_angle": widgets.FloatText(value=0.0)})
    view.controls["pole_angle"].value = math.nan
    assert isinstance(view.last_error, CkptlabError)
    shown = view.output.outputs[-1]["data"]["text/html"]
    assert "must be a finite number" in shown and "Traceback" not in shown


# -- lesson 3 ----------------------------------------------------------------------------------

def test_epoch_rows_state_only_what_the_data_shows(run):
    history = run["trainer"].metrics
    rows = epoch_trace_rows(history, saved_steps=[800], resumed_at_step=None)
    assert "loss ↓" not in rows[0] and "mean TD loss" in rows[0]
    text = " ".join(r["observation"] for r in rows)
    assert "normal in RL" not in text and "targets moved" not in text
    for before, now, row in zip(history.epochs, history.epochs[1:], rows[1:]):
        if before.mean_loss and now.mean_loss is not None:
            word = "up" if now.mean_loss > before.mean_loss else "down"
            assert f"loss {word} " in row["observation"]
    assert "checkpoint saved at step 800" in rows[1]["observation"]


def test_loss_and_return_rose_together_reads_the_epochs(run):
    history = run["trainer"].metrics
    together = loss_and_return_rose_together(history)
    epochs = {e.epoch: e for e in history.epochs}
    for n in together:
        assert epochs[n].mean_loss > epochs[n - 1].mean_loss
        assert epochs[n].eval_mean_return > epochs[n - 1].eval_mean_return


def test_loss_curves_view_answers_window_and_cursor(run):
    history = run["trainer"].metrics
    base = loss_curves_view(history, window=50, epoch=1, saved_steps=[800])
    base_png, base_html = png(base), html_of(base)
    assert base_html.count("▶") == 1
    assert png(loss_curves_view(history, window=5, epoch=1, saved_steps=[800])) != base_png
    moved = loss_curves_view(history, window=50, epoch=2, saved_steps=[800])
    moved_html = html_of(moved)
    assert moved_html != base_html and png(moved) != base_png
    row = moved_html.split("▶")[1].split("</tr>")[0]
    assert ">2<" in row  # the highlighted row is epoch 2's


@pytest.mark.parametrize("window", [0, -5, 2.5, True, math.nan])
def test_loss_curves_view_refuses_a_bad_window(run, window):
    with pytest.raises(CkptlabError, match="window must be a whole number"):
        loss_curves_view(run["trainer"].metrics, window=window, epoch=1)


@pytest.mark.parametrize("epoch", [0, 99, -1, 1.0])
def test_loss_curves_view_refuses_an_epoch_the_run_does_not_have(run, epoch):
    n = len(run["trainer"].metrics.epochs)
    with pytest.raises(CkptlabError, match=f"epoch must be one of the run's epochs, 1 to {n}"):
        loss_curves_view(run["trainer"].metrics, window=10, epoch=epoch)


def test_loss_curves_controls_are_log_spaced():
    controls = loss_curves_controls(6)
    options = controls["window"].options
    assert tuple(options) == SMOOTHING_WINDOWS and controls["epoch"].max == 6
    ratios = np.diff(np.log10(options))
    assert ratios.max() < 0.5  # no gap wider than about a factor of 3
    assert 7 in loss_curves_controls(6, window=7)["window"].options  # a lesson's own window
    with pytest.raises(CkptlabError, match="window must be a whole number"):
        loss_curves_controls(6, window=0)
    with pytest.raises(CkptlabError, match="no finished epoch"):
        loss_curves_controls(0)
