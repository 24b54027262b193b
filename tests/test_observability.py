"""stream.metrics: lag from what the consumer saw, the /metrics, /healthz, /readyz server, and the worker's hooks."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream import metrics
from stream.config import ConfigError, Settings
from tests.test_agents import _App, _Event, _Zeros


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(text: str) -> dict:
    """{(name, sorted label items): value} of a /metrics page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# ------------------------------------------------------------------ lag
def test_lag_on_tansu_ignores_end_offsets_and_is_never_negative():
    """Tansu's fetch responses carry the right high watermark; ListOffsets does not (it is never asked)."""
    lag = metrics.LagTracker()
    tp = ("in", 0)
    lag.assigned([tp])
    assert lag.lag(tp) is None  # nothing fetched, no fetch response: unknown, not 0
    for off in range(100, 110):  # resumed at the committed offset 100
        lag.seen(tp, off)
    assert lag.lag(tp) == 10  # nothing acknowledged: the whole fetched range
    assert lag.lag(tp, highwater=500) == 400  # the fetch response knows of 390 more records
    lag.acked(tp, 104)
    assert lag.lag(tp, highwater=500) == 395
    lag.acked(tp, 499)
    assert lag.lag(tp, highwater=500) == 0
    assert lag.lag(tp, highwater=1) == 0  # a stale or wrong high watermark never makes it negative


def test_lag_of_an_idle_partition_comes_from_the_committed_offset():
    lag = metrics.LagTracker()
    tp = ("in", 1)
    lag.assigned([tp])
    assert lag.lag(tp, highwater=42, committed=42) == 0  # fully consumed, nothing fetched since the assignment
    assert lag.lag(tp, highwater=42, committed=40) == 2
    assert lag.lag(tp, highwater=0) == 0  # empty partition (Faust keeps None for a committed 0)


def test_lag_forgets_partitions_moved_to_another_worker():
    lag = metrics.LagTracker()
    a, b = ("in", 0), ("in", 1)
    lag.assigned([a, b])
    lag.seen(a, 5)
    lag.seen(b, 7)
    lag.assigned([b])
    assert lag.lag(a) is None and lag.lag(b) == 1
    lag.assigned([a])  # back again: starts from the first record fetched now
    lag.seen(a, 20)
    assert lag.lag(a, highwater=30) == 10


def test_each_tracker_publishes_and_removes_only_its_own_series():
    worker, sink = metrics.LagTracker(), metrics.LagTracker()
    a, b, c = ("obs.in", 0), ("obs.in", 1), ("obs.out", 0)
    worker.assigned([a, b])
    sink.assigned([c])
    worker.seen(a, 3)
    assert worker.publish(a, highwater=10) == 7
    assert worker.publish(b) is None  # unknown: no series rather than a made-up 0
    sink.seen(c, 0)
    sink.publish(c, highwater=5)

    def series():
        return {(x.labels["topic"], x.labels["partition"]): x.value
                for fam in metrics.CONSUMER_LAG.collect() for x in fam.samples if x.labels["topic"].startswith("obs.")}

    assert series() == {("obs.in", "0"): 7, ("obs.out", "0"): 5}
    worker.assigned([b])  # partition 0 went to another worker; the sink's series stays
    assert series() == {("obs.out", "0"): 5}
    sink.assigned([])
    assert series() == {}


# ------------------------------------------------------------------ server
def test_server_serves_metrics_health_and_readiness():
    now = [0.0]
    health = metrics.Health(max_silence_s=10.0, clock=lambda: now[0])
    state = {"ok": False}
    health.add_check("sink", lambda: (state["ok"], "detail"))
    health.add_check("broken", lambda: 1 / 0)
    server = metrics.MetricsServer("127.0.0.1", 0, health=health).start()
    try:
        metrics.DEAD_LETTERS.labels("test_reason").inc(3)
        status, body = _get(server.url + "/metrics")
        assert status == 200
        got = _samples(body.decode())
        assert got[("wavebridge_dead_letters_total", (("reason", "test_reason"),))] >= 3
        assert got[("wavebridge_ready", ())] == 0
        assert any(name == "process_resident_memory_bytes" for name, _ in got)

        assert _get(server.url + "/healthz")[0] == 200
        status, body = _get(server.url + "/readyz")
        checks = json.loads(body)["checks"]
        assert status == 503 and checks["sink"] == {"ok": False, "detail": "detail"}
        assert checks["broken"]["ok"] is False and "ZeroDivisionError" in checks["broken"]["detail"]

        del health._checks["broken"]
        state["ok"] = True
        assert _get(server.url + "/readyz")[0] == 200
        now[0] = 11.0  # the event loop stopped beating: neither alive nor ready
        assert _get(server.url + "/healthz")[0] == 503
        assert _get(server.url + "/readyz")[0] == 503
        health.beat()
        assert _get(server.url + "/healthz")[0] == 200
        assert _get(server.url + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_taken_port_fails_at_start():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            metrics.MetricsServer("127.0.0.1", s.getsockname()[1])


@pytest.mark.parametrize("command", [["stream.app", "worker"], ["stream.influxsink"]], ids=["worker", "sink"])
def test_a_taken_metrics_port_stops_worker_and_sink_alike_before_connecting(command):
    import os
    import subprocess
    import sys
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import REPO

    class _AcceptWrites(BaseHTTPRequestHandler):  # the sink's start-up probe: an InfluxDB that accepts the token
        def do_POST(self):
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    influx = ThreadingHTTPServer(("127.0.0.1", 0), _AcceptWrites)
    threading.Thread(target=influx.serve_forever, daemon=True).start()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEBRIDGE_")}
            env.update({"PYTHONPATH": str(REPO), "WAVEBRIDGE_BROKER": "kafka://127.0.0.1:1",
                        "WAVEBRIDGE_TRANSLATOR": "classic", "WAVEBRIDGE_INFLUX_ENABLED": str(command[-1] == "stream.influxsink").lower(),
                        "WAVEBRIDGE_INFLUX_URL": f"http://127.0.0.1:{influx.server_address[1]}",
                        "WAVEBRIDGE_METRICS_PORT": str(port)})
            started = time.monotonic()
            res = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=120)
    finally:
        influx.shutdown()
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    name = "worker" if command[-1] == "worker" else "sink"
    assert len(lines) == 1 and lines[0].startswith(f"wavebridge {name}: configuration error: "), res.stderr
    assert "WAVEBRIDGE_METRICS_HOST/_PORT" in lines[0] and f":{port}" in lines[0], res.stderr
    assert "Kafka" not in res.stderr  # refused before any connection attempt
    assert time.monotonic() - started < 60


def test_metrics_settings():
    s = Settings.from_env({})
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 9108)  # loopback unless asked
    s = Settings.from_env({"WAVEBRIDGE_METRICS_HOST": "0.0.0.0", "WAVEBRIDGE_METRICS_PORT": "0"})
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 0)
    with pytest.raises(ConfigError, match="WAVEBRIDGE_METRICS_PORT"):
        Settings.from_env({"WAVEBRIDGE_METRICS_PORT": "70000"})


# ------------------------------------------------------------------ worker hooks
def _value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def _dead_letters() -> float:
    return sum(s.value for fam in metrics.DEAD_LETTERS.collect() for s in fam.samples if s.name.endswith("_total"))


def test_worker_runtime_counts_what_it_consumes_and_acknowledges():
    from stream.agents import WorkerRuntime

    # no alarm agent here: its hold (54 s) would keep this 10 s stream wholly unacknowledged
    settings = Settings(translator="classic", influx_enabled=False, window_s=8, hop_s=2, tasks=("sr",),
                        topic_input="in", topic_sr="obs.sr", topic_dlq="obs.dlq", alarm_enabled=False)
    m_in, s_in = _value("wavebridge_messages_in_total", topic="in"), _value("wavebridge_samples_in_total", topic="in")
    m_out = _value("wavebridge_messages_out_total", topic="obs.sr")
    acked = _value("wavebridge_messages_acked_total", topic="in")
    windows = _value("wavebridge_model_windows_total", task="sr")
    dlq = _dead_letters()
    bad = _Event(10, 1)
    bad.value = b"\x00garbage"
    events = [_Event(i, 1) for i in range(10)] + [bad]

    async def run():
        rt = WorkerRuntime(_App(), settings, translator=_Zeros())
        await rt.start()
        assert rt.health.ready()[0] is False  # no assignment yet
        rt.assigned({("in", 0)})
        assert rt.health.ready()[0] is True
        await rt.handle_events(events)
        await rt.stop()
        return rt

    rt = asyncio.run(run())
    assert _value("wavebridge_messages_in_total", topic="in") - m_in == 11
    assert _value("wavebridge_samples_in_total", topic="in") - s_in == 10 * 25
    assert _value("wavebridge_model_windows_total", task="sr") - windows >= 1
    assert _value("wavebridge_messages_out_total", topic="obs.sr") - m_out >= 1
    n_acked = sum(e.acked for e in events)
    assert 1 <= n_acked < 11  # the newest window's chunks wait for the next hop
    assert _value("wavebridge_messages_acked_total", topic="in") - acked == n_acked
    assert _dead_letters() - dlq == 1
    assert _value("wavebridge_beds_active") == 1
    # acks leave in offset order: everything after the acknowledged head is lag
    assert rt.lag.lag(("in", 0), highwater=11) == 11 - n_acked


def test_operations_doc_lists_every_event_type_counted():
    """docs/operations.md's `wavebridge_stream_events_total` row names every event type the worker can publish
    (docs/events.schema.json; the worker counts each published event by its type)."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    schema = json.loads((docs / "events.schema.json").read_text())
    row = next(ln for ln in (docs / "operations.md").read_text().splitlines()
               if ln.startswith("| `wavebridge_stream_events_total`"))
    listed = set(re.findall(r"`([a-z_]+)`", row.split("|")[4]))
    assert listed == set(schema["properties"]["type"]["enum"])
