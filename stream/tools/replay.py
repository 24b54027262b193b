"""`wavebridge replay`: recordings (WFDB/Parquet/CSV) onto Kafka as live bedside monitors.

The command line only: options checked before any record is read, records (`publisher.check_replay`) before any
topic is created or broker reached, then `stream.tools.publisher.replay` publishes what `stream.tools.chunker` cuts.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable, Sequence

from operators import vocab
from operators.io.records import canonical_name, read_recording
from operators.vocab import TOPIC_WAVEFORMS
from stream.config import ConfigError, is_topic_name, parse_host_port
from stream.tools.chunker import DEFAULT_SIGNALS, check_plan
from stream.tools.cli import ArgumentParser, one_line
from stream.tools.publisher import (FORMATS, ReplayError, ReplayInterrupted, ReplayOptions, check_replay,
                                    empty_channels, replay)


def _parse_resample(items: Iterable[str]) -> dict[str, float]:
    """`--resample` values ("PLETH=25", comma lists allowed) -> signal -> rate in Hz."""
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


# wavebridge's own topics other than the input, at their default names: chunks written there corrupt them for
# their readers (the events topic is JSON, the output topics carry outputs)
NOT_INPUT_TOPICS = {vocab.TOPIC_ECG_SYNTH: "synthesized-ECG output", vocab.TOPIC_SR: "super-resolution output",
                    vocab.TOPIC_EVENTS: "events", vocab.TOPIC_DLQ: "dead-letter", vocab.TOPIC_ALARMS: "alarms",
                    vocab.TOPIC_VERDICTS: "verdicts", vocab.TOPIC_PROGRESS: "progress"}
# --start-ns below this (about 11.6 days after the epoch) is almost surely seconds or milliseconds given by mistake
START_NS_PLAUSIBLE = 10 ** 15


def _check_topic(topic: str) -> str | None:
    """Why `topic` cannot take replayed chunks, or None."""
    if not is_topic_name(topic):
        return f"--topic {topic!r} is not a Kafka topic name (1-249 characters of [a-zA-Z0-9._-])"
    if topic in NOT_INPUT_TOPICS:
        return (f"--topic {topic} is wavebridge's {NOT_INPUT_TOPICS[topic]} topic, not an input: replay onto the "
                f"workers' WAVEBRIDGE_TOPIC_INPUT (default {TOPIC_WAVEFORMS})")
    return None


def build_parser() -> argparse.ArgumentParser:
    """The options of `wavebridge replay`."""
    p = ArgumentParser(prog="wavebridge replay",
                       description="Replay recordings (WFDB/Parquet/CSV) onto Kafka as live bedside monitors.")
    p.add_argument("records", nargs="+", metavar="RECORD", help="WFDB record (with or without .hea), .parquet or .csv")
    p.add_argument("--broker", required=True, metavar="HOST:PORT", help="Kafka bootstrap server")
    p.add_argument("--topic", default=TOPIC_WAVEFORMS)
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
    """`wavebridge replay ARGV`; returns the exit status (2: a bad option or record, found before connecting, or a
    missing topic with --no-create-topic; 1: the replay failed: broker unreachable, a send refused; 130: stopped by
    Ctrl-C, after saying what was sent)."""
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
    topic_problem = _check_topic(args.topic)
    if topic_problem:
        p.error(topic_problem)
    if args.start_ns is not None and 0 <= args.start_ns < START_NS_PLAUSIBLE:
        p.error(f"--start-ns {args.start_ns} is {args.start_ns / 1e9:g} s after 1970-01-01: give nanoseconds since the "
                f"epoch (e.g. {args.start_ns * 10 ** 9 if args.start_ns < 10 ** 11 else args.start_ns * 10 ** 6} "
                "if you meant seconds or milliseconds), or leave it out for now")
    try:  # before reading records or creating the topic
        check_plan(len(args.records), args.beds, args.duration_s)
        for address in args.broker.split(","):
            parse_host_port("BROKER", address)
    except (ValueError, ConfigError) as exc:
        p.error(str(exc).replace("WAVEBRIDGE_BROKER", "--broker"))
    try:
        options = ReplayOptions(topic=args.topic, beds=args.beds, bed_prefix=args.bed_prefix, speed=args.speed,
                                chunk_s=args.chunk_s, fmt=args.format, signals=signals, resample=resample,
                                start_ns=args.start_ns, duration_s=args.duration_s, progress=not args.no_progress)
    except ValueError as exc:
        p.error(str(exc))
    try:  # the records, and all a broker is not needed for: reported before connecting, and as the user's (2)
        tables = (".csv", ".parquet", ".pq")
        if args.rate_hz is not None and not all(str(r).lower().endswith(tables) for r in args.records):
            raise ValueError("--rate-hz is for CSV/Parquet files without a time column; a WFDB record carries its "
                             "own rate (use --resample to send it at another)")
        recs = [read_recording(r, signals, rate_hz=args.rate_hz) for r in args.records]
        check_replay(recs, options)
    except (ValueError, OSError) as exc:
        print(f"wavebridge replay: error: {one_line(exc)}", file=sys.stderr)
        return 2
    for name in empty_channels(recs, options):
        print(f"wavebridge replay: note: {name} has no finite sample to send; left out", file=sys.stderr)
    try:
        from stream.topics import ensure_topics, missing_topics

        if args.no_create_topic:
            if missing_topics(args.broker, [args.topic], timeout_s=args.connect_timeout_s):
                print(f"wavebridge replay: error: topic {args.topic} does not exist (--no-create-topic)", file=sys.stderr)
                return 2
        elif ensure_topics(args.broker, [args.topic], partitions=args.partitions, timeout_s=args.connect_timeout_s):
            print(f"wavebridge replay: note: created topic {args.topic} ({args.partitions} partitions); workers read "
                  f"the one WAVEBRIDGE_TOPIC_INPUT names (default {TOPIC_WAVEFORMS})", file=sys.stderr)
        timeout_ms = int(args.connect_timeout_s * 1000)
        interrupted = False
        try:
            stats = replay(recs, args.broker, options,
                           producer_kwargs={"bootstrap_timeout_ms": timeout_ms, "max_block_ms": timeout_ms})
        except ReplayInterrupted as stop:
            stats, interrupted = stop.stats, True
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
    print(f"{'interrupted after' if interrupted else 'replayed'} {stats.chunks} chunks ({stats.samples} "
          f"samples, {stats.bytes / 1e6:.2f} MB) for {stats.beds} "
          f"bed(s) to {args.topic} in {stats.elapsed_s:.1f} s ({stats.chunks_per_s:.0f} chunks/s, "
          f"{stats.gaps} gap(s), max lag {stats.max_lag_s * 1000:.0f} ms)")
    if stats.unsent_s >= 0.05:
        print(f"not sent: {stats.unsent_s:.3g} signal-seconds of NaN runs the wire format does not repair (they reach "
              "the worker as gaps)")
    if interrupted and stats.failed:
        print(f"wavebridge replay: warning: the delivery of {stats.failed} chunk(s) was not confirmed (a send failed, "
              "or a second Ctrl-C cut the flush short): the topic may hold fewer than counted", file=sys.stderr)
    if stats.handed_end_ns:
        # a worker dead-letters a bed's chunks that start before its last one ended: say where this one ended (a
        # chunk whose send Ctrl-C interrupted may have left too)
        print(f"samples stamped {_utc(stats.first_ns)} to {_utc(stats.handed_end_ns)} UTC; a new replay of the same "
              f"bed ids must start after that (--start-ns {stats.handed_end_ns}, or later with the default of now)")
    return 130 if interrupted else 0


def _utc(ns: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
