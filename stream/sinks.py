"""Output sinks: InfluxDB (line protocol, idempotent, retried until stored) and Kafka payload builders.

Schema: docs/influx-schema.md. Delivery rules: docs/delivery-semantics.md.

Idempotency comes from InfluxDB itself: a point with the same measurement, tag set and timestamp
overwrites the previous one, and every output sample carries its true timestamp. So re-processing
input after a crash rewrites the same points instead of adding new ones.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from stream.config import ConfigError

log = logging.getLogger(__name__)

WAVEFORM = "waveform"
RPEAK = "rpeak"
HR = "hr"
STREAM_EVENT = "stream_event"
QUALITY = "quality"
UNUSABLE_EVENTS = ("source_unusable", "output_unusable")


# --------------------------------------------------------------------------------------------
# line protocol
def _escape_tag(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_str_field(v: str) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', r"\"") + '"'


def _tagset(tags: dict) -> str:
    # Sorted tag keys: InfluxDB's canonical order, cheapest for it to index.
    return ",".join(f"{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(tags.items()) if v not in (None, ""))


def series_lines(measurement: str, tags: dict, times_ns: np.ndarray, values: np.ndarray) -> list[str]:
    """One line per sample: `<measurement>,<tags> value=<v> <ns>`; non-finite values are skipped
    (line protocol cannot carry NaN/inf; the sample is absent, which the gap events explain)."""
    prefix = f"{measurement},{_tagset(tags)} value="
    vals = np.asarray(values, dtype=np.float32)
    ok = np.isfinite(vals)
    # %.9g round-trips any float32 exactly, so readers get back the bits we computed.
    return [f"{prefix}{v:.9g} {t}" for v, t in zip(vals[ok].tolist(), np.asarray(times_ns, dtype=np.int64)[ok].tolist())]


def _fields(fields: dict) -> str:
    parts = []
    for k, v in sorted(fields.items()):
        if v is None:
            continue
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, np.integer)):
            parts.append(f"{k}={int(v)}i")
        elif isinstance(v, (float, np.floating)):
            if math.isfinite(float(v)):
                parts.append(f"{k}={float(v)!r}")
        else:
            parts.append(f"{k}={_escape_str_field(v)}")
    return ",".join(parts)


def output_lines(out) -> list[str]:
    """Line protocol for one `pipeline.OutputSeries`: its samples, and one `quality` point at its first sample."""
    tags = {"bed": out.bed, "signal": out.influx_signal, "kind": out.kind, "model": out.model}
    lines = series_lines(WAVEFORM, tags, out.times_ns, out.values)
    if out.quality is not None and len(out.times_ns):
        fields = {"score": float(out.quality), "flag": out.quality_flag or None, "reason": out.reason or None,
                  "usable": bool(out.usable),
                  "confidence": out.confidence, "context_used": bool(out.context_used), "synthetic": bool(out.synthetic),
                  "end_ns": int(out.times_ns[-1])}
        lines.append(f"{QUALITY},{_tagset(tags)} {_fields(fields)} {int(out.times_ns[0])}")
    return lines


def event_lines(ev) -> list[str]:
    """Line protocol for one `pipeline.PipelineEvent`.

    R-peak windows expand to one `rpeak` point per peak (time = the peak) plus one `hr` point;
    stream anomalies (gap, out_of_order, duplicate, ...) go to `stream_event`.
    """
    lines: list[str] = []
    if ev.type == "rpeaks":
        tags = _tagset({"bed": ev.bed, "signal": ev.signal, "model": ev.fields.get("model")})
        for p in ev.fields.get("peaks_ns", []):
            lines.append(f"{RPEAK},{tags} value=1i {int(p)}")
        hr = ev.fields.get("hr_bpm")
        if hr is not None and math.isfinite(hr):
            fields = {"bpm": float(hr), "n_peaks": len(ev.fields.get("peaks_ns", [])),
                      "quality": ev.fields.get("quality"), "confidence": ev.fields.get("confidence")}
            lines.append(f"{HR},{tags} {_fields(fields)} {int(ev.time_ns)}")
        return lines
    if ev.type in UNUSABLE_EVENTS:  # the withheld span in the quality measurement too, where dashboards look
        kind = "source" if ev.type == "source_unusable" else "output"
        qtags = _tagset({"bed": ev.bed, "signal": ev.signal, "kind": kind})
        fields = {"score": ev.fields.get("quality"), "flag": ev.fields.get("quality_flag"),
                  "reason": ev.fields.get("reason"), "usable": False, "end_ns": ev.fields.get("end_ns")}
        lines.append(f"{QUALITY},{qtags} {_fields(fields)} {int(ev.time_ns)}")
    tags = _tagset({"bed": ev.bed, "signal": ev.signal, "type": ev.type})
    fields = {k: v for k, v in ev.fields.items() if isinstance(v, (str, int, float, bool, np.integer, np.floating))}
    fields.setdefault("count", 1)
    body = _fields(fields) or "count=1i"
    lines.append(f"{STREAM_EVENT},{tags} {body} {int(ev.time_ns)}")
    return lines


def batch_lines(outputs: Iterable, events: Iterable) -> list[str]:
    lines: list[str] = []
    for out in outputs:
        lines.extend(output_lines(out))
    for ev in events:
        lines.extend(event_lines(ev))
    return lines


# --------------------------------------------------------------------------------------------
class Backoff:
    """Exponential back-off delays: initial, 2x, 4x, ... capped at `maximum`."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0):
        self.initial_s = initial_s
        self.maximum_s = maximum_s

    def delays(self) -> Iterator[float]:
        d = self.initial_s
        while True:
            yield d
            d = min(d * 2.0, self.maximum_s)


class SinkStopped(RuntimeError):
    """Raised from a blocked retry loop when the worker is shutting down (nothing was lost:
    the input was not acknowledged, so it will be consumed again)."""


class WriteAborted(RuntimeError):
    """Raised from a blocked retry loop when a rebalance gives the batch up (its input is unacknowledged and will
    be consumed again, here or by the partitions' new owner); the worker carries on."""


# Answers that say some points are unacceptable (unparsable, beyond the retention period, field type conflict) or
# the request too large. InfluxDB 1.x then stores the rest of the batch ("partial write"), 2.x stores none of it;
# sending the same batch again can never succeed. The batch is split in halves until each bad line stands alone:
# every good point is stored on both versions (rewriting a point 1.x already stored changes nothing), and only
# the bad lines are reported.
SPLIT_STATUS = (400, 413, 422)
# Answers that no retry can change: the worker stops with one line naming the variable to fix.
CONFIG_STATUS = {401: "INFLUX_TOKEN", 403: "INFLUX_TOKEN", 404: "INFLUX_BUCKET"}


class InfluxConfigError(ConfigError):
    """InfluxDB refused the token, org or bucket (401, 403, 404): a configuration error, not an outage."""


def config_error(status: int, url: str, org: str, bucket: str, message: str) -> InfluxConfigError:
    var = "WAVEBRIDGE_" + CONFIG_STATUS[status]
    why = {401: "the token is not valid (401 Unauthorized); set WAVEBRIDGE_INFLUX_TOKEN or _TOKEN_FILE",
           403: f"the token may not write to bucket {bucket!r} (403 Forbidden); give it write access",
           404: f"bucket {bucket!r} of org {org!r} not found (404); fix WAVEBRIDGE_INFLUX_BUCKET, "
                f"WAVEBRIDGE_INFLUX_ORG or WAVEBRIDGE_INFLUX_URL"}[status]
    return InfluxConfigError(f"{var}: InfluxDB at {url}: {why}: {message[:200]}")


def stop_for_configuration(exc: BaseException) -> None:
    """Exit the process at once with one line (exit status 2): a refused InfluxDB token or bucket holds for every
    batch and every restart. Nothing of the batch was committed, so nothing is lost: it is read again after the fix."""
    log.critical("stopping: configuration error: %s", exc)
    logging.shutdown()
    os._exit(2)


def influx_probe(url: str, token: str | None, org: str, bucket: str, timeout_s: float = 10.0) -> str | None:
    """Ask InfluxDB whether the token may write to the bucket, with an empty write (stores nothing).

    Raises InfluxConfigError on 401/403/404; returns None when the write is accepted, else (InfluxDB
    unreachable or failing: an outage the worker's writes will retry) a short description.
    """
    query = urllib.parse.urlencode({"org": org, "bucket": bucket, "precision": "ns"})
    request = urllib.request.Request(f"{url.rstrip('/')}/api/v2/write?{query}", data=b"", method="POST",
                                     headers={"Authorization": f"Token {token or ''}",
                                              "Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in CONFIG_STATUS:
            raise config_error(exc.code, url, org, bucket, _body_message(exc.read())) from None
        if exc.code in SPLIT_STATUS:  # an empty body may be "no points" to some versions: the address is right
            return None
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return short_error(exc)


def _body_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")


class InfluxSink:
    """Synchronous, batched, retried-forever writer of line protocol.

    `write(lines)` returns only once every line is stored; on failure it sleeps with exponential
    back-off and retries the same batch. The exceptions: lines InfluxDB rejects as unacceptable
    (`SPLIT_STATUS`) are isolated by splitting the batch and reported through `on_reject` (or logged as an
    error), the rest stored; a refused token, org or bucket (`CONFIG_STATUS`) raises InfluxConfigError.
    Call it from a worker thread, never the event loop.
    """

    def __init__(self, url: str, token: str | None, org: str, bucket: str, *, batch_points: int = 20000,
                 timeout_s: float = 10.0, backoff: Backoff | None = None,
                 on_retry: Callable[[int, BaseException, float], None] | None = None,
                 on_reject: Callable[[BaseException, list[str]], None] | None = None):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url
        self.bucket = bucket
        self.org = org
        self.batch_points = batch_points
        self.backoff = backoff or Backoff()
        self.on_retry = on_retry
        self.on_reject = on_reject
        self.stop_event = threading.Event()  # set: shutting down, every write raises SinkStopped
        self.abort_event = threading.Event()  # set: give up the write in progress (WriteAborted), while set
        self.failures = 0  # write attempts that failed, total
        self.rejected_lines = 0  # lines answered with a SPLIT_STATUS on their own, not retried
        self.requests = 0  # write requests sent (the splitting of a rejected batch adds some)
        # retries=False: our own loop retries (forever, with back-off); urllib3's would give up.
        self._client = InfluxDBClient(url=url, token=token or "", org=org, timeout=int(timeout_s * 1000), retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> int:
        """Store `lines`; returns how many were given (rejected ones included, reported apart)."""
        for i in range(0, len(lines), self.batch_points):
            pending = [list(lines[i:i + self.batch_points])]
            while pending:
                part = pending.pop()
                exc = self._write_retrying(part)
                if exc is None:
                    continue
                if len(part) == 1:
                    self.rejected_lines += 1
                    if self.on_reject:
                        self.on_reject(exc, part)
                    else:
                        log.error("InfluxDB rejected a line (not retried): %s: %s", line_series(part[0]),
                                  short_error(exc))
                    continue
                mid = len(part) // 2
                pending += [part[mid:], part[:mid]]  # first half next: points go out in their order
        return len(lines)

    def _write_retrying(self, part: list[str]) -> BaseException | None:
        """Write one request, retrying transient failures; the error if InfluxDB found `part` unacceptable."""
        from influxdb_client import WritePrecision

        body = "\n".join(part)
        delays = self.backoff.delays()
        attempt = 0
        while True:
            if self.stop_event.is_set():
                raise SinkStopped("worker stopping while InfluxDB writes were pending")
            if self.abort_event.is_set():
                raise WriteAborted("batch given up by a rebalance while InfluxDB writes were pending")
            try:
                self.requests += 1
                self._write_api.write(bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.NS)
                return None
            except Exception as exc:  # network errors, 5xx: retry, never drop data
                status = getattr(exc, "status", None)
                if status in SPLIT_STATUS:
                    return exc
                if status in CONFIG_STATUS:
                    raise config_error(status, self.url, self.org, self.bucket, _api_message(exc)) from None
                attempt += 1
                self.failures += 1
                delay = next(delays)
                if self.on_retry:
                    self.on_retry(attempt, exc, delay)
                else:
                    log.warning("InfluxDB write failed (attempt %d, retry in %.1fs): %s", attempt, delay,
                                short_error(exc))
                self._sleep(delay)

    def _sleep(self, delay: float) -> None:
        """Back-off that ends early on stop or abort (polled: two events cannot be waited on together)."""
        end = time.monotonic() + delay
        while not (self.stop_event.is_set() or self.abort_event.is_set()):
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stop_event.wait(min(left, 0.05))

    def close(self) -> None:
        self.stop_event.set()
        try:
            self._write_api.close()
        finally:
            self._client.close()


def line_series(line: str) -> str:
    """The measurement and tags of a line-protocol line (up to the first unescaped space): names the series of a
    rejected point in a log line without its values."""
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == " ":
            return line[:i][:200]
        i += 1
    return line[:200]


def _api_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    return _body_message(body.encode() if isinstance(body, str) else body) if body else str(exc)


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."


# --------------------------------------------------------------------------------------------
# Kafka payloads
def out_chunk(out):
    """`wire.Chunk` for one output series (topic messages use the `_SR` suffix for SR)."""
    from stream.wire import Chunk

    meta = {"synthetic": bool(out.synthetic), "quality": out.quality, "quality_flag": out.quality_flag or None,
            "quality_reason": out.reason or None, "confidence": out.confidence, "context_used": bool(out.context_used), "model": out.model or None}
    return Chunk(bed_id=out.bed, signal=out.topic_signal, rate_hz=float(out.rate_hz), start_ns=int(out.times_ns[0]),
                 seq=int(out.seq), samples=np.asarray(out.values, dtype=np.float32), units=out.units or "",
                 meta={k: v for k, v in meta.items() if v is not None})


def encode_output(out, binary: bool = True) -> bytes:
    from stream import wire

    chunk = out_chunk(out)
    return wire.encode_binary(chunk) if binary else wire.encode_json(chunk)


# Output messages carry what their InfluxDB points need beyond the chunk itself as headers (the wire format is
# the alarm systems' contract): the model tag, and where a sample's true timestamp is not the chunk grid
# `start_ns + round(i * 1e9 / rate_hz)` (a segment grid at a period of fractional ns), the difference per sample.
HEADER_MODEL = "wavebridge.model"
HEADER_TIME_ADJUST = "wavebridge.time_adjust_ns"  # int8 per sample, only when some differ


def output_headers(out) -> list[tuple[str, bytes]]:
    """Kafka headers of an output message (`decode_output` restores the series exactly from message + headers)."""
    from operators.state.windowing import grid_ns

    headers = [(HEADER_MODEL, str(out.model).encode())]
    times = np.asarray(out.times_ns, dtype=np.int64)
    adjust = times - grid_ns(int(times[0]), float(out.rate_hz), np.arange(len(times)))
    if adjust.any():
        if np.abs(adjust).max() > 127:
            raise ValueError(f"output {out.bed}/{out.topic_signal}: timestamps off the chunk grid by up to "
                             f"{int(np.abs(adjust).max())} ns")
        headers.append((HEADER_TIME_ADJUST, adjust.astype(np.int8).tobytes()))
    return headers


def decode_output(value: bytes, headers: dict[str, bytes]):
    """The `pipeline.OutputSeries` an output message (value + headers) was made from: same tags, same true
    timestamps, NaN where the output had no finite value. Raises `wire.WireError` / ValueError if malformed."""
    from operators.state.windowing import grid_ns
    from stream import wire
    from stream.pipeline import SR_SUFFIX, SYNTH_SIGNAL, OutputSeries

    chunk = wire.decode_result(value, repair=False).chunk
    kind = "synth" if chunk.signal == SYNTH_SIGNAL else "sr"
    source = chunk.signal[: -len(SR_SUFFIX)] if kind == "sr" and chunk.signal.endswith(SR_SUFFIX) else chunk.signal
    n = len(chunk.samples)
    times = grid_ns(chunk.start_ns, chunk.rate_hz, np.arange(n))
    adjust = headers.get(HEADER_TIME_ADJUST)
    if adjust:
        a = np.frombuffer(adjust, dtype=np.int8)
        if len(a) != n:
            raise ValueError(f"{HEADER_TIME_ADJUST}: {len(a)} values for {n} samples")
        times = times + a.astype(np.int64)
    meta = chunk.meta
    model = (headers.get(HEADER_MODEL) or b"").decode("utf-8", "replace") or meta.get("model", "")
    return OutputSeries(bed=chunk.bed_id, source_signal=source, kind=kind, model=model, rate_hz=float(chunk.rate_hz),
                        times_ns=times, values=chunk.samples, seq=chunk.seq, units=chunk.units,
                        quality=meta.get("quality"), quality_flag=meta.get("quality_flag", ""),
                        reason=meta.get("quality_reason", ""), confidence=meta.get("confidence"),
                        context_used=bool(meta.get("context_used", False)))


def encode_event(ev) -> bytes:
    payload = {"type": ev.type, "bed": ev.bed, "signal": ev.signal, "time_ns": int(ev.time_ns)}
    payload.update({k: _jsonable(v) for k, v in ev.fields.items()})
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_event(value: bytes):
    """The `pipeline.PipelineEvent` of an events-topic message (`encode_event`'s inverse)."""
    from stream.pipeline import PipelineEvent

    obj = json.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("event message is not a JSON object")
    return PipelineEvent(type=str(obj.pop("type")), bed=str(obj.pop("bed")), signal=str(obj.pop("signal")),
                         time_ns=int(obj.pop("time_ns")), fields=obj)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# A dead letter carries the original payload; one larger than this (with its headers) could exceed the producer's
# request limit (1,000,000 bytes by default), and a send that fails crashes the worker, which then re-reads the
# same message and crashes again. Such a payload is dead-lettered without its value.
DLQ_MAX_VALUE_BYTES = 900_000


def dlq_value(value: bytes | None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value to send, extra headers) for a dead letter of `value`."""
    value = value if value is not None else b""
    if len(value) <= DLQ_MAX_VALUE_BYTES:
        return value, []
    return b"", [("wavebridge.value_dropped_bytes", str(len(value)).encode())]


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered message; its value is the original payload, unchanged (`dlq_value`)."""
    return [
        ("wavebridge.reason", reason.encode()),
        ("wavebridge.detail", detail[:1000].encode("utf-8", "replace")),
        ("wavebridge.source.topic", topic.encode()),
        ("wavebridge.source.partition", str(partition).encode()),
        ("wavebridge.source.offset", str(offset).encode()),
    ]


# --------------------------------------------------------------------------------------------
class ReasonCounters:
    """Per-reason counters (DLQ reasons, stream events), logged every `interval_s`."""

    def __init__(self, interval_s: float = 60.0, logger: logging.Logger | None = None):
        self.counts: Counter = Counter()
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._logged: dict = {}
        self._log = logger or log

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def maybe_log(self, now: float | None = None, force: bool = False) -> bool:
        now = time.monotonic() if now is None else now
        if not force and now - self._last < self.interval_s:
            return False
        self._last = now
        if self.counts and (force or dict(self.counts) != self._logged):  # quiet while nothing changes
            self._logged = dict(self.counts)
            self._log.info("counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        return True


class StatsWriter:
    """Appends one JSON line per acknowledged input message (benchmark latency record)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._fh = open(self.path, "a", encoding="utf-8") if self.path else None

    def record(self, rows: Iterable[dict]) -> None:
        if self._fh is None:
            return
        for row in rows:
            self._fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
