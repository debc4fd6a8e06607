"""No new version strands an old checkpoint: data/checkpoints/ holds one checkpoint written by
each released format version - by that release's own code (tools/record_reference_data.py) -
and today's ckptlab must verify it, decode every component, and resume training from it."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from ckptlab import Trainer, load_checkpoint_state, verify_checkpoint
from ckptlab.dqn.resume import checkpoint_config
from ckptlab.engine import read_manifest
from ckptlab.engine.format import NEWEST_FORMAT_VERSION

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "checkpoints"
COMPONENTS = {"agent", "env", "exploration", "metrics", "progress", "replay_buffer", "rng"}


def recorded(version: int) -> tuple[Path, dict]:
    folder = DATA / f"format-v{version}"
    provenance = json.loads((folder / "provenance.json").read_text("utf-8"))
    return folder / provenance["checkpoint"], provenance


def test_every_released_version_has_a_recorded_checkpoint_with_its_provenance():
    assert sorted(p.name for p in DATA.iterdir()) == [
        f"format-v{v}" for v in range(1, NEWEST_FORMAT_VERSION + 1)], \
        "a new format version needs its checkpoint: tools/record_reference_data.py checkpoints"
    for version in range(1, NEWEST_FORMAT_VERSION + 1):
        checkpoint, provenance = recorded(version)
        assert provenance["format_version"] == version
        assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"])
        assert provenance["command"].startswith("python -m ckptlab train")
        assert provenance["recorded"] and provenance["release"].startswith("ckptlab ")
        assert read_manifest(checkpoint)["format_version"] == version


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_one_process_checkpoint_of_every_version_is_read_and_resumed(version, tmp_path):
    source, provenance = recorded(version)
    checkpoint = tmp_path / source.name
    shutil.copytree(source, checkpoint)
    info = verify_checkpoint(checkpoint)          # every hash, the manifest's own included
    _, states = load_checkpoint_state(checkpoint)
    assert set(states) == COMPONENTS
    assert states["progress"]["step"] == 400
    assert states["replay_buffer"]["size"] == provenance["config"]["buffer_capacity"]
    config = dataclasses.replace(checkpoint_config(info), total_steps=450)
    with Trainer(config, tmp_path / "continued") as trainer:
        trainer.restore(checkpoint)
        assert trainer.progress.step == 400
        trainer.train()
        assert trainer.progress.step == 450
    # reading changed nothing in the old checkpoint
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == \
        {p.name: p.read_bytes() for p in source.iterdir()}


def test_a_sharded_checkpoint_of_format_4_is_read(tmp_path):
    from ckptlab.engine.distributed import read_sharded_state

    source, provenance = recorded(4)
    checkpoint = tmp_path / source.name
    shutil.copytree(source, checkpoint)
    assert verify_checkpoint(checkpoint).name == source.name
    info, states = read_sharded_state(checkpoint)
    assert info.manifest["sharded"]["world_size"] == provenance["ranks"] == 2
    assert {"dcp/model", "dcp/optim", "rank_00000", "rank_00001"} <= set(states)
    assert [states[f"rank_{r:05d}"]["progress"]["step"] for r in (0, 1)] == [400, 400]
