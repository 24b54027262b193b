"""End to end on the real broker: waveform chunks of two beds and their monitors' alarms go in, the worker
SUBPROCESS publishes one verdict per alarm on the verdicts topic (and InfluxDB), and a malformed alarm is
dead-lettered."""
from __future__ import annotations

import json

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
        assert ok["alarm_id"] == "mon-bed-ok" and ok["verdict"] == "false" and ok["keep_alarm"] is False
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


def test_a_graceful_stop_publishes_pending_alarms_judged_early(wenv):
    """A retrospective alarm still waiting for its data when the worker gets SIGTERM is judged by no other worker
    (its offset was committed on receipt): the stop judges it with the data at hand, and its verdict, marked
    `judged_early`, is on the verdicts topic before the producer stops."""
    import jsonschema
    from kafka import KafkaProducer

    from stream.tools.chunker import iter_chunks

    wenv.extra.update({"WAVEBRIDGE_TASKS": "ppg2ecg", "WAVEBRIDGE_ALARM_MODE": "realtime",
                       "WAVEBRIDGE_ALARM_WAIT_S": "30", "WAVEBRIDGE_ALARM_GRACE_S": "20"})
    wenv.create_topics()
    onset_ns = T0 + int(ONSET_S * 1e9)
    worker = start_worker(wenv)
    try:
        producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
        try:
            for c in iter_chunks(_recording(None), "bed-ok", chunk_s=1.0, start_ns=T0):
                producer.send(wenv.topics["input"], key=wire.message_key(c), value=wire.encode_binary(c))
            for mode in ("retrospective", "realtime"):
                alarm = {"bed_id": "bed-ok", "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": mode,
                         "mode": mode}
                producer.send(wenv.topics["alarms"], key=b"bed-ok", value=json.dumps(alarm).encode())
            producer.flush()
        finally:
            producer.close()
        # the real-time verdict shows both alarms were received; the retrospective one waits 30 s past the onset
        wait_until(lambda: len(consume_all(wenv.bootstrap, wenv.topics["verdicts"], 1, timeout=5)) == 1, 120,
                   "the real-time verdict", worker, interval=1.0)
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
