"""Paired ECG + PPG context: choosing a clean segment, and a bounded per-bed memory of recent data.

A `PairedContext` (earlier, simultaneous ECG + PPG of the same patient) lets a translator adapt
to the patient (pulse-arrival delay, beat morphology). The stream worker keeps one `ContextStore`
per bed that has both signals and passes `store.get()` along with each PPG window.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

import numpy as np

from operators.processing.quality import ECG_KURTOSIS_MIN, MAX_FLAT, ecg_quality, ppg_quality
from operators.processing.resample import resample
from operators.processing.rpeaks import detect_rpeaks
from operators.translator import PairedContext
from operators.processing.samples import grid_ns

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
    qe, qp = ecg_quality(ecg, rate_hz), ppg_quality(ppg, rate_hz)
    # ECG clipped at the monitor's display rails (e.g. BIDMC bidmc32) still gives R times and the
    # patient's beat as the monitor records it: tolerate it, but prefer unclipped segments.
    ecg_ok = qe.ok or (qe.reason.startswith("clipping") and qe.clip_frac <= MAX_ECG_CLIP
                       and qe.sqi >= ECG_KURTOSIS_MIN and qe.flat_frac <= MAX_FLAT)
    if not (ecg_ok and qp.ok):
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


class _Track:
    """Recent samples of one signal on an exact time grid; resets on gaps and rate changes."""

    def __init__(self, max_samples_s: float):
        self.max_s = max_samples_s
        self.rate: float | None = None
        self.origin_ns = 0  # timestamp of sample index 0 of the current run
        self.first = 0  # index of buf[0]
        self.buf = np.zeros(0, np.float32)

    @property
    def end(self) -> int:
        return self.first + len(self.buf)

    def push(self, start_ns: int, rate_hz: float, x: np.ndarray) -> float | None:
        """Add samples; returns None, or how long the break was (s) when it restarted the track (inf: the rate
        changed or the clock went back before everything held)."""
        x = np.asarray(x, dtype=np.float32).ravel()
        if len(x) == 0:
            return None
        if self.rate != rate_hz or not len(self.buf):
            fresh = not len(self.buf) and self.rate is None
            self._restart(start_ns, rate_hz, x)
            return None if fresh else float("inf")
        period = 1e9 / rate_hz
        # x[0]'s index on the current grid: stamp jitter under half a sample snaps onto it, as the windower does
        ki = int(round((start_ns - self.origin_ns) / period))
        if ki > self.end:  # a gap: never splice
            gap_s = (ki - self.end) / rate_hz
            self._restart(start_ns, rate_hz, x)
            return gap_s
        if ki < self.first:
            if (self.first - ki) / rate_hz <= self.max_s:
                return None  # a late or re-delivered chunk (lead II reaches here unfiltered): nothing new
            # further back than all we hold spans: the sender's clock went back (or a new recording began)
            self._restart(start_ns, rate_hz, x)
            return float("inf")
        new = x[max(0, self.end - ki):]  # sliding windows overlap: keep only the unseen tail
        if len(new):
            self.buf = np.concatenate([self.buf, new])
        cap = int(round(self.max_s * rate_hz))
        if len(self.buf) > cap:
            self.first += len(self.buf) - cap
            self.buf = self.buf[-cap:].copy()
        return None

    def _restart(self, start_ns: int, rate_hz: float, x: np.ndarray) -> None:
        self.rate = float(rate_hz)
        self.origin_ns = int(start_ns)
        self.first = 0
        self.buf = x.copy()
        cap = int(round(self.max_s * rate_hz))
        if len(self.buf) > cap:
            self.first = len(self.buf) - cap
            self.buf = self.buf[-cap:].copy()

    def span_ns(self) -> tuple[int, int]:
        return (int(grid_ns(self.origin_ns, self.rate, self.first)), int(grid_ns(self.origin_ns, self.rate, self.end)))

    def values_at(self, t_ns: np.ndarray) -> np.ndarray:
        """Linear interpolation onto other timestamps (inside the span)."""
        t = (t_ns - self.origin_ns) / (1e9 / self.rate) - self.first
        return np.interp(t, np.arange(len(self.buf)), self.buf)


class ContextStore:
    """Bounded memory of one bed's most recent ECG ("II") and PPG ("PLETH") samples.

    Windows (possibly overlapping, as the windower emits them) are pushed with their start
    timestamps; `get()` aligns both signals on time at `rate_hz` (default: the faster of the two
    signals' rates, so neither loses band) and returns the best `length_s` context from the overlap, or
    the last good one when the current data has none. Thread-safe.
    """

    def __init__(self, length_s: float = 10.0, keep_s: float = 30.0, rate_hz: float | None = None,
                 refresh_s: float | None = None, forget_after_gap_s: float = 60.0):
        if keep_s < length_s:
            raise ValueError("keep_s must be >= length_s")
        self.length_s = float(length_s)
        # The last good context outlives an ECG lead coming off (that is what it is for), but not a break
        # this long in either signal or a clock going back: the bed may hold another patient by then.
        self.forget_after_gap_s = float(forget_after_gap_s)
        self.rate_hz = rate_hz
        self._ecg = _Track(keep_s)
        self._ppg = _Track(keep_s)
        self._lock = threading.Lock()
        self._version = 0
        self._cached_version = -1
        self._cached: PairedContext | None = None
        self._last_good: PairedContext | None = None
        # re-select only after this much new data (selection costs ~10 ms; get() runs per window)
        self.refresh_s = self.length_s / 4 if refresh_s is None else float(refresh_s)
        self._new_s = 0.0

    def push(self, signal: str, start_ns: int, rate_hz: float, samples: np.ndarray) -> None:
        """Add a window (or chunk) of one signal; overlap with what is held is ignored, a gap restarts that track.

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
        with self._lock:
            if name == "II":
                gap_s = self._ecg.push(int(start_ns), float(rate_hz), samples)
            elif name == "PLETH":
                gap_s = self._ppg.push(int(start_ns), float(rate_hz), samples)
            else:
                raise ValueError(f"ContextStore keeps 'II' and 'PLETH', not {signal!r}")
            if gap_s is not None and gap_s > self.forget_after_gap_s:
                self._cached = self._last_good = None
                self._cached_version = -1
            self._version += 1
            self._new_s += len(np.ravel(samples)) / float(rate_hz) / 2.0  # two signals

    def clear(self) -> None:
        """Forget everything (e.g. a new patient in the bed)."""
        with self._lock:
            self._ecg = _Track(self._ecg.max_s)
            self._ppg = _Track(self._ppg.max_s)
            self._cached = self._last_good = None
            self._cached_version = -1
            self._new_s = 0.0
            self._version += 1

    def get(self) -> PairedContext | None:
        """The best context from the data held (re-selected after `refresh_s` of new data), else the last good one
        (forgotten after a break longer than `forget_after_gap_s`), else None."""
        with self._lock:
            fresh = self._cached_version == self._version
            if fresh or (self._cached_version >= 0 and self._new_s < self.refresh_s):
                return self._cached
            self._new_s = 0.0
            ctx = self._select()
            if ctx is not None:
                self._last_good = ctx
            self._cached = ctx or self._last_good
            self._cached_version = self._version
            return self._cached

    def aligned(self) -> tuple[np.ndarray, np.ndarray, float, int] | None:
        """(ecg, ppg, rate_hz, start_ns) over the time both signals cover, or None."""
        with self._lock:
            return self._aligned()

    def _aligned(self):
        if not len(self._ecg.buf) or not len(self._ppg.buf):
            return None
        (e0, e1), (p0, p1) = self._ecg.span_ns(), self._ppg.span_ns()
        # Not the PPG's rate: a 25 Hz PPG would band-limit a 125 Hz ECG to 12.5 Hz and blunt the QRS that
        # PPG->ECG draws from this context (the model was trained on full-band contexts). Upsampling the PPG is harmless.
        rate = float(self.rate_hz or max(self._ecg.rate, self._ppg.rate))
        t0, t1 = max(e0, p0), min(e1, p1)
        n = int((t1 - t0) * rate // 1e9)
        if n < 2:
            return None
        # grid at `rate` from t0; each signal is brought onto it (polyphase when the rate differs)
        t = grid_ns(t0, rate, np.arange(n))
        ecg = self._on_grid(self._ecg, t, rate)
        ppg = self._on_grid(self._ppg, t, rate)
        return ecg, ppg, rate, int(t0)

    @staticmethod
    def _on_grid(track: _Track, t: np.ndarray, rate: float) -> np.ndarray:
        if track.rate == rate:
            return track.values_at(t)
        # anti-aliased rate change first, then sub-sample alignment by interpolation
        x = resample(track.buf.astype(np.float64), track.rate, rate)
        tmp = _Track(track.max_s)
        tmp.rate, tmp.origin_ns, tmp.first, tmp.buf = rate, int(grid_ns(track.origin_ns, track.rate, track.first)), 0, x
        return tmp.values_at(t)

    def _select(self) -> PairedContext | None:
        al = self._aligned()
        if al is None:
            return None
        ecg, ppg, rate, _ = al
        return select_context(ecg, ppg, rate, self.length_s)


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
