"""Cached Butterworth designs: the same sections scipy designs, and no caller can change another's."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from operators.processing.filters import butter_sos


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
