"""Mu-law, binning and discrete values: round trips, boundaries, bad input."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from generalist.tokenizers.values import (
    N_BINS,
    M,
    bins_to_continuous,
    check_discrete,
    continuous_to_bins,
    inverse_mu_law,
    mu_law,
)

HALF_BIN = 1.0 / N_BINS  # bins are 2/1024 wide over [-1, 1]
finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


def test_mu_law_matches_formula_and_maps_m_to_one():
    x = np.array([-M, -3.0, -0.5, 0.0, 0.25, 7.0, M])
    expected = np.sign(x) * np.log(1 + 100 * np.abs(x)) / np.log(1 + 100 * 256)
    np.testing.assert_allclose(mu_law(x), expected, rtol=1e-12)
    assert mu_law(np.array([M]))[0] == pytest.approx(1.0)
    assert mu_law(np.array([-M]))[0] == pytest.approx(-1.0)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=5), elements=st.floats(-M, M)))
def test_inverse_mu_law_inverts(x):
    np.testing.assert_allclose(inverse_mu_law(mu_law(x)), x, rtol=1e-9, atol=1e-9)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=6), elements=st.floats(-M, M)))
def test_observation_round_trip_within_half_a_bin_in_mu_law_space(x):
    bins = continuous_to_bins(x)
    assert bins.shape == x.shape
    decoded = bins_to_continuous(bins)
    assert np.all(np.abs(mu_law(decoded) - mu_law(x)) <= HALF_BIN + 1e-6)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=8), elements=st.floats(-1, 1, width=32)))
def test_action_round_trip_within_half_a_bin(x):
    decoded = bins_to_continuous(continuous_to_bins(x, mu_law=False), mu_law=False)
    assert np.all(np.abs(decoded - x) <= HALF_BIN + 1e-6)


@pytest.mark.parametrize("use_mu_law", [True, False])
def test_boundaries_land_in_end_bins_never_the_next_range(use_mu_law):
    ends = np.array([-1.0, 1.0]) * (M if use_mu_law else 1.0)
    assert continuous_to_bins(ends, mu_law=use_mu_law).tolist() == [0, N_BINS - 1]


def test_values_beyond_m_saturate_to_end_bins():
    x = np.array([-1e30, -1e6, -M - 1, M + 1, 1e6, 1e30])
    assert continuous_to_bins(x).tolist() == [0, 0, 0, N_BINS - 1, N_BINS - 1, N_BINS - 1]
    assert continuous_to_bins(np.array([-5.0, 5.0]), mu_law=False).tolist() == [0, N_BINS - 1]


def test_negative_zero_and_zero_share_the_bin_just_above_zero():
    bins = continuous_to_bins(np.array([-0.0, 0.0]))
    assert bins.tolist() == [N_BINS // 2, N_BINS // 2]
    assert continuous_to_bins(np.array([-1e-9]), mu_law=False)[0] == N_BINS // 2 - 1


def test_bin_centres_are_symmetric_and_inside_range():
    centres = bins_to_continuous(np.arange(N_BINS), mu_law=False)
    np.testing.assert_allclose(centres, -centres[::-1])
    assert centres[0] == pytest.approx(-1 + HALF_BIN) and centres[-1] == pytest.approx(1 - HALF_BIN)
    assert np.all(np.diff(bins_to_continuous(np.arange(N_BINS))) > 0)


@given(st.lists(finite_floats, min_size=1, max_size=50))
def test_bins_are_monotone_in_value(values):
    x = np.sort(np.array(values))
    assert np.all(np.diff(continuous_to_bins(x)) >= 0)


@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=3), elements=st.integers(0, N_BINS - 1)))
def test_discrete_passes_through_exactly(values):
    np.testing.assert_array_equal(check_discrete(values), values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([np.inf]), "infinite"),
        (np.array([-np.inf, 1.0], np.float32), "infinite"),
        (np.array(["a"]), "dtype"),
        (np.array([True]), "dtype"),
        (np.array([1 + 2j]), "dtype"),
    ],
)
def test_bad_continuous_input_is_a_value_error(values, message):
    with pytest.raises(ValueError, match=message):
        continuous_to_bins(values, name="observation['continuous']")


@pytest.mark.parametrize("values", [np.array([-1]), np.array([1024]), np.array([0.5]), np.array([3, 99999])])
def test_bad_discrete_input_is_a_value_error(values):
    with pytest.raises(ValueError, match="discrete"):
        check_discrete(values)


def test_bins_to_continuous_rejects_out_of_range_bins():
    with pytest.raises(ValueError, match="0..1023"):
        bins_to_continuous(np.array([N_BINS]))


def test_integer_observations_bin_like_floats():
    ints = np.array([-5000, -3, 0, 1, 300])
    np.testing.assert_array_equal(continuous_to_bins(ints), continuous_to_bins(ints.astype(np.float64)))
    np.testing.assert_array_equal(continuous_to_bins(np.array([1, 255], np.uint8)), continuous_to_bins([1.0, 255.0]))
