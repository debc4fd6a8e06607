"""Shared fixtures: small, fast configurations and helpers to compare runs bit for bit."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptlab import DQNConfig, load_checkpoint_state

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def jupyter_lab(tmp_path_factory):
    """One JupyterLab server for every browser test: ``(url, token, notebooks_root)``."""
    from browser_support import start_lab

    yield from start_lab(tmp_path_factory)


@pytest.fixture(autouse=True)
def _stop_lab_kernels(request):
    """After each browser test, shut down the kernels it started (they would idle on)."""
    yield
    if "jupyter_lab" in request.fixturenames:
        from browser_support import stop_kernels

        stop_kernels(request.getfixturevalue("jupyter_lab"))

# A run that learns something but takes about a second: episodes end mid-epoch, updates start
# early, the target syncs and several checkpoints are written. Every setting that shapes the
# trajectory is given here, so retuning DQNConfig's defaults does not change what tests see
# (which checkpoint is the best, when an episode ends).
FAST = dict(hidden_sizes=[64, 64], total_steps=2_400, steps_per_epoch=400, learning_starts=300,
            buffer_capacity=3_000, target_update_every=100, exploration_steps=1_500,
            learning_rate=2.5e-3, batch_size=64, eval_episodes=2, save_every_steps=800)


@pytest.fixture
def fast_config() -> DQNConfig:
    return DQNConfig(**FAST)


class Counter:
    """The smallest possible stateful component (not a torch object)."""

    def __init__(self) -> None:
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (to prove nothing changed).

    The writer lock's files are left out: taking the lock records who holds it, which is
    bookkeeping, not data.
    """
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".writer.lock" not in p.name}


def assert_same_state(ckpt_a: Path, ckpt_b: Path) -> None:
    """Every component of two checkpoints is equal, bit for bit, with readable failures."""
    _, a = load_checkpoint_state(ckpt_a)
    _, b = load_checkpoint_state(ckpt_b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert_equal(a[name], b[name], name)


def assert_equal(x, y, path: str) -> None:
    assert type(x) is type(y), f"{path}: {type(x).__name__} vs {type(y).__name__}"
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert torch.equal(x.view(torch.uint8) if x.dtype == torch.bool else x, y), \
            f"{path}: tensors differ"
    elif hasattr(x, "dtype") and hasattr(x, "shape"):  # numpy array
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), f"{path}: arrays differ"
    elif isinstance(x, dict):
        assert list(x) == list(y), f"{path}: keys differ"
        for k in x:
            assert_equal(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), f"{path}: lengths differ"
        for i, (u, v) in enumerate(zip(x, y)):
            assert_equal(u, v, f"{path}/{i}")
    elif isinstance(x, float) and x != x:
        assert y != y, f"{path}: nan vs {y}"
    else:
        assert x == y, f"{path}: {x!r} != {y!r}"


def run_cli(*args: str, env_extra: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ckptlab ...`` in a real subprocess (one torch thread, like the tests)."""
    env = {k: v for k, v in os.environ.items() if k != "CKPTLAB_FAULT"}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ckptlab", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)
