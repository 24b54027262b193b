"""Per-(bed, signal) sliding-window buffer, shared by the stream worker and offline mode.

Both paths push the same chunks through a `SlidingWindower`, so they emit identical windows.

Timing model: every sample of a segment sits on the exact grid
`segment_start_ns + round(k * 1e9 / rate)` (k = index in the segment, rounding half up, exact
integer arithmetic), anchored at the segment's first chunk. Chunk-start jitter up to
`gap_tolerance` sample periods is absorbed onto that grid, and up to just under one period when the
chunk's seq directly follows the last one. A later start is a gap (tail flushed, `gap` event, new
segment: never spliced); an earlier start is rejected (`out_of_order`, or `duplicate` when its seq
is not newer), except a chunk next by seq up to MAX_CLOCK_STEP_S early, which starts a new segment at
its stamp (`clock_step`: a sender clock running fast); a rate change flushes and starts a new segment.

Clock resync: a stream whose stamps went back for good (a lone chunk stamped ahead by a clock glitch, whose
successors all lie before the segment it started; a clock corrected backwards; a producer restart, seq from 0, after
either) would otherwise be refused until the bed goes silent. Rejected chunks that follow each other by seq, at one
rate, each starting where the previous one ended (within the seq jitter), and either newer by seq than the last
accepted chunk or starting a producer restart (the run's first seq is 0, stamped before the current segment), are
counted; the `RESYNC_CHUNKS`-th of such a run is accepted: the current segment is flushed and closed, a
`clock_step` event spans from the new stamp to where the closed segment ended and names that segment, and a new
segment starts at the chunk's stamp. The run's earlier chunks stay rejected (each reported by its own event). A run
of resent chunks with their old seqs (a replay, from seq 0 too) never resyncs: those stay `duplicate`. The decision
depends only on the chunks after the current segment's last accepted one, so a reader that re-reads them after a
rebalance decides the same.

Emission on an absolute grid: window ends lie on multiples of `hop` in integer ns since the epoch
(`G_m = m * hop_ns`; a window ending at G_m holds the `window` samples before the first sample at or
after G_m), so every window is a function of the input and the epoch alone, not of where a process
started reading. Window m emits its *core* `[E_{m-1} - lookahead, E_m - lookahead)` (E_m: first sample
index at or after G_m): consecutive cores tile the segment without gap or overlap. A segment's *head*
(before the first core whose window lies wholly in the segment) is emitted once, by one window of the
segment's first `window` samples (`emit_from=0`). Concatenating `w.samples[w.emit_from:w.emit_stop]`
over all emitted windows reproduces the input exactly (minus segments reported by a
`short_segment_dropped` event). With window and hop whole seconds and a segment starting on a
multiple of the hop (offline mode: t = 0), these are the windows of the segment's first sample + k*hop.

Resuming mid-stream: a stream's first chunk with `seq > 0` is a continuation another process (a worker
before a rebalance) may have emitted from. The segment is then *resumed*: no head; its head span is
taken as emitted and its first emitted window is the first grid window wholly in the data, which is
the same window, with the same samples, that an uninterrupted process computes there.
`resume_history_s` > 0 widens the head a resumed segment takes as emitted by that much: its first emitted window is
the first grid window wholly in the data from `resume_history_s` after the segment's start. A reader that keeps other
state drawn from the input before a window (the pipeline's patient context) re-reads that much more input to rebuild
it, and emits from the same point as with 0; the previous reader's commit rule must keep `resume_history_s + window`
uncommitted.
`resume_mid_stream=False` turns this off for a reader that knows nobody emitted from the stream (the
pipeline's own evicted beds). `flushed_until_ns` is for a reader that knows where the output stopped (a flush
point the previous reader persisted): the first segment then takes its head as emitted only up to there, and its
head window emits the rest; at or before the segment's start that is a start with a whole head. Given at least
`window` seconds of input before the point where the previous process stopped emitting (the worker's
commit rule keeps that much uncommitted), every later output is identical to an uninterrupted run.

Look-ahead: with `lookahead_s > 0` the newest `lookahead` samples of a full window are context only
(`emit_to = window - lookahead`) and are emitted by the next window or the flush. A translator whose
output at time t depends on input after t (PPG->ECG: the pulse arrives ~0.6 s after its R-peak)
then never has to guess at the window's right edge; latency grows by the look-ahead.

A flush (idle timeout, end of input, gap) emits the not-yet-emitted tail with the segment's last
`window` samples; a segment that continues contiguously afterwards goes on on the same grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from operators.processing.samples import NS_PER_S, grid_ns, period_ns, whole_multiple

__all__ = ["Window", "StreamEvent", "PushResult", "SlidingWindower"]

# Stamp jitter absorbed for a chunk whose seq directly follows the last one (in sample periods; below 1, so a
# stamp a whole sample late is still a gap). Without seq continuity `gap_tolerance` applies.
SEQ_JITTER_PERIODS = 0.999
# A chunk that follows by seq but starts up to this much earlier than expected is new data from a clock that runs
# fast or stepped back (`clock_step`, new segment); more than this is an overlap, rejected as out of order.
MAX_CLOCK_STEP_S = 0.1
# Rejected chunks in a row, consecutive by seq and on one grid, after which the stream is taken to have stepped back
# for good and the last of them starts a new segment (module doc: clock resync). Small, so a glitch costs a few
# chunks (dead-lettered, each with its event); above 1, so one stray chunk never closes a live segment.
RESYNC_CHUNKS = 3


@dataclass
class Window:
    """One window of a segment: `samples` from `start_ns` on the segment's exact grid.

    Invariant: `samples[emit_from:emit_stop]` is the part no earlier window emitted; what lies before is
    context, what lies after is look-ahead that a later window (or the flush) emits.
    """

    start_ns: int  # timestamp of samples[0]
    rate_hz: float
    samples: np.ndarray  # float32; window length, or shorter for a flushed short segment
    emit_from: int  # samples[emit_from:] were never emitted before; earlier ones are context only
    segment: int  # increments at every reset (gap, rate change)
    kind: str  # "full" | "flush"
    # Exact grid anchor: samples[0] is sample `offset` of a segment starting at `segment_start_ns`.
    # Defaults make a hand-built Window its own anchor.
    segment_start_ns: int | None = None
    offset: int = 0
    emit_to: int | None = None  # end (exclusive) of the newly emitted part; None = len(samples)

    def timestamps_ns(self, rate_hz: float | None = None, n: int | None = None) -> np.ndarray:
        """int64 timestamps of an `n`-sample grid at `rate_hz` starting at `start_ns`.

        At the window's own rate this is the segment grid (identical to what neighbouring windows
        report); at another rate (e.g. a super-resolved output) `n` defaults to
        `round(len(samples) * rate_hz / self.rate_hz)`.
        """
        same = rate_hz is None or float(rate_hz) == float(self.rate_hz)
        if same:
            n = len(self.samples) if n is None else int(n)
            if self.segment_start_ns is None:
                return grid_ns(self.start_ns, self.rate_hz, np.arange(n))
            return grid_ns(self.segment_start_ns, self.rate_hz, self.offset + np.arange(n))
        if n is None:
            n = int(round(len(self.samples) * float(rate_hz) / float(self.rate_hz)))
        if self.segment_start_ns is not None and whole_multiple(rate_hz, self.rate_hz):
            # on the segment's own grid: the window's start is rounded to a ns, and offsets from it drift off it
            m = int(round(float(rate_hz) / float(self.rate_hz)))
            return grid_ns(self.segment_start_ns, float(rate_hz), self.offset * m + np.arange(int(n)))
        return grid_ns(self.start_ns, float(rate_hz), np.arange(int(n)))

    def emit_from_at(self, rate_hz: float) -> int:
        """Index of the first never-emitted sample on a grid at `rate_hz` over the same span.

        Uses the same rounding as `output_length`, so consecutive windows hand over without a
        gap or overlap whenever the hop is a whole number of samples at both rates.
        """
        return int(round(self.emit_from * float(rate_hz) / float(self.rate_hz)))

    def on_output_grid(self, rate_hz: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(times_ns, values, k0, k1): a translation `y` of this window (at `rate_hz`, sample 0 at `start_ns`) on
        the timestamps it is published at; `[k0, k1)` is its newly emitted part.

        At a whole multiple of the window's rate every input sample is an output sample, so `y` keeps the
        window's own grid. At any other ratio (62.5 or 40 Hz in, 100 Hz out) windows start where a flush or a
        restarted segment happens to begin, and their grids would not line up: neighbouring windows would
        hand over with uneven spacing, and a re-run after a crash would publish other timestamps (duplicates in
        InfluxDB rather than overwrites). There `y` goes onto the absolute grid `round(k * 1e9 / rate_hz)` ns
        (cubic interpolation), which every window and every re-run shares.
        """
        y = np.asarray(y)
        n = len(y)
        if whole_multiple(rate_hz, self.rate_hz) or n == 0:
            k0 = self.emit_from_at(rate_hz) if len(self.samples) else 0
            k1 = min(n, self.emit_to_at(rate_hz)) if len(self.samples) else n
            return self.timestamps_ns(rate_hz, n), y, k0, k1
        p = period_ns(rate_hz)
        # The window's input span, not `y`'s rounded length: the next window starts emitting at end_ns, and a
        # grid point between the two would be lost. Every grid time computed stays below end_ns (< 2^63).
        lo, hi = self.start_ns, self.end_ns
        ks = np.arange(math.floor(Fraction(lo) / p), math.ceil(Fraction(hi) / p), dtype=np.int64)
        times = grid_ns(0, rate_hz, ks)
        times = times[(times >= lo) & (times < hi)]
        # The span's last grid point can lie up to ~1.5 output samples past y's last one (y's length is rounded):
        # the spline's end polynomial carries on there, which holding the last value (an error at the end of
        # every window without look-ahead) does not.
        pos = (times - lo) * (float(rate_hz) / NS_PER_S)
        if n >= 2 and np.isfinite(y).all():
            from scipy.interpolate import CubicSpline

            values = CubicSpline(np.arange(n), y.astype(np.float64))(pos).astype(y.dtype)
        else:  # linear (holding at the ends): a non-finite output sample (the sinks skip those) stays local
            values = np.interp(pos, np.arange(n), y.astype(np.float64)).astype(y.dtype)
        k0 = int(np.searchsorted(times, self._ts(self.emit_from)))
        k1 = int(np.searchsorted(times, self.emit_end_ns))
        return times, values, k0, k1

    def output_end_ns(self, rate_hz: float, n: int) -> int:
        """Exclusive end of the span an `n`-sample output at `rate_hz` is published over (see on_output_grid)."""
        if whole_multiple(rate_hz, self.rate_hz):
            return int(self.timestamps_ns(rate_hz, n + 1)[-1])
        return self.end_ns

    @property
    def emit_stop(self) -> int:
        """End (exclusive sample index) of the newly emitted part."""
        return len(self.samples) if self.emit_to is None else self.emit_to

    def emit_to_at(self, rate_hz: float) -> int:
        """`emit_stop` on a grid at `rate_hz` over the same span (same rounding as `emit_from_at`)."""
        return int(round(self.emit_stop * float(rate_hz) / float(self.rate_hz)))

    @property
    def end_ns(self) -> int:
        """Timestamp one sample period after the last sample (exclusive end)."""
        return self._ts(len(self.samples))

    @property
    def emit_end_ns(self) -> int:
        """Exclusive end of the newly emitted part (`end_ns` unless a look-ahead holds samples back)."""
        return self._ts(self.emit_stop)

    def _ts(self, index: int) -> int:
        anchor = self.start_ns if self.segment_start_ns is None else self.segment_start_ns
        off = 0 if self.segment_start_ns is None else self.offset
        return int(grid_ns(anchor, self.rate_hz, off + index))


@dataclass
class StreamEvent:
    """Something in the stream that is not a window: a gap, a rate change, a refused chunk, a dropped segment,
    over [start_ns, end_ns) ns, with `detail` for humans."""

    kind: str  # "gap" | "rate_change" | "clock_step" | "out_of_order" | "duplicate" | "short_segment_dropped"
    start_ns: int
    end_ns: int
    detail: str


@dataclass
class _RejectedRun:
    """Rejected chunks in a row that follow each other by seq and on one grid (clock resync)."""

    count: int
    next_seq: int  # the seq that continues the run
    next_ns: int  # where the chunk that continues the run starts (the last one's grid end)
    rate_hz: float


@dataclass
class PushResult:
    """What one `push` or `flush` produced: whether the chunk was taken, the windows and the events, in order."""

    accepted: bool
    windows: list[Window] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)


class SlidingWindower:
    """Sliding windows over one (bed, signal) stream. Not thread-safe: one instance per stream."""

    def __init__(self, window_s: float, hop_s: float, min_segment_s: float = 1.0, gap_tolerance: float = 0.5,
                 lookahead_s: float = 0.0, resume_mid_stream: bool = True, flushed_until_ns: int | None = None,
                 resume_history_s: float = 0.0):
        if not (window_s > 0 and hop_s > 0):
            raise ValueError("window_s and hop_s must be > 0")
        if not lookahead_s >= 0:
            raise ValueError("lookahead_s must be >= 0")
        if hop_s + lookahead_s > window_s:
            # windows would skip samples between them; nothing downstream could recover those
            raise ValueError(f"hop_s ({hop_s}) + lookahead_s ({lookahead_s}) must not exceed window_s ({window_s})")
        self.lookahead_s = float(lookahead_s)
        if not 0 <= gap_tolerance < 1:
            raise ValueError("gap_tolerance is in sample periods and must be in [0, 1)")
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.min_segment_s = float(min_segment_s)
        self.gap_tolerance = float(gap_tolerance)
        # False: the first chunk starts the stream whatever its seq (its reader knows nobody emitted from it)
        self.resume_mid_stream = bool(resume_mid_stream)
        if not resume_history_s >= 0:
            raise ValueError("resume_history_s must be >= 0")
        # a resumed segment's first this-many seconds only rebuild the reader's other state (module doc)
        self.resume_history_s = float(resume_history_s)
        # output before this is known emitted, after it not: bounds the head a resumed first segment takes as emitted
        self.flushed_until_ns = None if flushed_until_ns is None else int(flushed_until_ns)
        self._hop_ns = int(round(self.hop_s * NS_PER_S))  # window ends lie on multiples of this since the epoch
        self._segment = -1
        self._last_seq: int | None = None
        self._run: _RejectedRun | None = None  # rejected chunks that may be a stream that stepped back (clock resync)
        self._reset_state()

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        self._rate: float | None = None
        self._seg_start_ns = 0
        self._n_total = 0  # samples pushed into this segment
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # segment index of _buf[0]
        self._emitted = 0  # segment index: everything before was emitted (or dropped, or, resumed, taken as emitted)
        self._resumed = False
        self._win = self._hop = self._min_seg = self._la = 0

    def _start_segment(self, start_ns: int, rate_hz: float, resumed: bool = False) -> None:
        self._reset_state()
        self._segment += 1
        self._rate = float(rate_hz)
        self._seg_start_ns = int(start_ns)
        self._win = max(1, int(round(self.window_s * rate_hz)))
        self._hop = min(self._win, max(1, int(round(self.hop_s * rate_hz))))
        self._la = min(self._win - self._hop, int(round(self.lookahead_s * rate_hz)))
        self._min_seg = max(1, int(math.ceil(self.min_segment_s * rate_hz - 1e-9)))
        if resumed:  # the head span counts as emitted by whoever read this stream before (module doc)
            head = self._head_end(int(round(self.resume_history_s * rate_hz)))
            known = head if self.flushed_until_ns is None else min(head, self._grid_index(self.flushed_until_ns))
            # a known end of the output inside the head: the head window emits from there (not a mid-stream resume)
            self._resumed = known == head
            self._emitted = known

    def _ts(self, index: int) -> int:
        return int(grid_ns(self._seg_start_ns, self._rate, index))

    def _grid_index(self, t_ns: int) -> int:
        """First segment sample index whose timestamp is at or after `t_ns` (inverse of the exact grid)."""
        p = period_ns(self._rate)
        num, den = p.numerator, p.denominator
        d = int(t_ns) - self._seg_start_ns  # ts(i) - start = floor((2*i*num + den) / (2*den)) >= d  <=>  i >= ...
        return max(0, -(-(den * (2 * d - 1)) // (2 * num)))

    def _grid_end(self, m: int) -> int:
        """E_m: end (exclusive sample index) of the grid window ending at m * hop_ns."""
        return self._grid_index(m * self._hop_ns)

    def _head_end(self, skip: int = 0) -> int:
        """End of the head: the core start of the first grid window wholly inside the segment from sample `skip` on
        (>= 0)."""
        m = self._ts(skip + self._win) // self._hop_ns  # the last grid end at or before the head window's end
        return max(0, self._grid_end(m) - self._la)

    @property
    def segment(self) -> int:
        """Number of the current segment (-1 before the first chunk; +1 at every gap, rate change, clock step)."""
        return self._segment

    @property
    def segment_start_ns(self) -> int | None:
        """Timestamp of the current segment's first sample (None before the first chunk)."""
        return None if self._rate is None else self._seg_start_ns

    @property
    def rate_hz(self) -> float | None:
        """The current segment's sample rate (Hz); None before the first chunk."""
        return self._rate

    @property
    def expected_next_ns(self) -> int | None:
        """Timestamp the next contiguous chunk should start at (None before the first chunk)."""
        return None if self._rate is None else self._ts(self._n_total)

    @property
    def emitted_until_ns(self) -> int | None:
        """End (exclusive) of everything already emitted in the current segment (for a resumed segment: taken as
        emitted, which can lie beyond the data received so far)."""
        if self._rate is None or self._emitted == 0:
            return None
        return self._ts(self._emitted)

    @property
    def resumed(self) -> bool:
        """The current segment was joined mid-stream (first chunk with seq > 0, its head not known unemitted): no
        head window."""
        return self._resumed

    @property
    def last_seq(self) -> int | None:
        """The newest accepted chunk's seq (None before any chunk with one)."""
        return self._last_seq

    @property
    def pending(self) -> int:
        """Samples buffered but not yet emitted."""
        return max(0, self._n_total - self._emitted)

    # ------------------------------------------------------------------ API

    def push(self, start_ns: int, rate_hz: float, samples: np.ndarray, seq: int | None = None) -> PushResult:
        """Add one chunk; return the windows it completes and the events it causes (module doc: timing model).

        Parameters
        ----------
        start_ns : timestamp of `samples[0]` (ns since the epoch).
        rate_hz : the chunk's sample rate (Hz, finite, > 0); a change starts a new segment.
        samples : 1-D samples (stored as float32).
        seq : the sender's per-stream sequence number, if any (tells a late chunk from a duplicate and lets
            stamp jitter up to just under a period pass).

        Returns
        -------
        PushResult; `accepted` is False for an out-of-order or duplicate chunk (an event says which).

        Raises
        ------
        ValueError : `rate_hz` not a positive finite number.
        """
        rate_hz = float(rate_hz)
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive finite number, got {rate_hz}")
        x = np.asarray(samples, dtype=np.float32).ravel()
        start_ns = int(start_ns)
        out = PushResult(accepted=True)

        if len(x) == 0:  # no samples: nothing to place, and no reason to end a segment
            if seq is not None:
                self._last_seq = seq
            return out
        if self._rate is not None:
            period = NS_PER_S / self._rate
            expected = self._ts(self._n_total)
            delta = start_ns - expected
            # The chunk whose seq directly follows the last one is the next data whatever its stamp says, so
            # stamp jitter up to (just under) a sample period is absorbed for it: a 5 ms late stamp at 125 Hz
            # would otherwise start a segment that rejects the next, correctly stamped chunk as out of order.
            follows = seq is not None and self._last_seq is not None and seq == self._last_seq + 1
            tol = (SEQ_JITTER_PERIODS if follows else self.gap_tolerance) * period
            same_rate = math.isclose(rate_hz, self._rate, rel_tol=1e-9, abs_tol=0.0)
            if delta < -tol and follows and same_rate and -delta <= MAX_CLOCK_STEP_S * NS_PER_S:
                # Early by a sample or more, yet the next by seq: the sender's clock runs fast against its sample
                # count (every chunk a little earlier) or stepped back a little. Its samples are all new; a new
                # segment at its stamp keeps them (outputs around the step overlap by that much).
                self._flush_into(out)
                out.events.append(StreamEvent("clock_step", start_ns, expected, (
                    f"seq {seq} follows {self._last_seq} but starts {-delta / 1e6:.3f} ms before the expected "
                    f"{expected}; new segment at its stamp")))
                self._start_segment(start_ns, rate_hz)
            elif delta < -tol and self._resyncs(start_ns, rate_hz, len(x), seq):
                self._flush_into(out)
                old_start = self._seg_start_ns  # named by its start: segment numbers are one reader's own count
                out.events.append(StreamEvent("clock_step", start_ns, expected, (
                    f"{RESYNC_CHUNKS} chunks in a row (seq {seq - RESYNC_CHUNKS + 1}..{seq}) follow each other at "
                    f"{rate_hz:g} Hz but start before the expected {expected} (this one {-delta / 1e9:.3f} s "
                    f"before): the stream's clock went back; the segment from {old_start} closed, a new one starts "
                    f"at {start_ns}")))
                self._start_segment(start_ns, rate_hz)
            elif delta < -tol:
                dup = seq is not None and self._last_seq is not None and seq <= self._last_seq
                kind = "duplicate" if dup else "out_of_order"
                end = int(grid_ns(start_ns, rate_hz, len(x)))
                out.accepted = False
                out.events.append(StreamEvent(kind, start_ns, end, (
                    f"chunk starts {-delta / 1e6:.3f} ms before the expected {expected}"
                    + (f"; seq {seq} <= last {self._last_seq}" if dup else "")
                )))
                return out
            elif not same_rate:
                old = self._rate
                self._flush_into(out)
                if delta > tol:  # an outage that also changed the rate is still an outage
                    out.events.append(self._gap_event(expected, start_ns, delta, period))
                out.events.append(StreamEvent("rate_change", expected, max(start_ns, expected), f"{old:g} Hz -> {rate_hz:g} Hz"))
                # on time (within the jitter tolerance): the new rate starts where the old one ended, not inside it
                self._start_segment(start_ns if delta > tol else expected, rate_hz)
            elif delta > tol:
                self._flush_into(out)
                out.events.append(self._gap_event(expected, start_ns, delta, period))
                self._start_segment(start_ns, rate_hz)
        else:
            # A first chunk with seq > 0 continues a stream that may have been emitted from before (module doc).
            self._start_segment(start_ns, rate_hz, resumed=self.resume_mid_stream and seq is not None and seq > 0)

        self._run = None
        if seq is not None:
            self._last_seq = seq  # the newest accepted: after a producer restart (seq from 0) continuity counts again
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        self._n_total += len(x)
        self._emit_full(out)
        return out

    def _resyncs(self, start_ns: int, rate_hz: float, n: int, seq: int | None) -> bool:
        """Count a chunk about to be rejected as early into the run of such chunks; True when it is the
        `RESYNC_CHUNKS`-th of a run that may start a new segment (module doc: clock resync)."""
        run = self._run
        end = int(grid_ns(start_ns, rate_hz, n))
        if seq is None:
            self._run = None
            return False
        if run is not None and seq == run.next_seq and rate_hz == run.rate_hz \
                and abs(start_ns - run.next_ns) < SEQ_JITTER_PERIODS * NS_PER_S / rate_hz:
            run.count += 1
            run.next_seq, run.next_ns = seq + 1, end
        elif self._last_seq is None or seq > self._last_seq or (seq == 0 and start_ns < self._seg_start_ns):
            # newer by seq, or a producer restart before the current segment (from within it: a replay)
            run = self._run = _RejectedRun(1, seq + 1, end, rate_hz)
        else:  # a resent chunk: never the start of a resync
            self._run = None
            return False
        return run.count >= RESYNC_CHUNKS

    def _gap_event(self, expected: int, start_ns: int, delta: float, period: float) -> StreamEvent:
        return StreamEvent("gap", expected, start_ns,
                           f"{delta / 1e9:.6f} s missing (~{delta / period:.1f} samples at {self._rate:g} Hz)")

    def flush(self) -> PushResult:
        """Emit the not-yet-emitted tail (idle timeout / end of input). The segment stays open."""
        out = PushResult(accepted=True)
        self._flush_into(out)
        return out

    # ------------------------------------------------------------------ internals

    def _next_end(self) -> int:
        """E_m of the first grid window with samples not yet emitted (its core ends after the emit mark)."""
        m = self._ts(self._emitted + self._la) // self._hop_ns + 1
        return self._grid_end(m)

    def _window(self, end: int, length: int, kind: str, emit_end: int | None = None) -> Window:
        lo = end - length
        a = lo - self._buf_start
        samples = self._buf[a:a + length].copy()
        assert len(samples) == length and lo <= self._emitted, "window outside the buffer"
        return Window(
            start_ns=self._ts(lo),
            rate_hz=self._rate,
            samples=samples,
            emit_from=max(0, self._emitted - lo),
            segment=self._segment,
            kind=kind,
            segment_start_ns=self._seg_start_ns,
            offset=lo,
            emit_to=None if emit_end is None else emit_end - lo,
        )

    def _emit_full(self, out: PushResult) -> None:
        while True:
            end = self._next_end()
            if end < self._win:
                # The grid window would start before the segment: its head (everything before the first grid core
                # whose window lies wholly in the segment) comes from the segment's first `window` samples.
                if self._n_total < self._win:
                    break
                head = self._head_end()
                assert head > self._emitted, "head window with nothing to emit"  # that grid core ends at or before it
                out.windows.append(self._window(self._win, self._win, "full", head))
                self._emitted = head
                continue
            if self._n_total < end:
                break
            # `window` samples, or (hop + look-ahead = window at a fractional hop) one more to reach the emit mark
            length = max(self._win, end - self._emitted)
            out.windows.append(self._window(end, length, "full", end - self._la if self._la else None))
            self._emitted = end - self._la
        self._trim()

    def _flush_into(self, out: PushResult) -> None:
        if self._rate is None or self.pending == 0:
            return
        n = self._n_total
        if n >= self._win:
            out.windows.append(self._window(n, self._win, "flush"))
        elif n >= self._min_seg:
            out.windows.append(self._window(n, n, "flush"))
        else:
            out.events.append(StreamEvent(
                "short_segment_dropped", self._ts(self._emitted), self._ts(n),
                f"{n - self._emitted} samples of a {n}-sample segment ({n / self._rate:.3f} s) < "
                f"min_segment_s={self.min_segment_s:g}",
            ))
        self._emitted = n
        self._trim()

    def _trim(self) -> None:
        # Keep what a later window or flush can still need: `window` samples before the emit mark
        # plus the pending tail (< hop after emission), so memory stays <= window + hop.
        keep_from = max(0, min(self._emitted, self._n_total) - self._win)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:].copy()
            self._buf_start = keep_from
