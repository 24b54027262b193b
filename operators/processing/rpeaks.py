"""R-peak (QRS) and PPG systolic-peak detection, 25-500 Hz.

`detect_rpeaks` follows Pan & Tompkins (1985): band-pass, derivative, squaring, moving-window
integration, then adaptive signal/noise thresholds with a 200 ms refractory period, T-wave
rejection and search-back for missed beats (also before the first beat found: a short window starts
anywhere); each detection is refined to the local extremum of
the record's dominant QRS polarity in the baseline-free signal. Band edges shrink with the
Nyquist frequency so the same code runs on 25 Hz streams.

`detect_ppg_peaks` uses Elgendi et al. (2013) "two event-related moving averages": blocks where a
short (systolic-width) average of the squared, band-passed pulse exceeds a beat-length average.
(neurokit2 implements both but pulls pandas/sklearn-scale deps into operators/, so hand-written.)

`ppg_foot_times` times each pulse's onset by the tangent method (the steepest upstroke's tangent meets
the onset minimum's level): the beat-timing fiducial PPG->ECG draws R peaks from.
"""
from __future__ import annotations

import numpy as np
from scipy import signal as sps
from scipy.interpolate import CubicSpline
from scipy.ndimage import uniform_filter1d

from operators.processing.filters import butter_sos, sosfiltfilt
from operators.processing.samples import fill_nonfinite, median

__all__ = ["detect_rpeaks", "detect_ppg_peaks", "heart_rate_bpm", "ppg_foot_times", "refine_peak_times"]

REFRACTORY_S = 0.2
# The learning phase's noise level is at most this share of its signal level. In a window of a few seconds nearly
# every envelope peak is a QRS, so the median of the peaks below the tallest k is a beat's height, not noise's; at
# half the signal level (Pan-Tompkins' own cap) smaller beats fell below the threshold. Measured on 5 s windows of
# BIDMC lead II, MIT-BIH 100 and Challenge 2015 lead II (see the commit): fewer false and wrong heart rates at 0.25.
NPK_START = 0.25


def _bandpass(x: np.ndarray, rate_hz: float, lo: float, hi: float, order: int = 2) -> np.ndarray:
    hi = min(hi, 0.45 * rate_hz)
    lo = min(lo, 0.5 * hi)
    sos = butter_sos(order, (lo, hi), "band", rate_hz)
    if len(x) <= 3 * (2 * len(sos) + 1):
        return x - np.mean(x)
    return sosfiltfilt(sos, x)


def _highpass(x: np.ndarray, rate_hz: float, fc: float = 0.5) -> np.ndarray:
    sos = butter_sos(2, fc, "high", rate_hz)
    if len(x) <= 3 * (2 * len(sos) + 1):
        return x - median(x)
    return sosfiltfilt(sos, x)


def _clean(x, rate_hz: float) -> np.ndarray:
    if not rate_hz > 0:
        raise ValueError("rate_hz must be > 0")
    x = np.asarray(x, dtype=np.float64).ravel()
    x, _ = fill_nonfinite(x)
    return x.astype(np.float64, copy=False)


def _envelope(x: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    # 5-15 Hz holds most QRS energy; at 25 Hz the band becomes ~3-11 Hz.
    bp = _bandpass(x, rate_hz, 5.0, 15.0)
    d = np.gradient(bp) * rate_hz
    width = max(1, int(round(0.15 * rate_hz)))
    # centred moving average: the envelope peak stays on the QRS instead of lagging it
    env = uniform_filter1d(d * d, size=width, mode="nearest")
    return bp, env


def _thresholding(env: np.ndarray, bp: np.ndarray, rate_hz: float) -> np.ndarray:
    """Pan-Tompkins decision rules over envelope peaks; returns envelope-peak indices."""
    refr = max(1, int(round(REFRACTORY_S * rate_hz)))
    twave = int(round(0.36 * rate_hz))
    cand, props = sps.find_peaks(env, prominence=0.0)
    # Shoulders of one QRS envelope (e.g. a small spike before a wide S wave) are not separate
    # candidates: a real envelope peak rises from a valley well below its top.
    cand = cand[props["prominences"] >= 0.5 * env[cand]]
    if len(cand) == 0:
        return cand
    heights = env[cand]
    slope = np.abs(np.gradient(bp))
    half = max(1, int(round(0.075 * rate_hz)))
    # The steepest slope within +-half samples of every candidate, gathered at once: the decision rules below ask
    # for it only at candidates.
    steepest = dict(zip(cand.tolist(), _around(slope, cand, half, -np.inf).max(axis=1).tolist()))

    # Learning phase (first <= 8 s): at >= 40 bpm the tallest k peaks there are QRS complexes.
    learn_s = min(8.0, len(env) / rate_hz)
    learn = cand < int(learn_s * rate_hz)
    hl = np.sort(heights[learn] if learn.any() else heights)[::-1]
    k = min(len(hl), max(1, int(learn_s * 40 / 60)))
    spk = median(hl[:k])
    npk = min(median(hl[k:]) if len(hl) > k else 0.0, NPK_START * spk)

    beats: list[int] = []
    beat_slopes: list[float] = []
    rr: list[float] = []

    def thr() -> float:
        return npk + 0.25 * (spk - npk)

    def accept(i: int, h: float, weight: float) -> None:
        nonlocal spk
        if beats:
            rr.append(i - beats[-1])
            del rr[:-8]
        beats.append(i)
        beat_slopes.append(steepest[i])
        spk = weight * h + (1 - weight) * spk

    def search_back(upto: int) -> None:
        """Missed beat: the tallest candidate above half the threshold since the last beat."""
        nonlocal spk
        if not beats:
            return
        lo = beats[-1] + refr
        sel = (cand > lo) & (cand < upto - refr // 2)
        if not sel.any():
            return
        idx = np.flatnonzero(sel)
        best = idx[np.argmax(heights[idx])]
        if heights[best] > 0.5 * thr():
            accept(int(cand[best]), float(heights[best]), 0.25)
        elif upto - beats[-1] > 3 * rate_hz:
            # long silence (amplitude drop after an artefact): let the signal level decay
            spk = npk + 0.5 * (spk - npk)

    # The tallest candidate of the 3 s up to each candidate, for all at once: row j holds candidates j, j-1, ...
    # back to the first within 3 s (`recent`), the others masked out.
    look = int(round(3.0 * rate_hz))
    j_all = np.arange(len(cand))
    recent = np.searchsorted(cand, cand - look)
    back = j_all[:, None] - np.arange(int((j_all - recent).max()) + 1)
    tallest = np.where(back >= recent[:, None], heights[np.maximum(back, 0)], -np.inf).max(axis=1)
    # Within the first 3 s there are not yet 3 s to look back over: before the first QRS the tallest peak so far is a
    # P or T wave, and capping the level there let T waves pass as beats for seconds (a synthesized lead with tall T
    # waves reported twice its heart rate from a 5 s segment). There the cap is the tallest peak of the first 3 s.
    head = cand < look
    if head.any():
        tallest[head] = heights[head].max()
    tallest = tallest.tolist()
    # This loop runs once per envelope peak, for every window: on plain Python numbers. The mean RR of integer
    # sample counts is their exact sum over their count, as numpy's is.
    for i, h, top in zip(cand.tolist(), heights.tolist(), tallest):
        # The signal level cannot exceed the tallest peak of the last 3 s (>= 2 beats at 40 bpm):
        # recovers within seconds after loud artefact instead of missing beats until it decays.
        spk = min(spk, top)
        npk = min(npk, 0.5 * spk)
        if beats and rr:
            mean_rr = sum(rr) / len(rr)
            if i - beats[-1] > 1.66 * mean_rr:
                search_back(i)
        elif beats and i - beats[-1] > 2.0 * rate_hz:
            search_back(i)
        if beats and i - beats[-1] < refr:
            continue  # same QRS (second envelope lobe)
        if h > thr():
            if beats and i - beats[-1] < twave and steepest[i] < 0.5 * beat_slopes[-1]:
                npk = 0.125 * h + 0.875 * npk  # T wave
                continue
            accept(i, h, 0.125)
        else:
            npk = 0.125 * h + 0.875 * npk
    if beats and rr and len(env) - beats[-1] > 1.66 * (sum(rr) / len(rr)):
        search_back(len(env) + refr)
    if beats and rr:
        _search_back_head(beats, cand, heights, steepest, 0.5 * thr(), sum(rr) / len(rr))
    return np.asarray(sorted(set(beats)), dtype=np.int64)


def _search_back_head(beats: list[int], cand: np.ndarray, heights: np.ndarray, steepest: dict, floor: float,
                      mean_rr: float) -> None:
    """Beats before the first detected one, added to `beats` (search-back toward the signal's start).

    The learning phase puts the threshold at a quarter of the way from the noise level to the signal level, and in a
    short window nearly every envelope peak is a QRS, so the noise level starts high: a first beat smaller than the
    typical one fell below it with no earlier beat to search back from. A candidate 0.7-1.5 mean RR before the first
    beat, above half the final threshold and at least half as steep as that beat (a T wave of a beat cut off by the
    window's start is neither that far back nor that steep), is a beat; repeated toward the start."""
    first = min(beats)
    while True:
        sel = (cand >= first - 1.5 * mean_rr) & (cand <= first - 0.7 * mean_rr)
        if not sel.any():
            return
        idx = np.flatnonzero(sel)
        best = int(idx[np.argmax(heights[idx])])
        c = int(cand[best])
        if heights[best] <= floor or steepest[c] < 0.5 * steepest[first]:
            return
        beats.append(c)
        first = c


def _around(v: np.ndarray, idx: np.ndarray, half: int, pad: float) -> np.ndarray:
    """(len(idx), 2 half + 1): row j is `v[idx[j] - half : idx[j] + half + 1]`, the part outside `v` filled with `pad`
    (a value that never wins the caller's max or min, so each row's extremum and first arg-extremum are those of the
    window clipped at `v`'s edges); every window at once instead of a Python loop over the indices."""
    return np.concatenate((np.full(half, pad), v, np.full(half, pad)))[idx[:, None] + np.arange(2 * half + 1)]


def _refine(x_hp: np.ndarray, idx: np.ndarray, rate_hz: float) -> np.ndarray:
    if len(idx) == 0:
        return idx
    w = max(1, int(round(0.08 * rate_hz)))
    # dominant polarity: are QRS excursions mostly upward or downward in this lead? (`idx` are envelope-peak
    # indices, inside the signal: `_around` gives the +-w samples of each, clipped at the edges)
    ups = _around(x_hp, idx, w, -np.inf).max(axis=1)
    downs = -_around(x_hp, idx, w, np.inf).min(axis=1)
    sign = 1.0 if median(ups) >= median(downs) else -1.0
    y = sign * x_hp
    out = (idx - w + np.argmax(_around(y, idx, w, -np.inf), axis=1)).astype(np.int64)
    # two envelope peaks refined onto the same R: keep one, then re-apply the refractory period
    out = np.unique(out)
    refr = max(1, int(round(REFRACTORY_S * rate_hz)))
    keep = [0]
    for k in range(1, len(out)):
        if out[k] - out[keep[-1]] < refr:
            if y[out[k]] > y[out[keep[-1]]]:
                keep[-1] = k
        else:
            keep.append(k)
    return out[keep]


def detect_rpeaks(ecg: np.ndarray, rate_hz: float) -> np.ndarray:
    """R peaks in a lead-II-like ECG (Pan-Tompkins decision rules on a 5-15 Hz envelope, refined to the extremum).

    Parameters
    ----------
    ecg : 1-D samples (NaN/inf runs are interpolated first).
    rate_hz : sample rate (Hz, > 0); works from 25 Hz up.

    Returns
    -------
    Sample indices (int64, ascending); empty for a flat or shorter than 0.5 s signal.
    """
    x = _clean(ecg, rate_hz)
    if len(x) < max(4, int(0.5 * rate_hz)) or np.ptp(x) == 0:
        return np.zeros(0, dtype=np.int64)
    bp, env = _envelope(x, rate_hz)
    coarse = _thresholding(env, bp, rate_hz)
    return _refine(_highpass(x, rate_hz), coarse, rate_hz)


def detect_ppg_peaks(ppg: np.ndarray, rate_hz: float) -> np.ndarray:
    """PPG systolic peaks (two moving averages over the squared 0.5-8 Hz band).

    Parameters
    ----------
    ppg : 1-D samples (NaN/inf runs are interpolated first).
    rate_hz : sample rate (Hz, > 0).

    Returns
    -------
    Sample indices (int64, ascending); empty for a flat or shorter than 0.5 s signal.
    """
    x = _clean(ppg, rate_hz)
    if len(x) < max(4, int(0.5 * rate_hz)) or np.ptp(x) == 0:
        return np.zeros(0, dtype=np.int64)
    f = _bandpass(x, rate_hz, 0.5, 8.0)
    y = np.clip(f, 0, None) ** 2
    w1 = max(1, int(round(0.111 * rate_hz)))
    w2 = max(w1 + 1, int(round(0.667 * rate_hz)))
    ma_peak = uniform_filter1d(y, w1, mode="nearest")
    ma_beat = uniform_filter1d(y, w2, mode="nearest")
    alpha = 0.02 * float(np.mean(y))
    blocks = ma_peak > ma_beat + alpha
    m = np.concatenate([[False], blocks, [False]]).astype(np.int8)
    starts = np.flatnonzero(np.diff(m) == 1)
    ends = np.flatnonzero(np.diff(m) == -1)
    keep = (ends - starts) >= max(1, w1 // 2)
    peaks = []
    # refine to the raw-signal maximum near the filtered peak: the filter shifts the apex slightly
    r = max(1, int(round(0.08 * rate_hz)))
    for a, b in zip(starts[keep], ends[keep]):
        p = a + int(np.argmax(f[a:b]))
        lo, hi = max(0, p - r), min(len(x), p + r + 1)
        peaks.append(lo + int(np.argmax(x[lo:hi])))
    peaks = np.unique(np.asarray(peaks, dtype=np.int64))
    # physiological limit (< 200 bpm): drop the smaller of two peaks closer than 0.3 s
    min_d = max(1, int(np.floor(0.3 * rate_hz)))  # not rounded up: 8 samples at 25 Hz is 0.32 s, and dropped beats at 180 bpm
    out: list[int] = []
    for p in peaks:
        if out and p - out[-1] < min_d:
            if x[p] > x[out[-1]]:
                out[-1] = int(p)
        else:
            out.append(int(p))
    return np.asarray(out, dtype=np.int64)


def refine_peak_times(x: np.ndarray, peaks: np.ndarray, rate_hz: float) -> np.ndarray:
    """Sub-sample peak times in seconds by parabolic interpolation through each peak's neighbours
    (matters at 25 Hz, where one sample is 40 ms).

    Parameters
    ----------
    x : the signal the peaks were found in.
    peaks : peak sample indices.
    rate_hz : sample rate (Hz).

    Returns
    -------
    float64 times (s from sample 0), one per peak, each within half a sample of its index.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.asarray(peaks, dtype=np.int64)
    t = p.astype(np.float64)
    inner = (p > 0) & (p < len(x) - 1)
    if inner.any():
        a, b, c = x[p[inner] - 1], x[p[inner]], x[p[inner] + 1]
        den = a - 2 * b + c
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(np.abs(den) > 1e-12, 0.5 * (a - c) / den, 0.0)
        t[inner] += np.clip(off, -0.5, 0.5)
    return t / float(rate_hz)


FOOT_SEARCH_S = 0.6  # a pulse's onset minimum lies within this long before its systolic peak
FOOT_STEP_S = 0.001  # the spline is read on a 1 ms grid


def ppg_foot_times(ppg: np.ndarray, peaks: np.ndarray, rate_hz: float) -> np.ndarray:
    """Tangent-foot time (s) of the pulse ending at each systolic peak in `peaks` (sample indices).

    On a cubic spline through the PPG (sub-sample at 25 Hz too): the onset minimum within FOOT_SEARCH_S
    before the peak (and after the previous peak), the steepest point of the upstroke after it, and where the
    tangent there meets the minimum's level. The delay from an R peak to this point drifts less than to the
    systolic peak (`benchmarks/ppg2ecg_timing_ceiling.py`). NaN where the minimum is at the edge of the search
    span (onset not in the signal, or no trough since the previous peak) or no upstroke rises.

    Parameters
    ----------
    ppg : 1-D samples (NaN/inf runs are interpolated first).
    peaks : systolic peak sample indices, ascending (`detect_ppg_peaks`).
    rate_hz : sample rate (Hz).

    Returns
    -------
    float64 times (s from sample 0), one per peak, NaN where no foot was found.
    """
    x, _ = fill_nonfinite(np.asarray(ppg, dtype=np.float64))
    p = np.asarray(peaks, dtype=np.int64)
    out = np.full(len(p), np.nan)
    if len(p) == 0 or len(x) < 4:
        return out
    fs = float(rate_hz)
    spline = CubicSpline(np.arange(len(x)) / fs, x)
    steps = np.arange(-int(round(FOOT_SEARCH_S / FOOT_STEP_S)), 1) * FOOT_STEP_S
    t = p[:, None] / fs + steps[None, :]  # (beats, grid) ending at each peak
    # the onset lies after the signal's start and after the previous pulse's peak (RR can be < FOOT_SEARCH_S)
    prev = np.concatenate([[0.0], p[:-1] / fs])
    valid = t >= prev[:, None]
    y = np.where(valid, spline(np.clip(t, 0, None)), np.inf)  # outside the span: never the minimum
    slope = spline(np.clip(t, 0, None), 1)
    m = np.argmin(y, axis=1)
    first = np.argmax(valid, axis=1)
    for k in np.flatnonzero((m > first) & (m < len(steps) - 2)):
        s = m[k] + int(np.argmax(slope[k, m[k]:]))
        if slope[k, s] > 0:
            out[k] = t[k, s] - (y[k, s] - y[k, m[k]]) / slope[k, s]
    return out


def heart_rate_bpm(peaks: np.ndarray, rate_hz: float) -> float:
    """Heart rate from beat indices: 60 / median RR (robust to one missed or extra beat).

    Parameters
    ----------
    peaks : beat sample indices (any order).
    rate_hz : sample rate (Hz).

    Returns
    -------
    Beats per minute; NaN with fewer than two distinct beats.
    """
    p = np.asarray(peaks, dtype=np.float64)
    if len(p) < 2:
        return float("nan")
    rr = np.diff(np.sort(p)) / float(rate_hz)
    rr = rr[rr > 0]
    return 60.0 / median(rr) if len(rr) else float("nan")
