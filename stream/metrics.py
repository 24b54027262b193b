"""Prometheus metrics and the health endpoints of every long-running wavebridge process.

One registry (`REGISTRY`) holds every metric a process exports; `MetricsServer` serves it on
`/metrics` next to `/healthz` (alive) and `/readyz` (ready), from its own thread, so a scrape
never waits for the event loop or the compute thread. Metrics are module-level objects: a
process (worker, sink, alarm agent) imports the ones it updates and starts one server; another
agent adds its metrics here, to the same registry, so every process exports one consistent set.
docs/operations.md lists them with the alerts worth setting.

Consumer lag (`LagTracker`) is NOT derived from the broker's end offsets: Tansu answers
ListOffsets(latest) with the last batch's base offset + 1, not the end of the partition, once a
batch holds several records (measured: 500 records in multi-record batches, ListOffsets said 1,
the fetch response said 500), so "end offset - committed" comes out negative there. The consumer
already knows the high watermark of every partition it fetches from (each fetch response carries
it) and the offsets of the records it received; lag is the larger of the two ends minus the next
offset not yet acknowledged, which is right on Tansu and on Apache Kafka alike.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Hashable, Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
PlatformCollector(registry=REGISTRY)

# Seconds. Latency buckets span one batch wait (0.2 s) to a long InfluxDB outage (minutes).
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 32.0, 64.0, 128.0, 300.0)
MODEL_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# ---------------------------------------------------------------------------------- throughput
MESSAGES_IN = Counter("wavebridge_messages_in", "Messages consumed (worker: input; InfluxDB sink: outputs, events).",
                      ["topic"], registry=REGISTRY)
SAMPLES_IN = Counter("wavebridge_samples_in", "Samples in decoded input chunks.", ["topic"], registry=REGISTRY)
MESSAGES_OUT = Counter("wavebridge_messages_out", "Messages produced (outputs, events, dead letters).", ["topic"],
                       registry=REGISTRY)
SAMPLES_OUT = Counter("wavebridge_samples_out", "Samples in produced output chunks.", ["topic"], registry=REGISTRY)
ACKED = Counter("wavebridge_messages_acked", "Consumed messages done with: acknowledged (worker) or committed "
                "after their points were stored (InfluxDB sink).", ["topic"], registry=REGISTRY)
# ---------------------------------------------------------------------------------- errors
DEAD_LETTERS = Counter("wavebridge_dead_letters", "Input messages dead-lettered, by reason code.", ["reason"],
                       registry=REGISTRY)
STREAM_EVENTS = Counter("wavebridge_stream_events", "Events published (rpeaks, gap, rate_change, ...), by type.",
                        ["type"], registry=REGISTRY)
OUTPUTS_DROPPED = Counter("wavebridge_outputs_dropped", "Output chunks not published (failed wire validation).",
                          ["reason"], registry=REGISTRY)
# ---------------------------------------------------------------------------------- latency
BATCH_SECONDS = Histogram("wavebridge_batch_seconds", ("Wall time of one input batch: decode, translate, hand its outputs to Kafka (and wait for the "
                           "previous batch's delivery; its own is confirmed while the next batch computes)."),
                          buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
END_TO_END_SECONDS = Histogram(
    "wavebridge_end_to_end_seconds",
    "From an input message's Kafka timestamp to the moment its outputs were delivered to the output topics "
    "(per acknowledged message; includes the window wait). InfluxDB follows through the sink agent.", buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
MODEL_SECONDS_PER_WINDOW = Histogram(
    "wavebridge_model_seconds_per_window", "Translator time of one batched call divided by its windows.",
    buckets=MODEL_BUCKETS_S, registry=REGISTRY)
MODEL_SECONDS = Counter("wavebridge_model_seconds", "Translator time, total.", registry=REGISTRY)
STAGE_SECONDS = Counter("wavebridge_stage_seconds",
                        "Where a worker's time goes, by stage: decode (wire), windowing (routing, windows, stitching, "
                        "R-peaks), model (translator calls), publish (output encoding and Kafka sends), influx_points "
                        "(the sink agent's line protocol), influx_write (its InfluxDB writes).",
                        ["stage"], registry=REGISTRY)
MODEL_WINDOWS = Counter("wavebridge_model_windows", "Windows translated, by task.", ["task"], registry=REGISTRY)
# ---------------------------------------------------------------------------------- InfluxDB
INFLUX_POINTS = Counter("wavebridge_influx_points_written", "Points InfluxDB accepted (rejected lines not included).",
                        registry=REGISTRY)
INFLUX_RETRIES = Counter("wavebridge_influx_retries", "Failed InfluxDB write attempts (each is retried).",
                         registry=REGISTRY)
INFLUX_REJECTED = Counter("wavebridge_influx_rejected_lines", "Lines InfluxDB refused as unacceptable (not retried).",
                          registry=REGISTRY)
INFLUX_BACKLOG = Gauge("wavebridge_influx_backlog_lines",
                       "Lines handed to the InfluxDB writer and not yet stored (grows during an outage).",
                       registry=REGISTRY)
SINK_MALFORMED = Counter("wavebridge_sink_malformed_messages", "Messages of the InfluxDB sink's topics no point "
                         "could be made of (not written, not retried), by topic and reason code.",
                         ["topic", "reason"], registry=REGISTRY)
SINK_COMMIT_FAILURES = Counter("wavebridge_sink_commit_failures", "InfluxDB sink commits that failed after their "
                               "points were stored (the batch is read and written again).", registry=REGISTRY)
INFLUX_WRITE_SECONDS = Histogram("wavebridge_influx_write_seconds", "Wall time of one InfluxDB write, retries included.",
                                 buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
# ---------------------------------------------------------------------------------- state
FLUSH_POINTS = Counter("wavebridge_flush_points", "Idle-flush points (stream/progress.py): written to the progress "
                       "topic, read from it, applied to a stream continuing here.", ["what"], registry=REGISTRY)
PROGRESS_ERRORS = Counter("wavebridge_progress_errors", "Progress topic failures (each crashes the worker: its input is "
                          "re-consumed): a flush point not written, the topic not read up to the markers.", ["what"],
                          registry=REGISTRY)
PROGRESS_CATCHUP_SECONDS = Histogram("wavebridge_progress_catchup_seconds", "Reading the progress topic up to this "
                                     "worker's markers after a partition assignment (input waits meanwhile).",
                                     buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
BEDS_ACTIVE = Gauge("wavebridge_beds_active", "Beds with input in the last WAVEBRIDGE_IDLE_FLUSH_S on this process.",
                    registry=REGISTRY)
CONSUMER_LAG = Gauge("wavebridge_consumer_lag_messages",
                     "Messages of an assigned partition not yet acknowledged (high watermark - next unacked offset).",
                     ["topic", "partition"], registry=REGISTRY)
PARTITIONS_ASSIGNED = Gauge("wavebridge_partitions_assigned", "Partitions assigned to this consumer.",
                            registry=REGISTRY)
READY = Gauge("wavebridge_ready", "1 when /readyz answers 200.", registry=REGISTRY)
ALARM_VERDICTS = Counter("wavebridge_alarm_verdicts", "Monitor alarms judged by the alarm agent, by verdict.",
                         ["verdict"], registry=REGISTRY)
ALARM_RING_REFUSED = Counter("wavebridge_alarm_ring_refused_chunks", "Chunks the alarm ring did not keep because "
                             "WAVEBRIDGE_ALARM_MAX_BEDS beds were all heard within WAVEBRIDGE_ALARM_BUFFER_S: their "
                             "beds' alarms are judged uncertain.", registry=REGISTRY)
# Output windows by signal-quality class (operators.processing.quality: good | degraded | unusable; unusable ones are withheld).
QUALITY_WINDOWS = Counter("wavebridge_quality_windows", "Output windows by signal-quality class (unusable: withheld).",
                          ["task", "quality"], registry=REGISTRY)


def observe_quality(task: str, quality: str, n: int = 1) -> None:
    """Count `n` windows of `task` classified as `quality`.

    Parameters
    ----------
    task : str
        Translator task (`ppg2ecg`, `sr`).
    quality : str
        Quality class: good | degraded | unusable.
    n : int
        How many windows.
    """
    QUALITY_WINDOWS.labels(task, quality).inc(n)


# ---------------------------------------------------------------------------------- lag
class LagTracker:
    """Per-partition consumer lag from what the consumer itself saw (see the module docstring).

    Keys are `(topic, partition)` pairs (Faust's `TP` and kafka-python's `TopicPartition` are such pairs). Offsets
    are Kafka offsets; `end` is "one past the newest record known", `position` "the next offset not acknowledged".
    Each tracker owns the `wavebridge_consumer_lag_messages` series it `publish`es, so several consumers of one
    process (the worker's, the InfluxDB sink's) keep theirs apart. Not thread-safe: call from one thread.
    """

    def __init__(self) -> None:
        self._end: dict[Hashable, int] = {}
        self._position: dict[Hashable, int] = {}
        self._published: set = set()

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """Keep only `partitions` (and their lag series); a partition re-assigned later starts from what it
        fetches next.

        Parameters
        ----------
        partitions : iterable of (str, int)
            Every (topic, partition) now assigned to this consumer.
        """
        keep = set(partitions)
        for d in (self._end, self._position):
            for tp in list(d):
                if tp not in keep:
                    del d[tp]
        for tp in self._published - keep:  # another consumer of the group owns it now
            CONSUMER_LAG.remove(tp[0], str(tp[1]))
            self._published.discard(tp)

    def seen(self, tp: Hashable, offset: int) -> None:
        """A record at `offset` was fetched. The first one after an assignment sets the position: every
        earlier offset was committed (the consumer starts at the committed offset).

        Parameters
        ----------
        tp : (str, int)
            Topic and partition.
        offset : int
            Kafka offset of the record.
        """
        self._end[tp] = max(self._end.get(tp, 0), offset + 1)
        self._position.setdefault(tp, offset)

    def acked(self, tp: Hashable, offset: int) -> None:
        """The record at `offset`, and (per the ack gate) every earlier one, is done.

        Parameters
        ----------
        tp, offset
            As for `seen`.
        """
        self._position[tp] = max(self._position.get(tp, 0), offset + 1)
        self._end[tp] = max(self._end.get(tp, 0), offset + 1)

    def lag(self, tp: Hashable, highwater: int | None = None, committed: int | None = None) -> int | None:
        """Messages not yet acknowledged on `tp`, or None while nothing is known about it.

        Parameters
        ----------
        tp : (str, int)
            Topic and partition.
        highwater : int, optional
            The high watermark of the last fetch response (None before the first one).
        committed : int, optional
            The group's committed offset (next offset to read; None: none or 0), the position of a partition
            nothing was fetched from since the assignment (an idle one, fully consumed).
        """
        position = self._position.get(tp)
        if position is None:
            if highwater is None:
                return None
            position = committed or 0
        end = max(self._end.get(tp, 0), highwater or 0)
        return max(0, end - position)

    def publish(self, tp: Hashable, highwater: int | None = None, committed: int | None = None) -> int | None:
        """`lag(...)`, also set as `wavebridge_consumer_lag_messages{topic, partition}` when known.

        Parameters
        ----------
        tp, highwater, committed
            As for `lag`.
        """
        lag = self.lag(tp, highwater, committed)
        if lag is not None:
            CONSUMER_LAG.labels(tp[0], str(tp[1])).set(lag)
            self._published.add(tp)
        return lag


# ---------------------------------------------------------------------------------- HTTP server
Check = Callable[[], "tuple[bool, str]"]


class Health:
    """Liveness and readiness state of one process.

    Alive: `beat()` was called within `max_silence_s` (call it from the event loop on a timer, so a
    blocked loop stops answering alive). Ready: alive and every registered check passes.
    """

    def __init__(self, max_silence_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.max_silence_s = max_silence_s
        self.clock = clock
        self._last_beat = clock()
        self._checks: dict[str, Check] = {}

    def beat(self) -> None:
        """The event loop is alive (call it from a timer)."""
        self._last_beat = self.clock()

    def add_check(self, name: str, check: Check) -> None:
        """Add a readiness check.

        Parameters
        ----------
        name : str
            Its key in the `/readyz` body.
        check : callable() -> (bool, str)
            (ok, detail); it runs on the HTTP thread, so it must only read state.
        """
        self._checks[name] = check

    def alive(self) -> tuple[bool, dict]:
        """(alive, `/healthz` body): whether `beat` was called within `max_silence_s` seconds."""
        silent_s = self.clock() - self._last_beat
        ok = silent_s <= self.max_silence_s
        return ok, {"alive": ok, "event_loop_silent_s": round(silent_s, 3)}

    def ready(self) -> tuple[bool, dict]:
        """(ready, `/readyz` body): alive and every check passes."""
        alive, body = self.alive()
        checks = {}
        for name, check in self._checks.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a check must answer, not take the endpoint down
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            checks[name] = {"ok": bool(ok), "detail": detail}
        ready = alive and all(c["ok"] for c in checks.values())
        READY.set(1 if ready else 0)
        return ready, {**body, "ready": ready, "checks": checks}


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Health

    def log_message(self, *args) -> None:  # scrapes every few seconds: not worth a log line
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.health.ready()  # keeps wavebridge_ready current for every scrape
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, body = self.health.alive() if path == "/healthz" else self.health.ready()
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found; try /metrics, /healthz, /readyz"}', "application/json")

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsBindError(RuntimeError):
    """The metrics address cannot be bound; the message names the variables to fix."""


def serve(host: str, port: int, health: Health) -> "MetricsServer | None":
    """Start the server of a process configured by `WAVEBRIDGE_METRICS_HOST/_PORT`; None when the port is 0.

    Parameters
    ----------
    host : str
        Address to bind (an IPv6 one too).
    port : int
        TCP port; 0 turns the server off.
    health : Health
        What `/healthz` and `/readyz` report.

    Raises
    ------
    MetricsBindError
        One line, when the address is taken or invalid, so the process stops at start.
    """
    if not port:
        return None
    try:
        return MetricsServer(host, port, health=health).start()
    except OSError as exc:
        raise MetricsBindError(f"cannot serve metrics on {host}:{port} (WAVEBRIDGE_METRICS_HOST/_PORT; 0 turns the "
                               f"server off): {exc.strerror or exc}") from None


class MetricsServer:
    """`/metrics`, `/healthz`, `/readyz` on `host:port` from a daemon thread.

    `start()` binds immediately and raises `OSError` when the address is taken, so a process fails at
    start rather than running unobserved. Port 0 binds a free port (see `.port`).
    """

    def __init__(self, host: str, port: int, health: Health | None = None, registry: CollectorRegistry = REGISTRY):
        self.host = host
        self.health = health or Health()
        handler = type("Handler", (_Handler,), {"registry": registry, "health": self.health})
        self._server = (_Server6 if ":" in host else _Server)((host, port), handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://host:port` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "MetricsServer":
        """Serve from a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="wavebridge-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
