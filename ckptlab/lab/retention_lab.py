"""Apply different save and retention strategies to one recorded training run.

A run is trained once, keeping a checkpoint every N steps. Each strategy then replays that
sequence of checkpoints through a real :class:`~ckptlab.checkpoint.CheckpointManager` in its own
directory - real files, real sizes, the real decision log - so strategies can be compared on
exactly the same training history.

Introduced in notebook ``06_retention_strategies``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine import (
    CheckpointManager,
    checkpoint_step,
    load_checkpoint_state,
    read_decision_log,
    read_manifest,
)
from ..engine import BestBy, RetentionPolicy, SaveContext, SavePolicy


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
                ctx = SaveContext(step=step, metrics=metrics, new_metrics=True,
                                  counters={"episode": int(manifest.get("episode") or 0),
                                            "epoch": int(manifest.get("epoch") or 0)})
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
