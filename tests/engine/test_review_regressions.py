"""Regression tests for bugs found in review (each reproduced before it was fixed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckptlab.engine.manager as manager_module
import ckptlab.engine.writer as writer_module
from ckptlab import CheckpointManager, CkptlabError, DQNConfig, Trainer
from ckptlab.cli import main
from ckptlab.engine import (
    TENSORS,
    BestBy,
    CheckpointWriteError,
    IncompatibleCheckpointError,
    RollbackRequiredError,
    UnsupportedValueError,
    load_checkpoint_state,
    read_pointer_record,
    verify_checkpoint,
)
from ckptlab.engine.lock import RunLockedError
from ckptlab.engine.policies import AnyOf, EveryNSteps, OnImprovement, SaveContext
from conftest import FAST, Counter


def test_retention_never_deletes_the_checkpoint_just_saved_after_a_fallback(tmp_path):
    setup = CheckpointManager(tmp_path / "ck")
    setup.register("counter", Counter())
    setup.save(1000)
    setup.save(2000)
    setup.close()
    manager = CheckpointManager(tmp_path / "ck", keep_last=1)
    manager.register("counter", Counter())
    data = bytearray((tmp_path / "ck/step_00002000" / TENSORS).read_bytes())
    data[-1] ^= 1
    (tmp_path / "ck/step_00002000" / TENSORS).write_bytes(bytes(data))
    with pytest.warns(UserWarning):
        assert manager.restore().step == 1000  # fell back past the corrupt newest
    manager.save(1500)
    assert (tmp_path / "ck/step_00001500").is_dir()
    assert manager.latest_pointer() == "step_00001500"
    with pytest.warns(UserWarning):
        assert manager.latest_valid().name == "step_00001500"
    manager.close()


def test_non_finite_metrics_are_saved_as_null(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("counter", Counter())
    info = manager.save(1, metrics={"loss": math.nan, "eval_return": math.inf, "ok": 1.0})
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["metrics"] == {"loss": None, "eval_return": None, "ok": 1.0}
    manager.close()


def test_non_finite_config_values_are_refused(tmp_path, capsys):
    with pytest.raises(CkptlabError, match="max_grad_norm must be a finite number"):
        DQNConfig(max_grad_norm=math.inf)
    cfg = tmp_path / "c.json"
    cfg.write_text('{"learning_rate": 1e999}')
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finite" in err[0]
    assert not (tmp_path / "r").exists()


def test_unreadable_file_falls_back_instead_of_crashing(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.register("counter", Counter())
    manager.save(1)
    manager.save(2)
    manager.close()
    bad = tmp_path / "run/checkpoints/step_00000002" / TENSORS
    bad.unlink()
    bad.mkdir()  # a directory where a file should be
    assert main(["verify", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  step_00000002" in out and "cannot be read" in out
    reader = CheckpointManager(tmp_path / "run/checkpoints", create=False)
    with pytest.warns(UserWarning):
        assert reader.latest_valid().step == 1


def test_second_writer_on_a_fresh_directory_fails_at_once(tmp_path):
    first = CheckpointManager(tmp_path / "new")
    with pytest.raises(RunLockedError):
        CheckpointManager(tmp_path / "new")
    first.close()


def test_on_improvement_best_survives_a_resume():
    policy = AnyOf(OnImprovement("eval_return"), EveryNSteps(1000))
    fresh = dict(new_metrics=True)
    assert policy.reasons(SaveContext(step=1, metrics={"eval_return": 200.0}, **fresh))
    state = json.loads(json.dumps(policy.state_dict()))  # as stored in the manifest
    resumed = AnyOf(OnImprovement("eval_return"), EveryNSteps(1000))
    resumed.load_state_dict(state)
    assert not resumed.reasons(SaveContext(step=2, metrics={"eval_return": 150.0}, **fresh))


def test_interrupted_wait_keeps_the_async_error_for_close(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("counter", Counter())

    class Pending:
        calls = 0

        def result(self):
            self.calls += 1
            if self.calls == 1:
                raise KeyboardInterrupt  # Ctrl-C while waiting
            raise OSError(28, "No space left on device")

    manager._pending = Pending()
    with pytest.raises(KeyboardInterrupt):
        manager.wait()
    with pytest.raises(CheckpointWriteError, match="No space left"):
        manager.close()


def test_export_and_ls_failures_write_nothing(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    manager.register("counter", Counter())
    manager.save(1)
    manager.close()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["export", str(tmp_path / "run"), "--out", str(a_file)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                 "--tensors", "counter/nope"]) == 2
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    assert main(["ls", str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []


# --- session 6 review --------------------------------------------------------------------

def manager_over_a_damaged_step_2000(directory):
    """A manager of ``directory``, which holds a valid step 1000 and a damaged step 2000."""
    setup = CheckpointManager(directory)
    setup.register("counter", Counter())
    setup.save(1000)
    setup.save(2000)
    setup.close()
    (directory / "step_00002000" / TENSORS).write_bytes(b"garbage")
    manager = CheckpointManager(directory)
    manager.register("counter", Counter())
    return manager


def test_a_replaced_damaged_checkpoint_blocks_a_branch_again(tmp_path):
    """A step found damaged (and skipped) by the branch check, then saved again validly by
    this manager, must count as a newer valid checkpoint from then on."""
    manager = manager_over_a_damaged_step_2000(tmp_path / "ck")
    manager.save(1100)  # the damaged 2000 does not block it (the fallback case)
    manager.save(2000)  # a valid step 2000 replaces the damaged one
    with pytest.raises(RollbackRequiredError, match="step_00002000"):
        manager.save(1500)
    assert not (tmp_path / "ck/step_00001500").exists()
    manager.close()


def test_best_never_names_a_checkpoint_retention_deletes(tmp_path):
    """An old `best` (another metric) whose checkpoint retention drops is removed with it."""
    first = CheckpointManager(tmp_path / "ck", best=BestBy("val_acc"))
    first.register("counter", Counter())
    first.save(1, metrics={"val_acc": 0.9})
    first.save(2, metrics={"val_acc": 0.1})
    first.close()
    assert read_pointer_record(tmp_path / "ck", "best")["checkpoint"] == "step_00000001"
    manager = CheckpointManager(tmp_path / "ck", keep_last=1, best=BestBy("loss", "min"))
    manager.register("counter", Counter())
    manager.save(3)  # no "loss" yet: nothing to pick, and step 1 goes
    assert not (tmp_path / "ck/step_00000001").exists()
    record = read_pointer_record(tmp_path / "ck", "best")
    assert record is None or (tmp_path / "ck" / record["checkpoint"]).is_dir(), record
    manager.close()


# --- session 7 ------------------------------------------------------------------------------

def test_a_failure_after_replacing_a_step_says_the_new_copy_is_in_place(tmp_path, monkeypatch):
    """Re-saving an existing step swaps the directories; if syncing the parent fails after
    the swap, the error must not say the earlier checkpoints are unchanged."""
    manager = manager_over_a_damaged_step_2000(tmp_path / "ck")  # re-saving 2000 replaces it
    parent = (tmp_path / "ck").resolve()
    real_fsync_dir = writer_module.fsync_dir

    def failing_fsync_dir(path):
        if Path(path).resolve() == parent:
            raise OSError(5, "Input/output error")
        real_fsync_dir(path)

    monkeypatch.setattr(writer_module, "fsync_dir", failing_fsync_dir)
    with pytest.raises(CheckpointWriteError) as error:
        manager.save(2000)
    message = str(error.value)
    assert "unchanged" not in message
    assert "new copy of this step is already in its place" in message, message
    assert "Input/output error" in message
    monkeypatch.undo()
    verify_checkpoint(tmp_path / "ck/step_00002000")  # the new copy, whole
    manager.close()
    reopened = CheckpointManager(tmp_path / "ck")  # the old copy aside is tidied away
    assert not [p.name for p in (tmp_path / "ck").iterdir()
                if p.name.startswith((".tmp", ".replaced", ".trash"))]
    assert reopened.latest_pointer() == "step_00002000"
    reopened.close()


_EXIT_WITHOUT_CLOSE = """
import sys, time, torch
import ckptlab.engine.writer as writer
from ckptlab import CheckpointManager

real = writer._start_writeback
def slow(fd, offset, length):  # keeps the save writing while the interpreter exits
    time.sleep(0.05)
    real(fd, offset, length)
writer._start_writeback = slow

class Holder:
    def __init__(self): self.state = {"w": torch.ones(6_000_000)}
    def state_dict(self): return self.state
    def load_state_dict(self, state): self.state = state

manager = CheckpointManager(sys.argv[1])
manager.register("holder", Holder())
manager.save(1)
manager.save_async(2)
print("exiting without close()", flush=True)
"""


def test_an_async_save_in_flight_at_exit_is_finished_not_lost(tmp_path):
    """A script that ends right after save_async() (no close()) still gets its checkpoint."""
    script = tmp_path / "exit_without_close.py"
    script.write_text(_EXIT_WITHOUT_CLOSE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ck")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exiting without close()" in done.stdout
    assert "failed at exit" not in done.stderr, done.stderr
    info = verify_checkpoint(tmp_path / "ck/step_00000002")
    assert info.step == 2
    assert read_pointer_record(tmp_path / "ck", "latest")["checkpoint"] == "step_00000002"


class _Nested:
    """A component whose state nests ``levels`` lists deep."""

    def __init__(self, levels: int) -> None:
        value: object = 1
        for _ in range(levels):
            value = [value]
        self.state = {"x": value}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state) -> None:
        self.state = state


def test_the_writer_refuses_a_state_the_reader_would_refuse(tmp_path):
    """A tree nested past the reader's bound is refused at save time (nothing written), so
    a checkpoint that verifies can always be loaded; just inside the bound round-trips."""
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("nested", _Nested(250))
    with pytest.raises(UnsupportedValueError, match="nested more than 200 levels"):
        manager.save(1)
    assert not manager.committed()
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp")]
    deepest = _Nested(198)
    manager.components["nested"] = deepest
    info = manager.save(2)
    _, states = load_checkpoint_state(info.path)
    assert states["nested"] == deepest.state
    manager.close()


def test_a_manager_reused_after_close_locks_before_its_branch_check(tmp_path, monkeypatch):
    """Between the branch check and the save, no other writer may commit a newer step."""
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("counter", Counter())
    manager.save(1000)
    manager.close()  # releases the lock; the manager may still save (it locks again)
    real = manager_module.committed_steps
    other_writer: list[str] = []

    def racing(directory):
        steps = real(directory)
        if not other_writer:  # another process commits step 3000 right after the listing
            try:
                other = CheckpointManager(tmp_path / "ck")
            except RunLockedError:
                other_writer.append("locked out")
                return steps
            other.register("counter", Counter())
            other.save(3000)
            other.close()
            other_writer.append("committed step 3000")
        return steps

    monkeypatch.setattr(manager_module, "committed_steps", racing)
    manager.save(1500)
    assert other_writer == ["locked out"]
    assert [p.name for p in manager.committed()] == ["step_00001000", "step_00001500"]
    manager.close()


# --- Trainer.restore (session 6 review) --------------------------------------------------

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run trained to step 800 (its checkpoint is what the tests below resume)."""
    run = tmp_path_factory.mktemp("short") / "run"
    trainer = Trainer(DQNConfig(**FAST), run)
    trainer.train(until_step=800)
    trainer.close()
    return run / "checkpoints" / "step_00000800"


def test_a_deliberate_branch_uses_the_new_learning_rate_and_exploration(short_run, tmp_path):
    """allow_config_change used to record the new values while the restored optimizer and
    epsilon schedule kept the checkpoint's."""
    new = DQNConfig(**{**FAST, "learning_rate": 1e-4, "epsilon_end": 0.5,
                       "exploration_steps": 3000})
    trainer = Trainer(new, tmp_path / "branch")
    with pytest.warns(UserWarning, match="config changed on resume"):
        trainer.restore(short_run, allow_config_change=True)
    assert {g["lr"] for g in trainer.agent.optimizer.param_groups} == {1e-4}
    assert (trainer.exploration.end, trainer.exploration.duration) == (0.5, 3000)
    assert trainer.exploration.position == 800  # where the run was, unchanged
    trainer.close()
    same = Trainer(DQNConfig(**FAST), tmp_path / "same")  # no change: the saved values
    same.restore(short_run)
    assert {g["lr"] for g in same.agent.optimizer.param_groups} == {FAST["learning_rate"]}
    same.close()


def test_a_seed_change_on_resume_says_what_it_changes(short_run, tmp_path):
    """The restored generators win, so a new seed changes only the evaluation episodes: the
    warning says so, and training goes on exactly as a plain resume does."""
    weights = {}
    for name, seed in (("plain", FAST.get("seed", 0)), ("reseeded", FAST.get("seed", 0) + 7)):
        trainer = Trainer(DQNConfig(**{**FAST, "seed": seed}), tmp_path / name)
        if name == "reseeded":
            with pytest.warns(UserWarning, match="only what is seeded afresh"):
                trainer.restore(short_run, allow_config_change=True)
        else:
            trainer.restore(short_run)
        trainer.train(until_step=1000)
        weights[name] = trainer.agent.q_net.state_dict()
        trainer.close()
    assert all(torch.equal(v, weights["reseeded"][k]) for k, v in weights["plain"].items())


@pytest.mark.parametrize("change", [{"env_id": "CartPole-v0"}, {"hidden_sizes": [32, 32]},
                                    {"buffer_capacity": 999}])
def test_a_change_no_state_can_fit_is_refused_before_anything_loads(short_run, tmp_path,
                                                                    change):
    trainer = Trainer(DQNConfig(**{**FAST, **change}), tmp_path / "other")
    weights = {k: v.clone() for k, v in trainer.agent.q_net.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError, match="start a new run"):
        trainer.restore(short_run, allow_config_change=True)
    assert trainer.progress.step == 0 and len(trainer.buffer) == 0
    assert all(torch.equal(v, weights[k]) for k, v in trainer.agent.q_net.state_dict().items())
    trainer.close()


def test_a_restore_that_stops_halfway_leaves_a_trainer_that_cannot_train(short_run, tmp_path,
                                                                         monkeypatch):
    trainer = Trainer(DQNConfig(**FAST), tmp_path / "half")

    def refuse(state):
        raise ValueError("this metrics state is not for me")

    monkeypatch.setattr(trainer.metrics, "load_state_dict", refuse)
    with pytest.raises(IncompatibleCheckpointError, match="refused the state"):
        trainer.restore(short_run)
    for attempt in (trainer.train, trainer.save):
        with pytest.raises(CkptlabError, match="cannot train or save"):
            attempt()
    assert not (tmp_path / "half" / "checkpoints").exists() or not list(
        (tmp_path / "half" / "checkpoints").glob("step_*"))
    trainer.close()


def test_restoring_another_runs_checkpoint_into_a_used_run_dir_is_refused(short_run, tmp_path):
    used = Trainer(DQNConfig(**FAST), tmp_path / "used")
    used.train(until_step=800)
    used.close()
    again = Trainer(DQNConfig(**FAST), tmp_path / "used")
    with pytest.raises(CkptlabError, match="would mix two runs"):
        again.restore(short_run)
    assert [p.name for p in (tmp_path / "used/checkpoints").glob("step_*")] == ["step_00000800"]
    again.close()


def test_a_foreign_checkpoint_is_named_as_such(tmp_path):
    manager = CheckpointManager(tmp_path / "foreign" / "checkpoints")
    manager.register("counter", Counter())
    manager.save(5)
    manager.close()
    trainer = Trainer(DQNConfig(**FAST), tmp_path / "into")
    with pytest.raises(CkptlabError, match="has no component.*agent.*contains counter"):
        trainer.restore(tmp_path / "foreign")
    trainer.close()
