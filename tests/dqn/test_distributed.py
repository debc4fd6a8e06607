"""Sharded checkpoints of a 2-rank data-parallel run (torch.distributed, gloo, CPU).

Real launches (torchrun and ``ckptlab train --nproc``, the elastic agent, SIGKILL of a rank)
are few and tiny; everything that can be checked on files is checked without a process group.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from ckptlab.cli import main  # noqa: E402
from ckptlab.dqn.distributed import (  # noqa: E402
    LaunchedRun,
    check_world_size,
    kill_outcome,
    reshard_replay,
)
from ckptlab.dqn.job import TrainJob  # noqa: E402
from ckptlab.engine import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    IncompatibleCheckpointError,
    latest_valid_checkpoint,
    load_checkpoint_state,
    verify_checkpoint,
)
from ckptlab.engine.distributed import (  # noqa: E402
    RANK_FAULT_PHASES,
    compare_sharded_checkpoints,
    parse_rank_faults,
    read_sharded_state,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"learning_starts": 100, "steps_per_epoch": 200, "eval_episodes": 2,
          "hidden_sizes": [16, 16], "buffer_capacity": 2000, "batch_size": 32}
STEPS = 600
TIMEOUT = 420


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_RANK_FAULT"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def _train(run_dir: Path, *args: str, env: dict[str, str] | None = None,
           steps: int = STEPS) -> subprocess.CompletedProcess[str]:
    config = run_dir.parent / "config.json"
    config.write_text(json.dumps(CONFIG))
    cmd = [sys.executable, "-m", "ckptlab", "train", "--run-dir", str(run_dir), "--config",
           str(config), "--steps", str(steps), "--save-every", "200", "--quiet", *args]
    return subprocess.run(cmd, env=env or _env(), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=run_dir.parent)


def _final(run_dir: Path, step: int = STEPS) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def _assert_identical(a: Path, b: Path) -> None:
    differing = [c.name for c in compare_sharded_checkpoints(a, b) if not c.identical]
    assert not differing, differing


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted 2-rank run, launched with plain ``torchrun -m ckptlab train``."""
    root = tmp_path_factory.mktemp("dist")
    run = root / "uninterrupted"
    config = root / "config.json"
    config.write_text(json.dumps(CONFIG))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", "-m", "ckptlab", "train", "--run-dir", str(run),
           "--config", str(config), "--steps", str(STEPS), "--save-every", "200", "--quiet"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


# --------------------------------------------------------------------------------------------
# Exact resume under SIGKILL, restarted by the elastic agent
# --------------------------------------------------------------------------------------------

def test_killing_ranks_anywhere_in_the_save_protocol_then_restarting_is_exact(runs):
    run = runs / "killed"
    faults = ",".join([
        "1:save:before-shard@200",       # attempt 0: rank 1 dies before writing its part
        "1:save:shard-written@400#1",    # attempt 1: after its shard, before the commit
        "0:save:committed@400#2",        # attempt 2: rank 0 after the rename, before latest
    ])
    done = _train(run, "--nproc", "2", "--max-restarts", "3",
                  env=_env(CKPTLAB_RANK_FAULT=faults))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    starts = [line for line in done.stdout.splitlines() if line.startswith("[restart")]
    # attempt 0 never committed step 200, so attempt 1 starts afresh; attempt 1 committed 200
    # but not 400; attempt 2 renamed 400 into place before it died, so 400 counts.
    assert starts[0].startswith("[restart 0] Starting a new 2-rank run")
    assert starts[1].startswith("[restart 1] Starting a new 2-rank run")
    assert "from step_00000200" in starts[2] and starts[2].startswith("[restart 2]")
    assert "from step_00000400" in starts[3] and starts[3].startswith("[restart 3]")
    assert out.count("injected SIGKILL") == 3
    _assert_identical(_final(runs / "uninterrupted"), _final(run))
    outcome = kill_outcome(LaunchedRun(run, done.returncode, out),
                           _final(runs / "uninterrupted"), faults)
    assert outcome.identical and outcome.resumed_from_step == 400  # what lesson 09 shows
    assert outcome.rows()[0]["restart resumed from"] == "step 400"
    checkpoints = run / "checkpoints"
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((checkpoints / "latest").read_text())["checkpoint"] == "step_00000600"
    assert main(["verify", str(run)]) == 0


def test_either_rank_killed_at_random_moments_then_restarting_is_exact(runs):
    """Two SIGKILLs at moments drawn by a seed (printed, so a failure can be replayed with
    CKPTLAB_KILL_SEED): a random rank between two saves, then a random rank at a random phase
    of a random save. Each restart resumes from the last commit; the end is bit-identical."""
    import random

    seed = int(os.environ.get("CKPTLAB_KILL_SEED", random.randrange(10**6)))
    print(f"CKPTLAB_KILL_SEED={seed}")
    rng = random.Random(seed)
    between = rng.choice([s for s in range(1, STEPS) if s % 200])
    # the restarted attempt resumes from the last save before `between`: kill it in a later one
    save_step = rng.choice([s for s in (200, 400, STEPS) if s > between // 200 * 200])
    phase = rng.choice([p for p in RANK_FAULT_PHASES if p != "step"])
    faults = f"{rng.randrange(2)}:step@{between},{rng.randrange(2)}:{phase}@{save_step}#1"
    run = runs / f"random-kills-{seed}"
    done = _train(run, "--nproc", "2", "--max-restarts", "2",
                  env=_env(CKPTLAB_RANK_FAULT=faults))
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"seed {seed}, faults {faults}:\n" + out[-4000:]
    _assert_identical(_final(runs / "uninterrupted"), _final(run))
    assert main(["verify", str(run)]) == 0


# --------------------------------------------------------------------------------------------
# Resharding 2 -> 1 -> 2
# --------------------------------------------------------------------------------------------

def test_resharding_two_to_one_and_one_to_two_continues_but_is_not_exact(runs):
    source = _final(runs / "uninterrupted", 400)
    one = runs / "one_rank"
    done = _train(one, "--nproc", "1", "--resume", str(source))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "RESHARDED" in done.stderr and "NOT bit-identical" in done.stderr
    info, states = read_sharded_state(_final(one))
    assert info.manifest["sharded"]["world_size"] == 1
    assert info.manifest["resharded_from"]["world_size"] == 2
    # 2 x 400 transitions merged onto one rank, then 200 more of its own
    assert states["rank_00000"]["replay_buffer"]["size"] == 1000
    differing = [c.name for c in compare_sharded_checkpoints(_final(runs / "uninterrupted"),
                                                             _final(one)) if not c.identical]
    assert "dcp/model" in differing  # a different run from the reshard on: it says so

    two = runs / "two_again"
    done = _train(two, "--nproc", "2", "--resume", str(_final(one)), steps=800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "rank(s) 1 start fresh episodes" in done.stderr
    info, states = read_sharded_state(_final(two, 800))
    assert info.manifest["sharded"]["world_size"] == 2
    assert [states[f"rank_0000{r}"]["replay_buffer"]["size"] for r in (0, 1)] == [700, 700]


def test_reshard_replay_interleaves_in_time_and_keeps_the_newest():
    def shard(values, capacity, position):
        n = len(values)
        return {"capacity": capacity, "obs_dim": 1, "size": n, "position": position,
                "obs": np.array(values, np.float32).reshape(-1, 1),
                "next_obs": np.array(values, np.float32).reshape(-1, 1),
                "actions": np.array(values, np.int64), "rewards": np.zeros(n, np.float32),
                "terminated": np.zeros(n, np.float32)}

    # rank 0 wrote 0, 2, 4 (full, oldest at position 1: 2, 4, then 0 overwritten by 6)
    a, b = shard([6, 2, 4], 3, 1), shard([1, 3, 5], 3, 0)
    merged = reshard_replay([a, b], rank=0, world_size=1, capacity=6)
    assert merged["actions"].tolist() == [2, 1, 4, 3, 6, 5]
    halves = [reshard_replay([merged], rank=r, world_size=2, capacity=2)["actions"].tolist()
              for r in (0, 1)]
    assert halves == [[4, 6], [3, 5]]


# --------------------------------------------------------------------------------------------
# Multi-node rendezvous on loopback
# --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_with_async_saves_equal_one_node_with_two_ranks(runs):
    run = runs / "two_nodes"
    config = runs / "config.json"
    endpoint, job = f"127.0.0.1:{_free_port()}", uuid.uuid4().hex[:8]
    cmd = [sys.executable, "-m", "ckptlab", "train", "--run-dir", str(run), "--config",
           str(config), "--steps", str(STEPS), "--save-every", "200", "--quiet",
           "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", job,
           "--async-save"]  # background saves must write exactly what sync saves write
    nodes = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=runs)
             for _ in range(2)]
    outputs = [node.communicate(timeout=TIMEOUT)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert read_sharded_state(_final(run))[0].manifest["sharded"]["world_size"] == 2
    for step in (200, 400, 600):
        _assert_identical(_final(runs / "uninterrupted", step), _final(run, step))


# --------------------------------------------------------------------------------------------
# Verification, fallback, bad input, tools (no process group)
# --------------------------------------------------------------------------------------------

def _copy(runs: Path, name: str, tmp_path: Path) -> Path:
    copy = tmp_path / name
    shutil.copytree(runs / "uninterrupted", copy)
    return copy


def test_missing_or_mixed_shards_are_named_and_skipped_and_nothing_is_deleted(runs, tmp_path):
    run = _copy(runs, "damaged", tmp_path)
    newest = _final(run)
    shutil.rmtree(newest / "rank_00001")
    with pytest.raises(CheckpointCorruptError, match="rank 1's shard .* is missing"):
        verify_checkpoint(newest)
    with pytest.warns(CheckpointFallbackWarning, match="rank 1's shard"):
        assert latest_valid_checkpoint(run / "checkpoints").step == 400
    shutil.copytree(_final(run, 400) / "rank_00001", newest / "rank_00001")
    with pytest.raises(CheckpointCorruptError, match="from another save .*step 400"):
        verify_checkpoint(newest)
    (_final(run, 400) / "dcp" / "__1_0.bin").unlink()
    with pytest.raises(CheckpointCorruptError, match="__1_0.bin missing"):
        verify_checkpoint(_final(run, 400))
    assert main(["verify", str(run)]) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) \
        == ["step_00000200", "step_00000400", "step_00000600"]


def test_bad_input_gives_clear_errors_and_changes_nothing(runs, tmp_path, capsys):
    run = _copy(runs, "refuse", tmp_path)
    before = sorted(str(p) for p in run.rglob("*"))
    with pytest.raises(IncompatibleCheckpointError, match="sharded checkpoint written by 2"):
        load_checkpoint_state(_final(run))
    assert main(["train", "--run-dir", str(run), "--steps", "1000"]) == 2
    assert "--nproc 2" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run), "--nproc", "3", "--steps", "1000"]) == 2
    assert "cannot split buffer_capacity 2000" in capsys.readouterr().err
    # An older checkpoint of the same run: a rollback, which a distributed run refuses
    # plainly (it used to ask for --rollback, then ignore it).
    older = sorted((run / "checkpoints").glob("step_*"))[0]
    resume = ["train", "--run-dir", str(run), "--nproc", "2", "--resume", str(older)]
    assert main(resume) == 2
    assert "--rollback" in capsys.readouterr().err
    assert main(resume + ["--rollback"]) == 2
    assert "cannot roll back yet" in capsys.readouterr().err
    assert sorted(str(p) for p in run.rglob("*")) == before
    with pytest.raises(Exception, match="divides both"):
        from ckptlab.dqn import DQNConfig

        check_world_size(DQNConfig(batch_size=64, buffer_capacity=3000), 7)
    with pytest.raises(ValueError, match="RANK:PHASE@STEP"):
        parse_rank_faults("1:save:nowhere@3")
    assert parse_rank_faults("1:save:committed@400#2") == {(1, "save:committed", 400, 2)}
    # Each rank runs the launcher's job without the launcher's own options.
    launcher = TrainJob(Path("x"), nproc=2, max_restarts=1, nnodes=2, rdzv_id="job",
                        rdzv_endpoint="h:1", keep_last=3)
    assert TrainJob.from_json(launcher.rank_job().to_json()) == TrainJob(Path("x"), keep_last=3)


def test_inspect_ls_and_export_work_on_sharded_checkpoints(runs, tmp_path, capsys):
    run = runs / "uninterrupted"
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "world size  2 rank(s)" in out and "rank_00001/state.json" in out
    assert main(["inspect", "--json", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["world_size"] == 2
    assert main(["ls", str(runs)]) == 0
    assert "uninterrupted" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    from safetensors.torch import load_file

    from ckptlab.dqn import QNetwork

    weights = load_file(tmp_path / "export" / "weights.safetensors")
    net = QNetwork(4, 2, (16, 16))
    net.load_state_dict(weights)  # consolidated: plain names, full shapes
    _, states = read_sharded_state(_final(run))
    assert all(torch.equal(weights[k], v) for k, v in states["dcp/model"].items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_checkpoint(_final(run)).manifest["sharded"]["dcp_keys"] == \
            ["model", "optim", "target"]


def test_fsdp2_sharded_model_resumes_exactly_after_a_sigkill(runs):
    reference = runs / "fsdp_uninterrupted"
    done = _train(reference, "--nproc", "2", "--shard-model")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    killed = runs / "fsdp_killed"
    done = _train(killed, "--nproc", "2", "--shard-model", "--max-restarts", "1",
                  env=_env(CKPTLAB_RANK_FAULT="0:save:shard-written@400"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "from step_00000200" in done.stdout
    info, _ = read_sharded_state(_final(killed))
    assert info.manifest["parallelism"] == "fsdp2"
    _assert_identical(_final(reference), _final(killed))
