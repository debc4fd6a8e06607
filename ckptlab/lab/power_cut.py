"""What SIGKILL cannot test: the disk a power cut would leave at any moment of one save.

Lesson 7's power-cut section. One real save (a sync save that becomes the new ``best``, after
two earlier saves) is recorded call by call (:mod:`ckptlab.engine.crash_states`). The learner
picks a crash point (after which call the power goes), a persistence model and a fault - the
engine's real order, or the same save with one fsync removed - and sees the timeline, the disk
the power cut leaves, what verify says about each checkpoint, what ``latest`` names, where a
resume would continue, and whether recovery restores the old state or the new one
(:mod:`ckptlab.engine.crash_recovery`'s invariants).

Of all the disks the model allows at that moment, the one shown is, among those that break an
invariant, the one where the most reached the disk (the fault alone broke it); when none
breaks one, the harshest: the most lost.

Introduced in notebook ``07_failure_modes``; see ``docs/crash-consistency.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import CkptlabError, verify_checkpoint
from ..engine.crash_recovery import (
    CHECKPOINTS,
    WORKLOADS,
    checker,
    context_for,
    record_workload,
)
from ..engine.crash_states import (
    MODELS,
    CrashState,
    Exploration,
    Fault,
    Recording,
    Results,
    checked_states,
    explore,
    fsyncs_skipped,
    materialise,
)
from ..engine.format import BEST, LATEST
from ..engine.reader import latest_valid_checkpoint, read_pointer

#: The save as the engine makes it, or with one fsync removed (a fault switch applied to the
#: recording only; the engine never knows it).
FAULTS: dict[str, str] = {
    "none": "the engine's real order",
    "no-tensor-fsync": "fsync of tensors.safetensors removed",
    "no-directory-fsync": "fsync of checkpoints/ after the renames removed",
}
_SWITCHES: dict[str, Fault | None] = {
    "none": None,
    "no-tensor-fsync": Fault(drop_fsync="*/tensors.safetensors"),
    "no-directory-fsync": Fault(drop_fsync=CHECKPOINTS),
}

#: The persistence models, as the lesson names them.
MODEL_LABELS: dict[str, str] = {
    "ordered": "ordered (ext4 data=ordered-like)",
    "adversarial": "adversarial (un-synced writes lost or reordered)",
}

_TAG = re.compile(r"-[0-9a-f]{8}\b")


def short(path: str) -> str:
    """A recorded path as the lesson shows it: relative to the checkpoints folder, without
    the random tag of a temporary name (``.tmp-step_00000003``)."""
    path = path[len(CHECKPOINTS) + 1:] if path.startswith(CHECKPOINTS + "/") else \
        ("checkpoints/" if path == CHECKPOINTS else path)
    return _TAG.sub("", path)


@dataclass
class PowerCut:
    """What a power cut after ``crash_point`` calls leaves (see :meth:`PowerCutLab.power_cut`).

    Attributes:
        possible: distinct disks the model allows at that moment.
        violating: how many of them break an invariant.
        state: the disk shown; ``found``: the invariants it breaks (empty: it recovers).
        verdicts: ``(checkpoint, what verify says)`` on that disk, oldest first.
        latest, best: what the pointers name on it (``None``: absent or unreadable).
        resume: where a resume would continue (``None``: nothing valid).
    """

    fault: str
    model: str
    crash_point: int
    calls: int
    call: str
    possible: int
    violating: int
    state: CrashState
    found: list[tuple[str, str]]
    verdicts: list[tuple[str, str]]
    latest: str | None
    best: str | None
    resume: str | None
    leftovers: list[str]


class PowerCutLab:
    """One recorded save per fault, and the crash states of any moment of it.

    Args:
        directory: a folder for the scratch workspaces (one per fault; created).
        workload: which engine operation to record (default: a save that moves ``best``).
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 workload: str = "save-best-moves") -> None:
        if workload not in WORKLOADS:
            raise CkptlabError(f"unknown operation {workload!r}; choose one of "
                               f"{', '.join(WORKLOADS)}")
        self.directory = Path(directory)
        self.workload = WORKLOADS[workload]
        self._recorded: dict[str, tuple[Recording, Any]] = {}
        self._results: dict[tuple[str, str], Results] = {}

    def _recording(self, fault: str) -> tuple[Recording, Any]:
        if fault not in FAULTS:
            raise CkptlabError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
        if fault not in self._recorded:
            workspace = self.directory / fault / "workspace"
            if workspace.exists():
                shutil.rmtree(workspace)
            workspace.mkdir(parents=True)
            recording = record_workload(self.workload, workspace, _SWITCHES[fault])
            self._recorded[fault] = (recording, checker(self.workload,
                                                        context_for(recording, self.workload)))
        return self._recorded[fault]

    def calls(self, fault: str = "none") -> list[str]:
        """The save's calls, one line each, numbered from 1."""
        recording, _ = self._recording(fault)
        return [f"{i + 1:2d}  {_label(op)}" for i, op in enumerate(recording.ops)]

    def call_count(self, fault: str = "none") -> int:
        return len(self._recording(fault)[0].ops)

    def crash_point_after(self, description: str, fault: str = "none") -> int:
        """The crash point right after the first call whose line contains ``description``."""
        for number, line in enumerate(self.calls(fault), 1):
            if description in line:
                return number
        raise CkptlabError(f"no call of the save matches {description!r}")

    def survey(self, model: str, fault: str = "none") -> Exploration:
        """Every crash point of the save under ``model``: states and violations."""
        recording, check = self._recording(fault)
        _check_model(model)
        return explore(recording, model, check, operation=f"save ({FAULTS[fault]})")

    def power_cut(self, crash_point: int, model: str, fault: str = "none") -> PowerCut:
        """The disks a power cut after ``crash_point`` calls may leave, and the one shown."""
        recording, check = self._recording(fault)
        _check_model(model)
        if not 0 <= crash_point <= len(recording.ops):
            raise CkptlabError(f"the save has {len(recording.ops)} calls: choose a crash point "
                               f"from 0 to {len(recording.ops)}")
        results = self._results.setdefault((fault, model), {})
        with fsyncs_skipped():
            checked = checked_states(recording, crash_point, model, check, results=results)
        broken = [(state, found) for state, found in checked if found]
        state, found = min(broken, key=lambda c: len(c[0].lost)) if broken else \
            max(checked, key=lambda c: len(c[0].lost))
        verdicts, latest, best, resume, leftovers = _inspect(recording, state)
        call = _label(recording.ops[crash_point - 1]) if crash_point else "(before the first call)"
        return PowerCut(fault, model, crash_point, len(recording.ops), call, len(checked),
                        len(broken), state, found, verdicts, latest, best, resume, leftovers)

    def view(self, crash_point: int, model: str = "ordered", fault: str = "none") -> list[Any]:
        """The control's answer: the timeline and the disk (a figure), then a table."""
        calls = self.call_count(fault)
        cut = self.power_cut(min(crash_point, calls), model, fault)
        return [timeline_figure(self._recording(fault)[0], cut), _table(cut)]


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise CkptlabError(f"unknown persistence model {model!r}; choose one of "
                           f"{', '.join(MODELS)}")


def _label(op: Any) -> str:
    if op.kind in ("rename", "link"):
        return f"{op.kind} {short(op.path)} -> {short(op.dst_path)}"
    if op.kind == "fsync":
        return f"fsync {short(op.path)}" + ("" if short(op.path).endswith("/") or not op.is_dir
                                             else "/")
    return f"{op.kind} {short(op.path)}"


def _inspect(recording: Recording, state: CrashState
             ) -> tuple[list[tuple[str, str]], str | None, str | None, str | None, list[str]]:
    """Materialise ``state`` and read it as verify, the pointers and a resume see it."""
    workspace = recording.workspace
    if workspace.exists():
        shutil.rmtree(workspace)
    materialise(state.tree, workspace)
    directory = workspace / CHECKPOINTS
    verdicts = []
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    for name in names:
        if not re.fullmatch(r"step_\d{8}", name):
            continue
        try:
            verify_checkpoint(directory / name)
            verdicts.append((name, "valid"))
        except CkptlabError as exc:
            text = str(exc).replace(str(directory / name) + os.sep, "")
            text = text.replace(str(directory) + os.sep, "").split(";")[0].split(" (")[0]
            verdicts.append((name, "REJECTED: " + text))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            resume: str | None = latest_valid_checkpoint(directory).name
        except CkptlabError:
            resume = None
    leftovers = [_TAG.sub("", n) for n in names if n.startswith((".tmp-", ".trash-"))]
    return (verdicts, read_pointer(directory, LATEST), read_pointer(directory, BEST), resume,
            leftovers)


def _status(state: CrashState) -> dict[int, str]:
    """Call id -> durable / kept / partly / lost, for the calls issued before the cut."""
    def ids(labels: list[str]) -> set[int]:
        return {int(label[1:].split()[0]) - 1 for label in labels}

    durable, kept, lost = ids(state.durable), ids(state.persisted), ids(state.lost)
    status = {i: "durable" for i in durable}
    status.update({i: "kept" for i in kept})
    status.update({i: "partly" if i in kept else "lost" for i in lost})
    return status


_STATUS_TEXT = {"durable": "✔ durable", "kept": "✔ reached the disk",
                "partly": "~ partly lost", "lost": "✘ lost"}


def timeline_figure(recording: Recording, cut: PowerCut) -> Any:
    """Left: the save's calls, the power cut, and what happened to each call issued before
    it on the disk shown. Right: that disk, as verify, the pointers and a resume see it.
    Every colour comes with its words (the call's kind, the status, the verdict)."""
    import matplotlib.pyplot as plt

    from .figures import GREY, OKABE_ITO, caption

    good, bad, luck = OKABE_ITO["green"], OKABE_ITO["vermillion"], OKABE_ITO["orange"]
    text_colour, muted = OKABE_ITO["black"], GREY
    kind_colours = {"write": OKABE_ITO["blue"], "truncate": OKABE_ITO["blue"], "fsync": good,
                    "rename": luck, "unlink": bad, "rmdir": bad}
    status_colours = {"durable": good, "kept": luck, "partly": bad, "lost": bad}
    ops = recording.ops
    status = _status(cut.state)
    height = max(4.5, 0.24 * len(ops) + 1.2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, height),
                                      gridspec_kw={"width_ratios": [1.35, 1]})
    for row, op in enumerate(ops):
        issued = row < cut.crash_point
        colour = kind_colours.get(op.kind, muted) if issued else "#D9D9D9"
        left.scatter([0], [row], color=colour, s=30, zorder=3)
        left.text(0.35, row, f"{row + 1:2d} {_label(op)}", va="center", fontsize=8.5,
                  color=text_colour if issued else muted, family="monospace")
        if issued and op.kind != "fsync" and op.id in status:
            left.text(13.6, row, _STATUS_TEXT[status[op.id]], va="center", fontsize=8,
                      color=status_colours[status[op.id]])
    left.axhline(cut.crash_point - 0.5, color=bad, linewidth=2)
    left.text(13.6, cut.crash_point - 0.45, "⚡ power cut", color=bad, fontsize=9,
              va="top", fontweight="bold")
    left.set_xlim(-0.5, 17.5)
    left.set_ylim(len(ops) - 0.5, -1.2)
    left.axis("off")
    left.set_title(f"one save, call by call ({FAULTS[cut.fault]})", fontsize=10, loc="left")

    lines: list[tuple[str, str]] = []
    for name, verdict in cut.verdicts:
        ok = verdict == "valid"
        wrapped = textwrap.wrap(f"{'✔' if ok else '✘'} {name}/  {verdict}", 62,
                                subsequent_indent="      ")
        lines += [(part, good if ok else bad) for part in wrapped]
    for leftover in cut.leftovers:
        lines.append((f"   {leftover}  (leftover: ignored, removed on open)", muted))
    valid = {name for name, verdict in cut.verdicts if verdict == "valid"}
    for pointer, value in (("latest", cut.latest), ("best", cut.best)):
        if value is None:
            lines.append((f"   {pointer}: absent or unreadable", muted))
        else:
            lies = value not in valid
            lines.append((f"   {pointer} -> {value}" + ("   (names a torn or missing "
                          "checkpoint)" if lies else ""), bad if lies else text_colour))
    lines.append(("", text_colour))
    lines.append((f"a resume continues from: {cut.resume or 'nothing'}", text_colour))
    if cut.found:
        lines.append(("recovery: BROKEN - " + ", ".join(sorted({i for i, _ in cut.found})),
                      bad))
    else:
        lines.append(("recovery: the old state or the new one, as promised", good))
    for row, (text, tone) in enumerate(lines):
        right.text(0.0, row, text, va="center", fontsize=8.5, color=tone, family="monospace")
    right.set_xlim(0, 1)
    right.set_ylim(max(len(lines), len(ops)) - 0.5, -1.2)
    right.axis("off")
    right.set_title(f"checkpoints/ after the power cut - {cut.model} model, 1 of "
                    f"{cut.possible} possible disks", fontsize=10, loc="left")
    fig.tight_layout()
    resume = cut.resume or "nothing"
    outcome = (f"{cut.violating} break a promise; on the one shown a resume continues from "
               f"{resume} and recovery breaks {', '.join(sorted({i for i, _ in cut.found}))}"
               if cut.found else
               f"none breaks a promise; on the one shown a resume continues from {resume}")
    return caption(fig, f"A power cut after call {cut.crash_point} of {cut.calls} of one save "
                        f"({FAULTS[cut.fault]}), {cut.model} model: {cut.possible} disks are "
                        f"possible and {outcome}.")


def _table(cut: PowerCut) -> Any:
    from .lessons import show_table

    shown = ("of those that break an invariant, the one where the most reached the disk"
             if cut.found else "the harshest: the most lost")
    lost = [_TAG.sub("", label.split(" ", 1)[1].replace(CHECKPOINTS + "/", ""))
            for label in cut.state.lost]
    rows = [("power cut", f"after call {cut.crash_point} of {cut.calls}: {cut.call}"),
            ("persistence model", MODEL_LABELS[cut.model]),
            ("disks possible at this moment",
             f"{cut.possible} ({cut.violating} break an invariant)"),
            ("disk shown", shown),
            ("lost in the power cut", "; ".join(lost) if lost else "nothing")]
    rows += [(f"verify {name}", verdict) for name, verdict in cut.verdicts]
    rows += [("latest names", cut.latest or "(absent or unreadable)"),
             ("a resume continues from", cut.resume or "nothing")]
    rows += [(f"broken: {invariant}", message) for invariant, message in cut.found] or \
        [("after recovery", "the previous committed state or the new one: nothing lost, "
          "nothing torn")]
    return show_table([{"question": q, "answer": a} for q, a in rows])


__all__ = ["FAULTS", "MODEL_LABELS", "PowerCut", "PowerCutLab", "short", "timeline_figure"]
