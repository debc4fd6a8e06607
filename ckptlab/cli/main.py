"""Command line: ``python -m ckptlab train | inspect | verify | ls | export | prune | demo``.

Every deliberate failure prints one line starting with ``error:`` and exits with status 2
(verification failures exit with 1); nothing that already exists is changed by a failed command.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__, import_layer
from ..engine import (
    BEST,
    CHECKPOINTS_SUBDIR,
    LATEST,
    TENSORS,
    AnyOf,
    BestBy,
    Catalog,
    CheckpointInfo,
    CheckpointManager,
    CheckpointNotFoundError,
    CkptlabError,
    EveryNSteps,
    EveryTSeconds,
    Final,
    KeepEveryKSteps,
    KeepLastN,
    KeepTopK,
    OnImprovement,
    OnStart,
    RetentionPolicy,
    SavePolicy,
    describe_digest,
    export_checkpoint,
    read_manifest,
    read_pointer_record,
    read_tensor_table,
    resolve_location,
    verify_checkpoint,
)
from ..engine.location import StorePath, as_location
from ..engine.sharded import describe_sharded, is_sharded, sharded_load_error

if TYPE_CHECKING:
    from ..dqn import DQNConfig

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_ERROR = 0, 1, 2


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


def _retention_from(args: argparse.Namespace, metric: str = "eval_return",
                    mode: str = "max") -> list[RetentionPolicy]:
    policies: list[RetentionPolicy] = []
    if args.keep_last:
        policies.append(KeepLastN(args.keep_last))
    if args.keep_top:
        policies.append(KeepTopK(metric, args.keep_top, mode, args.keep_top_smooth))
    if args.keep_every:
        policies.append(KeepEveryKSteps(args.keep_every))
    return policies


def build_parser() -> argparse.ArgumentParser:
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


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise CkptlabError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CkptlabError(f"--config {path} is not readable JSON ({exc})") from None
    known = {f.name for f in dataclasses.fields(import_layer("ckptlab.dqn").DQNConfig)}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else []
        raise CkptlabError(f"--config {path} must be a JSON object of DQNConfig fields"
                           + (f"; unknown: {', '.join(extra)}" if extra else ""))
    return data


def _config_for(args: argparse.Namespace, info: CheckpointInfo | None) -> DQNConfig:
    """The config a run uses: the checkpoint's (when resuming), then --config, then flags."""
    dqn = import_layer("ckptlab.dqn")
    overrides = _read_config_file(args.config) if args.config else {}
    overrides.update({k: getattr(args, k) for k in ("env_id", "total_steps", "seed",
                                                    "save_every_steps", "device")
                      if getattr(args, k) is not None})
    if info is None:
        return dqn.DQNConfig(**overrides)
    return dataclasses.replace(dqn.checkpoint_config(info), **overrides)


def _save_policy_from(args: argparse.Namespace, config: DQNConfig) -> SavePolicy:
    dqn = import_layer("ckptlab.dqn")
    policies: list[SavePolicy] = [EveryNSteps(config.save_every_steps), Final()]
    if args.save_every_episodes:
        policies.append(dqn.EveryNEpisodes(args.save_every_episodes))
    if args.save_every_seconds:
        policies.append(EveryTSeconds(args.save_every_seconds))
    if args.save_on_start:
        policies.append(OnStart())
    if args.save_on_improvement:
        policies.append(OnImprovement("eval_return", "max", args.min_delta))
    return AnyOf(*policies)


def cmd_train(args: argparse.Namespace) -> int:
    # [distributed] --nproc launches ranks; a launched worker trains one rank
    if args.nproc is not None or args.nnodes > 1 or os.environ.get("TORCHELASTIC_RUN_ID"):
        if isinstance(args.run_dir, StorePath):  # [object store] not yet for several ranks
            raise CkptlabError(
                f"--run-dir {args.run_dir}: sharded checkpoints (--nproc, several ranks) on "
                "object storage are not supported yet; train with one process, or put a "
                "sharded run on a local or network file system (nothing was written)")
        return import_layer("ckptlab.dqn.distributed", "ckptlab train").cmd_train_distributed(
            args, args.raw_argv, _config_for, _retention_from, _save_policy_from)
    dqn = import_layer("ckptlab.dqn", "ckptlab train")
    info = dqn.find_resume_checkpoint(args.run_dir, args.resume)
    if info is not None and is_sharded(info.manifest):  # [distributed]
        raise sharded_load_error(info.path, info.manifest)
    config = _config_for(args, info)
    # Checked once, before anything is created: a refused resume changes nothing.
    plan = (dqn.plan_resume(info, config, allow_config_change=args.allow_config_change,
                            run_checkpoints=args.run_dir / CHECKPOINTS_SUBDIR,
                            allow_rollback=args.rollback)
            if info is not None else None)
    if info is not None and info.step >= config.total_steps:
        print(f"The run in {args.run_dir} is already finished: {info.name} is at step "
              f"{info.step} of {config.total_steps}. Nothing to do; pass --steps N with "
              f"N > {info.step} to train longer.")
        return EXIT_OK
    say = None if args.quiet else _print_line
    trainer = dqn.Trainer(config, args.run_dir, retention=_retention_from(args),
                      disk_budget_bytes=args.disk_budget, save_policy=_save_policy_from(args, config),
                      async_save=args.async_save, handle_signals=True,
                      progress_bar=not args.quiet, log=say)
    try:
        if info is not None:
            trainer.resume_from(plan)
            print(f"Resuming from {info.path} (step {info.step} of {config.total_steps}, "
                  f"epoch {trainer.progress.epoch}, episode {trainer.progress.episode}).",
                  flush=True)
        else:
            print(f"Starting a new run in {args.run_dir}: {config.env_id}, seed {config.seed}, "
                  f"{config.total_steps} steps, device {trainer.device}.", flush=True)
        try:
            result = trainer.train()
        except KeyboardInterrupt:
            print(f"\nInterrupted at step {trainer.progress.step}. Run the same command again "
                  "to resume from the last checkpoint.", file=sys.stderr)
            return 130
    finally:
        trainer.close()
    if result.interrupted_by:
        saved = result.last_checkpoint.path if result.last_checkpoint else "nothing"
        print(f"Received {result.interrupted_by} at step {result.final_step}: saved {saved} "
              "and stopped. Run the same command to resume.", flush=True)
        return EXIT_OK
    evaluation = result.last_evaluation
    score = (f"; last evaluation: mean return {evaluation.mean_return:.1f}, "
             f"{100 * evaluation.success_rate:.0f}% of episodes reached the time limit"
             if evaluation else "")
    where = f"; final checkpoint {result.last_checkpoint.path}" if result.last_checkpoint else ""
    print(f"Finished at step {result.final_step} in {result.train_seconds:.1f} s{score}{where}.")
    return EXIT_OK


def _print_line(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


# --------------------------------------------------------------------------------------------
# inspect / verify
# --------------------------------------------------------------------------------------------



def describe_checkpoint(path: Path) -> dict[str, Any]:
    """A JSON-compatible description of one checkpoint (what ``inspect --json`` prints)."""
    manifest = read_manifest(path)
    try:
        verify_checkpoint(path)
        status = "valid"
    except CkptlabError as exc:
        status = f"INVALID: {exc}"
    keys = ("step", "episode", "epoch", "total_steps", "created", "format_version", "metrics",
            "config", "config_sha256", "versions", "files")
    if is_sharded(manifest):  # [distributed] DCP files plus one part per rank
        return {"path": str(path), "status": status, **{k: manifest.get(k) for k in keys},
                **describe_sharded(path, manifest)}
    tensors = read_tensor_table(path / TENSORS) if status == "valid" else {}
    components = {}
    for name, entry in manifest["components"].items():
        components[name] = {
            **entry, "total_bytes": entry["tensor_bytes"] + entry["json_bytes"],
            "tensors_detail": {k: v for k, v in tensors.items() if k.startswith(name + "/")}}
    return {"path": str(path), "status": status, **{k: manifest.get(k) for k in keys},
            "world_size": 1, "components": components}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def cmd_inspect(args: argparse.Namespace) -> int:
    directory, specific = resolve_location(args.path)
    listing = []
    if specific is None:
        manager = CheckpointManager(directory, create=False)
        listing = [p.name for p in manager.committed()]
        if not listing:
            raise CheckpointNotFoundError(f"{args.path} contains no ckptlab checkpoints")
        specific = manager.latest_valid().path
    d = describe_checkpoint(specific)
    if args.json:
        print(json.dumps({**d, "checkpoints_in_directory": listing}, indent=2))
        return EXIT_OK
    if listing:
        print(f"{directory}: {len(listing)} checkpoint(s): {', '.join(listing)}")
        print("Showing the newest valid one.\n")
    cfg = d["config"] or {}
    print(f"checkpoint  {d['path']}  ({d['status']})")
    print(f"step {d['step']}, episode {d.get('episode')}, epoch {d.get('epoch')}, "
          f"saved {d['created']}, format v{d['format_version']}")
    if cfg:
        print(f"config      {cfg.get('env_id')}, seed {cfg.get('seed')}, hidden "
              f"{cfg.get('hidden_sizes')}, sha256 {str(d['config_sha256'])[:12]}")
    print(f"world size  {d['world_size']} rank(s)" + (  # [distributed]
        f": sharded (DCP {', '.join(d['dcp_keys'] or [])} + one part per rank)"
        if d["world_size"] > 1 or d.get("dcp_keys") else ""))
    print("metrics     " + ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in d["metrics"].items()))
    print("versions    " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()))
    print("\ncomponent         size    tensors")
    for name, c in d["components"].items():
        print(f"  {name:14s} {_human(c['total_bytes']):>9s}  {c['tensors']:3d}")
        for key, t in c["tensors_detail"].items():
            shape = "x".join(map(str, t["shape"])) or "scalar"
            print(f"      {key[len(name) + 1:]:34s} {t['dtype']:5s} {shape:>12s} "
                  f"{_human(t['bytes']):>9s}")
    print("\nfiles")
    for name, f in d["files"].items():
        print(f"  {name:20s} {_human(f['bytes']):>9s}  sha256 {describe_digest(f)}...")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    directory, specific = resolve_location(args.path)
    if specific is not None:
        targets = [specific]
    else:
        targets = CheckpointManager(directory, create=False).committed()
        if not targets:
            raise CheckpointNotFoundError(f"{args.path} contains no ckptlab checkpoints")
    failures, problems = 0, []
    for path in targets:
        try:
            info = verify_checkpoint(path)
            print(f"OK    {path.name}  step {info.step}  {_human(info.total_bytes)}")
        except CkptlabError as exc:
            failures += 1
            print(f"FAIL  {path.name}  {exc}")
    if specific is None:
        for name in (LATEST, BEST):
            pointer = (read_pointer_record(directory, name) or {}).get("checkpoint")
            if pointer is not None and not (
                    (directory / pointer).is_dir() if isinstance(directory, Path)
                    else pointer in {p.name for p in targets}):  # [object store] commits
                problems.append(f"the {name} pointer names {pointer}, which does not exist")
                print(f"FAIL  {name} pointer names {pointer}, which does not exist")
    print(f"{len(targets) - failures} of {len(targets)} checkpoint(s) valid"
          + (f"; {len(problems)} other problem(s)" if problems else ""))
    return EXIT_VERIFY_FAILED if failures or problems else EXIT_OK


# --------------------------------------------------------------------------------------------

def cmd_ls(args: argparse.Namespace) -> int:
    catalog = Catalog(args.root)
    count = catalog.rebuild(verify=args.verify)
    if count == 0:
        raise CheckpointNotFoundError(f"{args.root} contains no ckptlab checkpoints")
    if args.sort and args.sort not in ("step", "size_bytes", "created") \
            and args.sort not in catalog.metric_names():
        raise CkptlabError(f"no checkpoint under {args.root} records a metric {args.sort!r}; "
                           f"known: {', '.join(catalog.metric_names()) or 'none'}")
    rows = catalog.query(sort=args.sort, ascending=args.ascending, top=args.top, run=args.run)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return EXIT_OK
    metric = args.sort if args.sort not in (None, "step", "size_bytes", "created") \
        else "eval_return"
    where = ("kept in memory: an object store holds no index file"
             if isinstance(args.root, StorePath) else
             "kept in memory: the directory is read-only" if catalog.in_memory
             else catalog.db_path)
    print(f"{count} checkpoint(s) under {args.root} (index: {where})")
    print(f"{'run':24s} {'checkpoint':16s} {'step':>8s} {metric:>12s} {'size':>9s}  status")
    for r in rows:
        value = r.metrics.get(metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        print(f"{r.run[-24:]:24s} {Path(r.path).name:16s} {r.step if r.step is not None else '-':>8} "
              f"{shown:>12s} {_human(r.size_bytes or 0):>9s}  {r.status[:60]}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    for path in export_checkpoint(args.path, args.out, what=args.what, source=args.tensors):
        print(f"wrote {path} ({_human(path.stat().st_size)})")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    directory, specific = resolve_location(args.path)
    if specific is not None:
        raise CkptlabError(f"{args.path} is one checkpoint; give its run directory")
    # Rank by the run's own metric: the one its best pointer records, unless told otherwise.
    recorded = read_pointer_record(directory, BEST) or {}
    metric = args.metric or recorded.get("metric") or "eval_return"
    mode = args.mode or (recorded.get("mode") if recorded.get("metric") == metric else None) \
        or "max"
    if not isinstance(metric, str) or mode not in ("max", "min"):
        raise CkptlabError(f"the best pointer in {directory} is damaged; pass --metric and "
                           "--mode")
    policies = _retention_from(args, metric, mode)
    if not policies and args.disk_budget is None:
        raise CkptlabError("give at least one rule: --keep-last, --keep-top, --keep-every or "
                           "--disk-budget")
    # Without a metric given or recorded, the manager protects whatever `best` names.
    best = BestBy(metric, mode) if args.metric or recorded.get("metric") else None
    manager = CheckpointManager(directory, retention=policies, best=best,
                                disk_budget_bytes=args.disk_budget, create=not args.dry_run)
    try:
        decisions = manager.plan_retention() if args.dry_run else manager.prune()
    finally:
        manager.close()
    verb = ("would delete", "would keep") if args.dry_run else ("deleted", "kept")
    for d in decisions:
        print(f"{verb[0] if not d.keep else verb[1]:12s} {d.name}  " + "; ".join(d.reasons))
    doomed = sum(not d.keep for d in decisions)
    print(f"{doomed} of {len(decisions)} checkpoint(s) "
          + ("would be deleted; nothing was changed (dry run)" if args.dry_run else "deleted"))
    return EXIT_OK


def cmd_migrate_sharded(args: argparse.Namespace) -> int:
    from ..engine.migrate import migrate_legacy_sharded

    info = migrate_legacy_sharded(args.path, args.out, trust_pickle=args.trust_pickle)
    print(f"converted {args.path} into {info.path} (format {info.manifest['format_version']}, "
          "no pickle; verified). The original is unchanged. Resume with: ckptlab train "
          f"--nproc {info.manifest['sharded']['world_size']} --run-dir {args.out} "
          "--resume auto")
    return EXIT_OK


def cmd_progress(args: argparse.Namespace) -> int:
    # [lab] the learner's progress record (ckptlab/lab/progress.py documents the file)
    progress = import_layer("ckptlab.lab.progress", "ckptlab progress")
    path = progress.progress_path()
    if args.reset:
        moved = progress.reset_progress(path)
        print(f"progress reset; the old record was kept as {moved}" if moved else
              f"nothing to reset: no progress file at {path}")
        return EXIT_OK
    record = progress.read_progress(path)
    if args.json:
        print(json.dumps(record, indent=1, ensure_ascii=False))
    else:
        print(progress.progress_text(progress.summarise(record), path))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    demo_main = import_layer("ckptlab.dqn.demo", "ckptlab demo").main

    if args.run_dir is not None and args.run_dir.exists() and any(args.run_dir.iterdir()):
        raise CkptlabError(f"--run-dir {args.run_dir} is not empty; choose a new directory")
    if args.kill_at >= args.steps:
        raise CkptlabError(f"--kill-at ({args.kill_at}) must be smaller than --steps "
                           f"({args.steps})")
    return demo_main(args.run_dir, args.steps, args.kill_at, args.seed)


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # [distributed] for workers
    commands = {"train": cmd_train, "inspect": cmd_inspect, "verify": cmd_verify,
                "demo": cmd_demo, "ls": cmd_ls, "export": cmd_export, "prune": cmd_prune,
                "migrate-sharded": cmd_migrate_sharded, "progress": cmd_progress}
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one readable line per warning
        try:
            return commands[args.command](args)
        except CkptlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except OSError as exc:  # the disk or the permissions refused; say so in one line
            print(f"error: {exc.filename or ''}{': ' if exc.filename else ''}"
                  f"{exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR


def main_exit() -> None:
    """Entry point of ``ckptlab ...`` (console script) and ``python -m ckptlab``."""
    status = main()
    # By now every file is closed and every save committed. The interpreter's final garbage
    # collection would still walk torch's whole object graph (about 0.8 s per process, paid
    # by every worker and every resume); freezing the heap skips that collection and nothing
    # else (finalizers driven by reference counts still run).
    gc.freeze()
    sys.exit(status)
