"""Writing line protocol to InfluxDB: retried until stored, bad lines isolated, refusals stop the worker.

Delivery rules: docs/delivery-semantics.md. InfluxDB's answers fall in three classes, and each gets the only
handling that cannot lose data or loop forever on something no retry can change:

- an outage (network error, 5xx): retry the same batch with exponential back-off, forever, until a stop or a
  rebalance gives it up (`SinkStopped`, `WriteAborted`: its input was not acknowledged and is read again);
- some lines unacceptable (`SPLIT_STATUS`): bisect the batch until each bad line stands alone, store the rest,
  report the bad ones;
- a refused token, org or bucket (`CONFIG_STATUS`): raise `InfluxConfigError` naming the variable to fix;
- no answer within the timeout (a read timeout): InfluxDB may be too slow for a request of this size, so the
  request is cut in halves (down to `min_request_points`, below which a timeout is an outage like any other) and
  grows back by doubling after `GROW_AFTER` requests in a row succeed. A timed-out request may have been stored
  anyway: its points are sent again, which overwrites them.

`influx_probe` asks the same question once at start-up, with an empty write.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator, Sequence

from stream.config import ConfigError
from stream.errors import short_error
from stream.sinks.lineprotocol import line_series

__all__ = ["Backoff", "SinkStopped", "WriteAborted", "InfluxConfigError", "SPLIT_STATUS", "CONFIG_STATUS",
           "InfluxSink", "influx_probe", "stop_for_configuration"]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential back-off delays: `initial_s`, twice that, four times, ... capped at `maximum_s` (seconds)."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0):
        self.initial_s = initial_s
        self.maximum_s = maximum_s

    def delays(self) -> Iterator[float]:
        """Endless delays in seconds, starting at `initial_s`."""
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
# Consecutive successful requests after which a request size cut by a timeout doubles again (up to `batch_points`):
# often enough to recover from a passing slowness within a few batches, rarely enough that a size at the limit
# costs one timed-out request in this many.
GROW_AFTER = 8


def _cut(part: list[str], size: int) -> list[list[str]]:
    """`part` in pieces of at most `size` lines, for a pending stack (the first piece last: popped first)."""
    return [part[j:j + size] for j in range(0, len(part), size)][::-1]


def _timed_out(exc: BaseException) -> bool:
    """Whether `exc` is InfluxDB not answering in time (connected, request sent), not a refused connection."""
    from urllib3.exceptions import ReadTimeoutError

    return isinstance(exc, ReadTimeoutError)


class InfluxConfigError(ConfigError):
    """InfluxDB refused the token, org or bucket (401, 403, 404): a configuration error, not an outage."""


def _config_error(status: int, url: str, org: str, bucket: str, message: str) -> InfluxConfigError:
    var = "WAVEBRIDGE_" + CONFIG_STATUS[status]
    why = {401: "the token is not valid (401 Unauthorized); set WAVEBRIDGE_INFLUX_TOKEN or _TOKEN_FILE",
           403: f"the token may not write to bucket {bucket!r} (403 Forbidden); give it write access",
           404: f"bucket {bucket!r} of org {org!r} not found (404); fix WAVEBRIDGE_INFLUX_BUCKET, "
                f"WAVEBRIDGE_INFLUX_ORG or WAVEBRIDGE_INFLUX_URL"}[status]
    return InfluxConfigError(f"{var}: InfluxDB at {url}: {why}: {message[:200]}")


def stop_for_configuration(exc: BaseException) -> None:
    """Exit the process at once with one line (exit status 2).

    A refused InfluxDB token or bucket holds for every batch and every restart. Nothing of the batch was
    committed, so nothing is lost: it is read again after the fix. Called from the sink agent's thread, where
    raising would only end the thread.

    Parameters
    ----------
    exc : BaseException
        The refusal, logged as the one line.
    """
    log.critical("stopping: configuration error: %s", exc)
    logging.shutdown()
    os._exit(2)


def influx_probe(url: str, token: str | None, org: str, bucket: str, timeout_s: float = 10.0) -> str | None:
    """Ask InfluxDB whether the token may write to the bucket, with an empty write (stores nothing).

    Parameters
    ----------
    url, token, org, bucket : str
        InfluxDB v2 write API address and credentials (`token` None: an empty one).
    timeout_s : float
        Request timeout in seconds.

    Returns
    -------
    str or None
        None when the write is accepted; else (InfluxDB unreachable or failing: an outage the worker's writes
        will retry) a short description.

    Raises
    ------
    InfluxConfigError
        On 401, 403 or 404, naming the variable to fix.
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
            raise _config_error(exc.code, url, org, bucket, _body_message(exc.read())) from None
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


def _api_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    return _body_message(body.encode() if isinstance(body, str) else body) if body else str(exc)


class InfluxSink:
    """Synchronous, batched, retried-forever writer of line protocol.

    `write(lines)` returns only once every line is stored; on failure it sleeps with exponential
    back-off and retries the same batch; a request that times out is sent again in smaller ones (the
    module docstring). The exceptions: lines InfluxDB rejects as unacceptable
    (`SPLIT_STATUS`) are isolated by splitting the batch and reported through `on_reject` (or logged as an
    error), the rest stored; a refused token, org or bucket (`CONFIG_STATUS`) raises InfluxConfigError.
    Call it from a worker thread, never the event loop.

    Parameters
    ----------
    url, token, org, bucket : str
        InfluxDB v2 write API address and credentials.
    batch_points : int
        Lines per write request at most.
    timeout_s : float
        Request timeout in seconds.
    min_request_points : int
        Smallest request a timeout cuts the request size to (a timeout at this size is retried as an outage).
    backoff : Backoff, optional
        Delays between retries (default: 0.5 s doubling to 30 s).
    on_retry : callable(attempt, error, delay_s), optional
        Called before each back-off sleep (default: a warning).
    on_reject : callable(error, lines), optional
        Called with each rejected line (default: an error log line).
    between_requests : callable(), optional
        Called after each request InfluxDB answered or that timed out, before the next one: the caller keeps
        its Kafka consumer in its group there (a write of many slow requests must not outlast its poll
        interval).
    """

    def __init__(self, url: str, token: str | None, org: str, bucket: str, *, batch_points: int = 20000,
                 timeout_s: float = 10.0, min_request_points: int = 100, backoff: Backoff | None = None,
                 on_retry: Callable[[int, BaseException, float], None] | None = None,
                 on_reject: Callable[[BaseException, list[str]], None] | None = None,
                 between_requests: Callable[[], None] | None = None):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url
        self.bucket = bucket
        self.org = org
        self.batch_points = batch_points
        self.min_request_points = max(1, min(min_request_points, batch_points))
        self.request_points = batch_points  # lines per request now: cut by timeouts, grown back by successes
        self._successes = 0  # requests answered in a row since the request size last changed
        self.backoff = backoff or Backoff()
        self.on_retry = on_retry
        self.on_reject = on_reject
        self.between_requests = between_requests
        self.stop_event = threading.Event()  # set: shutting down, every write raises SinkStopped
        self.abort_event = threading.Event()  # set: give up the write in progress (WriteAborted), while set
        self.failures = 0  # write attempts that failed, total
        self.rejected_lines = 0  # lines answered with a SPLIT_STATUS on their own, not retried
        self.requests = 0  # write requests sent (the splitting of a rejected batch or a timed-out request adds some)
        # retries=False: our own loop retries (forever, with back-off); urllib3's would give up.
        self._client = InfluxDBClient(url=url, token=token or "", org=org, timeout=int(timeout_s * 1000), retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> int:
        """Store `lines`, in order, `request_points` per request (at most `batch_points`).

        Parameters
        ----------
        lines : sequence of str
            Line protocol, ns precision.

        Returns
        -------
        int
            How many InfluxDB accepted: those given less those it rejected (reported apart).

        Raises
        ------
        SinkStopped, WriteAborted, InfluxConfigError
            As the class docstring says.
        """
        rejected_before = self.rejected_lines
        start = 0
        pending: list[list[str]] = []  # parts still to send, the next one last
        sent = False
        while pending or start < len(lines):
            if pending:
                part = pending.pop()
                if len(part) > self.request_points:  # queued before the size was cut: send it at today's size
                    pending += _cut(part, self.request_points)
                    continue
            else:
                part = list(lines[start:start + self.request_points])
                start += len(part)
            if sent and self.between_requests is not None:
                self.between_requests()  # between two requests, never after the last: the commit comes next
            sent = True
            exc = self._write_retrying(part)
            if exc is None:
                self._answered(full=len(part) >= self.request_points)
                continue
            if _timed_out(exc):  # longer than min_request_points: send it again in smaller requests
                self._answered(shrink_to=max(self.min_request_points, len(part) // 2))
                pending += _cut(part, self.request_points)
                continue
            self._answered(full=len(part) >= self.request_points)
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
        return len(lines) - (self.rejected_lines - rejected_before)

    def _answered(self, shrink_to: int | None = None, full: bool = True) -> None:
        """A request was answered (`shrink_to` None) or timed out: adapt the request size. Only answers to requests of
        the current size (`full`) count toward growing it again: a small leftover part proves nothing."""
        if shrink_to is not None:
            if shrink_to < self.request_points:
                log.warning("InfluxDB did not answer a request of %d lines in time; sending %d lines per request "
                            "from now on", self.request_points, shrink_to)
            self.request_points = min(self.request_points, shrink_to)
            self._successes = 0
        elif full:
            self._successes += 1
            if self._successes >= GROW_AFTER and self.request_points < self.batch_points:
                self.request_points = min(self.batch_points, self.request_points * 2)
                self._successes = 0
                log.info("InfluxDB answers in time again: %d lines per request", self.request_points)

    def _write_retrying(self, part: list[str]) -> BaseException | None:
        """Write one request, retrying transient failures. Returns the error if InfluxDB found `part`
        unacceptable, or if it timed out on a request larger than `min_request_points` (to be cut)."""
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
                    raise _config_error(status, self.url, self.org, self.bucket, _api_message(exc)) from None
                attempt += 1
                self.failures += 1
                if _timed_out(exc) and len(part) > self.min_request_points:
                    if self.on_retry:
                        self.on_retry(attempt, exc, 0.0)
                    return exc
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
        """Stop (a write in progress raises SinkStopped) and close the client."""
        self.stop_event.set()
        try:
            self._write_api.close()
        finally:
            self._client.close()
