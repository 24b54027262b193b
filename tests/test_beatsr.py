"""operators.processing.beatsr: ECG super-resolution from the patient's own context beat."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.beatsr import FINE_RATE, paste_high_band, qrs_template, sr_cutoff_hz
from operators.processing.metrics import windowed_pearson_rmse
from operators.processing.resample import decimate_to, merge_bands, resample
from tests.test_baselines import _pair


def _lowres_up(ecg, rate, src=25.0, dst=100.0):
    return resample(decimate_to(ecg, rate, src), src, dst, method="cubic")


def test_cutoff_is_ninety_percent_of_source_nyquist():
    assert sr_cutoff_hz(25) == pytest.approx(11.25)
    assert sr_cutoff_hz(50) == pytest.approx(22.5)


def test_template_splits_the_context_beat_into_bands():
    ecg, _, _ = _pair(rate=250.0, dur=30.0)
    tpl = qrs_template(ecg, 250.0, sr_cutoff_hz(25))
    assert tpl is not None and tpl.n_beats >= 30
    assert len(tpl.low) == len(tpl.high) == int(0.7 * FINE_RATE)
    assert abs(tpl.low.mean()) < 1e-9  # zero mean: matching ignores the window's level
    # what 25 Hz loses is the QRS: the high band's energy sits within +-60 ms of R (sample 250 at 1 kHz)
    e = tpl.high ** 2
    assert e[190:310].sum() > 0.8 * e.sum() and np.max(np.abs(tpl.high)) > 0.3


def test_template_needs_beats_and_a_cutoff_below_nyquist():
    assert qrs_template(np.zeros(2500), 250.0, 11.25) is None
    ecg, _, _ = _pair(rate=250.0, dur=10.0)
    with pytest.raises(ValueError, match="Nyquist"):
        qrs_template(ecg, 20.0, 11.25)


def test_pasted_band_restores_what_25_hz_lost():
    ecg, _, _ = _pair(rate=250.0, dur=60.0, seed=3)
    ctx, later = ecg[: 250 * 20], ecg[250 * 20 :]
    ref = resample(later, 250.0, 100.0)
    up = _lowres_up(later, 250.0)[: len(ref)]
    tpl = qrs_template(ctx, 250.0, sr_cutoff_hz(25))
    # per 8 s window, as the service calls it (beats cut by window edges included)
    hi = np.concatenate([paste_high_band(up[i : i + 800], 100.0, tpl) for i in range(0, len(up), 800)])
    assert len(hi) == len(up)
    out = merge_bands(up, np.zeros_like(up), 100.0, sr_cutoff_hz(25)) + hi
    cubic = windowed_pearson_rmse(ref, up, 100.0).mean_pearson
    pasted = windowed_pearson_rmse(ref, out, 100.0).mean_pearson
    assert cubic < 0.9 and pasted > 0.98, (cubic, pasted)


def test_no_beats_nothing_pasted():
    ecg, _, _ = _pair(rate=250.0, dur=20.0)
    tpl = qrs_template(ecg, 250.0, sr_cutoff_hz(25))
    assert not np.any(paste_high_band(np.zeros(800), 100.0, tpl))
    assert len(paste_high_band(np.zeros(1), 100.0, tpl)) == 1


@pytest.mark.parametrize("rr", [0.8, 0.36])
def test_template_stops_short_of_the_next_beat_at_fast_rates(rr):
    """At 167 bpm a fixed +0.45 s span held the next beat's QRS, and its detail was pasted twice."""
    ecg, _, _ = _pair(rate=250.0, dur=60.0, rr=rr, seed=3)
    ctx, later = ecg[: 250 * 20], ecg[250 * 20 :]
    tpl = qrs_template(ctx, 250.0, sr_cutoff_hz(25))
    assert len(tpl.high) <= int((2 * rr - 0.2) * FINE_RATE) + 1
    ref = resample(later, 250.0, 100.0)
    up = _lowres_up(later, 250.0)[: len(ref)]
    hi = np.concatenate([paste_high_band(up[i : i + 800], 100.0, tpl) for i in range(0, len(up), 800)])
    out = merge_bands(up, np.zeros_like(up), 100.0, sr_cutoff_hz(25)) + hi
    r = windowed_pearson_rmse(ref, out, 100.0).mean_pearson
    assert r > (0.98 if rr > 0.5 else 0.95), r  # at 167 bpm the fixed span gave 0.905
