"""A new run whose save policy writes nothing before its last step is warned at start (the
Trainer and ``ckptlab train``): a crash would lose the whole run, and the warning says how to
save along the way. Runs that save on the way, resumed runs, partial trains and runs without
a directory are not warned."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from ckptlab import (
    AnyOf,
    DQNConfig,
    EveryNEpisodes,
    EveryNSteps,
    EveryTSeconds,
    Final,
    OnImprovement,
    OnStart,
    Trainer,
)
from ckptlab.dqn.train import UnsavedRunWarning, _suggested_interval
from ckptlab.engine.policies import first_scheduled_save
from conftest import run_cli


def _unsaved_warnings(config: DQNConfig, run_dir, **trainer_args) -> list[str]:
    """Start ``config``'s run (stopped after its first epoch) and return the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Trainer(config, run_dir, **trainer_args) as trainer:
            trainer.train(stop_when=lambda summary: True)
    return [str(w.message) for w in caught if issubclass(w.category, UnsavedRunWarning)]


def test_a_run_that_saves_only_at_its_end_is_warned_with_the_cost_and_the_fix(
        fast_config, tmp_path):
    config = dataclasses.replace(fast_config, save_every_steps=5_000)   # > 2400 steps
    found = _unsaved_warnings(config, tmp_path / "run")
    assert found == [
        "this run saves no checkpoint before its last step (2400): a crash or kill before then "
        "loses all 2400 steps, and the next run starts from step 0. To save along the way, "
        "pass --save-every 200 on the command line (save_every_steps=200 in DQNConfig)."]


@pytest.mark.parametrize("policy", [AnyOf(Final()), AnyOf(OnStart(), EveryNSteps(0), Final()),
                                    AnyOf(EveryNSteps(2_400), OnStart())],
                         ids=["final-only", "baseline-and-final", "interval-equals-run"])
def test_baselines_and_an_interval_as_long_as_the_run_protect_nothing(fast_config, tmp_path,
                                                                      policy):
    assert len(_unsaved_warnings(fast_config, tmp_path / "run", save_policy=policy)) == 1


@pytest.mark.parametrize("policy", [AnyOf(EveryNSteps(800), Final()),
                                    AnyOf(EveryTSeconds(600), Final()),
                                    AnyOf(EveryNEpisodes(5), Final()),
                                    AnyOf(OnImprovement("eval_return", "max"), Final())],
                         ids=["every-800", "every-600s", "every-5-episodes", "on-improvement"])
def test_a_policy_that_saves_or_may_save_on_the_way_is_not_warned(fast_config, tmp_path,
                                                                  policy):
    assert _unsaved_warnings(fast_config, tmp_path / "run", save_policy=policy) == []


def test_resumed_partial_and_directoryless_runs_are_not_warned(fast_config, tmp_path):
    config = dataclasses.replace(fast_config, save_every_steps=0)
    assert _unsaved_warnings(config, None) == []            # nothing would be saved anyway
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Trainer(config, tmp_path / "run") as trainer:
            trainer.train(until_step=400)                   # a part, not the whole run
            trainer.save()
        with Trainer(config, tmp_path / "run") as trainer:  # resumed: it has a checkpoint
            trainer.restore()
            trainer.train(stop_when=lambda summary: True)
    assert not [w for w in caught if issubclass(w.category, UnsavedRunWarning)]


def test_first_scheduled_save():
    assert first_scheduled_save(EveryNSteps(1000), 0, 3000) == 1000
    assert first_scheduled_save(EveryNSteps(1000), 2500, 3000) == 3000
    assert first_scheduled_save(EveryNSteps(5000), 0, 3000) == 3000
    assert first_scheduled_save(EveryNSteps(0), 0, 3000) == 3000
    assert first_scheduled_save(AnyOf(OnStart(), Final()), 0, 3000) == 3000
    assert first_scheduled_save(AnyOf(EveryNSteps(5000), EveryNSteps(700)), 0, 3000) == 700
    assert first_scheduled_save(AnyOf(EveryNSteps(5000), EveryTSeconds(10)), 0, 3000) is None
    assert first_scheduled_save(EveryNEpisodes(3), 0, 3000) is None
    assert [_suggested_interval(n) for n in (3, 3000, 30_000, 100_000)] == [1, 500, 5000,
                                                                           20_000]


def test_the_command_line_warns_in_one_line_and_still_trains(tmp_path):
    done = run_cli("train", "--run-dir", str(tmp_path / "run"), "--steps", "1000",
                   "--save-every", "5000", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: this run saves no checkpoint before its last step (1000): a crash or kill "
        "before then loses all 1000 steps, and the next run starts from step 0. To save along "
        "the way, pass --save-every 200 on the command line (save_every_steps=200 in "
        "DQNConfig)."]
    assert "Finished at step 1000" in done.stdout
    again = run_cli("train", "--run-dir", str(tmp_path / "saves"), "--steps", "1000",
                    "--save-every", "500", "--quiet")
    assert again.returncode == 0 and again.stderr == "", again.stderr
