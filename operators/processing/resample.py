"""Rate conversion with sample 0 kept at the same instant.

`resample` returns `round(len(x) * dst / src)` samples (the same rule as
`operators.translator.output_length`), so outputs line up with window timestamps.
Non-finite input propagates: fill it first (`operators.processing.samples.fill_nonfinite`).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy import signal as sps
from scipy.interpolate import CubicSpline

from operators.processing.filters import butter_sos, sosfiltfilt
from operators.processing.samples import fill_nonfinite, fit_length, whole_multiple

__all__ = ["resample", "decimate_to", "low_rate_copy", "merge_bands", "rational_ratio", "METHODS"]

METHODS = ("polyphase", "cubic")
_MAX_DEN = 1000


def _out_len(n: int, src_hz: float, dst_hz: float) -> int:
    return int(round(n * float(dst_hz) / float(src_hz)))


def _float_out(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return x.astype(dtype, copy=False)


def rational_ratio(src_hz: float, dst_hz: float, max_den: int = _MAX_DEN) -> tuple[int, int]:
    """(up, down) with up/down ~= dst/src, e.g. 125 -> 100 Hz gives (4, 5).

    Parameters
    ----------
    src_hz, dst_hz : source and target rates (Hz, > 0).
    max_den : largest `down` tried (the ratio is rounded to the nearest fraction with this denominator).
    """
    f = Fraction(float(dst_hz) / float(src_hz)).limit_denominator(max_den)
    return f.numerator, f.denominator


def _polyphase(x: np.ndarray, src_hz: float, dst_hz: float, n_out: int) -> np.ndarray:
    up, down = rational_ratio(src_hz, dst_hz)
    exact = abs(up / down - dst_hz / src_hz) <= 1e-9 * dst_hz / src_hz
    # padtype="line" extends the signal's end trend, which avoids the ringing that zero padding
    # produces at window edges (windows rarely start or end at zero).
    # The filter's polyphase branches pass DC with slightly different gains, so a constant comes out with a
    # ripple at the input rate (~6e-4 of the level at 125 -> 100 Hz). Resampling around the mean keeps a
    # monitor's offset from leaking into the shape (and, after a z-score, into what a model sees).
    x = x.astype(np.float64)
    finite = x[np.isfinite(x)]
    level = float(np.mean(finite)) if len(finite) else 0.0  # a NaN must not spread over the whole output
    y = sps.resample_poly(x - level, up, down, padtype="line") + level
    if exact:
        return fit_length(y, n_out)
    # Irrational-ish ratio: polyphase to the nearby rational rate, then place onto the exact grid.
    mid_hz = src_hz * up / down
    t_mid = np.arange(len(y)) / mid_hz
    t_out = np.arange(n_out) / dst_hz
    return np.interp(t_out, t_mid, y)


def _cubic(x: np.ndarray, src_hz: float, dst_hz: float, n_out: int) -> np.ndarray:
    t_in = np.arange(len(x)) / src_hz
    t_out = np.arange(n_out) / dst_hz
    if len(x) < 4:
        return np.interp(t_out, t_in, x.astype(np.float64))
    spline = CubicSpline(t_in, x.astype(np.float64), bc_type="not-a-knot", extrapolate=True)
    # Past the last input sample (< 1 input period) hold the end value instead of extrapolating
    # the cubic, which can overshoot on steep edges.
    return spline(np.minimum(t_out, t_in[-1]))


def resample(x: np.ndarray, src_hz: float, dst_hz: float, method: str = "polyphase") -> np.ndarray:
    """Resample `x` from `src_hz` to `dst_hz`, sample 0 kept at its instant.

    Parameters
    ----------
    x : 1-D samples (float32 stays float32; other dtypes give float64). Non-finite samples propagate.
    src_hz, dst_hz : source and target rates (Hz, > 0).
    method : "polyphase" (anti-aliased FIR around the mean) or "cubic" (not-a-knot spline, end held).

    Returns
    -------
    `round(len(x) * dst_hz / src_hz)` samples (a copy of `x` when the rates are equal).
    """
    if method not in METHODS:
        raise ValueError(f"unknown resampling method {method!r}; use one of {METHODS}")
    src_hz, dst_hz = float(src_hz), float(dst_hz)
    if not (src_hz > 0 and dst_hz > 0):
        raise ValueError("rates must be > 0")
    x = _float_out(x)
    if x.ndim != 1:
        raise ValueError("resample expects a 1-D signal")
    n_out = _out_len(len(x), src_hz, dst_hz)
    if n_out == 0 or len(x) == 0:
        return np.zeros(n_out, dtype=x.dtype)
    if src_hz == dst_hz:
        return x.copy()
    if len(x) == 1:
        return np.full(n_out, x[0], dtype=x.dtype)
    y = _polyphase(x, src_hz, dst_hz, n_out) if method == "polyphase" else _cubic(x, src_hz, dst_hz, n_out)
    return y.astype(x.dtype, copy=False)


def decimate_to(x: np.ndarray, src_hz: float, dst_hz: float, cutoff: float = 0.8, order: int = 8) -> np.ndarray:
    """Low-rate copy of `x` (e.g. 100 -> 25 Hz) for training/test inputs.

    Parameters
    ----------
    x : 1-D samples.
    src_hz, dst_hz : source and (lower or equal) target rates (Hz).
    cutoff : low-pass corner as a fraction of the new Nyquist frequency (`dst_hz / 2`).
    order : Butterworth order of the low-pass.

    A zero-phase Butterworth low-pass at `cutoff` x the new Nyquist frequency removes what would
    alias (filtfilt pads with odd reflection, so no start/end transient); then exact samples are
    picked for integer factors, polyphase resampling otherwise. Sample 0 keeps its instant.
    """
    src_hz, dst_hz = float(src_hz), float(dst_hz)
    if dst_hz > src_hz:
        raise ValueError(f"decimate_to only lowers the rate ({src_hz:g} -> {dst_hz:g} Hz); use resample")
    x = _float_out(x)
    n_out = _out_len(len(x), src_hz, dst_hz)
    if dst_hz == src_hz:
        return x.copy()
    if len(x) == 0 or n_out == 0:
        return np.zeros(n_out, dtype=x.dtype)
    sos = butter_sos(order, cutoff * dst_hz / 2.0, "low", src_hz)
    xf = x.astype(np.float64)
    padlen = min(len(xf) - 1, 3 * (2 * len(sos) + 1) * 4)
    if len(xf) > 1:
        xf = sosfiltfilt(sos, xf, padtype="odd" if padlen > 0 else None, padlen=max(padlen, 0))
    q = src_hz / dst_hz
    if abs(q - round(q)) < 1e-9:
        y = fit_length(xf[:: int(round(q))], n_out)
    else:
        y = _polyphase(xf, src_hz, dst_hz, n_out)
    return y.astype(x.dtype, copy=False)


def low_rate_copy(x: np.ndarray, src_hz: float, dst_hz: float, kind: str) -> np.ndarray:
    """The `dst_hz` samples a low-rate monitor sends of `x`: the input super-resolution is evaluated from.

    Parameters
    ----------
    x : 1-D samples at `src_hz`.
    src_hz, dst_hz : the full and the (lower) monitor rate (Hz); "plain" takes every (src_hz / dst_hz)-th sample
        and raises ValueError when that is not a whole number.
    kind : "iir": anti-aliased, `decimate_to` of `x` with its non-finite runs interpolated first; "plain": every
        k-th sample of `x` as it is (aliasing, non-finite samples kept).
    """
    if kind == "iir":
        return decimate_to(fill_nonfinite(x)[0], src_hz, dst_hz)
    if kind == "plain":
        if not whole_multiple(src_hz, dst_hz):
            # every round(k)-th sample would be a copy at another rate, labelled dst_hz: a stretched signal
            raise ValueError(f"plain low-rate copy needs {src_hz:g} Hz to be a whole multiple of {dst_hz:g} Hz")
        return x[:: int(round(src_hz / dst_hz))]
    raise ValueError(f"unknown low-rate kind {kind!r}; expected 'iir' or 'plain'")


def merge_bands(low_from: np.ndarray, high_from: np.ndarray, rate_hz: float, cutoff_hz: float, order: int = 4) -> np.ndarray:
    """`low_from` below `cutoff_hz` plus `high_from` above it (zero-phase Butterworth split).

    Super-resolution keeps the band the low-rate source really measured and takes only what lies
    above the source's Nyquist frequency from the model.

    Parameters
    ----------
    low_from, high_from : signals of one shape at `rate_hz`.
    rate_hz : their sample rate (Hz).
    cutoff_hz : split frequency (Hz), in (0, rate_hz / 2).
    order : Butterworth order of the split.

    Returns
    -------
    float64 array: low-pass(`low_from`) + (`high_from` - low-pass(`high_from`)).
    """
    a = np.asarray(low_from, dtype=np.float64)
    b = np.asarray(high_from, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"merge_bands: shapes differ ({a.shape} vs {b.shape})")
    if not 0 < cutoff_hz < rate_hz / 2:
        raise ValueError(f"cutoff {cutoff_hz} Hz must lie in (0, {rate_hz / 2}) Hz")
    sos = butter_sos(order, cutoff_hz, "low", rate_hz)
    pad = min(len(a) - 1, 3 * int(round(rate_hz / cutoff_hz)) * order)
    if pad < 1:
        return b.copy()
    lp = lambda x: sosfiltfilt(sos, x, padtype="odd", padlen=pad)
    return lp(a) + (b - lp(b))
