"""The test services themselves: Tansu broker, InfluxDB 1.x behind the v2-write proxy, outage simulation."""
from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_influx_write_through_proxy_with_influxdb_client(influx_up):
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    db = _unique("svc")
    influx_up.create_database(db)
    t0 = 1_700_000_000_000_000_000
    with InfluxDBClient(url=influx_up.url, token=influx_up.token, org=influx_up.org, enable_gzip=True) as client:
        assert client.ping()
        write = client.write_api(write_options=SYNCHRONOUS)
        points = [
            Point("waveform").tag("bed", "bed-001").tag("signal", "II").field("value", float(i)).time(t0 + i * 8_000_000,
                                                                                                     WritePrecision.NS)
            for i in range(50)
        ]
        write.write(bucket=db, record=points, write_precision=WritePrecision.NS)
        # ms precision must be mapped too (v2 "ms" -> v1 "ms"), here via line protocol.
        write.write(bucket=db, record=f"waveform,bed=bed-002,signal=PLETH value=7 {t0 // 1_000_000}",
                    write_precision=WritePrecision.MS)
    rows = influx_up.query("SELECT value, bed, signal FROM waveform WHERE bed='bed-001' ORDER BY time", db)
    assert [r["value"] for r in rows] == [float(i) for i in range(50)]
    assert rows[1]["time"] - rows[0]["time"] == 8_000_000
    assert rows[0]["time"] == t0
    other = influx_up.query("SELECT value FROM waveform WHERE bed='bed-002'", db)
    assert len(other) == 1 and other[0]["time"] == t0 and other[0]["value"] == 7


def test_proxy_passes_v1_errors_back(influx_up):
    db = _unique("svc")
    influx_up.create_database(db)
    bad = urllib.request.Request(f"{influx_up.url}/api/v2/write?org=o&bucket={db}&precision=ns",
                                 data=gzip.compress(b"this is not line protocol"),
                                 headers={"Content-Encoding": "gzip"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(bad, timeout=10)
    assert err.value.code == 400
    assert b"unable to parse" in err.value.read()
    missing_db = urllib.request.Request(f"{influx_up.url}/api/v2/write?org=o&bucket=no_such_db_{uuid.uuid4().hex[:6]}"
                                        "&precision=s", data=b"m v=1 1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(missing_db, timeout=10)
    assert err.value.code == 404


@pytest.mark.parametrize("mode", ["refuse", "503"])
def test_outage_simulation(influx_up, mode):
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    db = _unique("svc")
    influx_up.create_database(db)
    with InfluxDBClient(url=influx_up.url, token=influx_up.token, org=influx_up.org, timeout=3000,
                        retries=False) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        influx_up.set_down(True, mode)
        assert not client.ping()
        with pytest.raises(Exception) as err:
            write.write(bucket=db, record="m,bed=b v=1 1000000000")
        if mode == "503":
            assert getattr(err.value, "status", None) == 503
        influx_up.set_down(False)
        assert client.ping()
        write.write(bucket=db, record="m,bed=b v=2 2000000000")
    assert [r["v"] for r in influx_up.query("SELECT v FROM m", db)] == [2]


def test_tansu_roundtrip(kafka_bootstrap):
    from kafka import KafkaConsumer, KafkaProducer

    from stream.topics import ensure_topics, partition_count
    from tests.conftest import KAFKA_CONSUMER_TEST_KWARGS

    topic = _unique("svc.roundtrip")
    assert ensure_topics(kafka_bootstrap, [topic], partitions=2) == [topic]
    assert ensure_topics(kafka_bootstrap, [topic], partitions=2) == []  # idempotent
    assert partition_count(kafka_bootstrap, topic) == 2
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(20):
        producer.send(topic, key=f"bed-{i % 3}".encode(), value=str(i).encode())
    producer.flush(10)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=_unique("g"),
                             auto_offset_reset="earliest", consumer_timeout_ms=15000, **KAFKA_CONSUMER_TEST_KWARGS)
    got: dict[bytes, list[int]] = {}
    deadline = time.monotonic() + 30
    for msg in consumer:
        got.setdefault(msg.key, []).append(int(msg.value))
        if sum(map(len, got.values())) == 20 or time.monotonic() > deadline:
            break
    consumer.close()
    # Same key -> same partition -> order kept per bed.
    assert got == {f"bed-{b}".encode(): [i for i in range(20) if i % 3 == b] for b in range(3)}


def test_embedded_broker_start_failure_is_clear():
    from stream.tools import embedded

    broker = embedded.EmbeddedBroker(storage_engine="bogus://nowhere/", start_timeout_s=10)
    with pytest.raises(embedded.BrokerError) as err:
        broker.start()
    # The message must say what happened and carry the broker's own output.
    assert "exited" in str(err.value) and "UnsupportedStorageUrl" in str(err.value)
    assert not broker.running


def test_a_broker_on_a_port_in_use_is_refused_not_taken_for_ours(kafka_bootstrap):
    """The readiness check answered from the broker already on the port, 'ready' was printed, and ours then
    exited with 'address in use': topics and data went to another run's broker."""
    from stream.tools import embedded

    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    with pytest.raises(embedded.BrokerError, match="already in use"):
        embedded.EmbeddedBroker(port=port, start_timeout_s=10).start()


def test_service_children_die_with_the_process_that_started_them(tmp_path):
    """A CI timeout's SIGKILL runs no atexit handler, and start_new_session keeps a group kill from reaching the
    broker: it was left running. die_with_parent asks the kernel to end it."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("from stream.tools.embedded import EmbeddedBroker\nimport sys, time\nb = EmbeddedBroker().start()\n"
            "print(b._proc.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    broker_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(broker_pid, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{broker_pid}/stat") as f:  # a zombie awaiting its reaper counts as gone
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(broker_pid, signal.SIGKILL)
    pytest.fail("the broker outlived the process that started it")
