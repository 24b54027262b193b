"""Classic (non-learned) translators: the comparison baseline and the fallback until CLMT exists.

`ClassicTranslator`
- `sr`: polyphase (default) or cubic resampling to the target rate. For an ECG with `request.context` sampled at
  least at the target rate: below 90% of the source's Nyquist frequency the resampled source, above it that
  patient's median QRS pasted at beat times matched in the low band (`operators.processing.beatsr`).
- `ppg2ecg`, "shifted PPG pulses": each PPG pulse's time (its tangent foot, `operators.processing.rpeaks.ppg_foot_times`,
  or with `fiducial="peak"` its systolic peak) moved back by a pulse-arrival delay gives an R time; an ECG beat
  template is drawn at each R time, its P and T parts stretched to the local RR interval (QRS kept at its
  width). Without context: a generic sum-of-Gaussians lead-II beat and the population delay
  (`DEFAULT_DELAYS_S`). With `request.context` (same patient's ECG + PPG): that patient's median R -> pulse
  delay and median beat. The drawing is blurred by the beat-timing error (`TIMING_BLUR_S`): the expected ECG
  when each R time is only known to ~13 ms.

`PassthroughTranslator`: translation disabled (benchmark ceiling); the source is linearly
interpolated to the target rate.

Both are deterministic, stateless apart from a lock-protected cache of context estimates, and
safe to call from several threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d

from operators.state.context import ContextCache
from operators.processing.samples import fill_nonfinite, fit_length
from operators.processing.beatsr import paste_high_band, qrs_template, sr_cutoff_hz
from operators.processing.resample import METHODS, merge_bands, resample
from operators.processing.rpeaks import detect_ppg_peaks, detect_rpeaks, ppg_foot_times, refine_peak_times
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest, is_ecg_signal

__all__ = ["ClassicTranslator", "PassthroughTranslator", "BeatModel", "generic_beat_model",
           "beat_model_from_context", "render_ecg", "blur_timing", "pulse_delays", "pulse_times", "DEFAULT_DELAYS_S", "FIDUCIALS",
           "TIMING_BLUR_S"]

# Which point of a PPG pulse stands for the beat. "foot" (tangent foot) drifts less against the R peak than
# "peak" (systolic peak); measurements: models/weights/MODEL_CARD.md, "Beat timing from the PPG pulse's foot".
FIDUCIALS = ("foot", "peak")
# R peak -> the pulse (first systolic peak >= MIN_PAT_S later) at that fiducial: median of the per-record
# medians over BIDMC's 33 training records at 125 Hz (per record 0.38-0.59 s to the foot, 0.54-0.76 s to
# the peak). Far above a physiological pulse-arrival time (~0.2-0.3 s to the peak) because the MIMIC-II
# monitor stores PLETH with a latency of roughly one beat relative to ECG; the context path measures each
# patient's own value.
DEFAULT_DELAYS_S = {"foot": 0.52, "peak": 0.65}
# A foot more than this off the median peak-to-foot interval (noise, a notch taken for the onset) is not used:
# that pulse is timed from its peak. A guard rather than a tuned value (the limit barely moves the scores; model card).
FOOT_TOLERANCE_S = 0.06
MIN_PAT_S = 0.15  # a PPG peak sooner than this after an R peak belongs to an earlier beat
TIMING_RATE_HZ = 125.0  # pulses are timed at no more than this rate (see pulse_times)
DEFAULT_RR_S = 0.8
# R times predicted from PPG pulses are off by the beat-to-beat jitter of the pulse delay (robust SD ~13 ms at
# the foot on BIDMC's training records). Under a Gaussian timing error the MSE-optimal drawing is the template
# convolved with that Gaussian; how the SD was chosen on the training records: models/weights/MODEL_CARD.md.
TIMING_BLUR_S = 0.013
QRS_HALF_S = 0.06  # +-60 ms around R is drawn unstretched
PRE_FRAC = 0.35  # share of the RR interval drawn before R (P wave side)

# Generic lead-II beat at RR = 1 s: (offset from R s, amplitude mV, width s)
_GENERIC_WAVES = (
    (-0.20, 0.12, 0.025),  # P
    (-0.035, -0.10, 0.010),  # Q
    (0.0, 1.00, 0.012),  # R
    (0.035, -0.20, 0.012),  # S
    (0.28, 0.30, 0.055),  # T
)


@dataclass(frozen=True)
class BeatModel:
    """A beat sampled on `t` (s relative to R, from -PRE_FRAC*rr to (1-PRE_FRAC)*rr), ends at 0."""

    t: np.ndarray
    v: np.ndarray
    rr_s: float  # RR interval the template was built at
    delay_s: float  # R peak -> the PPG pulse's fiducial (foot or systolic peak, as the model was built for)
    level: float = 0.0  # the ECG's isoelectric level between beats (monitors store lead II with an offset)


def _zero_ends(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Subtract the line through both ends so consecutive beats join without steps.
    return v - (v[0] + (v[-1] - v[0]) * (t - t[0]) / (t[-1] - t[0]))


def generic_beat_model(delay_s: float = DEFAULT_DELAYS_S["foot"], rr_s: float = 1.0) -> BeatModel:
    """The population's beat: a sum-of-Gaussians lead-II PQRST (mV) for when no patient context is known.

    Parameters
    ----------
    delay_s : R peak -> PPG pulse delay the model assumes (s).
    rr_s : RR interval the template spans (s).
    """
    t = np.linspace(-PRE_FRAC * rr_s, (1 - PRE_FRAC) * rr_s, 1001)
    v = np.zeros_like(t)
    for off, amp, width in _GENERIC_WAVES:
        v += amp * np.exp(-0.5 * ((t - off) / width) ** 2)
    return BeatModel(t, _zero_ends(t, v), rr_s, float(delay_s))


def pulse_times(ppg: np.ndarray, rate_hz: float, fiducial: str = "foot") -> tuple[np.ndarray, np.ndarray]:
    """(systolic peak times, pulse times at `fiducial`), s. A pulse whose foot cannot be timed (onset before
    the signal, no upstroke) or lies beyond FOOT_TOLERANCE_S of the usual is placed the median peak-to-foot
    interval before its peak, so no beat is lost.

    Parameters
    ----------
    ppg : PPG samples (finite).
    rate_hz : sample rate (Hz); above TIMING_RATE_HZ the PPG is resampled to it first.
    fiducial : "foot" or "peak".
    """
    if rate_hz > TIMING_RATE_HZ:
        # The foot's tangent is a slope: on a spline through a fast, unfiltered PPG it follows the sensor noise
        # (foot SD 4 ms at 125 Hz, 16 ms at 500 Hz with the same 1 % noise). A pulse holds nothing above ~15 Hz.
        ppg, rate_hz = resample(np.asarray(ppg, dtype=np.float64), rate_hz, TIMING_RATE_HZ), TIMING_RATE_HZ
    peaks = detect_ppg_peaks(ppg, rate_hz)
    p_t = refine_peak_times(ppg, peaks, rate_hz)
    if fiducial == "peak" or len(p_t) == 0:
        return p_t, p_t
    f_t = ppg_foot_times(ppg, peaks, rate_hz)
    ok = np.isfinite(f_t)
    # no foot timed at all (one pulse cut at the window's start, a noisy window): the population's usual lead
    lead = float(np.median(p_t[ok] - f_t[ok])) if ok.any() else DEFAULT_DELAYS_S["peak"] - DEFAULT_DELAYS_S["foot"]
    ok &= np.abs(p_t - f_t - lead) <= FOOT_TOLERANCE_S  # a foot far off its peak's usual lead is mis-timed
    return p_t, np.where(ok, f_t, p_t - lead)


def pulse_delays(r_t: np.ndarray, p_t: np.ndarray, pulse_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `r_t`, R peak -> pulse delays) of the R peaks that have a pulse. Each R's pulse is the first
    systolic peak `p_t` >= MIN_PAT_S later (pairing by the peak, the pulse's clearest point), no more than
    MIN_PAT_S + 2 s later, and the delay is measured to that pulse's `pulse_t`.

    Parameters
    ----------
    r_t : R peak times (s, ascending).
    p_t : systolic peak times (s, ascending).
    pulse_t : each pulse's time at the fiducial in use (s), aligned with `p_t`.
    """
    j = np.searchsorted(p_t, r_t + MIN_PAT_S)
    i = np.flatnonzero(j < len(p_t))
    i = i[p_t[j[i]] - r_t[i] < MIN_PAT_S + 2.0]
    return i, pulse_t[j[i]] - r_t[i]


def _estimate_delay(r_t: np.ndarray, p_t: np.ndarray, pulse_t: np.ndarray) -> float | None:
    """Median R peak -> pulse delay (`pulse_delays`); None with fewer than 3 beats."""
    if len(r_t) < 3 or len(p_t) < 3:
        return None
    d = pulse_delays(r_t, p_t, pulse_t)[1]
    return float(np.median(d)) if len(d) >= 3 else None


def beat_model_from_context(ctx: PairedContext, fiducial: str = "foot",
                            rpeaks: np.ndarray | None = None) -> BeatModel | None:
    """Patient-specific delay (R peak -> pulse `fiducial`) and median beat from earlier simultaneous
    ECG + PPG (None if unusable: fewer than 3 R peaks, or a median RR outside 0.25-2.5 s).

    Parameters
    ----------
    ctx : the patient's paired context.
    fiducial : "foot" or "peak" (the PPG point the delay is measured to).
    rpeaks : `detect_rpeaks(ctx.ecg, ctx.rate_hz)` (sample indices) when the caller has it already.
    """
    fs = float(ctx.rate_hz)
    ecg, _ = fill_nonfinite(np.asarray(ctx.ecg, dtype=np.float64))
    ppg, _ = fill_nonfinite(np.asarray(ctx.ppg, dtype=np.float64))
    r = detect_rpeaks(ecg, fs) if rpeaks is None else rpeaks
    if len(r) < 3:
        return None
    r_t = refine_peak_times(ecg, r, fs)
    p_t, pulse_t = pulse_times(ppg, fs, fiducial)
    delay = _estimate_delay(r_t, p_t, pulse_t)
    rr = float(np.median(np.diff(r_t)))
    if not (0.25 <= rr <= 2.5):
        return None
    t = np.linspace(-PRE_FRAC * rr, (1 - PRE_FRAC) * rr, max(64, int(round(rr * max(fs, 500.0)))))
    # Sub-sample aligned beats through a spline of the whole context (sharp at 25 Hz too).
    spline = CubicSpline(np.arange(len(ecg)) / fs, ecg)
    dur = len(ecg) / fs
    inside = (r_t + t[0] >= 0) & (r_t + t[-1] <= dur - 1.0 / fs)
    if inside.sum() < 2:
        return None
    beats = spline(r_t[inside, None] + t[None, :])
    v = np.median(beats, axis=0)
    level = 0.5 * float(v[0] + v[-1])  # the beat's ends lie between beats: the baseline the drawing sits on
    return BeatModel(t, _zero_ends(t, v), rr, DEFAULT_DELAYS_S[fiducial] if delay is None else delay, level)


def _fill_edges(r: np.ndarray, t0: float, t1: float, rr_default: float, pre: float, post: float) -> np.ndarray:
    """Extrapolate beats at both ends with the local RR so the window edges are covered.

    PPG peaks of the last beats lie beyond the window (they arrive `delay` later), so without this
    the end of every window would lack beats.
    """
    if len(r) == 0:
        return r
    rr_first = float(np.median(np.diff(r[:4]))) if len(r) >= 2 else rr_default
    rr_last = float(np.median(np.diff(r[-4:]))) if len(r) >= 2 else rr_default
    head, tail = [], []
    t = r[0] - rr_first
    while t + post * rr_first > t0 and len(head) < 50:
        head.append(t)
        t -= rr_first
    t = r[-1] + rr_last
    while t - pre * rr_last < t1 and len(tail) < 50:
        tail.append(t)
        t += rr_last
    return np.concatenate([np.asarray(head[::-1]), r, np.asarray(tail)])


def render_ecg(r_t: np.ndarray, model: BeatModel, n_out: int, rate_hz: float) -> np.ndarray:
    """Draw `model` at beat times `r_t` (s) onto `n_out` samples at `rate_hz` (vectorised).

    Sample k belongs to the beat whose territory [R - PRE_FRAC*RR_before, R + (1-PRE_FRAC)*RR_after)
    holds it; outside the QRS (+-QRS_HALF_S) time is scaled so the territory maps onto the template.

    Parameters
    ----------
    r_t : beat (R peak) times (s from sample 0).
    model : the beat drawn.
    n_out : output samples.
    rate_hz : output rate (Hz).

    Returns
    -------
    float64 drawing, zero-based (add `model.level` for the patient's ECG level).
    """
    out = np.zeros(n_out, dtype=np.float64)
    if len(r_t) == 0 or n_out == 0:
        return out
    t = np.arange(n_out) / float(rate_hz)
    r_t = np.sort(np.asarray(r_t, dtype=np.float64))
    rr = np.diff(r_t)
    rr_before = np.concatenate([[rr[0] if len(rr) else model.rr_s], rr])
    rr_after = np.concatenate([rr, [rr[-1] if len(rr) else model.rr_s]])
    bounds = r_t[:-1] + (1 - PRE_FRAC) * rr  # territory borders between consecutive beats
    k = np.searchsorted(bounds, t, side="right")
    dt = t - r_t[k]
    pre_t, post_t = -model.t[0], model.t[-1]
    span = np.where(dt < 0, PRE_FRAC * rr_before[k], (1 - PRE_FRAC) * rr_after[k])
    tmpl_span = np.where(dt < 0, pre_t, post_t)
    q = min(QRS_HALF_S, 0.9 * pre_t, 0.9 * post_t)
    mag = np.abs(dt)
    scale = (tmpl_span - q) / np.maximum(span - q, 1e-3)
    tau = np.where(mag <= q, mag, q + (mag - q) * scale)
    tau = np.sign(dt) * np.minimum(tau, tmpl_span)
    # Beats at the outer edges have no territory limit; beyond the template it is baseline.
    out = np.interp(tau, model.t, model.v, left=0.0, right=0.0)
    return out


def blur_timing(x: np.ndarray, rate_hz: float, sd_s: float = TIMING_BLUR_S) -> np.ndarray:
    """`x` convolved with a Gaussian of `sd_s` seconds: what a drawing with that beat-timing error looks like on
    average. `sd_s` = 0 returns `x` unchanged.

    Parameters
    ----------
    x : samples.
    rate_hz : sample rate (Hz).
    sd_s : timing error SD (s).
    """
    if sd_s <= 0 or len(x) < 2:
        return x
    return gaussian_filter1d(np.asarray(x, dtype=np.float64), sd_s * float(rate_hz), mode="nearest")


class ClassicTranslator:
    """Signal-processing translator (see module doc). `sr_method`: "polyphase" | "cubic"; `fiducial`: "foot" |
    "peak" (the PPG point beats are timed from); `default_delay_s`: without context, R peak -> that point."""

    def __init__(self, sr_method: str = "polyphase", default_delay_s: float | None = None, cache_size: int = 4096,
                 timing_blur_s: float = TIMING_BLUR_S, fiducial: str = "foot"):
        if sr_method not in METHODS:
            raise ValueError(f"sr_method must be one of {METHODS}, got {sr_method!r}")
        if fiducial not in FIDUCIALS:
            raise ValueError(f"fiducial must be one of {FIDUCIALS}, got {fiducial!r}")
        self.fiducial = fiducial
        default_delay_s = DEFAULT_DELAYS_S[fiducial] if default_delay_s is None else default_delay_s
        if timing_blur_s < 0:
            raise ValueError(f"timing_blur_s must be >= 0, got {timing_blur_s}")
        self.sr_method = sr_method
        self.timing_blur_s = float(timing_blur_s)
        self.name = "classic" if sr_method == "polyphase" else f"classic-{sr_method}"
        self._generic = generic_beat_model(default_delay_s)
        self._cache = ContextCache(cache_size)

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        """`operators.translator.Translator.translate`: one float32 array of `n_out` samples per request."""
        return [self._one(r) for r in requests]

    # ------------------------------------------------------------------

    def _one(self, req: TranslationRequest) -> np.ndarray:
        n_out = req.n_out
        src, _ = fill_nonfinite(np.asarray(req.source, dtype=np.float64))
        if req.task == SR:
            y = self._sr(src, req)
        elif req.task == PPG2ECG:
            y = self._ppg2ecg(src, req, n_out)
        else:
            raise ValueError(f"ClassicTranslator cannot serve task {req.task!r}")
        y = np.asarray(y, dtype=np.float32)
        return fit_length(y, n_out)  # the contract is exact length

    def beat_model(self, ctx: PairedContext | None, bed=None, rpeaks: np.ndarray | None = None) -> BeatModel:
        """The beat PPG->ECG draws for `ctx` (the population's when None or unusable), kept per context version.

        Parameters
        ----------
        ctx : the patient's paired context, or None.
        bed : where the cache keeps it (one entry per bed; see `operators.state.context.ContextCache`).
        rpeaks : `detect_rpeaks(ctx.ecg, ctx.rate_hz)` when the caller has it already (used only when not cached).
        """
        if ctx is None:
            return self._generic
        build = lambda: beat_model_from_context(ctx, self.fiducial, rpeaks)
        return self._cache.get(ctx, "beat", build, bed) or self._generic

    def _sr(self, src: np.ndarray, req: TranslationRequest) -> np.ndarray:
        y = resample(src, req.source_rate, req.target_rate, method=self.sr_method)
        ctx, fs, ft = req.context, float(req.source_rate), float(req.target_rate)
        # an ECG with a full-rate context of the same patient: add that patient's QRS high band (operators.processing.beatsr)
        if ctx is None or not is_ecg_signal(req.source_signal) or not (fs < ft <= ctx.rate_hz) or len(y) < 2:
            return y
        cutoff = sr_cutoff_hz(fs)
        tpl = self._cache.get(ctx, ("qrs", cutoff), lambda: qrs_template(ctx.ecg, ctx.rate_hz, cutoff), req.bed)
        if tpl is None:
            return y
        return merge_bands(y, np.zeros_like(y), ft, cutoff) + paste_high_band(y, ft, tpl)

    def _ppg2ecg(self, ppg: np.ndarray, req: TranslationRequest, n_out: int) -> np.ndarray:
        fs = float(req.source_rate)
        model = self.beat_model(req.context, req.bed)
        p_t, pulse_t = pulse_times(ppg, fs, self.fiducial)
        r_t = pulse_t - model.delay_s
        rr_default = float(np.median(np.diff(p_t))) if len(p_t) >= 2 else model.rr_s
        dur = len(ppg) / fs
        r_t = _fill_edges(r_t, 0.0, dur, rr_default, PRE_FRAC, 1 - PRE_FRAC)
        y = blur_timing(render_ecg(r_t, model, n_out, float(req.target_rate)), float(req.target_rate), self.timing_blur_s)
        return y + model.level  # in the context ECG's own level, like the patient's real lead II


class PassthroughTranslator:
    """No translation: the source linearly interpolated to the target rate (throughput ceiling)."""

    name = "passthrough"

    def translate(self, requests: Sequence[TranslationRequest]) -> list[np.ndarray]:
        """`operators.translator.Translator.translate`: each source linearly interpolated to `n_out` samples."""
        out = []
        for req in requests:
            x = np.asarray(req.source, dtype=np.float32)
            n_out = req.n_out
            if len(x) == 0:
                out.append(np.zeros(n_out, np.float32))
                continue
            t_out = np.arange(n_out) * (float(req.source_rate) / float(req.target_rate))
            out.append(np.interp(t_out, np.arange(len(x)), x).astype(np.float32))
        return out
