"""Retention planning and the decision log: which checkpoints stay, where ``best`` points, and
the lines that record why - decided without touching the disk.

:func:`plan_retention` is a pure function: given the checkpoints present (their records), the
run's history of saves, the retention policies, a disk budget and the ``best`` rule, it returns
a :class:`RetentionPlan` - a keep/delete decision with reasons for each checkpoint, what the
``best`` pointer must now hold, and the decision-log events that record it.
:class:`~.manager.CheckpointManager` calls it before every deletion and carries the plan out;
lesson 6's strategy lab (``ckptlab.lab.retention_lab``) calls the same function to replay a
recorded run in memory, so what a learner sees is exactly what the manager would do.

The decision log (``decisions.jsonl``) is one JSON object per line: ``saved`` (checkpoint, step,
metrics), ``retention`` (keep or delete, with reasons), ``rolled_back``, ``deleted``,
``pointer_repaired``, ... :func:`history_from_events` rebuilds the run's history of saves from
it (saves abandoned by a rollback are forgotten), which rules that score a checkpoint by a
moving average of evaluations need. :func:`append_events` appends to it.

Introduced in notebook ``06_retention_strategies``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .format import DECISIONS
from .policies import BestBy, CheckpointRecord, Decision, DiskBudget, RetentionPolicy
from .policies import decide_retention as _decide

History = list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class RetentionPlan:
    """What retention decided, before any of it is carried out.

    Attributes:
        decisions: one :class:`~.policies.Decision` per checkpoint present, with reasons.
        best_record: what the ``best`` pointer must now hold (``None``: leave it as it is).
        drop_best: remove the ``best`` pointer (it names nothing that is kept).
        events: the decision-log lines that record the decisions.
    """

    decisions: list[Decision]
    best_record: dict[str, Any] | None = None
    drop_best: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def doomed(self) -> list[str]:
        """The names of the checkpoints to delete."""
        return [d.name for d in self.decisions if not d.keep]


def with_save(history: History, step: int, metrics: Mapping[str, Any]) -> History:
    """``history`` with the save at ``step`` recorded (a re-save of a step replaces it)."""
    return sorted([h for h in history if h[0] != step] + [(step, dict(metrics))],
                  key=lambda h: h[0])


def saved_event(name: str, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The decision-log line that records a save."""
    return {"event": "saved", "checkpoint": name, "step": step, "metrics": dict(metrics)}


def history_from_events(events: Iterable[Mapping[str, Any]]) -> History:
    """``(step, metrics)`` of every save the log records, deleted ones too; a ``rolled_back``
    event forgets the saves after its step. A damaged line is skipped: the log is a record,
    not a dependency."""
    latest_by_step: dict[int, dict[str, Any]] = {}
    for event in events:
        try:
            if event.get("event") == "saved":
                metrics = event.get("metrics")
                latest_by_step[int(event["step"])] = \
                    dict(metrics) if isinstance(metrics, dict) else {}
            elif event.get("event") == "rolled_back":
                to = int(event["step"])
                latest_by_step = {s: m for s, m in latest_by_step.items() if s <= to}
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return sorted(latest_by_step.items())


def plan_retention(records: Sequence[CheckpointRecord], policies: Sequence[RetentionPolicy], *,
                   history: History, best: BestBy | None = None,
                   protect: Mapping[str, str] | None = None, budget: DiskBudget | None = None,
                   latest: str | None = None, current_best: Mapping[str, Any] | None = None,
                   best_pointer_present: bool = False) -> RetentionPlan:
    """Decide retention and the ``best`` pointer for the checkpoints ``records``.

    Args:
        records: the committed checkpoints present.
        policies: the retention rules (a checkpoint survives if any rule keeps it).
        history: the run's saves, oldest first (:func:`history_from_events`,
            :func:`with_save`).
        best: how the best checkpoint is chosen (it is never deleted); ``None``: no rule.
        protect: checkpoints never deleted, by name, with the reason (a ``best`` pointer that
            records no metric protects its checkpoint by name).
        budget: a disk budget that deletes the lowest-ranked checkpoints until it holds.
        latest: the checkpoint just saved: after a save only what changed is logged (the
            deletions, and why the new one is kept), so the log grows by a few lines.
        current_best: what the ``best`` pointer holds now (``None``: missing or damaged).
        best_pointer_present: whether a ``best`` file exists (a damaged one is dropped).
    """
    decisions = _decide(list(records), list(policies), best=best, budget=budget,
                        history=history, latest=latest, protect=dict(protect or {}))
    pick = best.pick(list(records)) if best is not None else None
    best_record, drop_best = None, False
    if pick is not None and best is not None:
        wanted = {"checkpoint": pick.name, "step": pick.step, "metric": best.metric,
                  "mode": best.mode}
        if current_best is None or any(current_best.get(k) != v for k, v in wanted.items()):
            best_record = wanted
    elif current_best is None:  # missing, or unreadable: never leave a damaged pointer
        drop_best = best_pointer_present
    else:  # never name a checkpoint that is gone, or that retention is about to delete
        doomed = {d.name for d in decisions if not d.keep}
        drop_best = (current_best["checkpoint"] not in {r.name for r in records}
                     or current_best["checkpoint"] in doomed)
    events = []
    if policies or budget is not None:
        shown = decisions if latest is None else \
            [d for d in decisions if not d.keep or d.name == latest]
        events = [{"event": "retention", "checkpoint": d.name, "step": d.step,
                   "action": "keep" if d.keep else "delete", "reasons": list(d.reasons)}
                  for d in shown]
    return RetentionPlan(decisions, best_record, drop_best, events)


def append_events(directory: str | os.PathLike[str], events: Iterable[Mapping[str, Any]]
                  ) -> None:
    """Append ``events`` to the run's decision log, one JSON line each, with the time."""
    lines = "".join(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **e}) + "\n"
                    for e in events)
    if not lines:
        return
    with open(Path(directory) / DECISIONS, "a+b") as f:
        # The log is not fsynced: a power cut may keep only the start of the last append.
        # Begin on a new line, or that torn line would swallow this one.
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                lines = "\n" + lines
        f.write(lines.encode("utf-8"))
