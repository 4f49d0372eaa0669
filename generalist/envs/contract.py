"""The observation contract at the environment boundary, and the wrappers that produce it.

Every task's environment returns a dict with a subset of these keys and nothing else; the tokenizer reads
exactly this (docs/DESIGN.md, "One timestep"):

- ``"text"``: str
- ``"image"``: uint8 (H, W, 3), RGB, H and W multiples of 16 (the patch size)
- ``"continuous"``: float32 (n,)
- ``"discrete"``: int64 (n,), values 0..1023

Design choices:
- The contract is a ``gymnasium.spaces.Dict`` so that ``gymnasium.utils.env_checker.check_env`` checks it.
- The wrappers record their constructor arguments (``RecordConstructorArgs``) so that ``env.spec`` can rebuild
  the wrapped env, which ``check_env`` does to test the render modes.
- Continuous actions are rescaled to [-1, 1] by Gymnasium's own ``RescaleAction`` (in ``registry.make``), so
  the agent emits values the tokenizer bins without mu-law.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

OBSERVATION_KEYS = ("text", "image", "continuous", "discrete")
PATCH_SIZE = 16
DISCRETE_VALUES = 1024

Observation = dict[str, Any]


def check_observation(observation: Mapping[str, Any]) -> None:
    """Raise ValueError naming the key and the problem if `observation` breaks the contract."""
    if not isinstance(observation, Mapping):
        raise ValueError(f"an observation must be a dict, got {type(observation).__name__}")
    unknown = set(observation) - set(OBSERVATION_KEYS)
    if unknown:
        raise ValueError(f"unknown observation keys {sorted(unknown)}; allowed: {OBSERVATION_KEYS}")
    if "text" in observation and not isinstance(observation["text"], str):
        raise ValueError(f"'text' must be str, got {type(observation['text']).__name__}")
    if "image" in observation:
        image = observation["image"]
        ok = (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
            and image.shape[0] % PATCH_SIZE == 0
            and image.shape[1] % PATCH_SIZE == 0
        )
        if not ok:
            raise ValueError(f"'image' must be uint8 (H, W, 3) with H, W multiples of 16, got {_describe(image)}")
    if "continuous" in observation:
        values = observation["continuous"]
        if not (isinstance(values, np.ndarray) and values.dtype == np.float32 and values.ndim == 1):
            raise ValueError(f"'continuous' must be a float32 1-D array, got {_describe(values)}")
        if not np.all(np.isfinite(values)):
            raise ValueError("'continuous' holds NaN or infinity")
    if "discrete" in observation:
        values = observation["discrete"]
        if not (isinstance(values, np.ndarray) and values.dtype == np.int64 and values.ndim == 1):
            raise ValueError(f"'discrete' must be an int64 1-D array, got {_describe(values)}")
        if values.size and (values.min() < 0 or values.max() >= DISCRETE_VALUES):
            raise ValueError(f"'discrete' values must lie in 0..{DISCRETE_VALUES - 1}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


class VectorObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A Box observation as ``{"continuous": float32 (n,)}``; the raw state stays readable by experts."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise TypeError(f"VectorObservation needs a 1-D Box observation space, got {box}")
        self.observation_space = spaces.Dict(
            {
                "continuous": spaces.Box(
                    box.low.astype(np.float32), box.high.astype(np.float32), box.shape, np.float32
                )
            }
        )

    def observation(self, observation: np.ndarray) -> Observation:
        """The raw vector as float32 under the key ``continuous``."""
        return {"continuous": np.asarray(observation, dtype=np.float32)}


class DiscreteObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A Discrete or MultiDiscrete observation (each value < 1024) as ``{"discrete": int64 (n,)}``."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if isinstance(space, spaces.Discrete):
            nvec = np.array([space.n], dtype=np.int64)
        elif isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            nvec = space.nvec.astype(np.int64)
        else:
            raise TypeError(f"DiscreteObservation needs a Discrete or 1-D MultiDiscrete space, got {space}")
        if nvec.max() > DISCRETE_VALUES:
            raise ValueError(f"discrete observations must take fewer than {DISCRETE_VALUES + 1} values")
        self._start = np.atleast_1d(np.asarray(getattr(space, "start", 0), dtype=np.int64))
        self.observation_space = spaces.Dict({"discrete": spaces.MultiDiscrete(nvec, dtype=np.int64)})

    def observation(self, observation: Any) -> Observation:
        """The values shifted to start at 0, as an int64 1-D array under the key ``discrete``."""
        return {"discrete": np.atleast_1d(np.asarray(observation, dtype=np.int64)) - self._start}


class SeedEveryReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Seed every reset: an unseeded reset uses the last seed plus `stride`, so every episode's seed is known.

    With no seed ever given, the first one is drawn from OS entropy (and still reported).

    The seed of the current episode is in ``info["seed"]``. Vector envs autoreset without a seed, so this is
    what keeps their later episodes reproducible and identifiable.
    """

    def __init__(self, env: gym.Env, seed: int | None = None, stride: int = 1) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed, stride=stride)
        gym.Wrapper.__init__(self, env)
        self._next_seed = seed
        self._stride = stride

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Reset with `seed`, or with the previous episode's seed plus `stride` when `seed` is None."""
        if seed is None:
            seed = self._next_seed if self._next_seed is not None else _fresh_seed()
        observation, info = self.env.reset(seed=seed, options=options)
        self._next_seed = seed + self._stride
        return observation, {**info, "seed": seed}


class TruncateWithoutReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End an episode (truncated) once `steps` steps in a row have paid no reward.

    Breakout serves the ball only on FIRE: an agent that never fires would otherwise play on to the 27,000-step
    cap without a single event, hours of evaluation on a CPU. The step count is ``info["steps_without_reward"]``;
    ``info["stalled"]`` is True on the step the limit ends.
    """

    def __init__(self, env: gym.Env, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        gym.utils.RecordConstructorArgs.__init__(self, steps=steps)
        gym.Wrapper.__init__(self, env)
        self._limit, self._quiet = steps, 0

    def reset(self, **kwargs: Any) -> tuple[Observation, dict[str, Any]]:
        """Reset the env and the count."""
        self._quiet = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Observation, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step, counting steps without reward; at the limit the episode is truncated."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._quiet = 0 if reward != 0 else self._quiet + 1
        stalled = self._quiet >= self._limit and not terminated
        return observation, reward, terminated, truncated or stalled, {
            **info, "steps_without_reward": self._quiet, "stalled": stalled
        }


def _fresh_seed() -> int:
    # Drawn from OS entropy only when the caller gave no seed at all; it is still reported in info["seed"].
    return int(np.random.SeedSequence().entropy % 2**31)
