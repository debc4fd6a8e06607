"""A DQN run's save under a power cut: every crash state resumes with ``--resume auto`` and
trains on to its next save (issue 27)."""

from __future__ import annotations

import pytest

from ckptlab.dqn.crash_resume import TINY, explore_dqn_save
from ckptlab.engine.crash_states import MODELS, Fault


@pytest.mark.parametrize("model", MODELS)
def test_every_crash_state_of_a_dqn_save_resumes_with_resume_auto(model):
    found = explore_dqn_save(model)
    assert found.crash_states > found.disks > 1
    assert found.violating_states == 0 and not found.outside, \
        "\n".join(map(str, found.violations))


def test_the_resume_check_fails_when_the_save_forgets_an_fsync():
    found = explore_dqn_save("ordered", fault=Fault(drop_fsync="*/state.json"))
    assert found.violating_states > 0
    lost = next(v for v in found.violations if v.invariant == "not-durable")
    # the save of the last step returned, but a power cut sends --resume auto back a save
    assert f"step_{TINY.total_steps - TINY.save_every_steps:08d}" in lost.message
    assert "state.json" in lost.sequence.split("lost: ")[1]
