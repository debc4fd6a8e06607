"""Regression tests for bugs found in review (each reproduced before it was fixed)."""

from __future__ import annotations

import json
import math

import pytest

from ckptlab import CheckpointManager, CkptlabError, DQNConfig
from ckptlab.engine import TENSORS, CheckpointWriteError
from ckptlab.cli import main
from ckptlab.engine.lock import RunLockedError
from ckptlab.engine.policies import AnyOf, EveryNSteps, OnImprovement, SaveContext

from conftest import Counter


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
