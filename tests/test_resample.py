"""resample / decimate_to: lengths, alignment of sample 0, accuracy, anti-aliasing, edges."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.resample import decimate_to, low_rate_copy, rational_ratio, resample


def _sine(f, rate, dur, phase=0.3):
    t = np.arange(int(round(dur * rate))) / rate
    return np.sin(2 * np.pi * f * t + phase)


@pytest.mark.parametrize("src,dst", [(25, 100), (125, 100), (100, 125), (360, 125), (125, 500), (62.5, 250)])
@pytest.mark.parametrize("method", ["polyphase", "cubic"])
def test_length_and_accuracy_on_band_limited_signal(src, dst, method):
    x = _sine(2.0, src, 8.0)
    y = resample(x, src, dst, method)
    assert len(y) == round(len(x) * dst / src)
    truth = _sine(2.0, dst, len(y) / dst)
    inner = slice(int(0.5 * dst), len(y) - int(0.5 * dst))  # away from the edges
    assert np.max(np.abs(y[inner] - truth[inner])) < 0.02
    # sample 0 stays at the same instant: first output equals the first input's value
    assert abs(y[0] - x[0]) < 0.05


def test_rational_ratios():
    assert rational_ratio(125, 100) == (4, 5)
    assert rational_ratio(25, 100) == (4, 1)
    assert rational_ratio(360, 125) == (25, 72)


def test_edges_have_no_big_transient():
    # a window of a slow ramp with an offset: zero padding would ring at both ends
    x = 5.0 + np.linspace(0, 1, 250)
    y = resample(x, 25, 100)
    truth = 5.0 + np.linspace(0, 1, 250)[-1] * np.arange(len(y)) / 100 / ((250 - 1) / 25)
    assert np.max(np.abs(y - truth)) < 0.05


def test_dtype_and_trivial_inputs():
    x = np.arange(10, dtype=np.float32)
    assert resample(x, 25, 100).dtype == np.float32
    assert len(resample(np.zeros(0), 25, 100)) == 0
    np.testing.assert_array_equal(resample(np.array([3.0]), 25, 100), np.full(4, 3.0))
    np.testing.assert_array_equal(resample(x, 50, 50), x)
    with pytest.raises(ValueError):
        resample(x, 25, 100, method="sinc")


def test_decimate_removes_alias_and_keeps_samples_aligned():
    rate = 100.0
    slow = _sine(1.5, rate, 20.0)
    fast = 0.5 * _sine(20.0, rate, 20.0, phase=0.0)  # above the 12.5 Hz Nyquist of 25 Hz
    y = decimate_to(slow + fast, rate, 25.0)
    assert len(y) == 500
    truth = slow[::4]
    inner = slice(25, -25)
    # naive slicing would alias the 20 Hz tone to 5 Hz with amplitude ~0.5
    assert np.max(np.abs((slow + fast)[::4][inner] - truth[inner])) > 0.3
    assert np.max(np.abs(y[inner] - truth[inner])) < 0.03
    # edges without a big transient
    assert np.max(np.abs(y - truth)) < 0.1


def test_decimate_non_integer_factor_and_refuses_upsampling():
    x = _sine(1.0, 125, 10.0)
    y = decimate_to(x, 125, 100)
    assert len(y) == 1000
    assert np.max(np.abs(y[50:-50] - _sine(1.0, 100, 10.0)[50:-50])) < 0.02
    with pytest.raises(ValueError):
        decimate_to(x, 25, 100)



def test_low_rate_copy_anti_aliased_or_every_kth_sample():
    """"iir" fills a NaN run before the low-pass (no NaN spreads over the record); "plain" keeps every 4th sample
    as it is, the NaN included; an unknown kind is refused, not taken for "plain"."""
    rate = 100.0
    x = _sine(1.5, rate, 20.0) + 0.5 * _sine(20.0, rate, 20.0, phase=0.0)
    x[400:410] = np.nan
    iir = low_rate_copy(x, rate, 25.0, "iir")
    assert len(iir) == 500 and np.isfinite(iir).all()
    assert np.max(np.abs(iir[25:90] - _sine(1.5, rate, 20.0)[::4][25:90])) < 0.03  # the 20 Hz tone is gone
    plain = low_rate_copy(x, rate, 25.0, "plain")
    np.testing.assert_array_equal(plain, x[::4])
    assert np.isnan(plain[100:103]).all()
    with pytest.raises(ValueError, match="fir"):
        low_rate_copy(x, rate, 25.0, "fir")
    # 125 Hz is not a whole multiple of 50: every 2nd sample would be a 62.5 Hz copy labelled 50 Hz
    with pytest.raises(ValueError, match="whole multiple of 50 Hz"):
        low_rate_copy(x, 125.0, 50.0, "plain")
    assert len(low_rate_copy(x, 125.0, 25.0, "plain")) == 400

def test_merge_bands_keeps_low_band_of_one_and_high_band_of_other():
    from operators.processing.resample import merge_bands

    rate = 100.0
    t = np.arange(2000) / rate
    low = np.sin(2 * np.pi * 2 * t)  # 2 Hz: only in `a`
    high = np.sin(2 * np.pi * 30 * t)  # 30 Hz: only in `b`
    a = low + 0.5 * np.sin(2 * np.pi * 35 * t)  # its high band must be dropped
    b = 3 * np.sin(2 * np.pi * 1 * t) + high  # its low band must be dropped
    y = merge_bands(a, b, rate, cutoff_hz=11.25)
    mid = slice(200, -200)  # away from the filter's edge transients
    np.testing.assert_allclose(y[mid], (low + high)[mid], atol=0.02)
    with pytest.raises(ValueError):
        merge_bands(a, b[:-1], rate, 10.0)
    with pytest.raises(ValueError):
        merge_bands(a, b, rate, 60.0)


def test_polyphase_keeps_a_constant_constant_and_shape_independent_of_offset():
    """A monitor's DC offset must not leak into the resampled shape (resample_poly's branches pass DC unevenly)."""
    for src, dst in ((125.0, 100.0), (100.0, 125.0), (62.5, 100.0)):
        y = resample(np.full(1000, 0.38), src, dst, method="polyphase")
        assert np.ptp(y) < 1e-12
    t = np.arange(1000) / 125.0
    x = np.sin(2 * np.pi * 1.3 * t)
    a = resample(x, 125.0, 100.0, method="polyphase")
    b = resample(x + 500.0, 125.0, 100.0, method="polyphase") - 500.0
    np.testing.assert_allclose(a, b, atol=1e-9)
    holed = x.copy()
    holed[500] = np.nan
    c = resample(holed, 125.0, 100.0, method="polyphase")
    assert 0 < np.count_nonzero(~np.isfinite(c)) < 50  # a NaN stays local (the level is taken over finite samples)
