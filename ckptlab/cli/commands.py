"""The commands that read or tidy checkpoints - ``inspect``, ``verify``, ``ls``, ``export``,
``prune``, ``migrate-sharded`` - and ``progress`` and ``demo``.

Each takes the parsed arguments and returns the exit status; a deliberate failure raises a
:class:`~ckptlab.engine.CkptlabError`, which :func:`ckptlab.cli.main` prints as one line.
``demo`` needs the ``rl`` extra and ``progress`` the lab, imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..engine import (
    BEST,
    LATEST,
    TENSORS,
    BestBy,
    Catalog,
    CheckpointManager,
    CheckpointNotFoundError,
    CkptlabError,
    describe_digest,
    export_checkpoint,
    read_manifest,
    read_pointer_record,
    read_tensor_table,
    resolve_location,
    verify_checkpoint,
)
from ..engine.console import EXIT_OK, EXIT_VERIFY_FAILED
from ..engine.location import StorePath
from ..engine.policies import retention_rules
from ..engine.sharded import describe_sharded, is_sharded

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
# ls / export / prune / migrate-sharded / progress / demo
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
        step = r.step if r.step is not None else "-"
        print(f"{r.run[-24:]:24s} {Path(r.path).name:16s} {step:>8} "
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
    policies = retention_rules(keep_last=args.keep_last, keep_top=args.keep_top,
                               keep_top_smooth=args.keep_top_smooth,
                               keep_every=args.keep_every, metric=metric, mode=mode)
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
    from ..lab import progress
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
    from ..dqn.demo import main as demo_main  # the rl extra

    if args.run_dir is not None and args.run_dir.exists() and any(args.run_dir.iterdir()):
        raise CkptlabError(f"--run-dir {args.run_dir} is not empty; choose a new directory")
    if args.kill_at >= args.steps:
        raise CkptlabError(f"--kill-at ({args.kill_at}) must be smaller than --steps "
                           f"({args.steps})")
    return demo_main(args.run_dir, args.steps, args.kill_at, args.seed)
