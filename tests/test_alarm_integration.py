"""End to end on the real broker: waveform chunks of two beds and their monitors' alarms go in, the worker
SUBPROCESS publishes one verdict per alarm on the verdicts topic (and InfluxDB), and a malformed alarm is
dead-lettered."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from operators.io.records import Recording
from operators.io.synthetic import synthesize
from stream import wire
from tests.conftest import REPO
from tests.support.worker import WorkerEnv, start_worker
from tests.test_worker_integration import T0, consume_all, count, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = 100.0
ONSET_S = 95.0
RATE = 125.0


def _recording(heart_stops_at_s: float | None) -> Recording:
    syn = synthesize(seconds=SECONDS, rate_hz=RATE, seed=11)
    sig = {k: v.copy() for k, v in syn.signals.items()}
    if heart_stops_at_s is not None:  # no QRS, no pulse from here on
        rng = np.random.default_rng(5)
        i = int(heart_stops_at_s * RATE)
        sig["II"][i:] = 0.02 * rng.standard_normal(len(sig["II"]) - i)
        sig["PLETH"][i:] = np.percentile(sig["PLETH"][:i], 10) + 0.003 * rng.standard_normal(len(sig["PLETH"]) - i)
    return Recording(syn.name, sig, {k: RATE for k in sig}, dict(syn.units))


@pytest.fixture
def wenv(kafka_bootstrap, influx_up, tmp_path):
    import uuid

    return WorkerEnv(kafka_bootstrap, influx_up, db="wb_" + uuid.uuid4().hex[:8], tmp=tmp_path)


def test_published_alarms_get_verdicts(wenv):
    import jsonschema
    from kafka import KafkaProducer

    from stream.tools.chunker import iter_chunks

    wenv.extra.update({"WAVEBRIDGE_TASKS": "ppg2ecg", "WAVEBRIDGE_ALARM_MODE": "realtime",
                       "WAVEBRIDGE_ALARM_GRACE_S": "20"})
    wenv.create_topics()
    beds = {"bed-ok": _recording(None), "bed-asys": _recording(ONSET_S - 7.0)}
    onset_ns = T0 + int(ONSET_S * 1e9)
    worker = start_worker(wenv)
    try:
        producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
        try:
            for bed, rec in beds.items():
                for c in iter_chunks(rec, bed, chunk_s=1.0, start_ns=T0):
                    producer.send(wenv.topics["input"], key=wire.message_key(c), value=wire.encode_binary(c))
            for bed in beds:
                alarm = {"bed_id": bed, "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": f"mon-{bed}"}
                producer.send(wenv.topics["alarms"], key=bed.encode(), value=json.dumps(alarm).encode())
            producer.send(wenv.topics["alarms"], key=b"bed-ok", value=b'{"bed_id": "bed-ok", "alarm_type": "afib"}')
            producer.flush()
        finally:
            producer.close()
        got: dict = {}

        def two_verdicts():
            for m in consume_all(wenv.bootstrap, wenv.topics["verdicts"], 2, timeout=5):
                got[m.key.decode()] = json.loads(m.value)
            return len(got) == 2 or sorted(got)

        wait_until(two_verdicts, 120, "a verdict per alarm on the verdicts topic", worker, interval=1.0)
        schema = json.loads((REPO / "docs" / "verdict.schema.json").read_text())
        for msg in got.values():
            jsonschema.validate(msg, schema)
            assert msg["onset_ns"] == onset_ns and msg["mode"] == "realtime"
            assert {c["name"] for c in msg["channels"]} >= {"II", "PLETH", "II_SYNTH"}
        ok, asys = got["bed-ok"], got["bed-asys"]
        assert ok["alarm_id"] == "mon-bed-ok" and ok["verdict"] == "false" and ok["keep_alarm"] is True  # asystole: a person decides
        assert asys["alarm_id"] == "mon-bed-asys" and asys["keep_alarm"] is True and asys["verdict"] != "false"
        # InfluxDB holds one alarm_verdict point per alarm, at its onset
        wait_until(lambda: count(wenv.influx, wenv.db, "alarm_verdict") == 2 or count(wenv.influx, wenv.db, "alarm_verdict"),
                   20, "2 alarm_verdict points", worker)
        rows = wenv.influx.query("SELECT * FROM alarm_verdict", wenv.db)
        assert {(r["bed"], r["verdict"]) for r in rows} == {("bed-ok", "false"), ("bed-asys", asys["verdict"])}
        # the malformed alarm is dead-lettered with its reason
        dlq = consume_all(wenv.bootstrap, wenv.topics["dlq"], 1, timeout=20)
        assert [dict(m.headers)["wavebridge.reason"] for m in dlq] == [b"bad_alarm"]
        assert worker.alive()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-3000:]


def _send(wenv, chunks=(), alarms=()):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
    try:
        for c in chunks:
            producer.send(wenv.topics["input"], key=wire.message_key(c), value=wire.encode_binary(c))
        for alarm in alarms:
            producer.send(wenv.topics["alarms"], key=alarm["bed_id"].encode(), value=json.dumps(alarm).encode())
        producer.flush()
    finally:
        producer.close()


def _verdicts(wenv, n, timeout=5):
    return [json.loads(m.value) for m in consume_all(wenv.bootstrap, wenv.topics["verdicts"], n, timeout=timeout)]


def test_a_graceful_stop_publishes_pending_alarms_judged_early(wenv):
    """A retrospective alarm still waiting for its data when the worker gets SIGTERM would wait for the next worker,
    which may never come: the stop judges it with the data at hand, and its verdict, marked `judged_early`, is on
    the verdicts topic before the producer stops. Its offset is committed: the next worker does not judge it again."""
    import jsonschema

    from stream.tools.chunker import iter_chunks

    wenv.extra.update({"WAVEBRIDGE_TASKS": "ppg2ecg", "WAVEBRIDGE_ALARM_MODE": "realtime",
                       "WAVEBRIDGE_ALARM_WAIT_S": "30", "WAVEBRIDGE_ALARM_GRACE_S": "20"})
    wenv.create_topics()
    onset_ns = T0 + int(ONSET_S * 1e9)
    worker = start_worker(wenv)
    try:
        alarms = [{"bed_id": "bed-ok", "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": mode, "mode": mode}
                  for mode in ("retrospective", "realtime")]
        _send(wenv, iter_chunks(_recording(None), "bed-ok", chunk_s=1.0, start_ns=T0), alarms)
        # the real-time verdict shows both alarms were received; the retrospective one waits 30 s past the onset
        wait_until(lambda: len(_verdicts(wenv, 1)) == 1, 120, "the real-time verdict", worker, interval=1.0)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-3000:]
    got = {json.loads(m.value)["alarm_id"]: json.loads(m.value)
           for m in consume_all(wenv.bootstrap, wenv.topics["verdicts"], 2, timeout=20)}
    assert sorted(got) == ["realtime", "retrospective"], worker.log()[-3000:]
    schema = json.loads((REPO / "docs" / "verdict.schema.json").read_text())
    for msg in got.values():
        jsonschema.validate(msg, schema)
    assert "judged_early" not in got["realtime"]
    retro = got["retrospective"]
    assert retro["judged_early"] == "shutdown" and retro["reason"].startswith("judged early (shutdown): ")
    assert retro["data_until_ns"] < onset_ns + int(30e9) and retro["verdict"] == "false"
    assert "judged 1 pending alarm early" in worker.log()
    # the next worker reads on after both alarms: only the marker sent now gets a verdict
    worker = start_worker(wenv, "worker2")
    try:
        marker = {"bed_id": "bed-ok", "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": "marker"}
        _send(wenv, alarms=[marker])
        wait_until(lambda: len(_verdicts(wenv, 3)) >= 3, 90, "the marker's verdict", worker, interval=1.0)
        time.sleep(2.0)
        assert sorted(v["alarm_id"] for v in _verdicts(wenv, 3)) == ["marker", "realtime", "retrospective"]
    finally:
        worker.stop()


def test_an_alarm_pending_at_a_crash_is_judged_by_the_restarted_worker(wenv):
    """SIGKILL while a retrospective alarm waits for its data: its offset was not acknowledged (nor that of the
    real-time alarm after it, judged already), so the restarted worker reads both again, refills its ring from the
    input it re-reads, and publishes the retrospective verdict, judged on time. The real-time one comes twice (at
    least once: readers deduplicate on alarm_id + mode)."""
    import jsonschema

    from stream.tools.chunker import iter_chunks

    # no idle flush: as for a bed that keeps sending, the input the patient context and windows hold stays
    # unacknowledged, so the restarted worker re-reads the seconds before the onset into its ring
    wenv.extra.update({"WAVEBRIDGE_TASKS": "ppg2ecg", "WAVEBRIDGE_ALARM_MODE": "realtime",
                       "WAVEBRIDGE_ALARM_WAIT_S": "30", "WAVEBRIDGE_ALARM_GRACE_S": "20",
                       "WAVEBRIDGE_IDLE_FLUSH_S": "600", "WAVEBRIDGE_BED_EVICT_S": "0"})
    wenv.create_topics()
    onset_s = 60.0
    onset_ns = T0 + int(onset_s * 1e9)
    chunks = list(iter_chunks(_recording(None), "bed-ok", chunk_s=1.0, start_ns=T0))
    first = [c for c in chunks if c.start_ns < T0 + int((onset_s + 10) * 1e9)]
    alarms = [{"bed_id": "bed-ok", "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": mode, "mode": mode}
              for mode in ("retrospective", "realtime")]
    worker = start_worker(wenv)
    try:
        _send(wenv, first, alarms)
        # the real-time verdict shows both alarms were received; the retrospective one needs data to 30 s past the onset
        wait_until(lambda: len(_verdicts(wenv, 1)) == 1, 120, "the real-time verdict", worker, interval=1.0)
    finally:
        worker.kill()
    _send(wenv, [c for c in chunks if c not in first])
    worker = start_worker(wenv, "worker2")
    try:
        wait_until(lambda: "retrospective" in {v["alarm_id"] for v in _verdicts(wenv, 2)}, 120,
                   "the retrospective verdict after the restart", worker, interval=1.0)
    finally:
        worker.stop()
    got = _verdicts(wenv, 3)
    schema = json.loads((REPO / "docs" / "verdict.schema.json").read_text())
    for msg in got:
        jsonschema.validate(msg, schema)
    retro = [v for v in got if v["alarm_id"] == "retrospective"]
    assert len(retro) == 1 and "judged_early" not in retro[0], got
    assert retro[0]["data_until_ns"] >= onset_ns + int(30e9) and retro[0]["verdict"] == "false", json.dumps(retro)[:3000]
    assert [v["alarm_id"] for v in got].count("realtime") == 2


def test_alarms_pending_at_a_rebalance_are_judged_on_every_partition(wenv):
    """A second worker joins while retrospective alarms wait for their data on every partition of the alarms topic.
    The first worker drops its pending alarms at the revoke, and whoever holds each partition afterwards must read
    them again. Faust rewinds a partition the worker keeps only to a committed offset above 0 (stream/rewind.py), and
    the alarms topic has none before its first verdict: a kept partition went on past its alarms, which got no
    verdict while the worker ran (the soak: three beds' alarms, until the worker stopped three minutes later). The
    alarms here come before the rebalance; the soak's came during it, when Faust drops a fetch's records and seeks
    back to the committed offsets (stream/rewind.py)."""
    from kafka.partitioner.default import murmur2

    from stream.tools.chunker import iter_chunks

    wenv.extra.update({"WAVEBRIDGE_TASKS": "ppg2ecg", "WAVEBRIDGE_ALARM_MODE": "retrospective",
                       "WAVEBRIDGE_ALARM_WAIT_S": "20", "WAVEBRIDGE_ALARM_GRACE_S": "60",
                       "WAVEBRIDGE_COUNTERS_LOG_S": "1", "WAVEBRIDGE_IDLE_FLUSH_S": "600", "WAVEBRIDGE_BED_EVICT_S": "0"})
    wenv.create_topics(partitions=4)
    beds, seen = [], set()
    for i in range(64):  # one bed per partition, as the producer's partitioner places them
        p = (murmur2(f"bed-{i}".encode()) & 0x7fffffff) % 4
        if p not in seen:
            seen.add(p)
            beds.append(f"bed-{i}")
    assert len(beds) == 4
    onset_s = 50.0
    onset_ns = T0 + int(onset_s * 1e9)
    rec = _recording(None)
    chunks = {b: list(iter_chunks(rec, b, chunk_s=1.0, start_ns=T0)) for b in beds}
    before = [c for b in beds for c in chunks[b] if c.start_ns < onset_ns + int(2e9)]
    after = [c for b in beds for c in chunks[b] if onset_ns + int(2e9) <= c.start_ns < onset_ns + int(25e9)]
    alarms = [{"bed_id": b, "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": f"a-{b}"} for b in beds]
    workers = [start_worker(wenv, "worker-1")]
    try:
        _send(wenv, before, alarms)
        wait_until(lambda: "alarm_received=4" in workers[0].log(), 90, "the 4 alarms received", workers[0])
        workers.append(start_worker(wenv, "worker-2"))
        wait_until(lambda: workers[1].log().count("Worker ready") >= 1 and "Executing _on_partitions_assigned"
                   in workers[0].log().split("alarm_received=4", 1)[1], 90, "the rebalance", workers[1])
        _send(wenv, after)  # the retrospective wait's data: due wherever the alarms are held now
        got: dict = {}

        def every_alarm():
            got.update((v["alarm_id"], v) for v in _verdicts(wenv, 4, timeout=10))
            return set(got) == {a["alarm_id"] for a in alarms} or sorted(got)

        wait_until(every_alarm, 90, "a verdict per alarm", workers[0], interval=1.0)
        assert all(v["verdict"] == "false" and "judged_early" not in v for v in got.values()), got
        assert "without a committed offset read from their first message" in workers[0].log()
    finally:
        for w in workers:
            w.stop()
