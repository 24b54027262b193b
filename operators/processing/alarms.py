"""Arrhythmia-alarm verification against a bed's own signals: is a monitor's alarm real?

The classic approach of the 2015 PhysioNet/CinC Challenge's best entries (Plesinger et al., Eerikaeinen et
al., Fallet et al.): detect beats independently in every channel (each ECG lead with a Pan-Tompkins
detector, the PLETH and ABP pulses with an event-related moving-average detector, and the ECG synthesized
from PLETH), grade every channel's quality in the analysis window, and fuse the channels by quality.

The fusion is asymmetric on purpose, because a suppressed true alarm costs a life and a false one costs
attention (the Challenge weighs a false negative five times): an alarm is judged `false` only when at least
one channel of good quality *contradicts* the alarm's definition (e.g. regular pulses every second in a
clean arterial line during an "asystole") and no good channel *supports* it. A channel with poor quality
never speaks against an alarm: a flat or noisy ECG is exactly what a real asystole or VF looks like. Where
nothing usable contradicts, the verdict is `true` (a good channel supports it) or `uncertain`; an alarm
system must treat `uncertain` as `true`.

Per channel and alarm type (definitions of the Challenge, `../shared/data/README.md`):
- asystole (no QRS for >= 4 s): contradicted by beats with no gap longer than ``ASYSTOLE_CONTRA_GAP_S``
  and short against the channel's own beat interval, but not by an ECG lead whose beats are mostly unlike the
  patient's usual beat or unlike each other (an artifact, at any rate: `LIKE_SHARE_MIN`);
- extreme bradycardia (< 40 bpm for 5 consecutive beats): contradicted when the slowest 5 beats are fast;
  an ECG lead's support counts only as far as no other ECG lead contradicts (`LEAD_AGREEMENT`);
- extreme tachycardia (> 140 bpm for 17 consecutive beats): contradicted when the fastest 17 are slow;
- ventricular tachycardia (>= 5 ventricular beats above 100 bpm): an ECG lead contradicts when no 5 beats
  exceed 100 bpm, or when no run of beats unlike the patient's own earlier beat repeats one shape, but
  only as far as its usual-looking beats explain its activity (a rhythmic unexplained stretch may be a run
  the beat detector missed, unless another channel keeps its rhythm through it); a pulse channel (PLETH,
  ABP) contradicts when its pulses stay regular through
  the window (`VT_PULSE_CV`): a ventricular run disturbs the pulse rhythm, noise on the ECG does not;
- ventricular flutter/fibrillation (fibrillatory waveform >= 4 s): contradicted by regular beats or pulses
  with no gap reaching 4 s (a fibrillating heart ejects nothing); as for asystole, not by an ECG lead whose
  beats are an artifact.
Each contradiction is a number in [0, 1] (graded near the threshold); it is weighed by the channel's quality
score, the strongest support is subtracted, and the result (`false_score`) is compared with a per-type
threshold (`VerifierConfig.false_threshold`; the evaluation fits it on training folds only). An asystole or VF is
never judged false on the word of one ECG lead: with no other channel usable at the onset its false score is 0
(`NEVER_ON_ONE_LEAD`).

Missing samples (NaN: a dropped chunk, data a restarted worker did not read again) are no evidence: a channel
supports an alarm only from what it showed (beat-free stretches and slow rates measured on its finite samples), and
a hole that could hide a beat keeps it from contradicting a tachycardia or VT (`MISSING_HIDES_BEAT_S`).

Modes: ``realtime`` uses data up to the alarm only; ``retrospective`` also the `wait_s` after it: the
detectors see it (no beat near the onset is lost to the data's edge) and the reported beats reach
``RETRO_POST_S`` past the onset, but every number is judged on the window up to the onset, where the
Challenge's event is.

Pure numpy/scipy (operators layering); the synthesized ECG is produced by the caller's translator (any
`operators.translator.Translator`, loaded by spec) through `synthesize_ecg`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from operators.processing.filters import butter_sos, sosfiltfilt
from operators.state.context import select_context
from operators.processing.quality import NONFINITE, TOO_SHORT, UNUSABLE, assess, kind_of, ppg_periodicity
from operators.processing.samples import fill_nonfinite, true_runs
from operators.processing.rpeaks import detect_ppg_peaks, detect_rpeaks
from operators.translator import PPG2ECG, TranslationRequest, Translator, is_ecg_signal
from operators.vocab import SYNTH_ECG

__all__ = [
    "ALARM_TYPES", "CHALLENGE_TYPES", "MODES", "VERDICTS", "AlarmVerdict", "ChannelEvidence", "VerifierConfig",
    "verify_alarm", "fuse", "synthesize_ecg", "add_synthesized_ecg", "channel_kind", "parse_alarm_type", "challenge_score",
    "read_challenge_record", "ChallengeRecord",
]

ASYSTOLE, BRADY, TACHY, VTACH, VFIB = "asystole", "bradycardia", "tachycardia", "ventricular_tachycardia", \
    "ventricular_flutter_fib"
ALARM_TYPES = (ASYSTOLE, BRADY, TACHY, VTACH, VFIB)
# the Challenge header's spelling -> ours
CHALLENGE_TYPES = {"Asystole": ASYSTOLE, "Bradycardia": BRADY, "Tachycardia": TACHY,
                   "Ventricular_Tachycardia": VTACH, "Ventricular_Flutter_Fib": VFIB}
MODES = ("realtime", "retrospective")
VERDICTS = ("true", "false", "uncertain")
SYNTH = SYNTH_ECG

# An asystole or VF alarm is judged false only on near-complete contradiction (e.g. a good channel with beats
# throughout the window), whatever threshold a fit finds: suppressing a true one costs a life.
SAFETY_FLOOR = {"asystole": 0.9, "ventricular_flutter_fib": 0.9}
PRE_S = 16.0  # analysis window before the onset: the Challenge's event lies within the seconds before the alarm
LEARN_S = 60.0  # detectors see this much before the window (adaptive thresholds, the patient's own beat)
RETRO_POST_S = 10.0  # retrospective: the window reaches this far past the onset (when the wait allows)
BLOCK_S = 4.0  # quality is graded per block of this length inside the window
ASYSTOLE_CONTRA_GAP_S = 3.0  # a channel's longest beat-free gap below this (graded over 1 s) contradicts
ASYSTOLE_MAX_ABNORMAL = 2  # an ECG lead with a longer run of unusual beats does not contradict an asystole
# An ECG lead vouches against an asystole or a VF only when at least this share of its judged beats is shaped like
# the patient's usual beat ("n") and at least this share is shaped like the beat before it: "beats" that are mostly
# unlike the patient's own, or unlike each other, are an artifact (pacing spikes, electrical or motion artifact)
# that the detector takes for beats, at any rate; they say nothing about the heart (not fitted: a majority).
LIKE_SHARE_MIN = 0.5
VF_CONTRA_GAP_S = 2.5  # a fibrillating heart ejects nothing: pulses this close together throughout contradict
SYNTH_PULSE_S = (0.1, 1.2)  # a synthesized beat counts when a PLETH pulse follows it this soon (s)
ABNORMAL_CORR = 0.5  # a beat correlating less than this with the patient's earlier median beat is abnormal
ABNORMAL_WIDTH = 1.3  # ... or whose QRS is this much wider than that beat's
# A run of ventricular beats continues only while each beat's shape correlates at least this well with the one
# before it: beats from one ventricular focus repeat their shape, noise taken for beats does not.
RUN_CORR = 0.6
VT_MAX_RR_S = 0.6  # 100 bpm
VT_RUN = 5  # ventricular beats in a row (Challenge definition)
# Missing samples (a dropped chunk, data a restarted worker did not re-read) are no evidence either way. A channel
# supports an alarm only from what it showed: beat-free stretches and slow rates are measured on its finite samples
# (`_observed_gap`, `_observed_hr5`). Where missing beats would speak AGAINST an alarm (fewer beats look slower,
# a shorter run of unusual beats looks like no run), a channel with a non-finite run this long in its judged window
# does not contradict it: about one beat interval at 300 bpm, so no beat of a tachycardia or a ventricular run can
# hide in a shorter one. For asystole, bradycardia and VF a gap already counts as beat-free against the alarm.
MISSING_HIDES_BEAT_S = 0.2
# An ECG lead vouches for "no ventricular run" only where its beats explain its activity: five beats above 100 bpm
# span at least ~1.2 s (at 200 bpm), so an unexplained stretch that long may hide one. Shape contradiction is
# full up to the first value and gone at the second (s).
VT_UNEXPLAINED_S = (0.8, 1.6)
UNEXPLAINED_LEVEL = 0.25  # 0.1 s RMS above this share of the usual QRS's counts as activity
UNEXPLAINED_BRIDGE_S = 0.3  # activity gaps shorter than this (between wide complexes) do not end a stretch
VT_RHYTHM_MIN = 0.5  # unexplained activity counts when its autocorrelation at 100-250 bpm periods reaches this
VT_RHYTHM_MIN_S = 2.4  # ... measured over at least this long (four periods at 100 bpm)
# A pulse keeping its rhythm (intervals within this share of its usual one) through an ECG lead's unexplained
# stretch shows the stretch is noise: a ventricular run changes what the pulse follows.
STEADY_PULSE_TOL = 0.2
WCT_HALF_WIDTH_S = 0.06  # a usual QRS this wide at half amplitude (~120 ms QRS) cannot vouch against a VT
EXPLAIN_CORR = 0.9  # a beat explains its activity only when it correlates at least this well with the usual beat
EXPLAINED_S = (0.15, 0.5)  # a usual beat accounts for the activity this long before / after its R peak (QRS, T)
# A run of ventricular beats disturbs the pulse rhythm (premature beats fill the ventricle less: small or missing
# pulses, then a compensatory pause), whereas sinus rhythm varies its beat-to-beat interval by a few percent.
# A good pulse channel whose pulse-interval coefficient of variation over the window stays at or below the
# first value contradicts a VT fully, graded to nothing at the second (not fitted: physiology).
VT_PULSE_CV = (0.05, 0.10)
VT_PULSE_MIN_BEATS = 6  # pulses in the window needed to measure their regularity (5 intervals)
# Lowest sample rate a channel kind is analysed at (the wire allows 1 Hz): the R-peak detector's filters work from
# 25 Hz up (a QRS lasts ~0.1 s), the pulse detector's 0.5-8 Hz band needs more than 16 Hz. A slower channel is
# reported as unusable with reason RATE_TOO_LOW, never analysed.
ANALYSIS_MIN_RATE_HZ = {"ecg": 25.0, "synth": 25.0, "pulse": 20.0}
RATE_TOO_LOW = "rate_too_low"


def parse_alarm_type(name: str) -> str:
    """Our alarm type for any accepted spelling (ours, the Challenge's, or short `asys`/`vt`/`vf`).

    Parameters
    ----------
    name : the alarm type as a monitor or the Challenge writes it (case, "-" and spaces ignored).

    Raises
    ------
    ValueError : an unknown alarm type.
    """
    key = str(name).strip()
    if key in CHALLENGE_TYPES:
        return CHALLENGE_TYPES[key]
    low = key.lower().replace("-", "_").replace(" ", "_")
    short = {"asys": ASYSTOLE, "brady": BRADY, "extreme_bradycardia": BRADY, "tachy": TACHY,
             "extreme_tachycardia": TACHY, "vt": VTACH, "vtach": VTACH, "vf": VFIB, "vfib": VFIB,
             "ventricular_fibrillation": VFIB, "ventricular_flutter_fibrillation": VFIB}
    if low in ALARM_TYPES:
        return low
    if low in short:
        return short[low]
    raise ValueError(f"unknown alarm type {name!r}; expected one of {', '.join(ALARM_TYPES)}")


def channel_kind(name: str) -> str | None:
    """"ecg", "pulse" (PLETH, ABP), "synth" (ECG synthesized from PLETH) or None (not used, e.g. RESP).

    Parameters
    ----------
    name : canonical channel name, any case.
    """
    up = name.upper()
    if up == SYNTH:
        return "synth"
    if is_ecg_signal(up):
        return "ecg"
    if up in ("PLETH", "ABP", "ART", "AOBP"):
        return "pulse"
    return None


@dataclass(frozen=True)
class VerifierConfig:
    """Tunable parts of the verifier; `false_threshold` per alarm type is what cross-validation fits."""

    pre_s: float = PRE_S
    learn_s: float = LEARN_S
    retro_post_s: float = RETRO_POST_S
    # fitted on all 300 shared Challenge records in real-time mode (benchmarks/alarm_eval.py; its
    # cross-validated scores are the estimate for unseen records)
    false_threshold: Mapping[str, float] = field(default_factory=lambda: {
        ASYSTOLE: 0.983, BRADY: 0.563, TACHY: 1.0, VTACH: 0.55, VFIB: 1.0})
    channels: tuple[str, ...] = ("ecg", "pulse", "synth")  # kinds of channel used (the ablation drops some)

    def threshold(self, alarm_type: str) -> float:
        """The false-score threshold, never below SAFETY_FLOOR for the alarms that kill within minutes."""
        return max(float(self.false_threshold.get(alarm_type, 0.5)), SAFETY_FLOOR.get(alarm_type, 0.0))


@dataclass(frozen=True)
class ChannelEvidence:
    """What one channel shows in the analysis window (times in s relative to the alarm onset)."""

    name: str
    kind: str
    quality: str  # "good" | "degraded" | "unusable"
    quality_score: float  # share of the window's blocks that pass the quality checks, [0, 1]
    onset_ok: bool  # the block ending at the onset passes
    reason: str  # first failed quality check of the worst block; "" when good
    beats_s: tuple[float, ...]
    hr_bpm: float | None  # median over the window; None with < 2 beats
    max_gap_s: float  # longest span without a beat, window edges included
    hr5_min_bpm: float | None  # slowest / fastest 5 consecutive beats; None with < 5 beats
    hr5_max_bpm: float | None
    hr17_max_bpm: float | None  # fastest 17 consecutive beats
    abnormal_run: int | None  # ECG: longest run of beats unlike the patient's earlier beat (None: no template)
    contradicts: float  # [0, 1]: how strongly this channel says the alarm is false
    supports: float  # [0, 1]: how strongly it says the alarm is true
    unexplained_s: float | None = None  # ECG: longest activity its usual beats do not explain (None: no template)
    unexplained_from_s: float | None = None  # ECG: where that stretch starts (None: no stretch)
    usual_width_s: float | None = None  # ECG: half-amplitude width of the patient's usual beat (None: no template)
    # ECG: one letter per beat of beats_s: "n" shaped like the usual beat, "v" unlike it, "." neither or not judged
    # (after the judged span); None without a usual beat
    beat_shapes: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (floats rounded; what a verdict message carries per channel)."""
        d = asdict(self)
        d["beats_s"] = [round(b, 3) for b in self.beats_s]
        return {k: (_rounded(v) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass(frozen=True)
class AlarmVerdict:
    """The verification of one alarm: verdict, confidence, the fused false-score against its threshold, and the
    evidence of every channel read (`fuse`)."""

    alarm_type: str
    mode: str
    verdict: str  # "true" | "false" | "uncertain"
    confidence: float  # in [0, 1]: of `verdict` being right (for "uncertain": the false-score's margin)
    false_score: float
    threshold: float
    window_s: tuple[float, float]  # analysis window relative to the onset
    channels: tuple[ChannelEvidence, ...]
    reason: str

    @property
    def keep_alarm(self) -> bool:
        """What an alarm system should do with the alarm: only a `false` verdict lets it go, and never for the
        alarms that kill within minutes (asystole, VF: `SAFETY_FLOOR`): a flag a consumer may act on without
        reading the type must not silence those; their `false` verdict can lower the priority or route the alarm
        to a person. `uncertain` keeps it."""
        return self.verdict != "false" or self.alarm_type in SAFETY_FLOOR

    def to_dict(self) -> dict:
        """JSON-ready form (docs/verdict.schema.json)."""
        return {"verdict": self.verdict, "confidence": _rounded(self.confidence), "alarm_type": self.alarm_type,
                "mode": self.mode, "false_score": _rounded(self.false_score), "threshold": _rounded(self.threshold),
                "window_s": [_rounded(w) for w in self.window_s], "reason": self.reason,
                "channels": [c.to_dict() for c in self.channels]}


def _rounded(v: float | None, nd: int = 4) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(float(v), nd)


# ---------------------------------------------------------------- per-channel analysis


def _window_quality(x: np.ndarray, rate_hz: float, name: str, onset: int, a: int, b: int
                    ) -> tuple[float, bool, str, np.ndarray]:
    """Quality of x[a:b] in BLOCK_S blocks laid from the onset sample both ways (`operators.processing.quality.assess`;
    a block passes unless it is unusable): the share of blocks that pass, whether the block ending at the
    onset (where the alarm's event is) passes, the reason of the first failing block, and a mask over x of the
    samples of blocks that failed on what they show (flat, probe off, noise, ...): a block that failed for its
    missing samples alone keeps the rest, the missing ones being masked exactly where the mask is used."""
    n = max(1, int(round(BLOCK_S * rate_hz)))
    starts = [s for s in range(onset - n, a - 1, -n)] + [s for s in range(onset, b - n + 1, n)]
    if not starts:
        starts = [a]
    ok, reason, onset_ok = 0, "", False
    failed = np.zeros(len(x), dtype=bool)
    kind = kind_of(name)
    for s in starts:
        q = assess(x[max(s, 0):s + n], rate_hz, kind)
        passed = q.cls != UNUSABLE
        ok += passed
        if s == onset - n or len(starts) == 1:
            onset_ok = passed
        if not passed:
            failed[max(s, 0):s + n] |= bool(set(q.failing) - {NONFINITE, TOO_SHORT})
            reason = reason or q.reason
    return ok / len(starts), onset_ok, reason, failed


def _hr_extremes(beats_s: np.ndarray, k: int) -> tuple[float | None, float | None]:
    """Slowest and fastest rate (bpm) over any k consecutive beats."""
    if len(beats_s) < k:
        return None, None
    span = beats_s[k - 1:] - beats_s[: len(beats_s) - k + 1]
    span = span[span > 0]
    if not len(span):
        return None, None
    hr = 60.0 * (k - 1) / span
    return float(np.min(hr)), float(np.max(hr))


def _observed_gap(edges_s: np.ndarray, missing_s: np.ndarray) -> float:
    """The longest beat-free stretch of finite data: `edges_s` the window's edges and beats (s, sorted),
    `missing_s` (n, 2) the [start, end) of its non-finite runs (s); each run splits the stretch it lies in."""
    cuts = np.sort(np.concatenate([edges_s, missing_s.ravel()]))
    pieces = np.diff(cuts)
    mids = cuts[:-1] + pieces / 2.0
    inside = np.zeros(len(mids), dtype=bool)
    for lo, hi in missing_s:
        inside |= (mids >= lo) & (mids < hi)
    kept = pieces[~inside]
    return float(kept.max()) if len(kept) else 0.0


def _observed_hr5(beats_s: np.ndarray, missing_s: np.ndarray) -> tuple[float | None, float | None]:
    """`_hr_extremes(beats_s, 5)` over the beats between non-finite runs (`missing_s`, sorted and disjoint as
    `true_runs` gives them): 5 beats with a run among them, or a beat inside one, give no rate."""
    started = np.searchsorted(missing_s[:, 0], beats_s, side="left")  # runs starting before each beat
    ended = np.searchsorted(missing_s[:, 1], beats_s, side="right")  # runs ended by it
    outside = started == ended  # not inside a run; beats between the same two runs share `started`
    rates = [_hr_extremes(beats_s[outside & (started == k)], 5) for k in np.unique(started[outside])]
    slow = [lo for lo, _ in rates if lo is not None]
    return (min(slow), max(hi for _, hi in rates if hi is not None)) if slow else (None, None)


def _half_width(seg: np.ndarray, r: int, rate_hz: float) -> float:
    """Width (s) of the part around sample r of a baseline-free beat that stays above half its R amplitude."""
    y = np.abs(seg - np.median(seg))
    top = y[r]
    if top <= 0:
        return 0.0
    above = y > 0.5 * top
    i = r
    while i > 0 and above[i - 1]:
        i -= 1
    j = r
    while j < len(y) - 1 and above[j + 1]:
        j += 1
    return (j - i + 1) / rate_hz


def _bridged_runs(mask: np.ndarray, rate_hz: float, bridge_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of True in `mask` once gaps shorter than `bridge_s` are
    closed."""
    starts, ends = true_runs(mask)
    if not len(starts):
        return starts, ends
    keep = np.concatenate([[True], starts[1:] - ends[:-1] >= bridge_s * rate_hz])
    return starts[keep], np.concatenate([ends[:-1][keep[1:]], ends[-1:]])


def _ventricular_evidence(x: np.ndarray, rate_hz: float, beats: np.ndarray, t0: int, t1: int
                          ) -> tuple[int | None, float | None, int | None, float | None, dict, float | None]:
    """(abnormal run, unexplained s, its first sample, the usual beat's half-amplitude width s, each judged beat's
    shape by sample index, the share of judged beats shaped like the one before) of an ECG lead in x[t0:t1]
    against the patient's usual beat (the median of the beats before t0); None (and no shapes) without enough
    earlier beats, the share None with fewer than two judged beats. A beat's shape is "n" when it explains its
    activity (see below), "v" when it is unlike the usual beat, "." otherwise; a beat is shaped like the one
    before when they correlate at least RUN_CORR (whatever the rate).

    The abnormal run is the longest run of consecutive beats unlike that beat: shape correlating less than
    ABNORMAL_CORR with it, or a QRS wider than ABNORMAL_WIDTH times its width; a run continues only at a
    ventricular-tachycardia rate (RR below VT_MAX_RR_S) and while each beat is shaped like the one before it
    (correlation >= RUN_CORR). The unexplained time is the longest stretch (gaps
    under UNEXPLAINED_BRIDGE_S closed) where the lead carries QRS-like energy (0.1 s RMS above
    UNEXPLAINED_LEVEL times that of the usual beat's QRS) that no usual-looking beat (correlation >=
    EXPLAIN_CORR, not wide) accounts for, from EXPLAINED_S[0] before to EXPLAINED_S[1] after it, and that
    repeats at a ventricular-tachycardia rate (`_rhythmic`): the beat detector misses wide, slurred
    ventricular complexes, so a lead whose activity its beats do not explain cannot vouch that no ventricular
    run happened; activity with no rhythm in it is noise."""
    lo, hi = int(round(0.12 * rate_hz)), int(round(0.2 * rate_hz))
    ok = beats[(beats - lo >= 0) & (beats + hi < len(x))]
    early, late = ok[ok < t0], ok[ok >= t0]
    # 1 Hz high-pass: beat shapes compared without baseline wander
    xh = sosfiltfilt(butter_sos(2, 1.0, "high", rate_hz), x) if len(x) > 30 else x
    seg = lambda i: xh[i - lo:i + hi]  # noqa: E731
    centred = [s - s.mean() for s in (seg(i) for i in late)]
    norms = [np.linalg.norm(s) for s in centred]
    alike = (float(np.mean([_corr(centred[k], centred[k - 1], norms[k], norms[k - 1]) >= RUN_CORR
                            for k in range(1, len(late))])) if len(late) >= 2 else None)
    if len(early) < 5:
        return None, None, None, None, {}, alike
    learnt = [seg(i) for i in early[-30:]]
    tpl = np.median(np.stack(learnt), axis=0)
    tpl = tpl - tpl.mean()
    width = float(np.median([_half_width(b, lo, rate_hz) for b in learnt]))
    if not np.any(tpl):
        return None, None, None, None, {}, alike
    odd = np.zeros(len(late), dtype=bool)
    usual = np.zeros(len(late), dtype=bool)
    joins = np.zeros(len(late), dtype=bool)
    tpl_norm = np.linalg.norm(tpl)
    prev = prev_s = prev_norm = None
    for k, i in enumerate(late):
        raw, s, s_norm = seg(i), centred[k], norms[k]
        corr = _corr(s, tpl, s_norm, tpl_norm)
        wide = _half_width(raw, lo, rate_hz) > ABNORMAL_WIDTH * width
        odd[k] = corr < ABNORMAL_CORR or wide
        usual[k] = corr >= EXPLAIN_CORR and not wide
        # a ventricular run repeats one shape (one focus): noise that the detector takes for beats does not
        joins[k] = (prev is not None and (i - prev) / rate_hz < VT_MAX_RR_S
                    and _corr(s, prev_s, s_norm, prev_norm) >= RUN_CORR)
        prev, prev_s, prev_norm = i, s, s_norm
    best = _longest_run(odd, joins)
    n_rms = max(1, int(round(0.1 * rate_hz)))
    rms = np.sqrt(np.convolve(xh ** 2, np.ones(n_rms) / n_rms, mode="same"))
    ref = float(np.median([np.max(rms[i - lo:i + hi]) for i in early[-30:]]))
    explained = np.zeros(len(x), dtype=bool)
    e_lo, e_hi = int(round(EXPLAINED_S[0] * rate_hz)), int(round(EXPLAINED_S[1] * rate_hz))
    for i in np.concatenate([early[-3:], late[usual]]):
        explained[max(0, i - e_lo):i + e_hi] = True
    starts, ends = _bridged_runs((rms[t0:t1] > UNEXPLAINED_LEVEL * ref) & ~explained[t0:t1], rate_hz,
                                 UNEXPLAINED_BRIDGE_S)
    longest, first = 0.0, None
    for a, b in zip(starts + t0, ends + t0):
        if (b - a) / rate_hz > longest and _rhythmic(xh, rate_hz, a, b, t0, t1):
            longest, first = float(b - a) / rate_hz, int(a)
    shapes = {int(i): "n" if u else "v" if o else "." for i, o, u in zip(late, odd, usual)}
    return best, longest, first, width, shapes, alike


def _corr(a: np.ndarray, b: np.ndarray, norm_a: float, norm_b: float) -> float:
    """Correlation of two zero-mean beat segments of equal length, given their norms (each beat's is computed once);
    0 when either is flat."""
    den = float(norm_a * norm_b)
    return float(a @ b) / den if den > 0 else 0.0


def _longest_run(odd: np.ndarray, joins: np.ndarray) -> int:
    """The longest run of consecutive `odd` beats in which every beat after the first `joins` the one before it
    (follows it at a ventricular-tachycardia rate, and for `_ventricular_evidence` is shaped like it)."""
    best = run = 0
    for k in range(len(odd)):
        run = (run + 1 if run and joins[k] else 1) if odd[k] else 0
        best = max(best, run)
    return best


def _rhythmic(xh: np.ndarray, rate_hz: float, a: int, b: int, t0: int, t1: int) -> bool:
    """Whether xh[a:b] (widened to VT_RHYTHM_MIN_S inside [t0, t1)) repeats at 100-250 bpm: its normalised
    autocorrelation at those beat periods reaches VT_RHYTHM_MIN (`quality.ppg_periodicity`, any signal)."""
    pad = max(0, int(round(VT_RHYTHM_MIN_S * rate_hz)) - (b - a)) // 2
    a, b = max(t0, a - pad), min(t1, b + pad)
    return ppg_periodicity(xh[a:b], rate_hz, min_bpm=100.0, max_bpm=250.0) >= VT_RHYTHM_MIN


def _clip01(v: float) -> float:
    return float(min(1.0, max(0.0, v)))


def _judge(alarm_type: str, kind: str, n_beats: int, gap: float, hr5: tuple, hr17max: float | None,
           abnormal: int | None, win_len_s: float, median_rr: float | None,
           rr_cv: float | None = None, unexplained_s: float | None = None,
           usual_width_s: float | None = None, artifact: bool = False) -> tuple[float, float]:
    """(contradicts, supports) of one channel for one alarm type (see module doc); `rr_cv` is the
    coefficient of variation of the window's beat intervals (None with fewer than VT_PULSE_MIN_BEATS),
    `unexplained_s` an ECG lead's longest activity its usual beats do not explain (`_ventricular_evidence`),
    `artifact` whether an ECG lead's judged beats are mostly unlike the usual beat or each other (`_is_artifact`)."""
    hr5min, hr5max = hr5
    if alarm_type == ASYSTOLE:
        if n_beats < 3 or (kind == "ecg" and ((abnormal or 0) > ASYSTOLE_MAX_ABNORMAL or artifact)):
            return 0.0, _clip01(gap - 4.0)  # "beats" unlike the patient's own are likely noise
        # a pause: the longest gap is short in seconds and against the window's usual beat interval (also for a
        # pulse channel: without it the held-out true asystole a161l, pulses <= 1.8 s apart at 58 bpm, was
        # suppressed)
        by_rr = _clip01((2.0 - gap / median_rr) / 0.5) if median_rr else 0.0
        return min(_clip01(ASYSTOLE_CONTRA_GAP_S - gap), by_rr), _clip01(gap - 4.0)
    if alarm_type == BRADY:
        if hr5min is None:
            return 0.0, _clip01((gap - 6.0) / 2.0)  # < 5 beats in the window: fewer than ~20 bpm
        return _clip01((hr5min - 45.0) / 10.0), _clip01((40.0 - hr5min) / 5.0 + 0.5)
    if alarm_type == TACHY:
        if hr17max is None:
            # fewer than 17 beats in the window: at most 17 / win_len * 60 bpm
            return (_clip01((130.0 - 60.0 * n_beats / win_len_s) / 20.0) if gap < 3.0 else 0.0), 0.0
        return _clip01((130.0 - hr17max) / 20.0), _clip01((hr17max - 140.0) / 10.0)
    if alarm_type == VTACH:
        if kind == "pulse":
            # pulses say nothing about QRS shape and a VT may eject too little for a pulse (so they never
            # support one), but pulses regular throughout contradict a run of ventricular beats
            if rr_cv is None or gap >= 3.0:
                return 0.0, 0.0
            lo, hi = VT_PULSE_CV
            return _clip01((hi - rr_cv) / (hi - lo)), 0.0
        if hr5max is None or kind != "ecg":
            # beats drawn from the pulse add nothing to the pulse itself: only ECG leads judge the QRS
            return 0.0, 0.0
        if gap >= 3.0:
            return 0.0, 0.0  # missed beats: neither rate nor shape can be judged
        rate = _clip01((100.0 - hr5max) / 15.0)
        # no run of unusual beats at a VT rate: graded by how far the longest run is from VT_RUN
        shape = 0.0 if abnormal is None else _clip01((VT_RUN - abnormal) / VT_RUN)
        # activity the beats do not explain may be a ventricular run the detector missed: then neither the
        # beats' rate nor their shapes vouch against it
        lo, hi = VT_UNEXPLAINED_S
        explained = 1.0 if unexplained_s is None else _clip01((hi - unexplained_s) / (hi - lo))
        if usual_width_s is not None and usual_width_s >= WCT_HALF_WIDTH_S and hr5max > 100.0:
            explained = 0.0  # a wide-complex tachycardia is a VT until proven otherwise: shape cannot tell
        support = 1.0 if (abnormal is not None and abnormal >= VT_RUN and hr5max > 100.0) else 0.0
        return explained * max(rate, shape), support
    if alarm_type == VFIB:
        if n_beats < 3:
            return 0.0, 0.0
        contra = _clip01((VF_CONTRA_GAP_S - gap) / 1.0)
        if kind == "ecg" and ((abnormal is not None and abnormal >= VT_RUN) or (hr5max or 0.0) > 150.0 or artifact):
            # fast or abnormal complexes may be the flutter itself; artifact "beats" hide it
            contra = 0.0
        return contra, 0.0
    raise ValueError(f"unknown alarm type {alarm_type!r}")


def _is_artifact(shapes: dict, alike: float | None) -> bool:
    """Whether an ECG lead's judged beats are an artifact rather than the heart's: fewer than LIKE_SHARE_MIN of
    them shaped like the patient's usual beat (`shapes`, "n"), or fewer than that share shaped like the beat
    before them (`alike`). False when neither can be told (no usual beat learnt, fewer than two beats)."""
    unusual = bool(shapes) and sum(v == "n" for v in shapes.values()) < LIKE_SHARE_MIN * len(shapes)
    return unusual or (alike is not None and alike < LIKE_SHARE_MIN)


class _BeatStats(NamedTuple):
    """What `_beat_stats` finds in a window (times in s from the onset, rates in bpm)."""

    gap: float  # the longest interval between beats, the window's edges included
    hr: float | None  # from the median beat interval; None with fewer than 2 beats
    hr5: tuple[float | None, float | None]  # slowest and fastest rate over 5 consecutive beats
    hr17: float | None  # fastest rate over 17 consecutive beats
    abnormal: int | None  # ECG: the longest run of unusual beats (`_ventricular_evidence`)
    unexplained: float | None  # ECG: the longest activity the usual beats do not explain (s)
    unexplained_from: float | None  # ECG: where it starts
    width: float | None  # ECG: the usual beat's half-amplitude width (s)
    shapes: dict  # ECG: each judged beat's shape by sample index
    judged: tuple[float, float]  # (contradicts, supports) of the channel for the alarm type


def _beat_stats(x: np.ndarray, rate_hz: float, peaks: np.ndarray, a: int, b: int, onset_idx: int, kind: str,
                alarm_type: str, finite: np.ndarray | None = None, failed: np.ndarray | None = None) -> _BeatStats:
    """Beat statistics of x[a:b] from the channel's beat indices `peaks`, and their (contradicts, supports).
    `finite` (x's length) marks the samples that were not filled in: see MISSING_HIDES_BEAT_S. `failed` (x's
    length) marks the samples of quality blocks that failed: like missing ones, they support nothing."""
    inwin = peaks[(peaks >= a) & (peaks < b)]
    beats_s = (inwin - onset_idx) / rate_hz
    t_a, t_b = (a - onset_idx) / rate_hz, (b - onset_idx) / rate_hz
    edges = np.concatenate([[t_a], beats_s, [t_b]])
    gap = float(np.max(np.diff(edges)))
    hr = float(60.0 / np.median(np.diff(beats_s))) if len(beats_s) >= 2 else None
    hr5 = _hr_extremes(beats_s, 5)
    hr17 = _hr_extremes(beats_s, 17)[1]
    abnormal, unexplained, first, width, shapes, alike = (
        _ventricular_evidence(x, rate_hz, peaks[peaks < b], a, b) if kind == "ecg"
        else (None, None, None, None, {}, None))
    rr = np.diff(beats_s)
    rr_cv = float(np.std(rr) / np.mean(rr)) if len(beats_s) >= VT_PULSE_MIN_BEATS else None
    artifact = _is_artifact(shapes, alike)

    def judge(gap_s: float, hr5_bpm: tuple) -> tuple[float, float]:
        return _judge(alarm_type, kind, len(beats_s), gap_s, hr5_bpm, hr17, abnormal, t_b - t_a,
                      None if hr is None else 60.0 / hr, rr_cv, unexplained, width, artifact)

    judged = judge(gap, hr5)
    missing = np.zeros(b - a, dtype=bool) if finite is None else ~finite[a:b]
    unseen = missing if failed is None else missing | failed[a:b]
    if unseen.any():
        starts, ends = true_runs(unseen)
        unseen_s = (np.stack([starts, ends], axis=1) + a - onset_idx) / rate_hz
        seen = judge(_observed_gap(edges, unseen_s), _observed_hr5(beats_s, unseen_s))
        starts, ends = true_runs(missing)
        hides = alarm_type in (TACHY, VTACH) and len(starts) > 0 and \
            float((ends - starts).max()) / rate_hz >= MISSING_HIDES_BEAT_S
        judged = (0.0 if hides else judged[0], seen[1])
    return _BeatStats(gap, hr, hr5, hr17, abnormal, unexplained,
                      None if first is None else (first - onset_idx) / rate_hz, width, shapes, judged)


def _synth_beats_of_pulses(peaks: np.ndarray, ppeaks: np.ndarray, rate_hz: float) -> np.ndarray:
    """The synthesized ECG's beats that a PLETH pulse vouches for: each followed by a pulse within `SYNTH_PULSE_S`,
    and at most one per pulse. The translator draws one beat per pulse, so two detected beats before one pulse are
    a beat and a wave the detector took for one (a tall synthesized T wave); the one kept is the one whose delay
    to the pulse is nearest the delay of the beats that have a pulse to themselves (the earliest when none has)."""
    lo, hi = int(SYNTH_PULSE_S[0] * rate_hz), int(SYNTH_PULSE_S[1] * rate_hz)
    j = np.searchsorted(ppeaks, peaks + lo)
    followed = (j < len(ppeaks)) & (ppeaks[np.minimum(j, len(ppeaks) - 1)] <= peaks + hi)
    peaks, j = peaks[followed], j[followed]
    if len(peaks) < 2:
        return peaks
    delay = ppeaks[j] - peaks
    pulse, count = np.unique(j, return_counts=True)
    alone = np.isin(j, pulse[count == 1])
    typical = float(np.median(delay[alone])) if alone.any() else None
    keep = np.ones(len(peaks), dtype=bool)
    for p in pulse[count > 1]:
        idx = np.flatnonzero(j == p)
        best = idx[0] if typical is None else idx[np.argmin(np.abs(delay[idx] - typical))]
        keep[idx] = False
        keep[best] = True
    return peaks[keep]


def _analyse_channel(name: str, kind: str, x: np.ndarray, rate_hz: float, onset_idx: int, a: int, b: int,
                     alarm_type: str, pulses: tuple[np.ndarray, float, bool, str, np.ndarray] | None = None
                     ) -> tuple[ChannelEvidence, np.ndarray, np.ndarray]:
    """Evidence of one channel, its beat indices and the mask of its failed quality blocks (both indices into
    x). x is the channel's data from the start of the learning
    span up to what the mode may see; a, b the window, onset_idx the onset (indices into x). For II_SYNTH,
    `pulses` is the PLETH's (peaks, quality score, onset ok, reason, failed blocks): the synthesized ECG is only as good as
    the PLETH it is drawn from, and only its beats that a real pulse follows are beats (where PLETH has no
    pulse the translator fills in beats at the last rate: never evidence)."""
    raw = np.asarray(x, dtype=np.float64)
    x, _ = fill_nonfinite(raw)
    if kind == "pulse":
        peaks = detect_ppg_peaks(x, rate_hz)
    else:
        peaks = detect_rpeaks(x, rate_hz)
    if kind == "synth" and pulses is not None:
        ppeaks, qscore, onset_ok, reason, pleth_failed = pulses
        peaks = _synth_beats_of_pulses(peaks, ppeaks, rate_hz)
        failed = np.zeros(len(x), dtype=bool)  # PLETH's, on this channel's length (a caller's may differ)
        failed[:min(len(x), len(pleth_failed))] = pleth_failed[:len(x)]
    # The Challenge's event lies before the alarm: every number is judged on the window up to the onset. In
    # retrospective mode the detectors still see the data after it, so no beat near the onset is lost to the
    # edge of the data; letting the data after the onset add support or dilute the contradiction scored worse.
    pre_b = min(b, onset_idx) if onset_idx - a >= int(2 * rate_hz) else b
    if kind != "synth" or pulses is None:
        qscore, onset_ok, reason, failed = _window_quality(raw, rate_hz, name, onset_idx, a, pre_b)
    st = _beat_stats(x, rate_hz, peaks, a, pre_b, onset_idx, kind, alarm_type, np.isfinite(raw), failed)
    shown = peaks[(peaks >= a) & (peaks < b)]  # the whole window
    beats_s = (shown - onset_idx) / rate_hz
    shape = "".join(st.shapes.get(int(i), ".") for i in shown) if kind == "ecg" and st.shapes else None
    quality = "good" if qscore >= 0.75 and onset_ok else "degraded" if qscore >= 0.25 else "unusable"
    return ChannelEvidence(name=name, kind=kind, quality=quality, quality_score=qscore, onset_ok=onset_ok,
                           reason="" if qscore == 1.0 else reason, beats_s=tuple(float(t) for t in beats_s),
                           hr_bpm=st.hr, max_gap_s=st.gap, hr5_min_bpm=st.hr5[0], hr5_max_bpm=st.hr5[1],
                           hr17_max_bpm=st.hr17, abnormal_run=st.abnormal, contradicts=st.judged[0],
                           supports=st.judged[1], unexplained_s=st.unexplained, unexplained_from_s=st.unexplained_from,
                           usual_width_s=st.width, beat_shapes=shape), peaks, failed


# ---------------------------------------------------------------- synthesized ECG


def synthesize_ecg(translator: Translator, pleth: np.ndarray, rate_hz: float, ecg: np.ndarray | None = None,
                   context_s: float = 10.0) -> np.ndarray | None:
    """Lead II synthesized from PLETH by `translator` (its ppg2ecg task), at the PLETH's rate.

    With a simultaneous `ecg` (same rate, same length) the cleanest paired `context_s` segment of it is the
    patient's context (`operators.state.context.select_context`). None when PLETH is too short.

    Parameters
    ----------
    translator : serves the "ppg2ecg" task.
    pleth : PPG samples (NaN/inf runs are interpolated first, and NaN again in the output).
    rate_hz : the PLETH's (and the output's) sample rate (Hz); at least 2 s of PLETH are needed.
    ecg : simultaneous lead II, for the context; ignored unless as long as `pleth`.
    context_s : context length (s); 0 for none.
    """
    pleth = np.asarray(pleth, dtype=np.float64)
    if len(pleth) < int(2 * rate_hz):
        return None
    ctx = None
    if ecg is not None and len(ecg) == len(pleth) and context_s > 0:
        e, _ = fill_nonfinite(np.asarray(ecg, dtype=np.float64))
        p, _ = fill_nonfinite(pleth)
        ctx = select_context(e, p, rate_hz, length_s=context_s)
    # Each verdict's context serves that one request: one cache slot for all of them (`TranslationRequest.bed`), or a
    # translator would keep every alarm's context and beat model until its cache is full (about 67 MiB).
    req = TranslationRequest(task=PPG2ECG, source=fill_nonfinite(pleth)[0].astype(np.float32), source_rate=rate_hz,
                             target_rate=rate_hz, source_signal="PLETH", context=ctx, meta={"bed": "alarm verifier"})
    y = np.asarray(translator.translate([req])[0], dtype=np.float64)
    if len(y) == len(pleth):
        y[~np.isfinite(pleth)] = np.nan  # drawn from interpolated PLETH: invented, and no evidence (verify_alarm)
    return y


def add_synthesized_ecg(signals: Mapping[str, np.ndarray], rates_hz: Mapping[str, float], translator: Translator,
                        onset_s: float, *, mode: str = "realtime", wait_s: float = 30.0,
                        config: VerifierConfig | None = None) -> tuple[dict, dict]:
    """Copies of `signals`/`rates_hz` with `II_SYNTH` drawn from PLETH over the span `verify_alarm` reads (NaN
    elsewhere), using the simultaneous lead II there as the patient's context. Unchanged without PLETH or with PLETH
    below `ANALYSIS_MIN_RATE_HZ` (too slow to analyse).

    Parameters
    ----------
    signals, rates_hz : the record's channels and their rates (Hz), by canonical name.
    translator : serves the "ppg2ecg" task.
    onset_s : the alarm's onset (s from the record's start).
    mode, wait_s, config : as `verify_alarm` takes them (they set the span read).
    """
    sig, rates = dict(signals), dict(rates_hz)
    if "PLETH" not in sig:
        return sig, rates
    cfg = config or VerifierConfig()
    fs = float(rates["PLETH"])
    if not fs >= ANALYSIS_MIN_RATE_HZ["synth"]:
        return sig, rates  # verify_alarm would not analyse it
    x = np.asarray(sig["PLETH"], dtype=np.float64)
    start = max(0, int(round((onset_s - cfg.pre_s - cfg.learn_s) * fs)))
    stop = min(len(x), int(round((onset_s + (wait_s if mode == "retrospective" else 0.0)) * fs)))
    ecg = sig.get("II")
    ecg = np.asarray(ecg[start:stop], dtype=np.float64) if ecg is not None and float(rates["II"]) == fs else None
    y = synthesize_ecg(translator, x[start:stop], fs, ecg)
    if y is None:
        return sig, rates
    out = np.full(stop, np.nan)
    out[start:stop] = y
    sig[SYNTH], rates[SYNTH] = out, fs
    return sig, rates


# ---------------------------------------------------------------- fusion


def verify_alarm(alarm_type: str, signals: Mapping[str, np.ndarray], rates_hz: Mapping[str, float],
                 onset_s: float, *, mode: str = "realtime", wait_s: float = 30.0,
                 config: VerifierConfig | None = None) -> AlarmVerdict:
    """Judge one alarm against a bed's signals.

    Parameters
    ----------
    alarm_type : str
        One of ALARM_TYPES (any spelling `parse_alarm_type` accepts).
    signals, rates_hz : mapping
        Channel name -> samples (sample 0 at time 0 s) and its rate. ECG leads, PLETH, ABP and
        `II_SYNTH` (see `synthesize_ecg`) are used; other channels (RESP) are ignored. A channel sampled
        below `ANALYSIS_MIN_RATE_HZ` is not analysed: its evidence is unusable with reason `RATE_TOO_LOW`.
    onset_s : float
        The alarm's time on the signals' clock, s.
    mode : str
        "realtime": nothing after the onset is read; "retrospective": up to `wait_s` after it.
    wait_s : float
        Retrospective mode's wait after the onset, s (data beyond what a channel holds is simply absent).
    config : VerifierConfig
        Thresholds and channel kinds; defaults if None.
    """
    alarm_type = parse_alarm_type(alarm_type)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (wait_s >= 0):
        raise ValueError(f"wait_s must be >= 0, got {wait_s}")
    cfg = config or VerifierConfig()
    post_s = min(wait_s, cfg.retro_post_s) if mode == "retrospective" else 0.0
    see_s = wait_s if mode == "retrospective" else 0.0
    chans: list[ChannelEvidence] = []
    pulses = None
    seen_after = []  # per analysed channel, how far after the onset its data went (s)
    # PLETH before II_SYNTH: the synthesized ECG's beats and quality are judged against its PLETH's
    for name in sorted(signals, key=lambda n: n.upper() == SYNTH):
        kind = channel_kind(name)
        if kind is None or kind not in cfg.channels and not (name.upper() == "PLETH" and "synth" in cfg.channels):
            continue
        fs = float(rates_hz[name])
        if not fs >= ANALYSIS_MIN_RATE_HZ[kind]:
            if kind in cfg.channels:
                chans.append(_too_slow(name, kind, fs))
            continue
        x = np.asarray(signals[name])
        onset_idx = int(round(onset_s * fs))
        start = max(0, int(round((onset_s - cfg.pre_s - cfg.learn_s) * fs)))
        stop = min(len(x), onset_idx + int(round(see_s * fs)))
        a = max(start, onset_idx - int(round(cfg.pre_s * fs)))
        b = min(stop, onset_idx + int(round(post_s * fs)))
        if b - a < int(2 * fs) or np.all(~np.isfinite(x[a:b])):
            continue
        if kind == "synth" and (pulses is None or pulses[1] != fs):
            continue  # no PLETH at this rate to vouch for its beats
        # how far past the onset this channel's data went: its last finite sample (the service's ring pads the
        # time it waited for with NaN)
        after = np.flatnonzero(np.isfinite(np.asarray(x[onset_idx:b], dtype=np.float64)))
        seen_after.append((after[-1] + 1) / fs if len(after) else 0.0)
        ev, peaks, failed = _analyse_channel(name, kind, x[start:stop], fs, onset_idx - start, a - start, b - start,
                                     alarm_type, pulses[0] if kind == "synth" else None)
        if name.upper() == "PLETH":  # same rate, so the same slice start: its peak indices line up
            pulses = ((peaks, ev.quality_score, ev.onset_ok, ev.reason, failed), fs)
        if kind in cfg.channels:
            chans.append(ev)
    # the window reported is the one the data allowed: a record that ends at the onset has no retrospective part
    post_seen = min(post_s, max(0.0, max(seen_after))) if seen_after else post_s
    return fuse(alarm_type, mode, chans, cfg.threshold(alarm_type), (-cfg.pre_s, post_seen))



def _too_slow(name: str, kind: str, rate_hz: float) -> ChannelEvidence:
    """The evidence of a channel sampled below ANALYSIS_MIN_RATE_HZ: unusable, nothing judged, the rate in its
    reason."""
    need = ANALYSIS_MIN_RATE_HZ[kind]
    return ChannelEvidence(name=name, kind=kind, quality="unusable", quality_score=0.0, onset_ok=False,
                           reason=f"{RATE_TOO_LOW}: {rate_hz:g} Hz, below the {need:g} Hz a {kind} channel needs",
                           beats_s=(), hr_bpm=None, max_gap_s=float("nan"), hr5_min_bpm=None,
                           hr5_max_bpm=None, hr17_max_bpm=None, abnormal_run=None, contradicts=0.0, supports=0.0)


# How channels combine per alarm type: "any" good channel contradicting suffices (a pulse every second rules
# out asystole and VF; one clean lead's normal rate rules out brady), or "all" usable ones must agree (a missed
# beat in one channel easily halves a rate: tachycardia; a VT's wide beats are easily missed in one lead).
FUSION = {ASYSTOLE: "any", BRADY: "any", TACHY: "all", VTACH: "all", VFIB: "any"}
CONSENSUS_MIN_WEIGHT = 0.5  # channels weighing less take no part in an "all" vote
# Alarm types never judged false on the word of one ECG lead: when the contradiction comes from a lead and no other
# channel (II_SYNTH aside: it is PLETH's) is usable at the onset and weighs CONSENSUS_MIN_WEIGHT, the false score is 0
# (verdict uncertain, or true where a channel supports the alarm). Another usable channel need not contradict too:
# asking that as well kept two more false alarms on the Challenge records and saved no true one in the artifact sweeps.
# A lead's "beats" may be an artifact shaped like the patient's own QRS (pacing spikes, a periodic disturbance), which
# no test on that lead alone tells apart. A pulse channel's beats are the heart's ejections: PLETH alone still refutes
# an asystole during an ECG lead-off.
NEVER_ON_ONE_LEAD = (ASYSTOLE, VFIB)
LEAD_AGREEMENT = (BRADY,)  # an ECG lead's support counts only as far as no other ECG lead contradicts it


def channel_weight(c: ChannelEvidence) -> float:
    """How much a channel's evidence counts: its quality score, halved when the block at the onset fails."""
    return c.quality_score * (1.0 if c.onset_ok else 0.5)


def _steady_rhythm_rejudge(c: ChannelEvidence, judges: Sequence[ChannelEvidence], weight: float, contra: float,
                           support: float) -> tuple[float, float]:
    """An ECG lead's weighted VT (contradiction, support), `contra` and `support` as `fuse` weighed them, with its
    unexplained stretch, and the unusual beats in it, set aside when another of the usable channels `judges`
    (weight >= CONSENSUS_MIN_WEIGHT, good at the onset) keeps its rhythm through it (`_keeps_rhythm`): a ventricular
    run replaces the rhythm every channel follows (the pulse: missing, small or faster pulses; another lead:
    unusual complexes or a pause), noise on one lead does not."""
    if not c.unexplained_s or c.unexplained_from_s is None:
        return contra, support
    t0, t1 = c.unexplained_from_s, min(0.0, c.unexplained_from_s + c.unexplained_s)
    if not any(d is not c and _keeps_rhythm(d, t0, t1) for d in judges):
        return contra, support
    abnormal = c.abnormal_run
    if abnormal and c.beat_shapes:
        abnormal = min(abnormal, _odd_run_outside(np.asarray(c.beats_s), c.beat_shapes, t0, t1))
    new_c, new_s = _judge(VTACH, c.kind, len(c.beats_s), c.max_gap_s, (c.hr5_min_bpm, c.hr5_max_bpm),
                          c.hr17_max_bpm, abnormal, 0.0, None, None, 0.0, c.usual_width_s)
    return max(contra, weight * new_c), min(support, weight * new_s if c.onset_ok else 0.0)


def _keeps_rhythm(d: ChannelEvidence, t0: float, t1: float) -> bool:
    """Whether channel d keeps its usual rhythm through [t0, t1] (s): a pulse channel by its pulse intervals
    (`_pulse_steady`); an ECG lead by beats all shaped like its usual beat there, at steady intervals."""
    beats = np.asarray(d.beats_s)
    if d.kind == "pulse":
        return _pulse_steady(beats, t0, t1)
    if d.kind != "ecg" or not d.beat_shapes:
        return False
    inside = (beats >= t0 - 0.5) & (beats <= t1 + 0.5)
    return bool(inside.any()) and all(d.beat_shapes[i] == "n" for i in np.flatnonzero(inside)) and \
        _pulse_steady(beats, t0, t1)


def _odd_run_outside(beats_s: np.ndarray, shapes: str, t0: float, t1: float) -> int:
    """The longest run of unusual ("v") beats at a VT rate that lies outside [t0, t1] (s)."""
    n = min(len(beats_s), len(shapes))
    t = np.asarray(beats_s[:n], dtype=np.float64)
    odd = np.array([sh == "v" for sh in shapes[:n]], dtype=bool) & ~((t0 <= t) & (t <= t1))
    return _longest_run(odd, np.concatenate([[False], np.diff(t) < VT_MAX_RR_S]))


def _pulse_steady(beats_s: np.ndarray, t0: float, t1: float) -> bool:
    """Whether pulses span [t0, t1] (s) at intervals within STEADY_PULSE_TOL of their usual interval (the
    median before the onset), at least three of them."""
    pre = beats_s[beats_s <= 0.0]
    if len(pre) < VT_PULSE_MIN_BEATS:
        return False
    usual = float(np.median(np.diff(pre)))
    i0 = np.searchsorted(pre, t0, side="right") - 1  # the last pulse at or before the stretch
    i1 = np.searchsorted(pre, t1, side="left")  # the first pulse at or after its end
    if i0 < 0 or i1 >= len(pre) or i1 - i0 < 3:
        return False
    rr = np.diff(pre[i0:i1 + 1])
    return bool(np.all(np.abs(rr / usual - 1.0) <= STEADY_PULSE_TOL))


def fuse(alarm_type: str, mode: str, chans: Sequence[ChannelEvidence], threshold: float,
         window_s: tuple[float, float]) -> AlarmVerdict:
    """The verdict from per-channel evidence: the quality-weighted contradiction (strongest channel, or, per
    FUSION, the consensus of the usable ones, each voter's dissent weighed by its quality) minus the strongest
    quality-weighted support, against
    `threshold` (see the module doc).

    Parameters
    ----------
    alarm_type, mode : what was verified and how (carried into the verdict).
    chans : every channel's evidence.
    threshold : false-score above which the verdict is "false".
    window_s : the analysis window relative to the onset (s), carried into the verdict.
    """
    chans = tuple(chans)
    if not chans:
        return AlarmVerdict(alarm_type, mode, "uncertain", 0.0, 0.0, threshold, window_s, (), "no usable channel")
    w = [channel_weight(c) for c in chans]
    weighted_c = [wi * c.contradicts for wi, c in zip(w, chans)]
    # support only from a channel usable where the event is: a flat (lead-off) lead "shows" every asystole
    weighted_s = [wi * c.supports if c.onset_ok else 0.0 for wi, c in zip(w, chans)]
    if alarm_type in LEAD_AGREEMENT:
        # every lead sees the same QRS complexes: a slow rate in one lead that another clean lead contradicts is
        # beats the first one missed (low amplitude in its axis, noise), not a bradycardia
        weighted_s = [s_i * (1.0 - max([weighted_c[j] for j, d in enumerate(chans)
                                         if j != i and d.kind == "ecg" == c.kind] or [0.0]))
                      for i, (s_i, c) in enumerate(zip(weighted_s, chans))]
    if alarm_type == VTACH:
        judges = [d for d, wd in zip(chans, w) if d.onset_ok and wd >= CONSENSUS_MIN_WEIGHT]
        for i, c in enumerate(chans):
            if c.kind == "ecg":
                weighted_c[i], weighted_s[i] = _steady_rhythm_rejudge(c, judges, w[i], weighted_c[i], weighted_s[i])
    if FUSION[alarm_type] == "all":
        # II_SYNTH does not vote: its beats are PLETH's pulses (only those a pulse follows count), so its say would
        # be PLETH's a second time, through one more detector
        voters = [i for i, c in enumerate(chans) if w[i] >= CONSENSUS_MIN_WEIGHT and c.kind != "synth" and (
            alarm_type != VTACH or c.kind == "ecg")]
        # all voters must agree, each as far as its quality goes: the strongest weighted contradiction, lowered by
        # the strongest weighted dissent (weight x (1 - contradicts)); with equal weights, the weakest contradiction
        i_c = max(voters, key=lambda i: weighted_c[i]) if voters else None
        dissent = max([w[i] - weighted_c[i] for i in voters] or [0.0])
        contra = 0.0 if i_c is None else min(weighted_c[i_c], 1.0 - dissent)
    else:
        i_c = int(np.argmax(weighted_c))
        contra = weighted_c[i_c]
    i_s = int(np.argmax(weighted_s))
    support = weighted_s[i_s]
    false_score = _clip01(contra - support)
    if alarm_type == VTACH:
        # the strongest regular pulse stands on its own: ECG noise that looks like a run of unusual beats (the
        # ECG's "support") leaves the pulse regular, a real ventricular run does not
        pulse = [i for i, c in enumerate(chans) if c.kind == "pulse"]
        i_p = max(pulse, key=lambda i: weighted_c[i]) if pulse else None
        if i_p is not None and weighted_c[i_p] > false_score:
            i_c, false_score = i_p, weighted_c[i_p]
    lone = (alarm_type in NEVER_ON_ONE_LEAD and i_c is not None and chans[i_c].kind == "ecg" and false_score > 0.0
            and not any(i != i_c and c.onset_ok and w[i] >= CONSENSUS_MIN_WEIGHT and c.kind != "synth"
                        for i, c in enumerate(chans)))
    if lone:
        false_score = 0.0
    if lone and support < 0.5:
        verdict = "uncertain"
        reason = (f"only {chans[i_c].name} contradicts the {alarm_type} alarm and no other channel is usable at the "
                  f"onset: one ECG lead never suppresses it")
        confidence = 0.5
    elif false_score >= threshold and i_c is not None:
        c = chans[i_c]
        verdict, reason = "false", f"{c.name} ({c.quality}) contradicts the {alarm_type} alarm"
        confidence = 0.5 + 0.5 * _clip01((false_score - threshold) / max(1e-6, 1.0 - threshold))
    elif support >= 0.5:
        verdict, reason = "true", f"{chans[i_s].name} ({chans[i_s].quality}) shows the {alarm_type}"
        confidence = 0.5 + 0.5 * support
    else:
        verdict = "uncertain"
        reason = "no good-quality channel contradicts or confirms the alarm"
        confidence = 0.5 * _clip01(1.0 - false_score / max(threshold, 1e-6))
    return AlarmVerdict(alarm_type, mode, verdict, confidence, false_score, threshold, window_s, chans, reason)


def challenge_score(y_true: Sequence[bool], keep: Sequence[bool]) -> dict:
    """The Challenge's score (TP+TN)/(TP+TN+FP+5*FN), positive = a true alarm kept, with its counts."""
    t = np.asarray(y_true, dtype=bool)
    k = np.asarray(keep, dtype=bool)
    tp, tn = int(np.sum(t & k)), int(np.sum(~t & ~k))
    fp, fn = int(np.sum(~t & k)), int(np.sum(t & ~k))
    den = tp + tn + fp + 5 * fn
    return {"score": (tp + tn) / den if den else float("nan"), "tp": tp, "tn": tn, "fp": fp, "fn": fn}


@dataclass
class ChallengeRecord:
    """One record of the PhysioNet/CinC 2015 Challenge: the alarm is at `onset_s` (300 s)."""

    name: str
    alarm_type: str
    label: bool | None  # True: annotators judged it a true alarm; None: no label in the header
    signals: dict[str, np.ndarray]
    rates_hz: dict[str, float]
    onset_s: float = 300.0


CHALLENGE_ONSET_S = 300.0


def read_challenge_record(path) -> ChallengeRecord:
    """Read a Challenge-format WFDB record (`NAME.hea` + `NAME.mat`); the alarm type and label come from the
    header's comment lines (`Asystole` ... and `True alarm` / `False alarm`). ValueError naming the problem."""
    from pathlib import Path

    import wfdb

    from operators.io.records import read_recording

    base = Path(path)
    if base.suffix.lower() in (".hea", ".mat", ".dat"):
        base = base.with_suffix("")
    header_path = Path(f"{base}.hea")
    if not header_path.is_file():  # read_recording would also take a .csv/.parquet, which has no alarm header
        raise ValueError(f"{path}: not a WFDB record (no header {header_path}); a Challenge-format record is a "
                         f"WFDB header + .mat/.dat signals")
    rec = read_recording(base)  # one-line ValueError for an unreadable record
    header = wfdb.rdheader(str(base))
    alarm, label = None, None
    types = {k.lower(): v for k, v in CHALLENGE_TYPES.items()}  # spelled as the Challenge does, in any case
    comments = [line.strip() for line in header.comments or [] if line.strip()]
    for line in comments:
        if line.lower() in types:
            alarm = types[line.lower()]
        elif line.lower() in ("true alarm", "false alarm"):
            label = line.lower() == "true alarm"
    if alarm is None:
        raise ValueError(f"{base.name}: no alarm type in the header comments (expected one of "
                         f"{', '.join(CHALLENGE_TYPES)}; they read: {'; '.join(comments)[:120] or 'none'})")
    dur = min(len(v) / rec.rates[k] for k, v in rec.signals.items())
    if dur < CHALLENGE_ONSET_S:
        raise ValueError(f"{base.name}: {dur:.0f} s of signal, the alarm is at {CHALLENGE_ONSET_S:g} s")
    return ChallengeRecord(base.name, alarm, label, dict(rec.signals), dict(rec.rates))
