"""The worker's own accounting: per-reason counters in the log, and a latency record per input message.

Prometheus (`stream.metrics`) is for dashboards; these two serve the operator reading a log and the benchmarks.
`ReasonCounters` logs a line of totals (dead letters by reason, events by kind, retries) every interval, and
only when something changed, so a quiet worker's log stays quiet. `StatsWriter` appends one JSON line per input
message once its outputs are published (`WAVEBRIDGE_STATS_FILE`); benchmarks/stream_bench.py computes
end-to-end latency from it.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["ReasonCounters", "LatencyRecord", "StatsWriter"]

log = logging.getLogger(__name__)


class ReasonCounters:
    """Per-reason counters (DLQ reasons, stream events), logged every `interval_s` seconds.

    Parameters
    ----------
    interval_s : float
        Seconds between log lines at least.
    logger : logging.Logger, optional
        Where the line goes (default: this module's).
    """

    def __init__(self, interval_s: float = 60.0, logger: logging.Logger | None = None):
        self.counts: Counter = Counter()
        self.interval_s = interval_s
        self._last = time.monotonic()
        self._logged: dict = {}
        self._log = logger or log

    def add(self, reason: str, n: int = 1) -> None:
        """Count `n` more of `reason`.

        Parameters
        ----------
        reason : str
            Counter name (e.g. `dlq.bad_json`, `event.gap`).
        n : int
            How many.
        """
        self.counts[reason] += n

    def maybe_log(self, now: float | None = None, force: bool = False) -> bool:
        """Log the totals if `interval_s` passed (or `force`) and they changed since the last line.

        Parameters
        ----------
        now : float, optional
            `time.monotonic()` seconds (default: now).
        force : bool
            Log regardless of the interval (at shutdown).

        Returns
        -------
        bool
            Whether the interval had passed (or `force`).
        """
        now = time.monotonic() if now is None else now
        if not force and now - self._last < self.interval_s:
            return False
        self._last = now
        if self.counts and (force or dict(self.counts) != self._logged):  # quiet while nothing changes
            self._logged = dict(self.counts)
            self._log.info("counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        return True


@dataclass(frozen=True)
class LatencyRecord:
    """One input message whose outputs are published: a line of the stats file (fields in this order)."""

    bed: str
    signal: str
    produce_ms: float | None  # the input message's Kafka timestamp, ms since the epoch
    published_ms: float  # when its outputs' sends were confirmed, ms since the epoch


class StatsWriter:
    """Appends one JSON line per `LatencyRecord` to `path`; does nothing without one.

    Parameters
    ----------
    path : str or Path, optional
        File to append to (opened now, kept open until `close`).
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._fh = open(self.path, "a", encoding="utf-8") if self.path else None

    def record(self, rows: Iterable[LatencyRecord]) -> None:
        """Append `rows` and flush.

        Parameters
        ----------
        rows : iterable of LatencyRecord
            One per input message whose outputs were published.
        """
        if self._fh is None:
            return
        for row in rows:
            self._fh.write(json.dumps(asdict(row), separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (later records are dropped)."""
        if self._fh:
            self._fh.close()
            self._fh = None
