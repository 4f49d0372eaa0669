"""The one interface between a policy and an environment: observations in, actions out.

Experts, the random baseline and the trained agent all implement `Policy`, so that recording, score
baselines and evaluation run any of them with the same loop. A policy sees the observation contract; the
scripted experts may also read privileged state (Atari RAM, the raw simulator state) from the step's
``info``, which the agent never does.

Actions: an int in 0..n-1 for discrete tasks; a float32 1-D array in [-1, 1] for continuous tasks (the env's
``RescaleAction`` maps it to the real bounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces

from generalist.envs.contract import Observation

Action = int | np.ndarray


@runtime_checkable
class Policy(Protocol):
    """Anything that acts in an environment of the registry."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; `seed` seeds any randomness of the policy itself."""
        ...

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """The action for this observation (info carries privileged state for scripted experts only)."""
        ...


class RandomPolicy:
    """Uniformly random actions from the task's action space: the 0% of the expert-normalized score."""

    def __init__(self, action_space: spaces.Space) -> None:
        self.action_space = action_space

    def reset(self, seed: int | None = None) -> None:
        """Seed the action sampler so that a seeded episode is reproducible."""
        self.action_space.seed(seed)

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """A uniform sample of the action space."""
        action = self.action_space.sample()
        return int(action) if isinstance(self.action_space, spaces.Discrete) else action
