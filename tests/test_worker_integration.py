"""End to end: BIDMC replay → real Tansu → worker SUBPROCESS → real InfluxDB, compared with the
offline mode over the same chunks. Also: a malformed message is dead-lettered and the worker goes on.

Helpers here are shared with tests/test_worker_crash.py.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from stream.topics import committed_total  # noqa: F401  (shared with tests/test_worker_crash.py)
from tests.conftest import KAFKA_CONSUMER_TEST_KWARGS
from tests.support.worker import SR_TARGET_HZ, WorkerEnv, WorkerProcess, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_750_000_000_000_000_000  # replay start: fixed, so every run writes the same series
DURATION_S = 60.0


def bidmc_recording(path: Path, seconds: float = DURATION_S):
    """bidmc record cut to `seconds` (II + PLETH, chosen by name)."""
    from dataclasses import replace

    from operators.io.records import read_recording

    rec = read_recording(path, ["II", "PLETH"])
    n = int(round(seconds * rec.rates["PLETH"]))
    return replace(rec, signals={k: v[:n] for k, v in rec.signals.items()})


def offline_series(rec, task: str, target_rate: float, signal: str):
    """The offline mode's output for the chunks a replay publishes: (times_ns relative to T0, values)."""
    from stream.tools.offline import translate_recording

    res = translate_recording(rec, task, target_rate=target_rate, translator="classic", signal=signal)
    return res.times_ns, next(iter(res.columns.values()))


def influx_series(influx, db: str, bed: str, signal: str, kind: str):
    rows = influx.query(f"SELECT value FROM waveform WHERE bed='{bed}' AND signal='{signal}' AND kind='{kind}'", db)
    t = np.array([r["time"] for r in rows], dtype=np.int64)
    v = np.array([r["value"] for r in rows], dtype=np.float64)
    return t, v


def count(influx, db: str, measurement: str, where: str = "") -> int:
    """Points in `measurement`: the largest per-field count (a field absent from every point counts null)."""
    rows = influx.query(f"SELECT count(*) FROM {measurement} {where}", db)
    if not rows:
        return 0
    return max((int(v) for k, v in rows[0].items() if k.startswith("count") and v is not None), default=0)


def wait_until(pred, timeout: float, what: str, worker: WorkerProcess | None = None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last is True:
            return
        if worker is not None and not worker.alive():
            pytest.fail(f"worker exited (rc={worker.proc.returncode}) while waiting for {what}:\n{worker.log()[-4000:]}")
        time.sleep(interval)
    tail = worker.log()[-4000:] if worker else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{tail}")


def consume_all(bootstrap: str, topic: str, min_count: int, timeout: float = 20.0, until=None) -> list:
    """At least `min_count` records of `topic` from the start (and, with `until`, until it holds for one of them)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=f"reader-{uuid.uuid4().hex[:6]}", consumer_timeout_ms=2000,
                             **KAFKA_CONSUMER_TEST_KWARGS)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (len(out) < min_count or (until and not any(map(until, out)))):
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def expected_influx_total(rec) -> dict:
    """Per (signal tag, kind): the offline sample counts; the worker must hold exactly these."""
    out = {}
    t, _ = offline_series(rec, "ppg2ecg", SR_TARGET_HZ, "PLETH")
    out[("II_SYNTH", "synth")] = t
    for sig in ("PLETH", "II"):
        t, _ = offline_series(rec, "sr", SR_TARGET_HZ, sig)
        out[(sig, "sr")] = t
    return out


# --------------------------------------------------------------------------------------------
@pytest.fixture
def wenv(kafka_bootstrap, influx_up, tmp_path):
    w = WorkerEnv(kafka_bootstrap, influx_up, db="wb_" + uuid.uuid4().hex[:8], tmp=tmp_path)
    return w


def test_replay_through_worker_matches_offline(wenv, bidmc_record):
    from kafka import KafkaProducer

    from stream.tools.publisher import ReplayOptions, replay

    rec = bidmc_recording(bidmc_record(1))
    # Context off here: translate_recording's default builds none; the worker's context path is compared
    # with the offline mode in test_worker_crash (SIGKILL with the patient context on).
    wenv.extra["WAVEBRIDGE_CONTEXT_S"] = "0"
    wenv.create_topics()
    expected = expected_influx_total(rec)
    off_vals = {
        ("II_SYNTH", "synth"): offline_series(rec, "ppg2ecg", SR_TARGET_HZ, "PLETH")[1],
        ("PLETH", "sr"): offline_series(rec, "sr", SR_TARGET_HZ, "PLETH")[1],
        ("II", "sr"): offline_series(rec, "sr", SR_TARGET_HZ, "II")[1],
    }
    worker = start_worker(wenv)
    try:
        producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
        try:
            # malformed input first: it must be dead-lettered without stopping the worker
            producer.send(wenv.topics["input"], key=b"bed-001", value=b"{not json")
            producer.send(wenv.topics["input"], key=b"bed-002",
                          value=b'{"v":1,"bed_id":"bed-002","signal":"PLETH","rate_hz":-5,"start_ns":1,"seq":0,"samples":[1]}')
            producer.flush()
            stats = replay([rec], producer, ReplayOptions(topic=wenv.topics["input"], beds=2, speed=0, start_ns=T0,
                                                          chunk_s=1.0))
        finally:
            producer.close()
        n_input = stats.chunks + 2
        beds = ("bed-001", "bed-002")
        total = sum(len(t) for t in expected.values()) * len(beds)

        wait_until(lambda: count(wenv.influx, wenv.db, "waveform") == total or count(wenv.influx, wenv.db, "waveform"),
                   90, f"{total} waveform points", worker)
        # everything acknowledged and committed once written
        wait_until(lambda: committed_total(wenv.bootstrap, f"{wenv.prefix}-worker", wenv.topics["input"]) == n_input
                   or committed_total(wenv.bootstrap, f"{wenv.prefix}-worker", wenv.topics["input"]),
                   30, f"committed offsets == {n_input}", worker)
        assert worker.alive()

        for bed in beds:
            for (sig, kind), t_rel in expected.items():
                t, v = influx_series(wenv.influx, wenv.db, bed, sig, kind)
                assert len(t) == len(t_rel), (bed, sig, kind)
                np.testing.assert_array_equal(t, T0 + t_rel)  # exact grid, same samples as offline
                step = int(1e9 / SR_TARGET_HZ)
                assert np.all((t - T0) % step == 0)
                np.testing.assert_allclose(v, off_vals[(sig, kind)], rtol=1e-6, atol=1e-6)

        # R-peaks and HR for both beds, plausible for bidmc01
        for bed in beds:
            n_peaks = count(wenv.influx, wenv.db, "rpeak", f"WHERE bed='{bed}'")
            assert 0.5 * DURATION_S < n_peaks < 3.0 * DURATION_S  # 30..180 bpm
            hr = wenv.influx.query(f"SELECT median(bpm) FROM hr WHERE bed='{bed}'", wenv.db)
            assert hr and 40 < hr[0]["median"] < 160

        # dead letters keep the original payload and say why
        dlq = consume_all(wenv.bootstrap, wenv.topics["dlq"], 2)
        reasons = sorted(dict(m.headers)["wavebridge.reason"].decode() for m in dlq)
        assert reasons == ["bad_json", "bad_rate"]
        assert b"{not json" in [m.value for m in dlq]
        # events topic carries R-peak windows as JSON
        # (quality and gap events share the topic: read on until an R-peak window turns up)
        is_rpeaks = lambda m: b'"type":"rpeaks"' in m.value  # noqa: E731
        events = consume_all(wenv.bootstrap, wenv.topics["events"], 10, timeout=30, until=is_rpeaks)
        assert any(map(is_rpeaks, events))
        # output topics carry the chunks in the wire format
        from stream import wire

        synth = consume_all(wenv.bootstrap, wenv.topics["ecg_synth"], 5, timeout=10)
        assert synth and wire.decode(synth[0].value).signal == "II_SYNTH"

        # latency stats: one line per acknowledged data message (DLQ'd ones are not waveform data)
        import json

        lines = [json.loads(x) for x in (wenv.tmp / "stats.jsonl").read_text().splitlines()]
        assert len(lines) == stats.chunks
        assert all(r["published_ms"] >= r["produce_ms"] > 0 for r in lines)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-3000:]
