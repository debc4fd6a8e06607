"""Exact resume for Stable-Baselines3 runs (the ``sb3`` extra: in a clone of ckptlab's
repository, ``pip install -c requirements.txt ".[sb3]"``).

:class:`CkptlabCallback` checkpoints an SB3 run through ckptlab's
:class:`~ckptlab.engine.CheckpointManager` - on ckptlab's save policies, with its retention,
atomic commits, hashes and fallback, and no pickle on any load - and restores the newest valid
checkpoint when the same script runs again, so ``model.learn(...)`` continues exactly where the
interrupted run was: policy, optimizer, counters and schedules, every random generator, every
sub-environment mid-episode, ``VecNormalize``'s statistics, SB3's episode buffers and DQN's
replay buffer. :func:`resume` loads a run into a freshly built model outside ``learn``.

Environments ckptlab does not know take part through two methods, ``get_state()`` and
``set_state(state)``; without them, they are refused by name, never approximated.

``python -m ckptlab.sb3.run`` trains a small PPO or DQN run with the callback (the tests kill
it with SIGKILL and resume it).

Its modules are in the module map of docs/architecture.md. Introduced in notebook
``11_bring_your_own_library``.
"""

from __future__ import annotations

try:
    import stable_baselines3 as _sb3  # noqa: F401 - only to say early what is missing
except ModuleNotFoundError as _missing:
    from .. import install_advice
    from ..engine import MissingExtraError

    _name = (_missing.name or "stable_baselines3").split(".")[0]
    # One line, as ckptlab.import_layer says it for every extra.
    raise MissingExtraError(
        f"ckptlab.sb3 needs {_name}, which is not installed: "
        f"{install_advice('sb3', 'stable-baselines3')}", name=_name) from None

from ._envs import WALL_CLOCK, UnsupportedEnvironmentError  # noqa: E402
from ._state import COUNTERS, PIECES, UnsupportedRunError, apply_state  # noqa: E402
from .callback import (  # noqa: E402
    DEFAULT_SAVE_EVERY_STEPS,
    EPISODE_END,
    CkptlabCallback,
    checkpoint_directory,
    checkpoint_summary,
    resume,
)

__all__ = ["CkptlabCallback", "resume", "checkpoint_directory", "checkpoint_summary",
           "apply_state", "UnsupportedEnvironmentError", "UnsupportedRunError",
           "DEFAULT_SAVE_EVERY_STEPS", "EPISODE_END", "COUNTERS", "PIECES", "WALL_CLOCK"]
