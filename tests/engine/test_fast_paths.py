"""The fast paths keep the guarantees: restore reads each file once and still refuses any damaged
byte before touching a component; saves hash exactly the bytes written and order their fsyncs
so a power loss never exposes a torn checkpoint; async saves honour their mutation contract."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ckptlab.engine.hashing as hashing_module
import ckptlab.engine.verified as verified_module
import ckptlab.engine.writer as writer_module
from ckptlab import (
    BestBy,
    CheckpointCorruptError,
    CheckpointManager,
    CkptlabError,
    RollbackRequiredError,
    load_checkpoint_state,
)
from ckptlab.engine import (
    MANIFEST,
    STATE,
    TENSORS,
    CheckpointWriteError,
    latest_valid_checkpoint,
    load_latest_valid,
    read_pointer_record,
)
from ckptlab.engine.format import canonical_json, manifest_self_hash


class Holder:
    """A component whose state is a given dict of values (tensors, arrays, numbers)."""

    def __init__(self, state=None) -> None:
        self.state = state or {}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state) -> None:
        self.state = dict(state)


def saved(tmp_path: Path, state: dict, name: str = "ck"):
    manager = CheckpointManager(tmp_path / name)
    manager.register("holder", Holder(state))
    info = manager.save(1)
    manager.close()
    return info


def restore_into(path: Path) -> Holder:
    reader = CheckpointManager(path.parent, create=False)
    holder = Holder({"untouched": True})
    reader.register("holder", holder)
    reader.restore(path)
    return holder


def rewrite_with_recomputed_hashes(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace a file and make the manifest agree: damage that hashes cannot catch."""
    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["manifest_sha256"] = manifest_self_hash(manifest)
    (checkpoint / MANIFEST).write_bytes(canonical_json(manifest, readable=True))


# --- restore: one pass, same guarantees -----------------------------------------------------

def test_every_dtype_and_shape_round_trips(tmp_path):
    state = {
        "f64": torch.randn(3, 2, dtype=torch.float64), "f32": torch.randn(5),
        "f16": torch.randn(4).half(), "bf16": torch.randn(4).bfloat16(),
        "i64": torch.arange(7), "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16), "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "u16": torch.tensor([1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([1, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([1, 2**63], dtype=torch.uint64), "scalar": torch.tensor(2.5),
        "expanded scalar": torch.tensor(5).expand(1),
        "empty": torch.empty(0, 3), "array": np.arange(6, dtype=np.float32).reshape(2, 3),
    }
    holder = restore_into(saved(tmp_path, state).path)
    assert set(holder.state) == set(state)
    for key, value in state.items():
        got = holder.state[key]
        if isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == value.dtype
            assert np.array_equal(got, value)
        else:
            assert got.dtype == value.dtype and got.shape == value.shape
            assert torch.equal(got, value), key


def test_restore_reads_each_file_once(tmp_path, monkeypatch):
    info = saved(tmp_path, {"w": torch.randn(300_000), "b": torch.randn(7)})
    opened: list[str] = []
    bytes_read: dict[str, int] = {}
    real_open = verified_module.open_listed_file

    class Counting:
        def __init__(self, handle, name):
            self.handle, self.name = handle, name

        def readinto(self, buffer):
            got = self.handle.readinto(buffer)
            bytes_read[self.name] = bytes_read.get(self.name, 0) + got
            return got

        def __getattr__(self, attribute):
            return getattr(self.handle, attribute)

    def counting_open(checkpoint, name, entry):
        opened.append(name)
        return Counting(real_open(checkpoint, name, entry), name)

    monkeypatch.setattr(verified_module, "open_listed_file", counting_open)
    restore_into(info.path)
    assert sorted(opened) == [STATE, TENSORS], "each data file is opened exactly once"
    for name in (STATE, TENSORS):
        assert bytes_read[name] == (info.path / name).stat().st_size, name


# --- restore through the threaded hash (large files) ---------------------------------------

def _sha256_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "ckptlab-sha256"]


@pytest.fixture
def threaded_reads(monkeypatch):
    """Every file takes the large-file path: hashed by a thread, in many small pieces."""
    monkeypatch.setattr(hashing_module, "HASH_THREAD_MIN", 1024)
    monkeypatch.setattr(verified_module, "_CHUNK", 4096)


def test_a_threaded_restore_gives_back_exactly_what_was_saved(tmp_path, threaded_reads):
    state = {"w": torch.randn(100_000), "b": torch.randn(7), "i": torch.arange(5)}
    holder = restore_into(saved(tmp_path, state).path)
    for key, value in state.items():
        assert torch.equal(holder.state[key], value), key
    assert not _sha256_threads(), "the hashing thread was joined"


@pytest.mark.parametrize("hashing", ["inline hash", "threaded hash", "per-piece digests"])
@pytest.mark.parametrize("where", ["header", "first piece", "middle", "last byte"])
def test_a_damaged_byte_anywhere_is_refused_before_any_component_is_touched(
        tmp_path, request, hashing, where):
    if hashing != "inline hash":
        request.getfixturevalue({"threaded hash": "threaded_reads",
                                 "per-piece digests": "piecewise"}[hashing])
    info = saved(tmp_path, {"w": torch.randn(100_000), "b": torch.randn(7)})
    path = info.path / TENSORS
    data = bytearray(path.read_bytes())
    index = {"header": 20, "first piece": 4000, "middle": len(data) // 2,
             "last byte": len(data) - 1}[where]
    data[index] ^= 0x01
    path.write_bytes(bytes(data))
    reader = CheckpointManager(info.path.parent, create=False)
    holder = Holder({"untouched": True})
    reader.register("holder", holder)
    with pytest.raises(CheckpointCorruptError, match="SHA-256.* does not match") as caught:
        reader.restore(info.path)
    assert holder.state == {"untouched": True}
    if hashing == "per-piece digests":  # the message names the damaged piece
        assert f"(piece {index // 65_536})" in str(caught.value)
    assert not _sha256_threads()


def test_a_file_that_shrinks_during_a_threaded_restore_is_refused(tmp_path, threaded_reads,
                                                                  monkeypatch):
    info = saved(tmp_path, {"w": torch.randn(100_000)})
    real_open = verified_module.open_listed_file

    class Shrinking:  # the file ends early, as if truncated after it was opened
        def __init__(self, handle):
            self.handle, self.left = handle, 100_000

        def readinto(self, buffer):
            got = self.handle.readinto(buffer[:max(0, min(len(buffer), self.left))])
            self.left -= got
            return got

        def __getattr__(self, attribute):
            return getattr(self.handle, attribute)

    monkeypatch.setattr(verified_module, "open_listed_file",
                        lambda *args: Shrinking(real_open(*args)))
    holder = Holder({"untouched": True})
    with pytest.raises(CheckpointCorruptError, match="ended early"):
        reader = CheckpointManager(info.path.parent, create=False)
        reader.register("holder", holder)
        reader.restore(info.path)
    assert holder.state == {"untouched": True}
    assert not _sha256_threads()


def test_an_error_in_the_hashing_thread_propagates_and_nothing_is_loaded(tmp_path,
                                                                       threaded_reads,
                                                                       monkeypatch):
    info = saved(tmp_path, {"w": torch.randn(100_000)})

    class HashFailure(Exception):
        pass

    class FailingSha256:
        """Fails on its third piece, in the hashing thread."""

        def __init__(self):
            self.real, self.pieces = hashlib.sha256(), 0

        def update(self, piece):
            self.pieces += 1
            if self.pieces == 3:
                raise HashFailure("the hash failed")
            self.real.update(piece)

        def hexdigest(self):
            return self.real.hexdigest()

    monkeypatch.setattr(hashing_module, "hashlib", SimpleNamespace(sha256=FailingSha256))
    holder = Holder({"untouched": True})
    reader = CheckpointManager(info.path.parent, create=False)
    reader.register("holder", holder)
    with pytest.raises(HashFailure):
        reader.restore(info.path)
    assert holder.state == {"untouched": True}
    assert not _sha256_threads()


@pytest.mark.parametrize("max_pending", [None, 1])
def test_the_piece_hasher_equals_one_sha256_pass(max_pending):
    pieces = [os.urandom(n) for n in (0, 1, 4096, 70_000, 3)]
    with hashing_module.PieceHasher(threaded=True, max_pending=max_pending) as hasher:
        for piece in pieces:
            hasher.update(piece)
        assert hasher.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert not _sha256_threads()


def test_a_closed_piece_hasher_refuses_to_give_a_partial_digest():
    hasher = hashing_module.PieceHasher(threaded=True, max_pending=1)
    for _ in range(5):
        hasher.update(bytes(100_000))
    hasher.close()
    assert not _sha256_threads()
    with pytest.raises(RuntimeError, match="after close"):
        hasher.hexdigest()


@pytest.mark.parametrize("header", [
    {"holder/w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}},
    {"holder/w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
    {"holder/w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 16]}},
    {"holder/w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}},
    {"holder/w": "not a tensor"},
    ["not", "a", "header"],
])
def test_a_malformed_tensor_file_with_matching_hashes_is_a_clean_error(tmp_path, header):
    info = saved(tmp_path, {"w": torch.randn(4)})
    text = json.dumps(header).encode()
    rewrite_with_recomputed_hashes(info.path, TENSORS,
                                   len(text).to_bytes(8, "little") + text + bytes(16))
    with pytest.raises(CheckpointCorruptError, match="unreadable"):
        restore_into(info.path)


def test_an_absurd_header_length_is_a_clean_error(tmp_path):
    info = saved(tmp_path, {"w": torch.randn(4)})
    rewrite_with_recomputed_hashes(info.path, TENSORS, (2**63).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointCorruptError, match="exceeds the file"):
        restore_into(info.path)


def test_a_partial_load_hashes_everything_but_keeps_only_what_was_asked(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("small", Holder({"x": torch.ones(3)}))
    manager.register("big", Holder({"y": torch.randn(200_000)}))
    info = manager.save(1)
    manager.close()
    _, states = load_checkpoint_state(info.path, keys=["small"])
    assert list(states) == ["small"] and torch.equal(states["small"]["x"], torch.ones(3))
    data = bytearray((info.path / TENSORS).read_bytes())
    data[-1] ^= 0x01  # inside the tensor that is not asked for
    (info.path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="SHA-256"):
        load_checkpoint_state(info.path, keys=["small"])


# --- per-piece digests (format 3): large files hashed by several threads ---------------------

@pytest.mark.parametrize("max_pending", [None, 1])
def test_piece_digests_are_the_sha256_of_each_piece_whatever_the_views(max_pending):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=1_000_003, dtype=np.uint8).tobytes()
    cuts = sorted(set(rng.integers(0, len(data), size=40).tolist()) | {0, len(data)})
    with hashing_module.PieceDigests(65_536, max_pending=max_pending) as pieces:
        for start, end in zip(cuts[:-1], cuts[1:]):  # views that straddle piece boundaries
            pieces.update(memoryview(data)[start:end])
        digests = pieces.digests()
    assert digests == [hashlib.sha256(data[i:i + 65_536]).hexdigest()
                       for i in range(0, len(data), 65_536)]


@pytest.fixture
def piecewise(monkeypatch):
    """Saves record per-piece digests from 1 KiB on, in pieces of 64 KiB (the smallest the
    format allows), so a ~1 MB file has many pieces."""
    monkeypatch.setattr(writer_module, "PIECEWISE_MIN", 1024)
    monkeypatch.setattr(writer_module, "PIECE_BYTES", 65_536)


def test_a_large_file_records_one_digest_per_piece_and_round_trips(tmp_path, piecewise):
    state = {"w": torch.randn(250_000), "b": torch.randn(3)}
    info = saved(tmp_path, state)
    data = (info.path / TENSORS).read_bytes()
    entry = info.manifest["files"][TENSORS]
    assert info.manifest["format_version"] == 3
    assert entry == {"bytes": len(data), "sha256_pieces": {
        "piece_bytes": 65_536,
        "digests": [hashlib.sha256(data[i:i + 65_536]).hexdigest()
                    for i in range(0, len(data), 65_536)]}}
    holder = restore_into(info.path)
    assert torch.equal(holder.state["w"], state["w"]) and torch.equal(holder.state["b"],
                                                                      state["b"])


def _edit_manifest(checkpoint: Path, change) -> None:
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_self_hash(manifest)
    (checkpoint / MANIFEST).write_bytes(canonical_json(manifest, readable=True))


@pytest.mark.parametrize("damage", [
    lambda e: e["sha256_pieces"]["digests"].pop(),  # one digest short
    lambda e: e["sha256_pieces"].update(piece_bytes=1024),  # pieces below the format's minimum
    lambda e: e["sha256_pieces"].update(piece_bytes="65536"),
    lambda e: e["sha256_pieces"]["digests"].__setitem__(0, "not hex"),
    lambda e: e.update(sha256="0" * 64),  # both kinds of digest
    lambda e: e.update(sha256_pieces=[]),
])
def test_a_malformed_piece_list_is_refused_with_a_clear_error(tmp_path, piecewise, damage):
    info = saved(tmp_path, {"w": torch.randn(250_000)})
    _edit_manifest(info.path, lambda m: damage(m["files"][TENSORS]))
    with pytest.raises(CheckpointCorruptError, match="per-piece SHA-256s"):
        load_checkpoint_state(info.path)


def test_per_piece_digests_in_a_format_2_manifest_are_refused(tmp_path, piecewise):
    info = saved(tmp_path, {"w": torch.randn(250_000)})
    _edit_manifest(info.path, lambda m: m.update(format_version=2))
    with pytest.raises(CheckpointCorruptError, match="needs a size in bytes and a SHA-256"):
        load_checkpoint_state(info.path)


def test_a_format_2_checkpoint_with_whole_file_digests_still_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "PIECEWISE_MIN", 1 << 40)  # what format 2 wrote
    state = {"w": torch.randn(250_000)}
    info = saved(tmp_path, state)
    assert "sha256" in info.manifest["files"][TENSORS]
    _edit_manifest(info.path, lambda m: m.update(format_version=2))
    assert torch.equal(restore_into(info.path).state["w"], state["w"])


@pytest.mark.parametrize("hashed_by", ["pieces", "one pool thread"])
def test_a_failing_hash_fails_the_save_and_leaves_nothing(tmp_path, piecewise, monkeypatch,
                                                          hashed_by):
    def failing(segments):
        raise MemoryError("hash exploded")

    if hashed_by == "pieces":
        monkeypatch.setattr(hashing_module, "sha256_hex", failing)
    else:  # a mid-sized file: one digest, computed by a pool thread while it is written
        monkeypatch.setattr(writer_module, "PIECEWISE_MIN", 1 << 40)
        monkeypatch.setattr(writer_module, "_HASH_THREAD_MIN", 1024)
        monkeypatch.setattr(writer_module, "sha256_hex", failing)
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.randn(250_000)}))
    with pytest.raises(MemoryError, match="hash exploded"):
        manager.save(1)
    assert not manager.committed()
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp")]
    manager.close()


# --- restoring straight to a device (exercised here through the same host-piece path) -------

@pytest.fixture
def through_host_pieces(monkeypatch):
    """Treat the CPU like an accelerator: tensors are filled through 1000-byte host pieces,
    exactly as they are for a GPU."""
    import ckptlab.engine.format as format_module

    pieces: list[int] = []
    real = format_module._read_to_device

    def counting(source, destination, nbytes):
        pieces.append(nbytes)
        return real(source, destination, nbytes)

    monkeypatch.setattr(format_module, "_reads_in_place", lambda device: False)
    monkeypatch.setattr(format_module, "_DEVICE_PIECE", 1000)
    monkeypatch.setattr(format_module, "_read_to_device", counting)
    return pieces


def _device_state():
    return {"model": {"w": torch.randn(3000), "b": torch.arange(5)},
            "buffer": {"obs": np.arange(12, dtype=np.float32).reshape(3, 4)}}


def test_a_device_restore_fills_torch_tensors_piece_by_piece(tmp_path, through_host_pieces):
    state = _device_state()
    manager = CheckpointManager(tmp_path / "ck")
    holders = {name: Holder(value) for name, value in state.items()}
    for name, holder in holders.items():
        manager.register(name, holder)
    manager.save(1)
    holders["model"].state = {}
    holders["buffer"].state = {}
    manager.restore(device={"model": "cpu"})
    manager.close()
    assert sorted(through_host_pieces) == [5 * 8, 3000 * 4], "only the model's torch tensors"
    assert torch.equal(holders["model"].state["w"], state["model"]["w"])
    assert torch.equal(holders["model"].state["b"], state["model"]["b"])
    assert isinstance(holders["buffer"].state["obs"], np.ndarray)
    assert np.array_equal(holders["buffer"].state["obs"], state["buffer"]["obs"])


def test_a_device_restore_of_everything_keeps_numpy_arrays_on_the_host(tmp_path,
                                                                       through_host_pieces):
    state = _device_state()
    manager = CheckpointManager(tmp_path / "ck")
    for name, value in state.items():
        manager.register(name, Holder(value))
    info = manager.save(1)
    manager.close()
    _, states = load_checkpoint_state(info.path, device="cpu")
    assert len(through_host_pieces) == 2
    assert isinstance(states["buffer"]["obs"], np.ndarray)
    assert torch.equal(states["model"]["w"], state["model"]["w"])


def test_a_corrupt_byte_is_caught_on_the_device_path_with_nothing_loaded(
        tmp_path, through_host_pieces, monkeypatch):
    monkeypatch.setattr(hashing_module, "HASH_THREAD_MIN", 1024)  # hashed in another thread
    monkeypatch.setattr(verified_module, "_CHUNK", 4096)
    info = saved(tmp_path, {"w": torch.randn(50_000)})
    path = info.path / TENSORS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    holder = Holder({"untouched": True})
    reader = CheckpointManager(info.path.parent, create=False)
    reader.register("holder", holder)
    with pytest.raises(CheckpointCorruptError, match="SHA-256"):
        reader.restore(info.path, device="cpu")
    assert holder.state == {"untouched": True}
    assert through_host_pieces, "the device path was taken"
    assert not _sha256_threads()


def test_a_run_resumed_through_the_device_path_matches_the_uninterrupted_run(
        tmp_path, through_host_pieces):
    from ckptlab import DQNConfig, Trainer

    config = DQNConfig(seed=5, total_steps=1200, learning_starts=200, steps_per_epoch=300,
                       save_every_steps=600, hidden_sizes=(16, 16), buffer_capacity=2000)
    with Trainer(config, tmp_path / "straight") as straight:
        straight.train()
        expected = {k: v.clone() for k, v in straight.agent.q_net.state_dict().items()}
    with Trainer(config, tmp_path / "resumed") as first:
        first.train(until_step=600)
    with Trainer(config, tmp_path / "resumed") as second:
        second.restore()
        assert through_host_pieces, "the agent's tensors came through host pieces"
        second.train()
        for key, value in second.agent.q_net.state_dict().items():
            assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("device, message", [
    ("cuda" if not torch.cuda.is_available() else "cuda:999", "cannot restore tensors to device"),
    ("no-such-device", "cannot restore tensors to device"),
    # placed, but not in the checkpoint: reported as missing (a foreign checkpoint)
    ({"nobody": "cpu"}, r"has no component\(s\) nobody; it contains holder"),
])
def test_an_unusable_device_is_refused_before_anything_is_loaded(tmp_path, device, message):
    info = saved(tmp_path, {"w": torch.ones(3)})
    holder = Holder({"untouched": True})
    reader = CheckpointManager(info.path.parent, create=False)
    reader.register("holder", holder)
    with pytest.raises(CkptlabError, match=message) as caught:
        reader.restore(info.path, device=device)
    assert not isinstance(caught.value, CheckpointCorruptError), "not a damaged checkpoint"
    assert holder.state == {"untouched": True}
    # placed, but outside the components asked for: a mistake in the call
    with pytest.raises(CkptlabError, match="device names component"):
        load_checkpoint_state(info.path, keys=["holder"], device={"nobody": "cpu"})


# --- save: hashes of the written bytes, fsync order -----------------------------------------

def test_pipelined_hash_matches_the_bytes_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_HASH_THREAD_MIN", 1024)  # use the hashing thread
    monkeypatch.setattr(writer_module, "_PIECE", 4096)  # and many pieces
    info = saved(tmp_path, {"w": torch.randn(50_000), "b": torch.randn(3)})
    for name, entry in info.manifest["files"].items():
        data = (info.path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.skipif(not hasattr(os, "writev"), reason="writev is POSIX")
def test_vectored_writes_survive_partial_writes(tmp_path, monkeypatch):
    real_writev = os.writev
    calls = []

    def stingy_writev(fd, buffers):  # the kernel may take less than it was given
        calls.append(len(buffers))
        data = b"".join(bytes(b) for b in buffers)[:1000]
        return real_writev(fd, [data])

    monkeypatch.setattr(os, "writev", stingy_writev)
    monkeypatch.setattr(writer_module, "_IOV_MAX", 3)  # and few buffers per call
    state = {f"t{i}": torch.randn(i * 37) for i in range(12)}
    info = saved(tmp_path, state)
    monkeypatch.setattr(os, "writev", real_writev)
    assert max(calls) <= 3 and len(calls) > 12
    for name, entry in info.manifest["files"].items():
        data = (info.path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    holder = restore_into(info.path)
    for key, value in state.items():
        assert torch.equal(holder.state[key], value), key


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
@pytest.mark.parametrize("best_moves", [False, True], ids=["no best", "best moves"])
def test_everything_is_durable_before_the_rename_and_the_rename_before_returning(
        tmp_path, monkeypatch, best_moves):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", f"{src} -> {dst}"))

    manager = CheckpointManager(tmp_path / "ck", best=BestBy("r") if best_moves else None)
    manager.register("holder", Holder({"w": torch.randn(1000)}))
    manager.save(1, metrics={"r": 1.0})
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    manager.save(2, metrics={"r": 2.0})  # the new best, when there is a rule
    monkeypatch.undo()
    assert manager.best_pointer() == ("step_00000002" if best_moves else None)
    manager.close()
    directory = str((tmp_path / "ck").resolve())
    commit = next(i for i, (kind, what) in enumerate(events)
                  if kind == "rename" and what.endswith("step_00000002"))
    before = [what for kind, what in events[:commit] if kind == "fsync"]
    temp = next(p for p in before if os.path.basename(p).startswith(".tmp-step_"))
    for name in (TENSORS, STATE, MANIFEST):
        assert f"{temp}/{name}" in before, f"{name} is not durable before the commit"
    pointers = ["latest", "best"] if best_moves else ["latest"]
    for pointer in pointers:  # written beside the checkpoint, renamed after it
        assert any(kind == "rename" and os.path.basename(what.split(" -> ")[0])
                   .startswith(f".tmp-{pointer}") and what.endswith(f"/{pointer}")
                   for kind, what in events[commit:]), pointer
    # `best` is durable before the commit (retention trusts it); `latest` is not fsynced at
    # all: readers take a damaged one as absent (see the next test)
    assert any(os.path.basename(p).startswith(".tmp-best") for p in before) == best_moves
    assert not any(os.path.basename(p).startswith(".tmp-latest") for p in before)
    assert events[-1] == ("fsync", directory), "the renames are made durable last"
    # tensors, state, manifest, the temporary directory, a moved `best`, the parent once
    assert sum(kind == "fsync" for kind, _ in events) == 5 + best_moves
    assert sum(what == directory for kind, what in events if kind == "fsync") == 1


@pytest.mark.parametrize("content", [b"", b'{"checkpoint": "step_000', b"\0" * 40],
                         ids=["empty", "torn", "zeros"])
def test_a_latest_pointer_lost_to_a_power_cut_costs_nothing(tmp_path, content):
    """`latest` is not fsynced before its rename, so a power loss can leave it empty or
    garbage: resume still finds the newest checkpoint, and the next writer repairs it."""
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.randn(10)}))
    manager.save(1)
    manager.save(2)
    manager.close()
    (tmp_path / "ck" / "latest").write_bytes(content)
    assert read_pointer_record(tmp_path / "ck", "latest") is None
    assert latest_valid_checkpoint(tmp_path / "ck").path.name == "step_00000002"
    info, _ = load_latest_valid(tmp_path / "ck")
    assert info.path.name == "step_00000002"
    manager = CheckpointManager(tmp_path / "ck")  # opening it rewrites the pointer
    manager.register("holder", Holder({"w": torch.randn(10)}))
    assert manager.latest_pointer() == "step_00000002"
    manager.save(3)
    manager.close()
    assert read_pointer_record(tmp_path / "ck", "latest")["checkpoint"] == "step_00000003"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_a_failed_pointer_update_still_makes_the_commit_durable(tmp_path, monkeypatch):
    """The checkpoint's rename happened; if `latest` cannot be replaced, the error says the
    checkpoint is complete - which needs the parent's fsync all the same."""
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    def replace(src, dst):
        if str(dst).endswith("/latest"):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.randn(1000)}))
    manager.save(1)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointWriteError, match="complete and will be found on resume"):
        manager.save(2)
    monkeypatch.undo()
    directory = str((tmp_path / "ck").resolve())
    commit_sync = synced.index(directory)  # after the files, the parent, for the rename
    assert any(p.endswith("/manifest.json") for p in synced[:commit_sync])
    assert (tmp_path / "ck/step_00000002").is_dir()
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".tmp")]
    manager.close()


# --- async saves: the mutation contract -----------------------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["one thread", "two threads"])
def test_async_copy_stages_every_dtype_and_odd_strides(tmp_path, monkeypatch, split):
    if split:  # the copy is shared with a helper thread, cut inside a tensor
        monkeypatch.setattr(writer_module, "_PARALLEL_COPY_MIN", 16)
    state = {"bf16": torch.randn(5).bfloat16(), "bool": torch.tensor([True, False, True]),
             "expanded": torch.tensor(7).expand(1), "array": np.arange(4, dtype=np.int16),
             "scalar": torch.tensor(1.5, dtype=torch.float64), "empty": torch.empty(0),
             "empty strided": torch.empty(0, dtype=torch.int64).as_strided((0,), (0,))}
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder(state))
    info = manager.save_async(1).result()
    manager.close()
    _, states = load_checkpoint_state(info.path)
    for key, value in state.items():
        got = states["holder"][key]
        assert (np.array_equal(got, value) if isinstance(value, np.ndarray)
                else torch.equal(got, value)), key


@pytest.mark.parametrize("sizes", [[1000], [3, 997], [500, 500], [1, 1, 998], [0, 1000, 0]])
def test_a_two_thread_staging_copy_is_exact_wherever_the_cut_falls(monkeypatch, sizes):
    monkeypatch.setattr(writer_module, "_PARALLEL_COPY_MIN", 1)
    tensors = {f"t{i}": torch.randint(0, 255, (n,), dtype=torch.uint8)
               for i, n in enumerate(sizes)}
    staged = writer_module.StagingBuffer().stage(tensors)
    for key, value in tensors.items():
        assert torch.equal(staged[key], value), key
        assert staged[key].data_ptr() != value.data_ptr() or value.numel() == 0


def test_an_error_in_the_staging_helper_thread_propagates(monkeypatch):
    monkeypatch.setattr(writer_module, "_PARALLEL_COPY_MIN", 1)
    real_copyto = np.copyto

    def copyto(destination, source):
        if threading.current_thread().name == "ckptlab-stage":
            raise MemoryError("the helper failed")
        real_copyto(destination, source)

    monkeypatch.setattr(writer_module.numpy, "copyto", copyto)
    with pytest.raises(MemoryError, match="helper failed"):
        writer_module.StagingBuffer().stage({"w": torch.ones(1000)})
    assert not [t for t in threading.enumerate() if t.name == "ckptlab-stage"]


def test_async_copy_reuses_its_staging_buffer_and_frees_it_on_request(tmp_path):
    weights = torch.zeros(10_000)
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": weights}))
    expected = []
    for step in (1, 2, 3):
        weights.fill_(step)
        expected.append(weights.clone())
        manager.save_async(step)
        weights.fill_(-1.0)  # allowed at once: the state was copied
        if step == 1:
            held = manager._staging.nbytes
            assert held >= weights.numel() * 4
        else:
            assert manager._staging.nbytes == held, "the staging buffer is reused"
    manager.wait()
    for step, value in zip((1, 2, 3), expected):
        _, states = load_checkpoint_state(tmp_path / "ck" / f"step_{step:08d}")
        assert torch.equal(states["holder"]["w"], value)
    manager.release_staging_buffer()
    assert manager._staging.nbytes == 0
    manager.close()


def test_async_without_copy_writes_the_state_as_of_the_call_once_staged(tmp_path):
    weights = torch.full((300_000,), 7.0)
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": weights}))
    future = manager.save_async(1, copy=False)
    manager.wait_staged()
    weights.fill_(-1.0)  # after wait_staged() the save no longer reads the tensors
    info = future.result()
    assert manager._staging.nbytes == 0, "nothing was copied"
    manager.close()
    _, states = load_checkpoint_state(info.path)
    assert torch.all(states["holder"]["w"] == 7.0)


def test_async_copy_in_background_is_staged_before_the_write_ends(tmp_path, monkeypatch):
    """The writer thread copies first and says so; the caller may then change its tensors
    while the file is still being written, and the checkpoint holds the state as of the call."""
    weights = torch.full((300_000,), 7.0)
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": weights}))
    writing, release = threading.Event(), threading.Event()
    real_write = writer_module.ParallelFlush.write

    def held_write(self, *args, **kwargs):
        writing.set()
        assert release.wait(10), "the test never released the write"
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(writer_module.ParallelFlush, "write", held_write)
    future = manager.save_async(1, copy_in_background=True)
    assert writing.wait(10)
    waiter = threading.Thread(target=manager.wait_staged)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "wait_staged() should return before any byte is written"
    assert not future.done()
    weights.fill_(-1.0)
    release.set()
    info = future.result()
    assert manager._staging.nbytes >= weights.numel() * 4, "the copy went to the staging buffer"
    manager.close()
    _, states = load_checkpoint_state(info.path)
    assert torch.all(states["holder"]["w"] == 7.0)


def test_copy_in_background_needs_a_copy(tmp_path):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.ones(3)}))
    with pytest.raises(CkptlabError, match="needs copy=True"):
        manager.save_async(1, copy=False, copy_in_background=True)
    assert not manager.committed()
    manager.close()


def test_a_failed_background_copy_releases_wait_staged_and_is_reported(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.ones(3)}))

    def broken(self, tensors):
        raise MemoryError("cannot allocate the staging buffer")

    monkeypatch.setattr(writer_module.StagingBuffer, "stage", broken)
    manager.save_async(1, copy_in_background=True)
    manager.wait_staged()  # must not hang
    with pytest.raises(Exception, match="staging buffer"):
        manager.wait()
    assert not manager.committed()
    manager.close()


def test_wait_staged_returns_when_a_save_fails(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.ones(3)}))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.ParallelFlush, "write", broken)
    manager.save_async(1, copy=False)
    manager.wait_staged()  # must not hang
    with pytest.raises(Exception, match="No space left"):
        manager.wait()
    manager.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_child_forked_while_the_pools_locks_are_held_can_still_save(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(writer_module, "PIECEWISE_MIN", 1024)  # the save uses the hash pool too
    saved(tmp_path, {"w": torch.randn(1000)}, name="parent")  # the parent's pools exist
    # as if other threads were creating the pools at the moment of the fork
    with writer_module.SYNC_POOL._lock, hashing_module.HASH_POOL._lock:
        pid = os.fork()
        if pid == 0:  # the child: a save needs the pool, hence the lock
            try:
                saved(tmp_path, {"w": torch.randn(10)}, name="child")
                code = 0
            except BaseException:
                code = 1
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a pool's lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the child's save failed"
    assert (tmp_path / "child").is_dir()


# --- save: fewer scans, writeback started early ------------------------------------------------

def test_only_the_first_save_scans_for_newer_checkpoints_while_the_lock_is_held(
        tmp_path, monkeypatch):
    import ckptlab.engine.manager as manager_module

    scans = []  # the branch check's directory scans (the manager's only use of it)
    real = manager_module.committed_steps
    monkeypatch.setattr(manager_module, "committed_steps",
                        lambda directory: scans.append(directory) or real(directory))
    manager = CheckpointManager(tmp_path / "ck")
    manager.register("holder", Holder({"w": torch.randn(10)}))
    for step in (1, 2, 3):
        manager.save(step)
    assert len(scans) == 1, "saves after the manager's own commit scanned again"
    manager.rollback(1)  # moves 2 and 3 aside; a save at or below 3 scans again
    manager.save(2)
    assert len(scans) == 2 and manager.latest_pointer() == "step_00000002"
    manager.close()  # the lock is released: whoever holds it next scans
    other = CheckpointManager(tmp_path / "ck")
    other.register("holder", Holder({"w": torch.randn(10)}))
    with pytest.raises(RollbackRequiredError):
        other.save(1)  # step 2 is newer and valid: still refused
    other.close()


@pytest.mark.parametrize("hint", ["recorded", "unavailable"])
def test_writeback_hints_cover_each_data_file_once_in_order(tmp_path, monkeypatch, hint):
    ranges: dict[int, list[tuple[int, int]]] = {}
    if hint == "recorded":
        monkeypatch.setattr(writer_module, "_writeback_hint",
                            lambda fd, offset, length, flags: ranges.setdefault(fd, []).append(
                                (offset, length)) and 0)
    else:  # not Linux, or a libc without sync_file_range: plain writes
        monkeypatch.setattr(writer_module, "_writeback_hint", None)
    monkeypatch.setattr(writer_module, "_WRITEBACK_PIECE", 4096)
    state = {f"t{i}": torch.randn(n) for i, n in enumerate((5000, 3, 2048, 1))}
    info = saved(tmp_path, state)
    for name, entry in info.manifest["files"].items():
        data = (info.path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if hint == "recorded":
        sizes = sorted(info.manifest["files"][n]["bytes"] for n in (TENSORS, STATE))
        covered = sorted(sum(length for _, length in spans) for spans in ranges.values())
        assert covered == sizes
        for spans in ranges.values():  # contiguous, from 0, at most one piece each
            assert [offset for offset, _ in spans] == \
                [sum(length for _, length in spans[:i]) for i in range(len(spans))]
            assert all(0 < length <= 4096 for _, length in spans)
    holder = restore_into(info.path)
    for key, value in state.items():
        assert torch.equal(holder.state[key], value), key
