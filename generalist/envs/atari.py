"""Atari frames for the observation contract: one cropped, downsampled RGB frame per timestep.

Design choices:
- ALE v5 defaults (frameskip 4, sticky actions 0.25, minimal action set), no frame stacking and no max-pooling
  of consecutive frames: the transformer's context carries the history, as in Gato.
- Frame size 80 x 80 x 3. The playing field of Pong (rows 34..193 between the walls) and of Breakout (rows
  33..192, below the top wall, paddle included) is 160 x 160 pixels; the score above it is cropped away (the
  return is not an input of the policy). A 2 x 2 area average gives 80 x 80 = 25 patches of 16 x 16, the size
  the tokenizer benchmark assumes. The next multiple of 16 that keeps more detail, 160 x 160 (no
  downsampling), would cost 100 patches a step and leave only ~10 timesteps in a 1,024-token context instead
  of ~37. The ball (2 x 2 to 2 x 4 pixels) survives the average as at least one output pixel with a quarter
  of its contrast or more; tests/envs/test_atari.py finds it at the position the RAM gives.
- Area averaging, not subsampling: a stride-2 subsample keeps one pixel in four, and the ball is sometimes
  drawn 1 pixel wide (Breakout) or 2 rows tall, so a subsample would drop it on some frames; an average never
  drops an object, it only dims the small ones.
- No OpenCV: the resize is one reshape and one sum in numpy (Gymnasium's ``AtariPreprocessing`` and
  ``ResizeObservation`` need OpenCV and grayscale/square defaults we do not want).
- The 128 bytes of console RAM go into ``info["ram"]`` for the scripted experts; the agent sees only the image.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from generalist.envs.contract import Observation

ATARI_HEIGHT, ATARI_WIDTH = 210, 160
CROP_SIZE = 160  # rows and columns kept: the square playing field
DOWNSAMPLE = 2  # area-average factor: 160 -> 80
FRAME_SIZE = CROP_SIZE // DOWNSAMPLE  # 80: 5 x 5 patches of 16


def preprocess_frames(frames: np.ndarray, top: int) -> np.ndarray:
    """Crop rows [top, top+160) and 2x2-average: uint8 (..., 210, 160, 3) -> uint8 (..., 80, 80, 3)."""
    if frames.shape[-3:] != (ATARI_HEIGHT, ATARI_WIDTH, 3):
        raise ValueError(f"expected Atari frames (..., 210, 160, 3), got {frames.shape}")
    if not 0 <= top <= ATARI_HEIGHT - CROP_SIZE:
        raise ValueError(f"crop top {top} outside 0..{ATARI_HEIGHT - CROP_SIZE}")
    crop = frames[..., top : top + CROP_SIZE, :, :]
    # Pairwise sums of strided views in uint16 (4 x 255 fits): about 10x faster than a reshape-and-sum
    # reduction over non-contiguous axes. Written for DOWNSAMPLE == 2.
    total = np.add(crop[..., 0::2, :, :], crop[..., 1::2, :, :], dtype=np.uint16)
    total = np.add(total[..., :, 0::2, :], total[..., :, 1::2, :])
    total += DOWNSAMPLE**2 // 2  # round to nearest instead of flooring (which darkens)
    total //= DOWNSAMPLE**2
    return total.astype(np.uint8)


class AtariFrame(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """An ALE env as ``{"image": uint8 (80, 80, 3)}``, with the console RAM in ``info["ram"]``."""

    def __init__(self, env: gym.Env, top: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, top=top)
        gym.Wrapper.__init__(self, env)
        if env.observation_space.shape != (ATARI_HEIGHT, ATARI_WIDTH, 3):
            raise TypeError(f"AtariFrame needs RGB frames (210, 160, 3), got {env.observation_space}")
        self.top = top
        self.observation_space = spaces.Dict(
            {"image": spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)}
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Reset the ALE env; the observation is the preprocessed first frame."""
        frame, info = self.env.reset(seed=seed, options=options)
        return self._observation(frame), self._with_ram(info)

    def step(self, action: Any) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """Step the ALE env; the observation is the preprocessed frame after the action."""
        frame, reward, terminated, truncated, info = self.env.step(action)
        return self._observation(frame), reward, terminated, truncated, self._with_ram(info)

    def _observation(self, frame: np.ndarray) -> Observation:
        return {"image": preprocess_frames(frame, self.top)}

    def _with_ram(self, info: dict[str, Any]) -> dict[str, Any]:
        return {**info, "ram": self.env.unwrapped.ale.getRAM().copy()}
