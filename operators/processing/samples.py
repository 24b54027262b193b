"""Sample-level primitives every layer shares: NaN/inf repair, fit to a length, the timestamp grid.

One implementation each, so the wire decoder, the replay tool, serving, training and the classic
translators treat a dropout, a rounding-short output and a sample's instant the same way.

- `fill_nonfinite`: NaN/inf runs linearly interpolated from their finite neighbours (edges hold the
  nearest finite value). Interpolation, not zeros: a zero inside a PPG or ECG window would be read as a
  beat (or squash the window's z-score).
- `fit_length`: exactly `n_out` samples; a short array holds its last value (rate conversion rounds
  lengths, so it is short by a sample at most).
- `segment_index`: index rows of the spans around beats (templates, beat-to-beat comparisons) that lie
  wholly in the signal.
- `median`: `np.median` of a 1-D float64 array, the same number at a fraction of its per-call cost (quality checks
  and R-peak detection take several medians of every window).
- `grid_ns`: sample k of a segment sits at `origin_ns + round(k * 1e9 / rate_hz)` ns, computed with
  exact integer arithmetic (ties round up), so rates like 62.5, 360 or 1024 Hz never drift.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

__all__ = ["fill_nonfinite", "fit_length", "grid_ns", "in_millivolts", "median", "period_ns", "segment_index",
           "true_runs", "whole_multiple"]

NS_PER_S = 10**9
# Rates are read as fractions with denominators up to this (exact for every rate a monitor sends).
_RATE_MAX_DEN = 10**6


def true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of True in a 1-D boolean mask.

    Parameters
    ----------
    mask : 1-D boolean array.

    Returns
    -------
    (starts, ends) : int arrays of equal length; run i covers `mask[starts[i]:ends[i]]`.
    """
    m = np.zeros(len(mask) + 2, dtype=bool)
    m[1:-1] = mask
    # every change of value is a run's start or end, and they alternate, starting with a start
    edges = np.flatnonzero(m[1:] != m[:-1])
    return edges[0::2], edges[1::2]


def median(x: np.ndarray) -> float:
    """`float(np.median(x))`, bit for bit, without its general-axis machinery (a third of its cost on a window).

    Parameters
    ----------
    x : np.ndarray
        Values; a 1-D float64 array takes the fast path, anything else goes to `np.median`.

    Returns
    -------
    float
        The middle value, or the mean of the two middle ones, as numpy forms them; NaN if `x`
        holds a NaN (numpy partitions NaN to the end and checks the last element, as here).
    """
    x = np.asarray(x)
    if x.ndim != 1 or x.dtype != np.float64 or len(x) == 0:
        return float(np.median(x))
    k = len(x) // 2
    # numpy takes the mean of the middle one or two values, a sum that starts at +0.0 (so -0.0 comes out +0.0)
    if len(x) % 2:
        part = np.partition(x, [k, -1])
        m = 0.0 + part[k]
    else:
        part = np.partition(x, [k - 1, k, -1])
        m = (0.0 + part[k - 1] + part[k]) / 2
    return float("nan") if np.isnan(part[-1]) else float(m)


def segment_index(centers: np.ndarray, before: int, after: int, n: int) -> np.ndarray:
    """Index rows `[c - before, c + after)` of each center `c` whose whole span lies in `[0, n)`.

    Parameters
    ----------
    centers : sample indices (e.g. R-peaks or pulse peaks), in any order.
    before, after : samples taken before and from each center.
    n : length of the signal the rows index.

    Returns
    -------
    np.ndarray
        int64 array of shape (kept centers, before + after); `x[segment_index(...)]` is one row per beat.
        Centers too near either end are left out, so a row never wraps or runs past the signal.
    """
    c = np.asarray(centers, dtype=np.int64)
    c = c[(c >= before) & (c + after <= n)]
    return c[:, None] + np.arange(-before, after)[None, :]


def fill_nonfinite(x: np.ndarray, max_run: int | None = None) -> tuple[np.ndarray, int]:
    """Copy of `x` with NaN/inf runs linearly interpolated from their finite neighbours.

    Parameters
    ----------
    x : 1-D samples (any numeric dtype).
    max_run : runs longer than this many samples are left non-finite (None: fill every run).

    Returns
    -------
    (y, filled) : `y` has dtype `result_type(x.dtype, float32)` (float32 stays float32, float64 stays
        float64); runs at the edges hold the nearest finite value; all-non-finite input becomes zeros.
        `filled` is the number of samples replaced.
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
        starts, ends = true_runs(bad)
        for s, e in zip(starts, ends):
            if e - s > max_run:
                fill[s:e] = False
    idx = np.arange(len(y))
    y[fill] = np.interp(idx[fill], idx[good], y[good])
    return y, int(fill.sum())


def fit_length(y: np.ndarray, n_out: int) -> np.ndarray:
    """`y` cut or padded to exactly `n_out` samples, dtype kept.

    Parameters
    ----------
    y : 1-D samples.
    n_out : wanted length (>= 0).

    Returns
    -------
    The first `n_out` samples of `y` (a view when `y` is long enough), else `y` followed by copies of
    its last value (zeros when `y` is empty).
    """
    if len(y) >= n_out:
        return y[:n_out]
    pad = n_out - len(y)
    return np.concatenate([y, np.full(pad, y[-1] if len(y) else 0.0, dtype=y.dtype)])


@lru_cache(maxsize=256)
def _rate_fraction(rate_hz: float) -> Fraction:
    """A rate in Hz read as the fraction with denominator <= 10^6 nearest it: how every function here reads rates."""
    return Fraction(float(rate_hz)).limit_denominator(_RATE_MAX_DEN)


@lru_cache(maxsize=256)
def period_ns(rate_hz: float) -> Fraction:
    """Sample period in ns as an exact fraction, e.g. 1e9/360 = 25000000/9 ns.

    Parameters
    ----------
    rate_hz : sample rate in Hz (> 0), read as a fraction with denominator <= 10^6.
    """
    return Fraction(NS_PER_S) / _rate_fraction(rate_hz)


@lru_cache(maxsize=256)
def whole_multiple(hi_hz: float, lo_hz: float) -> bool:
    """Whether `hi_hz` is a whole multiple of `lo_hz` (both read as fractions, as `period_ns` reads rates): every k-th
    sample at `hi_hz` lies on the `lo_hz` grid."""
    return (_rate_fraction(hi_hz) / _rate_fraction(lo_hz)).denominator == 1


def grid_ns(origin_ns: int, rate_hz: float, index) -> np.ndarray:
    """Timestamps `origin_ns + round(index * 1e9 / rate_hz)` ns with exact integer arithmetic (ties round up).

    Parameters
    ----------
    origin_ns : timestamp of sample 0 (ns, integer).
    rate_hz : sample rate in Hz (> 0).
    index : sample index or array of indices (integers, may be negative).

    Returns
    -------
    int64 array of `index`'s shape (an `np.int64` for a scalar index).
    """
    p = period_ns(rate_hz)
    num, den = p.numerator, p.denominator
    if isinstance(index, (int, np.integer)):  # one timestamp (chunk ends, window edges): Python ints, no array overhead
        return np.int64(int(origin_ns) + (2 * int(index) * num + den) // (2 * den))
    idx = np.asarray(index, dtype=np.int64)
    # int64 is exact while 2*idx*num fits; fall back to Python ints for absurdly long segments.
    if idx.size == 0 or int(np.max(np.abs(idx))) * 2 * num < 2**62:
        offs = (2 * idx * num + den) // (2 * den)
        return int(origin_ns) + offs
    offs = np.array([(2 * int(i) * num + den) // (2 * den) for i in idx.ravel()], dtype=object)
    return (int(origin_ns) + offs).astype(np.int64).reshape(idx.shape)


# Millivolts per unit of the voltage units an ECG may arrive in.
_MV_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


def in_millivolts(x: np.ndarray, units: str) -> np.ndarray:
    """`x` in mV when `units` is a voltage unit (`"uV"`, `"µV"`, `"V"`, any case): II_SYNTH, published in mV, takes
    its context ECG's level and spread. `x` itself for mV and for any other unit (none, ADC counts: taken as it comes).

    Parameters
    ----------
    x : np.ndarray
        Samples.
    units : str
        Their units as a chunk or record names them.
    """
    scale = _MV_PER_UNIT.get(units.strip().lower(), 1.0)
    return x if scale == 1.0 else np.asarray(x, dtype=np.float64) * scale
