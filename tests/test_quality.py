"""Signal quality indices and NaN repair."""
from __future__ import annotations

import numpy as np
import pytest

from operators.quality import ecg_quality, fill_nonfinite, ppg_quality, signal_quality


def _synthetic(rate=125.0, dur=10.0):
    """Clean lead-II-like ECG and PPG built here, independent of other modules."""
    t = np.arange(int(rate * dur)) / rate
    beats = np.arange(0.3, dur, 0.8)
    ecg = np.zeros_like(t)
    ppg = np.zeros_like(t)
    for b in beats:
        ecg += 1.0 * np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.28) / 0.05) ** 2)
        ppg += np.exp(-0.5 * ((t - b - 0.25) / 0.08) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.5) / 0.08) ** 2)
    return t, ecg, ppg


def test_clean_signals_are_ok():
    _, ecg, ppg = _synthetic()
    qe, qp = ecg_quality(ecg, 125.0), ppg_quality(ppg, 125.0)
    assert qe.ok and qe.sqi > 5 and qe.sqi_name == "kurtosis"
    assert qp.ok and qp.sqi > 0.8 and qp.sqi_name == "periodicity"
    assert qe.nonfinite_frac == qe.flat_frac == qe.clip_frac == 0.0
    assert signal_quality(ecg, 125.0, "II") == qe
    assert signal_quality(ppg, 125.0, "PLETH") == qp


def test_noise_fails_sqi():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(1250)
    assert not ecg_quality(np.sin(np.arange(1250) / 20.0), 125.0).ok  # kurtosis 1.5
    qp = ppg_quality(noise, 125.0)
    assert not qp.ok and "periodicity" in qp.reason


def test_flatline_clipping_nonfinite():
    _, ecg, ppg = _synthetic()
    flat = ecg.copy()
    flat[200:700] = 0.25
    q = ecg_quality(flat, 125.0)
    assert q.flat_frac == pytest.approx(0.4, abs=0.01) and not q.ok and "flatline" in q.reason
    clipped = np.minimum(ppg, 0.6)
    q = ppg_quality(clipped, 125.0)
    assert q.clip_frac > 0.1 and "clipping" in q.reason
    holes = ecg.copy()
    holes[::10] = np.nan
    q = ecg_quality(holes, 125.0)
    assert q.nonfinite_frac == pytest.approx(0.1) and not q.ok


def test_fill_nonfinite_interpolates_and_counts():
    x = np.array([np.nan, 1.0, np.nan, 3.0, np.inf, -np.inf, 9.0, np.nan])
    y, n = fill_nonfinite(x)
    np.testing.assert_allclose(y, [1, 1, 2, 3, 5, 7, 9, 9])
    assert n == 5
    assert np.isnan(x[0])  # input untouched
    y, n = fill_nonfinite(np.array([0.0, np.nan, np.nan, np.nan, 4.0, np.nan, 6.0]), max_run=2)
    assert n == 1 and np.isnan(y[1:4]).all() and y[5] == 5.0
    y, n = fill_nonfinite(np.full(4, np.nan))
    assert n == 4 and np.all(y == 0)
    y, n = fill_nonfinite(np.arange(3.0))
    assert n == 0


def test_ppg_periodicity_sees_the_pulse_on_a_drifting_baseline():
    """Baseline wander (a ramp, a slow swing) twice the pulse's height kept the autocorrelation positive at every
    lag, and the score fell to 0."""
    t, _, ppg = _synthetic()
    for drift in (2 * np.ptp(ppg) * t / t[-1], 2 * np.ptp(ppg) * np.sin(2 * np.pi * 0.1 * t)):
        q = ppg_quality(ppg + drift, 125.0)
        assert q.ok and q.sqi > 0.9, q
