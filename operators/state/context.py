"""Paired ECG + PPG context: choosing a clean segment, and a bounded per-bed memory of recent data.

A `PairedContext` (earlier, simultaneous ECG + PPG of the same patient) lets a translator adapt
to the patient (pulse-arrival delay, beat morphology). The stream worker keeps one `ContextStore`
per bed that has both signals and passes `store.get(window start)` along with each PPG window; the
context is a function of the bed's input alone (see `ContextStore`).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from typing import Callable, Hashable, TypeVar

import numpy as np

from operators.processing.quality import ECG_KURTOSIS_MIN, MAX_FLAT, ecg_quality, ppg_quality
from operators.processing.resample import resample
from operators.processing.rpeaks import detect_rpeaks
from operators.translator import PairedContext
from operators.processing.samples import grid_ns, period_ns

__all__ = ["select_context", "ContextStore", "context_score", "ContextCache"]

T = TypeVar("T")

MAX_RR_CV = 0.15  # coefficient of variation of RR allowed in a context segment (regular rhythm)
MAX_ECG_CLIP = 0.3


def context_score(ecg: np.ndarray, ppg: np.ndarray, rate_hz: float, r_peaks: np.ndarray | None = None) -> float | None:
    """Quality score of one aligned segment (higher is better), or None if it is unusable.

    Parameters
    ----------
    ecg, ppg : simultaneous segments at `rate_hz`, same length.
    rate_hz : their sample rate (Hz).
    r_peaks : the ECG's R peaks (sample indices) if already known; detected otherwise.

    Returns
    -------
    PPG periodicity - 2 x RR coefficient of variation - ECG clip fraction + a little QRS peakedness; None for
    non-finite samples, failed quality, fewer than 30 bpm, irregular RR or a heart rate outside 30-220 bpm.
    """
    if not (np.all(np.isfinite(ecg)) and np.all(np.isfinite(ppg))):
        return None
    qe = ecg_quality(ecg, rate_hz)
    # ECG clipped at the monitor's display rails (e.g. BIDMC bidmc32) still gives R times and the
    # patient's beat as the monitor records it: tolerate it, but prefer unclipped segments.
    ecg_ok = qe.ok or (qe.reason.startswith("clipping") and qe.clip_frac <= MAX_ECG_CLIP
                       and qe.sqi >= ECG_KURTOSIS_MIN and qe.flat_frac <= MAX_FLAT)
    if not ecg_ok:  # the PPG's quality cannot save the segment: not measured
        return None
    qp = ppg_quality(ppg, rate_hz)
    if not qp.ok:
        return None
    r = detect_rpeaks(ecg, rate_hz) if r_peaks is None else r_peaks
    dur = len(ecg) / rate_hz
    if len(r) < max(3, int(dur * 30 / 60)):  # fewer than 30 bpm: not a usable rhythm
        return None
    rr = np.diff(r) / rate_hz
    cv = float(np.std(rr) / np.mean(rr))
    hr = 60.0 / float(np.mean(rr))
    if cv > MAX_RR_CV or not (30.0 <= hr <= 220.0):
        return None
    # regular rhythm and a clearly periodic pulse matter most; QRS peakedness breaks ties
    return qp.sqi - 2.0 * cv - qe.clip_frac + 0.01 * min(qe.sqi, 10.0)


def select_context(ecg: np.ndarray, ppg: np.ndarray, rate_hz: float, length_s: float = 10.0,
                   step_s: float | None = None) -> PairedContext | None:
    """Best-quality aligned `length_s` segment of simultaneous ECG + PPG (same rate, same length).

    Parameters
    ----------
    ecg, ppg : simultaneous signals at `rate_hz`, same length (NaN allowed; a candidate holding one is skipped).
    rate_hz : their sample rate (Hz).
    length_s : context length (s).
    step_s : candidate spacing (s); default `length_s / 4`. The latest candidate wins a tie.

    Returns
    -------
    PairedContext (float32, `rate_hz`), or None if no candidate passes `context_score`.

    Raises
    ------
    ValueError : `ecg` and `ppg` differ in length.
    """
    ecg = np.asarray(ecg, dtype=np.float64).ravel()
    ppg = np.asarray(ppg, dtype=np.float64).ravel()
    if len(ecg) != len(ppg):
        raise ValueError(f"ecg and ppg must be aligned (lengths {len(ecg)} vs {len(ppg)})")
    n = int(round(length_s * rate_hz))
    if n < 2 or len(ecg) < n:
        return None
    step = max(1, int(round((step_s or length_s / 4) * rate_hz)))
    starts = list(range(len(ecg) - n, -1, -step))  # latest first: most recent wins a tie
    # R peaks once over everything (finite-filled), then sliced per candidate
    r_all = detect_rpeaks(np.where(np.isfinite(ecg), ecg, np.nan), rate_hz)
    margin = max(1, int(round(0.05 * rate_hz)))
    best, best_s = None, None
    for s in starts:
        e, p = ecg[s:s + n], ppg[s:s + n]
        r = r_all[(r_all >= s + margin) & (r_all < s + n - margin)] - s
        sc = context_score(e, p, rate_hz, r)
        if sc is not None and (best is None or sc > best + 1e-9):
            best, best_s = sc, s
    if best_s is None:
        return None
    return PairedContext(
        ecg=ecg[best_s:best_s + n].astype(np.float32),
        ppg=ppg[best_s:best_s + n].astype(np.float32),
        rate_hz=float(rate_hz),
    )


class _Segment:
    """A contiguous run of one signal's samples on the exact grid `grid_ns(origin_ns, rate, k)`."""

    __slots__ = ("origin_ns", "rate", "first", "buf", "gap_before_s")

    def __init__(self, origin_ns: int, rate: float, x: np.ndarray, gap_before_s: float | None):
        self.origin_ns, self.rate, self.first, self.buf = int(origin_ns), float(rate), 0, x.copy()
        self.gap_before_s = gap_before_s  # break before it (s; inf: rate change); None: the track's first

    @property
    def end(self) -> int:
        return self.first + len(self.buf)

    def t_ns(self, k: int) -> int:
        return int(grid_ns(self.origin_ns, self.rate, int(k)))

    def index_at(self, t_ns: int) -> int:
        """First sample index whose timestamp is >= t_ns."""
        p = period_ns(self.rate)
        k = max(0, math.ceil((int(t_ns) - self.origin_ns) / p) - 1)
        while self.t_ns(k) < t_ns:
            k += 1
        return k


class _Track:
    """One signal's held samples as segments on exact time grids: a gap or a rate change starts a new segment
    (never spliced). What is dropped is decided by the store (`drop_before`), never by arrival."""

    def __init__(self, late_s: float):
        self.late_s = late_s  # a chunk starting up to this much before what is held is late: ignored
        self.segs: list[_Segment] = []
        self.dropped_end_ns: int | None = None  # just after the newest sample of the segments dropped

    @property
    def end_ns(self) -> int | None:
        """Timestamp just after the newest sample held (ns), or None."""
        return self.segs[-1].t_ns(self.segs[-1].end) if self.segs else None

    def push(self, start_ns: int, rate_hz: float, x: np.ndarray) -> bool:
        """Add samples; False when they start further back than `late_s` before everything held (the sender's clock
        went back, or a new recording began): the caller starts anew."""
        if not self.segs:
            self.segs.append(_Segment(start_ns, rate_hz, x, None))
            return True
        seg = self.segs[-1]
        if seg.rate != rate_hz:
            if start_ns < self.end_ns:
                return False
            self.segs.append(_Segment(start_ns, rate_hz, x, float("inf")))
            return True
        period = 1e9 / rate_hz
        # x[0]'s index on the current grid: stamp jitter under half a sample snaps onto it, as the windower does
        ki = int(round((start_ns - seg.origin_ns) / period))
        if ki > seg.end:  # a gap: never splice
            self.segs.append(_Segment(start_ns, rate_hz, x, (ki - seg.end) / rate_hz))
            return True
        if (seg.end - ki) / rate_hz > self.late_s:
            return False  # further back than a late chunk can be
        if ki + len(x) > seg.end:  # sliding windows overlap: keep only the unseen tail
            seg.buf = np.concatenate([seg.buf, x[seg.end - ki:]])
        return True  # else nothing new: a late, re-delivered or overlapping chunk (lead II comes unfiltered)

    def cut_from(self, t_ns: int) -> None:
        """Forget samples stamped at or after `t_ns` (the sender's clock went back to it)."""
        while self.segs and self.segs[-1].origin_ns >= t_ns:
            self.segs.pop()
        if self.segs:
            seg = self.segs[-1]
            k = max(seg.first, min(seg.end, seg.index_at(t_ns)))
            seg.buf = seg.buf[:k - seg.first].copy()
            if len(seg.buf) == 0:  # nothing of it is left: its grid and break go with it
                self.dropped_end_ns = seg.t_ns(seg.first)
                self.segs.pop()

    def drop_before(self, t_ns: int) -> None:
        """Forget samples stamped before `t_ns` (segments ending before it go; their breaks are in the past)."""
        while len(self.segs) > 1 and self.segs[0].t_ns(self.segs[0].end) <= t_ns:
            self.dropped_end_ns = self._pop_first()
        seg = self.segs[0] if self.segs else None
        if seg is not None and seg.t_ns(seg.first) < t_ns:
            k = min(seg.index_at(t_ns), seg.end - 1)  # the last sample stays: the track's end and grid live on
            if k > seg.first:
                seg.buf = seg.buf[k - seg.first:].copy()
                seg.first = k

    def _pop_first(self) -> int:
        seg = self.segs.pop(0)
        return seg.t_ns(seg.end)

    def newest_before(self, t_ns: int) -> _Segment | None:
        """The newest segment begun before `t_ns`."""
        return next((s for s in reversed(self.segs) if s.origin_ns < t_ns), None)

    def silent_since(self, t_ns: int) -> int | None:
        """Timestamp just after the newest sample stamped before `t_ns` (ns), or None if there never was one."""
        seg = self.newest_before(t_ns)
        if seg is None:
            return self.dropped_end_ns
        return seg.t_ns(min(seg.end, seg.index_at(t_ns)))

    def clip(self, t0_ns: int, t1_ns: int) -> tuple[int, int, float, np.ndarray] | None:
        """(timestamp of the first sample, of the one after the last, rate, samples) of the newest segment begun
        before `t1_ns`, restricted to stamps in [t0_ns, t1_ns); None if under two samples."""
        seg = self.newest_before(t1_ns)
        if seg is None:
            return None
        a, b = max(seg.first, seg.index_at(t0_ns)), min(seg.end, seg.index_at(t1_ns))
        if b - a < 2:
            return None
        return seg.t_ns(a), seg.t_ns(b), seg.rate, seg.buf[a - seg.first:b - seg.first]

    def breaks(self, t0_ns: int, t1_ns: int) -> list[float]:
        """Breaks (s) before the segments that begin in [t0_ns, t1_ns)."""
        return [s.gap_before_s for s in self.segs
                if s.gap_before_s is not None and t0_ns <= s.origin_ns < t1_ns]

    def nbytes(self) -> int:
        return sum(s.buf.nbytes for s in self.segs)


class ContextStore:
    """One bed's paired ECG ("II") + PPG ("PLETH") context, a function of the input data alone.

    Why: the context changes the synthesized ECG, so it must not depend on batch timing, on how the two signals'
    chunks interleave, or on which windows asked for it; otherwise two runs over the same input (or a worker and
    `wavebridge translate`) publish different values.

    Invariants (all times integer ns since the epoch):

    - Decision points lie on an absolute grid `G_k = k * refresh_ns` (`refresh_ns = round(refresh_s * 1e9)`).
    - The decision at `G_k` is the best `length_s` candidate by `context_score` (latest wins a tie) among those
      starting on multiples of `length_s / 4` (ns, absolute) within both signals' samples stamped in
      `[G_k - keep_ns, G_k)` (`keep_ns = round(keep_s * 1e9)`; the newest segment of each begun before `G_k`, aligned
      on time at `rate_hz`, default the faster signal's rate). A candidate is scored once, at the first decision
      that holds it (the score is keyed on the candidate's first aligned timestamp, so it is a function of the
      candidate's samples), and keeps that score while it stays in range. When no candidate passes, the decision is
      the context last found (the *last good* one) if it was found at a point `G_j >= G_k - fallback_ns`
      (`fallback_ns = round(fallback_s * 1e9)`; `fallback_s=None`: however long ago); None otherwise.
    - The last good context is forgotten at `G_k` when, in the data before `G_k`, either signal has been silent for
      longer than `forget_after_gap_s`, or starts a segment in `[G_k - refresh_ns, G_k)` after such a break or a
      rate change: the bed may hold another patient by then. It outlives an ECG lead sending noise or flat data
      (for up to `fallback_s`).
    - Bounded history (with `fallback_s` set): the decision at `G_k` is a function of both signals' samples stamped
      in `[G_k - history_s, G_k)` alone (`history_s = keep_s + fallback_s`), so a reader that starts anywhere at or
      before `G_k - history_s` (a worker taking over a bed after a rebalance, re-reading the input from its
      committed offset) decides `G_k` and every later point exactly as a reader that saw the whole stream. Why:
      a fresh selection at any `G_j` reads `[G_j - keep_s, G_j)`; the fallback reaches back to `G_j >=
      G_k - fallback_s` only; and a forgetting at a point in `(G_j, G_k]` that matters (one with a context found
      at `G_j` to forget) is judged from breaks and silences after that context's samples, all held by both
      readers. Without the bound, the last good context can come from any time before (no finite re-read
      reproduces it).
    - Resuming: every decision not yet made (from the pending point on) depends on the input from `resume_from_ns()`
      on: `pending point - keep_ns`, or `G_j - keep_ns` while the last good context (found at `G_j`) is held. A
      reader fed this stream's input from any point at or before it makes every one of those decisions exactly as
      this store does, from its first grid point with `keep_s` of data behind it on (its decisions before that
      point, on partial data, can differ; a success on partial data is also one on the whole data when both
      signals share one sample grid, so it never outlives the first full decision as a wrong last good context).
    - Decisions are made grid point by grid point, in order, each exactly once: `get(at_ns)` first decides every
      pending point up to `floor(at_ns / refresh_ns) * refresh_ns`, then returns that point's decision. A point no
      window asked for is still decided before the next, so the last good context never depends on which windows
      happened to ask. A decision that finds the same samples as the last good context returns that very object
      (`ContextCache` keys on identity).
    - Samples are held from `next pending point - keep_ns` on; what arrives stamped before that is ignored.

    Lag between the signals: a point is decided with what is held when it is decided. That is the whole input
    before it as long as neither signal arrives more than `max_lag_s` behind the other, and (for `get`) no sample
    stamped before the point arrives after a window at or after it asked: the worker asks when a PLETH window is
    translated, at least one window after its start, so lead II may lag PLETH by a window without effect. Beyond
    that, the late samples are missing from the decision and the context depends on arrival timing. When one signal
    is more than `max_lag_s` ahead of the other's pending point, the pending points up to it are decided with what
    is held (the lagging signal is taken as absent there), which bounds memory: each track holds at most about
    `keep_s + max_lag_s`. A chunk stamped more than `keep_s + max_lag_s` before the newest sample of its signal (a
    clock going back, a new recording) starts the store anew at its arrival. Not thread-safe: one caller at a time
    (the pipeline's).
    """

    def __init__(self, length_s: float = 10.0, keep_s: float = 30.0, rate_hz: float | None = None,
                 refresh_s: float | None = None, forget_after_gap_s: float = 60.0, max_lag_s: float | None = None,
                 fallback_s: float | None = None):
        if keep_s < length_s:
            raise ValueError("keep_s must be >= length_s")
        if fallback_s is not None and not fallback_s >= 0:
            raise ValueError("fallback_s must be >= 0 (None: no bound)")
        # how long after the point that found it the last good context may stand in (None: no bound)
        self.fallback_s = None if fallback_s is None else float(fallback_s)
        self.length_s = float(length_s)
        self.keep_s = float(keep_s)
        # The last good context outlives an ECG lead coming off (that is what it is for), but not a break
        # this long in either signal or a clock going back: the bed may hold another patient by then.
        self.forget_after_gap_s = float(forget_after_gap_s)
        self.rate_hz = rate_hz
        # a selection costs milliseconds: one per grid point, not one per window
        self.refresh_s = self.length_s / 4 if refresh_s is None else float(refresh_s)
        self.max_lag_s = self.keep_s if max_lag_s is None else float(max_lag_s)
        self._refresh_ns = max(1, int(round(self.refresh_s * 1e9)))
        self._step_ns = max(1, int(round(self.length_s / 4 * 1e9)))  # candidate spacing, as select_context
        self._keep_ns = int(round(self.keep_s * 1e9))
        self._lag_ns = int(round(self.max_lag_s * 1e9))
        self._fallback_ns = None if fallback_s is None else int(round(self.fallback_s * 1e9))
        if self._keep_ns < self._refresh_ns:
            raise ValueError("keep_s must be >= refresh_s")
        self.clear()

    def clear(self) -> None:
        """Forget everything (e.g. a new patient in the bed)."""
        self._ecg = _Track(self.keep_s + self.max_lag_s)
        self._ppg = _Track(self.keep_s + self.max_lag_s)
        self._next_g: int | None = None  # the next grid point to decide
        self._first_g: int | None = None  # the first grid point decided (earlier ones: no data, None)
        self._last_good: PairedContext | None = None
        self._good_g: int | None = None  # the grid point whose selection found the last good context
        self._decided: deque[tuple[int, PairedContext | None]] = deque()  # (grid point, decision), recent
        self._scores: dict[tuple, float | None] = {}  # candidate (start ns, samples, sources) -> context_score
        self.scored = 0  # candidates scored by context_score (cost accounting)

    def push(self, signal: str, start_ns: int, rate_hz: float, samples: np.ndarray) -> None:
        """Add a window (or chunk) of one signal; overlap with what is held is ignored, a gap starts a new segment.

        Parameters
        ----------
        signal : "II" or "PLETH" (any case).
        start_ns : timestamp of `samples[0]` (ns).
        rate_hz : sample rate (Hz).
        samples : 1-D samples.

        Raises
        ------
        ValueError : another signal.
        """
        name = signal.upper()
        if name not in ("II", "PLETH"):
            raise ValueError(f"ContextStore keeps 'II' and 'PLETH', not {signal!r}")
        x = np.asarray(samples, dtype=np.float32).ravel()
        if len(x) == 0:
            return
        start_ns, rate_hz = int(start_ns), float(rate_hz)
        if not (self._ecg if name == "II" else self._ppg).push(start_ns, rate_hz, x):
            self.clear()  # the sender's clock went back (or a new recording began): start anew
            (self._ecg if name == "II" else self._ppg).push(start_ns, rate_hz, x)
        if self._next_g is None:  # the first point with data before it
            self._next_g = self._first_g = (start_ns // self._refresh_ns + 1) * self._refresh_ns
        ends = [e for e in (self._ecg.end_ns, self._ppg.end_ns) if e is not None]
        # memory bound: a signal far ahead of the pending point decides it without the lagging one
        self._decide_until(max(ends) - self._lag_ns)
        self._drop()

    def step_back(self, signal: str, start_ns: int) -> None:
        """`signal`'s sender stepped its clock back: its next samples start at `start_ns`, before some held ones.

        Its samples stamped from `start_ns` on are forgotten, with the scores of the candidates they were part of, so
        the samples that follow take their place (a held overlap would otherwise keep the old time line's samples
        and pair them with the other signal's). When `start_ns` lies before the input the pending decisions read
        (`next pending point - keep_s`: a lone chunk stamped far ahead made the store decide on to it), the points
        since were decided on the other time line: the store starts anew, as a reader starting there would.

        Parameters
        ----------
        signal : "II" or "PLETH" (any case).
        start_ns : timestamp of the first sample after the step (ns).
        """
        name = signal.upper()
        if name not in ("II", "PLETH"):
            raise ValueError(f"ContextStore keeps 'II' and 'PLETH', not {signal!r}")
        start_ns = int(start_ns)
        if self._next_g is None:
            return
        if start_ns < self._next_g - self._keep_ns:
            self.clear()
            return
        (self._ecg if name == "II" else self._ppg).cut_from(start_ns)
        # a candidate whose samples reach the cut scored samples that are gone (its key, its first stamp, stays)
        self._scores = {k: v for k, v in self._scores.items() if k[0] + k[1] * 1e9 / k[2][0] <= start_ns}

    def get(self, at_ns: int) -> PairedContext | None:
        """The context decided at the last grid point at or before `at_ns` (see the class invariants).

        Parameters
        ----------
        at_ns : int
            Timestamp the context is for (the worker: a PLETH window's first sample), ns since the epoch.

        Returns
        -------
        PairedContext or None
            None before both signals have `length_s` of usable paired data (and no earlier context is kept).
        """
        g = int(at_ns) // self._refresh_ns * self._refresh_ns
        if self._next_g is None or g < self._first_g:
            return None
        self._decide_until(g)
        self._drop()
        while len(self._decided) > 1 and self._decided[1][0] <= g:  # asks come in time order: older ones go
            self._decided.popleft()
        # an ask older than what is kept (a window far behind the others) gets the oldest decision kept
        return self._decided[0][1] if self._decided else None

    def aligned(self, before_ns: int) -> tuple[np.ndarray, np.ndarray, float, int] | None:
        """(ecg, ppg, rate_hz, start_ns) over the time both signals cover in `[before_ns - keep_s, before_ns)`, or
        None: what the decision at grid point `before_ns` selects from."""
        al = self._aligned(int(before_ns))
        return None if al is None else al[:4]

    @property
    def history_s(self) -> float:
        """Seconds of input before a grid point that its decision depends on (`keep_s + fallback_s`; inf without
        a fallback bound): see the class invariants."""
        return math.inf if self.fallback_s is None else self.keep_s + self.fallback_s

    def resume_from_ns(self) -> int | None:
        """Timestamp from which on the input decides every decision not yet made (see the class invariants), ns; None
        before any input."""
        if self._next_g is None:
            return None
        t = self._next_g - self._keep_ns
        if self._last_good is not None and self._good_g is not None:
            t = min(t, self._good_g - self._keep_ns)
        return t

    def nbytes(self) -> int:
        """Bytes of samples held (both signals, context arrays not counted)."""
        return self._ecg.nbytes() + self._ppg.nbytes()

    def _decide_until(self, g_last: int) -> None:
        while self._next_g is not None and self._next_g <= g_last:
            g = self._next_g
            self._decide(g)
            self._next_g = g + self._refresh_ns

    def _decide(self, g: int) -> None:
        limit_ns = int(round(self.forget_after_gap_s * 1e9))
        for track in (self._ecg, self._ppg):
            quiet = track.silent_since(g)
            if (quiet is not None and g - quiet > limit_ns) or any(
                    b > self.forget_after_gap_s for b in track.breaks(g - self._refresh_ns, g)):
                self._last_good = None
        ctx = self._select(g)
        if ctx is not None:
            old = self._last_good
            if not (old is not None and old.rate_hz == ctx.rate_hz and np.array_equal(old.ecg, ctx.ecg)
                    and np.array_equal(old.ppg, ctx.ppg)):
                self._last_good = ctx
            self._good_g = g
        elif self._fallback_ns is not None and self._good_g is not None and g - self._good_g > self._fallback_ns:
            self._last_good = None  # found too long ago: the decision would depend on input before history_s
        self._decided.append((g, self._last_good))
        # bounded: a point is asked for within max_lag_s of the newest data, or was decided for the memory bound
        while len(self._decided) > 2 + (self._keep_ns + self._lag_ns) // self._refresh_ns:
            self._decided.popleft()

    def _drop(self) -> None:
        if self._next_g is not None:
            self._ecg.drop_before(self._next_g - self._keep_ns)
            self._ppg.drop_before(self._next_g - self._keep_ns)

    def _aligned(self, g: int):
        e = self._ecg.clip(g - self._keep_ns, g)
        p = self._ppg.clip(g - self._keep_ns, g)
        if e is None or p is None:
            return None
        # Not the PPG's rate: a 25 Hz PPG would band-limit a 125 Hz ECG to 12.5 Hz and blunt the QRS that
        # PPG->ECG draws from this context (the model was trained on full-band contexts). Upsampling the PPG is harmless.
        rate = float(self.rate_hz or max(e[2], p[2]))
        t0, t1 = max(e[0], p[0]), min(e[1], p[1])
        n = int((t1 - t0) * rate // 1e9)
        if n < 2:
            return None
        t = grid_ns(t0, rate, np.arange(n))
        # what a candidate's samples depend on besides its time: the segments and rates they come from
        key = (rate,) + tuple((s.origin_ns, s.rate) for s in (self._ecg.newest_before(g), self._ppg.newest_before(g)))
        return self._on_grid(e, t, rate), self._on_grid(p, t, rate), rate, int(t0), key

    @staticmethod
    def _on_grid(clip: tuple[int, int, float, np.ndarray], t: np.ndarray, rate: float) -> np.ndarray:
        t0, _, r, x = clip
        if r != rate:  # anti-aliased rate change first, then sub-sample alignment by interpolation
            x, r = resample(x.astype(np.float64), r, rate), rate
        # offsets from the clip's first sample: the same clip gives the same values however it was pushed
        return np.interp((t - t0) / (1e9 / r), np.arange(len(x)), x)

    def _select(self, g: int) -> PairedContext | None:
        """`select_context` over the data before `g`, its candidates on an absolute grid (multiples of
        `length_s / 4`), each scored once: the score of a candidate is kept while it lies within `keep_s` before the
        pending point, so a decision scores only the candidates new since the last one."""
        al = self._aligned(g)
        if al is None:
            return None
        ecg, ppg, rate, t0, key = al
        n = int(round(self.length_s * rate))
        if n < 2 or len(ecg) < n:
            return None
        t = grid_ns(t0, rate, np.arange(len(ecg)))
        step = self._step_ns
        best, best_i = None, None
        c = int(t[len(ecg) - n]) // step * step
        while c >= t0:  # latest first: the most recent wins a tie
            i = int(np.searchsorted(t, c))
            if i + n <= len(ecg):
                k = (int(t[i]), n, key)  # its samples' first timestamp: another alignment is another candidate
                if k not in self._scores:
                    self._scores[k] = context_score(ecg[i:i + n], ppg[i:i + n], rate)
                    self.scored += 1
                sc = self._scores[k]
                if sc is not None and (best is None or sc > best + 1e-9):
                    best, best_i = sc, i
            c -= step
        for k in [k for k in self._scores if k[0] < g - self._keep_ns]:
            del self._scores[k]
        if best_i is None:
            return None
        seg = slice(best_i, best_i + n)
        return PairedContext(ecg=ecg[seg].astype(np.float32), ppg=ppg[seg].astype(np.float32), rate_hz=float(rate))


class ContextCache:
    """Values derived from a context (beat model, templates, delay), built once per (context object, tag).

    The stream hands the same `PairedContext` object to every window of a bed until it refreshes, so the object's
    identity is the key. An entry holds the object itself, so its id cannot be reused while cached; the least
    recently used entries go first beyond `size`. Thread-safe; `build` runs outside the lock.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self._entries: OrderedDict[tuple, tuple[object, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx: object, tag: Hashable, build: Callable[[], T], slot: Hashable | None = None) -> T:
        """The value cached for (`ctx`, `tag`), else `build()` (cached, even when None).

        Parameters
        ----------
        ctx : the context object (its identity is the key).
        tag : what is derived from it, e.g. "beat" or ("qrs", cutoff_hz).
        build : makes the value; called outside the lock (two threads may build the same value once each).
        slot : where the value lives instead of the object's identity, e.g. the bed: a bed's next context version
            then replaces its last one, so the cache holds one entry per bed and tag however often contexts are
            refreshed, and a pass over more beds than `size` / tags no longer evicts every entry before its reuse
            (the LRU worst case).
        """
        key = (id(ctx) if slot is None else ("slot", slot), tag)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is ctx:
                self._entries.move_to_end(key)
                return hit[1]
        value = build()
        with self._lock:
            self._entries[key] = (ctx, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
