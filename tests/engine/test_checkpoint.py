"""CheckpointManager: atomic saves, retention, verification, fallback and refusal of pickles."""

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from ckptlab import (
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointManager,
    CheckpointNotFoundError,
    ForeignFileError,
    UnsupportedFormatError,
    latest_valid_checkpoint,
    load_checkpoint_state,
    verify_checkpoint,
)
from ckptlab.engine import (
    DECISIONS,
    FORMAT_VERSION,
    LATEST,
    MANIFEST,
    STATE,
    TENSORS,
    resolve_location,
)
from conftest import Counter


def make_manager(directory: Path, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    counter = Counter()
    manager = CheckpointManager(directory, **kwargs)
    manager.register("model", model)
    manager.register("optimizer", optimizer)
    manager.register("counter", counter)
    return manager, model, optimizer, counter


def train_step(model, optimizer, counter):
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    counter.value += 1


def save_n(manager, model, optimizer, counter, n):
    infos = []
    for _ in range(n):
        train_step(model, optimizer, counter)
        infos.append(manager.save(counter.value, metrics={"loss": 0.5}))
    return infos


def test_plain_pytorch_objects_round_trip(tmp_path):
    manager, model, optimizer, counter = make_manager(tmp_path / "ck")
    save_n(manager, model, optimizer, counter, 3)
    fresh, model2, optimizer2, counter2 = make_manager(tmp_path / "ck", create=False)
    info = fresh.restore()
    assert info.step == 3 and counter2.value == 3
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    # The restored optimizer continues exactly like the original.
    torch.manual_seed(1)
    train_step(model, optimizer, counter)
    torch.manual_seed(1)
    train_step(model2, optimizer2, counter2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_layout_manifest_and_pointer(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    info = save_n(manager, *objs, 2)[-1]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        ".writer.lock", ".writer.lock.json", DECISIONS, LATEST, "step_00000001",
        "step_00000002"]
    assert sorted(p.name for p in info.path.iterdir()) == [MANIFEST, STATE, TENSORS]
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert manifest["format"] == "ckptlab-checkpoint"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["step"] == 2 and manifest["metrics"] == {"loss": 0.5}
    assert set(manifest["components"]) == {"model", "optimizer", "counter"}
    assert {"torch", "numpy", "python", "safetensors"} <= set(manifest["versions"])
    for name, entry in manifest["files"].items():
        assert (info.path / name).stat().st_size == entry["bytes"]
        assert len(entry["sha256"]) == 64
    assert json.loads((tmp_path / "ck" / LATEST).read_text()) == {
        "checkpoint": "step_00000002", "step": 2}
    # Nothing pickled anywhere: the tensor file is safetensors, the rest JSON.
    for path in info.path.iterdir():
        assert not path.read_bytes().startswith(b"\x80")


def test_keep_last_deletes_oldest_only_after_commit(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck", keep_last=2)
    save_n(manager, *objs, 5)
    assert [p.name for p in manager.committed()] == ["step_00000004", "step_00000005"]


def test_leftover_temporaries_are_ignored_then_cleaned(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 1)
    partial = tmp_path / "ck" / ".tmp-step_00000002-deadbeef"
    partial.mkdir()
    (partial / TENSORS).write_bytes(b"half a file")
    (tmp_path / "ck" / ".tmp-latest-cafe").write_text("{")
    reader = CheckpointManager(tmp_path / "ck", create=False)
    assert [p.name for p in reader.committed()] == ["step_00000001"]
    assert partial.exists(), "a read-only manager must not delete anything"
    manager.close()
    CheckpointManager(tmp_path / "ck").close()  # a writer cleans up
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()
                  if not p.name.startswith(".writer")) == [DECISIONS, LATEST, "step_00000001"]


def test_interrupted_same_step_replacement_is_undone(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 1)
    manager.close()
    os.replace(tmp_path / "ck" / "step_00000001", tmp_path / "ck" / ".replaced-step_00000001")
    CheckpointManager(tmp_path / "ck").close()
    verify_checkpoint(tmp_path / "ck" / "step_00000001")


def test_saving_an_existing_step_replaces_it(tmp_path):
    manager, model, optimizer, counter = make_manager(tmp_path / "ck")
    save_n(manager, model, optimizer, counter, 1)
    counter.value = 1
    with torch.no_grad():
        model.weight.fill_(3.0)
    manager.save(1)
    fresh, model2, _, _ = make_manager(tmp_path / "ck", create=False)
    fresh.restore()
    assert torch.all(model2.weight == 3.0)


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "bitflip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "delete":
        path.unlink()
    elif how == "garble":
        path.write_bytes(b"{not json")


@pytest.mark.parametrize("filename,how", [
    (TENSORS, "bitflip"), (TENSORS, "truncate"), (TENSORS, "delete"), (STATE, "bitflip"),
    (STATE, "truncate"), (MANIFEST, "garble"), (MANIFEST, "delete"),
])
def test_corrupt_newest_falls_back_with_warning(tmp_path, filename, how):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 3)
    corrupt(tmp_path / "ck" / "step_00000003" / filename, how)
    with pytest.raises(CheckpointCorruptError):
        verify_checkpoint(tmp_path / "ck" / "step_00000003")
    fresh, _, _, counter = make_manager(tmp_path / "ck", create=False)
    with pytest.warns(CheckpointFallbackWarning, match="step_00000002"):
        info = fresh.restore()
    assert info.step == 2 and counter.value == 2


def test_edited_manifest_is_detected(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    info = save_n(manager, *objs, 1)[0]
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["metrics"]["loss"] = 0.01  # a plausible-looking edit
    (info.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointCorruptError, match="own hash"):
        verify_checkpoint(info.path)


def test_newer_format_version_is_refused_clearly(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    info = save_n(manager, *objs, 1)[0]
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["format_version"] = 99
    (info.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedFormatError, match="upgrade ckptlab"):
        verify_checkpoint(info.path)


def test_version_1_checkpoints_are_still_read(tmp_path):
    """Format 2 only added markers and layouts; a checkpoint written as version 1 loads."""
    from ckptlab.engine.format import canonical_json, manifest_self_hash

    manager, *objs = make_manager(tmp_path / "ck")
    info = save_n(manager, *objs, 1)[0]
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["format_version"] = 1
    manifest["manifest_sha256"] = manifest_self_hash(manifest)
    (info.path / MANIFEST).write_bytes(canonical_json(manifest, readable=True))
    assert verify_checkpoint(info.path).manifest["format_version"] == 1
    assert load_checkpoint_state(info.path)[1]


def test_no_valid_checkpoint_is_a_clear_error(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 2)
    for step in (1, 2):
        corrupt(tmp_path / "ck" / f"step_{step:08d}" / TENSORS, "bitflip")
    fresh, _, _, counter = make_manager(tmp_path / "ck", create=False)
    with pytest.raises(CheckpointCorruptError, match="none of the 2 checkpoints"):
        fresh.restore()
    assert counter.value == 0, "nothing may be loaded from a failed restore"


def test_empty_and_missing_locations(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        latest_valid_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="no ckptlab checkpoints"):
        latest_valid_checkpoint(tmp_path / "empty")
    manager, *_ = make_manager(tmp_path / "fresh")
    assert manager.restore_latest() is None


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["file", "dir_with_pt", "as_tensors", "as_manifest"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(_Payload(str(marker)))
    if layout == "file":
        target = tmp_path / "model.pt"
        target.write_bytes(blob)
    elif layout == "dir_with_pt":
        target = tmp_path / "run"
        target.mkdir()
        (target / "checkpoint.pt").write_bytes(blob)
    else:  # a pickle planted inside a real checkpoint directory
        manager, *objs = make_manager(tmp_path / "ck")
        target = save_n(manager, *objs, 1)[0].path
        name = TENSORS if layout == "as_tensors" else MANIFEST
        (target / name).write_bytes(blob)
    with pytest.raises((ForeignFileError, CheckpointCorruptError)) as excinfo:
        latest_valid_checkpoint(target)
    if layout in ("file", "dir_with_pt"):
        assert excinfo.type is ForeignFileError and "never unpickles" in str(excinfo.value)
    fresh, *_ = make_manager(tmp_path / "other")
    with pytest.raises((ForeignFileError, CheckpointCorruptError, CheckpointNotFoundError)):
        fresh.restore(target)
    assert not marker.exists(), "the pickle payload ran"


def test_torch_save_zip_is_recognised(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ForeignFileError, match="zip archive"):
        resolve_location(path)


def test_bad_component_names_and_objects_are_rejected(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    with pytest.raises(Exception, match="letters, digits"):
        manager.register("a/b", Counter())
    with pytest.raises(Exception, match="state_dict"):
        manager.register("x", object())
    with pytest.raises(Exception, match="no components"):
        manager.save(1)


def test_restore_requires_every_registered_component(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 1)
    other = CheckpointManager(tmp_path / "ck", create=False)
    other.register("counter", Counter())
    other.register("extra", Counter())
    with pytest.raises(CheckpointNotFoundError, match="no state for extra"):
        other.restore()


def test_fallback_is_silent_when_newest_is_fine(tmp_path):
    manager, *objs = make_manager(tmp_path / "ck")
    save_n(manager, *objs, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_manager(tmp_path / "ck", create=False)[0].restore().step == 2
