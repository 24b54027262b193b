"""Butterworth filter designs computed once per parameter set, and a zero-phase filter that reuses them.

Every window's quality check, R-peak detection, context selection and PPG->ECG prior filters with one of a handful
of fixed designs (a band or cut-off at a stream's rate). Designing one (`scipy.signal.butter`: poles, zeros,
second-order sections) cost about as much as applying it to an 8 s window, thousands of times a second under load;
the design is a pure function of its parameters, so it is made once; callers get a copy (scipy's filters take only
writable arrays, and a caller may modify what it gets).

`sosfiltfilt` is `scipy.signal.sosfiltfilt` for 1-D signals without its per-call set-up: scipy solves for the
filter's steady-state initial conditions (`sosfilt_zi`: a linear solve per section) and validates the design on
every call, which cost more than the filtering itself for an 8 s window. Both depend on the design only, so they are
kept per design; the arithmetic on the signal (odd extension, forward and backward passes, the same initial
conditions scaled by the same edge samples) is scipy's, step by step, so the output is bit-identical
(tests/test_filters.py compares it with scipy's on many designs, lengths and dtypes).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal as sps

try:  # the compiled second-order-section loop `scipy.signal.sosfilt` runs, without its per-call argument handling
    from scipy.signal._sosfilt import _sosfilt
except ImportError:  # pragma: no cover - a scipy that moved it: the public function computes the same
    _sosfilt = None

__all__ = ["butter_sos", "sosfiltfilt"]


def butter_sos(order: int, wn_hz: float | tuple[float, float], btype: str, fs_hz: float) -> np.ndarray:
    """`scipy.signal.butter(order, wn_hz, btype, fs=fs_hz, output="sos")`, designed once per parameter set.

    Parameters
    ----------
    order : int
        Filter order.
    wn_hz : float or (float, float)
        Cut-off frequency, or band edges, in Hz.
    btype : str
        "low", "high", "band" or "stop".
    fs_hz : float
        Sample rate, Hz.

    Returns
    -------
    np.ndarray
        (n_sections, 6) second-order sections, identical to what `scipy.signal.butter` returns.
    """
    wn = tuple(float(w) for w in wn_hz) if np.ndim(wn_hz) else float(wn_hz)
    return _design(int(order), wn, str(btype), float(fs_hz)).copy()


@lru_cache(maxsize=512)
def _design(order: int, wn: float | tuple[float, ...], btype: str, fs_hz: float) -> np.ndarray:
    sos = sps.butter(order, list(wn) if isinstance(wn, tuple) else wn, btype=btype, fs=fs_hz, output="sos")
    sos.setflags(write=False)  # the cached original: only copies leave this module
    return sos


def sosfiltfilt(sos: np.ndarray, x: np.ndarray, padtype: str | None = "odd", padlen: int | None = None) -> np.ndarray:
    """`scipy.signal.sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)`, bit-identical, with the design's initial
    conditions computed once per design instead of once per call.

    Parameters
    ----------
    sos : np.ndarray
        (n_sections, 6) float64 second-order sections (e.g. `butter_sos`).
    x : np.ndarray
        Signal. 1-D real signals take the fast path; anything else (another axis, complex, long double) and any
        `padtype` other than "odd" or None are handed to scipy unchanged.
    padtype : {"odd", None, "even", "constant"}
        Extension at both ends before filtering, as scipy's.
    padlen : int or None
        Samples of extension at each end; None: scipy's default, 3 x (2 x n_sections + 1 - poles and zeros at
        the origin).

    Returns
    -------
    np.ndarray
        The zero-phase filtered signal, same values and the same memory layout (a reversed view) as scipy's.

    Raises
    ------
    ValueError
        `x` not longer than the padding (scipy's message).
    """
    x = np.asarray(x)
    sos = np.asarray(sos)
    if (x.ndim != 1 or padtype not in ("odd", None) or sos.dtype != np.float64 or sos.ndim != 2
            or sos.shape[1] != 6 or np.result_type(x.dtype, sos.dtype) != np.float64):
        return sps.sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
    plan = _plan(sos.tobytes(), sos.shape[0])
    if plan is None:  # not a valid design: scipy says why
        return sps.sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
    sos_c, zi, ntaps = plan
    # scipy's _validate_pad and odd_ext, for one axis
    edge = 0 if padtype is None else 3 * ntaps if padlen is None else padlen
    if x.shape[0] <= edge:
        raise ValueError(f"The length of the input vector x must be greater than padlen, which is {edge}.")
    if padtype is not None and edge > 0:
        ext = np.concatenate((2 * x[:1] - x[edge:0:-1], x, 2 * x[-1:] - x[-2:-(edge + 2):-1]))
    else:
        ext = x
    y = _sosfilt_1d(sos_c, ext, zi * ext[:1])
    y = _sosfilt_1d(sos_c, y[::-1], zi * y[-1:])[::-1]
    return y[edge:-edge] if edge > 0 else y


@lru_cache(maxsize=512)
def _plan(sos_bytes: bytes, n_sections: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(sections, steady-state initial conditions, taps) of a design, or None where scipy would reject it."""
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6).copy()
    if not np.all(sos[:, 3] == 1):
        return None
    ntaps = 2 * n_sections + 1 - int(min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    zi = sps.sosfilt_zi(sos)
    zi.setflags(write=False)  # `sos` stays writable: the compiled loop takes only writable buffers; it never leaves
    return sos, zi, ntaps


def _sosfilt_1d(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> np.ndarray:
    """`scipy.signal.sosfilt(sos, x, zi=zi)[0]` for 1-D float64-promotable `x` and (n_sections, 2) `zi`."""
    if _sosfilt is None:  # pragma: no cover
        return sps.sosfilt(sos, x, zi=zi)[0]
    y = np.array(x.reshape(1, -1), np.float64, order="C")  # filtered in place, as scipy does
    _sosfilt(sos, y, np.array(zi.reshape(1, -1, 2), np.float64, order="C"))
    return y.reshape(-1)
