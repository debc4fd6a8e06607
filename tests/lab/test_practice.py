"""ckptlab.lab.practice: the functions lesson 10 shows, on a short real run."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from ckptlab import (
    AnyOf,
    BestBy,
    CkptlabError,
    DQNConfig,
    EveryNEpisodes,
    EveryNSteps,
    Final,
    IncompatibleCheckpointError,
    OnStart,
    Trainer,
    export_checkpoint,
)
from ckptlab.engine import CheckpointRecord
from ckptlab.lab import practice

TOTAL = 1200


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short run with a baseline and two saves, and a branch continuing it elsewhere."""
    root = tmp_path_factory.mktemp("practice") / "runs"
    config = DQNConfig(seed=0, total_steps=TOTAL, save_every_steps=600, learning_starts=200,
                       steps_per_epoch=600, eval_episodes=2, hidden_sizes=(16, 16))
    with Trainer(config, root / "original",
                 save_policy=AnyOf(OnStart(), EveryNSteps(600), Final())) as trainer:
        trainer.train()
    with Trainer(config, root / "branch", save_policy=AnyOf(EveryNEpisodes(3), Final())) as b:
        b.restore(root / "original" / "checkpoints" / "step_00000600")
        b.train()
    return root, trainer


def test_pointer_rows_name_latest_and_best(runs):
    root, _ = runs
    rows = {r["pointer"]: r for r in practice.pointer_rows(root / "original" / "checkpoints")}
    assert rows["latest"]["names"] == f"step_{TOTAL:08d}" and rows["latest"]["step"] == TOTAL
    assert json.loads(rows["best"]["file content"])["checkpoint"] == rows["best"]["names"]


def test_pointer_rows_without_pointers(tmp_path):
    rows = practice.pointer_rows(tmp_path)
    assert [r["names"] for r in rows] == ["-", "-"]


def test_mtime_scan_is_fooled_by_touch_but_pointer_is_not(runs, tmp_path):
    import shutil

    root, _ = runs
    copy = tmp_path / "copy"
    shutil.copytree(root / "original" / "checkpoints", copy)
    os.utime(copy / "step_00000000")
    assert practice.newest_by_mtime(copy) == "step_00000000"
    with pytest.raises(CkptlabError, match="no checkpoints"):
        practice.newest_by_mtime(tmp_path / "empty")


def test_lineage_names_the_parent_and_tree_digest_detects_change(runs, tmp_path):
    root, _ = runs
    rows = practice.lineage_rows(root / "branch" / "checkpoints" / f"step_{TOTAL:08d}")
    assert [r["checkpoint"] for r in rows] == [f"branch/step_{TOTAL:08d}",
                                               "original/step_00000600"]
    (tmp_path / "f").write_text("a")
    before = practice.tree_digest(tmp_path)
    (tmp_path / "f").write_text("b")
    assert practice.tree_digest(tmp_path) != before


def test_measure_save_blocking_times_both_kinds(runs, tmp_path):
    _, trainer = runs
    times = practice.measure_save_blocking(trainer.components(), tmp_path / "t", repeats=2)
    assert len(times.sync) == len(times.async_) == len(times.async_total) == 2
    assert all(t > 0 for t in times.sync + times.async_)
    assert len(times.rows()) == 2
    with pytest.raises(CkptlabError, match="repeats"):
        practice.measure_save_blocking(trainer.components(), tmp_path / "u", repeats=0)


def test_play_policy_is_deterministic_and_loads_only_the_network(runs):
    root, _ = runs
    ckpt = root / "original" / "checkpoints" / f"step_{TOTAL:08d}"
    first = practice.play_policy(ckpt, episodes=2, seed=3)
    assert first == practice.play_policy(ckpt, episodes=2, seed=3) and len(first) == 2
    net, env_id = practice.load_policy(ckpt)
    assert env_id == "CartPole-v1" and not net.training
    with pytest.raises(CkptlabError, match="episodes"):
        practice.play_policy(ckpt, episodes=0)
    policies = practice.load_policies(root / "original" / "checkpoints")
    assert sorted(policies) == ["step_00000000", "step_00000600", "step_00001200"]
    assert practice.play_policy(policies["step_00001200"], episodes=2, seed=3) == first
    shown = practice.policy_view(policies["step_00001200"], episodes=1)
    assert "step_00001200" in shown[1]
    with pytest.raises(CkptlabError, match="no checkpoints"):
        practice.load_policies(root / "nowhere")


def test_warm_start_loads_only_matching_tensors_and_refuses_shape_mismatch(runs):
    root, _ = runs
    ckpt = root / "original" / "checkpoints" / f"step_{TOTAL:08d}"
    net, report = practice.warm_start(ckpt, hidden_sizes=(16, 8))
    assert report.loaded == ["layers.0.weight", "layers.0.bias"]
    saved, _ = practice.load_policy(ckpt)
    assert torch.equal(net.layers[0].weight, saved.layers[0].weight)
    rows = practice.load_report_rows(report)
    assert sum(r["result"] == "skipped" for r in rows) == 4
    with pytest.raises(IncompatibleCheckpointError, match="layers.2.weight"):
        practice.warm_start(ckpt, hidden_sizes=(16, 8), pattern=r"layers\.[02]\..*")


def test_read_export_reads_each_kind(runs, tmp_path):
    root, _ = runs
    ckpt = root / "original" / "checkpoints" / f"step_{TOTAL:08d}"
    for what, files in (("weights", ["weights.safetensors"]), ("metadata", ["metadata.json"]),
                        ("both", ["weights.safetensors", "metadata.json"])):
        export_checkpoint(ckpt, tmp_path / what, what=what, source="agent/q_net")
        assert [r["file"] for r in practice.read_export(tmp_path / what)] == files
    assert practice.read_export(tmp_path / "nothing") == []


def test_catalog_rows_sort_across_runs(runs):
    root, _ = runs
    rows = practice.catalog_rows(root, sort="step", ascending=True)
    assert {r["run"] for r in rows} == {"original", "branch"}
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert all(r["started from"] == "original/step_00000600" for r in rows
               if r["run"] == "branch")
    assert len(practice.catalog_rows(root, sort="step", top=2)) == 2


def test_replay_save_policy_predicts_the_real_run(runs):
    root, trainer = runs
    ends = trainer.metrics.episode_end_steps
    predicted = practice.replay_save_policy(AnyOf(EveryNEpisodes(3), Final()), ends, TOTAL,
                                            start_step=600)
    real = [r.step for r in practice.records_of(root / "branch" / "checkpoints")]
    assert predicted == real
    assert practice.replay_save_policy(EveryNSteps(400), ends, TOTAL) == [400, 800, 1200]
    with pytest.raises(CkptlabError, match="start_step"):
        practice.replay_save_policy(EveryNSteps(1), ends, TOTAL, start_step=TOTAL)


def test_mean_gap():
    assert practice.mean_gap([10, 20, 40, 100], 0, 50) == 15
    assert practice.mean_gap([10], 0, 50) == math.inf


def test_pick_rows_follow_direction():
    records = [CheckpointRecord("step_00000001", 1, {"loss": 0.1, "eval_return": 10.0}, 1),
               CheckpointRecord("step_00000002", 2, {"loss": 0.9, "eval_return": 200.0}, 1)]
    rows = practice.pick_rows(records, [BestBy("eval_return", "max"), BestBy("loss", "min"),
                                        BestBy("eval_return", "min")])
    assert [r["picks"] for r in rows] == ["step_00000002", "step_00000001", "step_00000001"]
    assert rows[1]["its eval_return"] == 10.0
    assert practice.pick_rows([], [BestBy("loss", "min")])[0]["picks"] == "-"


def test_train_regression_resumed_equals_uninterrupted(tmp_path):
    practice.train_regression(tmp_path / "c", 120, save_every=40, stop_after=100)
    resumed = practice.train_regression(tmp_path / "c", 120, save_every=40)
    straight = practice.train_regression(None, 120)
    assert resumed["start"] == 80
    assert all(torch.equal(resumed["weights"][k], v) for k, v in straight["weights"].items())


def test_batch_sampler_state_round_trips_through_json():
    a = practice.BatchSampler(100, 4, seed=1)
    a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = practice.BatchSampler(100, 4, seed=2)
    b.load_state_dict(state)
    assert (a.next_batch() == b.next_batch()).all()


def test_interval_rule_is_the_minimum_and_bad_values_are_clear():
    best = practice.optimal_interval(5, 7200)
    assert best == pytest.approx(math.sqrt(2 * 5 * 7200))
    assert practice.expected_waste(best, 5, 7200) < practice.expected_waste(best * 1.05, 5, 7200)
    assert practice.expected_waste(best, 5, 7200) < practice.expected_waste(best * 0.95, 5, 7200)
    for bad in ((0, 5, 7200), (10, -1, 7200), (10, 5, 0)):
        with pytest.raises(CkptlabError):
            practice.expected_waste(*bad)
    with pytest.raises(CkptlabError):
        practice.interval_view(save_seconds=0)
    assert "end only" in practice.checkpoint_advice(0.01, 1000, 0.05)
    assert practice.checkpoint_advice(5, 2, 24).startswith("Save every")
    fig, text = practice.interval_view(0.05, 4, 2)
    assert "Save every" in text


@pytest.mark.parametrize("answer, status, words", [
    (None, None, "replace"),
    (3, False, "string"),
    ("layers.(", False, "not a valid"),
    (r"layers\..*", False, "output layer"),
    (r"layers\.0\..*", False, "layers.2.bias"),
    ("layers.0", False, "matches no parameter name as a whole"),
    (r"layers\.[02]\..*", True, "4 tensors"),
])
def test_check_body_pattern(runs, answer, status, words):
    root, _ = runs
    net, _ = practice.load_policy(root / "original" / "checkpoints")
    result = practice.check_body_pattern(answer, net)
    assert result.passed is status and words in result.message


def test_catalog_rows_say_which_step_each_eval_return_was_measured_at(runs):
    """A checkpoint saved between epochs carries the evaluation of the last epoch end: the
    ranking shows it, so nobody reads an old evaluation as the checkpoint's own (issue 24)."""
    root, _ = runs
    rows = practice.catalog_rows(root, sort="eval_return", top=20)
    measured = [(r["step"], r["evaluated at step"]) for r in rows
                if r["evaluated at step"] is not None]
    assert measured and all(at <= step for step, at in measured)
    assert any(at < step for step, at in measured)   # the branch saves between evaluations
