"""Alarm verification in the stream, broker-free: alarm and verdict messages, a bounded per-bed signal
ring, the judge that decides when an alarm has its data, and `wavebridge alarm-check` for recordings.

Messages (JSON; schemas `docs/alarm.schema.json`, `docs/verdict.schema.json`, described in docs/alarms.md):
an alarm names `bed_id` (spelled as in waveform chunks), `alarm_type`, `onset_ns` and the monitor's
`alarm_id`; a verdict repeats them and adds `verdict` (`true` / `false` / `uncertain`), `confidence`,
`keep_alarm` and the per-channel evidence. The Faust side is `stream/alarm_agent.py`; the algorithm is
`operators/processing/alarms.py`.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from operators.processing import alarms as core
from stream import wire
from stream.logthrottle import held_note

log = logging.getLogger("wavebridge.alarms")

VERSION = 1
NS = 1_000_000_000
ALARM_VERDICT = "alarm_verdict"  # InfluxDB measurement
ALARM_FIELDS = ("bed_id", "alarm_type", "onset_ns", "alarm_id")
BAD_ALARM = "bad_alarm"  # dead-letter reason of an alarm message that cannot be judged
# `judged_early` of a verdict judged when the worker stopped, with the data at hand rather than left to a next worker
# that may be minutes away or never come (docs/alarms.md, "Stopping and restarting")
JUDGED_EARLY_SHUTDOWN = "shutdown"


class AlarmMessageError(ValueError):
    """An alarm message that cannot be judged; the text says why (one line)."""


@dataclass(frozen=True)
class AlarmMessage:
    """One monitor alarm to judge (docs/alarm.schema.json)."""

    bed_id: str
    alarm_type: str  # one of operators.processing.alarms.ALARM_TYPES
    onset_ns: int
    alarm_id: str
    mode: str | None = None  # None: the worker's WAVEBRIDGE_ALARM_MODE
    source: str | None = None


def parse_alarm(data: bytes | str | dict) -> AlarmMessage:
    """Decode and validate one alarm message (the rules of docs/alarm.schema.json).

    Parameters
    ----------
    data : bytes, str or dict
        The message value, or its decoded JSON object.

    Raises
    ------
    AlarmMessageError
        Naming the first problem, in at most a few hundred characters (a rejected value is cut: its text goes
        to the log and a dead letter's header, and may be megabytes long).
    """
    if isinstance(data, (bytes, str)):
        try:
            obj = json.loads(data, parse_constant=wire.refuse_json_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise AlarmMessageError(f"not JSON: {_bounded(exc)}") from None
        except RecursionError:  # e.g. 100,000 nested '[', as stream.wire refuses them
            raise AlarmMessageError("not JSON: nesting too deep") from None
    else:
        obj = data
    if not isinstance(obj, dict):
        raise AlarmMessageError("an alarm is a JSON object")
    missing = [k for k in ALARM_FIELDS if k not in obj]
    if missing:
        raise AlarmMessageError(f"missing field(s): {', '.join(missing)}")
    bed, atype, onset, aid = obj["bed_id"], obj["alarm_type"], obj["onset_ns"], obj["alarm_id"]
    if not isinstance(bed, str) or not wire.BED_ID_PATTERN.fullmatch(bed):
        raise AlarmMessageError(f"bed_id {_shown(bed)} is not a bed id as waveform chunks spell it "
                                f"({wire.BED_ID_PATTERN.pattern})")
    if atype not in core.ALARM_TYPES:
        raise AlarmMessageError(f"alarm_type {_shown(atype)} is not one of {', '.join(core.ALARM_TYPES)}")
    if isinstance(onset, bool) or not isinstance(onset, int) or not 0 <= onset <= wire.MAX_START_NS:
        raise AlarmMessageError(f"onset_ns {_shown(onset)} is not an integer ns timestamp")
    if not isinstance(aid, str) or not 1 <= len(aid) <= 128:
        raise AlarmMessageError("alarm_id must be a string of 1-128 characters")
    mode = obj.get("mode")
    if mode is not None and mode not in core.MODES:
        raise AlarmMessageError(f"mode {_shown(mode)} is not one of {', '.join(core.MODES)}")
    source = obj.get("source")
    if source is not None and not isinstance(source, str):
        raise AlarmMessageError("source must be a string")
    return AlarmMessage(bed, atype, int(onset), aid, mode, source)


def key_problem(alarm: AlarmMessage, key: bytes | None) -> str | None:
    """Why an alarm's Kafka message key may route it away from its bed's data, or None when the key is its bed_id.

    The alarms topic is co-partitioned with the waveforms topic by bed id: with several workers, an alarm keyed
    otherwise lands on a partition whose worker may hold none of the bed's data, and comes back `uncertain`.

    Parameters
    ----------
    alarm : AlarmMessage
        The parsed alarm.
    key : bytes or None
        Its message key.
    """
    if not key:
        return "no message key"
    if key != alarm.bed_id.encode():
        return f"message key {_shown(key)} is not its bed_id"
    return None


def warn_if_not_keyed_by_bed(alarm: AlarmMessage, message, throttle) -> None:
    """Log a WARNING, at most one per `throttle` interval, when an alarm's message key is not its bed_id
    (`key_problem`).

    Parameters
    ----------
    alarm : AlarmMessage
        The parsed alarm (it is judged all the same: on one worker, or by chance, it finds its data).
    message
        Its Kafka message (`key`, `topic`, `partition`, `offset`).
    throttle : stream.logthrottle.Throttle
        The worker's log throttle (`WAVEBRIDGE_LOG_REPEAT_S`).
    """
    problem = key_problem(alarm, message.key)
    if problem is None:
        return
    ok, held = throttle.allow(("alarm_key",))
    if ok:
        log.warning("alarm %s (bed %s) at %s[%s]@%s: %s; producers must key alarms by bed_id, or with several "
                    "workers it may be judged without the bed's data (uncertain)%s", _shown(alarm.alarm_id),
                    alarm.bed_id, message.topic, message.partition, message.offset, problem,
                    held_note(held))


def _shown(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters (`_cut`)."""
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with the full length when cut (a rejected value may be megabytes long)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def encode_alarm(alarm: AlarmMessage) -> bytes:
    """The JSON message value of `alarm` (`parse_alarm`'s inverse).

    Parameters
    ----------
    alarm : AlarmMessage
        The alarm; absent mode and source are left out.
    """
    d = {"bed_id": alarm.bed_id, "alarm_type": alarm.alarm_type, "onset_ns": alarm.onset_ns, "alarm_id": alarm.alarm_id}
    if alarm.mode is not None:
        d["mode"] = alarm.mode
    if alarm.source is not None:
        d["source"] = alarm.source
    return json.dumps(d).encode()


def verdict_message(alarm: AlarmMessage, verdict: core.AlarmVerdict, wait_s: float, data_until_ns: int | None,
                    decided_ns: int | None = None, judged_early: str | None = None) -> dict:
    """The verdicts topic's JSON object (docs/verdict.schema.json).

    Parameters
    ----------
    alarm : AlarmMessage
        The alarm judged.
    verdict : operators.processing.alarms.AlarmVerdict
        The verifier's answer.
    wait_s : float
        Seconds of data after the onset a retrospective verdict waited for (0 in real time).
    data_until_ns : int or None
        End of the bed's newest data when judged, ns since the epoch.
    decided_ns : int, optional
        When it was decided, ns since the epoch (default: now).
    judged_early : str, optional
        Why it was judged before its data reached what its mode waits for (`JUDGED_EARLY_SHUTDOWN`): the
        message then carries `judged_early` and its reason says so (absent from a verdict judged on time).
    """
    d = verdict.to_dict()
    reason = d["reason"] if judged_early is None else f"judged early ({judged_early}): {d['reason']}"
    early = {} if judged_early is None else {"judged_early": judged_early}
    return {"version": VERSION, "alarm_id": alarm.alarm_id, "bed_id": alarm.bed_id, "alarm_type": alarm.alarm_type,
            "onset_ns": alarm.onset_ns, "mode": verdict.mode, "wait_s": wait_s if verdict.mode == "retrospective" else 0.0,
            "verdict": d["verdict"], "confidence": d["confidence"], "keep_alarm": verdict.keep_alarm,
            "false_score": d["false_score"], "threshold": d["threshold"], "reason": reason,
            "window_s": d["window_s"], "data_until_ns": data_until_ns,
            "decided_ns": time.time_ns() if decided_ns is None else decided_ns, "channels": d["channels"], **early}


def verdict_lines(msg: dict) -> list[str]:
    """InfluxDB line protocol: one `alarm_verdict` point at the alarm's onset (docs/influx-schema.md).

    Parameters
    ----------
    msg : dict
        A verdict message (`verdict_message`).
    """
    from stream.sinks.lineprotocol import field_set, tag_set

    tags = tag_set({"bed": msg["bed_id"], "alarm_type": msg["alarm_type"], "mode": msg["mode"], "verdict": msg["verdict"]})
    fields = field_set({"alarm_id": msg["alarm_id"], "confidence": msg["confidence"], "false_score": msg["false_score"],
                      "keep_alarm": bool(msg["keep_alarm"]), "n_channels": len(msg["channels"]), "reason": msg["reason"],
                      "decided_ns": int(msg["decided_ns"])})
    return [f"{ALARM_VERDICT},{tags} {fields} {int(msg['onset_ns'])}"]


def uncertain_verdict(alarm_type: str, mode: str, config: core.VerifierConfig, wait_s: float,
                      reason: str) -> core.AlarmVerdict:
    """The `uncertain` verdict (keep the alarm), without evidence, of an alarm that could not be judged.

    Parameters
    ----------
    alarm_type, mode : str
        What was being verified.
    config : operators.processing.alarms.VerifierConfig
        For the threshold and window the verdict reports.
    wait_s : float
        Seconds waited after the onset (0 in real time).
    reason : str
        Why, one line (bounded to 200 characters).
    """
    post = min(wait_s, config.retro_post_s) if mode == "retrospective" else 0.0
    return core.AlarmVerdict(alarm_type, mode, "uncertain", 0.0, 0.0, config.threshold(alarm_type),
                             (-config.pre_s, post), (), _bounded(reason))


def _bounded(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters (`_cut`)."""
    return _cut(" ".join(str(text).split()), limit)


# ---------------------------------------------------------------- per-bed signal ring


def _end_ns(start_ns: int, rate_hz: float, n: int) -> int:
    """End of a chunk of `n` samples from `start_ns` at `rate_hz`, ns."""
    return start_ns + int(round(n * NS / rate_hz))


class SignalRing:
    """Bounded memory of each bed's recent raw samples, for alarm verification.

    Kept apart from the pipeline's windowers (stream/pipeline.py, operators/state/windowing.py) on purpose: those
    hold one translation window of the signals being translated and release samples as soon as their output
    is emitted (that is what bounds acknowledgement latency), while a verdict needs every channel a bed sends
    (each ECG lead, PLETH, ABP) for the learning span and analysis window before the onset, plus the
    retrospective wait after it: about two minutes. Bounds: per (bed, signal) the newest `keep_s` of samples at
    its rate plus one chunk, in arrival order, whatever the stamps say (a bound by time would let one chunk stamped
    far ahead wipe the history behind it, or stop the pruning), and `max_beds` beds.
    A bed not heard for `keep_s` (by the clock, not the stamps) is forgotten once room is needed: nothing it sent
    is still within a verdict's reach. When `max_beds` beds have all been heard within `keep_s`, a new bed is
    refused (`add` returns False; its alarms are judged `uncertain`, `refused`) rather than one of them dropped:
    dropping the least recently heard of many beds that take turns would empty every bed's history, one chunk
    after the other, and leave no alarm with its data.
    A signal's newest sample is the latest end among its chunks that start no later than the end of its newest
    chunk by seq (the one received last unless a re-delivered or late one came after it): a lone chunk stamped
    ahead (a clock glitch) does not count once the stream goes on at its true stamps. Thread-safe: the worker's
    compute thread adds chunks while the alarm thread reads.
    """

    def __init__(self, keep_s: float = 120.0, max_beds: int = 1024, clock: Callable[[], float] = time.monotonic):
        if not keep_s > 0 or max_beds < 1:
            raise ValueError("keep_s must be > 0 and max_beds >= 1")
        self.keep_s = float(keep_s)
        self.max_beds = int(max_beds)
        self._clock = clock
        self._beds: OrderedDict[str, dict[str, deque]] = OrderedDict()  # least recently heard first
        self._heard: dict[str, float] = {}  # bed -> clock when its last chunk came
        # bed -> signal -> [samples held, end of its newest chunk by seq, that chunk's seq]
        self._held: dict[str, dict[str, list]] = {}
        # beds refused while the ring was full, least recently refused first (at most max_beds remembered)
        self._refused: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, chunk: wire.Chunk, stepped_back: bool = False) -> bool:
        """Keep `chunk`; drop the signal's oldest chunks beyond `keep_s` of samples.

        Parameters
        ----------
        chunk : stream.wire.Chunk
            Decoded input the pipeline accepted (the worker's compute thread calls this for each such chunk).
        stepped_back : bool
            The chunk's stream went back in time with it (`stream.pipeline.PushOutcome`: a clock step or resync):
            the signal's chunks starting at or after its stamp are from the time line it left, and go.

        Returns
        -------
        bool
            False when the chunk's bed is new and the ring holds `max_beds` beds heard within `keep_s` (class doc).
        """
        if len(chunk.samples) == 0:
            return True
        with self._lock:
            now = self._clock()
            bed = self._beds.get(chunk.bed_id)
            if bed is None:
                while self._beds and now - self._heard[next(iter(self._beds))] > self.keep_s:
                    self._forget(next(iter(self._beds)))
                if len(self._beds) >= self.max_beds:
                    self._refused[chunk.bed_id] = None
                    self._refused.move_to_end(chunk.bed_id)
                    if len(self._refused) > self.max_beds:
                        self._refused.popitem(last=False)
                    return False
                self._refused.pop(chunk.bed_id, None)
                bed = self._beds[chunk.bed_id] = {}
                self._held[chunk.bed_id] = {}
            self._beds.move_to_end(chunk.bed_id)
            self._heard[chunk.bed_id] = now
            start_ns, rate_hz = int(chunk.start_ns), float(chunk.rate_hz)
            q = bed.setdefault(chunk.signal, deque())
            held = self._held[chunk.bed_id].setdefault(chunk.signal, [0, 0, None])
            if stepped_back:
                kept = [c for c in q if c[0] < start_ns]
                q.clear()
                q.extend(kept)
                held[0] = sum(len(x) for _, _, x in q)
            x = np.asarray(chunk.samples, dtype=np.float32)
            q.append((start_ns, rate_hz, x))
            held[0] += len(x)
            seq = chunk.seq
            # newer by seq, a restart, or past the newest chunk's end (a restart whose seq 0 never came: dead-lettered)
            if (held[2] is None or seq is None or seq > held[2] or seq == 0 or stepped_back
                    or start_ns >= held[1]):
                held[1], held[2] = _end_ns(start_ns, rate_hz, len(x)), seq
            keep_n = int(math.ceil(self.keep_s * rate_hz))
            while len(q) > 1 and held[0] - len(q[0][2]) > keep_n:
                held[0] -= len(q.popleft()[2])
            return True

    def _forget(self, bed: str) -> None:
        del self._beds[bed]
        del self._heard[bed]
        del self._held[bed]

    def refused(self, bed: str) -> bool:
        """Whether `bed`'s latest chunk was refused because the ring was full (it holds nothing of the bed).

        Parameters
        ----------
        bed : str
            Bed id.
        """
        with self._lock:
            return bed in self._refused

    @staticmethod
    def _newest(q, last_end: int) -> int:
        """End of a signal's newest sample: the latest end among its chunks starting by its newest chunk's end (the
        latest of all once that chunk has been pruned)."""
        ends = [(s, _end_ns(s, r, len(x))) for s, r, x in q]
        return max((e for s, e in ends if s <= last_end), default=max(e for _, e in ends))

    def beds(self) -> list[str]:
        """Bed ids held, least recently heard first."""
        with self._lock:
            return list(self._beds)

    def newest_ns(self, bed: str) -> int | None:
        """End (ns since the epoch) of the newest sample of any signal of `bed` (class doc: a chunk stamped ahead of
        the chunk received after it does not count); None if the bed has sent nothing.

        Parameters
        ----------
        bed : str
            Bed id.
        """
        with self._lock:
            sig = self._beds.get(bed)
            if not sig:
                return None
            return max(self._newest(q, self._held[bed][name][1]) for name, q in sig.items())

    def samples(self) -> int:
        """Samples held, all beds and signals."""
        with self._lock:
            return sum(len(x) for sig in self._beds.values() for q in sig.values() for _, _, x in q)

    def snapshot(self, bed: str, t0_ns: int, t1_ns: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Each signal of `bed` on its own rate's grid from t0_ns (sample 0) up to t1_ns, NaN where nothing
        arrived. A signal whose rate changed keeps only the chunks at its newest rate.

        Parameters
        ----------
        bed : str
            Bed id.
        t0_ns, t1_ns : int
            Span, ns since the epoch.

        Returns
        -------
        (dict of str to ndarray, dict of str to float)
            Samples (float32) and rate in Hz per signal; signals with no finite sample in the span left out.
        """
        with self._lock:
            chunks = {name: list(q) for name, q in self._beds.get(bed, {}).items()}
        signals, rates = {}, {}
        for name, cs in chunks.items():
            if not cs:
                continue
            rate = cs[-1][1]
            n = int(math.floor((t1_ns - t0_ns) * rate / NS))
            if n <= 0:
                continue
            out = np.full(n, np.nan, dtype=np.float32)
            for start, r, x in cs:
                if r != rate:
                    continue
                i0 = int(round((start - t0_ns) * rate / NS))
                a, b = max(0, i0), min(n, i0 + len(x))
                if b > a:
                    out[a:b] = x[a - i0:b - i0]
            if np.isfinite(out).any():
                signals[name], rates[name] = out, rate
        return signals, rates


# ---------------------------------------------------------------- judge


@dataclass
class _Pending:
    alarm: AlarmMessage
    mode: str
    need_ns: int  # data wanted up to here
    deadline: float  # monotonic: judge with what is there by then
    token: object = None  # the caller's handle on the message it came in (the agent acknowledges it once judged)


@dataclass
class AlarmJudge:
    """Holds alarms until their bed's data has arrived (or a deadline passed), then judges them.

    Real-time mode answers as soon as the bed's signals reach the onset (at most `grace_s` after the alarm
    arrived); retrospective mode waits until they reach `wait_s` past the onset (at most `wait_s + grace_s`)."""

    ring: SignalRing
    mode: str = "realtime"
    wait_s: float = 30.0
    grace_s: float = 2.0
    translator: object | None = None  # for II_SYNTH; None: no synthesized ECG
    config: core.VerifierConfig = field(default_factory=core.VerifierConfig)
    _pending: list = field(default_factory=list)

    def submit(self, alarm: AlarmMessage, now: float | None = None, token: object = None) -> None:
        """Queue `alarm` until its data is there or its deadline passes.

        Parameters
        ----------
        alarm : AlarmMessage
            The alarm; its own mode, if any, overrides the judge's.
        now : float, optional
            `time.monotonic()` seconds (default: now).
        token : object, optional
            Kept with the alarm and handed back in `due` / `drain` (`.token`): the message to acknowledge.
        """
        mode = alarm.mode or self.mode
        wait = self.wait_s if mode == "retrospective" else 0.0
        now = time.monotonic() if now is None else now
        self._pending.append(_Pending(alarm, mode, alarm.onset_ns + int(wait * NS), now + wait + self.grace_s, token))

    @property
    def pending(self) -> int:
        """Alarms queued."""
        return len(self._pending)

    def due(self, now: float | None = None) -> list[_Pending]:
        """Pending alarms ready to judge (removed from the queue).

        Parameters
        ----------
        now : float, optional
            `time.monotonic()` seconds (default: now).
        """
        now = time.monotonic() if now is None else now
        ready, keep = [], []
        for p in self._pending:
            newest = self.ring.newest_ns(p.alarm.bed_id)
            (ready if (newest is not None and newest >= p.need_ns) or now >= p.deadline else keep).append(p)
        self._pending = keep
        return ready

    def drain(self) -> list[_Pending]:
        """Every pending alarm, due or not (removed from the queue): to judge them all now (`judge(p, early=...)`)."""
        out, self._pending = self._pending, []
        return out

    def judge(self, p: _Pending, early: str | None = None) -> dict:
        """The verdict message for one alarm, from the ring (runs the verifier: call off the event loop).

        An unexpected error while judging gives an `uncertain` verdict (keep the alarm) whose reason names the
        error, logged once with its traceback: one bed's odd data must not cost the other beds their verdicts
        (the worker would crash and lose them).

        Parameters
        ----------
        p : pending alarm
            One returned by `due` or `drain`.
        early : str, optional
            Judged before it was due, and why (`JUDGED_EARLY_SHUTDOWN`): marked in the message (`verdict_message`).
        """
        cfg = self.config
        a = p.alarm
        wait = self.wait_s if p.mode == "retrospective" else 0.0
        newest = None
        try:
            newest = self.ring.newest_ns(a.bed_id)
            if newest is None and self.ring.refused(a.bed_id):
                return verdict_message(a, uncertain_verdict(a.alarm_type, p.mode, cfg, wait, (
                    f"refused: this worker's alarm ring holds {self.ring.max_beds} beds, all heard in the last "
                    f"{self.ring.keep_s:g} s (WAVEBRIDGE_ALARM_MAX_BEDS)")), wait, newest, judged_early=early)
            t0 = a.onset_ns - int((cfg.pre_s + cfg.learn_s) * NS)
            signals, rates = self.ring.snapshot(a.bed_id, t0, p.need_ns)
            onset_s = (a.onset_ns - t0) / NS
            if self.translator is not None and "synth" in cfg.channels:
                signals, rates = core.add_synthesized_ecg(signals, rates, self.translator, onset_s, mode=p.mode,
                                                          wait_s=wait, config=cfg)
            v = core.verify_alarm(a.alarm_type, signals, rates, onset_s, mode=p.mode, wait_s=wait, config=cfg)
        except Exception as exc:  # noqa: BLE001 - any failure of one alarm's judging: see the docstring
            log.error("alarm %s (%s, bed %s) could not be judged; verdict uncertain", a.alarm_id, a.alarm_type,
                      a.bed_id, exc_info=True)
            v = uncertain_verdict(a.alarm_type, p.mode, cfg, wait, f"judging failed: {type(exc).__name__}: {exc}")
        return verdict_message(a, v, wait, newest, judged_early=early)


# ---------------------------------------------------------------- end to end (the demo)


def publish_and_await_verdict(bootstrap: str, alarm: AlarmMessage, alarms_topic: str, verdicts_topic: str,
                              timeout_s: float = 60.0) -> dict | None:
    """Publish `alarm` (key = its bed) and return its verdict from the verdicts topic; None after `timeout_s`.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers, `host:port[,...]`.
    alarm : AlarmMessage
        The alarm to publish.
    alarms_topic, verdicts_topic : str
        Topic names.
    timeout_s : float
        Seconds to wait for the verdict.
    """
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(verdicts_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=f"wavebridge-verdict-reader-{time.time_ns()}",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            producer.send(alarms_topic, key=alarm.bed_id.encode(), value=encode_alarm(alarm)).get(timeout=30)
        finally:
            producer.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for m in batch:
                    msg = json.loads(m.value)
                    if msg.get("alarm_id") == alarm.alarm_id:
                        return msg
        return None
    finally:
        consumer.close()


def describe_verdict(msg: dict) -> str:
    """Two lines for a person: the verdict and the channels behind it.

    Parameters
    ----------
    msg : dict
        A verdict message.
    """
    chans = ", ".join(f"{c['name']} {c['quality']}" + (f" {c['hr_bpm']:.0f} bpm" if c.get("hr_bpm") else "")
                      for c in msg["channels"]) or "none"
    keep = "yes" if msg["keep_alarm"] else "no"
    if msg["keep_alarm"] and msg["verdict"] == "false":
        keep = "yes, lower its priority: only a person silences this type"
    return (f"{msg['alarm_type']} alarm {msg['alarm_id']} on {msg['bed_id']}: verdict {msg['verdict']} "
            f"(confidence {msg['confidence']:.2f}, keep alarm: {keep}; {msg['reason']})\n"
            f"  evidence: {chans}")


# ---------------------------------------------------------------- wavebridge alarm-check
