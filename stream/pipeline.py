"""Broker-free pipeline core shared by the Faust worker and the offline mode.

Chunks in → per (bed, signal) `SlidingWindower` → routing to tasks → ONE batched
`translator.translate()` per `process()` → output series (new part of each window only, every
sample on its true timestamp), R-peak/HR events, stream anomaly events, and the list of input
tokens whose samples are now all emitted (the worker acknowledges those once the outputs are
durably written). Both callers feed identical chunks, so they produce identical values.

Not thread-safe: one caller at a time (the worker runs it on a single-thread executor).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable

import numpy as np

from operators.processing import quality as Q
from operators.processing.samples import grid_ns, in_millivolts
from operators.translator import PPG2ECG, SR, PairedContext, TranslationRequest, Translator, is_ecg_signal, method_of
from operators.state.windowing import SlidingWindower, StreamEvent, Window
from operators.vocab import ECG, PPG, SR_SUFFIX, SR_TARGET_HZ, SYNTH_ECG, super_resolvable
from stream.contextinput import ContextOnlyInput
from stream.progress import FlushPoint
from stream.results import OUTPUT_UNUSABLE, SOURCE_UNUSABLE, BatchResult, OutputSeries, PipelineEvent, Rejected

if TYPE_CHECKING:
    from stream.config import Settings

log = logging.getLogger(__name__)

RPEAK_EDGE_S = 0.25  # peaks this close to a window's right edge are left to the next window
# A window's quality is judged on what it emits plus this much on each side (what the output there depends on:
# the look-ahead after, the pulse before), not on the whole 8 s window: an artifact seconds away does not
# condemn a clean span, and one inside the span is not diluted by clean context.
QUALITY_MARGIN_S = 1.0
# A heart rate is published only from a good window whose confidence reaches this (set on training patients:
# it halved the wrong heart rates under injected motion, 1.7% -> 0.7%, for 6 points of clean windows' heart rates;
# docs/quality.md has the held-out numbers).
HR_MIN_CONFIDENCE = 0.7
# Synthesized beats whose rate is more than this share from the pulse rate of the source span they were drawn from
# are not the pulses: the translator draws one beat per pulse, so such a rate is a wave the R-peak detector took for a
# beat (a tall synthesized T wave) or beats the model invented. Such a window publishes no heart rate and confidence
# 0 (its peaks cannot all be right). On the held-out BIDMC patients' clean windows (classic) no right rate was this
# far off, while three doubled or halved ones were.
HR_PULSE_TOL = 0.2
# The last good patient context stands in (through a lead-off) for at most this long after the grid point that found
# it: while it does, its bed's input from that context's data on stays uncommitted (`ContextStore.resume_from_ns`),
# so this bounds how far a lead-off holds its partition's commit back. On the 40 BIDMC records (classic translator)
# 120 s changes 17 of 9480 windows' context against no bound (30 s: 147; 240 s: none).
CONTEXT_FALLBACK_S = 120.0
# A bed's context store keeps this many context lengths before each decision to choose the best segment from
# (`_BedContexts`); `resume_history_s` re-reads that much plus half a length (the decision points' spacing).
CONTEXT_KEEP = 3.0


def resume_history_s(context_s: float) -> float:
    """Seconds a stream resumed mid-stream re-reads before its first emitted window, to rebuild its bed's patient
    context as an uninterrupted reader has it.

    The context store keeps `3 x context_s` before each grid point to choose from, and a window asks for the last
    point at or before its start (`context_s / 2` apart): from `3.5 x context_s` after its first re-read chunk on,
    a reader decides every point as the old owner did, provided the old owner committed no input its context still
    depended on (`Pipeline.process`, `ContextStore.resume_from_ns`).

    Parameters
    ----------
    context_s : float
        `PipelineConfig.context_s` (s); 0 is off.

    Returns
    -------
    float
        `3.5 x context_s` (s); 0 when the context is off.
    """
    return (CONTEXT_KEEP + 0.5) * context_s if context_s > 0 else 0.0


def alarm_history_s(wait_s: float) -> float:
    """Seconds of input a worker taking a bed over must re-read so that the alarms pending at the takeover are
    judged on their whole analysis window: the verifier's `PRE_S` before the onset, whose data may have arrived up
    to the retrospective wait (`wait_s`) before the takeover. The learning span before that window
    (`operators.processing.alarms.LEARN_S`) is re-read only as far as this reaches (docs/alarms.md).

    Parameters
    ----------
    wait_s : float
        `Settings.alarm_wait_s` (s): how long after its onset a retrospective alarm waits.

    Returns
    -------
    float
        `PRE_S + wait_s` (s).
    """
    from operators.processing.alarms import PRE_S

    return PRE_S + wait_s


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline computes: windows and look-ahead (s), tasks and their rates (Hz), context, idle and eviction
    times (s), R-peaks and quality gating. `from_settings` gives the worker's."""

    window_s: float = 8.0
    hop_s: float = 2.0
    lookahead_s: float = 1.0  # newest part of every window is context only (see operators.state.windowing)
    tasks: tuple[str, ...] = (PPG2ECG, SR)
    sr_target_hz: float = SR_TARGET_HZ
    sr_below_hz: float = 100.0
    context_s: float = 10.0
    idle_flush_s: float = 10.0
    # A bed silent this long is forgotten (windows, context, seq state): bounded memory under bed churn. 0: never.
    bed_evict_s: float = 600.0
    # A token is completed only once its samples are emitted AND its stream has received this much input after
    # the point where a reader resuming after it would start (the chunk's end; after a gap, the new segment's
    # start), until the stream is flushed. The worker uses one window: the committed offset then keeps every
    # window not yet emitted, and the head of a segment not yet emitted, wholly uncommitted, so a new owner
    # after a rebalance re-consumes them and computes the same windows on the same grid and data
    # (operators.state.windowing, "Resuming mid-stream"). With the patient context on, the worker adds
    # `resume_history_s`. 0 releases a chunk as soon as its samples are emitted.
    ack_lag_s: float = 0.0
    # A stream resumed mid-stream takes this much more of its input as emitted: it only rebuilds the bed's patient
    # context, so the windows from there on get the context an uninterrupted run gives them (the worker:
    # `resume_history_s(context_s)`, and `ack_lag_s` keeps this plus a window uncommitted).
    resume_history_s: float = 0.0
    # ppg2ecg output rate; None: the PPG's own rate, or sr_target_hz for a PPG below sr_below_hz
    ppg2ecg_rate_hz: float | None = None
    # signals to super-resolve when slow; None: ECG leads and PLETH, the only kinds the SR model and the output
    # quality judgement know (a slow RESP or ABP gets no *_SR output rather than a confident PPG-shaped one)
    sr_signals: tuple[str, ...] | None = None
    rpeaks: bool = True
    quality: bool = True  # judge every source window (operators.processing.quality) and withhold unusable spans
    # Input no task routes (a 125 Hz lead II, ABP) is held like the context's (`stream.contextinput`) instead of
    # completed at once, so that a bed sending nothing to translate is re-read after a takeover too (the worker:
    # with the alarm agent on, whose ring is refilled from the re-read input).
    hold_unrouted: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> "PipelineConfig":
        """The worker's configuration: windows, tasks and rates from `s`, and the ack lag that keeps a rebalance's new
        owner computing the same windows with the same patient context and judging pending alarms on the same
        data (one window, plus the longer of `resume_history_s` with the context on and `alarm_history_s` with the
        alarm agent on, seconds).

        Parameters
        ----------
        s : stream.config.Settings
            The worker's settings.
        """
        history = resume_history_s(s.context_s) if PPG2ECG in s.tasks else 0.0  # only PPG->ECG takes the context
        if s.alarm_enabled:
            history = max(history, alarm_history_s(s.alarm_wait_s))
        return cls(window_s=s.window_s, hop_s=s.hop_s, lookahead_s=s.lookahead_s, tasks=tuple(s.tasks), sr_target_hz=s.sr_target_hz,
                   sr_below_hz=s.sr_below_hz, context_s=s.context_s, idle_flush_s=s.idle_flush_s,
                   bed_evict_s=s.bed_evict_s, ack_lag_s=s.window_s + history, resume_history_s=history,
                   sr_signals=tuple(s.sr_signals) or None, hold_unrouted=s.alarm_enabled)


@dataclass(frozen=True)
class PushOutcome:
    """What `Pipeline.push` did with a chunk: `accepted` False for one its stream's windower refused (a duplicate or
    out of order: reported in `BatchResult.rejected`); `stepped_back` True when it started a new segment before
    where the stream had got to (a clock step or resync, operators.state.windowing), so that whoever keeps the
    stream's samples by time drops what lies after it. A signal no task translates is always taken, unchecked."""

    accepted: bool
    stepped_back: bool = False


@dataclass
class _Stream:
    bed: str
    signal: str
    windower: SlidingWindower
    units: str = ""
    last_push: float = 0.0
    done_until_ns: int | None = None  # grid end of everything emitted or dropped (or, resumed, taken as emitted)
    # (grid end ns, resume point ns, token), push order; the resume point is where a reader that starts after this
    # chunk starts: its end, or the start of a segment begun after it
    pending: deque = field(default_factory=deque)
    n_emitted: int = 0  # leading `pending` tokens already reported in a BatchResult.emitted
    # end of a resumed first segment's head, taken as emitted (by the stream's earlier reader): chunks ending by then
    # are not this reader's outputs (no latency record)
    taken_until_ns: int | None = None
    rpeak_until_ns: int | None = None
    rpeak_segment: int = -1
    flushed: bool = True  # nothing buffered since the last flush


@dataclass
class _Job:
    stream: _Stream
    window: Window
    task: str
    target_rate: float
    quality: Q.SignalQuality | None = None  # of the source window's emitted span (quality_span)


def quality_span(w: Window, margin_s: float = QUALITY_MARGIN_S) -> tuple[int, int]:
    """Source sample range `[a, b)` a window's quality is judged on.

    Its emitted part +- `margin_s`, widened back into the window to at least `operators.processing.quality.MIN_GOOD_S`
    (a flush emits a short tail: two beats are too few to judge a pulse's shape and rhythm by).

    Parameters
    ----------
    w : Window
        A source window.
    margin_s : float
        Seconds on each side of the emitted part.

    Returns
    -------
    tuple of int
        Sample indices into `w.samples`.
    """
    return judged_span(w.emit_from, w.emit_stop, len(w.samples), w.rate_hz, margin_s)


def source_pulse_rate_bpm(w: Window) -> float | None:
    """Pulse rate (bpm) of a PLETH window over its judged span (`quality_span`), None with fewer than two pulses.

    Parameters
    ----------
    w : Window
        A PPG source window.
    """
    from operators.processing.rpeaks import detect_ppg_peaks, heart_rate_bpm

    a, b = quality_span(w)
    peaks = detect_ppg_peaks(w.samples[a:b], w.rate_hz)
    hr = heart_rate_bpm(peaks, w.rate_hz) if len(peaks) >= 2 else float("nan")
    return float(hr) if np.isfinite(hr) else None


def judged_span(k0: int, k1: int, n: int, rate_hz: float, margin_s: float = QUALITY_MARGIN_S) -> tuple[int, int]:
    """`[a, b)`: emitted samples `[k0, k1)` of an `n`-sample series at `rate_hz` +- `margin_s`, widened back to at
    least `operators.processing.quality.MIN_GOOD_S` where the series holds that much (`quality_span` for a source
    window; the same rule judges a translator's output, so an output span a grid sample short of MIN_GOOD_S, e.g.
    62.5 Hz in and 100 Hz out, is not graded too short)."""
    m = int(round(margin_s * rate_hz))
    a, b = max(0, k0 - m), min(n, k1 + m)
    return max(0, min(a, b - int(round(Q.MIN_GOOD_S * rate_hz)))), b


class Pipeline:
    """Chunks of many beds in (`push`), one batched translator call and its results out (`process`).

    Parameters
    ----------
    config : PipelineConfig
        What to compute.
    translator : Translator
        Called once per `process` with every window collected; its `name` (or `name_for(task)`) is the model tag.
    clock : callable() -> float
        Monotonic seconds, for idle flush and eviction (tests pass a fake).
    context_provider : callable(bed) -> PairedContext or None, optional
        The patient context of a bed (offline `--context`); default: built per bed from its own ECG and PPG.
    resume_from : callable(bed, signal, seq, start_ns) -> int or None, optional
        Where the output of a stream whose first chunk here is (seq, start_ns) is known complete, in ns (the worker's
        persisted flush points, `stream.progress.FlushPoints.resume_from`); None, or no callable: the mid-stream rule.
    """

    def __init__(self, config: PipelineConfig, translator: Translator, *,
                 clock: Callable[[], float] = time.monotonic, context_provider: Callable[[str], PairedContext | None] | None = None,
                 resume_from: Callable[[str, str, int, int], int | None] | None = None):
        self.config = config
        self.translator = translator
        self.model = getattr(translator, "name", type(translator).__name__)
        # the model tag of each task's outputs (a per-task translator, operators.translator.TaskRouter, names each)
        name_for = getattr(translator, "name_for", None)
        self.model_for = {t: (name_for(t) if name_for else self.model) for t in (PPG2ECG, SR)}
        self.clock = clock
        self._streams: dict[tuple[str, str], _Stream] = {}
        # Beds pushed or flushed since the last process(): only their streams can release tokens there (what decides
        # a release, the stream's windows, its input's end and its bed's context, changes only with them).
        self._touched: set[str] = set()
        self._jobs: list[_Job] = []
        self._events: list[PipelineEvent] = []
        self._rejected: list[Rejected] = []
        self._immediate: list = []  # tokens with nothing to emit (unrouted signal, empty chunk)
        self._context_input = ContextOnlyInput(config.ack_lag_s)  # chunks that only feed a bed's patient context
        self._demographics: dict[str, tuple[float | None, str | None]] = {}  # bed -> (age in years, sex)
        self._seq: dict[tuple[str, str], int] = {}
        self._bed_seen: dict[str, float] = {}  # bed -> clock() of its last chunk, any signal
        # Beds this pipeline evicted after emitting all they sent: a stream of theirs that comes back starts anew
        # (with its head), not as a mid-stream resume (operators.state.windowing), whatever its seq.
        self._evicted: set[str] = set()
        self._resume_from = resume_from
        self._flushed: list[FlushPoint] = []  # flush points since the last process(), for BatchResult.flushed
        self._contexts = _BedContexts(config.context_s) if context_provider is None else None
        self._context_provider = context_provider

    # ------------------------------------------------------------------ routing
    def routes(self, signal: str, rate_hz: float) -> list[tuple[str, float]]:
        """The tasks windows of a signal go to.

        Parameters
        ----------
        signal : str
            Input signal name.
        rate_hz : float
            Its sample rate, Hz.

        Returns
        -------
        list of (str, float)
            (task, target rate in Hz) pairs; empty when the signal only feeds the patient context.
        """
        c = self.config
        out: list[tuple[str, float]] = []
        slow = rate_hz < c.sr_below_hz
        if signal == PPG and PPG2ECG in c.tasks:
            rate = c.ppg2ecg_rate_hz or (c.sr_target_hz if slow else rate_hz)
            out.append((PPG2ECG, float(rate)))
        if SR in c.tasks and slow and (super_resolvable(signal) if c.sr_signals is None else signal in c.sr_signals):
            out.append((SR, float(c.sr_target_hz)))
        return out

    # ------------------------------------------------------------------ input
    def push(self, chunk, token: Hashable | None = None) -> PushOutcome:
        """Buffer one chunk.

        Parameters
        ----------
        chunk : stream.wire.Chunk
            Input samples of one bed and signal; its age and sex update the bed's demographics.
        token : hashable, optional
            Comes back in a later `BatchResult.completed` once every sample of the chunk has been emitted (or in
            `.rejected`, for a duplicate or out-of-order chunk).

        Returns
        -------
        PushOutcome
            Whether the chunk was taken, and whether its stream stepped back in time with it.
        """
        bed, sig = chunk.bed_id, chunk.signal
        self._bed_seen[bed] = self.clock()
        self._touched.add(bed)
        if chunk.age is not None or chunk.sex is not None:
            self._demographics[bed] = (chunk.age, chunk.sex)
        if not self.routes(sig, chunk.rate_hz):
            # Nothing to produce from this signal (e.g. a 125 Hz lead II only feeds the context). No windower judges
            # it: the context store takes it as it comes (its own rules ignore an overlap, restart on a far step back).
            if self._contexts is not None:
                self._contexts.add(bed, sig, chunk)
            if token is None:
                return PushOutcome(True)
            held = self.config.hold_unrouted or (self._contexts is not None and self._contexts.keeps(sig))
            if held and len(chunk.samples):
                end = int(grid_ns(chunk.start_ns, chunk.rate_hz, len(chunk.samples)))
                self._context_input.hold(bed, end, token, self.clock())
            else:
                self._immediate.append(token)
            return PushOutcome(True)
        st = self._stream(bed, sig, chunk)
        if chunk.units:
            st.units = chunk.units
        st.last_push = self.clock()
        segment, expected = st.windower.segment, st.windower.expected_next_ns
        res = st.windower.push(chunk.start_ns, chunk.rate_hz, chunk.samples, seq=chunk.seq)
        w = st.windower
        if segment < 0 and w.resumed:
            st.taken_until_ns = w.emitted_until_ns
        if segment < 0 and w.flushed_until_ns is not None and not w.resumed:
            # Started at a flush point (stream.progress): the old owner's flush reported R-peaks up to there.
            st.rpeak_segment, st.rpeak_until_ns = w.segment, max(w.flushed_until_ns, w.segment_start_ns)
        start = w.segment_start_ns
        stepped_back = segment >= 0 and w.segment != segment and start < expected
        if w.segment != segment and st.pending:
            # A new segment (gap, clock step, rate change): a reader resuming after the pending chunks starts at
            # it, and must find its head computed, so they wait for that too. After a step back the old segment
            # (flushed whole by this push) lies after it: its chunks are done where the new segment starts.
            st.pending = deque([(start, start, tok) if stepped_back else (end, max(key, start), tok)
                                for end, key, tok in st.pending])
        self._take(st, res.windows, res.events)
        if stepped_back:  # the done mark follows the stream back onto the new segment's time line
            st.done_until_ns = max([start] + [x.emit_end_ns for x in res.windows if x.segment == w.segment])
        if not res.accepted:
            ev = next((e for e in res.events if e.kind in ("duplicate", "out_of_order")), None)
            if token is not None:
                self._rejected.append(Rejected(token, ev.kind if ev else "rejected", ev.detail if ev else ""))
            return PushOutcome(False)
        if self._contexts is not None:
            # Exactly the chunks the windower took: a refused one (a replay, an early chunk before a resync) never
            # decides a context its windows do not come from.
            self._contexts.add(bed, sig, chunk, stepped_back)
        st.flushed = False
        if token is not None:
            if len(chunk.samples) == 0:
                self._immediate.append(token)
            else:
                end = st.windower.expected_next_ns
                st.pending.append((end, end, token))
        return PushOutcome(True, stepped_back)

    def flush_idle(self, now: float | None = None) -> int:
        """Flush every stream silent for `idle_flush_s` and forget beds silent for `bed_evict_s`.

        Parameters
        ----------
        now : float, optional
            `clock()` seconds (default: now).

        Returns
        -------
        int
            How many streams were flushed.
        """
        now = self.clock() if now is None else now
        n = 0
        for st in self._streams.values():
            if not st.flushed and now - st.last_push >= self.config.idle_flush_s:
                self._flush(st)
                n += 1
        self._context_input.release_idle(now, self.config.idle_flush_s)
        self._evict(now)
        return n

    def _evict(self, now: float) -> int:
        """Forget every bed silent for `bed_evict_s` whose streams are flushed and released (an idle bed keeps
        its window overlap and patient context, ~60 KB, otherwise for ever). A bed that returns starts anew, as it
        would after any gap that long; only a duplicate of a chunk from before its eviction is no longer caught."""
        if not self.config.bed_evict_s:
            return 0
        old = {b for b, seen in self._bed_seen.items() if now - seen >= self.config.bed_evict_s}
        if not old:
            return 0
        busy = {j.stream.bed for j in self._jobs} | {st.bed for st in self._streams.values()
                                                     if st.bed in old and (not st.flushed or st.pending)}
        old -= busy
        for key in [k for k in self._streams if k[0] in old]:
            del self._streams[key]
        for key in [k for k in self._seq if k[0] in old]:
            del self._seq[key]
        self._evicted |= old
        for bed in old:
            del self._bed_seen[bed]
            self._demographics.pop(bed, None)
            if self._contexts is not None:
                self._contexts.drop(bed)
        return len(old)

    def flush_all(self) -> None:
        """End of input: emit every buffered tail (offline mode, tests)."""
        for st in self._streams.values():
            if not st.flushed:
                self._flush(st)
        self._context_input.release_all()

    def reset(self) -> list:
        """Forget all buffered state (after a partition rebalance the input is re-consumed from the
        committed offsets). Returns the tokens that were still pending."""
        tokens = [t for st in self._streams.values() for _, _, t in st.pending]
        tokens += self._context_input.reset()
        self._streams.clear()
        self._touched.clear()
        self._bed_seen.clear()
        self._evicted.clear()  # after a rebalance only flush points say who emitted what: continuations resume
        self._flushed.clear()
        self._jobs.clear()
        self._events.clear()
        self._rejected.clear()
        self._immediate.clear()
        if self._contexts is not None:
            self._contexts = _BedContexts(self.config.context_s)
        return tokens

    def active_beds(self, now: float | None = None) -> int:
        """Beds with routed input within the last `idle_flush_s`.

        Parameters
        ----------
        now : float, optional
            `clock()` seconds (default: now).
        """
        now = self.clock() if now is None else now
        return len({st.bed for st in self._streams.values() if now - st.last_push < self.config.idle_flush_s})

    # ------------------------------------------------------------------ processing
    def process(self) -> BatchResult:
        """Translate every window collected since the last call in ONE translator call."""
        jobs, self._jobs = self._jobs, []
        emitted = self._immediate + self._context_input.emitted(self._ppg_taken_until_ns)
        result = BatchResult(events=self._events, rejected=self._rejected,
                             completed=self._immediate, emitted=emitted, flushed=self._flushed)
        self._events, self._rejected, self._immediate, self._flushed = [], [], [], []
        if jobs:
            # An unusable source is not translated: its span is withheld (never a flat line, never invented beats).
            live = [j for j in jobs if j.quality is None or j.quality.usable]
            requests = [self._request(j) for j in live]
            started = time.monotonic()
            outs = self.translator.translate(requests) if requests else []
            result = replace(result, model_s=time.monotonic() - started, window_tasks=[j.task for j in live],
                             n_windows=len(jobs))
            if len(outs) != len(requests):
                raise RuntimeError(f"translator {self.model} returned {len(outs)} results for {len(requests)} requests")
            # In window order: a withheld window advances its stream's R-peak reporting range before the next
            # window of that stream reports (a batch can hold both).
            translated = {id(j): (req, y) for j, req, y in zip(live, requests, outs)}
            for job in jobs:
                if id(job) in translated:
                    req, y = translated[id(job)]
                    self._emit(job, req, np.asarray(y, dtype=np.float32), result)
                else:
                    self._withhold(job, result)
        # Release tokens only now: their windows have been translated into `result`.
        lag_ns = int(round(self.config.ack_lag_s * 1e9))
        touched, self._touched = self._touched, set()
        self._context_input.release_due(self._context_needed_from, touched)
        result.completed.extend(self._context_input.completed())
        for st in self._streams.values():
            if st.done_until_ns is None or st.bed not in touched:
                continue
            while st.n_emitted < len(st.pending) and st.pending[st.n_emitted][0] <= st.done_until_ns:
                if st.taken_until_ns is None or st.pending[st.n_emitted][0] > st.taken_until_ns:
                    result.emitted.append(st.pending[st.n_emitted][2])
                st.n_emitted += 1
            limit = st.done_until_ns
            if not st.flushed:
                limit = min(limit, st.windower.expected_next_ns - lag_ns, self._context_needed_from(st.bed))
            # in push order, a chunk's end and resume point never decrease: the head stops at the first one not done
            while st.pending and st.n_emitted and st.pending[0][0] <= st.done_until_ns and st.pending[0][1] <= limit:
                result.completed.append(st.pending.popleft()[2])
                st.n_emitted -= 1
        return result

    # ------------------------------------------------------------------ internals
    def _ppg_taken_until_ns(self, bed: str) -> int | None:
        """End of `bed`'s resumed PLETH stream's re-read head (ns; None: not resumed, or no PLETH stream)."""
        ppg = self._streams.get((bed, PPG))
        return None if ppg is None else ppg.taken_until_ns

    def _context_needed_from(self, bed: str) -> int | float:
        """Where the input a new owner must re-read to rebuild `bed`'s patient context begins (ns; inf: nowhere).

        Only in the worker's resume mode (`resume_history_s` > 0): its commit rule keeps that input uncommitted."""
        if not self.config.resume_history_s or self._contexts is None:
            return float("inf")
        t = self._contexts.resume_from_ns(bed)
        return float("inf") if t is None else t

    def _stream(self, bed: str, sig: str, first) -> _Stream:
        key = (bed, sig)
        st = self._streams.get(key)
        if st is None:
            # A stream this pipeline evicted starts anew; one another process may have read is resumed, from its
            # flush point where one is known (stream.progress).
            fresh = bed in self._evicted
            known = None
            if not fresh and self._resume_from is not None:
                known = self._resume_from(bed, sig, int(first.seq), int(first.start_ns))
            # PPG->ECG output at t depends on the pulse that arrives ~0.6 s later: hold each window's
            # newest samples back as look-ahead instead of making the model guess at the edge. Applied
            # to every stream, so a signal's windows do not depend on which tasks are enabled (the
            # offline mode runs one task at a time and must match the worker exactly).
            st = _Stream(bed, sig, SlidingWindower(self.config.window_s, self.config.hop_s,
                                                   lookahead_s=self.config.lookahead_s,
                                                   resume_mid_stream=not fresh, flushed_until_ns=known,
                                                   resume_history_s=self.config.resume_history_s))
            self._streams[key] = st
        return st

    def _flush(self, st: _Stream) -> None:
        self._touched.add(st.bed)
        res = st.windower.flush()
        self._take(st, res.windows, res.events)
        st.flushed = True
        if st.windower.last_seq is not None:  # its output is complete up to here, whoever reads the stream next
            self._flushed.append(FlushPoint(st.bed, st.signal, st.windower.expected_next_ns, st.windower.last_seq))

    def _take(self, st: _Stream, windows: Iterable[Window], events: Iterable[StreamEvent]) -> None:
        for ev in events:
            self._events.append(PipelineEvent.stream_anomaly(ev.kind, st.bed, st.signal, ev.start_ns, ev.end_ns,
                                                             ev.detail))
            if ev.kind == "short_segment_dropped":  # reported, so its samples count as handled
                st.done_until_ns = max(st.done_until_ns or ev.end_ns, ev.end_ns)
        taken_until = st.windower.emitted_until_ns  # a resumed segment's head counts as emitted (by its earlier reader)
        if taken_until is not None:
            st.done_until_ns = max(st.done_until_ns or taken_until, taken_until)
        for w in windows:
            routes = self.routes(st.signal, w.rate_hz)
            q = None
            if routes and self.config.quality:
                a, b = quality_span(w)
                q = Q.assess(w.samples[a:b], w.rate_hz, Q.kind_of(st.signal))
                if not q.usable:
                    self._events.append(self._unusable_event(SOURCE_UNUSABLE, st, w, q, st.signal,
                                                             [self._topic_signal(st, t) for t, _ in routes]))
            for task, rate in routes:
                self._jobs.append(_Job(st, w, task, rate, q))
            st.done_until_ns = max(st.done_until_ns or w.emit_end_ns, w.emit_end_ns)

    def _request(self, job: _Job) -> TranslationRequest:
        st, w = job.stream, job.window
        age, sex = self._demographics.get(st.bed, (None, None))
        ctx = None
        if job.task == PPG2ECG:
            ctx = self._context_provider(st.bed) if self._context_provider else self._contexts.get(st.bed, w.start_ns)
        elif self._context_provider and is_ecg_signal(st.signal):
            # ECG SR with a given full-rate context (offline --context). Not from the stream's own per-bed
            # memory: a bed sending lead II at 25 Hz has no full-rate ECG there, only an upsampled one.
            ctx = self._context_provider(st.bed)
        return TranslationRequest(task=job.task, source=w.samples, source_rate=w.rate_hz, target_rate=job.target_rate,
                                  source_signal=st.signal, age=age, sex=sex, context=ctx,
                                  meta={"bed": st.bed, "start_ns": w.start_ns})

    @staticmethod
    def _topic_signal(st: _Stream, task: str) -> str:
        return SYNTH_ECG if task == PPG2ECG else st.signal + SR_SUFFIX

    @staticmethod
    def _unusable_event(kind: str, st: _Stream, w: Window, q: Q.SignalQuality, judged: str,
                        outputs: list[str]) -> PipelineEvent:
        """`source_unusable` / `output_unusable`: the span [time_ns, end_ns) of these outputs is withheld."""
        return PipelineEvent.unusable(kind, st.bed, judged, w._ts(w.emit_from), w.emit_end_ns, reason=q.reason,
                                      quality=round(q.score, 4), quality_flag=q.cls, outputs=outputs,
                                      window_start_ns=w.start_ns)

    def _series(self, job: _Job, times: np.ndarray, values: np.ndarray, q: Q.SignalQuality | None,
                confidence: float | None, context_used: bool, usable: bool, seq: int = 0,
                req: TranslationRequest | None = None) -> OutputSeries:
        st = job.stream
        kind = "synth" if job.task == PPG2ECG else "sr"
        model = self.model_for[job.task] if req is None else method_of(self.translator, req, self.model_for[job.task])
        return OutputSeries(bed=st.bed, source_signal=st.signal, kind=kind, model=model,
                            rate_hz=job.target_rate, times_ns=times, values=values, seq=seq,
                            units=st.units if kind == "sr" else "mV",
                            quality=None if q is None else round(q.score, 4), quality_flag="" if q is None else q.cls,
                            reason="" if q is None else q.reason, confidence=confidence, context_used=context_used,
                            usable=usable)

    def _withhold(self, job: _Job, result: BatchResult) -> None:
        """NaN over the span an unusable source window would have emitted (offline rows; never published)."""
        w = job.window
        n_out = TranslationRequest(job.task, w.samples, w.rate_hz, job.target_rate).n_out
        times, y, k0, k1 = w.on_output_grid(job.target_rate, np.full(n_out, np.nan, dtype=np.float32))
        if k0 < k1:
            result.withheld.append(self._series(job, times[k0:k1], y[k0:k1].astype(np.float32), job.quality, 0.0,
                                                False, usable=False))
        if job.task == PPG2ECG and self.config.rpeaks:
            self._skip_rpeaks(job.stream, w, times, k1, job.target_rate)

    def _emit(self, job: _Job, req: TranslationRequest, y: np.ndarray, result: BatchResult) -> None:
        st, w = job.stream, job.window
        n_out = req.n_out
        if len(y) != n_out:
            raise RuntimeError(f"translator {self.model} returned {len(y)} samples for {job.task}, expected {n_out}")
        times, y, k0, k1 = w.on_output_grid(job.target_rate, y)
        kind = "synth" if job.task == PPG2ECG else "sr"
        q = job.quality
        conf = None
        if self.config.quality:
            # The output's own quality over the same span, by the checks that hold for any signal (kind "other"): a
            # translator that failed (flat, NaN, saturated) is caught here; its waveform's shape is the model's.
            a, b = judged_span(k0, k1, len(y), job.target_rate)
            qo = Q.assess(y[a:b], job.target_rate, Q.OTHER)
            if not qo.usable:
                out_signal = self._topic_signal(st, job.task)
                result.events.append(self._unusable_event(OUTPUT_UNUSABLE, st, w, qo, out_signal, [out_signal]))
                job.quality = qo
                self._withhold(job, result)
                return
            conf = Q.confidence(job.task, q, req.context is not None)  # from the source: what the model saw
            if q is None or qo.score < q.score:
                q = qo
        ev = None
        if kind == "synth" and self.config.rpeaks:
            ev = self._rpeak_event(st, w, y, times, k0, k1, job.target_rate, q, conf)
            if ev is not None and conf is not None:
                conf = ev.fields.get("confidence", conf)  # 0 where its beats are not the source's pulses: one definition
        if k0 < k1:
            key = (st.bed, self._topic_signal(st, job.task))
            seq = self._seq.get(key, 0)
            self._seq[key] = seq + 1
            result.outputs.append(self._series(job, times[k0:k1], y[k0:k1], q, conf, req.context is not None,
                                               usable=True, seq=seq, req=req))
        if ev is not None:
            result.events.append(ev)

    def _rpeak_range(self, st: _Stream, w: Window, times: np.ndarray, k1: int, n_out: int, rate: float) -> tuple[int, int]:
        """[lo, hi) ns this window reports R-peaks for: from the last reported end to its end - edge margin (to its
        very end when it is a flush), so peaks cut by a window edge are found in the next window, where they are
        interior. A withheld window takes its range too, so no later window reports peaks in it."""
        if st.rpeak_segment != w.segment or st.rpeak_until_ns is None:
            # A segment's first window: from its start, or, resumed mid-stream, from where the window before it on
            # the grid stopped (the same rule, applied to that window's span), so every peak has one reporting window.
            if w.emit_from == 0:
                start = int(times[0])
            else:
                k0 = int(np.searchsorted(times, w._ts(w.emit_from)))
                start = int(times[k0])
                if w.kind == "full":  # the previous window ended where this one's emitted part starts, + look-ahead
                    prev_end = w._ts(w.emit_from + len(w.samples) - w.emit_stop)
                    start = min(start, prev_end - (int(times[1] - times[0]) if len(times) > 1 else 0)
                                - int(RPEAK_EDGE_S * 1e9))
            st.rpeak_segment, st.rpeak_until_ns = w.segment, start
        lo = st.rpeak_until_ns
        if w.kind == "flush":
            hi = w.output_end_ns(rate, n_out)  # to its very end
        else:  # not past what this window emitted (look-ahead samples are the next window's to report)
            hi = int(times[-1]) - int(RPEAK_EDGE_S * 1e9)
            if k1 < len(times):
                hi = min(hi, int(times[k1]))
        return lo, hi

    def _skip_rpeaks(self, st: _Stream, w: Window, times: np.ndarray, k1: int, rate: float) -> None:
        if len(times):
            lo, hi = self._rpeak_range(st, w, times, k1, len(times), rate)
            st.rpeak_until_ns = max(lo, hi)

    def _rpeak_event(self, st: _Stream, w: Window, y: np.ndarray, times: np.ndarray, k0: int, k1: int, rate: float,
                     quality: Q.SignalQuality | None = None, confidence: float | None = None) -> PipelineEvent | None:
        """R-peaks of the synthesized ECG over this window's reporting range (`_rpeak_range`); the heart rate is
        from the peaks of the span its quality was judged on (emitted part +- QUALITY_MARGIN_S), so it describes
        the same samples as the quality it carries."""
        from operators.processing.rpeaks import detect_rpeaks, heart_rate_bpm

        if len(y) == 0 or k0 >= len(y):
            return None
        lo, hi = self._rpeak_range(st, w, times, k1, len(y), rate)
        if hi <= lo:
            return None
        idx = np.asarray(detect_rpeaks(y, rate), dtype=np.int64)
        peaks = times[idx] if len(idx) else np.zeros(0, dtype=np.int64)
        sel = peaks[(peaks >= lo) & (peaks < hi)]
        st.rpeak_until_ns = hi
        if self.config.quality:
            m = int(round(QUALITY_MARGIN_S * rate))
            idx = idx[(idx >= k0 - m) & (idx < k1 + m)]
        hr = heart_rate_bpm(idx, rate) if len(idx) >= 2 else None
        hr = None if hr is None or not np.isfinite(hr) else float(hr)
        if hr is not None and quality is not None:
            pulse = source_pulse_rate_bpm(w)
            if pulse is not None and abs(hr - pulse) > HR_PULSE_TOL * pulse:
                hr = None  # the synthesized beats are not the pulses they were drawn from
                confidence = 0.0 if confidence is not None else None
        if quality is not None and (quality.cls != Q.GOOD or (confidence is not None and confidence < HR_MIN_CONFIDENCE)):
            hr = None  # a heart rate only from a good, confident window (the others still report their peaks, flagged)
        judged = {} if quality is None else {"quality": round(quality.score, 4), "quality_flag": quality.cls,
                                             "confidence": confidence}
        return PipelineEvent.rpeaks(st.bed, int(times[k0]), peaks_ns=sel, hr_bpm=hr, model=self.model_for[PPG2ECG],
                                    window_start_ns=w.start_ns, until_ns=hi, **judged)


class _BedContexts:
    """Per-bed paired ECG+PPG context (operators.state.context.ContextStore), built from the stream.

    The context of a window is the store's decision at the last point of its `context_s / 2` grid at or before the
    window's start: a function of the input before that point, not of batch timing (see ContextStore)."""

    def __init__(self, context_s: float):
        self.context_s = context_s
        self._stores: dict[str, Any] = {}

    def drop(self, bed: str) -> None:
        self._stores.pop(bed, None)

    def keeps(self, signal: str) -> bool:
        """Whether `signal`'s chunks feed the bed's context."""
        return self.context_s > 0 and signal in (ECG, PPG)

    def add(self, bed: str, signal: str, chunk, stepped_back: bool = False) -> None:
        """Feed a chunk of the bed's `signal` (one its windower accepted, if it has one); `stepped_back`: its
        stream's clock went back with it (`PushOutcome.stepped_back`), so the store restarts that signal there."""
        if not self.keeps(signal):
            return
        try:
            from operators.state.context import ContextStore
        except ImportError as exc:  # pragma: no cover - operators.state.context ships with the package
            log.warning("patient context disabled: %s", exc)
            self.context_s = 0
            return

        st = self._stores.get(bed)
        if st is None:
            # keep 3x the context length so the best segment can be chosen, not just the latest; a selection
            # costs milliseconds: one per context_s / 2 of stream time. The last good context stands in for
            # CONTEXT_FALLBACK_S at most (through a lead-off): the input it was found in stays uncommitted meanwhile
            st = self._stores[bed] = ContextStore(self.context_s, keep_s=CONTEXT_KEEP * self.context_s,
                                                  refresh_s=self.context_s / 2, fallback_s=CONTEXT_FALLBACK_S)
        if stepped_back:
            st.step_back(signal, chunk.start_ns)
        samples = in_millivolts(chunk.samples, chunk.units) if signal == ECG else chunk.samples
        st.push(signal, chunk.start_ns, chunk.rate_hz, samples)

    def get(self, bed: str, at_ns: int) -> PairedContext | None:
        """Context for a window starting at `at_ns` (ns)."""
        st = self._stores.get(bed)
        return None if st is None else st.get(at_ns)

    def resume_from_ns(self, bed: str) -> int | None:
        """Where the input that decides the bed's contexts not yet decided begins (ns), None without a store."""
        st = self._stores.get(bed)
        return None if st is None else st.resume_from_ns()
