"""Stage one failure for real and show what it leaves behind: lesson 7's fault picker.

A small training run is either killed with SIGKILL at one phase of a save (through
``CKPTLAB_FAULT``, see :mod:`ckptlab.engine.faults`) or has one file of its newest checkpoint
corrupted. :func:`stage_fault` then reports what a learner would look at: the checkpoints
directory, what the ``latest`` pointer says, what verification says about each checkpoint, and
where the run resumes - by really resuming it and training to the end.

Everything happens in a temporary directory that is deleted before the function returns, so the
picker works at any time (also after the lesson's own folder was cleaned up) and leaves nothing
behind. Introduced in notebook ``07_failure_modes``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import (
    CHECKPOINTS_SUBDIR,
    LATEST,
    CkptlabError,
    committed_checkpoints,
    read_pointer,
    verify_checkpoint,
)
from ..engine.faults import LOCAL_PHASES
from .failures import flip_byte

#: Label -> what is done. ``kill:PHASE`` kills the training process at that phase (see
#: :data:`ckptlab.engine.faults.LOCAL_PHASES`); ``corrupt:FILE`` flips one bit of that file of the
#: newest checkpoint after a clean run.
FAULTS: dict[str, str] = {
    "kill:step": "SIGKILL between two saves (mid-training)",
    "kill:save:files-written": "SIGKILL after the checkpoint's files are written and fsynced "
                               "(the next latest pointer already waits beside them in a "
                               "temporary file), before the rename that commits them",
    "kill:save:committed": "SIGKILL right after the rename, before the latest pointer is swapped",
    "kill:save:pointer-temp": "SIGKILL just before the temporary pointer replaces latest: the "
                              "same state as the line above, since that temporary file was "
                              "written with the checkpoint's files, before the commit",
    "kill:save:pointer-updated": "SIGKILL after the pointer is updated, before old checkpoints "
                                 "are pruned",
    "corrupt:tensors": "one bit flipped in the newest checkpoint's tensors.safetensors",
    "corrupt:state": "one bit flipped in the newest checkpoint's state.json",
    "corrupt:manifest": "one bit flipped in the newest checkpoint's manifest.json",
}
_CORRUPT_FILES = {"tensors": "tensors.safetensors", "state": "state.json",
                  "manifest": "manifest.json"}
# Every phase a local save passes through has an entry (the picker stages no object-store save).
assert all(f"kill:{p}" in FAULTS for p in LOCAL_PHASES), \
    "a fault phase has no entry in FAULTS"


def fault_config(seed: int = 0) -> Any:
    """The small run every staged fault uses: 1500 steps, a checkpoint every 500."""
    from ..dqn.config import DQNConfig

    return DQNConfig(seed=seed, total_steps=1_500, steps_per_epoch=500, save_every_steps=500,
                     learning_starts=250, eval_episodes=1, buffer_capacity=2_000)


@dataclass
class FaultReport:
    """What one staged fault left behind, and how the run recovered."""

    fault: str
    fault_step: int
    exit_status: int | None               # -9: killed by SIGKILL; None: no process was killed
    listing: list[str]                    # the checkpoints directory after the fault
    latest: str | None                    # what the latest pointer names
    verify: list[tuple[str, str]]         # (checkpoint, "ok" or why it fails)
    warnings: list[str]                   # what resuming warned about (fallbacks)
    resumed_from: int                     # step of the checkpoint the run resumed from (0: fresh)
    final_step: int                       # where the resumed run finished
    listing_after_resume: list[str]
    seconds: float

    @property
    def resume_checkpoint(self) -> str:
        return f"step {self.resumed_from}" if self.resumed_from else "a fresh start"


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".writer"))


def stage_fault(fault: str, *, seed: int = 0, at_step: int = 1000) -> FaultReport:
    """Stage ``fault`` (a key of :data:`FAULTS`) on a fresh small run, resume it, report.

    Kills happen at ``at_step`` (a save step; ``kill:step`` strikes 100 steps later, between
    saves). Corruptions hit the checkpoint at ``at_step`` after a clean run up to there.

    Raises:
        CkptlabError: an unknown fault, a step that is not a save step of the run, or a
            training process that did not fail the way it was told to.
    """
    from ..dqn.demo import train_in_subprocess
    from ..dqn.resume import find_resume_checkpoint
    from ..dqn.train import Trainer

    if fault not in FAULTS:
        raise CkptlabError(f"unknown fault {fault!r}; choose one of: {', '.join(FAULTS)}")
    config = fault_config(seed)
    if not (0 < at_step < config.total_steps and at_step % config.save_every_steps == 0):
        raise CkptlabError(f"at_step must be a save step inside the run (a multiple of "
                           f"{config.save_every_steps} below {config.total_steps}); got "
                           f"{at_step}")
    started = time.perf_counter()
    kind, _, what = fault.partition(":")
    with tempfile.TemporaryDirectory(prefix="ckptlab-fault-") as tmp:
        run = Path(tmp) / "run"
        checkpoints = run / CHECKPOINTS_SUBDIR
        if kind == "kill":
            step = at_step + 100 if what == "step" else at_step
            status, _, err = train_in_subprocess(config, run, fault=f"{what}@{step}")
            if status != -9:
                raise CkptlabError(f"the training process should have been killed at "
                                   f"{what}@{step} but exited with {status}: {err[-300:]}")
        else:
            step, status = at_step, None
            with Trainer(config, run) as trainer:
                trainer.train(until_step=at_step)
            flip_byte(checkpoints / f"step_{at_step:08d}" / _CORRUPT_FILES[what])
        listing = _listing(checkpoints)
        latest = read_pointer(checkpoints, LATEST)
        verify = []
        for path in committed_checkpoints(checkpoints):
            try:
                verify_checkpoint(path)
                verify.append((path.name, "ok"))
            except CkptlabError as exc:
                verify.append((path.name, _without(str(exc), run)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = find_resume_checkpoint(run)
            with Trainer(config, run) as trainer:  # opening the run cleans leftovers
                if info is not None:
                    trainer.restore(info.path)
                result = trainer.train()
        return FaultReport(
            fault, step, status, listing, latest, verify,
            [_without(str(w.message), run) for w in caught],
            info.step if info is not None else 0, result.final_step, _listing(checkpoints),
            time.perf_counter() - started)


def _without(text: str, run: Path) -> str:
    """A message without this machine's temporary path (the learner's would differ)."""
    return text.replace(str(run), "<run>")


def fault_rows(report: FaultReport) -> list[dict[str, Any]]:
    """The report as a two-column table (question, answer)."""
    killed = ("not killed (a file was damaged after a clean run)" if report.exit_status is None
              else f"exit status {report.exit_status}"
              + (" (killed by SIGKILL)" if report.exit_status == -9 else ""))
    rows = [("fault", f"{report.fault} at step {report.fault_step}: {FAULTS[report.fault]}"),
            ("training process", killed),
            ("checkpoints directory", ", ".join(report.listing)),
            ("latest pointer names", report.latest or "(no pointer)")]
    rows += [(f"verify {name}", verdict) for name, verdict in report.verify]
    rows += [("resume warned", w) for w in report.warnings]
    rows += [("run resumed from", report.resume_checkpoint),
             ("resumed run finished at", f"step {report.final_step}"),
             ("directory after the resume", ", ".join(report.listing_after_resume))]
    return [{"question": q, "answer": a} for q, a in rows]


def fault_view(fault: str, seed: int = 0) -> list[Any]:
    """The fault picker's answer: :func:`stage_fault`'s report as a table."""
    from .lessons import show_table

    report = stage_fault(fault, seed=seed)
    return [show_table(fault_rows(report)),
            f"staged, inspected and resumed in {report.seconds:.1f} s"]


# -- predict, then stage ---------------------------------------------------------------------
_BEFORE_COMMIT = {"kill:save:files-written"}
_AFTER_COMMIT = {"kill:save:committed", "kill:save:pointer-temp", "kill:save:pointer-updated"}


def _verify_outcomes(fault: str) -> list[Any]:
    from .predict import Outcome

    if fault in _BEFORE_COMMIT:
        why = {"ok": "A checkpoint exists for a reader only once the rename has committed it, "
                     "and this one never was.",
               "refused": "Nothing committed was touched: the half-written save sits in a "
                          ".tmp- directory that verify does not even see.",
               "absent": "The kill came before the rename that commits it: its files sit in a "
                         ".tmp- directory, which no reader takes for a checkpoint."}
    elif fault.startswith("corrupt:"):
        why = {"ok": "A flipped bit changes the file's SHA-256 (or the manifest's own hash), "
                     "and verify recomputes every hash before it trusts anything.",
               "refused": "One flipped bit changes a hash, and verify compares every file "
                          "with the manifest (and the manifest with its own hash).",
               "absent": "The checkpoint is still there, committed; one of its files is "
                         "damaged."}
    else:  # killed after the commit, or between saves
        why = {"ok": "The rename had committed it: its files and manifest were written and "
                     "fsynced first, and a kill changes no byte already written.",
               "refused": "A kill does not damage files already written; SIGKILL only stops "
                          "the process.",
               "absent": "The save of step 1000 had been committed before the kill; only what "
                         "came after it was cut short."}
    return [Outcome("ok", "It verifies", why["ok"]),
            Outcome("refused", "It fails verification", why["refused"]),
            Outcome("absent", "There is no checkpoint of step 1000", why["absent"])]


def _resume_outcomes(fault: str) -> list[Any]:
    from .predict import Outcome

    if fault in _BEFORE_COMMIT:
        why = {1000: "Step 1000 was never committed, so there is nothing of it to resume.",
               500: "The newest committed checkpoint: step 1000's save was cut short before "
                    "its commit.",
               0: "Step 500 was committed earlier and a kill does not touch it."}
    elif fault.startswith("corrupt:"):
        why = {1000: "ckptlab does not load a checkpoint whose hash check fails.",
               500: "The newest checkpoint fails its hash check, so resume warns and falls "
                    "back to the newest one that verifies.",
               0: "Step 500 still verifies, so nothing forces a fresh start."}
    else:
        why = {1000: "Step 1000 was committed; resume verifies the committed checkpoints "
                     "newest first and does not need the latest pointer to find it.",
               500: "The latest pointer may still name step 500, but resume scans the "
                    "committed directories, and step 1000 is there and verifies.",
               0: "Committed checkpoints survive a kill; only a run without any starts over."}
    return [Outcome(1000, "From step 1000", why[1000]), Outcome(500, "From step 500", why[500]),
            Outcome(0, "From a fresh start", why[0])]


class FaultPicker:
    """Lesson 7's fault picker with predictions: :meth:`render` stages a fault (see
    :func:`stage_fault`) and keeps its report in :attr:`last`; :meth:`predictions` asks, before
    it, what verify will say about the checkpoint of step 1000 and where the run will resume."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.last: FaultReport | None = None

    def render(self, fault: str) -> list[Any]:
        """Stage ``fault`` and show its report (what the *Stage it* button does)."""
        from .lessons import show_table

        report = self.last = stage_fault(fault, seed=self.seed)
        return [show_table(fault_rows(report)),
                f"staged, inspected and resumed in {report.seconds:.1f} s"]

    def _report(self) -> FaultReport:
        if self.last is None:
            raise CkptlabError("nothing staged yet: press Stage it first")
        return self.last

    def verify_verdict(self) -> str:
        """What verify said about step_00001000 in the last staged fault: ok, refused or
        absent."""
        verdicts = dict(self._report().verify)
        name = "step_00001000"
        return "absent" if name not in verdicts else "ok" if verdicts[name] == "ok" \
            else "refused"

    def predictions(self) -> list[Any]:
        from .predict import Prediction

        return [
            Prediction("fault-verify",
                       lambda fault: f"{FAULTS[fault]}. What will verify say about the "
                                     "checkpoint of step 1000?",
                       _verify_outcomes, lambda **_: self.verify_verdict()),
            Prediction("fault-resume",
                       lambda fault: "And from which checkpoint will the run resume?",
                       _resume_outcomes, lambda **_: self._report().resumed_from),
        ]


__all__ = ["FAULTS", "FaultPicker", "FaultReport", "fault_config", "fault_rows", "fault_view",
           "stage_fault"]
