"""Hostile sharded checkpoints: nothing runs, nothing outside is read, every refusal is typed.

The attacker's model (docs/threat-model.md): whoever hands over a checkpoint may write any
bytes into it and recompute every hash (``_reseal``). The checkpoints here are written by a
real ``ShardedCheckpointer`` on a one-rank gloo group in this process, then altered. Each case
goes through the engine's readers and the command line, which must answer with a
``CkptlabError`` (one ``error:`` line) in bounded time, or load exactly what the bytes say.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ckptlab.cli import main
from ckptlab.engine import CkptlabError, UnsupportedFormatError, verify_checkpoint
from ckptlab.engine.distributed import (
    ShardedCheckpointer,
    load_dcp_tensors,
    read_sharded_state,
)
from ckptlab.engine.errors import CheckpointCorruptError
from ckptlab.engine.format import canonical_json, manifest_self_hash, read_manifest
from ckptlab.engine.reader import latest_valid_checkpoint


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """A checkpoints directory with two sharded saves (steps 10 and 20) of a model, an Adam
    optimizer that has stepped (tensors and JSON values) and one rank-own component."""
    root = tmp_path_factory.mktemp("sharded")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optim = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(torch.randn(2, 4)).sum().backward()
        optim.step()
        checkpointer = ShardedCheckpointer(root / "checkpoints", keep_last=5)
        for step in (10, 20):
            checkpointer.save(step, dcp_state={"model": model.state_dict(),
                                               "optim": optim.state_dict()},
                              rank_states={"box": {"value": step}}, metrics={"score": step})
        checkpointer.close()
        yield root, {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        if created:
            dist.destroy_process_group()


@pytest.fixture
def run(sharded_dir, tmp_path):
    root, weights = sharded_dir
    shutil.copytree(root, tmp_path / "run")
    return tmp_path / "run", weights


def _newest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step_00000020"


def _reseal(checkpoint: Path, files: dict[str, bytes | None] | None = None,
            edit=None) -> None:
    """Rewrite files (None removes one from the table), edit the manifest, recompute hashes."""
    manifest = json.loads((checkpoint / "manifest.json").read_bytes())
    for name, data in (files or {}).items():
        if data is None:
            manifest["files"].pop(name, None)
            continue
        path = checkpoint / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_bytes(data)
        manifest["files"][name] = {"bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}
    if edit is not None:
        edit(manifest)
    manifest["manifest_sha256"] = manifest_self_hash(manifest)
    (checkpoint / "manifest.json").write_bytes(canonical_json(manifest, readable=True))


def _index(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "dcp" / "index.json").read_bytes())


def _reseal_index(checkpoint: Path, edit) -> None:
    index = _index(checkpoint)
    edit(index)
    _reseal(checkpoint, {"dcp/index.json": json.dumps(index).encode()})


def _every_reader_refuses(run_dir: Path, checkpoint: Path, capsys, match: str = "",
                          falls_back: bool = True) -> None:
    """verify, the DCP reader, export, inspect and verify on the command line all refuse with
    one typed line; `ls` lists without a traceback; a fallback skips a damaged checkpoint (an
    old-layout one stops it instead: it is not damaged, it needs converting)."""
    started = time.monotonic()
    with pytest.raises(CkptlabError, match=match):
        verify_checkpoint(checkpoint)
    with pytest.raises(CkptlabError):
        read_sharded_state(checkpoint)
    with pytest.raises(CkptlabError):
        load_dcp_tensors(checkpoint, "model")
    capsys.readouterr()
    for argv in (["verify", str(checkpoint)], ["inspect", str(checkpoint)],
                 ["export", str(checkpoint), "--out", str(run_dir / "export"),
                  "--tensors", "model"]):
        status = main(argv)
        out = capsys.readouterr()
        assert "Traceback" not in out.err + out.out, (argv, out)
        if argv[0] != "inspect":  # inspect may describe what it can read
            assert status != 0, argv
    assert main(["ls", str(run_dir)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    if falls_back:
        with pytest.warns(UserWarning):
            assert latest_valid_checkpoint(run_dir / "checkpoints").step == 10
    else:
        with pytest.raises(UnsupportedFormatError, match="migrate-sharded"):
            latest_valid_checkpoint(run_dir / "checkpoints")
    assert time.monotonic() - started < 30


def test_a_sharded_checkpoint_round_trips_without_any_pickle(run, monkeypatch):
    run_dir, weights = run
    checkpoint = _newest(run_dir)
    listed = sorted(read_manifest(checkpoint)["files"])
    assert "dcp/index.json" in listed and "dcp/__0_0.bin" in listed
    assert not any(name.endswith((".metadata", ".distcp")) for name in listed)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("something unpickled while loading a checkpoint")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    info, states = read_sharded_state(checkpoint)
    for name, tensor in weights.items():
        assert torch.equal(states["dcp/model"][name], tensor)
    loaded = _load_everything(checkpoint)  # JSON values included: Adam's lr comes back
    assert loaded["optim"]["param_groups"][0]["lr"] == 1e-3
    assert loaded["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert states["rank_00000"]["box"] == {"value": 20}
    assert info.manifest["format_version"] == 4


# --------------------------------------------------------------------------------------------
# The exploit of the old layout: a pickled index whose "names" reach os.system
# --------------------------------------------------------------------------------------------

class _RunsACommand:
    """Pickles into a call of ``os.system`` - the payload of a nested-loader exploit."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _exploit_pickles(marker: Path) -> list[bytes]:
    """Pickles that would run `touch MARKER` through an allow-list of DCP's metadata module:
    dotted names (protocol 4+) under GLOBAL and STACK_GLOBAL, INST, OBJ, REDUCE, and a nested
    unrestricted loader (``torch.serialization.pickle.loads``)."""
    command = f"touch {marker}"
    module = "torch.distributed.checkpoint.metadata"

    def body(value) -> bytes:  # a value's opcodes without the protocol header and STOP
        return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]

    found = []
    for name, argument in (("os.system", command),
                           ("torch.serialization.pickle.loads",
                            pickle.dumps(_RunsACommand(command), protocol=2))):
        for proto in (4, 5):
            head = b"\x80" + bytes([proto])
            found.append(head + b"c" + module.encode() + b"\n" + name.encode() + b"\n"
                         + body((argument,)) + b"R.")  # GLOBAL + REDUCE
            found.append(head + body(module) + body(name) + b"\x93"
                         + body((argument,)) + b"R.")  # STACK_GLOBAL + REDUCE
            found.append(head + body(module) + body(name) + b"\x93"
                         + body((argument,)) + b"\x81.")  # STACK_GLOBAL + NEWOBJ
    found.append(b"(" + pickle.dumps(command, protocol=0)[:-1] + b"i" + module.encode()
                 + b"\nos.system\n.")  # INST
    found.append(b"(c" + module.encode() + b"\nos.system\n"
                 + pickle.dumps(command, protocol=0)[:-1] + b"o.")  # OBJ
    for data in found:
        pickletools.dis(io.BytesIO(data), out=io.StringIO())  # each is a well-formed pickle
    return found


def _make_legacy(checkpoint: Path, payload: bytes) -> None:
    """Turn a checkpoint into the pre-4 layout: a pickled dcp/.metadata and .distcp data."""
    os.replace(checkpoint / "dcp" / "__0_0.bin", checkpoint / "dcp" / "__0_0.distcp")
    (checkpoint / "dcp" / "index.json").unlink()

    def legacy(manifest):
        manifest["format_version"] = 3
        manifest["files"]["dcp/__0_0.distcp"] = manifest["files"].pop("dcp/__0_0.bin")
        manifest["files"].pop("dcp/index.json")

    _reseal(checkpoint, {"dcp/.metadata": payload}, edit=legacy)


def test_the_old_pickled_layout_is_refused_and_its_payload_never_runs(sharded_dir, capfd,
                                                                      tmp_path):
    marker = tmp_path / "PWNED"
    for number, payload in enumerate(_exploit_pickles(marker)):
        run_dir = tmp_path / f"run{number}"
        shutil.copytree(sharded_dir[0], run_dir)
        checkpoint = _newest(run_dir)
        _make_legacy(checkpoint, payload)
        with pytest.raises(UnsupportedFormatError, match="migrate-sharded .*--trust-pickle"):
            verify_checkpoint(checkpoint)
        _every_reader_refuses(run_dir, checkpoint, capfd, match="no longer unpickles",
                              falls_back=False)
    # and the distributed resume, once: refused before any rank loads anything
    assert main(["train", "--run-dir", str(run_dir), "--nproc", "1", "--steps", "30",
                 "--resume", str(checkpoint)]) != 0
    assert "Traceback" not in capfd.readouterr().err
    assert not marker.exists()


def _load_everything(checkpoint: Path) -> dict:
    """Load a checkpoint's DCP part the way a resuming rank does: tensors and JSON values
    (an optimizer's hyperparameters) into a model's and an optimizer's state."""
    from ckptlab.engine.dcp_storage import VerifiedDCPReader
    from ckptlab.engine.distributed import _dcp_load

    model = torch.nn.Linear(4, 3)
    optim = torch.optim.Adam(model.parameters(), lr=0.5)
    model(torch.randn(2, 4)).sum().backward()
    optim.step()
    state = {"model": model.state_dict(), "optim": optim.state_dict()}
    _dcp_load(state, VerifiedDCPReader(checkpoint, read_manifest(checkpoint)), no_dist=True)
    return state


def test_a_pickle_planted_in_the_new_layout_is_just_bad_json(run, capsys, tmp_path):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    marker = tmp_path / "PWNED"
    payload = _exploit_pickles(marker)[0]
    _reseal(checkpoint, {"dcp/index.json": payload})
    _every_reader_refuses(run_dir, checkpoint, capsys, match="not valid JSON")
    index_ok = run_dir / "ok"
    shutil.copytree(_newest(run_dir).parent / "step_00000010", index_ok)
    data = (index_ok / "dcp" / "__0_0.bin").read_bytes()
    index = _index(index_ok)
    value = next(i for i in index["items"] if i["offset"] is None)  # a JSON value (an lr)
    forged = payload.ljust(value["length"], b" ")[:value["length"]]
    data = data[:value["at"]] + forged + data[value["at"] + value["length"]:]
    _reseal(index_ok, {"dcp/__0_0.bin": data})
    verify_checkpoint(index_ok)  # resealed
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        _load_everything(index_ok)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Reads the engine must never make
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["/etc/passwd", "../../manifest.json", "__0_0.bin/../x",
                                   "__7_0.bin", "", 7, None, "index.json"])
def test_an_item_outside_the_listed_data_files_is_refused(run, capsys, where):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    if where == "__7_0.bin":  # a real file in the checkpoint that the manifest does not list
        (checkpoint / "dcp" / "__7_0.bin").write_bytes((checkpoint / "dcp" / "__0_0.bin")
                                                         .read_bytes())
    _reseal_index(checkpoint, lambda i: i["items"][0].update(file=where))
    _every_reader_refuses(run_dir, checkpoint, capsys, match="not a data file the manifest")


def test_symlinks_fifos_and_devices_are_never_followed(run, capsys, tmp_path):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    data_file = checkpoint / "dcp" / "__0_0.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(data_file.read_bytes())
    data_file.unlink()
    data_file.symlink_to(outside)
    _every_reader_refuses(run_dir, checkpoint, capsys, match="symbolic link")
    data_file.unlink()
    os.mkfifo(data_file)  # a reader that opened it blocking would hang here
    _every_reader_refuses(run_dir, checkpoint, capsys, match="not a regular file")
    data_file.unlink()
    data_file.symlink_to("/dev/zero")
    _reseal(checkpoint, edit=lambda m: m["files"]["dcp/__0_0.bin"].update(bytes=1536 * 2**20))
    _every_reader_refuses(run_dir, checkpoint, capsys, match="symbolic link")
    # a whole rank folder or the dcp folder as a symlink out of the run
    shutil.copytree(run_dir / "checkpoints" / "step_00000010", tmp_path / "copy")
    fresh = run_dir / "checkpoints" / "step_00000020"
    shutil.rmtree(fresh)
    shutil.copytree(tmp_path / "copy", fresh)
    shutil.move(fresh / "rank_00000", tmp_path / "rank_outside")
    (fresh / "rank_00000").symlink_to(tmp_path / "rank_outside", target_is_directory=True)
    with pytest.raises(CkptlabError, match="not followed"):
        verify_checkpoint(fresh)
    assert main(["export", str(fresh), "--out", str(tmp_path / "e"), "--tensors", "model"]) != 0
    (fresh / "rank_00000").unlink()
    shutil.move(tmp_path / "rank_outside", fresh / "rank_00000")
    shutil.move(fresh / "dcp", tmp_path / "dcp_outside")
    (fresh / "dcp").symlink_to(tmp_path / "dcp_outside", target_is_directory=True)
    with pytest.raises(CkptlabError, match="not followed"):
        verify_checkpoint(fresh)


def test_a_huge_sparse_shard_json_is_refused_without_reading_it(run, capsys):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    path = checkpoint / "rank_00000" / "shard.json"
    with open(path, "r+b") as f:
        f.truncate(2 * 1024**3)  # sparse: 2 GiB that a reader must not read whole
    _reseal(checkpoint, edit=lambda m: m["files"]["rank_00000/shard.json"].update(
        bytes=2 * 1024**3))
    _every_reader_refuses(run_dir, checkpoint, capsys, match="impossible size|size in bytes")


@pytest.mark.parametrize("field, value", [
    ("world_size", "2x"), ("world_size", -1), ("world_size", {}), ("world_size", 0),
    ("world_size", 10**9), ("world_size", True), ("world_size", 2), ("save_id", 5),
    ("dcp_keys", "model"), ("dcp_keys", [1]), ("dcp_keys", ["../x"]), ("ranks", ["rank_9"]),
    ("dcp_dir", "/tmp"), ("backend", []),
])
def test_a_wrongly_typed_sharded_section_is_one_typed_line(run, capsys, field, value):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    _reseal(checkpoint, edit=lambda m: m["sharded"].update({field: value}))
    _every_reader_refuses(run_dir, checkpoint, capsys)


@pytest.mark.parametrize("aliases", ["x", {"model": 3}, {"model": "../x"}, [1]])
def test_dcp_aliases_must_map_names(run, capsys, aliases):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    _reseal(checkpoint, edit=lambda m: m.update(dcp_aliases=aliases))
    _every_reader_refuses(run_dir, checkpoint, capsys, match="dcp_aliases")


def _first_tensor_item(index: dict) -> dict:
    return next(i for i in index["items"] if i["offset"] is not None)


@pytest.mark.parametrize("edit", [
    lambda i: _first_tensor_item(i).update(length=2**40),
    lambda i: _first_tensor_item(i).update(at=-1),
    lambda i: _first_tensor_item(i).update(at=2**62),
    lambda i: _first_tensor_item(i).update(length=_first_tensor_item(i)["length"] - 1),
    lambda i: _first_tensor_item(i).update(offset=[99, 0]),
    lambda i: _first_tensor_item(i).update(offset="0"),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(dtype="object"),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(dtype="torch.float32"),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(shape=[-3, 4]),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(shape=[2**30] * 4),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(shape=[1] * 40),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]]["chunks"][0].update(sizes=[9, 9]),
    lambda i: i["entries"][_first_tensor_item(i)["fqn"]].update(kind="code"),
    lambda i: i["items"].append(copy.deepcopy(i["items"][0])),
    lambda i: i["items"].pop(0),
    lambda i: i.update(items={}),
    lambda i: i.update(entries=[]),
    lambda i: i.update(version=2),
    lambda i: i.update(format="torch-dcp"),
    lambda i: i.update(byteorder="big"),
    lambda i: i.update(paths={"nope": ["a"]}),
    lambda i: i.update(paths={k: [1.5] for k in i["entries"]}),
    lambda i: i["items"][0].update(extra=1),
])
def test_a_damaged_or_hostile_index_is_refused(run, capsys, edit):
    run_dir, _ = run
    _reseal_index(_newest(run_dir), edit)
    _every_reader_refuses(run_dir, _newest(run_dir), capsys)


def test_a_resealed_truncated_or_swapped_shard_is_refused(run, capsys, tmp_path):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    data = (checkpoint / "dcp" / "__0_0.bin").read_bytes()
    _reseal(checkpoint, {"dcp/__0_0.bin": data[:-16]})
    _every_reader_refuses(run_dir, checkpoint, capsys, match="lies outside")
    # a rank's own part from another save, with hashes recomputed
    older = run_dir / "checkpoints" / "step_00000010"
    fresh = tmp_path / "fresh"
    shutil.copytree(older, fresh)
    shard = (older / "rank_00000" / "shard.json").read_bytes()
    other = json.loads(shard)
    other["step"] = 999
    _reseal(fresh, {"rank_00000/shard.json": json.dumps(other).encode()})
    with pytest.raises(CheckpointCorruptError, match="from another save"):
        verify_checkpoint(fresh)


def test_a_wrongly_typed_rank_state_is_a_typed_refusal(run, tmp_path):
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    for bad in (b"[]", b'{"box": {"__tensor__": 5}}', b'{"box": {"__tensor__": "nope"}}',
                b"\xff\xfe", b"[" * 100000 + b"]" * 100000):
        _reseal(checkpoint, {"rank_00000/state.json": bad})
        with pytest.raises(CkptlabError):
            read_sharded_state(checkpoint)


def test_a_torchscript_archive_in_a_shard_is_only_bytes(run, monkeypatch):
    """A shard holding a TorchScript archive instead of raw chunks: no code path interprets
    it, so it is refused (a value item is not JSON) or read as meaningless numbers, and
    nothing is ever unpickled or compiled."""
    run_dir, _ = run
    checkpoint = _newest(run_dir)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    archive = buffer.getvalue()
    size = (checkpoint / "dcp" / "__0_0.bin").stat().st_size
    _reseal(checkpoint, {"dcp/__0_0.bin": (archive * (size // len(archive) + 1))[:size]})

    def never(*args, **kwargs):
        raise AssertionError("a shard's bytes reached torch.load, torch.jit or pickle")

    for module, name in ((torch, "load"), (torch.jit, "load"), (pickle, "loads"),
                         (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, never)
    verify_checkpoint(checkpoint)  # resealed: the hashes match, it is "valid" bytes
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        _load_everything(checkpoint)


def test_a_checkpoint_deleted_while_verify_reads_it_is_gone_not_corrupt(run, monkeypatch):
    """Retention renames a checkpoint away (then deletes it) while a reader is verifying it:
    the reader must say it is gone, not that its shards are missing."""
    import ckptlab.engine.verified as verified

    run_dir, _ = run
    checkpoint = _newest(run_dir)
    real = verified.open_member
    calls = []

    def open_after_deletion(path, name, size):
        if not calls:
            calls.append(name)
            shutil.rmtree(path)
        return real(path, name, size)

    monkeypatch.setattr(verified, "open_member", open_after_deletion)
    from ckptlab.engine.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError):
        verify_checkpoint(checkpoint)


# --------------------------------------------------------------------------------------------
# Fuzz: resealed random mutations of the index and the manifest's sharded section
# --------------------------------------------------------------------------------------------

_STRANGE = [None, True, -1, 0, 2**63, 1.5, 1e300, "", "x" * 300, "../x", "/etc/passwd",
            [], {}, [0], {"a": 1}, "float32", "__0_0.bin", [2**40], [-1, -1]]


def _mutate(value, rng: random.Random):
    """Change one random leaf or key of a JSON tree to something strange."""
    if isinstance(value, dict) and value and rng.random() < 0.85:
        key = rng.choice(list(value))
        if rng.random() < 0.1:
            value.pop(key)
        else:
            value[key] = _mutate(value[key], rng)
        return value
    if isinstance(value, list) and value and rng.random() < 0.85:
        at = rng.randrange(len(value))
        value[at] = _mutate(value[at], rng)
        return value
    return copy.deepcopy(rng.choice(_STRANGE))


def test_fuzzed_sharded_checkpoints_load_exactly_or_fail_with_a_ckptlab_error(run, tmp_path):
    run_dir, _ = run
    pristine = tmp_path / "pristine"
    shutil.copytree(_newest(run_dir), pristine)
    expected = read_sharded_state(pristine)[1]
    rng = random.Random(20261207)
    outcomes = {"refused": 0, "loaded": 0}
    started = time.monotonic()
    for trial in range(120):
        target = tmp_path / f"t{trial}"
        shutil.copytree(pristine, target)
        if trial % 3:
            index = _index(target)
            for _ in range(rng.randint(1, 3)):
                _mutate(index, rng)
            try:
                data = json.dumps(index).encode()
            except ValueError:
                continue
            _reseal(target, {"dcp/index.json": data})
        else:
            _reseal(target, edit=lambda m: _mutate(m["sharded"], rng))
        try:
            verify_checkpoint(target)
            _, states = read_sharded_state(target)
            _load_everything(target)
        except CkptlabError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            assert states.keys() == expected.keys()
        shutil.rmtree(target)
    assert outcomes["refused"] > 50, outcomes
    assert time.monotonic() - started < 60


# --------------------------------------------------------------------------------------------
# The way out for an old checkpoint one trusts: migrate-sharded
# --------------------------------------------------------------------------------------------

def _rewrite_in_the_old_layout(checkpoint: Path) -> None:
    """What ckptlab 0.3 wrote: DCP's own FileSystemWriter (pickled .metadata, torch.save'd
    .distcp), manifest format 3. Made from a new checkpoint so both hold the same state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from ckptlab.engine.dcp_storage import VerifiedDCPReader

    reader = VerifiedDCPReader(checkpoint, read_manifest(checkpoint))
    flat = {fqn: torch.empty(tuple(m.size), dtype=m.properties.dtype)
            if hasattr(m, "size") else None
            for fqn, m in reader.metadata.state_dict_metadata.items()}
    from ckptlab.engine.distributed import _dcp_load

    _dcp_load(flat, reader, no_dist=True)
    shutil.rmtree(checkpoint / "dcp")
    dcp.save(flat, storage_writer=FileSystemWriter(str(checkpoint / "dcp")), no_dist=True)
    listed = {f"dcp/{p.name}": p.read_bytes() for p in (checkpoint / "dcp").iterdir()}

    def old(manifest):
        manifest["format_version"] = 3
        for name in ("dcp/index.json", "dcp/__0_0.bin"):
            manifest["files"].pop(name)

    _reseal(checkpoint, listed, edit=old)


def test_migrate_sharded_converts_a_trusted_old_checkpoint_and_changes_nothing_else(
        run, tmp_path, capsys):
    run_dir, weights = run
    checkpoint = _newest(run_dir)
    expected = _load_everything(checkpoint)
    _rewrite_in_the_old_layout(checkpoint)
    assert (checkpoint / "dcp" / ".metadata").exists()
    before = {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    with pytest.raises(UnsupportedFormatError, match="migrate-sharded"):
        read_manifest(checkpoint)
    # without the explicit word, nothing happens
    assert main(["migrate-sharded", str(checkpoint), "--out", str(tmp_path / "new")]) != 0
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main(["migrate-sharded", str(checkpoint), "--out", str(tmp_path / "new"),
                 "--trust-pickle"]) == 0
    assert "Resume with" in capsys.readouterr().out
    converted = tmp_path / "new" / "checkpoints" / "step_00000020"
    info = verify_checkpoint(converted)
    assert info.manifest["format_version"] == 4 and info.manifest["migrated_from"]
    loaded = _load_everything(converted)
    for part in ("model", "optim"):
        torch.testing.assert_close(loaded[part], expected[part], rtol=0, atol=0)
    assert read_sharded_state(converted)[1]["rank_00000"]["box"] == {"value": 20}
    assert latest_valid_checkpoint(tmp_path / "new" / "checkpoints").path == converted
    assert before == {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    # a used output directory is refused; a damaged old file is refused before unpickling
    assert main(["migrate-sharded", str(checkpoint), "--out", str(tmp_path / "new"),
                 "--trust-pickle"]) != 0
    (checkpoint / "dcp" / ".metadata").write_bytes(b"\x80\x04N.")
    assert main(["migrate-sharded", str(checkpoint), "--out", str(tmp_path / "other"),
                 "--trust-pickle"]) != 0
    assert "does not match the manifest" in capsys.readouterr().err
