"""Apply different save and retention strategies to one recorded training run.

A run is trained once, keeping a checkpoint every N steps. Each strategy then replays that
sequence of checkpoints through a real :class:`~ckptlab.checkpoint.CheckpointManager` in its own
directory - real files, real sizes, the real decision log - so strategies can be compared on
exactly the same training history.

:func:`record_run` holds a recorded run in memory (manifests, sizes, policies) and
:func:`simulate_strategy` replays it with the same retention decisions and no files, fast
enough for the lesson's live strategy builder (:func:`strategy_view`) and checkpoint picker
(:func:`checkpoint_view`).

Introduced in notebook ``06_retention_strategies``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import (
    BestBy,
    CheckpointManager,
    CheckpointRecord,
    CkptlabError,
    DiskBudget,
    Hybrid,
    KeepEveryKSteps,
    KeepLastN,
    KeepTopK,
    OnImprovement,
    RetentionPolicy,
    SaveContext,
    SavePolicy,
    checkpoint_step,
    load_checkpoint_state,
    load_parameters,
    read_decision_log,
    read_manifest,
    verify_checkpoint,
)
from ..engine.retention import plan_retention, saved_event, with_save
from .figures import OKABE_ITO, ROLE, caption


@dataclass
class Strategy:
    """When to save (``save_policy``; None saves every recorded checkpoint) and what to keep."""

    name: str
    save_policy: SavePolicy | None = None
    retention: Sequence[RetentionPolicy] = ()
    disk_budget_bytes: int | None = None
    protect_best: bool = True


class _Replayed:
    """A component that hands the manager a recorded checkpoint's state."""

    def __init__(self) -> None:
        self.state: Any = None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = state


@dataclass
class Outcome:
    """What a strategy did over the recorded run."""

    strategy: Strategy
    saved_steps: list[int] = field(default_factory=list)
    disk_bytes: list[tuple[int, int]] = field(default_factory=list)  # (step, bytes on disk)
    alive: list[tuple[int, list[int]]] = field(default_factory=list)  # (step, steps present)
    decisions: list[dict[str, Any]] = field(default_factory=list)     # from decisions.jsonl
    final_steps: list[int] = field(default_factory=list)

    def deleted(self) -> dict[int, tuple[int, str]]:
        """Checkpoint step -> (step of the save that deleted it, reasons)."""
        out: dict[int, tuple[int, str]] = {}
        during = 0  # the save whose retention pass is being logged
        for event in self.decisions:
            if event.get("event") == "saved":
                during = event["step"]
            elif event.get("action") == "delete":
                out.setdefault(event["step"], (during, "; ".join(event["reasons"])))
        return out


def replay_strategy(recorded: Sequence[str | os.PathLike[str]], strategy: Strategy,
                    directory: str | os.PathLike[str], metric: str = "eval_return") -> Outcome:
    """Replay ``recorded`` checkpoints (oldest first) through ``strategy`` into ``directory``."""
    manager = CheckpointManager(directory, retention=strategy.retention,
                                best=BestBy(metric) if strategy.protect_best else None,
                                disk_budget_bytes=strategy.disk_budget_bytes)
    outcome = Outcome(strategy)
    try:
        components: dict[str, _Replayed] = {}
        for path in map(Path, recorded):
            manifest = read_manifest(path)
            step = int(manifest["step"])
            metrics = dict(manifest.get("metrics") or {})
            if strategy.save_policy is not None:
                ctx = _save_context(step, metrics, int(manifest.get("episode") or 0),
                                    int(manifest.get("epoch") or 0))
                reasons = strategy.save_policy.reasons(ctx)
                if not reasons:
                    _observe(manager, outcome, step)
                    continue
                strategy.save_policy.saved(ctx)
            _, states = load_checkpoint_state(path)
            for name, state in states.items():
                if name not in components:
                    components[name] = _Replayed()
                    manager.register(name, components[name])
                components[name].state = state
            manager.save(step, metrics=metrics, extra={"replayed_from": path.name})
            outcome.saved_steps.append(step)
            _observe(manager, outcome, step)
    finally:
        manager.close()
    outcome.decisions = read_decision_log(directory)
    outcome.final_steps = [checkpoint_step(p) for p in manager.committed()]
    return outcome


def _observe(manager: CheckpointManager, outcome: Outcome, step: int) -> None:
    records = manager.records()
    outcome.disk_bytes.append((step, sum(r.size_bytes for r in records)))
    outcome.alive.append((step, [r.step for r in records]))


# --------------------------------------------------------------------------------------------
# The recorded run, held in memory: replays and the checkpoint picker work without its files
# (so the live controls keep working after the lesson's temporary folder is deleted).
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordedCheckpoint:
    """One checkpoint of the recorded run: what its manifest says, and its greedy policy."""

    name: str
    step: int
    episode: int
    epoch: int
    metrics: Mapping[str, Any]
    size_bytes: int                         # data files, as retention counts them
    component_bytes: Mapping[str, int]      # tensor + JSON bytes of each component
    policy: Any = field(repr=False)         # a QNetwork holding this checkpoint's weights


@dataclass(frozen=True)
class RecordedRun:
    """Every checkpoint of one training run (oldest first) and the run's configuration."""

    checkpoints: tuple[RecordedCheckpoint, ...]
    config: Any  # DQNConfig
    save_every: int
    metric: str = "eval_return"

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    @property
    def end_step(self) -> int:
        return self.checkpoints[-1].step

    @property
    def largest_bytes(self) -> int:
        return max(c.size_bytes for c in self.checkpoints)

    def checkpoint(self, step: int) -> RecordedCheckpoint:
        """The recorded checkpoint saved at ``step``."""
        for c in self.checkpoints:
            if c.step == step:
                return c
        raise CkptlabError(f"the recorded run has no checkpoint at step {step}; its "
                           f"checkpoints are at steps {', '.join(map(str, self.steps))}")

    def best_step(self) -> int:
        """The step of the best checkpoint by ``metric`` (the first to reach the top value)."""
        best = BestBy(self.metric).pick([_record(c) for c in self.checkpoints])
        if best is None:
            raise CkptlabError(f"no checkpoint of the recorded run has a {self.metric}")
        return best.step


def record_run(checkpoints: Sequence[str | os.PathLike[str]], metric: str = "eval_return"
               ) -> RecordedRun:
    """Read a run's checkpoints (oldest first) into memory: manifests, sizes and policies.

    Each checkpoint is verified first (hashes); its Q-network is loaded with
    :func:`~ckptlab.engine.load_parameters`.
    """
    from ..dqn.agent import QNetwork
    from ..dqn.config import DQNConfig
    from ..dqn.envs import make_env

    if not checkpoints:
        raise CkptlabError("record_run needs at least one checkpoint")
    infos = [verify_checkpoint(p) for p in checkpoints]
    if infos[0].config is None:
        raise CkptlabError(f"{infos[0].path.name} records no run configuration; record_run "
                           "needs checkpoints written by a ckptlab Trainer")
    config = DQNConfig.from_dict(infos[0].config)
    env = make_env(config.env_id)
    obs_dim, n_actions = int(env.observation_space.shape[0]), int(env.action_space.n)
    env.close()
    recorded = []
    for info in sorted(infos, key=lambda i: i.step):
        net = QNetwork(obs_dim, n_actions, config.hidden_sizes)
        load_parameters(info.path, net, source="agent/q_net")
        net.eval()
        recorded.append(RecordedCheckpoint(
            info.name, info.step, int(info.manifest.get("episode") or 0),
            int(info.manifest.get("epoch") or 0), info.metrics, info.total_bytes,
            {name: int(c["tensor_bytes"]) + int(c["json_bytes"])
             for name, c in info.manifest["components"].items()}, net))
    steps = [c.step for c in recorded]
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    return RecordedRun(tuple(recorded), config, min(gaps) if gaps else steps[0], metric)


def _record(c: RecordedCheckpoint) -> CheckpointRecord:
    return CheckpointRecord(c.name, c.step, dict(c.metrics), c.size_bytes)


def simulate_strategy(run: RecordedRun, strategy: Strategy) -> Outcome:
    """Replay ``run`` through ``strategy`` in memory: the same decisions, log and disk totals
    as :func:`replay_strategy` (both go through :func:`ckptlab.engine.retention.plan_retention`,
    the manager's own planning), without writing files - fast enough for a live control."""
    best = BestBy(run.metric) if strategy.protect_best else None
    budget = DiskBudget(strategy.disk_budget_bytes) \
        if strategy.disk_budget_bytes is not None else None
    policy = copy.deepcopy(strategy.save_policy)  # save policies remember the best so far
    outcome = Outcome(strategy)
    present: dict[str, CheckpointRecord] = {}
    history: list[tuple[int, dict[str, Any]]] = []
    for c in run.checkpoints:
        if policy is not None:
            ctx = _save_context(c.step, dict(c.metrics), c.episode, c.epoch)
            if not policy.reasons(ctx):
                _observe_records(present, outcome, c.step)
                continue
            policy.saved(ctx)
        present[c.name] = _record(c)
        history = with_save(history, c.step, c.metrics)
        outcome.decisions.append(saved_event(c.name, c.step, c.metrics))
        # The manager's own planning function: the same decisions and log lines it writes.
        plan = plan_retention(list(present.values()), strategy.retention, history=history,
                              best=best, budget=budget, latest=c.name)
        outcome.decisions.extend(plan.events)
        for name in plan.doomed:
            del present[name]
        outcome.saved_steps.append(c.step)
        _observe_records(present, outcome, c.step)
    outcome.final_steps = sorted(r.step for r in present.values())
    return outcome


def _save_context(step: int, metrics: dict[str, Any], episode: int, epoch: int
                  ) -> SaveContext:
    """The context a save policy sees at a recorded checkpoint (fresh metrics)."""
    return SaveContext(step=step, metrics=metrics, new_metrics=True,
                       counters={"episode": episode, "epoch": epoch})


def _observe_records(present: Mapping[str, CheckpointRecord], outcome: Outcome,
                     step: int) -> None:
    outcome.disk_bytes.append((step, sum(r.size_bytes for r in present.values())))
    outcome.alive.append((step, sorted(r.step for r in present.values())))


# --------------------------------------------------------------------------------------------
# The strategy builder (lesson 6's live control)
# --------------------------------------------------------------------------------------------

#: The rules the builder offers: what each saves, what survives, and which knobs it reads.
RULES: dict[str, str] = {
    "keep last N": "save every recorded checkpoint; keep the N newest",
    "top K": "save every recorded checkpoint; keep the K best by return "
             "(mean of the last 'smoothing' evaluations)",
    "save if improved": "save only when the return beats the best so far; keep what was saved",
    "hybrid": "save when the return improves or every 'every' steps; keep the top K",
    "milestones + last N": "save every recorded checkpoint; keep multiples of 'every' steps "
                           "and the N newest",
    "keep all": "save every recorded checkpoint; keep all (only the disk budget deletes)",
}


def build_strategy(run: RecordedRun, rule: str, n: int = 3, k: int = 3, smoothing: int = 1,
                   every: int = 2000, budget_kb: int = 0) -> Strategy:
    """The :class:`Strategy` the builder's controls describe, checked against ``run``.

    Args:
        rule: one of :data:`RULES`.
        n: how many newest checkpoints "keep last N" and "milestones + last N" keep.
        k: how many best checkpoints "top K" and "hybrid" keep.
        smoothing: rank by the mean of this many recent evaluations (1: the raw value).
        every: the milestone / periodic-save interval in steps; a multiple of the run's
            save interval (otherwise it would never coincide with a recorded checkpoint).
        budget_kb: a disk budget in kB (1 kB = 1000 bytes); 0 means no budget.

    Raises:
        CkptlabError: an unknown rule or a value that cannot work, with what to change.
    """
    if rule not in RULES:
        raise CkptlabError(f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}")
    for label, value in (("N", n), ("K", k), ("smoothing", smoothing)):
        if int(value) < 1:
            raise CkptlabError(f"{label} must be at least 1 (got {value}): a strategy that "
                               "keeps nothing would delete the checkpoint you resume from")
    if every < 1 or every % run.save_every:
        raise CkptlabError(f"'every' must be a positive multiple of {run.save_every} steps, the "
                           f"recorded run's save interval (got {every})")
    if budget_kb < 0:
        raise CkptlabError(f"the disk budget cannot be negative (got {budget_kb} kB); use 0 "
                           "for no budget")
    if budget_kb and budget_kb * 1000 < run.largest_bytes:
        raise CkptlabError(
            f"a disk budget of {budget_kb} kB is smaller than one checkpoint of this run (the "
            f"largest is {math.ceil(run.largest_bytes / 1000)} kB): the latest checkpoint "
            f"alone would break it. Raise the budget to at least "
            f"{math.ceil(run.largest_bytes / 1000)} kB, or set 0 for no budget")
    metric = run.metric
    save_policy: SavePolicy | None = None
    retention: list[RetentionPolicy] = []
    protect_best = True
    if rule == "keep last N":
        retention, protect_best, name = [KeepLastN(n)], False, f"keep last {n}"
    elif rule == "top K":
        retention = [KeepTopK(metric, k, smooth=smoothing)]
        name = f"top {k}" + (f", smoothed over {smoothing}" if smoothing > 1 else "")
    elif rule == "save if improved":
        save_policy, name = OnImprovement(metric), "save if improved"
    elif rule == "hybrid":
        save_policy = Hybrid(metric, every_steps=every)
        retention = [KeepTopK(metric, k, smooth=smoothing)]
        name = f"hybrid: improved or every {every}, top {k}" + \
            (f", smoothed over {smoothing}" if smoothing > 1 else "")
    elif rule == "milestones + last N":
        retention, protect_best = [KeepEveryKSteps(every), KeepLastN(n)], False
        name = f"milestones every {every} + last {n}"
    else:
        name = "keep all"
    if budget_kb:
        name += f", disk budget {budget_kb:,} kB"
    return Strategy(name, save_policy=save_policy, retention=retention,
                    disk_budget_bytes=budget_kb * 1000 if budget_kb else None,
                    protect_best=protect_best)


@dataclass(frozen=True)
class MomentView:
    """What a strategy's directory holds at one moment of the recorded run."""

    step: int
    present: list[int]                         # steps of the checkpoints on disk
    disk_bytes: int
    last_deletion: tuple[int, int, str] | None  # (checkpoint step, deleted at step, reasons)


def moment(outcome: Outcome, step: int) -> MomentView:
    """The directory right after the recorded checkpoint at ``step`` was (or was not) saved."""
    seen = [(s, alive) for s, alive in outcome.alive if s <= step]
    if not seen:
        first = outcome.alive[0][0] if outcome.alive else 0
        raise CkptlabError(f"step {step} is before the first recorded checkpoint (step "
                           f"{first}); pick a step from {first} on")
    at, present = seen[-1]
    disk = dict(outcome.disk_bytes)[at]
    deletions = [(ckpt, when, why) for ckpt, (when, why) in outcome.deleted().items()
                 if when <= step]
    last = max(deletions, key=lambda d: (d[1], d[0])) if deletions else None
    return MomentView(at, list(present), disk, last)


# The best checkpoint is also starred and a deletion marked x: colour is never the only cue.
_BEST, _KEPT, _GONE, _CURSOR = (OKABE_ITO["orange"], OKABE_ITO["blue"], OKABE_ITO["sky_blue"],
                                OKABE_ITO["vermillion"])


def draw_timeline(ax: Any, outcome: Outcome, run: RecordedRun, step: int | None = None,
                  title: str | None = None, max_labels: int = 20) -> None:
    """One strategy: a lane per saved checkpoint, a bar from its save to its deletion (x), the
    best checkpoint starred.

    With ``step``, a cursor marks that moment and the checkpoints on disk then are drawn
    solid, the others faded.
    """
    best = run.best_step()
    deleted = outcome.deleted()
    end = run.end_step + run.save_every / 2  # survivors run off the right edge
    present = set(moment(outcome, step).present) if step is not None else None
    for lane, s in enumerate(outcome.saved_steps):
        until = deleted[s][0] if s in deleted else end
        color = _BEST if s == best else (_GONE if s in deleted else _KEPT)
        alpha = 1.0 if present is None or s in present else 0.25
        ax.plot([s, until], [lane, lane], color=color, linewidth=5, alpha=alpha,
                solid_capstyle="butt")
        if s in deleted:
            ax.plot([until], [lane], "x", color="black", markersize=6, alpha=alpha)
        if s == best:
            ax.plot([s], [lane], "*", color=_BEST, markeredgecolor="black", markersize=11,
                    alpha=alpha)
    every = max(1, math.ceil(len(outcome.saved_steps) / max_labels))
    lanes = range(0, len(outcome.saved_steps), every)
    ax.set_yticks(list(lanes), [str(outcome.saved_steps[i]) for i in lanes])
    ax.set_ylim(len(outcome.saved_steps) - 0.5, -0.5)
    ax.set_xlim(0, end)
    ax.grid(False, axis="y")
    ax.set_ylabel("checkpoint (step)")
    if step is not None:
        ax.axvline(step, color=_CURSOR, linewidth=1.5, linestyle="--")
    kept_best = "keeps" if best in outcome.final_steps else "LOSES"
    ax.set_title(title or f"{outcome.strategy.name}: {len(outcome.saved_steps)} saves, "
                 f"{len(outcome.final_steps)} kept, {kept_best} the best", fontsize="medium",
                 loc="left")


def draw_disk(ax: Any, outcome: Outcome, run: RecordedRun, step: int | None = None,
              ymax_kb: float | None = None) -> None:
    """Disk in use after each recorded step (kB), with the budget as a dashed line."""
    steps = [s for s, _ in outcome.disk_bytes]
    kb = [b / 1000 for _, b in outcome.disk_bytes]
    ax.step(steps, kb, where="post", color=_KEPT, linewidth=1.6, label="disk in use")
    budget = outcome.strategy.disk_budget_bytes
    if budget is not None:
        ax.axhline(budget / 1000, color=_CURSOR, linestyle="--", linewidth=1.2,
                   label=f"budget {budget // 1000:,} kB")
    if step is not None:
        ax.axvline(step, color=_CURSOR, linewidth=1.5, linestyle="--")
    ax.set_xlim(0, run.end_step + run.save_every / 2)
    ax.set_ylim(0, ymax_kb or max(kb + [budget / 1000 if budget else 0]) * 1.15)
    ax.set_ylabel("disk (kB)")
    ax.yaxis.set_major_formatter(_integer_formatter())
    ax.legend(loc="upper left")


def _integer_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:,.0f}")


def strategy_panels(outcomes: Sequence[Outcome], run: RecordedRun) -> Any:
    """One row per strategy: its timeline (left) and its disk use with any budget (right),
    all on the same axes so they compare at a glance."""
    import matplotlib.pyplot as plt

    # Compact rows (a few lane labels each) keep seven strategies within about one screen.
    fig, axes = plt.subplots(len(outcomes), 2, figsize=(13, 1.65 * len(outcomes) + 0.6),
                             gridspec_kw={"width_ratios": [3, 1.4]}, squeeze=False,
                             sharex=True)
    top = max(b for o in outcomes for _, b in o.disk_bytes) / 1000 * 1.15
    for (timeline_ax, disk_ax), o in zip(axes, outcomes):
        draw_timeline(timeline_ax, o, run, max_labels=6)
        timeline_ax.set_ylabel("")
        draw_disk(disk_ax, o, run, ymax_kb=top)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    fig.suptitle("each bar is one checkpoint (steps at the left), from its save to its deletion "
                 "(x); \u2605 the best policy; dark bars: still there at the end")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    best = run.best_step()
    keep = [o.strategy.name for o in outcomes if best in o.final_steps]
    peaks = [max(b for _, b in o.disk_bytes) / 1000 for o in outcomes]
    return caption(fig, f"{len(outcomes)} retention strategies replayed over one recorded run "
                        f"of {len(run.steps)} checkpoints, one row each: {len(keep)} of "
                        f"{len(outcomes)} still hold the best policy (step {best}) at the end, "
                        f"and their peak disk after a save ranges from {min(peaks):,.0f} to "
                        f"{max(peaks):,.0f} kB.")


def strategy_rows(outcomes: Sequence[Outcome], run: RecordedRun) -> list[dict[str, Any]]:
    """One row per strategy: saves, what is left, disk (whole kB) and whether the best
    checkpoint survived."""
    best = run.best_step()
    rows = []
    for o in outcomes:
        gaps = [b - a for a, b in zip([0, *o.saved_steps], [*o.saved_steps, run.end_step])]
        rows.append({"strategy": o.strategy.name, "saves": len(o.saved_steps),
                     "kept at the end": len(o.final_steps),
                     "peak disk after a save (kB)": round(max(b for _, b in o.disk_bytes) / 1000),
                     "final disk (kB)": round(o.disk_bytes[-1][1] / 1000),
                     "worst-case steps lost": max(gaps),
                     "holds the best policy": "yes" if best in o.final_steps else "NO"})
    return rows


def strategy_view(run: RecordedRun, rule: str, n: int = 3, k: int = 3, smoothing: int = 1,
                  every: int = 2000, budget_kb: int = 0, step: int | None = None
                  ) -> list[Any]:
    """The live builder's answer: the built strategy's timeline and disk use with a cursor at
    ``step`` (default: the end), then what is on disk at that moment and why the last
    deletion happened. Introduced in ``06_retention_strategies``."""
    import html

    import matplotlib.pyplot as plt
    from IPython.display import HTML

    strategy = build_strategy(run, rule, n, k, smoothing, every, budget_kb)
    outcome = simulate_strategy(run, strategy)
    step = run.end_step if step is None else int(step)
    if not run.steps[0] <= step <= run.end_step:
        raise CkptlabError(f"step {step} is outside the recorded run ({run.steps[0]} to "
                           f"{run.end_step})")
    now = moment(outcome, step)
    fig, (timeline_ax, disk_ax) = plt.subplots(
        2, 1, figsize=(10, 5.2), sharex=True, gridspec_kw={"height_ratios": [2.4, 1]})
    draw_timeline(timeline_ax, outcome, run, step)
    timeline_ax.set_title(f"{strategy.name} - at step {now.step} (dashed line): "
                          f"{len(now.present)} checkpoints on disk, "
                          f"{now.disk_bytes // 1000:,} kB", fontsize="medium", loc="left")
    draw_disk(disk_ax, outcome, run, step)
    disk_ax.set_xlabel("training step")
    # Fixed margins: tight_layout would measure every label again at each move of a slider.
    fig.subplots_adjust(left=0.1, right=0.98, top=0.94, bottom=0.1, hspace=0.12)
    budget = strategy.disk_budget_bytes
    rows = [("rule", f"{rule}: {RULES[rule]}"),
            (f"on disk after step {now.step}",
             ", ".join(map(str, now.present)) + f" ({len(now.present)} checkpoints)"),
            ("disk in use", f"{now.disk_bytes // 1000:,} kB" +
             (f" of a {budget // 1000:,} kB budget" if budget else " (no budget)"))]
    if now.last_deletion is None:
        rows.append(("last deletion", "none yet"))
    else:
        ckpt, when, why = now.last_deletion
        rows.append(("last deletion", f"checkpoint {ckpt}, at the save of step {when}: {why}"))
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(a)}</th>"
                    f"<td style='text-align:left'>{html.escape(b)}</td></tr>" for a, b in rows)
    best = run.best_step()
    caption(fig, f"Strategy {strategy.name} over the recorded run with the cursor at step "
                 f"{now.step}: {len(now.present)} checkpoints on disk using "
                 f"{now.disk_bytes // 1000:,} kB"
                 + (f" of a {budget // 1000:,} kB budget" if budget else "")
                 + f"; it saved {len(outcome.saved_steps)} times and "
                 + ("keeps" if best in outcome.final_steps else "loses")
                 + f" the best policy (step {best}).")
    return [fig, HTML(f"<table class='ckptlab-moment'>{table}</table>")]


# --------------------------------------------------------------------------------------------
# The checkpoint picker
# --------------------------------------------------------------------------------------------

def play_checkpoint(run: RecordedRun, step: int, episodes: int = 3) -> Any:
    """Play the greedy policy of the checkpoint saved at ``step`` for ``episodes`` episodes.

    The episodes start where the run's own evaluation at that step started (same seeds), so
    with ``episodes = config.eval_episodes`` their mean is the ``eval_return`` in the manifest.
    Returns an :class:`~ckptlab.dqn.envs.Evaluation`.
    """
    import torch

    from ..dqn.envs import GreedyEvaluator

    if not 1 <= episodes <= 10:
        raise CkptlabError(f"episodes must be between 1 and 10 (got {episodes})")
    checkpoint = run.checkpoint(step)
    evaluator = GreedyEvaluator(run.config.env_id, episodes, run.config.seed)

    def policy(obs: Any) -> Any:
        with torch.inference_mode():
            return checkpoint.policy(torch.as_tensor(obs, dtype=torch.float32)).argmax(1).numpy()

    try:
        return evaluator.evaluate(policy, step)
    finally:
        evaluator.close()


def checkpoint_view(run: RecordedRun, step: int, episodes: int = 3) -> list[Any]:
    """The picker's answer: the checkpoint's manifest metrics and size, and the greedy return
    of its policy over ``episodes`` freshly played episodes. Introduced in
    ``06_retention_strategies``."""
    import matplotlib.pyplot as plt

    from .lessons import show_table

    c = run.checkpoint(int(step))
    played = play_checkpoint(run, c.step, episodes)
    rows = [{"checkpoint": c.name, "size (kB)": round(c.size_bytes / 1000),
             "replay buffer (kB)": round(c.component_bytes.get("replay_buffer", 0) / 1000),
             **{k: _number(v) for k, v in c.metrics.items()}}]
    fig, ax = plt.subplots(figsize=(8, 2.4))
    ax.plot(run.steps, [x.metrics.get(run.metric) for x in run.checkpoints], "o-",
            color=ROLE["reference"], label=f"{run.metric} in each manifest")
    ax.plot([c.step] * len(played.returns), played.returns, "D", color=_BEST,
            markeredgecolor="black", markersize=8,
            label=f"played now: {len(played.returns)} greedy episodes")
    ax.set_xlabel("checkpoint (step)")
    ax.set_ylabel("return")
    ax.set_ylim(0, 520)
    ax.legend(loc="upper left")
    returns = ", ".join(f"{r:.0f}" for r in played.returns)
    ax.set_title(f"{c.name}: played returns {returns} (mean {played.mean_return:.0f})",
                 fontsize="medium")
    fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.22)
    recorded = c.metrics.get(run.metric)
    caption(fig, f"{run.metric} recorded in each of the run's {len(run.steps)} checkpoints, "
                 f"with the policy of {c.name} played now: returns {returns} (mean "
                 f"{played.mean_return:.0f}); its manifest records {run.metric} "
                 + (f"{recorded:.0f}." if isinstance(recorded, (int, float)) else "none."))
    return [show_table(rows), fig]


def _number(value: Any) -> Any:
    """Whole floats as integers (153, not 153.000); others as they are."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def attach_play(view: Any, control: str, interval_ms: int = 700) -> Any:
    """Add a Play button to a :class:`~ckptlab.lab.widgets.LiveView` that steps the slider
    ``control`` from its minimum to its maximum, one value per ``interval_ms``; returns it.

    The button is linked to the slider in the browser (``jslink``), so each tick moves the
    slider and the view redraws exactly as if the learner had dragged it.
    """
    import ipywidgets as widgets

    if control not in view.controls:
        raise CkptlabError(f"no control named {control!r}; the view has: "
                           f"{', '.join(view.controls)}")
    slider = view.controls[control]
    play = widgets.Play(min=slider.min, max=slider.max, step=slider.step, value=slider.value,
                        interval=interval_ms, description="Play", repeat=False)
    widgets.jslink((play, "value"), (slider, "value"))
    row = view.widget.children[0]
    row.children = (*row.children, play)
    return play
