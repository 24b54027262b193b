"""Repeating log lines: one per interval per kind, the next one saying how many were held back."""
from __future__ import annotations

import logging

from stream.logthrottle import RepeatFilter, Throttle, throttle_kafka_logs


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_throttle_counts_what_it_holds_back_per_key():
    clock = Clock()
    th = Throttle(10.0, clock)
    assert th.allow("a") == (True, 0)
    assert [th.allow("a")[0] for _ in range(5)] == [False] * 5
    assert th.allow("b") == (True, 0)  # another kind is not held back by the first
    clock.t = 10.0
    assert th.allow("a") == (True, 5)
    assert th.allow("a") == (False, 0)


def test_a_flood_of_connection_errors_becomes_a_line_per_interval_with_a_count(caplog):
    """A 15 s broker outage wrote 1,186 `Unable connect to node` lines."""
    clock = Clock()
    logger = logging.getLogger("aiokafka.test-flood")
    flt = RepeatFilter(30.0, clock)
    logger.addFilter(flt)
    try:
        with caplog.at_level(logging.ERROR, logger="aiokafka.test-flood"):
            for i in range(1186):
                clock.t = i * 15.0 / 1186
                logger.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
            clock.t = 31.0
            logger.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
    finally:
        logger.removeFilter(flt)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1] == ("Unable connect to node with id 1: Connect call failed "
                        "[1185 more like this in the last 30 s not shown]")


def test_the_kafka_client_loggers_get_the_filter():
    throttle_kafka_logs(30.0)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.group_coordinator", "aiokafka.conn",
                 "kafka.net.manager", "kafka.admin.client"):
        assert any(isinstance(f, RepeatFilter) for f in logging.getLogger(name).filters), name
    throttle_kafka_logs(30.0)  # idempotent: still one filter per logger
    assert sum(isinstance(f, RepeatFilter) for f in logging.getLogger("aiokafka").filters) == 1
