"""R-peak and PPG-peak detection: MIT-BIH 100 against its beat annotations, BIDMC HR sanity,
synthetic signals at 25-500 Hz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operators.processing.metrics import peak_f1
from operators.processing.resample import decimate_to, resample
from operators.processing.rpeaks import detect_ppg_peaks, detect_rpeaks, heart_rate_bpm, ppg_foot_times, refine_peak_times

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# WFDB beat annotation symbols (non-beat marks such as '+' rhythm changes are excluded)
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


def _synthetic_ecg(rate, dur=20.0, rr=0.75, polarity=1.0, noise=0.02, seed=0):
    """Built at 500 Hz and decimated (anti-aliased, like a real low-rate monitor stream)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(500 * dur)) / 500
    beats = np.arange(0.4, dur - 0.2, rr) + rng.normal(0, 0.01, len(np.arange(0.4, dur - 0.2, rr)))
    x = np.zeros_like(t)
    for b in beats:
        x += polarity * (np.exp(-0.5 * ((t - b) / 0.012) ** 2) - 0.2 * np.exp(-0.5 * ((t - b - 0.035) / 0.012) ** 2))
        x += 0.35 * np.exp(-0.5 * ((t - b - 0.28) / 0.05) ** 2) + 0.1 * np.exp(-0.5 * ((t - b + 0.2) / 0.025) ** 2)
    x += 0.3 * np.sin(2 * np.pi * 0.2 * t) + noise * rng.standard_normal(len(t))  # wander + noise
    return (x if rate == 500 else decimate_to(x, 500, rate)), beats


@pytest.mark.parametrize("rate", [25.0, 50.0, 125.0, 250.0, 500.0])
@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_synthetic_ecg_all_rates(rate, polarity):
    x, beats = _synthetic_ecg(rate, polarity=polarity)
    peaks = detect_rpeaks(x, rate)
    score = peak_f1(beats * rate, peaks, rate, 0.05)
    assert score.f1 == 1.0, score
    assert heart_rate_bpm(peaks, rate) == pytest.approx(80.0, abs=2.0)


def _tall_t_ecg(rate, t_amp, t_sd, t_delay, dur=30.0, rr=0.63):
    """A steady 95 bpm lead with a tall, fairly steep T wave `t_delay` s after each R (no noise, no wander)."""
    t = np.arange(int(500 * dur)) / 500
    beats = np.arange(0.3, dur - 0.3, rr)
    x = np.zeros_like(t)
    for b in beats:
        x += np.exp(-0.5 * ((t - b) / 0.012) ** 2) - 0.2 * np.exp(-0.5 * ((t - b - 0.035) / 0.012) ** 2)
        x += t_amp * np.exp(-0.5 * ((t - b - t_delay) / t_sd) ** 2)
    return (x if rate == 500 else decimate_to(x, 500, rate)), beats


@pytest.mark.parametrize("rate, t_amp, t_sd, t_delay", [(125.0, 0.5, 0.03, 0.22), (500.0, 0.5, 0.03, 0.22),
                                                        (125.0, 0.35, 0.05, 0.28), (25.0, 0.35, 0.05, 0.28)])
def test_a_short_window_starting_between_beats_takes_no_t_wave_for_a_beat(rate, t_amp, t_sd, t_delay):
    """A window after a gap can be a few seconds long and start on a P or T wave. The level cap (the tallest peak of
    the last 3 s) once fell to that wave before the first QRS, and T waves passed as beats for seconds: a
    synthesized lead from a 5 s segment reported twice its heart rate. 54 windows of 5 s at staggered starts."""
    x, beats = _tall_t_ecg(rate, t_amp, t_sd, t_delay)
    invented = 0
    for s0 in np.arange(0.0, 20.0, 0.37):
        a = int(s0 * rate)
        peaks = detect_rpeaks(x[a:a + int(5 * rate)], rate)
        invented += sum(1 for p in peaks if np.min(np.abs(beats * rate - a - p)) > 0.05 * rate)
        assert heart_rate_bpm(peaks, rate) == pytest.approx(60 / 0.63, abs=2.0), s0
    assert invented == 0


def test_the_first_beat_of_a_short_window_is_found_when_smaller_than_the_rest():
    """In a few seconds nearly every envelope peak is a QRS, so the learning phase's noise level starts high; a first
    beat smaller than the others (respiratory amplitude swing) has no earlier beat to be searched back from."""
    rate = 125.0
    t = np.arange(int(6 * rate)) / rate
    beats = np.arange(0.4, 5.8, 0.7)
    amp = np.where(np.arange(len(beats)) == 0, 0.6, 1.0)
    x = sum(a * np.exp(-0.5 * ((t - b) / 0.012) ** 2) for a, b in zip(amp, beats))
    score = peak_f1(beats * rate, detect_rpeaks(x, rate), rate, 0.05)
    assert score.f1 == 1.0, score


def test_degenerate_inputs():
    assert len(detect_rpeaks(np.zeros(1000), 125.0)) == 0
    assert len(detect_rpeaks(np.ones(10), 125.0)) == 0
    assert len(detect_ppg_peaks(np.zeros(1000), 125.0)) == 0
    assert np.isnan(heart_rate_bpm(np.array([5]), 125.0))
    x, beats = _synthetic_ecg(125.0)
    x[300:340] = np.nan  # dropout inside the record is tolerated
    assert peak_f1(beats * 125, detect_rpeaks(x, 125.0), 125.0, 0.15).f1 > 0.95


def test_ppg_peaks_synthetic_and_subsample_timing():
    rate = 25.0
    t = np.arange(int(rate * 30)) / rate
    beats = np.arange(0.5, 29.5, 0.9)
    ppg = sum(np.exp(-0.5 * ((t - b) / 0.1) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.3) / 0.1) ** 2) for b in beats)
    p = detect_ppg_peaks(ppg, rate)
    assert peak_f1(beats * rate, p, rate, 0.05).f1 == 1.0
    assert heart_rate_bpm(p, rate) == pytest.approx(60 / 0.9, abs=1.0)
    # parabolic refinement beats the 40 ms sample grid
    tt = refine_peak_times(ppg, p, rate)
    assert np.max(np.abs(tt - beats[: len(tt)])) < 0.01


@pytest.mark.parametrize("rate", [25.0, 125.0])
def test_ppg_foot_is_timed_below_the_sample_grid(rate):
    """Gaussian pulses (SD 0.1 s): the tangent at the steepest upstroke (1 SD before the peak) meets the
    baseline 2 SD before the peak."""
    rng = np.random.default_rng(1)
    beats = np.cumsum(np.full(30, 0.95) + rng.normal(0, 0.03, 30))
    t = np.arange(int(500 * (beats[-1] + 1))) / 500
    ppg = sum(np.exp(-0.5 * ((t - b) / 0.1) ** 2) for b in beats)
    x = decimate_to(ppg, 500, rate)
    peaks = detect_ppg_peaks(x, rate)
    foot = ppg_foot_times(x, peaks, rate)
    want = beats[np.abs(beats[:, None] - peaks[None, :] / rate).argmin(axis=0)] - 0.2
    inner = np.isfinite(foot)
    assert inner.sum() >= len(peaks) - 1  # at most the first pulse, whose onset may precede the signal
    assert np.max(np.abs(foot[inner] - want[inner])) < 0.005
    # a pulse cut off before its onset has no foot rather than a wrong one
    cut = int((beats[5] - 0.12) * rate)
    p2 = detect_ppg_peaks(x[cut:], rate)
    assert np.isnan(ppg_foot_times(x[cut:], p2, rate)[0])
    assert len(ppg_foot_times(x, np.zeros(0, np.int64), rate)) == 0


def _mitdb():
    if not (DATA / "mitdb" / "100.hea").exists():
        pytest.skip(f"MIT-BIH record 100 not found under {DATA / 'mitdb'}")
    wfdb = pytest.importorskip("wfdb")
    rec = wfdb.rdrecord(str(DATA / "mitdb" / "100"))
    names = [n.strip() for n in rec.sig_name]
    ann = wfdb.rdann(str(DATA / "mitdb" / "100"), "atr")
    ref = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in BEAT_SYMBOLS])
    return rec.p_signal[:, names.index("MLII")], float(rec.fs), ref


@pytest.mark.parametrize("rate", [360.0, 500.0, 125.0, 25.0])
def test_mitdb_100_against_annotations(rate):
    x, fs, ref = _mitdb()
    if rate < fs:
        x = decimate_to(x, fs, rate)
    elif rate > fs:
        x = resample(x, fs, rate)
    peaks = detect_rpeaks(x, rate)
    ref_r = ref * rate / fs
    f50 = peak_f1(ref_r, peaks, rate, 0.05)
    f150 = peak_f1(ref_r, peaks, rate, 0.15)
    assert f50.f1 >= 0.99, f50
    assert f150.f1 >= 0.99, f150


def test_bidmc_lead_ii_heart_rate_matches_numerics():
    base = DATA / "bidmc"
    if not (base / "bidmc01.hea").exists():
        pytest.skip(f"BIDMC records not found under {base}")
    wfdb = pytest.importorskip("wfdb")
    checked = 0
    for name in ["bidmc01", "bidmc13", "bidmc24", "bidmc31", "bidmc40"]:
        if not (base / f"{name}n.hea").exists():
            continue
        rec = wfdb.rdrecord(str(base / name))
        names = [n.strip(" ,") for n in rec.sig_name]
        fs = float(rec.fs)
        ecg = rec.p_signal[:, names.index("II")]
        ppg = rec.p_signal[:, names.index("PLETH")]
        num = wfdb.rdrecord(str(base / f"{name}n"))
        hr_monitor = float(np.nanmedian(num.p_signal[:, [n.strip(" ,") for n in num.sig_name].index("HR")]))
        hr_ecg = heart_rate_bpm(detect_rpeaks(ecg, fs), fs)
        hr_ppg = heart_rate_bpm(detect_ppg_peaks(ppg, fs), fs)
        assert 30 < hr_ecg < 200
        assert abs(hr_ecg - hr_monitor) <= 5.0, (name, hr_ecg, hr_monitor)
        assert abs(hr_ppg - hr_ecg) <= 3.0, (name, hr_ppg, hr_ecg)
        checked += 1
    assert checked


def _golden_windows():
    """8 s windows of lead II and PLETH from four synthetic patients (45-130 bpm, little to much noise) at 25-500 Hz,
    and noise with and without a NaN run: 500 windows."""
    from operators.io.synthetic import synthesize

    for seed, hr, noise in ((1, 60, 0.01), (2, 95, 0.05), (3, 130, 0.2), (4, 45, 0.02)):
        rec = synthesize(seconds=60, seed=seed, mean_hr=hr, noise=noise)
        for name in ("II", "PLETH"):
            x = np.asarray(rec.signals[name], np.float64)
            for rate in (25.0, 50.0, 125.0, 250.0, 500.0):
                y = x if rate == rec.rate_hz else resample(x, rec.rate_hz, rate)
                w, hop = int(8 * rate), int(5 * rate)
                for s in range(0, len(y) - w + 1, hop):
                    yield y[s:s + w], rate
    rng = np.random.default_rng(0)
    for rate in (25.0, 125.0, 500.0):
        for _ in range(10):
            yield rng.standard_normal(int(8 * rate)), rate
            z = rng.standard_normal(int(8 * rate))
            z[100:300] = np.nan
            yield z, rate


def test_detected_peaks_match_the_recorded_digest():
    """The decision rules (`_thresholding`, `_refine`) must pick exactly the peaks they picked when this digest was
    taken (5,388 peaks on these windows; the vectorised rules first matched the per-beat Python loops they replaced,
    then the start-of-signal rules moved peaks: see the commit that set the digest). A change of the detector that
    is meant to move peaks updates it, and says so in its commit."""
    import hashlib

    digest, n_windows, n_peaks = hashlib.sha256(), 0, 0
    n_samples, weighted_sum, energy = 0, 0.0, 0.0  # the inputs' fingerprint: did the windows or the detector change?
    for x, rate in _golden_windows():
        peaks = detect_rpeaks(x, rate)
        digest.update(np.asarray(peaks, "<i8").tobytes() + b"|")
        n_windows, n_peaks = n_windows + 1, n_peaks + len(peaks)
        n_samples, weighted_sum = n_samples + len(x), weighted_sum + float(np.nansum(x) * rate)
        energy += float(np.nansum(np.square(x)))
    assert (n_windows, n_samples) == (500, 772800)
    assert weighted_sum == pytest.approx(50651817.22487309, rel=1e-9)
    assert energy == pytest.approx(177048.3173470961, rel=1e-9)
    assert n_peaks == 5388
    assert digest.hexdigest() == "f618090ff3958867fa8161b93e916befc8bb177e7c5dbb6bb242e6d2300b9274"
