"""Save policies in the DQN run's own terms: episodes and epochs.

The engine's :class:`~ckptlab.engine.SaveContext` carries named events and counters; the
Trainer reports these after every step, and the policies here read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.policies import EveryNCounts

EPISODE_END = "episode_end"  # an episode finished at this step
EPOCH_END = "epoch_end"      # an epoch (``steps_per_epoch`` steps) finished at this step


@dataclass
class EveryNEpisodes(EveryNCounts):
    """Save when an episode ends and the episode count is a multiple of ``n``."""

    counter: str = "episode"
    event: str = EPISODE_END
