"""Rate limits for log lines that repeat: one line per interval per kind, carrying how many were held back.

Why: while a broker is down the Kafka clients log every reconnect attempt (a 15 s outage wrote 1,186
`Unable connect to node` lines), and a stream of malformed input would log one line per dead letter.
Counts, not lines, are what an operator needs; the per-reason totals are also in the metrics and in
the counter log line. Nothing here drops information silently: the next line of a kind says how many
of that kind were suppressed since the last one shown.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

# Loggers of the Kafka clients (aiokafka under Faust, kafka-python for topic set-up): each module logs on its own
# logger, and a logger's filter sees only records made on that logger, so every one gets the filter. Importing
# these packages creates their modules' loggers.
KAFKA_LOGGER_PREFIXES = ("aiokafka", "kafka")
_KAFKA_PACKAGES = ("aiokafka", "kafka", "kafka.admin", "faust.transport.drivers.aiokafka")


class Throttle:
    """`allow(key)` is true for the first event of `key` in each `interval_s`; `held(key)` counts the rest."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}
        self._lock = threading.Lock()  # the Kafka clients log from several threads

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """Whether to emit this event of `key`.

        Parameters
        ----------
        key : hashable
            The kind of event.

        Returns
        -------
        tuple of (bool, int)
            Whether to emit it, and how many of `key` were held back since the last one emitted.
        """
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._held.pop(key, 0)


def held_note(n: int) -> str:
    """What a throttled log line appends: how many lines of its kind were held back since the last one shown."""
    return f" [{n} more of this kind not shown]" if n else ""


class RepeatFilter(logging.Filter):
    """A logging filter passing one record per (logger, level, message template) per interval; the next one
    passed says how many were suppressed."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.throttle = Throttle(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass the record if it is the first of its kind in the interval (with the count of those held back)."""
        ok, held = self.throttle.allow((record.name, record.levelno, str(record.msg)))
        if ok and held:
            record.msg = f"{record.getMessage()} [{held} more like this in the last {self.throttle.interval_s:g} s " \
                         f"not shown]"
            record.args = ()
        return ok


def throttle_kafka_logs(interval_s: float) -> RepeatFilter:
    """Attach one `RepeatFilter` to every Kafka client logger.

    Parameters
    ----------
    interval_s : float
        Seconds between two lines of the same kind (`WAVEBRIDGE_LOG_REPEAT_S`).

    Returns
    -------
    RepeatFilter
        The filter attached.
    """
    import importlib

    for name in _KAFKA_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    flt = RepeatFilter(interval_s)
    names = [n for n in list(logging.root.manager.loggerDict)
             if n.split(".")[0] in KAFKA_LOGGER_PREFIXES or n == "faust.transport.drivers.aiokafka"]
    for name in {*names, *KAFKA_LOGGER_PREFIXES}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(flt)
    return flt
