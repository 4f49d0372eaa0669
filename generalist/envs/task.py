"""What a task is: its env, its contract wrapper, its action space, its expert and its step cap.

The registered tasks (`generalist.envs.registry`) and the tasks of a user's env or Minari dataset
(`generalist.envs.external`) are both `Task`s; this module is below both, so neither imports the other's
internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from generalist.envs.policies import Policy
from generalist.tokenizers import ActionSpec


@dataclass(frozen=True)
class HumanScores:
    """Published human and random-agent scores of an Atari game."""

    human: float
    random: float


@dataclass(frozen=True)
class Task:
    """One task: its env, its contract wrapper, its action space, its expert and its step cap."""

    name: str
    env_id: str
    wrapper: Callable[[gym.Env], gym.Env]
    action_kind: Literal["discrete", "continuous"]
    action_size: int  # number of actions (discrete) or action dimensions (continuous)
    expert: Callable[[], Policy]
    max_episode_steps: int
    env_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    human_scores: HumanScores | None = None
    steps_without_reward: int | None = None  # truncate an episode after this many steps with no reward
    env_spec: EnvSpec | None = None  # made from this spec instead of env_id (a Minari dataset's recorded env)
    expected_action_space: spaces.Space | None = None  # the env's must equal it (a Minari dataset's)
    reference_scores: tuple[float, float] | None = None  # returns normalized to 0 and 1 (tasks with no baselines)
    action_names: tuple[str, ...] = ()  # a discrete task's action names by id, for tables; empty: ids are shown

    def __post_init__(self) -> None:
        if self.action_names and (self.action_kind != "discrete" or len(self.action_names) != self.action_size):
            raise ValueError(f"{self.name}: action_names must name each of the {self.action_size} discrete actions, "
                             f"got {self.action_names!r} for a {self.action_kind} action space")

    @property
    def is_atari(self) -> bool:
        """Whether the task is an Atari game (ALE), played from pixels."""
        return self.env_id.startswith("ALE/")

    def action_space(self) -> spaces.Space:
        """The action space the agent sees: Discrete(n), or Box(-1, 1, (n,)) float32."""
        if self.action_kind == "discrete":
            return spaces.Discrete(self.action_size)
        return spaces.Box(-1.0, 1.0, (self.action_size,), np.float32)

    def action_spec(self) -> ActionSpec:
        """How the agent's actions of this task become tokens: one discrete slot, or one bin per dimension."""
        if self.action_kind == "discrete":
            return ActionSpec("discrete", 1, self.action_size)
        return ActionSpec("continuous", self.action_size)

    def action_name(self, action: int) -> str:
        """A discrete action's name (its id where the task names none)."""
        return self.action_names[action] if self.action_names else str(action)

    def expert_name(self) -> str:
        """The expert's name as stored beside recorded data."""
        factory = self.expert
        while isinstance(factory, partial):
            factory = factory.func
        return "none" if factory.__name__ == "no_expert" else factory.__name__
