"""Numpy preprocessing shared by training and serving, so both see windows prepared the same way."""
from __future__ import annotations

import numpy as np

from operators.classic import ClassicTranslator
from operators.processing.samples import fill_nonfinite, segment_index
from operators.processing.resample import low_rate_copy, resample
from operators.translator import PPG2ECG, PairedContext, TranslationRequest
from operators.processing.rpeaks import detect_ppg_peaks, detect_rpeaks
from operators.vocab import CANONICAL_RATE_HZ, LOWRES_KINDS

PAT_RANGE_S = (0.05, 1.0)  # R-peak -> PPG systolic peak, incl. monitor processing delay


def zscore(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(float32 `(x - mean) / std`, mean, std); a spread below 1e-6 counts as 1 (a flat window stays flat)."""
    x = np.asarray(x, dtype=np.float64)
    mu, sd = float(np.mean(x)), float(np.std(x))
    sd = sd if sd > 1e-6 else 1.0
    return ((x - mu) / sd).astype(np.float32), mu, sd




def lowres_then_up(x: np.ndarray, rate: float, kind: str = "fir") -> np.ndarray:
    """What a `rate` Hz monitor would send, brought back to 100 Hz the way the engine does it.

    Monitors differ: "fir" low-passes with a sharp FIR (polyphase) before decimating; "iir" (an 8th-order
    Butterworth at 0.8 x the new Nyquist frequency) and "plain" (every k-th sample: aliasing) are
    `operators.processing.resample.low_rate_copy`'s, as `wavebridge evaluate` makes its low-rate input."""
    if kind == "fir":
        lo = resample(x, CANONICAL_RATE_HZ, rate, method="polyphase")
    elif kind in ("iir", "plain"):
        step = CANONICAL_RATE_HZ / rate
        if kind == "plain" and abs(step - round(step)) > 1e-9:  # every 2.5th sample does not exist: it would stretch time
            raise ValueError(f"plain subsampling needs {CANONICAL_RATE_HZ:g} Hz / rate to be a whole number, got {rate:g} Hz")
        lo = low_rate_copy(np.asarray(x), CANONICAL_RATE_HZ, rate, kind)
    else:
        raise ValueError(f"unknown low-rate kind {kind!r}; expected one of {LOWRES_KINDS}")
    up = to_canonical(lo, rate)[: len(x)]
    # rounding at the low rate can leave the round trip a sample or two short: hold the last value
    return np.concatenate([up, np.repeat(up[-1:], len(x) - len(up))]) if 0 < len(up) < len(x) else up


def to_canonical(x: np.ndarray, rate: float) -> np.ndarray:
    """`x` sampled at `rate` Hz -> float32 at 100 Hz. Upsampling uses a cubic spline (no ringing around sharp QRS); downsampling
    is anti-aliased polyphase."""
    if abs(rate - CANONICAL_RATE_HZ) < 1e-9:
        return np.asarray(x, dtype=np.float32)
    method = "cubic" if rate < CANONICAL_RATE_HZ else "polyphase"
    return resample(np.asarray(x, dtype=np.float64), rate, CANONICAL_RATE_HZ, method=method).astype(np.float32)


def estimate_pat_s(ecg: np.ndarray, ppg: np.ndarray, rate: float, prior_s: float = 0.64,
                   rpeaks: np.ndarray | None = None) -> float:
    """Delay from R-peak to the PPG systolic peak of the same beat; NaN when it cannot be measured.

    On BIDMC (MIMIC monitors) this delay is ~0.6 s, often longer than one RR interval, so "the next
    PPG peak" is wrong. Instead every candidate delay in `PAT_RANGE_S` is scored by how many R-peaks
    have a PPG peak within +-30 ms of R + delay; among near-best candidates (a regular rhythm makes
    delay and delay - RR look alike) the one nearest the population prior wins. `rpeaks`: `detect_rpeaks(ecg,
    rate)` when the caller has it already.
    """
    r = detect_rpeaks(ecg, rate) if rpeaks is None else rpeaks
    p = detect_ppg_peaks(ppg, rate)
    if len(r) < 3 or len(p) < 3:
        return float("nan")
    cands = np.arange(PAT_RANGE_S[0], PAT_RANGE_S[1] + 1e-9, 0.01)
    tol = 0.03 * rate
    d = (p[None, :] - r[:, None]).astype(np.float64)  # (R, P) sample offsets
    d = d[(d > 0) & (d < PAT_RANGE_S[1] * rate + tol)]
    if len(d) < 3:
        return float("nan")
    score = np.array([np.sum(np.abs(d - c * rate) <= tol) for c in cands])
    good = cands[score >= 0.8 * score.max()]
    best = good[np.argmin(np.abs(good - prior_s))]
    near = d[np.abs(d - best * rate) <= tol]  # refine: median of the offsets that voted for it
    return float(np.median(near) / rate) if len(near) else float(best)


def align_ppg(x: np.ndarray, pat_s: float, rate: float = CANONICAL_RATE_HZ) -> np.ndarray:
    """Shift PPG earlier by the pulse-arrival delay so each beat's pulse sits where its R-peak will be.

    The last `pat` seconds have no future pulse inside the window; they repeat the edge value and the
    translator learns to extrapolate them (serving can hold those samples back as look-ahead).
    """
    k = min(int(round(pat_s * rate)), len(x))  # a window shorter than the delay is all edge value
    if k <= 0:
        return x
    return np.concatenate([x[k:], np.repeat(x[-1:], k)]).astype(np.float32)


TEMPLATE_BEFORE_S, TEMPLATE_AFTER_S = 0.32, 0.64  # 96 samples = 12 tokens at 100 Hz, stride 8
MIN_BEATS = 3


def beat_templates(ecg: np.ndarray, ppg: np.ndarray, rate: float = CANONICAL_RATE_HZ,
                   rpeaks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The patient's median ECG beat and the PPG that follows it, both aligned on R-peaks.

    This is what a paired context segment teaches the model: QRS/T morphology and, through the PPG
    template's position, the pulse-arrival delay. Both are z-scored; None when too few clean beats.
    """
    r = detect_rpeaks(ecg, rate) if rpeaks is None else rpeaks
    a, b = int(round(TEMPLATE_BEFORE_S * rate)), int(round(TEMPLATE_AFTER_S * rate))
    idx = segment_index(r, a, b, len(ecg))
    if len(idx) < MIN_BEATS:
        return None
    e = np.median(np.asarray(ecg, np.float64)[idx], axis=0)
    p = np.median(np.asarray(ppg, np.float64)[idx], axis=0)
    return zscore(e)[0], zscore(p)[0]


# The prior is drawn sharp (no timing blur: a blurred one is another input distribution) with beats timed from
# the PPG pulses' tangent feet, which measured better than systolic peaks (model card). The weights' JSON records
# the fiducial they were trained with (`prior_fiducial`); the engine refuses weights trained with another.
PRIOR_FIDUCIAL = "foot"


def prior_translator(cache_size: int = 256) -> ClassicTranslator:
    """The classic translator that draws the PPG->ECG prior (sharp, beats timed at `PRIOR_FIDUCIAL`); the engine and
    the training sampler each hold one. `cache_size`: contexts whose beat model it keeps (the engine: one per bed)."""
    return ClassicTranslator(timing_blur_s=0.0, fiducial=PRIOR_FIDUCIAL, cache_size=cache_size)


def ecg_prior(classic: ClassicTranslator, ppg: np.ndarray, context: PairedContext | None,
              rate: float = CANONICAL_RATE_HZ, bed: str | None = None) -> np.ndarray:
    """The translator's prior: classic PPG->ECG synthesis, z-scored.

    Parameters
    ----------
    classic : ClassicTranslator
        From `prior_translator()`.
    ppg : np.ndarray
        (N,) PPG window at `rate` Hz (not shifted by the pulse delay).
    context : PairedContext, optional
        The patient's paired ECG + PPG; without one the synthesis uses a population beat.
    rate : float
        Sample rate of `ppg` in Hz.
    bed : str, optional
        The bed: `classic` then keeps one beat model per bed, the latest context version's (serving).

    Returns
    -------
    np.ndarray
        (N,) float32 synthetic lead II at `rate` Hz, z-scored.
    """
    y = classic.translate([TranslationRequest(PPG2ECG, np.asarray(ppg, np.float32), rate, rate, "PLETH",
                                              context=context, meta={"bed": bed} if bed is not None else {})])[0]
    return zscore(y)[0]


def finite(x) -> np.ndarray:
    """float64 copy with NaN/inf runs interpolated (`operators.processing.samples.fill_nonfinite`), for serving and
    training alike: a zero or a huge value in their place would be drawn by the model as a beat or squash the
    window's z-score."""
    return fill_nonfinite(np.asarray(x, dtype=np.float64))[0]
