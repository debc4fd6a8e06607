"""``python -m ckptlab.dqn JOB_JSON``: run one training job (:mod:`ckptlab.dqn.job`).

The processes the DQN run starts itself - the ranks of ``ckptlab train --nproc N``, the runs
that ``ckptlab demo`` and the lessons kill and resume - run this, with the job as JSON
(:func:`ckptlab.dqn.job.job_command`); people run ``python -m ckptlab train``.
"""

from ..engine.console import exit_process
from .runner import main

exit_process(main())
