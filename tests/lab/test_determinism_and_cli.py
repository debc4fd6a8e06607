"""What lesson 4 says about bit-exactness and lesson 10 about the command line and rollbacks,
checked (issue 24): the GPU settings the lessons switch on, the table of what must match, the
in-process CLI runs, and a rollback that keeps what it moved aside."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from ckptlab import DQNConfig, IncompatibleCheckpointError, RollbackRequiredError, Trainer
from ckptlab.cli import main as ckptlab_main
from ckptlab.lab import determinism, practice
from conftest import FAST


def test_on_a_gpu_the_lessons_switch_on_deterministic_kernels(monkeypatch):
    import torch

    calls = []
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert determinism.make_gpu_deterministic()
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == determinism.CUBLAS_WORKSPACE == ":4096:8"
    assert calls == [(True, True)] and torch.backends.cudnn.benchmark is False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")   # a user's own choice is kept
    determinism.make_gpu_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_on_a_cpu_nothing_changes(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda *a, **k: pytest.fail("changed a CPU process"))
    assert determinism.make_gpu_deterministic() is False


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config = DQNConfig(**{**FAST, "total_steps": 1_200, "save_every_steps": 400})
    with Trainer(config, root / "original") as trainer:
        trainer.train()
    return root, config


def test_what_must_match_for_a_bit_exact_resume_is_read_from_the_manifest(runs):
    root, _ = runs
    rows = {r["what"]: r for r in determinism.reproducibility_rows(
        root / "original" / "checkpoints" / "step_00001200")}
    assert rows["torch version"]["same?"] == "yes" and rows["numpy version"]["same?"] == "yes"
    assert rows["CPU threads (num_threads)"]["in the checkpoint"] == 1
    assert rows["CPU threads (num_threads)"]["same?"] == "yes"
    assert rows["deterministic algorithms (GPU)"]["here"] in ("on", "not needed on a CPU")


def test_the_command_line_runs_in_process_with_paths_and_times_hidden(runs, tmp_path):
    root, _ = runs
    inspect = practice.run_cli(ckptlab_main, ["inspect", root / "original"], hide=root, max_lines=6)
    assert inspect.exit_status == 0 and str(root) not in str(inspect)
    assert "<time>" in inspect.output and inspect.output.endswith("more lines)")
    assert practice.run_cli(ckptlab_main, ["verify", root / "original"], hide=root).exit_status == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(root / "original", damaged)
    state = damaged / "checkpoints" / "step_00001200" / "state.json"
    state.write_bytes(state.read_bytes().replace(b"0", b"1", 1))
    failed = practice.run_cli(ckptlab_main, ["verify", damaged], hide=tmp_path)
    assert failed.exit_status == 1 and "step_00001200" in failed.output
    pruned = practice.run_cli(ckptlab_main, ["prune", root / "original", "--keep-last", "1",
                                             "--dry-run"], hide=root)
    assert pruned.exit_status == 0 and "would delete" in pruned.output
    assert "$ ckptlab prune <work>/original" in str(pruned)


def test_a_rollback_moves_newer_checkpoints_aside_and_a_branch_records_its_change(runs,
                                                                                  tmp_path):
    root, config = runs
    run = tmp_path / "rollback"
    shutil.copytree(root / "original", run)
    checkpoints = run / "checkpoints"
    with Trainer(config, run) as trainer:
        with pytest.raises(RollbackRequiredError, match="--rollback"):
            trainer.restore(checkpoints / "step_00000800")
        trainer.restore(checkpoints / "step_00000800", allow_rollback=True)
    assert practice.abandoned_checkpoints(checkpoints)[0].endswith("step_00001200")
    (event,) = practice.rollback_events(checkpoints)
    assert event["rolled back to"] == "step_00000800" and event["moved"] == "step_00001200"
    lower = dataclasses.replace(config, learning_rate=config.learning_rate / 4,
                                total_steps=1_600)
    with Trainer(lower) as refused, pytest.raises(IncompatibleCheckpointError,
                                                  match="learning_rate"):
        refused.restore(root / "original" / "checkpoints" / "step_00000800")
    with Trainer(lower, tmp_path / "lower-lr") as branch:
        branch.restore(root / "original" / "checkpoints" / "step_00000800",
                       allow_config_change=True)
        branch.train()
    rows = practice.lineage_rows(tmp_path / "lower-lr" / "checkpoints" / "step_00001600")
    assert rows[1]["checkpoint"] == "original/step_00000800"
    assert "learning_rate" in rows[1]["config changes"]


def test_every_trainer_on_a_gpu_switches_on_deterministic_kernels(monkeypatch):
    """Not only the notebook's process: lesson 4's `ckptlab train` subprocesses, lesson 9's ranks
    and lesson 10's store job each build a Trainer, and on a GPU each must run deterministic
    kernels before its first matmul, or their exact-resume asserts fail in the last bits."""
    import torch

    from ckptlab.dqn import train as train_module

    class Switched(Exception):
        pass

    def switched() -> bool:
        raise Switched  # stop here: this machine has no GPU to build the agent on

    monkeypatch.setattr(train_module, "make_gpu_deterministic", switched)
    monkeypatch.setattr(train_module, "resolve_device", lambda name: torch.device("cuda"))
    with pytest.raises(Switched):
        Trainer(DQNConfig(**FAST))
    monkeypatch.setattr(train_module, "resolve_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(train_module, "make_gpu_deterministic",
                        lambda: pytest.fail("a CPU trainer changed torch's global settings"))
    Trainer(DQNConfig(**FAST)).close()
