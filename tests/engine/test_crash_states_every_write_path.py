"""Every write path of the engine, every crash state, both persistence models: no violation
(issue 27). A failure prints each broken invariant with the crash sequence that leads to it.

The explorations that found the bugs fixed since (delete, prune and retention's trash order;
rollback's folders and moves; the decision log's torn line; export's new folder) are the
regression tests of those fixes; tests/engine/test_crash_states.py pins each fixed order."""

from __future__ import annotations

import pytest

from ckptlab.engine.crash_recovery import WORKLOADS, explore_operation
from ckptlab.engine.crash_states import MODELS


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("operation", sorted(WORKLOADS))
def test_every_crash_state_of_every_write_path_recovers(operation, model):
    found = explore_operation(operation, model)
    assert found.crash_states > 0 and found.disks > 0
    assert not found.outside, found.outside
    assert found.violating_states == 0, "\n".join(map(str, found.violations))
