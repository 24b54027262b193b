"""InfluxDB as its own consumer: read the output and event topics in a consumer group of its own, write their
points to InfluxDB, commit only after the write.

    wavebridge sink          # standalone (WAVEBRIDGE_INFLUX_SINK=separate on the workers)

Why a consumer of its own: the alarm feed must never wait for InfluxDB. The worker's input offsets wait only
for its Kafka outputs; while InfluxDB is down this agent retries (with back-off, forever) and the output topics
keep flowing; once InfluxDB is back it catches up from its own committed offsets.

At-least-once with idempotent points: every point is a function of one topic message alone (a sample on its
true timestamp, an R-peak at the peak, an `hr` point at its window's first emitted sample, a stream event at
its start), so a message read again after a crash or a rebalance rewrites the same series at the same
timestamps, which InfluxDB overwrites instead of adding.

Where each message type becomes points: `POINTS` (topic role -> message -> line protocol) and
`topic_roles` (topic name -> role). A new message type meant for InfluxDB is one entry in each.

The compose stack runs it as the `sink` service; a worker with `WAVEBRIDGE_INFLUX_SINK=worker` (the variable's
default) runs it in its process, on a thread of its own with its own Kafka consumer: it shares nothing with the
worker's event loop or compute thread. Any number of sink agents may run; the group spreads the output topics'
partitions over them.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Callable, Sequence

from stream import metrics, sinks
from stream.config import ConfigError, Settings
from stream.errors import short_error
from stream.logthrottle import Throttle, held_note
from stream.startup import run_service

log = logging.getLogger("wavebridge.sink")

OUTPUT, EVENT, VERDICT = "output", "event", "verdict"
# Seconds between the polls that keep the consumer in its group while one batch is written (far below any
# max.poll.interval.ms: kafka-python's default is 300 s).
KEEPALIVE_POLL_S = 1.0
# Commits in a row failing after their write that make /readyz fail: one is a rebalance, several mean the sink
# rewrites its batches without progressing.
COMMIT_FAILURES_NOT_READY = 3


def _output_points(value: bytes, headers: dict[str, bytes]) -> list[str]:
    return sinks.output_lines(sinks.decode_output(value, headers))


def _event_points(value: bytes, headers: dict[str, bytes]) -> list[str]:
    return sinks.event_lines(sinks.decode_event(value))


def _verdict_points(value: bytes, headers: dict[str, bytes]) -> list[str]:
    import json

    from stream.alarms import verdict_lines

    return verdict_lines(json.loads(value))


# topic role -> (message value, headers) -> line protocol
POINTS: dict[str, Callable[[bytes, dict[str, bytes]], list[str]]] = {
    OUTPUT: _output_points,
    EVENT: _event_points,
    VERDICT: _verdict_points,
}


def topic_roles(s: Settings) -> dict[str, str]:
    """The topics whose messages go to InfluxDB, and the `POINTS` role of each.

    Parameters
    ----------
    s : Settings
        Topic names; the verdicts topic only when the alarm agent is enabled.
    """
    roles = {s.topic_ecg_synth: OUTPUT, s.topic_sr: OUTPUT, s.topic_events: EVENT}
    if s.alarm_enabled:
        roles[s.topic_verdicts] = VERDICT  # stream/alarm_agent.py
    return roles


def message_points(role: str, value: bytes, headers: Sequence[tuple[str, bytes]] | None) -> list[str]:
    """Line protocol for one message of a topic with `role`.

    Parameters
    ----------
    role : str
        `OUTPUT`, `EVENT` or `VERDICT`.
    value : bytes
        Message value.
    headers : sequence of (str, bytes), optional
        Message headers.

    Raises
    ------
    Exception
        Whatever the decoder raises for a malformed message (`stream.wire.WireError`, ValueError, KeyError).
    """
    return POINTS[role](value, dict(headers or []))


def malformed_reason(exc: BaseException) -> str:
    """The reason code of a message `message_points` could not turn into points: the wire format's own
    (`stream.wire.REASONS`, e.g. `bad_json`, `bad_encoding`), `bad_json` for an event or verdict that is not
    JSON, else `bad_fields` (JSON of the wrong shape).

    Parameters
    ----------
    exc : BaseException
        What `message_points` raised.
    """
    import json

    from stream.wire import WireError

    if isinstance(exc, WireError):
        return exc.reason
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return "bad_json"
    return "bad_fields"


class InfluxSinkAgent:
    """Consumes `topic_roles(settings)` in group `settings.influx_sink_group` and writes them to InfluxDB.

    One batch at a time: poll, build every point, write (retried until stored), commit the batch's offsets.
    A rebalance during an InfluxDB outage gives the batch up (it is read again by whoever owns its partitions),
    so the sink group never waits for InfluxDB either.
    """

    def __init__(self, settings: Settings, *, influx: sinks.InfluxSink | None = None,
                 counters: sinks.ReasonCounters | None = None, max_records: int = 2000):
        self.settings = settings
        self.roles = topic_roles(settings)
        self.counters = counters or sinks.ReasonCounters(settings.counters_log_s, log)
        self.max_records = max_records
        s = settings
        self.influx = influx or sinks.InfluxSink(
            s.influx_url, s.influx_token, s.influx_org, s.influx_bucket, batch_points=s.influx_batch_points,
            timeout_s=s.influx_timeout_s, backoff=sinks.Backoff(s.retry_initial_s, s.retry_max_s),
            on_retry=self._on_retry, on_reject=self._on_reject, between_requests=self._keep_in_group)
        self._log_throttle = Throttle(settings.log_repeat_s)
        self.written_messages = 0  # messages whose points are stored and offsets committed (or attempted)
        self.ok = True  # False from a failed InfluxDB write until the next stored one
        self.commit_failures = 0  # commits in a row that failed after the write (reset by one that succeeds)
        self.assignment_seen = False  # a first partition assignment arrived (possibly empty)
        self.lag = metrics.LagTracker()  # of this agent's own group (consumer thread only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = None
        self._last_poll = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "InfluxSinkAgent":
        """Run on a daemon thread of its own."""
        for topic in self.roles:  # each series at 0 from the start (see WorkerRuntime.start)
            metrics.MESSAGES_IN.labels(topic)
        self._thread = threading.Thread(target=self.run, name="wavebridge-influx-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop after the batch in progress (a write blocked on an outage is abandoned, not committed).

        Parameters
        ----------
        timeout_s : float
            Seconds to wait for the thread to end.
        """
        self._stop.set()
        self.influx.stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self.counters.maybe_log(force=True)

    def run(self) -> None:
        """Consume until stopped. An unexpected error restarts the consumer from the committed offsets after a
        back-off (nothing uncommitted is lost: it was not acknowledged)."""
        delays = sinks.Backoff(self.settings.retry_initial_s, self.settings.retry_max_s).delays()
        while not self._stop.is_set():
            try:
                self._consume()
            except sinks.SinkStopped:
                return
            except sinks.InfluxConfigError as exc:  # a refused token or bucket: no restart can help
                sinks.stop_for_configuration(exc)
            except Exception as exc:
                if self._stop.is_set():
                    return
                delay = next(delays)
                self.counters.add("sink_restarts")
                log.exception("InfluxDB sink failed (%s); restarting it from its committed offsets in %.1fs",
                              short_error(exc), delay)
                self._stop.wait(delay)

    # ------------------------------------------------------------------ consuming
    def _new_consumer(self):
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        s = self.settings
        agent = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                agent.influx.abort_event.set()  # a write retrying through an outage gives its batch up

            def on_partitions_assigned(self, assigned):
                log.info("InfluxDB sink assigned %d partitions", len(assigned))
                agent.assignment_seen = True
                if not assigned:  # nothing left to rewrite (more sinks than partitions): not unready for the past
                    agent.commit_failures = 0
                agent.lag.assigned(assigned)

        consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=s.influx_sink_group, client_id="wavebridge-influx-sink",
            enable_auto_commit=False, auto_offset_reset="earliest",  # a new sink group writes everything retained
            session_timeout_ms=int(s.session_timeout_s * 1000), heartbeat_interval_ms=int(s.heartbeat_s * 1000),
            max_poll_records=self.max_records, **s.kafka_client_kwargs())
        consumer.subscribe(list(self.roles), listener=_Listener())
        return consumer

    def _consume(self) -> None:
        self._consumer = consumer = self._new_consumer()
        try:
            while not self._stop.is_set():
                records = consumer.poll(timeout_ms=500)
                self._last_poll = time.monotonic()
                if records:
                    self._handle(consumer, records)
                self._publish_lag(consumer)
                self.counters.maybe_log()
        finally:
            self._consumer = None
            consumer.close(autocommit=False)

    def _handle(self, consumer, records: dict) -> None:
        from kafka.errors import CommitFailedError, KafkaError
        from kafka.structs import OffsetAndMetadata

        lines: list[str] = []
        first: dict = {}
        commit: dict = {}
        n = 0
        for tp, batch in records.items():
            role = self.roles[tp.topic]
            first[tp] = batch[0].offset
            metrics.MESSAGES_IN.labels(tp.topic).inc(len(batch))
            self.lag.seen(tp, batch[0].offset)
            self.lag.seen(tp, batch[-1].offset)
            commit[tp] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
            for rec in batch:
                n += 1
                try:
                    t0 = time.perf_counter()
                    lines += message_points(role, rec.value, rec.headers)
                    metrics.STAGE_SECONDS.labels("influx_points").inc(time.perf_counter() - t0)
                except Exception as exc:  # our own topics: a malformed message is a bug, reported, not retried
                    self._on_malformed(tp, rec.offset, role, exc)
        self.influx.abort_event.clear()  # set by a rebalance inside the poll that returned these records
        if lines:
            metrics.INFLUX_BACKLOG.set(len(lines))
            try:
                t0 = time.perf_counter()
                with metrics.INFLUX_WRITE_SECONDS.time():
                    stored = self.influx.write(lines)
                metrics.STAGE_SECONDS.labels("influx_write").inc(time.perf_counter() - t0)
                metrics.INFLUX_POINTS.inc(stored)  # rejected lines count in INFLUX_REJECTED instead
                self.ok = True
            except sinks.WriteAborted:
                # A rebalance during the outage: read the batch again where we still own it (others read it from
                # the committed offsets).
                owned = consumer.assignment()
                for tp, off in first.items():
                    if tp in owned:
                        consumer.seek(tp, off)
                log.info("rebalance: gave up a batch blocked on InfluxDB; it will be read again")
                return
            finally:
                metrics.INFLUX_BACKLOG.set(0)
                consumer.resume(*consumer.paused())
        try:
            consumer.commit(commit)
            for tp, om in commit.items():
                self.lag.acked(tp, om.offset - 1)
                metrics.ACKED.labels(tp.topic).inc(len(records[tp]))
            self.commit_failures = 0
        except (CommitFailedError, KafkaError) as exc:
            # Written but not committed (the group rebalanced meanwhile): the new owner writes it again, which
            # overwrites the same points. Once is a rebalance; in a row, the sink is not progressing.
            self.commit_failures += 1
            metrics.SINK_COMMIT_FAILURES.inc()
            log.log(logging.INFO if self.commit_failures == 1 else logging.WARNING,
                    "InfluxDB sink commit failed after the write (%d in a row; the batch will be written again): "
                    "%s", self.commit_failures, short_error(exc))
        self.written_messages += n

    def _publish_lag(self, consumer) -> None:
        """Lag of each assigned partition from the fetch responses' high watermark (never ListOffsets, see
        stream.metrics); refreshed between batches and by the polls during a write. Paused partitions are not
        fetched, so during an outage it counts the batch being written and what the last fetch before the
        pause saw, not messages produced since (`wavebridge_influx_retries_total` and `_backlog_lines` show
        the outage)."""
        for tp in consumer.assignment():
            try:
                position = consumer.position(tp, timeout_ms=100)  # = the committed offset until a record is fetched
            except Exception:
                position = None
            self.lag.publish(tp, consumer.highwater(tp), position)

    def alive(self) -> bool:
        """Whether its thread runs (started and not ended)."""
        return self._thread is not None and self._thread.is_alive()

    def check_ready(self) -> tuple[bool, str]:
        """For `/readyz`: assigned, consuming, and its last InfluxDB write succeeded."""
        if not self.alive():
            return False, "InfluxDB sink not running"
        if not self.assignment_seen:
            return False, "InfluxDB sink waiting for a partition assignment"
        if self.commit_failures >= COMMIT_FAILURES_NOT_READY:
            return False, f"InfluxDB sink commits failing ({self.commit_failures} in a row): batches are rewritten"
        return (True, "InfluxDB writes succeed") if self.ok else (False, "InfluxDB writes failing, retrying")

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.counters.add("influx_write_failed")
        metrics.INFLUX_RETRIES.inc()
        self.ok = False
        log.warning("InfluxDB write failed (attempt %d); sink paused, retry in %.1fs (the alarm feed is not "
                    "affected): %s", attempt, delay, short_error(exc))
        self._poll_paused()

    def _keep_in_group(self) -> None:
        """Between the requests of one batch: poll now and then, so a batch whose write takes longer than
        `max.poll.interval.ms` (many slow requests) does not get this consumer dropped from its group."""
        if time.monotonic() - self._last_poll >= KEEPALIVE_POLL_S:
            self._poll_paused()

    def _poll_paused(self) -> None:
        """Stay in the group while a batch is being written: a poll on paused partitions fetches nothing but
        lets a rebalance through (its revoke aborts the write) and resets the poll interval. The partitions are
        resumed when the batch is done (`_handle`)."""
        consumer = self._consumer
        if consumer is None:
            return
        consumer.pause(*consumer.assignment())
        for tp, batch in consumer.poll(timeout_ms=0).items():
            # Only a partition assigned during this poll (not paused yet) can return records: read them next.
            consumer.seek(tp, batch[0].offset)
        self._last_poll = time.monotonic()
        self._publish_lag(consumer)  # an outage must show as lag (WavebridgeConsumerLagHigh), not as 0

    def _on_malformed(self, tp, offset: int, role: str, exc: BaseException) -> None:
        """Count a message no point can be made of, and log it at most once per `log_repeat_s` per topic and
        reason (a producer bug repeats on every message; the count says how many)."""
        reason = malformed_reason(exc)
        self.counters.add(f"sink_malformed.{role}")
        metrics.SINK_MALFORMED.labels(tp.topic, reason).inc()
        ok, held = self._log_throttle.allow(("malformed", tp.topic, reason))
        if ok:
            log.error("%s[%d]@%d not written to InfluxDB (malformed %s message, %s)%s: %s", tp.topic, tp.partition,
                      offset, role, reason, held_note(held), short_error(exc))

    def _on_reject(self, exc: BaseException, lines: list[str]) -> None:
        self.counters.add("influx_rejected", len(lines))
        metrics.INFLUX_REJECTED.inc(len(lines))
        ok, held = self._log_throttle.allow("influx_rejected")
        if ok:  # the series, not the values; the rest of the batch is stored
            log.error("InfluxDB rejected a line of series %s (not retried; the rest of the batch is stored)%s: %s",
                      sinks.line_series(lines[0]), held_note(held),
                      short_error(exc))


class SinkProcess:
    """`wavebridge sink`: the agent in the foreground until SIGTERM or SIGINT (`stream.startup` runs it)."""

    def __init__(self, settings: Settings):
        self.agent = InfluxSinkAgent(settings)
        self.health = metrics.Health()
        self.health.add_check("influx_sink", self.agent.check_ready)
        self.topics = list(self.agent.roles)

    def run(self) -> int:
        """Consume until a signal (exit status 0) or until the agent's thread dies (1)."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.agent.start()
        log.info("InfluxDB sink running: group %s, topics %s", self.agent.settings.influx_sink_group,
                 ", ".join(self.topics))
        while not done.wait(0.5):
            self.health.beat()
            if not self.agent.alive():
                return 1
        self.agent.stop()
        return 0


def _open_sink(settings: Settings, args: list[str]) -> SinkProcess:
    """`stream.startup`'s hook: InfluxDB enabled and its token accepted, logging set up."""
    if not settings.influx_enabled:
        raise ConfigError("WAVEBRIDGE_INFLUX_ENABLED is false: nothing to do")
    level = {"crit": "CRITICAL", "warn": "WARNING"}.get(settings.log_level.lower(), settings.log_level.upper())
    logging.basicConfig(level=level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    # a refused token or bucket stops here (InfluxConfigError); an outage is retried by the writes
    problem = sinks.influx_probe(settings.influx_url, settings.influx_token, settings.influx_org,
                                 settings.influx_bucket, settings.influx_timeout_s)
    if problem is not None:
        log.warning("InfluxDB not reachable at start (%s); writes will be retried", problem)
    return SinkProcess(settings)


def cli(argv: Sequence[str] | None = None) -> int:
    """`wavebridge sink`: the InfluxDB sink agent in the foreground, configured by `WAVEBRIDGE_*` variables.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: `sys.argv[1:]`): none but `--help`.

    Returns
    -------
    int
        Exit status (`stream.startup`).
    """
    return run_service("sink", __doc__, list(sys.argv[1:] if argv is None else argv), _open_sink)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
