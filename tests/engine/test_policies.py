"""Save and retention policies, including property-based tests of retention's invariants."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptlab import CheckpointManager
from ckptlab.dqn.policies import EPISODE_END, EveryNEpisodes
from ckptlab.engine import read_decision_log
from ckptlab.engine.policies import (
    FINAL,
    START,
    AnyOf,
    BestBy,
    CheckpointRecord,
    DiskBudget,
    EveryNSteps,
    EveryTSeconds,
    Final,
    Hybrid,
    KeepEveryKSteps,
    KeepLastN,
    KeepTopK,
    OnImprovement,
    OnStart,
    SaveContext,
    decide_retention,
)


def ctx(step, **kw):
    events = set(kw.pop("events", ()))
    for flag, event in (("episode_ended", EPISODE_END), ("is_start", START), ("is_final", FINAL)):
        if kw.pop(flag, False):
            events.add(event)
    return SaveContext(step=step, counters={"episode": kw.pop("episode", 0), "epoch": 0},
                       events=frozenset(events), **kw)


def test_step_episode_start_final_policies():
    assert EveryNSteps(5).reasons(ctx(10)) == ["every 5 steps"]
    assert EveryNSteps(5).reasons(ctx(11)) == []
    assert EveryNSteps(0).reasons(ctx(10)) == []  # 0 disables
    assert EveryNEpisodes(3).reasons(ctx(7, episode=6, episode_ended=True)) == ["every 3 episodes"]
    assert EveryNEpisodes(3).reasons(ctx(7, episode=6, episode_ended=False)) == []
    assert OnStart().reasons(ctx(0, is_start=True)) and not OnStart().reasons(ctx(0))
    assert Final().reasons(ctx(9, is_final=True)) == ["final"]


def test_every_t_seconds_restarts_after_each_save():
    policy = EveryTSeconds(10)
    assert policy.reasons(ctx(1, now=100.0)) == []
    assert policy.reasons(ctx(2, now=109.9)) == []
    assert policy.reasons(ctx(3, now=110.0)) == ["every 10 s"]
    policy.saved(ctx(3, now=110.0))
    assert policy.reasons(ctx(4, now=115.0)) == []


def test_on_improvement_with_min_delta_and_state():
    policy = OnImprovement("eval_return", "max", min_delta=5)
    fresh = dict(new_metrics=True)
    assert policy.reasons(ctx(1, metrics={"eval_return": 10.0}, **fresh))
    assert not policy.reasons(ctx(2, metrics={"eval_return": 14.0}, **fresh))  # < +5
    assert not policy.reasons(ctx(3, metrics={"eval_return": 30.0}))  # not a new evaluation
    assert policy.reasons(ctx(4, metrics={"eval_return": 30.0}, **fresh))
    restored = OnImprovement("eval_return", "max", min_delta=5)
    restored.load_state_dict(policy.state_dict())
    assert not restored.reasons(ctx(5, metrics={"eval_return": 33.0}, **fresh))
    loss = OnImprovement("loss", "min")
    assert loss.reasons(ctx(1, metrics={"loss": 1.0}, **fresh))
    assert loss.reasons(ctx(2, metrics={"loss": 0.5}, **fresh))
    assert not loss.reasons(ctx(3, metrics={"loss": 0.7}, **fresh))


def test_hybrid_is_improved_or_every_n():
    policy = Hybrid("eval_return", every_steps=100)
    assert policy.reasons(ctx(100)) == ["every 100 steps"]
    both = policy.reasons(ctx(200, metrics={"eval_return": 1.0}, new_metrics=True))
    assert len(both) == 2 and "improved" in both[0]
    state = AnyOf(OnImprovement("eval_return"), EveryNSteps(3)).state_dict()
    assert json.loads(json.dumps(state)) == state  # JSON-safe, it lives in the manifest


def rec(step, value=None, size=100):
    return CheckpointRecord(f"step_{step:08d}", step,
                            {} if value is None else {"eval_return": value}, size)


def names(decisions, keep=True):
    return [d.name for d in decisions if d.keep == keep]


def test_keep_last_and_protection_of_latest_and_best():
    records = [rec(1, 50), rec(2, 400), rec(3, 10), rec(4, 20), rec(5, 30)]
    decisions = decide_retention(records, [KeepLastN(2)], best=BestBy("eval_return"))
    assert names(decisions) == ["step_00000002", "step_00000004", "step_00000005"]
    best = next(d for d in decisions if d.name == "step_00000002")
    assert any("best by eval_return" in r for r in best.reasons)
    gone = next(d for d in decisions if d.name == "step_00000001")
    assert gone.reasons == ("not among the 2 newest (#5)",)


def test_top_k_smoothing_prefers_consistent_over_lucky():
    # Step 3 got one lucky evaluation; steps 7-8 were consistently good.
    values = [100, 120, 480, 110, 300, 320, 330, 340]
    records = [rec(i + 1, v) for i, v in enumerate(values)]
    history = [(r.step, r.metrics) for r in records]
    raw = decide_retention(records, [KeepTopK("eval_return", 1)], history=history)
    smooth = decide_retention(records, [KeepTopK("eval_return", 1, smooth=3)], history=history)
    assert "step_00000003" in names(raw)
    assert "step_00000003" not in names(smooth) and "step_00000008" in names(smooth)


def test_keep_every_k_and_disk_budget():
    records = [rec(s, size=100) for s in (10, 20, 30, 40, 50)]
    decisions = decide_retention(records, [KeepEveryKSteps(20), KeepLastN(1)])
    assert names(decisions) == ["step_00000020", "step_00000040", "step_00000050"]
    decisions = decide_retention(records, [], budget=DiskBudget(250))
    assert names(decisions) == ["step_00000040", "step_00000050"]
    assert "disk budget" in next(d for d in decisions if not d.keep).reasons[0]
    # Protected checkpoints stay even when they alone exceed the budget, and say so.
    decisions = decide_retention(records, [], budget=DiskBudget(10))
    assert names(decisions) == ["step_00000050"]
    assert any("protected" in r for r in decisions[-1].reasons)


# --- property-based: a real manager, random saves, random metrics, random policies ---------

class Blob:
    def __init__(self) -> None:
        self.payload = "x"

    def state_dict(self):
        return {"payload": self.payload}

    def load_state_dict(self, state):
        self.payload = state["payload"]


policy_sets = st.lists(st.one_of(
    st.builds(KeepLastN, st.integers(1, 4)),
    st.builds(KeepTopK, st.just("eval_return"), st.integers(1, 3), st.sampled_from(["max", "min"]),
              st.integers(1, 3)),
    st.builds(KeepEveryKSteps, st.integers(2, 5)),
), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=policy_sets,
       values=st.lists(st.one_of(st.none(), st.floats(-100, 500, allow_nan=False)),
                       min_size=1, max_size=12),
       budget=st.one_of(st.none(), st.integers(0, 6000)),
       payload_sizes=st.lists(st.integers(1, 900), min_size=12, max_size=12))
def test_retention_invariants_hold_after_every_save(policies, values, budget, payload_sizes):
    directory = Path(tempfile.mkdtemp())
    try:
        blob = Blob()
        best = BestBy("eval_return", "max")
        manager = CheckpointManager(directory / "ck", retention=policies, best=best,
                                    disk_budget_bytes=budget)
        manager.register("blob", blob)
        saved: dict[int, float | None] = {}
        for i, value in enumerate(values):
            step = i + 1
            blob.payload = "x" * payload_sizes[i]
            manager.save(step, metrics={} if value is None else {"eval_return": value})
            saved[step] = value
            present = {int(p.name[5:]) for p in manager.committed()}
            # The newest checkpoint is never deleted.
            assert step in present
            # The best so far is never deleted, and the best pointer names it.
            scored = [(v, s) for s, v in saved.items() if v is not None]
            if scored:
                best_value = max(v for v, _ in scored)
                best_step = min(s for v, s in scored if v == best_value)
                assert best_step in present
                assert manager.best_pointer() == f"step_{best_step:08d}"
            # KeepLastN keeps its newest ones unless the disk budget had to take them.
            for policy in policies:
                if isinstance(policy, KeepLastN) and budget is None:
                    assert set(sorted(saved)[-policy.n:]) <= present
            # Within budget, unless only protected checkpoints remain.
            if budget is not None:
                total = sum(r.size_bytes for r in manager.records())
                assert total <= budget or len(present) <= 2
            # Without any rule, nothing is ever deleted.
            if not policies and budget is None:
                assert present == set(saved)
        # Every deletion is in the log, with a reason.
        log = read_decision_log(directory / "ck")
        deleted = {e["step"] for e in log if e.get("action") == "delete"}
        assert deleted == set(saved) - {int(p.name[5:]) for p in manager.committed()}
        assert all(e["reasons"] for e in log if e.get("event") == "retention")
        manager.close()
    finally:
        shutil.rmtree(directory)


def test_save_policy_state_keys_are_stable_when_policies_change():
    """State is keyed by class name (numbered on repeats), not by repr: changing an argument
    or adding a policy of another class keeps every other policy's state."""
    policy = AnyOf(OnImprovement("eval_return"), EveryNSteps(1000), OnImprovement("loss", "min"))
    assert list(policy.state_dict()) == ["OnImprovement", "EveryNSteps", "OnImprovement#2"]
    policy.policies[0].best = 300.0
    changed = AnyOf(OnStart(), OnImprovement("eval_return", min_delta=5.0), EveryNSteps(500),
                    OnImprovement("loss", "min"))
    changed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert changed.policies[1].best == 300.0


def test_counts_policy_reads_named_events_and_counters():
    from ckptlab.engine.policies import EveryNCounts

    every_2nd_epoch = EveryNCounts(2, counter="epoch", event="epoch_end")
    assert every_2nd_epoch.reasons(SaveContext(step=5, events=frozenset({"epoch_end"}),
                                               counters={"epoch": 4})) == ["every 2 epochs"]
    assert every_2nd_epoch.reasons(SaveContext(step=5, counters={"epoch": 4})) == []
