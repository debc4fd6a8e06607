"""Lesson 10, checkpoints on object storage: the lesson's run checkpointed to an S3 server that
the lesson starts on 127.0.0.1, killed with SIGKILL in the middle of an upload, and resumed.

:class:`LocalS3` is moto's S3 server (``ThreadedMotoServer``, a thread of the kernel's own
process) on a free loopback port, with one empty bucket and the standard AWS variables
pointing at it while it runs - exactly how a user points ckptlab at an S3-compatible store.

:func:`kill_mid_upload_and_resume` runs what ``ckptlab train --run-dir s3://...`` runs, in a
new process (``python -m ckptlab.dqn JOB``) that SIGKILLs itself while a save's data is being
uploaded; shows what the bucket then holds (data without a commit object: no checkpoint);
lets the next writer take over once the dead writer's lease lapses; resumes from the previous
checkpoint and trains on to the step the kill interrupted; and compares that checkpoint with
the uninterrupted local run's.

Needs the ``s3`` extra (boto3) and moto's server mode, which the ``lab`` extra installs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dqn import DQNConfig, Trainer
from ..dqn.job import TrainJob, job_command
from ..engine import (
    CheckpointManager,
    CkptlabError,
    MissingExtraError,
    RunLockedError,
    checkpoint_dir_name,
    committed_checkpoints,
    compare_checkpoints,
    latest_valid_checkpoint,
    read_manifest,
    read_pointer,
)
from ..engine.faults import ENV_VAR as FAULT_ENV
from ..engine.location import as_location
from ..engine.remote import LEASE_SECONDS_ENV

# Dummy credentials: the local server accepts any, and the user's own AWS files are never read.
_LESSON_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "ckptlab-lesson",
                       "AWS_SECRET_ACCESS_KEY": "ckptlab-lesson",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
# The killed writer's lease: short, so the next writer waits little, yet long enough that the
# refusal of a second writer is seen on a busy machine (it is probed right after the kill).
KILLED_LEASE_SECONDS = 5


@dataclass
class LocalS3:
    """An S3 server on 127.0.0.1 and one bucket on it; the AWS variables that point boto3 (and
    so ckptlab) at it are set while it runs and restored when it stops."""

    endpoint: str
    bucket: str
    _server: Any = field(repr=False)
    _saved: dict[str, str | None] = field(repr=False, default_factory=dict)

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts>``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    @property
    def environment(self) -> dict[str, str]:
        """The variables a process needs to use this server (given to child processes)."""
        return {**_LESSON_ENVIRONMENT, "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        """Stop the server and restore the environment. Idempotent."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_local_s3() -> LocalS3:
    """Start moto's S3 server on a free 127.0.0.1 port, create a bucket, and point the AWS
    variables of this process at it (until :meth:`LocalS3.stop`).

    Raises:
        MissingExtraError: boto3 or moto's server is not installed (the ``lab`` extra).
    """
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ModuleNotFoundError as exc:
        missing = (exc.name or "moto").split(".")[0]
        raise MissingExtraError(
            f"checkpoints on a local S3 server need {missing}, which is not installed: "
            'install the lab extra with: pip install -c requirements.txt ".[lab]"',
            name=missing) from None

    # One log line per request would flood the notebook's output (and cost CPU).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    store = LocalS3(f"http://127.0.0.1:{port}", f"lesson-{uuid.uuid4().hex[:10]}", server)
    try:
        store._saved = {name: os.environ.get(name) for name in store.environment}
        os.environ.update(store.environment)
        boto3.client("s3", endpoint_url=store.endpoint).create_bucket(Bucket=store.bucket)
    except BaseException:
        store.stop()
        raise
    return store


@contextlib.contextmanager
def local_s3_server() -> Iterator[LocalS3]:
    """:func:`start_local_s3` for a ``with`` block; the server stops at its end."""
    store = start_local_s3()
    try:
        yield store
    finally:
        store.stop()


# --------------------------------------------------------------------------------------------
# What a bucket holds
# --------------------------------------------------------------------------------------------

def _role(relative: str) -> str:
    """What an object of a run in a bucket is, from its key (relative to the checkpoints)."""
    parts = relative.split("/")
    if parts[-1] == "manifest.json" and len(parts) == 2:
        return f"commit object: {parts[0]} exists"
    if parts[0] == ".data":
        return f"data of one save of {parts[1].rsplit('-', 1)[0]}"
    if parts[0] in ("latest", "best"):
        return f"pointer ({parts[0]})"
    if parts[0] == ".writer-lease":
        return "the writer's lease"
    if parts[0] == "decisions":
        return "decision log (one object per append)"
    return "other"


def bucket_rows(checkpoints_url: str) -> list[dict[str, Any]]:
    """One row per object under a run's checkpoints prefix: its key, size and role; a data
    prefix without its step's commit object is marked. Decision-log objects are counted in one
    row."""
    from ..engine.location import store_location

    location = store_location(checkpoints_url)
    if location is None:
        raise CkptlabError(f"{checkpoints_url} is not an object-store location")
    prefix = location.key + "/"
    metas = list(location.store.list(prefix))
    keys = {m.key[len(prefix):] for m in metas}
    committed = {k.split("/")[0] for k in keys if k.endswith("/manifest.json")}
    rows: list[dict[str, Any]] = []
    log_objects = log_bytes = 0
    for meta in metas:
        relative = meta.key[len(prefix):]
        if relative.startswith("decisions/"):
            log_objects, log_bytes = log_objects + 1, log_bytes + meta.size
            continue
        role = _role(relative)
        if relative.startswith(".data/"):
            step_name = relative.split("/")[1].rpartition("-")[0]
            if step_name not in committed:
                role = f"data of a save of {step_name} that never committed: invisible"
        rows.append({"object": relative, "bytes": meta.size, "what it is": role})
    if log_objects:
        rows.append({"object": f"decisions/ ({log_objects} objects)", "bytes": log_bytes,
                     "what it is": _role("decisions/")})
    return rows


def commit_rows(checkpoint_url: str) -> list[dict[str, Any]]:
    """The fields of a checkpoint's commit object (its manifest) that make it a checkpoint:
    its step, the data prefix it names, every data object's size and SHA-256, its own hash."""
    manifest = read_manifest(checkpoint_url)
    rows: list[dict[str, Any]] = [
        {"field": "step", "value": manifest["step"]},
        {"field": "object_data", "value": manifest["object_data"]},
    ]
    for name, entry in sorted(manifest["files"].items()):
        digest = entry.get("sha256") or f"{len(entry['sha256_pieces']['digests'])} pieces"
        rows.append({"field": f"files / {name}",
                     "value": f"{entry['bytes']} bytes, sha256 {str(digest)[:16]}…"})
    rows.append({"field": "manifest_sha256", "value": manifest["manifest_sha256"][:16] + "…"})
    return rows


# --------------------------------------------------------------------------------------------
# A kill in the middle of an upload, and the resume
# --------------------------------------------------------------------------------------------

@dataclass
class StoreKillAndResume:
    """What :func:`kill_mid_upload_and_resume` saw, step by step."""

    run: str  # the run's location in the bucket
    kill_step: int
    killed_returncode: int
    killed_message: str  # the killed process's own last line
    killed_pid: int
    after_kill: list[dict[str, Any]]  # the bucket's objects right after the kill
    committed_after_kill: list[str]
    latest_after_kill: str | None
    newest_valid_after_kill: str
    refused_holder_pid: int | None  # the writer named when the next one started at once
    waited_seconds: float  # for the dead writer's lease to lapse
    resumed_from: str
    removed: list[str]  # data prefixes the next writer deleted (the killed save's)
    after_resume: list[dict[str, Any]]
    commit: list[dict[str, Any]]  # the commit object of the checkpoint at kill_step
    compared_with: str  # the uninterrupted run's checkpoint it is compared with
    differing: list[str] = field(default_factory=list)  # components that differ (none)

    def summary_rows(self) -> list[dict[str, Any]]:
        """The story in one table, derived from the run."""
        same = "every component identical" if not self.differing else \
            f"DIFFERS: {', '.join(self.differing)}"
        return [
            {"what happened": f"ckptlab train --run-dir {self.run}",
             "seen": f"killed by SIGKILL while uploading the save of step {self.kill_step} "
                     f"(exit {self.killed_returncode})"},
            {"what happened": "committed checkpoints right after the kill",
             "seen": ", ".join(self.committed_after_kill)},
            {"what happened": "the newest valid checkpoint (what a resume picks)",
             "seen": self.newest_valid_after_kill},
            {"what happened": "a second writer at once",
             "seen": "refused: the killed writer (pid "
                     f"{self.refused_holder_pid}) still holds the lease" if
                     self.refused_holder_pid is not None else "not refused"},
            {"what happened": "the next writer, once that lease lapsed (--resume auto)",
             "seen": f"after {self.waited_seconds:.1f} s: removed "
                     f"{len(self.removed)} uncommitted data prefix(es), resumed from "
                     f"{self.resumed_from}"},
            {"what happened": f"its checkpoint at step {self.kill_step} vs the uninterrupted "
                              "local run's",
             "seen": same},
        ]


def _child_environment(store: LocalS3, kill_step: int) -> dict[str, str]:
    env = {**os.environ, **store.environment, FAULT_ENV: f"save:uploading@{kill_step}",
           LEASE_SECONDS_ENV: str(KILLED_LEASE_SECONDS)}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def _refused_holder(checkpoints: str, holder_pid: int) -> int | None:
    """Try once to open a writer: the pid a refusal names (``-1``: another), or ``None`` when
    none came (the lease had lapsed already; the writer opened is closed at once)."""
    try:
        CheckpointManager(checkpoints).close()
    except RunLockedError as exc:
        return holder_pid if f"pid {holder_pid} " in str(exc) else -1
    return None


def _wait_for_lease(checkpoints: str, holder_pid: int, deadline: float) -> int | None:
    """Open a writer on ``checkpoints`` until the dead writer's lease has lapsed (it lapses
    :data:`KILLED_LEASE_SECONDS` after its last renewal, plus a second for the whole-second
    ``Last-Modified``); returns the pid the first refusal named (``-1``: another, ``None``:
    not refused at all)."""
    refused: int | None = None
    while True:
        try:
            CheckpointManager(checkpoints).close()  # takes the lapsed lease, releases it
            return refused
        except RunLockedError as exc:  # the message names the holder: pid, host, command
            if refused is None:
                refused = holder_pid if f"pid {holder_pid} " in str(exc) else -1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def kill_mid_upload_and_resume(config: DQNConfig, store: LocalS3,
                               uninterrupted: str | os.PathLike[str],
                               workdir: str | os.PathLike[str], *, kill_step: int,
                               run_name: str = "runs/cartpole") -> StoreKillAndResume:
    """Train ``config`` into the bucket in a new process that is SIGKILLed while the save of
    ``kill_step`` uploads; then resume it in this process, as ``--resume auto`` does, and
    train on to ``kill_step``.

    Args:
        uninterrupted: the checkpoints directory of the same run trained without a kill
            (any location); its checkpoint at ``kill_step`` is the comparison.
        workdir: a folder for the run's config file (nothing else is written locally).

    Raises:
        CkptlabError: the process did not die by SIGKILL at the upload, or ``kill_step`` is
            not a save of ``config`` after its first.
    """
    every = config.save_every_steps
    if every <= 0 or kill_step % every or not every < kill_step <= config.total_steps:
        raise CkptlabError(f"kill_step must be a save after the first: a multiple of "
                           f"{every} from {2 * every} to {config.total_steps}")
    run = store.url(run_name)
    checkpoints = f"{run}/checkpoints"
    config_file = Path(workdir) / "store-run-config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    # What `ckptlab train --run-dir RUN --config FILE --quiet` runs, in a new process.
    job = TrainJob(as_location(run), config_file=config_file, quiet=True)
    child = subprocess.Popen(job_command(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_child_environment(store, kill_step),
                             cwd=str(workdir))
    try:
        _, stderr = child.communicate(timeout=600)
    except BaseException:
        child.kill()
        child.wait()
        raise
    killed_at = time.monotonic()
    if child.returncode != -signal.SIGKILL:
        raise CkptlabError(f"the training process was expected to die by SIGKILL but exited "
                           f"with {child.returncode}: {stderr.strip()[-400:]}")
    first_refusal = _refused_holder(checkpoints, child.pid)  # at once: the lease still holds
    after_kill = bucket_rows(checkpoints)
    committed = [p.name for p in committed_checkpoints(checkpoints)]
    newest = latest_valid_checkpoint(checkpoints).name
    latest = read_pointer(checkpoints, "latest")
    refused = _wait_for_lease(checkpoints, child.pid,
                              deadline=killed_at + KILLED_LEASE_SECONDS + 15)
    refused = first_refusal if first_refusal is not None else refused
    waited = time.monotonic() - killed_at
    # The writer that took the lease over removed what never committed.
    data_after_open = {r["object"] for r in bucket_rows(checkpoints)}
    removed = sorted({row["object"].split("/")[1] for row in after_kill
                      if row["object"].startswith(".data/")
                      and row["object"] not in data_after_open})
    with Trainer(config, run) as trainer:  # what --resume auto does, in this process
        resumed = trainer.restore()
        trainer.train(until_step=kill_step)
    name = checkpoint_dir_name(kill_step)
    comparison = compare_checkpoints(f"{checkpoints}/{name}", Path(uninterrupted) / name)
    return StoreKillAndResume(
        run=run, kill_step=kill_step, killed_returncode=child.returncode,
        killed_message=(stderr.strip().splitlines() or [""])[-1], killed_pid=child.pid,
        after_kill=after_kill, committed_after_kill=committed, latest_after_kill=latest,
        newest_valid_after_kill=newest, refused_holder_pid=refused, waited_seconds=waited,
        resumed_from=resumed.name, removed=removed, after_resume=bucket_rows(checkpoints),
        commit=commit_rows(f"{checkpoints}/{name}"), compared_with=name,
        differing=[c.name for c in comparison if c.differing])

