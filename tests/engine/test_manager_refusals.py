"""What CheckpointManager refuses, and how: a refused save's advice must be a call that works,
a rollback to a damaged checkpoint moves nothing, and a directory where a pointer belongs is
moved aside (never deleted) instead of stopping every writer."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from ckptlab import CheckpointManager
from ckptlab.engine import (
    BEST,
    LATEST,
    STATE,
    CheckpointCorruptError,
    CkptlabError,
    RollbackRequiredError,
    latest_valid_checkpoint,
    load_latest_valid,
    read_decision_log,
    read_pointer_record,
)
from ckptlab.engine.policies import BestBy
from ckptlab.engine.writer import PointerSetAsideWarning
from conftest import Counter, tree_digest


def counter_manager(directory: Path, **kwargs) -> tuple[CheckpointManager, Counter]:
    manager = CheckpointManager(directory, **kwargs)
    counter = Counter()
    manager.register("counter", counter)
    return manager, counter


def saved_run(directory: Path, steps: tuple[int, ...], **kwargs) -> None:
    """Checkpoints at ``steps`` (the counter holds the step, the score its negative)."""
    manager, counter = counter_manager(directory, **kwargs)
    for step in steps:
        counter.value = step
        manager.save(step, metrics={"score": -abs(step - 20)})
    manager.close()


def damage(checkpoint: Path) -> None:
    """Flip one byte of the checkpoint's state file: same size, wrong SHA-256."""
    path = checkpoint / STATE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def disk_state(root: Path) -> tuple[list[str], dict[str, str]]:
    """Every entry under ``root`` (directories too) and the SHA-256 of every file: the
    checkpoints, ``latest``, ``best`` and ``decisions.jsonl``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")), tree_digest(root)


def the_advised_rollback(message: str) -> int:
    """The one ``rollback(N)`` a refusal's message tells the caller to make."""
    assert "\n" not in message
    calls = re.findall(r"rollback\((\d+)\)", message)
    assert len(calls) == 1, message
    return int(calls[0])


# --- 1. a refused save names a rollback that works ----------------------------------------------

def test_refused_save_names_the_restored_checkpoint_and_that_call_works(tmp_path):
    directory = tmp_path / "ck"
    saved_run(directory, (10, 20, 30))
    manager, counter = counter_manager(directory)
    manager.restore(directory / "step_00000010")
    counter.value = -25
    with pytest.raises(RollbackRequiredError) as refused:
        manager.save(25)  # no checkpoint 25 exists: rollback(25) would fail
    message = str(refused.value)
    step = the_advised_rollback(message)
    assert step == 10  # the run continued from 10: 20 and 30 belong to the abandoned branch
    assert "step_00000020, step_00000030 aside" in message

    moved = manager.rollback(step)
    assert [p.name for p in moved] == ["step_00000020", "step_00000030"]
    manager.save(25)
    assert [p.name for p in manager.committed()] == ["step_00000010", "step_00000025"]
    assert manager.restore_latest().step == 25 and counter.value == -25
    manager.close()


def test_refused_save_without_a_restore_names_the_newest_valid_checkpoint_below(tmp_path):
    directory = tmp_path / "ck"
    saved_run(directory, (10, 20, 30, 40))
    damage(directory / "step_00000020")  # the newest at or below 25, but unusable
    manager, counter = counter_manager(directory)
    with pytest.raises(RollbackRequiredError) as refused:
        manager.save(25)
    step = the_advised_rollback(str(refused.value))
    assert step == 10
    assert "step_00000020, step_00000030, step_00000040 aside" in str(refused.value)
    manager.rollback(step)
    manager.save(25)
    assert manager.latest_pointer() == "step_00000025"
    manager.close()


def test_refused_save_with_nothing_to_roll_back_to_advises_no_rollback(tmp_path):
    directory = tmp_path / "ck"
    saved_run(directory, (10, 20))
    manager, _ = counter_manager(directory)
    before = disk_state(directory)
    with pytest.raises(RollbackRequiredError) as refused:
        manager.save(5)
    message = str(refused.value)
    assert "rollback(" not in message and "another directory" in message, message
    assert disk_state(directory) == before
    manager.close()


# --- 2. a rollback to a damaged checkpoint is refused before anything moves -------------------

def test_rollback_to_a_damaged_checkpoint_changes_nothing_and_names_a_valid_step(tmp_path):
    directory = tmp_path / "ck"
    saved_run(directory, (100, 200, 300, 400, 500, 600))
    damage(directory / "step_00000300")
    manager, counter = counter_manager(directory)
    before = disk_state(directory)
    events_before = read_decision_log(directory)

    with pytest.raises(CheckpointCorruptError) as refused:
        manager.rollback(300)
    message = str(refused.value)
    assert isinstance(refused.value, CkptlabError)
    assert "step_00000300" in message and "damaged" in message and "nothing was moved" in message
    assert disk_state(directory) == before  # listing, pointers and decision log
    assert read_decision_log(directory) == events_before
    assert manager.latest_pointer() == "step_00000600"

    step = the_advised_rollback(message)
    assert step == 200
    moved = manager.rollback(step)
    assert [p.name for p in moved] == ["step_00000300", "step_00000400", "step_00000500",
                                       "step_00000600"]
    assert manager.restore_latest().step == 200 and counter.value == 200
    manager.close()


def test_rollback_to_a_damaged_oldest_checkpoint_offers_no_rollback(tmp_path):
    directory = tmp_path / "ck"
    saved_run(directory, (100, 200))
    damage(directory / "step_00000100")
    manager, _ = counter_manager(directory)
    before = disk_state(directory)
    with pytest.raises(CheckpointCorruptError) as refused:
        manager.rollback(100)
    assert "rollback(" not in str(refused.value) and "good copy" in str(refused.value)
    assert disk_state(directory) == before
    manager.close()


# --- 3. a directory where a pointer belongs ---------------------------------------------------

@pytest.mark.parametrize("pointer,best", [(LATEST, None), (BEST, BestBy("score", "max")),
                                          (BEST, None)])
def test_a_directory_named_like_a_pointer_is_moved_aside_not_deleted(tmp_path, pointer, best):
    directory = tmp_path / "ck"
    saved_run(directory, (10, 20, 30), best=BestBy("score", "max"))
    (directory / pointer).unlink()
    (directory / pointer).mkdir()
    (directory / pointer / "notes.txt").write_text("the operator's notes")
    assert latest_valid_checkpoint(directory).step == 30  # readers never needed it

    with pytest.warns(PointerSetAsideWarning, match=f"{pointer}.moved-aside-") as caught:
        manager, counter = counter_manager(directory, best=best)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    [aside] = directory.glob(f"{pointer}.moved-aside-*")
    assert (aside / "notes.txt").read_text() == "the operator's notes"
    assert read_pointer_record(directory, LATEST)["checkpoint"] == "step_00000030"
    if best is not None:
        assert read_pointer_record(directory, BEST)["checkpoint"] == "step_00000020"
    elif pointer == BEST:
        assert not (directory / BEST).exists()  # no rule here: none written, nothing blocks

    counter.value = 40
    manager.save(40, metrics={"score": 0})
    manager.close()
    info, states = load_latest_valid(directory)
    assert info.step == 40 and states["counter"] == {"value": 40}
    assert read_pointer_record(directory, LATEST)["checkpoint"] == "step_00000040"
    if best is not None:
        assert read_pointer_record(directory, BEST)["checkpoint"] == "step_00000020"
    assert (aside / "notes.txt").read_text() == "the operator's notes"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # moved once: the next writer has nothing to warn of
        counter_manager(directory, best=best)[0].close()


def test_a_directory_made_where_latest_was_during_a_run_does_not_fail_the_next_save(tmp_path):
    directory = tmp_path / "ck"
    manager, counter = counter_manager(directory)
    manager.save(1)
    (directory / LATEST).unlink()
    (directory / LATEST).mkdir()
    counter.value = 2
    with pytest.warns(PointerSetAsideWarning, match="was a directory"):
        manager.save(2)
    assert read_pointer_record(directory, LATEST)["checkpoint"] == "step_00000002"
    assert len(list(directory.glob(f"{LATEST}.moved-aside-*"))) == 1
    manager.close()
