"""Command line: ``python -m ckptlab train | inspect | verify | ls | export | prune | demo |
migrate-sharded | progress``.

Every deliberate failure prints one line starting with ``error:`` and exits with status 2
(verification failures exit with 1); nothing that already exists is changed by a failed command.
A command whose optional layer is not installed (``train`` and ``demo`` need the ``rl`` extra,
``progress`` the lab) says so in that one line, with the command that installs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from .. import missing_extra_error
from ..engine.console import exit_process, run_reporting_errors
from . import commands
from .parser import build_parser


def _train(args: argparse.Namespace) -> int:
    from .train import cmd_train  # the DQN run: imported here, so only `train` needs its extra

    return cmd_train(args)


# Every command: its function, and the optional layer it needs (None: the engine alone).
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str | None]] = {
    "train": (_train, "ckptlab.dqn"),
    "demo": (commands.cmd_demo, "ckptlab.dqn"),
    "progress": (commands.cmd_progress, "ckptlab.lab"),
    "inspect": (commands.cmd_inspect, None),
    "verify": (commands.cmd_verify, None),
    "ls": (commands.cmd_ls, None),
    "export": (commands.cmd_export, None),
    "prune": (commands.cmd_prune, None),
    "migrate-sharded": (commands.cmd_migrate_sharded, None),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    command, layer = COMMANDS[args.command]

    def run() -> int:
        try:
            return command(args)
        except ModuleNotFoundError as exc:  # a library of the layer's extra is not installed
            error = (missing_extra_error(exc, layer, f"ckptlab {args.command}")
                     if layer is not None else None)
            if error is None:
                raise  # a bug in ckptlab itself, not an extra to install
            raise error from None

    return run_reporting_errors(run)


def main_exit() -> None:
    """Entry point of ``ckptlab ...`` (console script) and ``python -m ckptlab``."""
    exit_process(main())
