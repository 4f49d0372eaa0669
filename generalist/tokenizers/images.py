"""Images to 16x16 patches and patch position buckets.

An image (H, W, C) becomes its 16x16 patches in raster order (left to right, then top to bottom), each patch
channels-first (C, 16, 16) as a convolution reads it. Pixels are scaled to [-1, 1] and then divided by 4
(Gato section 2.1), so patch values lie in [-0.25, 0.25]. uint8 images are read as 0..255; float images must
already lie in [0, 1].

When H or W is not a multiple of 16, the image is padded at the bottom and on the right up to the next
multiple with zeros in the scaled space (mid-grey, the neutral input of the patch network); the padded
patches are ordinary patches of the grid. A 210x160 Atari frame thus becomes a 14x10 grid, its last patch row
holding 2 image rows and 14 padding rows. Cropping or resizing to a multiple of 16 is the env wrapper's job.

Patch positions (Gato section 2.3): the patch at row r of R rows spans the normalized interval
[r/R, (r+1)/R]; its ends are quantized into 128 buckets, `lo = round(128 r / R)`, `hi = round(128 (r+1) / R)`,
and the patch owns the half-open bucket range [lo, hi). Training samples a bucket uniformly in that range,
evaluation takes its middle `(lo + hi) // 2`. Columns likewise. Example: 4 rows, row 1 spans [0.25, 0.5]:
buckets 32..64, evaluation 48; 5 columns, column 2 spans [0.4, 0.6]: buckets 51..77, evaluation 64.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from einops import rearrange

PATCH_SIZE = 16
N_POSITION_BUCKETS = 128
PIXEL_DIVISOR = 4.0


def _scaled_pixels(images: np.ndarray, name: str) -> np.ndarray:
    """Pixels to float32 in [-1, 1] / 4, from uint8 0..255 or floats in [0, 1]."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * np.float32(2.0 / (255.0 * PIXEL_DIVISOR)) - np.float32(
            1.0 / PIXEL_DIVISOR
        )
    if np.issubdtype(images.dtype, np.floating):
        if images.size and not np.isfinite(images).all():
            raise ValueError(f"{name}: contains NaN or infinite pixels")
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise ValueError(
                f"{name}: float pixels must lie in [0, 1], got {images.min():.4g}..{images.max():.4g}"
            )
        return images.astype(np.float32) * np.float32(2.0 / PIXEL_DIVISOR) - np.float32(1.0 / PIXEL_DIVISOR)
    raise ValueError(f"{name}: expected uint8 or float pixels, got dtype {images.dtype}")


def grid_shape(height: int, width: int, patch_size: int = PATCH_SIZE) -> tuple[int, int]:
    """Rows and columns of patches of an image, counting the padded partial patches."""
    return -(-height // patch_size), -(-width // patch_size)


def images_to_patches(
    images: npt.ArrayLike, channels: int = 3, patch_size: int = PATCH_SIZE, name: str = "image"
) -> tuple[np.ndarray, int, int]:
    """Images (..., H, W, C) to patches (..., n_rows * n_cols, channels, P, P) float32, with n_rows and n_cols.

    Leading dimensions (a batch, an episode) are kept; a single image (H, W, C) gives (N, channels, P, P).
    Images of fewer than `channels` channels get zero channels after their own (zero is mid-grey once scaled).
    """
    array = np.asarray(images)
    if array.ndim < 3:
        raise ValueError(f"{name}: expected an image of shape (H, W, {channels}), got shape {array.shape}")
    height, width, n_channels = array.shape[-3:]
    if not 1 <= n_channels <= channels:
        raise ValueError(f"{name}: expected up to {channels} channels (H, W, {channels}), got shape {array.shape}")
    if height == 0 or width == 0:
        raise ValueError(f"{name}: empty image of shape {array.shape}")
    pixels = _scaled_pixels(array, name)
    n_rows, n_cols = grid_shape(height, width, patch_size)
    pad_h, pad_w = n_rows * patch_size - height, n_cols * patch_size - width
    if pad_h or pad_w or n_channels < channels:
        # Fewer channels than the model's are zero channels: an RGB caption image beside Atari timesteps of 4
        # stacked frames share one patch block.
        padding = [(0, 0)] * (pixels.ndim - 3) + [(0, pad_h), (0, pad_w), (0, channels - n_channels)]
        pixels = np.pad(pixels, padding)
    patches = rearrange(pixels, "... (r p1) (c p2) ch -> ... (r c) ch p1 p2", p1=patch_size, p2=patch_size)
    return np.ascontiguousarray(patches), n_rows, n_cols


def _interval_buckets(n: int, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.rint(np.arange(n + 1) * (n_buckets / n)).astype(np.int64)
    lo, hi = edges[:-1], edges[1:]
    # More patches than buckets would give empty ranges: every patch keeps at least its own bucket.
    lo = np.minimum(lo, n_buckets - 1)
    return lo, np.maximum(hi, lo + 1)


def patch_position_buckets(
    n_rows: int, n_cols: int, n_buckets: int = N_POSITION_BUCKETS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bucket ranges [lo, hi) of every patch row and column: (row_lo, row_hi, col_lo, col_hi)."""
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"a patch grid needs at least one row and column, got {n_rows}x{n_cols}")
    row_lo, row_hi = _interval_buckets(n_rows, n_buckets)
    col_lo, col_hi = _interval_buckets(n_cols, n_buckets)
    return row_lo, row_hi, col_lo, col_hi


def patch_intervals(
    n_rows: int, n_cols: int, n_buckets: int = N_POSITION_BUCKETS
) -> tuple[np.ndarray, np.ndarray]:
    """Per patch in raster order, its row range and column range: two int64 arrays (n_rows * n_cols, 2)."""
    row_lo, row_hi, col_lo, col_hi = patch_position_buckets(n_rows, n_cols, n_buckets)
    rows = np.repeat(np.stack([row_lo, row_hi], axis=1), n_cols, axis=0)
    cols = np.tile(np.stack([col_lo, col_hi], axis=1), (n_rows, 1))
    return rows, cols


def sample_position_buckets(
    intervals: npt.ArrayLike, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One bucket per [lo, hi) range (..., 2): uniform in the range with `rng` (training), its middle without."""
    ranges = np.asarray(intervals, dtype=np.int64)
    lo, hi = ranges[..., 0], ranges[..., 1]
    if rng is None:
        return (lo + hi) // 2
    return rng.integers(lo, hi)


# ---------------------------------------------------------------------------------------- frame stacking

FRAME_COLOURS = ("rgb", "gray")
# ITU-R BT.601 luma, as Atari preprocessing (and the Multi-Game Decision Transformer's 84x84 grayscale) uses.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def frame_channels(frames: int, colour: str) -> int:
    """Channels of one timestep's image when it stacks `frames` consecutive frames in `colour`."""
    if frames < 1:
        raise ValueError(f"frames per timestep must be at least 1, got {frames}")
    if colour not in FRAME_COLOURS:
        raise ValueError(f"frame colour must be one of {', '.join(FRAME_COLOURS)}, got {colour!r}")
    return frames * (3 if colour == "rgb" else 1)


def max_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Images (..., H, W, C) to (..., size, size, C), each output pixel the largest of the block of input pixels
    it covers (blocks of floor(H / size) or one more rows, likewise columns): a 1-pixel ball stays at full
    brightness where an area average would dim it."""
    height, width = images.shape[-3:-1]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"max_resize: size {size} must lie in 1..{min(height, width)} for {height}x{width} images")
    rows = np.arange(size) * height // size
    cols = np.arange(size) * width // size
    return np.maximum.reduceat(np.maximum.reduceat(images, rows, axis=-3), cols, axis=-2)


def stack_frames(
    images: npt.ArrayLike, frames: int, colour: str = "rgb", history: int = 0, size: int = 0
) -> np.ndarray:
    """Consecutive RGB frames (T, H, W, 3) uint8 to stacked timesteps (T - history, H', W', frames x c) uint8.

    Timestep t holds frames t-frames+1 .. t, oldest first, as the channels of its image (c = 3 for rgb, 1 for
    gray). The first `history` frames only feed the stacks of the others (a window read from the middle of an
    episode); before the episode's first frame, that frame is repeated, as an episode's reset does. With `size`
    each frame is first shrunk to size x size by `max_resize` (0: H' x W' = H x W, as recorded). The same
    function stacks recorded windows for training and the frames an agent sees while acting, so the two agree.
    """
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"stack_frames: expected RGB frames (T, H, W, 3), got shape {array.shape}")
    frame_channels(frames, colour)  # checks both
    if not 0 <= history < max(len(array), 1):
        raise ValueError(f"stack_frames: {history} history frames of {len(array)}")
    if colour == "gray":
        array = np.rint(array.astype(np.float32) @ LUMA).clip(0, 255).astype(np.uint8)[..., None]
    if size:
        array = max_resize(array, size)
    # Index of each stacked frame: (T, frames), clipped at the first frame.
    index = np.clip(np.arange(history, len(array))[:, None] + np.arange(1 - frames, 1)[None, :], 0, None)
    stacked = array[index]  # (T', frames, H, W, c)
    return np.ascontiguousarray(rearrange(stacked, "t k h w c -> t h w (k c)"))
