"""Every random number generator a training run draws from, as one checkpointable component.

Introduced in notebook ``05_what_goes_in_a_checkpoint`` (what forgetting RNG state breaks).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (and CUDA's, if present)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class RNGStates:
    """The run's own generator plus the global Python, numpy, torch (and CUDA) generators.

    ``generator`` is the numpy Generator the training loop uses for exploration and replay
    sampling; ckptlab's own code draws only from it. The global generators are saved too,
    because user code, environments or libraries may draw from them.
    """

    def __init__(self, seed: int) -> None:
        self.generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "generator": self.generator.bit_generator.state,
            # Mersenne Twister words as one uint32 array rather than 625 JSON numbers.
            "python": {"version": version, "internal": np.array(internal, dtype=np.uint32),
                       "gauss_next": gauss_next},
            "numpy_global": np.random.get_state(legacy=False),
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        bit_generator = getattr(np.random, state["generator"]["bit_generator"])()
        bit_generator.state = state["generator"]
        self.generator = np.random.Generator(bit_generator)
        python = state["python"]
        random.setstate((int(python["version"]),
                         tuple(int(x) for x in python["internal"]), python["gauss_next"]))
        np.random.set_state(state["numpy_global"])
        torch.set_rng_state(state["torch_cpu"])
        cuda_states = list(state["torch_cuda"])
        if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        elif cuda_states:
            warnings.warn("the checkpoint holds CUDA RNG states for "
                          f"{len(cuda_states)} GPU(s) that this machine does not have; they "
                          "were not restored", stacklevel=2)
