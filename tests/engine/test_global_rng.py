"""GlobalRNG: the process-global generators (Python, NumPy, torch CPU and CUDA) as a component
of any CheckpointManager, so a loop that draws from them resumes bit for bit; and the DQN run's
``rng`` component, which stores the same keys, keeps its format."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from ckptlab import CheckpointManager, GlobalRNG, IncompatibleCheckpointError
from ckptlab.engine import GLOBAL_RNG_KEYS, seed_global_generators


class Step:
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = int(state["value"])


def draws() -> tuple[float, float, float]:
    """One draw from each global generator, as a loop, dropout or a library would."""
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def loop(directory, total: int, *, stop_after: int | None = None,
         register_globals: bool = True) -> list[tuple[float, float, float]]:
    """A loop that draws from the global generators at every step, saving every 5 steps."""
    seen = []
    seed_global_generators(0)
    step = Step()
    with CheckpointManager(directory) as manager:
        manager.register("step", step)
        if register_globals:
            manager.register("rng", GlobalRNG())
        manager.restore_latest()
        while step.value < total:
            step.value += 1
            seen.append(draws())
            if step.value % 5 == 0:
                manager.save(step.value)
            if step.value == stop_after:
                return seen
    return seen


def test_a_loop_drawing_from_the_global_generators_resumes_bit_for_bit(tmp_path):
    straight = loop(tmp_path / "straight", 20)
    first = loop(tmp_path / "killed", 20, stop_after=12)   # "killed" after step 12
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)       # whatever the new process's generators are
    resumed = loop(tmp_path / "killed", 20)                 # resumes from step 10
    assert len(first) == 12 and len(resumed) == 10
    assert resumed == straight[10:]


def test_without_it_the_resumed_draws_differ(tmp_path):
    """The control: the same loop, the global generators not registered."""
    straight = loop(tmp_path / "straight", 20, register_globals=False)
    loop(tmp_path / "killed", 20, stop_after=12, register_globals=False)
    resumed = loop(tmp_path / "killed", 20, register_globals=False)
    assert resumed != straight[10:]


def test_state_holds_exactly_the_four_generators():
    state = GlobalRNG().state_dict()
    assert tuple(state) == GLOBAL_RNG_KEYS
    assert state["python"]["internal"].dtype == np.uint32
    assert state["torch_cpu"].dtype == torch.uint8
    expected_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(state["torch_cuda"]) == expected_cuda


def test_a_malformed_state_is_refused_and_changes_no_generator():
    seed_global_generators(3)
    good = GlobalRNG().state_dict()
    before = GlobalRNG().state_dict()
    bad_states = [
        {k: v for k, v in good.items() if k != "torch_cpu"},
        {**good, "torch_cpu": good["torch_cpu"][:10]},
        {**good, "numpy_global": {"bit_generator": "MT19937", "state": {}}},
        {**good, "python": {"version": 3, "internal": [1, 2], "gauss_next": None}},
        "not a state",
    ]
    for bad in bad_states:
        with pytest.raises(IncompatibleCheckpointError):
            GlobalRNG().load_state_dict(bad)
        after = GlobalRNG().state_dict()
        assert random.getstate() == _python(before)
        assert np.array_equal(after["numpy_global"]["state"]["key"],
                              before["numpy_global"]["state"]["key"])
        assert torch.equal(after["torch_cpu"], before["torch_cpu"])


def _python(state):
    python = state["python"]
    return python["version"], tuple(int(x) for x in python["internal"]), python["gauss_next"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_states_from_another_machine_warn_and_the_rest_is_restored():
    seed_global_generators(5)
    state = GlobalRNG().state_dict()
    expected = draws()
    state["torch_cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    seed_global_generators(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GlobalRNG().load_state_dict(state)
    assert any("CUDA RNG states for 1 GPU" in str(w.message) for w in caught)
    assert draws() == expected


def test_the_dqn_runs_rng_component_stores_the_same_keys_beside_its_generator():
    from ckptlab.dqn import RNGStates

    seed_global_generators(7)
    rng = RNGStates(seed=1)
    state = rng.state_dict()
    assert tuple(state) == ("generator", *GLOBAL_RNG_KEYS)
    glob = GlobalRNG().state_dict()
    assert torch.equal(state["torch_cpu"], glob["torch_cpu"])
    assert np.array_equal(state["python"]["internal"], glob["python"]["internal"])
    expected = (draws(), rng.generator.random())
    seed_global_generators(8)
    other = RNGStates(seed=2)
    other.load_state_dict(state)
    assert (draws(), other.generator.random()) == expected
