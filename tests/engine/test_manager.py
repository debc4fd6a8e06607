"""Manager features: writer lock, disk errors, async saves, partial load, export, catalog,
decision log, and checkpointing a plain PyTorch supervised loop (not an RL agent)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ckptlab import CheckpointManager, DQNConfig, QNetwork, Trainer, verify_checkpoint
from ckptlab.engine import BEST, LATEST, TENSORS, CheckpointWriteError, read_decision_log
from ckptlab.engine.catalog import Catalog
from ckptlab.engine.errors import IncompatibleCheckpointError
from ckptlab.engine.lock import RunLockedError
from ckptlab.engine.partial import export_checkpoint, load_components, load_parameters
from ckptlab.engine.policies import BestBy, KeepLastN, KeepTopK
from conftest import FAST, REPO, Counter, tree_digest


def counter_manager(directory, **kwargs):
    manager = CheckpointManager(directory, **kwargs)
    counter = Counter()
    manager.register("counter", counter)
    return manager, counter


# --- one writer per directory ---------------------------------------------------------------

def test_second_writer_in_the_same_process_is_refused(tmp_path):
    first, counter = counter_manager(tmp_path / "ck")
    first.save(1)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        CheckpointManager(tmp_path / "ck")
    first.close()
    CheckpointManager(tmp_path / "ck").close()  # free again after close()


HOLD_LOCK = """
import sys, time
from ckptlab.engine.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_writer_in_another_process_is_named_and_its_stale_lock_released(tmp_path):
    directory = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}") as excinfo:
            CheckpointManager(directory)
        assert "stop the other run" in str(excinfo.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manager = CheckpointManager(directory)  # the killed holder's lock is gone
    manager.close()


# --- disk full / permission denied ------------------------------------------------------------

@pytest.mark.parametrize("error,name", [(errno.ENOSPC, "ENOSPC"), (errno.EACCES, "EACCES")])
def test_write_errors_are_clear_and_leave_everything_intact(tmp_path, monkeypatch, error, name):
    manager, counter = counter_manager(tmp_path / "ck")
    counter.value = 1
    manager.save(1)
    before = tree_digest(tmp_path / "ck")
    import ckptlab.engine.manager as ck

    real = ck.ParallelFlush.write

    def failing(self, path, chunks, **kwargs):
        if path.name == "manifest.json":  # mid-save: the data files are already written
            raise OSError(error, os.strerror(error), str(path))
        return real(self, path, chunks, **kwargs)

    monkeypatch.setattr(ck.ParallelFlush, "write", failing)
    counter.value = 2
    with pytest.raises(CheckpointWriteError, match=name) as excinfo:
        manager.save(2)
    assert "unchanged" in str(excinfo.value)
    assert tree_digest(tmp_path / "ck") == before
    assert [p.name for p in manager.committed()] == ["step_00000001"]
    assert manager.latest_pointer() == "step_00000001"
    monkeypatch.setattr(ck.ParallelFlush, "write", real)
    manager.save(2)  # and it recovers once the disk is fine again
    manager.close()


# --- async saves --------------------------------------------------------------------------------

def test_async_save_writes_the_snapshot_not_later_changes(tmp_path):
    model = torch.nn.Linear(3, 3)
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("model", model)
    expected = model.weight.detach().clone()
    future = manager.save_async(1)
    with torch.no_grad():
        model.weight.add_(1.0)  # training continues while the save is written
    info = future.result()
    manager.close()
    fresh = torch.nn.Linear(3, 3)
    reader = CheckpointManager(tmp_path / "ck", create=False)
    reader.register("model", fresh)
    reader.restore(info.path)
    assert torch.equal(fresh.weight, expected)


def test_async_and_sync_saves_write_identical_files(tmp_path):
    def run(directory, asynchronous):
        trainer = Trainer(DQNConfig(**FAST), directory, async_save=asynchronous)
        trainer.train()
        trainer.close()
        return directory / "checkpoints"

    a, b = run(tmp_path / "sync", False), run(tmp_path / "async", True)
    assert [p.name for p in a.iterdir() if p.name.startswith("step_")] == \
           [p.name for p in b.iterdir() if p.name.startswith("step_")]
    for ckpt in (p for p in a.iterdir() if p.name.startswith("step_")):
        files_a = json.loads((ckpt / "manifest.json").read_text())["files"]
        files_b = json.loads((b / ckpt.name / "manifest.json").read_text())["files"]
        assert files_a == files_b, ckpt.name


def test_async_error_surfaces_on_next_save_and_close(tmp_path, monkeypatch):
    manager, counter = counter_manager(tmp_path / "ck")
    import ckptlab.engine.manager as ck

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "ParallelFlush", broken)
    manager.save_async(1)
    with pytest.raises(CheckpointWriteError, match="No space left"):
        manager.save_async(2)
    manager.save_async(3)
    with pytest.raises(CheckpointWriteError):
        manager.close()
    assert manager.committed() == []


# --- pointers and the decision log ----------------------------------------------------------

def test_best_pointer_and_logged_reasons(tmp_path):
    manager, counter = counter_manager(tmp_path / "ck", retention=[KeepLastN(2)],
                                       best=BestBy("eval_return", "max"))
    for step, value in enumerate([10.0, 90.0, 20.0, 30.0, 40.0], start=1):
        counter.value = step
        manager.save(step, metrics={"eval_return": value})
    assert manager.best_pointer() == "step_00000002"
    assert json.loads((tmp_path / "ck" / BEST).read_text())["step"] == 2
    assert json.loads((tmp_path / "ck" / LATEST).read_text())["step"] == 5
    assert [p.name for p in manager.committed()] == ["step_00000002", "step_00000004",
                                                     "step_00000005"]
    log = read_decision_log(tmp_path / "ck")
    deletions = [e for e in log if e.get("action") == "delete"]
    assert {e["step"] for e in deletions} == {1, 3}
    assert all("not among the 2 newest" in e["reasons"][0] for e in deletions)
    manager.close()


def test_smoothing_remembers_metrics_of_deleted_checkpoints(tmp_path):
    """The metric history lives in the decision log, so it survives restarts and deletions."""
    manager, counter = counter_manager(tmp_path / "ck",
                                       retention=[KeepTopK("eval_return", 1, smooth=3)])
    for step, value in enumerate([400.0, 10.0, 20.0], start=1):
        manager.save(step, metrics={"eval_return": value})
    manager.close()
    reopened, _ = counter_manager(tmp_path / "ck",
                                  retention=[KeepTopK("eval_return", 1, smooth=3)])
    assert [s for s, _ in reopened.history()] == [1, 2, 3]
    assert "step_00000002" not in [p.name for p in reopened.committed()]  # deleted...
    reopened.save(4, metrics={"eval_return": 30.0})
    policy = KeepTopK("eval_return", 1, smooth=3)
    record = next(r for r in reopened.records() if r.step == 4)
    # ...but its value still counts: mean(10, 20, 30) = 20
    assert policy.score(record, reopened.history()) == pytest.approx(20.0)
    reopened.close()


# --- partial load and export ----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    trainer = Trainer(DQNConfig(**FAST), run_dir)
    trainer.train()
    trainer.close()
    return run_dir


def test_load_only_some_components(trained_run):
    trainer = Trainer(DQNConfig(**FAST))
    report = load_components(trained_run, trainer.components(), keys=["agent"])
    assert report.loaded == ["agent"] and ("replay_buffer", "not requested") in report.skipped
    assert len(trainer.buffer) == 0 and trainer.progress.step == 0  # untouched
    assert trainer.agent.updates > 0
    trainer.close()


def test_warm_start_only_the_first_layer_by_regex(trained_run):
    fresh = Trainer(DQNConfig(**FAST))
    before = {k: v.clone() for k, v in fresh.agent.q_net.state_dict().items()}
    report = load_parameters(trained_run, fresh.agent.q_net, source="agent/q_net",
                             pattern=r"layers\.0\..*")
    assert report.loaded == ["layers.0.weight", "layers.0.bias"]
    assert {name for name, _ in report.skipped} == {"layers.2.weight", "layers.2.bias",
                                                    "layers.4.weight", "layers.4.bias"}
    after = fresh.agent.q_net.state_dict()
    assert not torch.equal(after["layers.0.weight"], before["layers.0.weight"])
    assert torch.equal(after["layers.2.weight"], before["layers.2.weight"])
    fresh.close()


def test_shape_mismatch_names_the_tensor_and_loads_nothing(trained_run):
    wide = QNetwork(4, 2, (32, 64))
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(IncompatibleCheckpointError, match="layers.0.weight"):
        load_parameters(trained_run, wide, source="agent/q_net")
    assert all(torch.equal(v, before[k]) for k, v in wide.state_dict().items())


def test_export_weights_load_in_plain_pytorch(trained_run, tmp_path):
    written = export_checkpoint(trained_run, tmp_path / "export", source="agent/q_net", what="both")
    assert sorted(p.name for p in written) == ["metadata.json", "weights.safetensors"]
    model = QNetwork(4, 2, FAST["hidden_sizes"])
    model.load_state_dict(load_file(tmp_path / "export" / "weights.safetensors"))
    trainer = Trainer(DQNConfig(**FAST))
    load_components(trained_run, trainer.components(), keys=["agent"])
    obs = torch.randn(5, 4)
    assert torch.equal(model(obs), trainer.agent.q_net(obs))
    meta = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert meta["step"] == FAST["total_steps"] and meta["config"]["env_id"] == "CartPole-v1"
    with pytest.raises(Exception, match="nothing was overwritten"):
        export_checkpoint(trained_run, tmp_path / "export", source="agent/q_net", what="metadata")
    trainer.close()


# --- catalog ------------------------------------------------------------------------------------

def test_catalog_finds_the_best_checkpoint_across_runs(tmp_path):
    for run, values in {"a": [1.0, 50.0, 20.0], "b/nested": [5.0, 70.0, 60.0]}.items():
        manager, counter = counter_manager(tmp_path / run / "checkpoints")
        for step, value in enumerate(values, start=1):
            manager.save(step * 10, metrics={"eval_return": value})
        manager.close()
    (tmp_path / "b/nested/checkpoints/step_00000030" / TENSORS).write_bytes(b"bad")
    catalog = Catalog(tmp_path)
    assert catalog.rebuild() == 6
    top = catalog.query(sort="eval_return", top=2)
    assert [(r.run, r.step, r.metrics["eval_return"]) for r in top] == [
        ("b/nested", 20, 70.0), ("b/nested", 30, 60.0)]
    assert top[1].status.startswith("invalid")
    assert [r.step for r in catalog.query(run="a")] == [10, 20, 30]
    assert catalog.query(sort="eval_return", ascending=True, top=1)[0].metrics == {
        "eval_return": 1.0}


# --- any state_dict() object: a plain supervised PyTorch loop ----------------------------------

class ShuffledBatches:
    """A data loader with its own RNG and position: the kind of state people forget."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.rng = np.random.default_rng(seed)
        self.order, self.position = self.rng.permutation(n), 0

    def next_indices(self) -> np.ndarray:
        if self.position + self.batch > self.n:
            self.order, self.position = self.rng.permutation(self.n), 0
        out = self.order[self.position:self.position + self.batch]
        self.position += self.batch
        return out

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order,
                "position": self.position}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.position = np.array(state["order"]), int(state["position"])


def supervised(directory: Path, steps: int, stop_at: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    data = ShuffledBatches(256, 32, seed=1)
    manager = CheckpointManager(directory, retention=[KeepLastN(2)])
    for name, obj in {"model": model, "optimizer": optimizer, "scheduler": scheduler,
                      "data": data}.items():
        manager.register(name, obj)
    info = manager.restore_latest()
    start = info.step if info else 0
    for step in range(start + 1, steps + 1):
        idx = torch.from_numpy(data.next_indices())
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 7 == 0 or step == steps:
            manager.save(step, metrics={"loss": loss.item()})
        if step == stop_at:
            break  # "crash": everything after the last save is lost
    manager.close()
    return model


def test_plain_pytorch_training_loop_resumes_exactly(tmp_path):
    reference = supervised(tmp_path / "ref", 60)
    supervised(tmp_path / "resumed", 60, stop_at=33)  # last save at 28
    resumed = supervised(tmp_path / "resumed", 60)
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    verify_checkpoint(tmp_path / "resumed" / "step_00000060")
