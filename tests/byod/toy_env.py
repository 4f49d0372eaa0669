"""A hand-made Gymnasium env with a Dict observation (a small image, a vector, a discrete value) and a Box action,
for the bring-your-own-data tests. Importing this module registers it as ``ToyDict-v0``; ``gym.make(
"toy_env:ToyDict-v0")`` imports it when its directory is on the path."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "ToyDict-v0"


class ToyDictEnv(gym.Env):
    """Steer a point to the origin: the vector is its position, the image shows it, the discrete value counts steps.

    The action (2 values in [-2, 2]) moves the point by half its value; the reward is minus its distance to the
    origin. The image is
    20x24 (not a multiple of the patch size) and the discrete space starts at 3, so the mapping's padding and
    shift are exercised.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None, length: int = 12) -> None:
        self.render_mode, self.length = render_mode, length
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (20, 24, 3), np.uint8),
            "vector": spaces.Box(-10.0, 10.0, (2,), np.float32),
            "count": spaces.Discrete(length + 1, start=3),
        })
        self.action_space = spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.position = np.zeros(2, np.float32)
        self.steps = 0

    def _observation(self) -> dict[str, Any]:
        image = np.zeros((20, 24, 3), np.uint8)
        row, col = np.clip(((self.position + 10) / 20 * [19, 23]).astype(int), 0, [19, 23])
        image[row, col] = 255
        return {"image": image, "vector": self.position.copy(), "count": self.steps + 3}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, Any], dict]:
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-8, 8, 2).astype(np.float32)
        self.steps = 0
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        self.position = np.clip(self.position + 0.5 * np.clip(action, -2, 2), -10, 10).astype(np.float32)
        self.steps += 1
        distance = float(np.linalg.norm(self.position))
        return self._observation(), -distance, distance < 0.5, self.steps >= self.length, {}

    def render(self) -> np.ndarray:
        return self._observation()["image"]


def expert(observation: dict[str, Any]) -> np.ndarray:
    """Moves straight to the origin (in the env's own action space)."""
    return np.clip(-observation["vector"], -2, 2).astype(np.float32)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=f"{__name__}:ToyDictEnv", max_episode_steps=50)
