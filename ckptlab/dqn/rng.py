"""Every random number generator a training run draws from, as one checkpointable component.

Introduced in notebook ``05_what_goes_in_a_checkpoint`` (what forgetting RNG state breaks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..engine.global_rng import GLOBAL_RNG_KEYS, GlobalRNG, seed_global_generators


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (and CUDA's, if present)."""
    seed_global_generators(seed)


class RNGStates:
    """The run's own generator plus the global Python, numpy, torch (and CUDA) generators.

    ``generator`` is the numpy Generator the training loop uses for exploration and replay
    sampling; ckptlab's own code draws only from it. The global generators are saved too
    (by the engine's :class:`~ckptlab.engine.GlobalRNG`, whose keys sit next to
    ``generator``), because user code, environments or libraries may draw from them.
    """

    def __init__(self, seed: int) -> None:
        self.generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))
        self.global_generators = GlobalRNG()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.bit_generator.state,
                **self.global_generators.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        bit_generator = getattr(np.random, state["generator"]["bit_generator"])()
        bit_generator.state = state["generator"]
        self.global_generators.load_state_dict({key: state[key] for key in GLOBAL_RNG_KEYS})
        self.generator = np.random.Generator(bit_generator)
