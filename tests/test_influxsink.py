"""The InfluxDB sink agent (stream/influxsink.py) against a real broker (Tansu), with InfluxDB's write API replaced
by a stand-in that can be slow, down or refusing lines: what it commits, what it counts and what it reports."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from stream import metrics, sinks
from stream.config import Settings
from stream.influxsink import InfluxSinkAgent
from stream.results import OutputSeries
from stream.tools.worker_process import LOCAL_BROKER_TIMING, prefixed_topics
from stream.topics import ensure_topics


def _count(name: str, **labels) -> float:
    """A counter's value as /metrics exposes it (0 before its first increment)."""
    return metrics.REGISTRY.get_sample_value(f"wavebridge_{name}_total", labels) or 0.0

T0 = 1_750_000_000_000_000_000
N_PER = 125  # lines per output message (one 1 s chunk at 125 Hz)


class FakeWriteApi:
    """influxdb-client's write API as InfluxDB answers it: after `delay_s`, raises `error(lines)` if that returns
    one, else stores the lines."""

    def __init__(self, delay_s=0.0, error=None):
        self.delay_s, self.error = delay_s, error
        self.stored: list[str] = []
        self.requests = 0

    def write(self, bucket, org, record, write_precision):
        self.requests += 1
        time.sleep(self.delay_s)
        lines = record.split("\n")
        exc = self.error(lines) if self.error else None
        if exc is not None:
            raise exc
        self.stored += lines

    def close(self):
        pass


class Status400(Exception):
    status = 400


def _agent(kafka_bootstrap, write_api, **settings):
    prefix = "s" + uuid.uuid4().hex[:8]
    topics = prefixed_topics(prefix)
    s = Settings(broker=f"kafka://{kafka_bootstrap}", group_id=f"{prefix}-worker", **LOCAL_BROKER_TIMING, **topics,
                 alarm_enabled=False, retry_initial_s=0.05, retry_max_s=0.2, log_repeat_s=60.0, **settings)
    ensure_topics(kafka_bootstrap, [topics["topic_ecg_synth"], topics["topic_sr"], topics["topic_events"]],
                  partitions=1)
    agent = InfluxSinkAgent(s)
    agent.influx._write_api = write_api
    return agent


def _message(k):
    t = T0 + k * 1_000_000_000 + np.arange(N_PER, dtype=np.int64) * 8_000_000
    out = OutputSeries(bed="bed-0", source_signal="PLETH", kind="synth", model="classic", rate_hz=125.0,
                       times_ns=t, values=np.full(N_PER, k, np.float32), seq=k)
    return sinks.encode_output(out), sinks.output_headers(out)


class FakeConsumer:
    """The few kafka-python consumer calls `_handle` makes, with a commit that fails as after a rebalance."""

    def __init__(self, tp, commit_fails=True):
        self.tp, self.commits, self.commit_fails = tp, 0, commit_fails

    def assignment(self):
        return {self.tp}

    def pause(self, *tps):
        pass

    def paused(self):
        return set()

    def resume(self, *tps):
        pass

    def poll(self, timeout_ms=0):
        return {}

    def commit(self, offsets):
        from kafka.errors import CommitFailedError

        self.commits += 1
        if self.commit_fails:
            raise CommitFailedError("the group has already rebalanced")


def test_commits_failing_in_a_row_are_warned_about_counted_and_fail_readiness(caplog):
    """One commit failing after the write is a rebalance (INFO); several in a row mean the sink rewrites the same
    batch again and again: WARNING lines, a counter, and /readyz failing at the third."""
    from types import SimpleNamespace

    from kafka.structs import TopicPartition

    agent = InfluxSinkAgent(Settings())
    agent.influx._write_api = FakeWriteApi()
    agent._thread, agent.assignment_seen = SimpleNamespace(is_alive=lambda: True), True
    tp = TopicPartition(agent.settings.topic_ecg_synth, 0)
    value, headers = _message(0)
    consumer = FakeConsumer(tp)
    failures_before = _count("sink_commit_failures")
    levels = []
    for _ in range(3):
        assert agent.check_ready()[0]
        caplog.clear()
        with caplog.at_level("INFO", logger="wavebridge.sink"):
            agent._handle(consumer, {tp: [SimpleNamespace(offset=7, value=value, headers=headers)]})
        levels += [r.levelname for r in caplog.records if "commit failed" in r.getMessage()]
    assert levels == ["INFO", "WARNING", "WARNING"]
    assert _count("sink_commit_failures") - failures_before == 3
    ok, detail = agent.check_ready()
    assert not ok and "commits failing (3 in a row)" in detail


def test_points_written_counts_only_the_lines_influx_accepted():
    """wavebridge_influx_points_written_total counts the lines InfluxDB accepted, not those it rejected."""
    from types import SimpleNamespace

    from kafka.structs import TopicPartition

    bad = {f" {T0 + k * 1_000_000_000}" for k in (1, 3)}  # the first sample of messages 1 and 3
    api = FakeWriteApi(error=lambda lines: Status400("type conflict") if any(l[-20:] in bad for l in lines)
                       else None)
    agent = InfluxSinkAgent(Settings(influx_batch_points=64))
    agent.influx._write_api = api
    tp = TopicPartition(agent.settings.topic_ecg_synth, 0)
    records = {tp: [SimpleNamespace(offset=k, value=_message(k)[0], headers=_message(k)[1]) for k in range(4)]}
    written, rejected = _count("influx_points_written"), _count("influx_rejected_lines")
    agent._handle(FakeConsumer(tp, commit_fails=False), records)
    assert len(api.stored) == 4 * N_PER - 2 and _count("influx_rejected_lines") - rejected == 2
    assert _count("influx_points_written") - written == 4 * N_PER - 2


def test_malformed_messages_are_counted_by_reason_and_logged_throttled(caplog):
    """A malformed message on an output topic is counted by topic and reason, its ERROR line throttled."""
    from types import SimpleNamespace

    from kafka.structs import TopicPartition

    api = FakeWriteApi()
    agent = InfluxSinkAgent(Settings(log_repeat_s=60.0))
    agent.influx._write_api = api
    tp = TopicPartition(agent.settings.topic_ecg_synth, 0)
    records = [SimpleNamespace(offset=k, value=b"\x00garbage", headers=[]) for k in range(5)]
    records += [SimpleNamespace(offset=5, value=None, headers=[]),
                SimpleNamespace(offset=6, value=_message(0)[0], headers=_message(0)[1])]
    before = _count("sink_malformed_messages", topic=tp.topic, reason="bad_json")
    consumer = FakeConsumer(tp, commit_fails=False)
    with caplog.at_level("ERROR", logger="wavebridge.sink"):
        agent._handle(consumer, {tp: records})
    assert _count("sink_malformed_messages", topic=tp.topic, reason="bad_json") - before == 5
    assert _count("sink_malformed_messages", topic=tp.topic, reason="bad_encoding") >= 1
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(logged) == 2 and "bad_json" in logged[0] and "bad_encoding" in logged[1]
    assert len(api.stored) == N_PER and consumer.commits == 1  # the good message stored, the batch committed


def _produce(kafka_bootstrap, topic, n_msgs, raw=()):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for k in range(n_msgs):
        value, headers = _message(k)
        producer.send(topic, key=b"bed-0", value=value, headers=headers)
    for value in raw:
        producer.send(topic, key=b"bed-0", value=value)
    producer.flush()
    producer.close(1)


def _wait(predicate, timeout_s):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_a_batch_whose_write_outlasts_the_poll_interval_is_committed_once(kafka_bootstrap, monkeypatch):
    """A batch of many slow (successful) requests outlasting max.poll.interval.ms must not drop the sink from its
    group (its commit would fail and it would rewrite the batch for ever): it stays in and commits once."""
    import kafka

    real = kafka.KafkaConsumer
    monkeypatch.setattr(kafka, "KafkaConsumer", lambda *a, **kw: real(*a, max_poll_interval_ms=3000, **kw))
    api = FakeWriteApi(delay_s=0.35)
    agent = _agent(kafka_bootstrap, api, influx_batch_points=100)
    n_msgs = 16  # 2000 lines: 20 requests of 100 lines, 7 s for one batch
    _produce(kafka_bootstrap, agent.settings.topic_ecg_synth, n_msgs)
    acked = lambda: _count("messages_acked", topic=agent.settings.topic_ecg_synth)  # noqa: E731
    acked_before = acked()
    agent.start()
    try:
        assert _wait(lambda: acked() - acked_before >= n_msgs, 30), "the batch was never committed"
        time.sleep(2)  # a rewrite, if any, would start now
    finally:
        agent.stop()
    assert len(api.stored) == n_msgs * N_PER  # written once
    assert acked() - acked_before == n_msgs and agent.commit_failures == 0


class Outage(ConnectionRefusedError):
    pass


@pytest.mark.integration
def test_consumer_lag_shows_the_batch_held_by_an_influx_outage(kafka_bootstrap):
    """The sink publishes its lag while it retries through an outage, so WavebridgeConsumerLagHigh can fire for the
    sink (published only between batches, it would read 0 throughout)."""
    down = [True]
    api = FakeWriteApi(error=lambda lines: Outage("connection refused") if down[0] else None)
    agent = _agent(kafka_bootstrap, api)
    topic = agent.settings.topic_ecg_synth
    n_msgs = 10
    _produce(kafka_bootstrap, topic, n_msgs)
    lag = lambda: metrics.REGISTRY.get_sample_value("wavebridge_consumer_lag_messages",  # noqa: E731
                                                    {"topic": topic, "partition": "0"})
    agent.start()
    try:
        assert _wait(lambda: api.requests >= 4, 30), "no retries"
        assert lag() == n_msgs
        down[0] = False
        assert _wait(lambda: lag() == 0 and len(api.stored) == n_msgs * N_PER, 30)
    finally:
        agent.stop()
