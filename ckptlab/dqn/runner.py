"""Run a training job: the one way in for ``ckptlab train`` and ``python -m ckptlab.dqn``.

A :class:`~ckptlab.dqn.job.TrainJob` runs in this process (:func:`~ckptlab.dqn.job.train_single`),
as the launcher of its ranks, or as one rank inside a launched worker
(:mod:`ckptlab.dqn.distributed`, imported only then: ``torch.distributed`` takes a second to
import and a one-process run never needs it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..engine.console import run_reporting_errors
from ..engine.errors import CkptlabError
from .job import ENTRY_MODULE, TrainJob, train_single


def run_job(job: TrainJob) -> int:
    """Run ``job`` in this process and return its exit status: one process; with ``nproc``
    or several nodes, the launcher of its ranks; inside a launched worker (torchrun, or this
    layer's own launcher), one rank.

    Raises:
        CkptlabError: the job was refused or failed (one line says why).
    """
    if job.launches or "TORCHELASTIC_RUN_ID" in os.environ:  # [distributed]
        from .distributed import run_distributed_job

        return run_distributed_job(job)
    return train_single(job)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ckptlab.dqn JOB_JSON``: run the job; returns the exit status. A refused or
    failed job is one ``error:`` line (status 2), a warning one ``warning:`` line, as on the
    command line."""
    args = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        if len(args) != 1:
            raise CkptlabError(f"python -m {ENTRY_MODULE} takes one argument, the training "
                               f"job as JSON (TrainJob.to_json()); got {len(args)}")
        return run_job(TrainJob.from_json(args[0]))

    return run_reporting_errors(run)
