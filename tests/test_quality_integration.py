"""Quality gating end to end on the real broker: a probe-off PLETH span yields no II_SYNTH samples and no R-peaks
there, a source_unusable event names it, and every event matches docs/events.schema.json."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.support.worker import start_worker
from tests.test_worker_integration import T0, bidmc_recording, consume_all, wait_until, wenv  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCHEMA = json.loads((__import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "events.schema.json").read_text())
OFF_S = (20.0, 35.0)  # probe off: PLETH holds its last value


def test_probe_off_span_publishes_no_synthetic_ecg_and_no_rpeaks(wenv, bidmc_record):
    jsonschema = pytest.importorskip("jsonschema")
    from kafka import KafkaProducer

    from stream import wire
    from stream.tools.publisher import ReplayOptions, replay

    rec = bidmc_recording(bidmc_record(3), 50.0)
    fs = rec.rates["PLETH"]
    ppg = rec.signals["PLETH"].copy()
    a, b = int(OFF_S[0] * fs), int(OFF_S[1] * fs)
    ppg[a:b] = ppg[a]
    rec = replace(rec, signals={**rec.signals, "PLETH": ppg})
    wenv.extra.update({"WAVEBRIDGE_CONTEXT_S": "0", "WAVEBRIDGE_TASKS": "ppg2ecg"})
    wenv.create_topics()
    worker = start_worker(wenv)
    try:
        producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
        try:
            replay([rec], producer,
                   ReplayOptions(topic=wenv.topics["input"], beds=1, speed=0, start_ns=T0, chunk_s=1.0))
        finally:
            producer.close()
        def withheld_points():
            rows = wenv.influx.query("SELECT count(score) FROM quality WHERE usable=false", wenv.db)
            return bool(rows) and (rows[0].get("count") or 0) > 0 or None

        wait_until(withheld_points, 90, "a withheld span in the quality measurement", worker)
        events = [json.loads(m.value) for m in consume_all(wenv.bootstrap, wenv.topics["events"], 15, timeout=20)]
        synth = [wire.decode(m.value) for m in consume_all(wenv.bootstrap, wenv.topics["ecg_synth"], 10, timeout=20)]
    finally:
        worker.stop()
    lo, hi = T0 + int(OFF_S[0] * 1e9), T0 + int(OFF_S[1] * 1e9)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for ev in events:
        validator.validate(ev)
    unusable = [e for e in events if e["type"] == "source_unusable"]
    assert unusable and all(e["reason"] == "probe_off" and e["signal"] == "PLETH" and e["outputs"] == ["II_SYNTH"]
                            for e in unusable), unusable
    covered = sorted((e["time_ns"], e["end_ns"]) for e in unusable)
    assert covered[0][0] <= lo + int(1e9) and covered[-1][1] >= hi - int(1e9)  # the whole span is reported
    # no synthesized sample and no R-peak inside the probe-off span (its edges: the judged span's 1 s margin)
    t = np.concatenate([c.start_ns + np.round(np.arange(len(c.samples)) * 1e9 / c.rate_hz).astype(np.int64)
                        for c in synth])
    assert synth and not np.any((t >= lo) & (t < hi))
    peaks = np.array([p for e in events if e["type"] == "rpeaks" for p in e["peaks_ns"]], dtype=np.int64)
    inside = (peaks >= lo) & (peaks < hi)
    assert len(peaks) > 10 and not inside.any(), ((peaks[inside] - T0) / 1e9, [
        (e["type"], (e["time_ns"] - T0) / 1e9, e.get("quality_flag"), e.get("reason")) for e in events])
    # published chunks say what they are
    assert all(c.meta["synthetic"] is True and c.meta["quality_flag"] in ("good", "degraded") and c.meta["model"]
               for c in synth)
    hr = [e for e in events if e["type"] == "rpeaks" and e["hr_bpm"] is not None]
    assert hr and all(e["quality_flag"] == "good" for e in hr)
