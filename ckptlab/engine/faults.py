"""Deterministic fault injection for crash tests.

Setting ``CKPTLAB_FAULT=phase@step[,phase@step...]`` in a process's environment makes that
process kill itself with SIGKILL (no cleanup, no ``finally`` blocks, exactly like ``kill -9``)
when it reaches ``phase`` at training step ``step``. The tests and lesson
``04_interrupt_and_resume`` use it to crash a real training process at an exact moment,
including in the middle of a save.

Phases, in the order a training step meets them:

* ``step`` - right after environment step ``step`` and its update (mid-episode, between saves);
* ``save:uploading`` - (object stores) a part of the tensors object uploaded (a small object is
  one part), the rest of the save's data perhaps not, nothing committed;
* ``save:files-written`` - checkpoint files written into the temporary directory, not committed;
* ``save:committed`` - checkpoint directory renamed into place, ``latest`` pointer not updated;
* ``save:pointer-temp`` - new pointer written to its temporary file, not yet swapped in;
* ``save:pointer-updated`` - pointer swapped, old checkpoints not yet pruned.

With the variable unset, :func:`fault_point` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
import sys

ENV_VAR = "CKPTLAB_FAULT"

PHASES = ("step", "save:uploading", "save:files-written", "save:committed", "save:pointer-temp",
          "save:pointer-updated")
# The phases a save to a local directory meets (save:uploading fires only on an object store).
LOCAL_PHASES = tuple(phase for phase in PHASES if phase != "save:uploading")

_parsed: tuple[str, frozenset[tuple[str, int]]] | None = None


def _targets() -> frozenset[tuple[str, int]]:
    global _parsed  # cache of the parsed variable, keyed by its raw text
    raw = os.environ.get(ENV_VAR, "")
    if _parsed is None or _parsed[0] != raw:
        targets = set()
        for item in filter(None, (part.strip() for part in raw.split(","))):
            phase, _, step = item.rpartition("@")
            if phase not in PHASES or not step.isdigit():
                raise ValueError(f"{ENV_VAR}: cannot parse {item!r}; expected PHASE@STEP with "
                                 f"PHASE one of {', '.join(PHASES)}")
            targets.add((phase, int(step)))
        _parsed = (raw, frozenset(targets))
    return _parsed[1]


def fault_point(phase: str, step: int) -> None:
    """SIGKILL this process if ``CKPTLAB_FAULT`` names ``phase@step``."""
    if (phase, step) in _targets():
        sys.stdout.flush()
        sys.stderr.write(f"ckptlab: injected SIGKILL at {phase}@{step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
