"""Per-window signal quality for lead-II ECG and PPG, plus NaN/inf repair.

Cheap checks that a stream worker can run on every window:
- `nonfinite_frac`: NaN/inf samples (dropouts, invalid WFDB values);
- `flat_frac`: samples in runs of (numerically) constant value lasting >= `flat_min_s` (lead off);
- `clip_frac`: samples in plateaus (>= 3 samples) at the window's max or min (ADC saturation);
- `sqi`: ECG kurtosis (QRS complexes make clean ECG peaked) or PPG periodicity (peak of the
  normalised autocorrelation at 30-200 bpm lags).
kSQI > 5 is the classic "excellent" ECG mark at >= 250 Hz, but BIDMC lead II at 125 Hz with broad
QRS sits at 3.5-4 and 25 Hz ECG at 3-4, so `ok` only asks for more peakedness than Gaussian noise
(kurtosis 3); callers wanting stricter gating compare `sqi` themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps
from scipy import stats

__all__ = ["Quality", "ecg_quality", "ppg_quality", "signal_quality", "fill_nonfinite", "ppg_periodicity"]

# Thresholds for `ok` (documented so a caller can re-judge from the numbers).
ECG_KURTOSIS_MIN = 3.0
PPG_PERIODICITY_MIN = 0.5
BASELINE_HZ = 0.5  # high-pass before scoring either signal
MAX_NONFINITE = 0.05
MAX_FLAT = 0.2
MAX_CLIP = 0.1


@dataclass(frozen=True)
class Quality:
    n: int
    nonfinite_frac: float
    flat_frac: float
    clip_frac: float
    sqi: float  # ECG: kurtosis (Pearson, normal = 3); PPG: autocorrelation periodicity in [-1, 1]
    sqi_name: str  # "kurtosis" | "periodicity"
    skewness: float
    ok: bool
    reason: str  # "" when ok, else the first failed check


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of True runs."""
    m = np.concatenate([[False], mask, [False]]).astype(np.int8)
    d = np.diff(m)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _run_fraction(mask_pairs: np.ndarray, min_len_pairs: int, n: int) -> float:
    """Fraction of samples covered by runs of `mask_pairs` (mask over diffs) >= min_len_pairs long."""
    if n == 0:
        return 0.0
    starts, ends = _runs(mask_pairs)
    keep = (ends - starts) >= min_len_pairs
    # a run of k equal diffs covers k + 1 samples
    return float(np.sum(ends[keep] - starts[keep] + 1)) / n


def _flat_frac(x: np.ndarray, rate_hz: float, flat_min_s: float) -> float:
    if len(x) < 2:
        return 0.0
    scale = max(float(np.ptp(x)), float(np.max(np.abs(x))), 1e-12)
    still = np.abs(np.diff(x)) <= 1e-7 * scale
    return _run_fraction(still, max(1, int(round(flat_min_s * rate_hz))), len(x))


def _clip_frac(x: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0:
        return 0.0
    tol = 1e-6 * float(np.ptp(x))
    med = float(np.median(x))
    total = 0
    for level in (np.max(x), np.min(x)):
        # a plateau at the baseline level (e.g. an exactly-zero synthetic baseline) is not clipping
        if abs(level - med) <= 0.25 * float(np.ptp(x)):
            continue
        at = np.abs(x - level) <= tol
        starts, ends = _runs(at)
        lens = ends - starts
        total += int(np.sum(lens[lens >= 3]))
    return total / len(x)


def fill_nonfinite(x: np.ndarray, max_run: int | None = None) -> tuple[np.ndarray, int]:
    """Copy of `x` with NaN/inf runs linearly interpolated from their finite neighbours.

    Runs at the edges hold the nearest finite value; runs longer than `max_run` samples (if
    given) are left non-finite. All-non-finite input becomes zeros. Returns (array, filled count).
    """
    y = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float32), copy=True)
    bad = ~np.isfinite(y)
    if not bad.any():
        return y, 0
    good = ~bad
    if not good.any():
        y[:] = 0.0
        return y, int(bad.sum())
    fill = bad.copy()
    if max_run is not None:
        starts, ends = _runs(bad)
        for s, e in zip(starts, ends):
            if e - s > max_run:
                fill[s:e] = False
    idx = np.arange(len(y))
    y[fill] = np.interp(idx[fill], idx[good], y[good])
    return y, int(fill.sum())


def _without_baseline(x: np.ndarray, rate_hz: float) -> np.ndarray:
    """Baseline wander removed (1 s median is too slow at 500 Hz; a 0.5 Hz high-pass is cheap)."""
    if len(x) <= 30 or rate_hz <= 2.0:
        return x
    return sps.sosfiltfilt(sps.butter(2, BASELINE_HZ, btype="high", fs=rate_hz, output="sos"), x)


def ppg_periodicity(x: np.ndarray, rate_hz: float, min_bpm: float = 30.0, max_bpm: float = 200.0) -> float:
    """Max normalised autocorrelation at beat-period lags (1 = perfectly periodic pulse)."""
    x = np.asarray(x, dtype=np.float64)
    lo = int(np.floor(rate_hz * 60.0 / max_bpm))
    hi = int(np.ceil(rate_hz * 60.0 / min_bpm))
    if len(x) < 2 * max(lo, 2) or np.std(x) == 0:
        return 0.0
    # A drifting baseline keeps the autocorrelation above zero at every lag, so the zero-lag lobe below would
    # swallow the beat lags: score the pulse above the drift, as ecg_quality does.
    x = _without_baseline(x, rate_hz)
    x = x - np.mean(x)
    if np.std(x) == 0:
        return 0.0
    ac = sps.correlate(x, x, mode="full", method="fft")[len(x) - 1:]
    ac = ac / ac[0]
    # unbiased: correct for the shrinking overlap at long lags
    ac = ac * len(x) / np.maximum(len(x) - np.arange(len(ac)), 1)
    # Skip the zero-lag lobe: only lags after the autocorrelation first dips below zero count.
    neg = np.flatnonzero(ac[: len(x) // 2] < 0)
    start = max(lo, 1, int(neg[0]) if len(neg) else len(x))
    seg = ac[start: min(hi, len(x) // 2) + 1]
    return float(np.clip(np.max(seg), -1.0, 1.0)) if len(seg) else 0.0


def _base(x: np.ndarray, rate_hz: float, flat_min_s: float):
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    finite = np.isfinite(x)
    nonfinite = 1.0 - float(finite.mean()) if n else 1.0
    xf = x[finite]
    return x, n, nonfinite, xf, _flat_frac(xf, rate_hz, flat_min_s), _clip_frac(xf)


def _verdict(n, nonfinite, flat, clip, sqi_ok, sqi_msg) -> tuple[bool, str]:
    if n == 0:
        return False, "empty"
    if nonfinite > MAX_NONFINITE:
        return False, f"non-finite {nonfinite:.0%}"
    if flat > MAX_FLAT:
        return False, f"flatline {flat:.0%}"
    if clip > MAX_CLIP:
        return False, f"clipping {clip:.0%}"
    if not sqi_ok:
        return False, sqi_msg
    return True, ""


def ecg_quality(x: np.ndarray, rate_hz: float, flat_min_s: float = 0.3) -> Quality:
    x, n, nonfinite, xf, flat, clip = _base(x, rate_hz, flat_min_s)
    kurt = skew = 0.0
    if len(xf) > 3 and np.std(xf) > 0:
        y = _without_baseline(xf, rate_hz)
        kurt = float(stats.kurtosis(y, fisher=False))
        skew = float(stats.skew(y))
    ok, reason = _verdict(n, nonfinite, flat, clip, kurt >= ECG_KURTOSIS_MIN, f"kurtosis {kurt:.1f} < {ECG_KURTOSIS_MIN:g}")
    return Quality(n, nonfinite, flat, clip, kurt, "kurtosis", skew, ok, reason)


def ppg_quality(x: np.ndarray, rate_hz: float, flat_min_s: float = 0.3) -> Quality:
    x, n, nonfinite, xf, flat, clip = _base(x, rate_hz, flat_min_s)
    per = skew = 0.0
    if len(xf) > 3 and np.std(xf) > 0:
        filled, _ = fill_nonfinite(x)
        per = ppg_periodicity(filled, rate_hz)
        skew = float(stats.skew(xf))
    ok, reason = _verdict(n, nonfinite, flat, clip, per >= PPG_PERIODICITY_MIN, f"periodicity {per:.2f} < {PPG_PERIODICITY_MIN:g}")
    return Quality(n, nonfinite, flat, clip, per, "periodicity", skew, ok, reason)


def signal_quality(x: np.ndarray, rate_hz: float, signal: str) -> Quality:
    """Dispatch on the canonical signal name: "II" (and "*_SYNTH" ECG) or "PLETH"."""
    name = signal.upper()
    if name.startswith("PLETH"):
        return ppg_quality(x, rate_hz)
    if name.startswith("II"):
        return ecg_quality(x, rate_hz)
    raise ValueError(f"no quality model for signal {signal!r}")
