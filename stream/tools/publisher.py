"""Publishes recordings onto a Kafka topic as live bedside monitors, paced like real ones (`wavebridge replay`).

What is sent is the pure chunker's output (stream.tools.chunker); this module adds the pacing, the encoding and
the producer, and fails loudly: a send the broker refused ends the replay with a `ReplayError`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from operators.io.records import Recording, read_recording
from operators import vocab
from operators.vocab import TOPIC_WAVEFORMS
from stream import wire
from stream.tools.chunker import (check_chunk_s, check_chunks, check_plan, expected_chunk_count, has_samples,
                                  iter_all_chunks, plan_beds, select_signals, signal_length)
from stream.wire import Chunk

FORMATS = ("binary", "json")


class ReplayError(RuntimeError):
    """A send failed (broker unreachable, message refused); the message says after how many chunks."""


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a replay; `stats` counts the chunks handed to the producer before it, flushed.

    A KeyboardInterrupt still, so a caller that does not look for it stops as it would have; `wavebridge replay`
    catches it to say how much was sent and where a new replay of the same bed ids must start (a worker
    dead-letters chunks that step back in time)."""

    def __init__(self, stats: "ReplayStats"):
        super().__init__()
        self.stats = stats


@dataclass(frozen=True)
class ReplayOptions:
    """What a replay sends, where and how fast. Checked when made (ValueError).

    Attributes
    ----------
    topic : str
        Kafka topic written.
    beds : int, optional
        Number of beds, the recordings cycled over them; default one per recording.
    bed_prefix : str
        Bed ids are `bed_prefix-001` ...
    speed : float
        1 = real time, 10 = ten times faster, 0 = as fast as possible.
    chunk_s : float
        Seconds of signal per message.
    fmt : str
        Wire encoding, "binary" or "json" (docs/wire-format.md).
    signals : tuple of str, optional
        Signals sent; default whichever of `chunker.DEFAULT_SIGNALS` each record has.
    resample : mapping of str to float
        Signal -> rate in Hz it is sent at (e.g. {"PLETH": 25}).
    start_ns : int, optional
        Timestamp of the first sample, ns since the epoch; default: now.
    duration_s : float, optional
        Send only the first `duration_s` seconds of each record.
    progress : bool
        Show a progress bar.
    """

    topic: str = TOPIC_WAVEFORMS
    beds: int | None = None
    bed_prefix: str = "bed"
    speed: float = 1.0
    chunk_s: float = 1.0
    fmt: str = "binary"
    signals: tuple[str, ...] | None = None
    resample: Mapping[str, float] = field(default_factory=dict)
    start_ns: int | None = None
    duration_s: float | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.signals is not None:
            object.__setattr__(self, "signals", tuple(self.signals))
        object.__setattr__(self, "resample", dict(self.resample or {}))
        if self.fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.fmt!r}")
        if self.speed < 0 or not math.isfinite(self.speed):
            raise ValueError(f"speed must be >= 0, got {self.speed}")
        check_chunk_s(self.chunk_s)
        for name, rate in self.resample.items():  # 1e9 Hz went on to allocate hundreds of GiB (MemoryError)
            if not (math.isfinite(rate) and wire.MIN_RATE_HZ <= rate <= wire.MAX_RATE_HZ):
                raise ValueError(f"resample rate for {name} must be in the wire format's [{wire.MIN_RATE_HZ:g}, "
                                 f"{wire.MAX_RATE_HZ:g}] Hz, got {rate:g}")
        if self.start_ns is not None and not (0 <= self.start_ns < 2 ** 63):
            raise ValueError(f"start_ns must be in [0, 2^63) ns since the epoch, got {self.start_ns}")


@dataclass
class ReplayStats:
    """What a replay sent (counts), and how well it kept pace (seconds)."""

    chunks: int = 0
    samples: int = 0
    bytes: int = 0
    beds: int = 0
    gaps: int = 0  # extra chunk boundaries caused by NaN runs
    first_ns: int = 0  # earliest sample stamped
    last_end_ns: int = 0  # end of the latest chunk sent
    unsent_s: float = 0.0  # signal-seconds not sent (NaN runs the wire would refuse), summed over beds and signals
    stream_samples: dict[tuple[str, str], int] = field(default_factory=dict)  # (bed, signal) -> samples sent
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0  # worst lateness of a send versus its real-time due time
    failed: int = 0
    per_signal: dict[str, int] = field(default_factory=dict)  # chunks per signal
    handed_end_ns: int = 0  # end of the latest chunk handed to the producer, counted or not (an interrupted send)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def count(self, chunk: Chunk, payload: bytes, last_end: dict[tuple[str, str], int]) -> None:
        """Count one sent chunk; `last_end` (bed, signal) -> end ns of its previous chunk, updated here."""
        key = (chunk.bed_id, chunk.signal)
        if key in last_end and chunk.start_ns != last_end[key]:
            self.gaps += 1
        last_end[key] = chunk.end_ns()
        self.first_ns = chunk.start_ns if not self.chunks else min(self.first_ns, chunk.start_ns)
        self.last_end_ns = max(self.last_end_ns, chunk.end_ns())
        self.chunks += 1
        self.samples += len(chunk.samples)
        self.stream_samples[key] = self.stream_samples.get(key, 0) + len(chunk.samples)
        self.bytes += len(payload)
        self.per_signal[chunk.signal] = self.per_signal.get(chunk.signal, 0) + 1


def replay(recordings: Sequence[Recording | str | Path], producer_or_bootstrap, options: ReplayOptions = ReplayOptions(),
           *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           producer_kwargs: Mapping | None = None) -> ReplayStats:
    """Publish recordings as live monitors.

    Parameters
    ----------
    recordings : sequence of Recording, str or Path
        Recordings, or files `read_recording` reads.
    producer_or_bootstrap : str or producer
        `host:port` (a KafkaProducer with acks=all is created and closed here) or an existing producer-like object
        with `send(topic, key=, value=)` and `flush()`.
    options : ReplayOptions
        What to send, where and how fast.
    clock, sleep : callable
        Monotonic seconds and the wait; replaced in tests.
    producer_kwargs : mapping, optional
        Extra KafkaProducer options (with a `host:port` only).

    Returns
    -------
    ReplayStats

    Raises
    ------
    ValueError
        Before anything is sent: a plan the records cannot fill, a signal not allowed on the wire, a chunk length
        the wire would refuse.
    ReplayError
        A send failed.
    ReplayInterrupted
        Ctrl-C during the replay: its `stats` count what was sent until then (flushed; `failed` > 0 when a delivery
        failed or a second Ctrl-C cut the flush short).
    """
    check_plan(len(recordings), options.beds, options.duration_s)
    recs = [r if isinstance(r, Recording) else read_recording(r) for r in recordings]
    plan = check_replay(recs, options)
    t0_ns = time.time_ns() if options.start_ns is None else int(options.start_ns)
    # built (recordings resampled, every signal's chunk length checked) before connecting to Kafka
    chunks = iter_all_chunks(plan, options.chunk_s, t0_ns, options.signals, options.resample, options.duration_s)
    total = expected_chunk_count(plan, options.chunk_s, options.signals, options.resample, options.duration_s)

    own = isinstance(producer_or_bootstrap, str)
    producer = _make_producer(producer_or_bootstrap, **(producer_kwargs or {})) if own else producer_or_bootstrap
    stats = ReplayStats(beds=len(plan))
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="chunk", disable=not options.progress, desc="replay", dynamic_ncols=True,
                   mininterval=0.5)
        # stamped from now: the pacer's start is the moment t0 was taken, so that a chunk leaves when its last sample
        # is due, not after the resampling and the connection (they made every send about 0.5 s late)
        behind_s = (time.time_ns() - t0_ns) / 1e9 if options.start_ns is None else 0.0
        pacer = _Pacer(t0_ns, options.speed, clock, sleep, behind_s)
        errors: list[BaseException] = []  # a send's failure arrives in its errback, during the flush too
        interrupted = False
        try:
            _send_all(chunks, producer, options, pacer, stats, bar, errors)
        except KeyboardInterrupt:
            interrupted = True  # what was handed to the producer is still flushed and counted below
        try:
            producer.flush(timeout=60) if own else producer.flush()
        except KeyboardInterrupt as exc:  # a second Ctrl-C: the last chunks' delivery is not confirmed
            interrupted = True
            errors.append(exc)
        except Exception as exc:  # kafka-python raises KafkaTimeoutError when flush cannot finish
            errors.append(exc)
        stats.elapsed_s = pacer.elapsed_s()
        if not errors and not interrupted:  # chunks of NaN were counted in advance and never sent
            bar.total = stats.chunks
            bar.refresh()
        bar.close()
    finally:
        if own:
            producer.close(timeout=10)
    stats.failed = len(errors)
    if interrupted:  # what was not sent is the rest of the replay, not NaN runs: `unsent_s` stays 0
        raise ReplayInterrupted(stats)
    for bed, rec in plan:
        for sig in select_signals(rec, options.signals):
            rate, n = signal_length(rec, sig, options.resample, options.duration_s)
            stats.unsent_s += max(0, n - stats.stream_samples.get((bed, sig), 0)) / rate
    if errors:
        raise ReplayError(f"{len(errors)} send(s) to topic {options.topic!r} failed after {stats.chunks} chunks; "
                          f"first error: {errors[0]!r}")
    return stats


def check_replay(recordings: Sequence[Recording], options: ReplayOptions) -> list[tuple[str, Recording]]:
    """The beds of a replay (`chunker.plan_beds`), once everything a broker is not needed for is checked.

    `wavebridge replay` calls it before it connects: a record's problem was reported only after the topic had been
    created, and with an unreachable broker not at all (the user was told to fix the broker first).

    Parameters
    ----------
    recordings : sequence of Recording
        The recordings, read.
    options : ReplayOptions
        What a replay sends.

    Returns
    -------
    list of (str, Recording)
        Bed id and the recording it sends.

    Raises
    ------
    ValueError
        A bed id the wire format refuses (`bed_prefix`), a selected signal missing or not allowed on the wire, a
        signal to resample missing, a chunk length the wire would refuse at a signal's (resampled) rate.
    """
    plan = plan_beds(recordings, options.beds, options.bed_prefix)
    last = plan[-1][0]  # bed ids differ only in their number: the longest is the last
    if not wire.BED_ID_PATTERN.fullmatch(last):
        raise ValueError(f"bed id {last[:80]!r} (the bed prefix and a number) must be 1-{wire.MAX_BED_ID_LEN} "
                         f"characters of [A-Za-z0-9_.:-]")
    _check_wire_signals(plan, options.signals)
    for rec in {id(r): r for r in recordings}.values():
        check_chunks(rec, options.chunk_s, options.signals, options.resample, options.duration_s)
        empty = _empty_signals(rec, options)
        # a signal asked for by name, or every one a record has, must send something; of the default ones an
        # empty channel is only left out (`empty_channels` names it)
        if empty and (options.signals is not None or len(empty) == len(select_signals(rec, options.signals))):
            cut = "" if options.duration_s is None else f" in the first {options.duration_s:g} s"
            raise ValueError(f"{rec.name}/{empty[0]} has no finite sample{cut}"
                             f"{' once resampled' if empty[0] in options.resample else ''}: nothing to replay")
    return plan


def empty_channels(recordings: Sequence[Recording], options: ReplayOptions) -> list[str]:
    """`record/signal` of the default channels `check_replay` lets a replay leave out for having no sample to
    send."""
    return [f"{rec.name}/{s}" for rec in {id(r): r for r in recordings}.values() for s in _empty_signals(rec, options)]


def _empty_signals(rec: Recording, options: ReplayOptions) -> list[str]:
    """The signals of `rec` this replay would select but could send no sample of (`chunker.has_samples`)."""
    return [s for s in select_signals(rec, options.signals)
            if not has_samples(rec, s, options.resample, options.duration_s)]


def _check_wire_signals(plan: Sequence[tuple[str, Recording]], signals: Sequence[str] | None) -> None:
    """Fail before sending anything when a selected signal is not an input signal of the wire format."""
    for _, rec in plan:
        for name in select_signals(rec, signals):
            if not wire.is_input_signal(name):
                raise ValueError(f"signal {name} of record {rec.name} is not allowed on the wire "
                                 f"(allowed: {', '.join(sorted(vocab.WIRE_SIGNALS))})")


@dataclass
class _Pacer:
    """Holds each chunk back until a monitor would send it: once its last sample exists, at
    (end - t0) / speed seconds after the start (speed 0: never waits)."""

    t0_ns: int
    speed: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    behind_s: float = 0.0  # how long ago (wall) the replay's clock started: t0 was stamped before the pacer existed

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.wall0 = self.started - max(0.0, self.behind_s)

    def wait_for(self, chunk: Chunk) -> float:
        """Sleep until `chunk` is due; returns how late it already was, s (0 when on time)."""
        if self.speed <= 0:
            return 0.0
        wait = self.wall0 + (chunk.end_ns() - self.t0_ns) / 1e9 / self.speed - self.clock()
        if wait > 0:
            self.sleep(wait)
            return 0.0
        return -wait

    def elapsed_s(self) -> float:
        """Seconds since the pacer started (not since the stamps' origin: the set-up before it is not sending)."""
        return self.clock() - self.started


def _send_all(chunks: Iterator[Chunk], producer, options: ReplayOptions, pacer: _Pacer, stats: ReplayStats,
              bar, errors: list[BaseException]) -> None:
    """Send every chunk when `pacer` says, counting into `stats`; stops at the first failed send, whose error (and
    each failed delivery's, from the errbacks, until the caller's flush) goes to `errors`."""
    encode = wire.encode_binary if options.fmt == "binary" else wire.encode_json
    last_end: dict[tuple[str, str], int] = {}
    for chunk in chunks:
        stats.max_lag_s = max(stats.max_lag_s, pacer.wait_for(chunk))
        payload = encode(chunk)
        stats.handed_end_ns = max(stats.handed_end_ns, chunk.end_ns())
        try:
            fut = producer.send(options.topic, key=wire.message_key(chunk), value=payload)
        except Exception as exc:  # e.g. MessageSizeTooLargeError, KafkaTimeoutError (no metadata)
            errors.append(exc)
            break
        if hasattr(fut, "add_errback"):
            fut.add_errback(errors.append)
        stats.count(chunk, payload, last_end)
        bar.update(1)
        if errors:
            break  # fail fast: the broker is rejecting messages


def _make_producer(bootstrap: str, **kwargs):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    opts = dict(acks="all", linger_ms=5, retries=5, max_in_flight_requests_per_connection=1,
                request_timeout_ms=30000, client_id="wavebridge-replay")
    opts.update(kwargs)
    try:
        return KafkaProducer(bootstrap_servers=bootstrap, **opts)
    except KafkaError as exc:
        raise ReplayError(f"cannot connect to Kafka at {bootstrap}: {exc!r}") from exc
