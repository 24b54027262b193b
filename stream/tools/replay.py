"""Replay archived recordings onto the input topic as live bedside monitors.

`iter_chunks` is the pure chunker (also used by the offline mode, so both see identical chunks);
`replay` paces and publishes many beds at once; `cli` is `wavebridge replay`.

Chunking rules: chunks are cut on a fixed grid of `round(chunk_s * rate)` samples per signal;
timestamps advance exactly with the sample count (`start_ns + round(k * 1e9 / rate)` for absolute
sample index k); seq starts at 0 per (bed, signal). NaN runs in a record are not sent: the chunk
stream is split there, so the receiver sees a gap.
"""
from __future__ import annotations

import argparse
import heapq
import math
import sys
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from operators.io.records import Recording, canonical_name, read_recording
from stream import wire
from stream.tools.cli import ArgumentParser, one_line
from stream.config import ConfigError, parse_host_port
from stream.topics import WAVEFORMS
from stream.wire import Chunk

DEFAULT_SIGNALS = ("II", "PLETH")
FORMATS = ("binary", "json")


class ReplayError(RuntimeError):
    pass


@dataclass
class ReplayStats:
    chunks: int = 0
    samples: int = 0
    bytes: int = 0
    beds: int = 0
    gaps: int = 0  # extra chunk boundaries caused by NaN runs
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0  # worst lateness of a send versus its real-time due time
    failed: int = 0
    per_signal: dict[str, int] = field(default_factory=dict)  # chunks per signal

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed_s if self.elapsed_s > 0 else float("inf")


# ------------------------------------------------------------------ pure chunking


def resample_recording(rec: Recording, targets: dict[str, float]) -> Recording:
    """Polyphase-resample the named signals (e.g. {"PLETH": 25}) so a 125 Hz record acts as a 25 Hz monitor.

    NaN runs are bridged for filtering, then output samples that fall inside a run are NaN again.
    """
    from scipy.signal import resample_poly

    if not targets:
        return rec
    signals, rates = dict(rec.signals), dict(rec.rates)
    for name, target in targets.items():
        name = canonical_name(name)
        if name not in signals:
            raise ValueError(f"cannot resample {name}: record {rec.name} has {', '.join(signals)}")
        src_rate = rates[name]
        if not (target > 0 and math.isfinite(target)):
            raise ValueError(f"resample target for {name} must be > 0 Hz, got {target}")
        if math.isclose(src_rate, target):
            continue
        ratio = Fraction(float(target) / float(src_rate)).limit_denominator(1000)
        x = signals[name].astype(np.float64)
        bad = ~np.isfinite(x)
        if bad.all():
            raise ValueError(f"{rec.name}/{name} has no finite samples to resample")
        if bad.any():
            idx = np.arange(x.size)
            x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
        y = resample_poly(x, ratio.numerator, ratio.denominator)
        n_out = int(round(x.size * target / src_rate))
        y = y[:n_out]
        if bad.any():
            # An output sample is invalid when the source samples around its time are.
            src_pos = np.arange(y.size) * (src_rate / target)
            lo = np.clip(np.floor(src_pos).astype(int), 0, x.size - 1)
            hi = np.clip(np.ceil(src_pos).astype(int), 0, x.size - 1)
            y[bad[lo] | bad[hi]] = np.nan
        signals[name] = y.astype(np.float32)
        rates[name] = float(target)
    return replace(rec, signals=signals, rates=rates)


def _finite_runs(x: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges of finite samples."""
    ok = np.isfinite(x)
    if ok.all():
        return [(0, x.size)]
    edges = np.diff(np.concatenate(([0], ok.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def chunk_bounds(n: int, rate: float, chunk_s: float) -> np.ndarray:
    """Sample indices where chunks start (plus n at the end).

    Chunk j covers samples [round(j * chunk_s * rate), round((j + 1) * chunk_s * rate)), so chunks
    stay aligned to multiples of chunk_s even when chunk_s * rate is not an integer (62.5 -> 62/63).
    """
    per = max(1.0, chunk_s * rate)
    bounds = np.round(np.arange(0, n / per + 1) * per).astype(np.int64)
    bounds = np.unique(np.clip(bounds, 0, n))
    return bounds if bounds[-1] == n else np.append(bounds, n)


def iter_signal_chunks(rec: Recording, signal: str, bed_id: str, chunk_s: float, start_ns: int,
                       duration_s: float | None = None) -> Iterator[Chunk]:
    """Chunks of one signal in time order; seq from 0."""
    rate = float(rec.rates[signal])
    x = rec.signals[signal]
    if duration_s is not None:
        x = x[: int(round(duration_s * rate))]
    bounds = chunk_bounds(x.size, rate, chunk_s)
    seq = 0
    for g0, g1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        part = x[g0:g1]
        for a, b in _finite_runs(part):
            k = g0 + a  # absolute sample index
            yield Chunk(bed_id=bed_id, signal=signal, rate_hz=rate, start_ns=start_ns + int(round(k * 1e9 / rate)),
                        seq=seq, samples=np.ascontiguousarray(part[a:b], dtype=np.float32), units=rec.units.get(signal, ""),
                        age=rec.age, sex=rec.sex)
            seq += 1


def iter_chunks(rec: Recording, bed_id: str, chunk_s: float = 1.0, start_ns: int = 0,
                signals: Sequence[str] | None = None, resample: dict[str, float] | None = None,
                duration_s: float | None = None) -> Iterator[Chunk]:
    """All chunks of one bed, interleaved across signals in order of their end time (when a monitor sends them)."""
    check_chunk_s(chunk_s)
    rec = resample_recording(rec, resample or {})
    names = select_signals(rec, signals)
    for s in names:  # before the first chunk, not when the oversized one comes up
        rate, n = _signal_length(rec, s, None, duration_s)
        check_chunk_s(chunk_s, rate, f"{rec.name}/{s}", n)
    streams = [iter_signal_chunks(rec, s, bed_id, chunk_s, start_ns, duration_s) for s in names]
    return heapq.merge(*streams, key=_due_key)


def _due_key(c: Chunk) -> int:
    return c.end_ns()


def select_signals(rec: Recording, signals: Sequence[str] | None) -> list[str]:
    if signals is not None:
        names = [canonical_name(s) for s in signals]
        missing = [s for s in names if s not in rec.signals]
        if missing:
            raise ValueError(f"record {rec.name} has no channel {', '.join(missing)} (has: {', '.join(rec.signals)})")
        return names
    names = [s for s in DEFAULT_SIGNALS if s in rec.signals]
    if not names:
        raise ValueError(f"record {rec.name} has neither of {DEFAULT_SIGNALS} (has: {', '.join(rec.signals)}); "
                         "pick signals explicitly")
    return names


def check_chunk_s(chunk_s: float, rate_hz: float | None = None, signal: str = "", n_samples: int | None = None,
                  name: str = "chunk_s") -> None:
    """Refuse a chunk length the wire format would reject mid-run (ValueError); `name` is how the caller's
    user spells the option. With `rate_hz`, also the signal's rate and the samples per chunk (`n_samples`: the
    signal's length, since a signal shorter than one chunk is sent whole)."""
    if not (0 < chunk_s <= wire.MAX_DURATION_S):
        raise ValueError(f"{name} must be in (0, {wire.MAX_DURATION_S:g}] s (the wire format's longest chunk), "
                         f"got {chunk_s:g}")
    if rate_hz is None:
        return
    if not (wire.MIN_RATE_HZ <= rate_hz <= wire.MAX_RATE_HZ):
        raise ValueError(f"{signal} is sampled at {rate_hz!r} Hz, outside the wire format's "
                         f"[{wire.MIN_RATE_HZ:g}, {wire.MAX_RATE_HZ:g}] Hz")
    n = math.ceil(chunk_s * rate_hz)  # chunk_bounds rounds, so a chunk can be one sample longer than chunk_s * rate
    if n_samples is not None:
        n = min(n, n_samples)
    if n > wire.MAX_SAMPLES:
        most = math.floor(wire.MAX_SAMPLES / rate_hz * 1000) / 1000
        raise ValueError(f"{name} {chunk_s:g} at {rate_hz:g} Hz ({signal}) is {n} samples per chunk > "
                         f"{wire.MAX_SAMPLES}, the wire format's limit; use {name} <= {most:g}")
    if n / rate_hz > wire.MAX_DURATION_S:  # the rounded-up sample count can overshoot 60 s (60 s at 62.51 Hz: 3751)
        raise ValueError(f"{name} {chunk_s:g} at {rate_hz:g} Hz ({signal}) makes chunks of {n} samples = "
                         f"{n / rate_hz:.3f} s > {wire.MAX_DURATION_S:g} s, the wire format's limit; use a shorter {name}")


def _signal_length(rec: Recording, signal: str, resample: dict[str, float] | None,
                   duration_s: float | None) -> tuple[float, int]:
    """(rate, samples) of a signal as it will be replayed: after `resample` and the `duration_s` cut."""
    targets = {canonical_name(k): v for k, v in (resample or {}).items()}  # as resample_recording reads them
    rate = float(targets.get(signal, rec.rates[signal]))
    n = int(round(len(rec.signals[signal]) * rate / rec.rates[signal]))
    if duration_s is not None:
        n = min(n, int(round(duration_s * rate)))
    return rate, n


def bed_ids(n: int, prefix: str = "bed") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(1, n + 1)]


def plan_beds(recordings: Sequence[Recording], beds: int | None = None, prefix: str = "bed") -> list[tuple[str, Recording]]:
    """Map N bed ids onto the recordings, cycling through them (bed-001 ← rec 0, bed-002 ← rec 1, ...)."""
    check_plan(len(recordings), beds)
    n = len(recordings) if beds is None else beds
    return [(bed, recordings[i % len(recordings)]) for i, bed in enumerate(bed_ids(n, prefix))]


def check_plan(n_records: int, beds: int | None = None, duration_s: float | None = None) -> None:
    """Refuse (ValueError) a bed count or duration a replay cannot use; needs only the record count, so callers
    check before reading any record."""
    if n_records < 1:
        raise ValueError("no recordings to replay")
    n = n_records if beds is None else beds
    if n < 1:
        raise ValueError(f"beds must be >= 1, got {n}")
    if n < n_records:  # the records past the last bed would be read and never sent
        raise ValueError(f"{n} bed(s) for {n_records} records: each record needs a bed (beds >= records)")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s}")


def iter_all_chunks(plan: Sequence[tuple[str, Recording]], chunk_s: float, start_ns: int,
                    signals: Sequence[str] | None = None, resample: dict[str, float] | None = None,
                    duration_s: float | None = None) -> Iterator[Chunk]:
    """Chunks of all beds merged in time order."""
    resampled: dict[int, Recording] = {}  # resample each recording once, not once per bed
    streams = []
    for bed, rec in plan:
        if id(rec) not in resampled:
            resampled[id(rec)] = resample_recording(rec, resample or {})
        streams.append(iter_chunks(resampled[id(rec)], bed, chunk_s, start_ns, signals, None, duration_s))
    return heapq.merge(*streams, key=_due_key)


def expected_chunk_count(plan, chunk_s, signals=None, resample=None, duration_s=None) -> int:
    """Chunks on the fixed grid (NaN splits may add more); used for the progress bar."""
    total = 0
    for _, rec in plan:
        for s in select_signals(rec, signals):
            rate, n = _signal_length(rec, s, resample, duration_s)
            total += len(chunk_bounds(n, rate, chunk_s)) - 1
    return total


# ------------------------------------------------------------------ publishing


def replay(recordings: Sequence[Recording | str | Path], producer_or_bootstrap, topic: str = WAVEFORMS, *,
           beds: int | None = None, bed_prefix: str = "bed", speed: float = 1.0, chunk_s: float = 1.0,
           fmt: str = "binary", signals: Sequence[str] | None = None, resample: dict[str, float] | None = None,
           start_ns: int | None = None, duration_s: float | None = None, progress: bool = False,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           **producer_kwargs) -> ReplayStats:
    """Publish recordings as `beds` live monitors; returns stats. Raises ReplayError if any send fails.

    `producer_or_bootstrap` is a `host:port` string (a KafkaProducer with acks=all is created and
    closed here) or an existing producer-like object with `send(topic, key=, value=)` and `flush()`.
    `speed` 1 = real time, 10 = ten times faster, 0 = as fast as possible.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if speed < 0 or not math.isfinite(speed):
        raise ValueError(f"speed must be >= 0, got {speed}")
    check_chunk_s(chunk_s)
    check_plan(len(recordings), beds, duration_s)
    recs = [r if isinstance(r, Recording) else read_recording(r) for r in recordings]
    plan = plan_beds(recs, beds, bed_prefix)
    for _, rec in plan:  # fail before sending anything
        for name in select_signals(rec, signals):
            if not wire.is_input_signal(name):
                raise ValueError(f"signal {name} of record {rec.name} is not allowed on the wire "
                                 f"(allowed: {', '.join(sorted(wire.BASE_SIGNALS))})")
    t0_ns = time.time_ns() if start_ns is None else int(start_ns)
    encode = wire.encode_binary if fmt == "binary" else wire.encode_json
    # built (recordings resampled, every signal's chunk length checked) before connecting to Kafka
    chunks = iter_all_chunks(plan, chunk_s, t0_ns, signals, resample, duration_s)

    own = isinstance(producer_or_bootstrap, str)
    producer = _make_producer(producer_or_bootstrap, **producer_kwargs) if own else producer_or_bootstrap
    errors: list[BaseException] = []
    stats = ReplayStats(beds=len(plan))
    try:
        from tqdm import tqdm

        bar = tqdm(total=expected_chunk_count(plan, chunk_s, signals, resample, duration_s), unit="chunk",
                   disable=not progress, desc="replay", dynamic_ncols=True, mininterval=0.5)
        wall0 = clock()
        last_end: dict[tuple[str, str], int] = {}
        for chunk in chunks:
            if speed > 0:
                # A monitor sends a chunk once its last sample exists: at (end - t0) / speed.
                due = wall0 + (chunk.end_ns() - t0_ns) / 1e9 / speed
                wait = due - clock()
                if wait > 0:
                    sleep(wait)
                else:
                    stats.max_lag_s = max(stats.max_lag_s, -wait)
            payload = encode(chunk)
            try:
                fut = producer.send(topic, key=wire.message_key(chunk), value=payload)
            except Exception as exc:  # e.g. MessageSizeTooLargeError, KafkaTimeoutError (no metadata)
                errors.append(exc)
                break
            if hasattr(fut, "add_errback"):
                fut.add_errback(errors.append)
            key = (chunk.bed_id, chunk.signal)
            if key in last_end and chunk.start_ns != last_end[key]:
                stats.gaps += 1
            last_end[key] = chunk.end_ns()
            stats.chunks += 1
            stats.samples += len(chunk.samples)
            stats.bytes += len(payload)
            stats.per_signal[chunk.signal] = stats.per_signal.get(chunk.signal, 0) + 1
            bar.update(1)
            if errors:
                break  # fail fast: the broker is rejecting messages
        try:
            producer.flush(timeout=60) if own else producer.flush()
        except Exception as exc:  # kafka-python raises KafkaTimeoutError when flush cannot finish
            errors.append(exc)
        stats.elapsed_s = clock() - wall0
        bar.close()
    finally:
        if own:
            producer.close(timeout=10)
    stats.failed = len(errors)
    if errors:
        raise ReplayError(f"{len(errors)} send(s) to topic {topic!r} failed after {stats.chunks} chunks; "
                          f"first error: {errors[0]!r}")
    return stats


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


# ------------------------------------------------------------------ CLI


def _parse_resample(items: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        for part in filter(None, item.split(",")):
            name, sep, rate = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                out[canonical_name(name)] = float(rate)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--resample expects SIGNAL=HZ, e.g. PLETH=25; got {part!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="wavebridge replay",
                                description="Replay recordings (WFDB/Parquet/CSV) onto Kafka as live bedside monitors.")
    p.add_argument("records", nargs="+", metavar="RECORD", help="WFDB record (with or without .hea), .parquet or .csv")
    p.add_argument("--broker", required=True, metavar="HOST:PORT", help="Kafka bootstrap server")
    p.add_argument("--topic", default=WAVEFORMS)
    p.add_argument("--beds", type=int, default=None, help="number of beds (records are cycled); default one per record")
    p.add_argument("--bed-prefix", default="bed", help="bed ids are PREFIX-001 ... PREFIX-N")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 10 = 10x faster, 0 = as fast as possible")
    p.add_argument("--chunk-s", type=float, default=1.0, help="seconds of signal per message")
    p.add_argument("--format", choices=FORMATS, default="binary", help="wire encoding (docs/wire-format.md)")
    p.add_argument("--signals", default=None,
                   help=f"comma-separated signal names (default: whichever of {', '.join(DEFAULT_SIGNALS)} each record has)")
    p.add_argument("--resample", action="append", default=[], metavar="SIGNAL=HZ",
                   help="replay a signal at another rate, e.g. PLETH=25 (repeatable)")
    p.add_argument("--start-ns", type=int, default=None, help="timestamp of the first sample (default: now)")
    p.add_argument("--duration-s", type=float, default=None, help="replay only the first S seconds")
    p.add_argument("--rate-hz", type=float, default=None, help="sampling rate for CSV/Parquet without time_s")
    p.add_argument("--partitions", type=int, default=4, help="partitions if the topic must be created")
    p.add_argument("--no-create-topic", action="store_true", help="do not create the topic if missing")
    p.add_argument("--connect-timeout-s", type=float, default=10.0, help="give up reaching the broker after S s")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        resample = _parse_resample(args.resample)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    # None (not DEFAULT_SIGNALS): replay() then takes whichever default channels each record has.
    signals = None if args.signals is None else [s.strip() for s in args.signals.split(",") if s.strip()]
    if signals == []:
        p.error("--signals: empty (leave it out to replay whichever of II and PLETH each record has)")
    try:  # before reading records or creating the topic
        check_plan(len(args.records), args.beds, args.duration_s)
        for address in args.broker.split(","):
            parse_host_port("BROKER", address)
    except (ValueError, ConfigError) as exc:
        p.error(str(exc).replace("WAVEBRIDGE_BROKER", "--broker"))
    try:
        recs = [read_recording(r, signals, rate_hz=args.rate_hz) for r in args.records]
        if not args.no_create_topic:
            from stream.topics import ensure_topics

            ensure_topics(args.broker, [args.topic], partitions=args.partitions, timeout_s=args.connect_timeout_s)
        stats = replay(recs, args.broker, args.topic, beds=args.beds, bed_prefix=args.bed_prefix, speed=args.speed,
                       chunk_s=args.chunk_s, fmt=args.format, signals=signals, resample=resample,
                       start_ns=args.start_ns, duration_s=args.duration_s, progress=not args.no_progress,
                       bootstrap_timeout_ms=int(args.connect_timeout_s * 1000),
                       max_block_ms=int(args.connect_timeout_s * 1000))
    except (ValueError, ReplayError, OSError) as exc:
        print(f"wavebridge replay: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # kafka errors (e.g. KafkaTimeoutError from topic creation)
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            print(f"wavebridge replay: error: cannot reach Kafka at {args.broker} within {args.connect_timeout_s:g} s "
                  f"(--connect-timeout-s): {type(exc).__name__}", file=sys.stderr)
        else:
            print(f"wavebridge replay: error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"replayed {stats.chunks} chunks ({stats.samples} samples, {stats.bytes / 1e6:.2f} MB) for {stats.beds} "
          f"bed(s) to {args.topic} in {stats.elapsed_s:.1f} s ({stats.chunks_per_s:.0f} chunks/s, "
          f"{stats.gaps} gap(s), max lag {stats.max_lag_s * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
