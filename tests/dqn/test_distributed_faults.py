"""A `ckptlab train --nproc 2` job under faults: SIGTERM and SIGINT to the launcher, a SIGKILLed
launcher, a full disk or a denied permission on one rank during a sharded save; and where
evaluation runs.

Faults inside the ranks are injected the way the single-process tests inject them (an
``OSError(ENOSPC)`` where a file is written), but in the ranks' own processes: through a
``sitecustomize`` module on the job's ``PYTHONPATH``, which patches the writing functions of the
one rank it names. It also logs every evaluation a rank runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from ckptlab.engine.distributed import (  # noqa: E402
    GRACEFUL_STOP_SECONDS,
    compare_sharded_checkpoints,
    read_sharded_state,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"learning_starts": 100, "steps_per_epoch": 200, "eval_episodes": 2,
          "hidden_sizes": [16, 16], "buffer_capacity": 2000, "batch_size": 32}
STEPS, SAVE_EVERY = 1200, 400
TIMEOUT = 300

# Loaded by every process of a job (PYTHONPATH); acts only in ranks (RANK is set).
SITECUSTOMIZE = '''
import builtins, errno, io, json, os, re

RANK = os.environ.get("RANK")
EVAL_LOG = os.environ.get("TEST_EVAL_LOG")
DISK_FULL = os.environ.get("TEST_DISK_FULL")  # "RANK:WHAT@STEP[:ERRNO]", WHAT part|dcp|manifest

if RANK is not None and EVAL_LOG:
    from ckptlab.dqn.envs import GreedyEvaluator

    _evaluate = GreedyEvaluator.evaluate

    def _logged(self, policy, step):
        result = _evaluate(self, policy, step)
        with builtins.open(os.path.join(EVAL_LOG, f"rank_{RANK}.jsonl"), "a") as log:
            log.write(json.dumps({"step": step, "returns": list(result.returns)}) + "\\n")
        return result

    GreedyEvaluator.evaluate = _logged

if RANK is not None and DISK_FULL and DISK_FULL.split(":")[0] == RANK:
    _what, _, _rest = DISK_FULL.split(":", 1)[1].partition("@")
    _step, _, _name = _rest.partition(":")
    _errno = getattr(errno, _name or "ENOSPC")
    _temp = re.compile(rf"\\.tmp-step_{int(_step):08d}-")
    _open, _os_open, _os_write = builtins.open, os.open, os.write
    _full_fds = set()

    def _hit(path):
        path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
        if not isinstance(path, str) or not _temp.search(path):
            return False
        what = ("manifest" if os.path.basename(path) == "manifest.json" else
                "dcp" if f"{os.sep}dcp{os.sep}" in path else "part")
        return what == _what

    class _FullFile:  # opens (the file exists), then every write fails
        def __init__(self, file):
            self._file = file
        def write(self, data):
            raise OSError(_errno, os.strerror(_errno))
        def __getattr__(self, name):
            return getattr(self._file, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._file.close()

    def _patched_open(file, mode="r", *args, **kwargs):
        opened = _open(file, mode, *args, **kwargs)
        return _FullFile(opened) if set(mode) & set("wxa") and _hit(file) else opened

    def _patched_os_open(path, flags, *args, **kwargs):
        fd = _os_open(path, flags, *args, **kwargs)
        if flags & (os.O_WRONLY | os.O_RDWR) and _hit(path):
            _full_fds.add(fd)
        return fd

    def _patched_os_write(fd, data):
        if fd in _full_fds:
            raise OSError(_errno, os.strerror(_errno))
        return _os_write(fd, data)

    builtins.open = io.open = _patched_open
    os.open, os.write = _patched_os_open, _patched_os_write
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


def _command(root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ckptlab", "train", "--run-dir", str(run), "--config",
            str(root / "config.json"), "--steps", str(steps), "--save-every", str(SAVE_EVERY),
            "--nproc", "2", *extra]


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CKPTLAB_", "TEST_", "TORCHELASTIC_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(root / "site"), str(REPO)]),
               OMP_NUM_THREADS="1", **extra)
    return env


def _train(root: Path, run: Path, steps: int = STEPS,
           **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(root, run, steps, "--quiet"), env=_env(root, **env),
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=root)


def _start(root: Path, run: Path, steps: int = STEPS) -> subprocess.Popen[str]:
    """A job whose output (rank 0's epoch lines included) can be read as it comes."""
    return subprocess.Popen(_command(root, run, steps), env=_env(root), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=root)


def _read_until(job: subprocess.Popen[str], prefix: str) -> str:
    seen = []
    for line in job.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)
    raise AssertionError(f"the job ended before printing {prefix!r}:\n{''.join(seen)[-3000:]}")


def _checkpoints(run: Path) -> Path:
    return run / "checkpoints"


def _final(run: Path, step: int = STEPS) -> Path:
    return _checkpoints(run) / f"step_{step:08d}"


def _leftovers(run: Path) -> list[str]:
    return [p.name for p in _checkpoints(run).iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(scope="module")
def reference(root) -> Path:
    """The uninterrupted job, logging each rank's evaluations into ``evaluations/``."""
    run = root / "uninterrupted"
    (root / "evaluations").mkdir()
    done = _train(root, run, TEST_EVAL_LOG=str(root / "evaluations"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return run


# --------------------------------------------------------------------------------------------
# SIGTERM / SIGINT to the launcher: one coordinated save, exit 0, an exact resume
# --------------------------------------------------------------------------------------------

def _stop(job: subprocess.Popen[str], signum: int) -> tuple[str, int, float]:
    """Send ``signum`` to the launcher; returns its output, the step the ranks stopped at,
    and the seconds from the signal to the launcher's exit."""
    sent = time.monotonic()
    job.send_signal(signum)
    output, _ = job.communicate(timeout=TIMEOUT)
    took = time.monotonic() - sent
    name = signal.Signals(signum).name
    assert job.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    stops = [line for line in output.splitlines() if line.startswith(f"Received {name} at step")]
    assert len(stops) == 1 and "all 2 rank(s) saved" in stops[0], output[-3000:]
    return output, int(stops[0].split("at step ")[1].split(":")[0]), took


def _assert_stop_saved(run: Path, step: int, signum: int) -> None:
    checkpoint = _final(run, step)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    # saved because of the signal, unless a regular save had just covered that very step
    assert manifest["save_reasons"] == [f"received {signal.Signals(signum).name}"] or \
        step % SAVE_EVERY == 0, manifest["save_reasons"]
    latest = json.loads((_checkpoints(run) / "latest").read_text())
    assert latest["checkpoint"] == checkpoint.name
    assert read_sharded_state(checkpoint)[0].manifest["sharded"]["world_size"] == 2
    assert not _leftovers(run)


def test_sigterm_then_sigint_to_the_launcher_save_once_exit_0_and_resume_exactly(root,
                                                                                 reference):
    run = root / "stopped"
    job = _start(root, run)
    _read_until(job, "epoch   2")  # step 400
    _, first, took = _stop(job, signal.SIGTERM)
    assert took < 10, f"{took:.1f} s from SIGTERM to exit (bound: {GRACEFUL_STOP_SECONDS} s)"
    assert 400 <= first < STEPS
    _assert_stop_saved(run, first, signal.SIGTERM)

    job = _start(root, run)  # resumes from the stop, and is stopped again by Ctrl-C
    resumed = _read_until(job, "epoch   4")  # step 800
    assert f"from step_{first:08d}" in resumed, resumed[-2000:]
    _, second, took = _stop(job, signal.SIGINT)
    assert took < 10 and 800 <= second < STEPS
    _assert_stop_saved(run, second, signal.SIGINT)

    done = _train(root, run)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    differing = [c.name for c in compare_sharded_checkpoints(_final(reference), _final(run))
                 if not c.identical]
    assert not differing, differing


# --------------------------------------------------------------------------------------------
# Evaluation runs once per epoch, on rank 0, and the manifest reports exactly that result
# --------------------------------------------------------------------------------------------

def test_evaluation_runs_once_and_every_rank_and_the_manifest_hold_its_result(root,
                                                                             reference):
    logs = {rank: [json.loads(line) for line in (root / "evaluations" / f"rank_{rank}.jsonl")
                   .read_text().splitlines()]
            for rank in (0, 1) if (root / "evaluations" / f"rank_{rank}.jsonl").exists()}
    epochs = STEPS // CONFIG["steps_per_epoch"]
    assert list(logs) == [0], "only rank 0 may evaluate"
    assert [e["step"] for e in logs[0]] == [200 * (i + 1) for i in range(epochs)]
    info, states = read_sharded_state(_final(reference))
    returns = [r for e in logs[0] for r in e["returns"]]
    for part in ("rank_00000", "rank_00001"):
        assert states[part]["metrics"]["eval_returns"].tolist() == returns, part
    assert info.manifest["metrics"]["eval_return"] == float(np.mean(logs[0][-1]["returns"]))


# --------------------------------------------------------------------------------------------
# A SIGKILLed launcher takes its ranks with it
# --------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has stopped; its reaper may be slow (containers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ranks_die_with_a_sigkilled_launcher_and_commit_nothing_after(root):
    run = root / "orphans"
    job = _start(root, run, steps=100_000)
    workers: list[int] = []
    try:
        output = _read_until(job, "saved sharded checkpoint")  # training and committing
        workers = [int(pid) for pid in Path(f"/proc/{job.pid}/task/{job.pid}/children")
                   .read_text().split()]
        assert len(workers) == 2, (workers, output)
        job.kill()
        job.wait()  # not its output: the ranks hold the pipe open for as long as they live
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), f"ranks outlived their launcher by 5 s:\n{output}"
        committed = sorted(p.name for p in _checkpoints(run).glob("step_*"))
        time.sleep(1.5)  # an orphan would commit a checkpoint about every second here
        assert sorted(p.name for p in _checkpoints(run).glob("step_*")) == committed
    finally:
        for pid in filter(_alive, workers):  # the old behaviour: orphans training on
            os.kill(pid, signal.SIGKILL)
        if job.poll() is None:
            job.kill()
            job.wait()
        job.stdout.close()


def test_parent_watchdog_alone_kills_an_orphan_and_a_stale_launcher_pid_is_refused(root):
    """The portable half of die_with_launcher, without the kernel's PR_SET_PDEATHSIG."""
    grandchild = ("import os, time; from ckptlab.engine.distributed import "
                  "start_parent_watchdog; start_parent_watchdog(os.getppid(), 0.1); "
                  "print('watching', flush=True); time.sleep(120)")
    child = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', "
             f"{grandchild!r}]); print(g.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", child], env=_env(root), text=True,
                              stdout=subprocess.PIPE)
    orphan = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "watching"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 3
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan), "the watchdog let the orphan live"
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        parent.kill()
        parent.wait()
    # A worker whose launcher died before it could even start watching stops at once.
    stale = subprocess.run([sys.executable, "-c", "from ckptlab.engine.distributed import "
                            "die_with_launcher; die_with_launcher(); print('trained on')"],
                           env=_env(root, CKPTLAB_LAUNCHER_PID="1"), capture_output=True,
                           text=True, timeout=60)
    assert stale.returncode == -signal.SIGKILL and "is gone" in stale.stderr, stale


# --------------------------------------------------------------------------------------------
# A full disk or a denied permission on one rank during a sharded save
# --------------------------------------------------------------------------------------------

def _tree(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and ".writer.lock" not in p.name}


@pytest.mark.parametrize("fault,errno_name", [
    ("1:dcp@1600", "ENOSPC"),         # rank 1's DCP data file: DCP raises on every rank
    ("0:part@1600:EACCES", "EACCES"),  # rank 0's own part, before DCP
])
def test_a_failed_save_on_one_rank_is_one_error_line_and_changes_nothing(root, reference,
                                                                         tmp_path, fault,
                                                                         errno_name):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _tree(run)
    done = _train(root, run, steps=STEPS + 400, TEST_DISK_FULL=fault)  # next save: 1600
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert "could not save checkpoint step_00001600" in errors[0] and errno_name in errors[0]
    assert "Traceback" not in output, output[-3000:]
    assert not _leftovers(run)
    assert _tree(run) == before  # earlier checkpoint, latest, best, decision log: untouched
