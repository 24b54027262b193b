"""Cached Butterworth designs: the same sections scipy designs, and no caller can change another's."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from operators.processing.filters import butter_sos, sosfiltfilt


@pytest.mark.parametrize("order, wn, btype, fs", [(2, (0.5, 40.0), "band", 125.0), (2, 0.5, "high", 250.0),
                                                  (4, 12.5, "low", 100.0), (8, 10.0, "low", 62.5)])
def test_same_sections_as_scipy(order, wn, btype, fs):
    want = sps.butter(order, list(wn) if isinstance(wn, tuple) else wn, btype=btype, fs=fs, output="sos")
    got = butter_sos(order, wn, btype, fs)
    np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(0).standard_normal(1000)
    np.testing.assert_array_equal(sps.sosfiltfilt(got, x), sps.sosfiltfilt(want, x))


def test_a_caller_cannot_change_the_cached_design():
    a = butter_sos(2, [0.5, 40], "band", 125)  # a list and a tuple of the same edges are one design
    a[:] = 0.0
    b = butter_sos(2, (0.5, 40.0), "band", 125.0)
    assert b is not a and np.any(b != 0.0)
    np.testing.assert_array_equal(b, sps.butter(2, [0.5, 40], btype="band", fs=125, output="sos"))


DESIGNS = [(2, (5.0, 15.0), "band", 125.0), (2, 0.5, "high", 125.0), (2, (0.5, 11.25), "band", 25.0),
           (4, 12.5, "low", 500.0), (8, 10.0, "low", 62.5), (3, 5.0, "low", 100.0), (1, 2.0, "high", 50.0)]


@pytest.mark.parametrize("order, wn, btype, fs", DESIGNS)
@pytest.mark.parametrize("n", [7, 20, 31, 250, 1001])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
@pytest.mark.parametrize("pad", [("odd", None), ("odd", 0), ("odd", 5), (None, None), (None, 9), ("even", None)])
def test_sosfiltfilt_is_scipys_bit_for_bit(order, wn, btype, fs, n, dtype, pad):
    """Same values (==, not close) and the same memory layout, so that reductions over the output sum in the same
    order; errors where scipy raises (a signal not longer than the padding)."""
    sos = butter_sos(order, wn, btype, fs)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 300 + np.linspace(0, 200, n)).astype(dtype)
    padtype, padlen = pad
    try:
        want = sps.sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
    except ValueError as e:
        with pytest.raises(ValueError, match="greater than padlen"):
            sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
        assert "greater than padlen" in str(e)
        return
    got = sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
    assert got.dtype == want.dtype and got.shape == want.shape and got.strides == want.strides
    assert np.array_equal(got, want)
    assert np.mean(got) == np.mean(want) and np.std(got) == np.std(want)


def test_sosfiltfilt_of_a_reversed_view_and_of_non_finite_samples():
    sos = butter_sos(2, 0.5, "high", 125.0)
    x = np.random.default_rng(1).standard_normal(600)
    assert np.array_equal(sosfiltfilt(sos, x[::-1]), sps.sosfiltfilt(sos, x[::-1]))
    x[100] = np.nan
    assert np.array_equal(sosfiltfilt(sos, x), sps.sosfiltfilt(sos, x), equal_nan=True)


def test_sosfiltfilt_hands_other_shapes_and_invalid_designs_to_scipy():
    sos = butter_sos(2, (0.5, 8.0), "band", 125.0)
    x2 = np.random.default_rng(2).standard_normal((3, 400))
    assert np.array_equal(sosfiltfilt(sos, x2), sps.sosfiltfilt(sos, x2))
    bad = sos.copy()
    bad[0, 3] = 2.0
    with pytest.raises(ValueError, match="sos\\[:, 3\\] should be all ones"):
        sosfiltfilt(bad, x2[0])
