"""Image patches, pixel scaling, padding and position buckets."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generalist.tokenizers.images import (
    grid_shape,
    images_to_patches,
    patch_intervals,
    patch_position_buckets,
    sample_position_buckets,
)


def test_worked_example_of_position_buckets():
    row_lo, row_hi, col_lo, col_hi = patch_position_buckets(4, 5)
    assert (row_lo[1], row_hi[1]) == (32, 64)
    assert (col_lo[2], col_hi[2]) == (51, 77)
    rows, cols = patch_intervals(4, 5)
    patch = 1 * 5 + 2  # row 1, column 2 in raster order
    assert sample_position_buckets(rows[patch]) == 48
    assert sample_position_buckets(cols[patch]) == 64


@given(st.integers(1, 40), st.integers(1, 40))
def test_bucket_ranges_tile_zero_to_128(n_rows, n_cols):
    for lo, hi in [patch_position_buckets(n_rows, n_cols)[:2], patch_position_buckets(n_rows, n_cols)[2:]]:
        assert lo[0] == 0 and hi[-1] == 128
        assert np.all(hi > lo)
        np.testing.assert_array_equal(lo[1:], hi[:-1])


def test_training_samples_stay_inside_and_cover_each_interval():
    rows, _ = patch_intervals(4, 5)
    rng = np.random.default_rng(0)
    draws = np.stack([sample_position_buckets(rows, rng) for _ in range(2000)])  # (draws, patches)
    for patch, (lo, hi) in enumerate(rows):
        assert set(np.unique(draws[:, patch])) == set(range(lo, hi))


def test_evaluation_position_is_deterministic():
    rows, cols = patch_intervals(5, 3)
    np.testing.assert_array_equal(sample_position_buckets(cols), sample_position_buckets(cols))
    assert np.all((sample_position_buckets(rows) >= rows[:, 0]) & (sample_position_buckets(rows) < rows[:, 1]))


def test_patches_are_raster_order_channels_first_and_scaled():
    image = np.zeros((32, 48, 3), np.uint8)
    image[16:32, 0:16, 1] = 255  # row 1, column 0, green
    image[0:16, 32:48, 0] = 128  # row 0, column 2, red
    patches, n_rows, n_cols = images_to_patches(image)
    assert (n_rows, n_cols) == (2, 3) and patches.shape == (6, 3, 16, 16)
    assert patches.dtype == np.float32
    assert np.all(patches[3, 1] == 0.25) and np.all(patches[3, 0] == -0.25)
    np.testing.assert_allclose(patches[2, 0], (128 / 255 * 2 - 1) / 4, atol=1e-7)
    assert patches.min() >= -0.25 and patches.max() <= 0.25


def test_float_images_in_unit_range_match_uint8():
    image = np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    from_uint8, _, _ = images_to_patches(image)
    from_float, _, _ = images_to_patches(image.astype(np.float64) / 255)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)


def test_non_multiple_of_16_pads_bottom_and_right_with_zeros():
    image = np.full((210, 160, 3), 255, np.uint8)
    patches, n_rows, n_cols = images_to_patches(image)
    assert (n_rows, n_cols) == grid_shape(210, 160) == (14, 10)
    last_row = patches.reshape(14, 10, 3, 16, 16)[13]  # holds image rows 208..209 and 14 padding rows
    assert np.all(last_row[:, :, :2] == 0.25) and np.all(last_row[:, :, 2:] == 0.0)
    narrow, _, n_cols = images_to_patches(np.full((16, 20, 3), 255, np.uint8))
    assert n_cols == 2 and np.all(narrow[1, :, :, :4] == 0.25) and np.all(narrow[1, :, :, 4:] == 0.0)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.just(3))))
def test_patches_hold_every_pixel_once(images):
    patches, n_rows, n_cols = images_to_patches(images)
    n, h, w, _ = images.shape
    grid = patches.reshape(n, n_rows, n_cols, 3, 16, 16).transpose(0, 1, 4, 2, 5, 3)
    grid = grid.reshape(n, n_rows * 16, n_cols * 16, 3)
    np.testing.assert_allclose(grid[:, :h, :w], (images / 255 * 2 - 1) / 4, atol=1e-6)
    assert np.all(grid[:, h:] == 0) and np.all(grid[:, :, w:] == 0)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((16, 16), np.uint8), "expected an image"),
        (np.zeros((16, 16, 4), np.uint8), "up to 3 channels"),
        (np.zeros((16, 16, 3), np.int32), "dtype"),
        (np.full((16, 16, 3), 1.5), r"\[0, 1\]"),
        (np.full((16, 16, 3), np.nan), "NaN"),
        (np.zeros((0, 16, 3), np.uint8), "empty"),
    ],
)
def test_bad_images_are_value_errors(image, message):
    with pytest.raises(ValueError, match=message):
        images_to_patches(image)


def test_an_image_with_fewer_channels_gets_zero_channels_after_its_own():
    image = np.full((16, 16, 1), 255, np.uint8)
    patches, _, _ = images_to_patches(image, channels=3)
    assert patches.shape == (1, 3, 16, 16)
    assert np.all(patches[0, 0] > 0) and np.all(patches[0, 1:] == 0)
