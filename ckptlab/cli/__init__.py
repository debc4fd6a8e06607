"""The command line, ``python -m ckptlab`` and the ``ckptlab`` console script.

Modules:
    main      main(), the command table, one-line errors (a missing extra included)
    parser    the parser and the types of its values
    train     ``train``: the flags become a ckptlab.dqn.job.TrainJob (one process, the
              ``--nproc`` launcher, or a rank under torchrun); needs the ``rl`` extra
    commands  ``inspect``, ``verify``, ``ls``, ``export``, ``prune``, ``migrate-sharded``,
              ``progress``, ``demo``
"""

from .commands import describe_checkpoint
from .main import main, main_exit
from .parser import build_parser

__all__ = ["build_parser", "describe_checkpoint", "main", "main_exit"]
