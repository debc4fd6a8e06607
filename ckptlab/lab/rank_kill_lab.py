"""Lesson 9's "Kill and restart" control: kill one rank of a 2-rank job at a chosen phase of a
save, let the elastic launcher restart the job, and compare its final state with the
uninterrupted run's; with predictions asked before each run.

:class:`RankKillPicker` keeps a copy of the uninterrupted run's final checkpoint and a scratch
directory of its own (so the control works after the lesson removed its folders), remembers
each (rank, phase) it ran, and removes each job's folder once it has been compared.

Introduced in notebook ``09_when_one_machine_is_not_enough``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..engine import CkptlabError
from ..engine.distributed import RANK_FAULT_PHASES

#: Phases that only rank 0 passes through (it alone commits): another rank is never killed
#: there, and the job runs through.
RANK0_ONLY_PHASES = ("save:before-commit", "save:committed", "save:pointer-updated")


class RankKillPicker:
    """Kill one rank at one phase of the save at ``step`` and restart the job (see
    :func:`ckptlab.dqn.distributed.kill_and_compare`).

    Args:
        config: the 2-rank run's configuration.
        reference_checkpoint: the uninterrupted run's final (sharded) checkpoint.
        step: the save step the kill targets.
        save_every: the run's save interval (the checkpoint before ``step`` is ``step -
            save_every``).
    """

    def __init__(self, config: Any, reference_checkpoint: str | os.PathLike[str], *,
                 step: int, save_every: int, nproc: int = 2) -> None:
        self.config, self.step, self.save_every, self.nproc = config, step, save_every, nproc
        self._scratch = tempfile.TemporaryDirectory(prefix="ckptlab-rank-kill-")
        self.directory = Path(self._scratch.name)
        source = Path(reference_checkpoint)
        self.reference = self.directory / "uninterrupted" / source.name
        shutil.copytree(source, self.reference)
        self.outcomes: dict[tuple[int, str], Any] = {}
        self.last: Any = None   # the KillOutcome the last render showed

    def remember(self, rank: int, phase: str, outcome: Any) -> None:
        """Record a run already made (the lesson's own killed job), so it is not trained
        again."""
        self.outcomes[rank, phase] = outcome

    def run(self, rank: int, phase: str) -> Any:
        """The outcome of killing ``rank`` at ``phase`` (trained once per pair)."""
        from ..dqn.distributed import kill_and_compare

        if phase not in RANK_FAULT_PHASES:
            raise CkptlabError(f"unknown phase {phase!r}; choose one of "
                               f"{', '.join(RANK_FAULT_PHASES)}")
        if (rank, phase) not in self.outcomes:
            run_dir = self.directory / f"kill-{rank}-{phase.replace(':', '-')}"
            try:
                self.outcomes[rank, phase] = kill_and_compare(
                    self.config, run_dir, self.reference, rank=rank, phase=phase,
                    step=self.step, nproc=self.nproc)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
        return self.outcomes[rank, phase]

    def render(self, rank: int, phase: str) -> Any:
        """What the control shows: the outcome as a one-row table."""
        from .lessons import show_table

        self.last = self.run(rank, phase)
        return show_table(self.last.rows())

    # -- predictions ----------------------------------------------------------------------------
    def resumed_from(self) -> int | str:
        """Where the last run's restart resumed: a step, 0 for a fresh start, or ``"no kill"``
        when the chosen rank never reached the phase (no restart happened)."""
        if self.last is None:
            raise CkptlabError("no run yet: press Kill and restart first")
        if len(self.last.attempts) <= 1:
            return "no kill"
        return self.last.resumed_from_step or 0

    def predictions(self) -> list[Any]:
        """Before each run: from which step will the restarted job resume, and will it end
        bit-identical to the uninterrupted run?"""
        from .predict import Outcome, Prediction

        step, previous = self.step, self.step - self.save_every

        def resume_outcomes(rank: int, phase: str) -> list[Outcome]:
            return [
                Outcome(step, f"From step {step}",
                        f"A checkpoint counts once rank 0 has renamed its directory, after "
                        f"every rank reported its shard: from then on step {step} is "
                        "committed, whatever happens to the ranks."),
                Outcome(previous, f"From step {previous}",
                        f"The newest committed checkpoint before the kill: the steps since "
                        f"{previous} are trained again, identically."),
                Outcome(0, "From a fresh start",
                        "A committed checkpoint survives a dead rank; the restarted group "
                        "resumes from the newest one."),
                Outcome("no kill", "No restart: the kill never happens",
                        "Only rank 0 commits, so only rank 0 passes through the phases of the "
                        "commit; another rank is never killed there and the job runs through."),
            ]

        def identical() -> str:
            if self.last is None:
                raise CkptlabError("no run yet: press Kill and restart first")
            return "yes" if self.last.identical else "no"

        return [
            Prediction("rank-kill-resume",
                       lambda rank, phase: f"Rank {rank} is SIGKILLed at {phase} of the save "
                                           f"at step {step}. From where will the restarted "
                                           "job resume?",
                       resume_outcomes, lambda **_: self.resumed_from()),
            Prediction("rank-kill-identical",
                       lambda **_: "Will the job's final state equal the uninterrupted run's, "
                                   "bit for bit?",
                       lambda **_: [
                           Outcome("yes", "Yes, bit for bit",
                                   "Same world size: every rank restores its own state from "
                                   "the same committed checkpoint, so the steps trained again "
                                   "repeat the same computation."),
                           Outcome("no", "No, it will differ",
                                   "A restart on the same ranks restores everything the "
                                   "steps depend on; only another world size would change "
                                   "the computation.")],
                       lambda **_: identical()),
        ]

    def close(self) -> None:
        """Remove the scratch directory (also done when the object is garbage-collected)."""
        self._scratch.cleanup()


__all__ = ["RANK0_ONLY_PHASES", "RankKillPicker"]
