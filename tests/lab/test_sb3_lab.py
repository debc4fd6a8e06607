"""Lesson 11's functions (ckptlab.lab.sb3_lab) and its exercise check, on a tiny PPO run:
the ways of resuming are told apart by measurement, the live control resumes with the ticked
pieces, and the exercise passes a complete get_state/set_state and fails each kind of wrong
one with its own message."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from ckptlab.engine import CkptlabError  # noqa: E402
from ckptlab.lab import exercises as ex  # noqa: E402
from ckptlab.lab import sb3_lab as lab  # noqa: E402
from ckptlab.sb3.run import RunSpec, train  # noqa: E402

# 2 environments x 32 steps: 64 timesteps per rollout, a checkpoint every 128
TINY = RunSpec(algo="ppo", n_envs=2, total_timesteps=512, save_every=128,
               hyperparameters={**lab.LESSON_HYPERPARAMETERS, "n_steps": 32, "batch_size": 64,
                                "policy_kwargs": {"net_arch": [16]}})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StopAt(BaseCallback):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        return self.model.num_timesteps < self.step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return run_dir, lab.train_uninterrupted(TINY, run_dir)


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> lab.KilledRun:
    """Stopped in-process after timestep 300, with both kinds of saves (the lesson kills a
    real process; tests/sb3 proves the two leave the same checkpoints)."""
    run_dir = tmp_path_factory.mktemp("killed")
    train(TINY, run_dir, also_sb3_saves=True, extra_callbacks=[StopAt(300)], verbose=0)
    return lab.KilledRun(run_dir, 300, 256)


def test_the_lesson_runs_are_checked():
    assert lab.lesson_spec("fast").total_timesteps < lab.lesson_spec("full").total_timesteps
    assert lab.rollout_size(lab.lesson_spec()) == 256
    with pytest.raises(CkptlabError, match="fast"):
        lab.lesson_spec("slow")
    for bad, words in [(64, "from 128"), (512, "to 511"), (301, "multiple of 2"),
                       (2.5, "whole number")]:
        with pytest.raises(CkptlabError, match=words):
            lab.check_kill_at(TINY, bad)
    assert lab.check_kill_at(TINY, np.int64(300)) == 300


def test_the_uninterrupted_trace_has_every_rollout_boundary(reference):
    _, trace = reference
    assert trace.steps == list(range(0, 512 + 1, 64))
    assert math.isnan(trace.ep_rew_mean[0]) and trace.ep_rew_mean[-1] > 0
    assert lab.distances(trace, trace) == (trace.steps, [0.0] * len(trace.steps))


def test_three_ways_only_ckptlab_is_identical(reference, killed):
    _, trace = reference
    runs = lab.resume_three_ways(TINY, killed)
    rows = {row["resumed with"]: row for row in lab.three_ways_table(trace, runs)}
    assert rows["ckptlab callback"]["identical"] is True
    assert rows["ckptlab callback"]["policy distance at the end"] == 0.0
    for method in ("SB3 save and load", "SB3 + saved RNG states"):
        assert rows[method]["identical"] is False
        assert rows[method]["policy distance at the end"] > 0
        assert runs[method].steps[0] == 256 and runs[method].steps[-1] == 512
    figure = lab.plot_resumed(trace, runs, saved_at=256, killed_at=300)
    assert "exactly 0" in " ".join(t.get_text() for t in figure.axes[1].get_legend().texts)


def test_pieces_brought_back_are_measured(reference, killed):
    run_dir, _ = reference
    rows = {row["piece"]: row for row in lab.pieces_brought_back(TINY, killed, run_dir)}
    assert all(row["ckptlab callback"] == "same" for row in rows.values())
    sb3 = {piece: row["SB3 save and load"] for piece, row in rows.items()}
    assert sb3[lab.PIECE_NAMES["policy"]] == "same" == sb3[lab.PIECE_NAMES["progress"]]
    assert sb3[lab.PIECE_NAMES["envs"]] == "differs" == sb3[lab.PIECE_NAMES["normalization"]]
    assert sb3[lab.PIECE_NAMES["rng"]] == "differs"
    assert rows[lab.PIECE_NAMES["rng"]]["SB3 + saved RNG states"] == "same"


def test_the_live_control_resumes_with_the_ticked_pieces(reference, tmp_path):
    run_dir, trace = reference
    run_dir = shutil.copytree(run_dir, tmp_path / "uninterrupted")
    control = lab.ResumeLab(TINY, run_dir, trace)
    assert control.checkpoint_for(300).name == "step_00000256"
    every = {piece: True for piece in lab.PIECE_NAMES}
    figure, text = control.render(300, **every)
    assert text.startswith("all pieces: identical"), text
    _, text = control.render(300, **{**every, "episode_stats": False})
    assert "the same policy, but other logged returns" in text
    _, text = control.render(300, **{**every, "rng": False})
    assert "another run" in text
    _, text = control.render(300, **{**every, "progress": False})
    assert "started over at 0" in text
    with pytest.raises(CkptlabError, match="multiple of 2"):
        control.render(301, **every)
    # its own copy of the checkpoints: the lesson deletes its folders at its end
    for saved in (run_dir / "checkpoints").glob("step_*"):
        shutil.rmtree(saved)
    assert control.render(300, **every)[1].startswith("all pieces: identical")
    control.close()
    controls = lab.resume_controls(TINY, 300)
    assert list(controls) == ["kill_at", *lab.PIECE_NAMES] and controls["kill_at"].step == 2


class Complete(lab.Glider):
    def get_state(self):
        return {"position": self.position, "velocity": self.velocity, "wind": self.wind,
                "steps": self.steps}

    def set_state(self, state):
        self.position, self.velocity = float(state["position"]), float(state["velocity"])
        self.wind, self.steps = float(state["wind"]), int(state["steps"])


class NoWind(lab.Glider):
    def get_state(self):
        return {"position": self.position, "velocity": self.velocity, "steps": self.steps}

    def set_state(self, state):
        self.position, self.velocity = float(state["position"]), float(state["velocity"])
        self.steps = int(state["steps"])


class Template(lab.Glider):
    def get_state(self):
        raise NotImplementedError

    def set_state(self, state):
        raise NotImplementedError


class Unstorable(Complete):
    def get_state(self):
        return {**super().get_state(), "clock": object()}


def test_own_env_check():
    assert ex.check_own_env(None).passed is None
    assert ex.check_own_env(Template).passed is None
    assert ex.check_own_env(int).passed is False
    refused = ex.check_own_env(lab.Glider)
    assert refused.passed is False and "get_state" in refused.message
    assert "Hint:" in str(refused)
    wrong = ex.check_own_env(NoWind)
    assert wrong.passed is False and "differs from the uninterrupted one" in wrong.message
    assert ex.check_own_env(Unstorable).passed is False
    assert ex.check_own_env(Complete).passed is True
