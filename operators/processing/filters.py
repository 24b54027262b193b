"""Butterworth filter designs, computed once per parameter set.

Every window's quality check, R-peak detection, context selection and PPG->ECG prior filters with one of a handful
of fixed designs (a band or cut-off at a stream's rate). Designing one (`scipy.signal.butter`: poles, zeros,
second-order sections) cost about as much as applying it to an 8 s window, thousands of times a second under load;
the design is a pure function of its parameters, so it is made once; callers get a copy (scipy's filters take only
writable arrays, and a caller may modify what it gets).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal as sps

__all__ = ["butter_sos"]


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
