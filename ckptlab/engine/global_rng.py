"""The process-global random generators, as one component a checkpoint can hold.

Your own objects keep their generators in their state (a ``torch.Generator`` or numpy
``Generator`` attribute saved by their ``state_dict()``). But much code draws from the
process-global ones instead: ``random.random()``, ``np.random.rand()``, ``torch.randn()``
without a ``generator=``, dropout, weight initialisation, data augmentation, many libraries.
A resumed run that does not restore them draws other numbers than the uninterrupted run from
the first resumed step on. Register :class:`GlobalRNG` with the manager and they are saved and
restored with everything else::

    from ckptlab import CheckpointManager, GlobalRNG

    with CheckpointManager("runs/mine/checkpoints") as manager:
        manager.register("model", model)
        manager.register("optimizer", optimizer)
        manager.register("rng", GlobalRNG())   # Python, NumPy, torch CPU and CUDA generators
        manager.restore_latest()

The state is plain data: Python's Mersenne Twister words as a ``uint32`` array, NumPy's
legacy global state as a dict, torch's CPU state as a ``uint8`` tensor and one tensor per CUDA
device. The DQN run's ``rng`` component (:class:`ckptlab.dqn.RNGStates`) stores exactly these
keys next to its own generator.

Introduced in notebook ``08_review`` (checkpoint your own loop).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .errors import IncompatibleCheckpointError

# The keys of GlobalRNG's state, in the order they are written.
GLOBAL_RNG_KEYS = ("python", "numpy_global", "torch_cpu", "torch_cuda")


def seed_global_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (and every CUDA device's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class GlobalRNG:
    """Python's ``random``, NumPy's global ``np.random``, torch's CPU generator and every
    CUDA device's generator, saved and restored together.

    The object itself holds nothing: ``state_dict()`` reads the generators' state at that
    moment and ``load_state_dict()`` sets it, so one instance (or several) may be registered
    anywhere. CUDA states are saved only where CUDA is available; a checkpoint with CUDA
    states restored on a machine with another number of GPUs restores the rest and warns.
    """

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = random.getstate()
        return {
            # The Mersenne Twister's 625 words as one uint32 array, not 625 JSON numbers.
            "python": {"version": version, "internal": np.array(internal, dtype=np.uint32),
                       "gauss_next": gauss_next},
            "numpy_global": np.random.get_state(legacy=False),
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set every global generator to ``state``; a malformed state changes none of them."""
        if not isinstance(state, Mapping) or set(state) != set(GLOBAL_RNG_KEYS):
            found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state)
            raise IncompatibleCheckpointError(
                f"not a GlobalRNG state: expected the keys {list(GLOBAL_RNG_KEYS)}, found "
                f"{found}")
        # Everything is checked before anything is set, so a bad state leaves the process's
        # generators as they were.
        python_state = _python_state(state["python"])
        numpy_state = _numpy_state(state["numpy_global"])
        torch_state = _torch_state(state["torch_cpu"])
        cuda_states = list(state["torch_cuda"])
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        elif cuda_states:
            warnings.warn("the checkpoint holds CUDA RNG states for "
                          f"{len(cuda_states)} GPU(s) that this machine does not have; they "
                          "were not restored", stacklevel=3)


def _python_state(saved: Any) -> tuple[Any, ...]:
    try:
        internal = tuple(int(x) for x in saved["internal"])
        state = (int(saved["version"]), internal, saved["gauss_next"])
        random.Random().setstate(state)  # validates without touching the global one
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompatibleCheckpointError(f"the saved Python RNG state is malformed ({exc})") \
            from None
    return state


def _numpy_state(saved: Any) -> Any:
    try:
        np.random.RandomState().set_state(saved)  # validates without touching the global one
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompatibleCheckpointError(f"the saved NumPy RNG state is malformed ({exc})") \
            from None
    return saved


def _torch_state(saved: Any) -> torch.Tensor:
    expected = torch.get_rng_state()
    if not isinstance(saved, torch.Tensor) or saved.dtype != torch.uint8 \
            or saved.shape != expected.shape:
        what = (f"{saved.dtype} {tuple(saved.shape)}" if isinstance(saved, torch.Tensor)
                else type(saved).__name__)
        raise IncompatibleCheckpointError(
            f"the saved torch CPU RNG state is malformed: expected a uint8 tensor of shape "
            f"{tuple(expected.shape)}, found {what}")
    return saved
