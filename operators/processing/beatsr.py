"""ECG super-resolution from the patient's own beat: what a low-rate monitor cannot carry, taken from context.

A 25 Hz ECG keeps the band below ~11 Hz; most of the QRS complex lies above it. That band is stereotyped per
patient, so when an earlier full-rate ECG of the same patient is known (a `PairedContext`), its median beat
supplies it:

1. `qrs_template`: median beat of the context ECG around sub-sample R times on a 1 kHz grid, split at the
   source's cutoff into a low band (what the low-rate source also shows) and a high band (what it lost).
2. `paste_high_band`: the template's low band is slid over the (upsampled) source's low band in 1 ms steps;
   where the shapes match (normalised cross-correlation, one beat per refractory period) the high band is
   added with the least-squares gain. The low band fixes a beat's time to well under one 40 ms source sample.

The result is only the high band; callers add it to their own low band (`operators.processing.resample.merge_bands`).
The context must be sampled at least as fast as the output: its high band is what gets pasted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

from operators.processing.filters import butter_sos, sosfiltfilt
from operators.processing.samples import fill_nonfinite, segment_index
from operators.processing.resample import resample
from operators.processing.rpeaks import detect_rpeaks, refine_peak_times

__all__ = ["QrsTemplate", "qrs_template", "paste_high_band", "sr_cutoff_hz", "FINE_RATE"]

FINE_RATE = 1000.0  # beat timing resolution (1 ms)
BEFORE_S, AFTER_S = 0.25, 0.45  # template span around R: QRS and most of the T wave ...
NEIGHBOUR_GAP_S = 0.1  # ... ending at least this long before a neighbouring R (its QRS starts ~50 ms before it)
GAIN_RANGE = (0.5, 2.0)  # per-beat amplitude may drift (respiration), within reason
MIN_BEATS = 3
REFRACTORY_S = 0.25  # no two beats closer (240 bpm)
MATCH_HP_HZ = 1.0  # beats are matched above baseline wander ...
# ... and count where the shape matches this well (normalised cross-correlation), using a template cut by the
# window's edge only if its part inside holds this share of its energy. Both chosen on the TRAINING records
# (grid 0.5-0.95 x 0.6-0.8, 25 Hz Butterworth input: 0.966 vs 0.965-0.966 elsewhere).
MIN_NCC = 0.7
MIN_COVER = 0.6


SOURCE_BAND_FRACTION = 0.9  # SR keeps a source below 90% of its Nyquist frequency; above, it is synthesized


def sr_cutoff_hz(source_rate: float) -> float:
    """Where super-resolution splits what a `source_rate` signal measured from what it lost.

    Parameters
    ----------
    source_rate : the low-rate source's sample rate (Hz).

    Returns
    -------
    SOURCE_BAND_FRACTION x the source's Nyquist frequency (Hz).
    """
    return SOURCE_BAND_FRACTION * float(source_rate) / 2.0


@dataclass(frozen=True)
class QrsTemplate:
    """A patient's median beat around R at FINE_RATE, split at `cutoff_hz` into the band matched and the band pasted."""

    low: np.ndarray  # zero-mean band MATCH_HP_HZ..cutoff_hz at FINE_RATE: matched against the source
    high: np.ndarray  # band above `cutoff_hz`: what gets pasted
    cutoff_hz: float
    n_beats: int


def _lowpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    sos = butter_sos(4, cutoff_hz, "low", FINE_RATE)
    return sosfiltfilt(sos, x)


def _bandpass(x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """The band beats are matched in: below the source's cutoff, above baseline wander."""
    sos = butter_sos(2, (MATCH_HP_HZ, cutoff_hz), "band", FINE_RATE)
    return sosfiltfilt(sos, x)


def qrs_template(ecg: np.ndarray, rate_hz: float, cutoff_hz: float) -> QrsTemplate | None:
    """The patient's median beat from a full-rate context ECG, split at `cutoff_hz`; None with < 3 clean beats.

    Parameters
    ----------
    ecg : the context's ECG (NaN/inf runs are interpolated first).
    rate_hz : its sample rate (Hz).
    cutoff_hz : the split (Hz, `sr_cutoff_hz` of the low-rate source), below `rate_hz / 2`.

    Raises
    ------
    ValueError : `cutoff_hz` not below the context's Nyquist frequency.
    """
    x = fill_nonfinite(np.asarray(ecg, dtype=np.float64))[0]
    if not 0 < cutoff_hz < rate_hz / 2:
        raise ValueError(f"cutoff {cutoff_hz} Hz must lie below the context's Nyquist frequency ({rate_hz / 2} Hz)")
    r = detect_rpeaks(x, rate_hz)
    if len(r) < MIN_BEATS:
        return None
    fine = resample(x, rate_hz, FINE_RATE, method="polyphase")
    # The span stops short of the neighbouring beats' QRS: above ~130 bpm a fixed +0.45 s would reach the next R,
    # whose detail would be pasted twice (R drawn 1.58 for 1.25 at 180 bpm) or cut by the end-to-end detrend.
    rr = float(np.median(np.diff(r))) / rate_hz
    a = int(min(BEFORE_S, rr - NEIGHBOUR_GAP_S) * FINE_RATE)
    b = int(min(AFTER_S, rr - NEIGHBOUR_GAP_S) * FINE_RATE)
    ri = np.round(refine_peak_times(x, r, rate_hz) * FINE_RATE).astype(np.int64)
    idx = segment_index(ri, a, b, len(fine))
    if len(idx) < MIN_BEATS:
        return None
    tpl = np.median(fine[idx], axis=0)
    tpl -= np.linspace(tpl[0], tpl[-1], len(tpl))  # ends at zero: pasting leaves no steps
    pad = np.zeros(len(tpl))
    padded = np.concatenate([pad, tpl, pad])
    low = _lowpass(padded, cutoff_hz)[len(pad) : -len(pad)]
    match = _bandpass(padded, cutoff_hz)[len(pad) : -len(pad)]
    return QrsTemplate(low=match - match.mean(), high=tpl - low, cutoff_hz=float(cutoff_hz), n_beats=len(idx))


def paste_high_band(x: np.ndarray, rate_hz: float, tpl: QrsTemplate) -> np.ndarray:
    """High band for `x` (a low-rate ECG already interpolated to `rate_hz`, same units as the context):
    the template's high band at each beat, timed and scaled by matching low bands. Same length as `x`.

    Parameters
    ----------
    x : the interpolated low-rate ECG (NaN/inf runs are interpolated first).
    rate_hz : `x`'s sample rate (Hz).
    tpl : the patient's template (`qrs_template`).
    """
    x = fill_nonfinite(np.asarray(x, dtype=np.float64))[0]
    n = len(x)
    out = np.zeros(n)
    if n < 2:
        return out
    ln = len(tpl.low)
    fine = _bandpass(resample(x, rate_hz, FINE_RATE, method="polyphase"), tpl.cutoff_hz)
    # zero margins let beats cut by the window's edges be matched on their part inside the window
    padded = np.concatenate([np.zeros(ln), fine, np.zeros(ln)])
    inside = np.concatenate([np.zeros(ln), np.ones(len(fine)), np.zeros(ln)])
    corr = lambda a, b: sps.correlate(a, b, mode="valid", method="fft")  # [k]: template starting at fine index k - ln
    t_energy = corr(inside, tpl.low ** 2)  # template energy inside the window
    s_energy = np.maximum(corr(padded ** 2, np.ones(ln)), 1e-12)
    dot = corr(padded, tpl.low)
    covered = t_energy >= MIN_COVER * float(tpl.low @ tpl.low)
    t_energy = np.maximum(t_energy, 1e-12)
    # beats: where the shape matches (normalised cross-correlation), one per refractory period; the least-squares
    # gain there scales the pasted band (the same patient's beat, so it stays near 1)
    ncc = np.where(covered, dot / np.sqrt(t_energy * s_energy), 0.0)
    peaks, _ = sps.find_peaks(ncc, height=MIN_NCC, distance=int(REFRACTORY_S * FINE_RATE))
    gain = np.clip(dot / t_energy, *GAIN_RANGE)
    acc = np.zeros(len(padded))
    for k in peaks:
        acc[k : k + ln] += gain[k] * tpl.high
    y = resample(acc[ln : ln + len(fine)], FINE_RATE, rate_hz, method="polyphase")  # anti-aliased back to rate_hz
    out[: min(n, len(y))] = y[:n]
    return out
