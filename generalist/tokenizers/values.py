"""Continuous and discrete values to integers in 0..1023 and back.

Continuous observations are compressed by mu-law (Gato section 2.1, mu=100, M=256),
`F(x) = sign(x) log(1 + mu |x|) / log(1 + mu M)`, clipped to [-1, 1], then cut into 1024 uniform bins.
Continuous actions are already in [-1, 1] by contract (the env wrapper rescales the action space), so they
are binned without mu-law (`mu_law=False`). Values beyond +-M saturate to the end bins by design: F(+-M) is
exactly +-1, and anything larger is clipped there. Exactly 1.0 lands in bin 1023, never in bin 1024.
Decoding returns the centre of the bin (and the inverse mu-law of it for observations).

Every function takes arrays of any shape and returns the same shape; callers flatten row-major. Bad input
(NaN, infinities, non-numeric dtypes, discrete values outside 0..1023) is a `ValueError` naming the input, never
a silent wrong bin.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MU = 100.0
M = 256.0
N_BINS = 1024


def _check_real(x: npt.ArrayLike, name: str) -> np.ndarray:
    """Return `x` as an array, raising unless it is real-valued (not bool) and finite."""
    array = np.asarray(x)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise ValueError(f"{name}: expected a real-valued numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = "NaN" if np.isnan(array).any() else "an infinite value"
        raise ValueError(f"{name}: contains {bad}; continuous values must be finite")
    return array


def _as_float(array: np.ndarray) -> np.ndarray:
    """Floats keep their precision (float32 stays float32: exact enough for 1024 bins, twice as fast)."""
    return array.astype(np.result_type(array.dtype, np.float32), copy=False)


def _compand(array: np.ndarray, mu: float, m: float) -> np.ndarray:
    array = _as_float(array)
    scale = array.dtype.type(1.0 / np.log1p(mu * m))
    return np.sign(array) * np.log1p(array.dtype.type(mu) * np.abs(array)) * scale


def _expand(array: np.ndarray, mu: float, m: float) -> np.ndarray:
    array = _as_float(array)
    return np.sign(array) * np.expm1(np.abs(array) * array.dtype.type(np.log1p(mu * m))) / array.dtype.type(mu)


def mu_law(x: npt.ArrayLike, mu: float = MU, m: float = M) -> np.ndarray:
    """Mu-law companding `sign(x) log(1 + mu|x|) / log(1 + mu m)`: +-m maps to +-1 (not clipped here)."""
    return _compand(_check_real(x, "mu_law input"), mu, m)


def inverse_mu_law(y: npt.ArrayLike, mu: float = MU, m: float = M) -> np.ndarray:
    """Inverse of `mu_law`: `sign(y) ((1 + mu m)^|y| - 1) / mu`."""
    return _expand(_check_real(y, "inverse_mu_law input"), mu, m)


def continuous_to_bins(x: npt.ArrayLike, mu_law: bool = True, name: str = "continuous") -> np.ndarray:
    """Continuous values to bins 0..1023 (int64), through mu-law unless `mu_law=False`; same shape as `x`."""
    array = _check_real(x, name)
    # Saturate before companding: F(+-M) is already +-1, and huge values would overflow mu * |x|.
    y = _compand(np.clip(array, -M, M), MU, M) if mu_law else array
    bins = np.floor((np.clip(y, -1.0, 1.0) + 1.0) * (N_BINS / 2)).astype(np.int64)
    # +1.0 lands exactly on the upper edge of the last bin; it belongs to that bin, not to a 1025th.
    return np.minimum(bins, N_BINS - 1)


def bins_to_continuous(bins: npt.ArrayLike, mu_law: bool = True) -> np.ndarray:
    """Bins 0..1023 to the centre of each bin (float64), through the inverse mu-law unless `mu_law=False`."""
    b = check_discrete(bins, "bins")
    centres = (b.astype(np.float64) + 0.5) * (2.0 / N_BINS) - 1.0
    return _expand(centres, MU, M) if mu_law else centres


def check_discrete(values: npt.ArrayLike, name: str = "discrete") -> np.ndarray:
    """Return discrete values as int64 after checking they are integers in 0..1023."""
    array = np.asarray(values)
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array with values in 0..1023, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= N_BINS):
        raise ValueError(
            f"{name}: values must lie in 0..{N_BINS - 1}, got range {array.min()}..{array.max()}"
        )
    return array.astype(np.int64, copy=False)
