"""Atari preprocessing: shapes and averaging, and the ball still visible where the RAM says it is."""

import numpy as np
import pytest

from generalist.envs import TASKS, make
from generalist.envs.atari import CROP_SIZE, DOWNSAMPLE, FRAME_SIZE, preprocess_frames


def test_preprocess_crops_and_averages_2x2_blocks() -> None:
    frames = np.zeros((2, 210, 160, 3), np.uint8)
    frames[:, :34] = 255  # above the crop: must not leak in
    frames[0, 34, 0] = 200  # one pixel of a 2x2 block: the average keeps a quarter of it
    frames[1, 34:36, 2:4] = [10, 20, 30]  # a whole block: kept exactly
    out = preprocess_frames(frames, top=34)
    assert out.shape == (2, FRAME_SIZE, FRAME_SIZE, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [50, 50, 50]
    assert out[1, 0, 1].tolist() == [10, 20, 30]
    assert out.sum() == 50 * 3 + 60  # nothing else is lit


def test_preprocess_rounds_instead_of_truncating() -> None:
    frame = np.zeros((210, 160, 3), np.uint8)
    frame[100, 0] = 3  # 3 / 4 = 0.75 rounds to 1
    assert preprocess_frames(frame, top=34)[(100 - 34) // 2, 0, 0] == 1


def test_preprocess_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match="210, 160, 3"):
        preprocess_frames(np.zeros((84, 84, 3), np.uint8), top=0)
    with pytest.raises(ValueError, match="crop top"):
        preprocess_frames(np.zeros((210, 160, 3), np.uint8), top=60)


# Where each game draws its ball, from RAM (docs/FACTS.md bytes; offsets measured against rendered frames):
# (ball x byte, ball y byte, pixel column = x + dx, pixel top row = y + dy, ball colour, background colour,
#  rows where the ball is over plain background).
BALLS = {
    "pong": (49, 54, -49, -15, (236, 236, 236), (144, 72, 17), (34, 190)),
    "breakout": (99, 101, -49, 9, (200, 72, 72), (0, 0, 0), (96, 186)),
}


@pytest.mark.parametrize("task", ["pong", "breakout"])
def test_ball_visible_after_preprocessing(task: str) -> None:
    """Erasing the ball's pixels from the raw frame changes the 80x80 frame at the RAM position, every time."""
    x_byte, y_byte, dx, dy, ball, background, (row_lo, row_hi) = BALLS[task]
    top = TASKS[task].wrapper.keywords["top"]
    env = make(task, seed=0)
    expert = TASKS[task].expert()
    observation, info = env.reset(seed=0)
    expert.reset(0)
    checked = 0
    for _ in range(400):
        observation, _, terminated, truncated, info = env.step(expert.act(observation, info))
        if terminated or truncated:
            break
        raw = env.unwrapped.ale.getScreenRGB()
        # The wrapper's frame is the preprocessed screen the RAM describes.
        np.testing.assert_array_equal(observation["image"], preprocess_frames(raw, top))
        ram = info["ram"]
        col, row = int(ram[x_byte]) + dx, int(ram[y_byte]) + dy
        if ram[y_byte] == 0 or not (row_lo <= row and row + 4 <= row_hi) or not 8 <= col <= 150:
            continue  # no ball in play, or the ball over walls, bricks or score
        box = (slice(row - 1, row + 5), slice(col - 1, col + 3))
        ball_pixels = np.zeros(raw.shape[:2], bool)
        ball_pixels[box] = (raw[box] == ball).all(-1)
        if not ball_pixels.any():
            continue  # the ball is not drawn on this frame (it blinks between points)
        erased = raw.copy()
        erased[ball_pixels] = background
        change = np.abs(preprocess_frames(raw, top).astype(int) - preprocess_frames(erased, top).astype(int))
        out_rows = slice(max(row - 1 - top, 0) // DOWNSAMPLE, (row + 5 - top) // DOWNSAMPLE + 1)
        out_cols = slice((col - 1) // DOWNSAMPLE, (col + 3) // DOWNSAMPLE + 1)
        # At least a quarter of the ball's contrast survives, at the RAM position and nowhere else.
        contrast = np.abs(np.subtract(ball, background)).max()
        assert change[out_rows, out_cols].max() >= contrast // 4 - 1, f"ball lost at row {row}, col {col}"
        change[out_rows, out_cols] = 0
        assert change.max() == 0
        checked += 1
    assert checked >= 100, f"only {checked} frames had a ball to check"
    assert CROP_SIZE // DOWNSAMPLE == observation["image"].shape[0]
