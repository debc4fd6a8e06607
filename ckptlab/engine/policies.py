"""Save policies (when to write a checkpoint) and retention policies (which ones to keep).

Both are small objects that compose, in the spirit of Orbax's CheckpointManager:

* a **save policy** looks at a :class:`SaveContext` after every training step and returns the
  reasons to save now (an empty list: do not save). :class:`AnyOf` combines several.
* a **retention policy** looks at the committed checkpoints and says, for each, whether it
  wants to keep it and why. A checkpoint survives when *any* policy keeps it; the latest and
  the best checkpoint always survive; :class:`DiskBudget` then trims the oldest unprotected
  ones until the total fits. Every decision is logged with its reasons.

Introduced in notebook ``06_retention_strategies``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .errors import CkptlabError

Mode = Literal["min", "max"]


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise CkptlabError(f"mode must be 'min' or 'max' (got {mode!r})")


# Arguments are checked when a policy is built, so a bad one fails at once with its name,
# never mid-training (``EveryNEpisodes(0)`` used to divide by zero thousands of steps in).

def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CkptlabError(f"{owner} needs {name} to be a whole number >= {minimum} "
                           f"(got {value!r})")


def _check_number(owner: str, name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise CkptlabError(f"{owner} needs {name} to be a finite number "
                           f"{'> 0' if positive else '>= 0'} (got {value!r})")


def _check_name(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise CkptlabError(f"{owner} needs {name} to be a non-empty string (got {value!r})")


def _better(a: float, b: float | None, mode: Mode, min_delta: float = 0.0) -> bool:
    if b is None:
        return True
    return a > b + min_delta if mode == "max" else a < b - min_delta


# --------------------------------------------------------------------------------------------
# Save policies
# --------------------------------------------------------------------------------------------

START = "start"   # event: before any training (step 0 of a fresh run)
FINAL = "final"   # event: the run just reached its last step


@dataclass(frozen=True)
class SaveContext:
    """What a save policy can see after a training step.

    Neutral on purpose: the engine knows steps, time, metrics, named events and named
    counters, not what is being trained. A training loop reports its own notions through
    ``events`` (``{"episode_end"}``, ``{"epoch_end"}``, ...) and ``counters``
    (``{"episode": 12, "epoch": 3}``); :class:`EveryNCounts` saves on them.
    """

    step: int
    now: float = 0.0              # a monotonic clock at this step (wall_clock())
    # values as of the latest refresh (e.g. eval_return at an epoch end)
    metrics: Mapping[str, float] = field(default_factory=dict)
    new_metrics: bool = False     # ``metrics`` were refreshed at this step (an evaluation ran)
    events: frozenset[str] = frozenset()        # what happened at this step (START, FINAL, ...)
    counters: Mapping[str, int] = field(default_factory=dict)  # named counts, e.g. "episode"

    @property
    def is_start(self) -> bool:
        return START in self.events

    @property
    def is_final(self) -> bool:
        return FINAL in self.events


class SavePolicy(Protocol):
    """Decides whether to save after a step; ``reasons`` returns why (empty: don't save)."""

    def reasons(self, ctx: SaveContext) -> list[str]: ...

    def saved(self, ctx: SaveContext) -> None:
        """Told after every save, whichever policy asked for it."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class _Stateless:
    def saved(self, ctx: SaveContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class EveryNSteps(_Stateless):
    """Save when the step count is a multiple of ``n``."""

    n: int  # 0: never (only other policies, such as Final(), save)

    def __post_init__(self) -> None:
        _check_int("EveryNSteps", "n", self.n, 0)

    def reasons(self, ctx: SaveContext) -> list[str]:
        return [f"every {self.n} steps"] if self.n and ctx.step and ctx.step % self.n == 0 else []


@dataclass
class EveryNCounts(_Stateless):
    """Save when ``event`` happens and the named ``counter`` is then a multiple of ``n``.

    For example ``EveryNCounts(10, counter="episode", event="episode_end")`` saves after every
    tenth episode (the DQN run's ``EveryNEpisodes(10)``).
    """

    n: int
    counter: str
    event: str

    def __post_init__(self) -> None:
        _check_int(type(self).__name__, "n", self.n, 1)
        _check_name(type(self).__name__, "counter", self.counter)
        _check_name(type(self).__name__, "event", self.event)

    def reasons(self, ctx: SaveContext) -> list[str]:
        if self.event not in ctx.events:
            return []
        count = ctx.counters.get(self.counter, 0)
        return [f"every {self.n} {self.counter}s"] if count % self.n == 0 else []


@dataclass
class EveryTSeconds:
    """Save when ``seconds`` of wall time have passed since the last save (or the start).

    Wall time decides only *when* checkpoints are written, never what training does, so runs
    stay exactly reproducible. The timer restarts after a resume.
    """

    seconds: float
    _last: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_number("EveryTSeconds", "seconds", self.seconds, positive=True)

    def reasons(self, ctx: SaveContext) -> list[str]:
        if self._last is None:
            self._last = ctx.now
        return [f"every {self.seconds:g} s"] if ctx.now - self._last >= self.seconds else []

    def saved(self, ctx: SaveContext) -> None:
        self._last = ctx.now

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last = None


@dataclass
class OnStart(_Stateless):
    """Save a baseline before any training (step 0 of a fresh run)."""

    def reasons(self, ctx: SaveContext) -> list[str]:
        return ["on start (baseline before training)"] if ctx.is_start else []


@dataclass
class Final(_Stateless):
    """Save when the run reaches its last step."""

    def reasons(self, ctx: SaveContext) -> list[str]:
        return ["final"] if ctx.is_final else []


@dataclass
class OnImprovement:
    """Save when ``metric`` improves on the best value seen so far by more than ``min_delta``.

    Only fresh values count (``ctx.new_metrics``), so one good evaluation saves once.
    """

    metric: str
    mode: Mode = "max"
    min_delta: float = 0.0
    best: float | None = field(default=None, repr=False)  # the best value so far

    def __post_init__(self) -> None:
        _check_name("OnImprovement", "metric", self.metric)
        _check_mode(self.mode)
        _check_number("OnImprovement", "min_delta", self.min_delta, positive=False)

    def reasons(self, ctx: SaveContext) -> list[str]:
        value = ctx.metrics.get(self.metric)
        if not ctx.new_metrics or value is None or not math.isfinite(value):
            return []
        if not _better(value, self.best, self.mode, self.min_delta):
            return []
        previous = "none" if self.best is None else f"{self.best:.4g}"
        self.best = value
        return [f"{self.metric} improved to {value:.4g} (best before: {previous})"]

    def saved(self, ctx: SaveContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")


class AnyOf:
    """Save when any of ``policies`` asks to; all reasons are reported."""

    def __init__(self, *policies: SavePolicy) -> None:
        for policy in policies:
            if not callable(getattr(policy, "reasons", None)):
                raise CkptlabError(f"AnyOf takes save policies (objects with reasons()); got "
                                   f"{policy!r}")
        self.policies = list(policies)

    def reasons(self, ctx: SaveContext) -> list[str]:
        # Ask every policy (not just until the first yes) so stateful ones stay up to date.
        return [r for policy in self.policies for r in policy.reasons(ctx)]

    def saved(self, ctx: SaveContext) -> None:
        for policy in self.policies:
            policy.saved(ctx)

    def state_keys(self) -> list[str]:
        """A stable key per policy: its class name, numbered when a class repeats
        (``OnImprovement``, ``OnImprovement#2``). Adding a policy of another class, or
        changing a policy's arguments, does not move any other policy's state."""
        seen: dict[str, int] = {}
        keys = []
        for policy in self.policies:
            name = type(policy).__name__
            seen[name] = seen.get(name, 0) + 1
            keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return keys

    def state_dict(self) -> dict[str, Any]:
        return {key: p.state_dict() for key, p in zip(self.state_keys(), self.policies)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Matched by key: a policy with no saved state (newly added) starts fresh.
        for key, policy in zip(self.state_keys(), self.policies):
            if key in state:
                policy.load_state_dict(state[key])

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.policies))})"


def Hybrid(metric: str, every_steps: int, mode: Mode = "max",  # noqa: N802 - a constructor
           min_delta: float = 0.0) -> AnyOf:
    """Save when ``metric`` improves OR every ``every_steps`` steps."""
    _check_int("Hybrid", "every_steps", every_steps, 1)
    return AnyOf(OnImprovement(metric, mode, min_delta), EveryNSteps(every_steps))


def first_scheduled_save(policy: SavePolicy, after_step: int, last_step: int) -> int | None:
    """The first step after ``after_step`` at which ``policy`` saves by its schedule, or
    ``last_step`` when it certainly saves nothing before then.

    Only step schedules are predictable: :class:`EveryNSteps` (its next multiple),
    :class:`OnStart` (the baseline, before ``after_step``) and :class:`Final`. A policy
    driven by time, metrics, counters or unknown to the engine may save at any step, so the
    answer is then ``None`` (cannot tell). A loop uses this to warn, before it starts, that a
    crash before its last step would lose everything since ``after_step``.
    """
    if isinstance(policy, AnyOf):
        firsts = [first_scheduled_save(p, after_step, last_step) for p in policy.policies]
        return None if None in firsts else min(firsts, default=last_step)
    if isinstance(policy, (OnStart, Final)):
        return last_step
    if type(policy) is EveryNSteps:  # a subclass may change when it saves
        if policy.n == 0:
            return last_step
        return min(last_step, (after_step // policy.n + 1) * policy.n)
    return None


# --------------------------------------------------------------------------------------------
# Retention policies
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointRecord:
    """What retention knows about one committed checkpoint."""

    name: str
    step: int
    metrics: Mapping[str, Any]
    size_bytes: int
    created: float | None = None  # wall-clock seconds (Unix time) the save was written


@dataclass(frozen=True)
class Vote:
    """One policy's view of one checkpoint."""

    keep: bool
    reason: str


SaveHistory = Sequence[tuple[int, Mapping[str, Any]]]  # (step, metrics) of every save


class RetentionPolicy(Protocol):
    """Votes keep or not, with a reason, for every checkpoint."""

    def review(self, checkpoints: Sequence[CheckpointRecord],
               history: SaveHistory) -> dict[str, Vote]: ...


@dataclass(frozen=True)
class KeepLastN:
    """Keep the ``n`` newest checkpoints."""

    n: int

    def __post_init__(self) -> None:
        _check_int("KeepLastN", "n", self.n, 1)

    def review(self, checkpoints: Sequence[CheckpointRecord],
               history: SaveHistory) -> dict[str, Vote]:
        newest = sorted(checkpoints, key=lambda c: c.step, reverse=True)
        return {c.name: Vote(i < self.n, f"{'' if i < self.n else 'not '}among the {self.n} "
                                         f"newest (#{i + 1})")
                for i, c in enumerate(newest)}


@dataclass(frozen=True)
class KeepEveryKSteps:
    """Keep every checkpoint whose step is a multiple of ``k``, forever (milestones)."""

    k: int

    def __post_init__(self) -> None:
        _check_int("KeepEveryKSteps", "k", self.k, 1)

    def review(self, checkpoints: Sequence[CheckpointRecord],
               history: SaveHistory) -> dict[str, Vote]:
        return {c.name: Vote(c.step % self.k == 0,
                             f"step {'is' if c.step % self.k == 0 else 'is not'} a multiple "
                             f"of {self.k} (milestone)") for c in checkpoints}


def smoothed_metric(history: SaveHistory, metric: str, step: int, window: int) -> float | None:
    """Mean of the last ``window`` recorded values of ``metric`` at or before ``step``."""
    by_step = dict(history)  # one value per step: a re-saved step counts once
    values = [float(m[metric]) for s, m in sorted(by_step.items())
              if s <= step and isinstance(m.get(metric), (int, float))
              and math.isfinite(float(m[metric]))]
    if not values:
        return None
    recent = values[-window:]
    return sum(recent) / len(recent)


@dataclass(frozen=True)
class KeepTopK:
    """Keep the ``k`` best checkpoints by ``metric``.

    With ``smooth > 1`` a checkpoint is ranked by the mean of the last ``smooth`` values of the
    metric recorded up to it (RL returns are noisy: one lucky evaluation should not evict a
    checkpoint that was consistently good).
    """

    metric: str
    k: int
    mode: Mode = "max"
    smooth: int = 1

    def __post_init__(self) -> None:
        _check_name("KeepTopK", "metric", self.metric)
        _check_mode(self.mode)
        _check_int("KeepTopK", "k", self.k, 1)
        _check_int("KeepTopK", "smooth", self.smooth, 1)

    def score(self, record: CheckpointRecord, history: SaveHistory) -> float | None:
        """The value ranked: the checkpoint's own metric, or its smoothed version; ``None``
        when the checkpoint recorded no finite value itself."""
        value = record.metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        if self.smooth == 1:
            return float(value)
        return smoothed_metric([*history, (record.step, record.metrics)], self.metric,
                               record.step, self.smooth)  # the record wins over history

    def review(self, checkpoints: Sequence[CheckpointRecord],
               history: SaveHistory) -> dict[str, Vote]:
        label = self.metric if self.smooth == 1 else \
            f"{self.metric} (mean of last {self.smooth})"
        scored = [(self.score(c, history), c) for c in checkpoints]
        ranked = [(s, c) for s, c in scored if s is not None]
        if self.mode == "max":
            ranked.sort(key=lambda sc: (-sc[0], sc[1].step))
        else:
            ranked.sort(key=lambda sc: (sc[0], sc[1].step))
        votes = {c.name: Vote(False, f"no {self.metric} recorded") for s, c in scored
                 if s is None}
        for rank, (score, c) in enumerate(ranked):
            keep = rank < self.k
            votes[c.name] = Vote(keep, f"{'' if keep else 'not '}in the top {self.k} by "
                                       f"{label}: {score:.4g} (rank {rank + 1})")
        return votes


@dataclass(frozen=True)
class KeepEveryTSeconds:
    """Keep one checkpoint per ``seconds`` of wall time (Orbax's ``keep_time_interval``).

    Walking from the oldest, a checkpoint is kept when it was written at least ``seconds``
    after the last one kept this way, so a long run keeps a thinned-out history (one per
    hour, say) however often it saves. Checkpoints whose manifest records no time are not
    kept by this policy. Decisions for older checkpoints never change as newer ones arrive.
    """

    seconds: float

    def __post_init__(self) -> None:
        _check_number("KeepEveryTSeconds", "seconds", self.seconds, positive=True)

    def review(self, checkpoints: Sequence[CheckpointRecord],
               history: SaveHistory) -> dict[str, Vote]:
        votes: dict[str, Vote] = {}
        last_kept: float | None = None
        for c in sorted(checkpoints, key=lambda c: c.step):
            if c.created is None:
                votes[c.name] = Vote(False, "no save time recorded")
            elif last_kept is None or c.created - last_kept >= self.seconds:
                votes[c.name] = Vote(True, f"first checkpoint {self.seconds:g} s of wall time "
                                           "after the previous one kept by time")
                last_kept = c.created
            else:
                votes[c.name] = Vote(False, f"within {self.seconds:g} s of wall time of a "
                                            "checkpoint kept by time")
        return votes


def retention_rules(*, keep_last: int | None = None, keep_top: int | None = None,
                    keep_top_smooth: int = 1, keep_every: int | None = None,
                    metric: str = "eval_return", mode: Mode = "max") -> list[RetentionPolicy]:
    """The rules ``--keep-last N``, ``--keep-top K`` (ranked by ``metric``, mean of the last
    ``keep_top_smooth`` values) and ``--keep-every STEPS`` ask for (``ckptlab train`` and
    ``ckptlab prune``); options left at ``None`` ask for none. No rule: keep everything."""
    rules: list[RetentionPolicy] = []
    if keep_last:
        rules.append(KeepLastN(keep_last))
    if keep_top:
        rules.append(KeepTopK(metric, keep_top, mode, keep_top_smooth))
    if keep_every:
        rules.append(KeepEveryKSteps(keep_every))
    return rules


@dataclass(frozen=True)
class DiskBudget:
    """Delete the oldest unprotected checkpoints until all together use at most ``max_bytes``.

    The latest and the best checkpoint are never deleted, even when they alone exceed the
    budget (the log then says so).
    """

    max_bytes: int

    def __post_init__(self) -> None:
        _check_int("DiskBudget", "max_bytes", self.max_bytes, 0)


@dataclass(frozen=True)
class BestBy:
    """How the ``best`` checkpoint is chosen: by ``metric``, higher (max) or lower (min)."""

    metric: str
    mode: Mode = "max"

    def __post_init__(self) -> None:
        _check_name("BestBy", "metric", self.metric)
        _check_mode(self.mode)

    def pick(self, checkpoints: Sequence[CheckpointRecord]) -> CheckpointRecord | None:
        """The best checkpoint; ties go to the earliest (it reached the value first)."""
        best: CheckpointRecord | None = None
        best_value: float | None = None
        for c in sorted(checkpoints, key=lambda c: c.step):
            value = c.metrics.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value) and \
                    _better(float(value), best_value, self.mode):
                best, best_value = c, float(value)
        return best


@dataclass(frozen=True)
class Decision:
    """What retention decided for one checkpoint, and why."""

    name: str
    step: int
    keep: bool
    reasons: tuple[str, ...]


def decide_retention(checkpoints: Sequence[CheckpointRecord],
                     policies: Sequence[RetentionPolicy], *, best: BestBy | None = None,
                     budget: DiskBudget | None = None, history: SaveHistory = (),
                     latest: str | None = None,
                     protect: Mapping[str, str] | None = None) -> list[Decision]:
    """Apply retention to ``checkpoints`` and return one decision per checkpoint (by step).

    Rules, in order: a checkpoint is kept if any policy keeps it (all are kept when there is no
    policy); the latest and the best are always kept; the disk budget then deletes the oldest
    unprotected survivors until the total fits.

    The highest step is always protected as the latest: no pointer file is trusted for it (a
    crash between a commit and the pointer update leaves ``latest`` naming an older one).
    ``latest`` additionally protects the checkpoint just written, which has a lower step than
    an older, unusable one after a fallback. ``protect`` maps further names to keep to the
    reason (a ``best`` pointer whose metric this call does not know).
    """
    if not checkpoints:
        return []
    ordered = sorted(checkpoints, key=lambda c: c.step)
    best_record = best.pick(ordered) if best is not None else None
    protected = {ordered[-1].name: "latest (never deleted)"}
    if latest is not None and any(c.name == latest for c in ordered):
        protected[latest] = "latest (never deleted)"
    for name, why in (protect or {}).items():
        if any(c.name == name for c in ordered):
            protected[name] = "; ".join(filter(None, [protected.get(name, ""), why]))
    if best_record is not None:
        protected.setdefault(best_record.name, "")
        protected[best_record.name] = "; ".join(filter(None, [
            protected[best_record.name], f"best by {best.metric} (never deleted)"]))

    votes = [policy.review(ordered, history) for policy in policies]
    keep: dict[str, bool] = {}
    reasons: dict[str, list[str]] = {}
    for c in ordered:
        mine = [v[c.name] for v in votes if c.name in v]
        keep[c.name] = any(v.keep for v in mine) if policies else True
        reasons[c.name] = [v.reason for v in mine if v.keep == keep[c.name]] or (
            ["no retention policy: keep all"] if not policies else [])
        if c.name in protected:
            if not keep[c.name]:
                reasons[c.name] = []
            keep[c.name] = True
            reasons[c.name].insert(0, protected[c.name])

    if budget is not None:
        total = sum(c.size_bytes for c in ordered if keep[c.name])
        for c in ordered:  # oldest first
            if total <= budget.max_bytes:
                break
            if keep[c.name] and c.name not in protected:
                keep[c.name] = False
                reasons[c.name] = [f"disk budget {budget.max_bytes} bytes exceeded (kept "
                                   f"checkpoints used {total} bytes); oldest goes first"]
                total -= c.size_bytes
        if total > budget.max_bytes:
            for name in protected:
                reasons[name].append(f"over the disk budget ({total} > {budget.max_bytes} "
                                     "bytes) but protected")
    return [Decision(c.name, c.step, keep[c.name], tuple(reasons[c.name])) for c in ordered]


def wall_clock() -> float:
    """The clock save policies use (monotonic seconds)."""
    return time.monotonic()
