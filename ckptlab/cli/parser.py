"""The command line's parser: ``python -m ckptlab COMMAND ...`` and the types of its values.

A usage error is one ``error:`` line and exit status 2, not a usage dump.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__
from ..engine import CkptlabError, MissingExtraError
from ..engine.console import EXIT_ERROR, error_line
from ..engine.location import StorePath, as_location


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message} (see --help)\n")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def _location(text: str) -> Path | StorePath:
    """A local path or an object-store URL (``s3://bucket/prefix``): a URL is never taken for
    a local path, and one ckptlab cannot use is refused before anything runs."""
    try:
        return as_location(text)
    except MissingExtraError as exc:  # not a usage error: the line ends with what to install
        print(error_line(exc), file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    except CkptlabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 500MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def _add_retention_args(group: Any) -> None:
    group.add_argument("--keep-last", type=_positive_int, metavar="N",
                       help="keep the N newest checkpoints")
    group.add_argument("--keep-top", type=_positive_int, metavar="K",
                       help="keep the K best by eval_return")
    group.add_argument("--keep-top-smooth", type=_positive_int, default=1, metavar="M",
                       help="rank --keep-top by the mean of the last M evaluations (default 1)")
    group.add_argument("--keep-every", type=_positive_int, metavar="STEPS",
                       help="keep checkpoints at multiples of STEPS forever")
    group.add_argument("--disk-budget", type=_size, metavar="SIZE",
                       help="delete the oldest unprotected checkpoints beyond SIZE (e.g. 200MB)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m ckptlab``: one subcommand per command, each value checked
    (and converted: sizes, locations) as it is parsed."""
    parser = _Parser(prog="python -m ckptlab",
                     description="Train a DQN agent with exact-resume checkpoints, and inspect "
                                 "or verify checkpoints.")
    parser.add_argument("--version", action="version", version=f"ckptlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train (or resume training) in a run directory",
                           description="Train a DQN agent. By default the run resumes from the "
                                       "newest valid checkpoint in --run-dir.")
    train.add_argument("--run-dir", required=True, type=_location,
                       help="directory of the run, or an s3://bucket/prefix location; "
                            "checkpoints go to RUN_DIR/checkpoints")
    train.add_argument("--config", type=Path, metavar="JSON",
                       help="a JSON file of DQNConfig fields (command-line flags win)")
    train.add_argument("--env", dest="env_id", help="gymnasium env id (default CartPole-v1)")
    train.add_argument("--steps", dest="total_steps", type=_positive_int,
                       help="total environment steps of the run (default 30000)")
    train.add_argument("--seed", type=_non_negative_int, help="random seed (default 0)")
    train.add_argument("--save-every", dest="save_every_steps", type=_non_negative_int,
                       help="steps between checkpoints; 0 saves only at the end (default 5000)")
    saving = train.add_argument_group("when to save (any that applies triggers a save; a "
                                      "final checkpoint is always written)")
    saving.add_argument("--save-every-episodes", type=_positive_int, metavar="N",
                        help="save when the episode count reaches a multiple of N")
    saving.add_argument("--save-every-seconds", type=_positive_float, metavar="T",
                        help="save when T seconds of wall time passed since the last save")
    saving.add_argument("--save-on-start", action="store_true",
                        help="save a baseline at step 0 before training")
    saving.add_argument("--save-on-improvement", action="store_true",
                        help="save whenever the greedy evaluation return improves")
    saving.add_argument("--min-delta", type=float, default=0.0,
                        help="improvement needed for --save-on-improvement (default 0)")
    saving.add_argument("--async-save", action="store_true",
                        help="write checkpoints in a background thread")
    keeping = train.add_argument_group(
        "what to keep (a checkpoint survives if any rule keeps it; the latest and the best "
        "by eval_return always survive; default: keep all)")
    _add_retention_args(keeping)
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume even if settings that change the results differ from the "
                            "checkpoint's (the differences are recorded)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"),
                       help="where to train (default auto: CUDA when available)")
    train.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                       help="auto: continue from RUN_DIR's newest valid checkpoint if any "
                            "(default); never: refuse if RUN_DIR has checkpoints; PATH: start "
                            "from that checkpoint or run directory")
    train.add_argument("--rollback", action="store_true",
                       help="with --resume PATH naming an older checkpoint of RUN_DIR itself: "
                            "continue from it, moving the newer checkpoints aside into "
                            "checkpoints/abandoned/ (refused without this flag)")
    train.add_argument("--quiet", action="store_true", help="no progress bar, no epoch lines")
    # [distributed] data-parallel training on torch.distributed; see ckptlab.dqn.distributed
    ranks = train.add_argument_group(
        "several processes (torch.distributed: DDP, sharded DCP checkpoints; CPU + gloo or "
        "CUDA + NCCL); also works as 'torchrun --nproc-per-node N -m ckptlab train ...'")
    ranks.add_argument("--nproc", type=_positive_int, metavar="N",
                       help="run N ranks on this machine under torch's elastic launcher")
    ranks.add_argument("--max-restarts", type=_non_negative_int, default=0, metavar="R",
                       help="restart the ranks up to R times when one dies (default 0)")
    ranks.add_argument("--nnodes", type=_positive_int, default=1,
                       help="machines in the job (default 1); each runs this same command")
    ranks.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="c10d rendezvous address shared by all nodes (needed with --nnodes)")
    ranks.add_argument("--rdzv-id", metavar="ID", help="job id shared by all nodes")
    ranks.add_argument("--shard-model", action="store_true",
                       help="shard the Q-network and Adam state across ranks (FSDP2 "
                            "fully_shard) instead of replicating them (DDP)")

    demo = sub.add_parser("demo", help="kill a run with SIGKILL, resume it, compare it with "
                                       "an uninterrupted run",
                          description="Train the same run twice - once uninterrupted, once "
                                      "killed with SIGKILL and resumed - and compare the final "
                                      "checkpoints bit for bit.")
    demo.add_argument("--run-dir", type=Path, help="keep both runs here (default: a "
                                                   "temporary directory, removed afterwards)")
    demo.add_argument("--steps", type=_positive_int, default=10_000,
                      help="steps per run (default 10000)")
    demo.add_argument("--kill-at", type=_positive_int, default=5_555,
                      help="the step after which the process is killed (default 5555)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")

    ls = sub.add_parser("ls", help="list every checkpoint under a directory, across runs",
                        description="Index every checkpoint under ROOT (from the manifests, "
                                    "into ROOT/.ckptlab-catalog.sqlite) and list them.")
    ls.add_argument("root", type=_location, metavar="ROOT")
    ls.add_argument("--sort", help="step, size_bytes, created, or a metric such as eval_return")
    ls.add_argument("--ascending", action="store_true", help="smallest first (e.g. for loss)")
    ls.add_argument("--top", type=_positive_int, help="show only the first N")
    ls.add_argument("--run", help="only this run (a path relative to ROOT)")
    ls.add_argument("--verify", action="store_true", help="check every file's SHA-256 too")
    ls.add_argument("--json", action="store_true", help="print JSON")

    export = sub.add_parser("export", help="export weights and/or metadata for use without "
                                           "ckptlab",
                            description="Write weights.safetensors (plain state_dict names, "
                                        "loadable with safetensors.torch.load_file) and/or "
                                        "metadata.json.")
    export.add_argument("path", type=_location, metavar="DIR|CKPT")
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument("--what", choices=("weights", "metadata", "both"), default="both")
    export.add_argument("--tensors", default="agent/q_net",
                        help="which tensors are the weights (default agent/q_net)")

    prune = sub.add_parser("prune", help="apply retention rules to a run's checkpoints",
                           description="Apply retention rules now. With --dry-run, only show "
                                       "what would be deleted and why.")
    prune.add_argument("path", type=_location, metavar="DIR")
    prune.add_argument("--dry-run", action="store_true", help="change nothing")
    _add_retention_args(prune)
    prune.add_argument("--metric", help="rank --keep-top and choose the best by this metric "
                                        "(default: the one the run's best pointer records, "
                                        "else eval_return)")
    prune.add_argument("--mode", choices=("max", "min"),
                       help="whether a higher or lower --metric is better (default: as "
                            "recorded, else max)")

    migrate = sub.add_parser(
        "migrate-sharded", help="convert a sharded checkpoint of ckptlab 0.3 or older (pickled "
        "DCP index) into a new run directory, pickle-free",
        description="Convert one sharded checkpoint written by ckptlab 0.3 or older, whose DCP "
                    "index is a pickle, into a new run directory in today's pickle-free "
                    "format. Unpickling can run code: only for checkpoints you trust.")
    migrate.add_argument("path", type=Path, metavar="CKPT", help="the old checkpoint directory")
    migrate.add_argument("--out", type=Path, required=True, metavar="NEW_RUN_DIR",
                         help="a new (or empty) run directory for the converted checkpoint")
    migrate.add_argument("--trust-pickle", action="store_true",
                         help="required: you trust who wrote this checkpoint")

    progress = sub.add_parser(
        "progress", help="show your progress through the lessons (kept on this machine only)",
        description="Print the progress map the start page shows: lessons done, first-try quiz "
                    "scores, exercises passed and the questions to revisit. The record is one "
                    "file on this machine (CKPTLAB_PROGRESS_FILE or CKPTLAB_DATA_DIR move it).")
    progress.add_argument("--reset", action="store_true",
                          help="start a new record; the old file is kept beside it, renamed")
    progress.add_argument("--json", action="store_true", help="print the raw record")

    for name, text in (("inspect", "show what a checkpoint contains and how big each part is"),
                       ("verify", "check every file hash; exit 1 if anything fails")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("path", type=_location, metavar="DIR|CKPT",
                       help="a run directory, its checkpoints directory, or one checkpoint "
                            "(local, or s3://bucket/prefix)")
        if name == "inspect":
            p.add_argument("--json", action="store_true", help="print JSON")
    return parser
