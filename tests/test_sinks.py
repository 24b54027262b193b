"""Sinks: line protocol schema, idempotent overwrite and never-drop retries against a real InfluxDB."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from stream import sinks, wire
from stream.results import OutputSeries, PipelineEvent

T0 = 1_700_000_000_000_000_000


def series(values, kind="synth", bed="bed 1", source="PLETH", rate=125.0, t0=T0):
    values = np.asarray(values, np.float32)
    times = t0 + np.arange(len(values), dtype=np.int64) * int(1e9 / rate)
    return OutputSeries(bed=bed, source_signal=source, kind=kind, model="classic", rate_hz=rate, times_ns=times,
                        values=values, seq=3)


def test_waveform_lines_schema_escaping_and_float32_roundtrip():
    v = np.array([0.1, -1.2345678e-5, np.nan, 3.0], np.float32)
    lines = sinks.output_lines(series(v))
    assert len(lines) == 3  # NaN cannot be stored: skipped
    assert lines[0].startswith(r"waveform,bed=bed\ 1,kind=synth,model=classic,signal=II_SYNTH value=")
    assert lines[0].endswith(f" {T0}")
    back = np.array([float(line.split("value=")[1].split()[0]) for line in lines], np.float32)
    np.testing.assert_array_equal(back, v[[0, 1, 3]])  # bit-exact after float32 rounding
    sr = sinks.output_lines(series([1.0], kind="sr", source="II"))[0]
    assert ",kind=sr," in sr and ",signal=II " in sr


def test_series_lines_match_one_format_per_sample():
    """The whole-series formatting writes the bytes a per-sample `f"{v:.9g} {t}"` writes: NaN/inf skipped, tags
    escaped (a '%' or newline in a tag included), float32 extremes, -0.0 and int64 timestamps near the limit."""
    rng = np.random.default_rng(7)
    v = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-40, 38, 500),
                        [np.nan, np.inf, -np.inf, -0.0, 0.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                         1e-45, -1e-45, 1.0, 123456789.0]]).astype(np.float32)
    t = np.int64(2**63 - 10**12) - np.arange(len(v), dtype=np.int64)[::-1] * 7_999_999
    tags = {"bed": "b 1,x=%d\\", "signal": "II_SYNTH", "kind": "synth", "model": "clmt%s\nz"}
    prefix = f"waveform,{sinks.tag_set(tags)} value="
    ok = np.isfinite(v)
    expected = [f"{prefix}{x:.9g} {int(ti)}" for x, ti in zip(v[ok].tolist(), t[ok].tolist())]
    assert sinks.series_lines("waveform", tags, t, v) == expected
    assert len(expected) == len(v) - 3
    assert sinks.series_lines("waveform", tags, t[:3], np.full(3, np.nan, np.float32)) == []
    assert sinks.series_lines("waveform", tags, t[:0], v[:0]) == []


def test_event_lines_expand_peaks_and_hr():
    ev = PipelineEvent("rpeaks", "A", "II_SYNTH", T0, {"peaks_ns": [T0 + 5, T0 + 900], "hr_bpm": 66.5, "model": "m"})
    lines = sinks.event_lines(ev)
    assert lines[0] == f"rpeak,bed=A,model=m,signal=II_SYNTH value=1i {T0 + 5}"
    assert lines[2].startswith("hr,bed=A,model=m,signal=II_SYNTH bpm=66.5,n_peaks=2i ")
    gap = sinks.event_lines(PipelineEvent("gap", "A", "PLETH", T0, {"end_ns": T0 + 10, "detail": 'x "y"'}))
    assert gap == [rf'stream_event,bed=A,signal=PLETH,type=gap count=1i,detail="x \"y\"",end_ns={T0 + 10}i {T0}']


def test_kafka_payloads():
    out = series([1.0, 2.0], kind="sr", source="PLETH", rate=100.0, bed="bed_1")
    chunk = wire.decode(sinks.encode_output(out, binary=True))
    assert (chunk.signal, chunk.bed_id, chunk.start_ns, chunk.seq, chunk.rate_hz) == ("PLETH_SR", "bed_1", T0, 3, 100.0)
    assert wire.decode(sinks.encode_output(out, binary=False)).samples.tolist() == [1.0, 2.0]
    ev = json.loads(sinks.encode_event(PipelineEvent("rpeaks", "A", "II_SYNTH", T0, {"hr_bpm": float("nan")})))
    assert ev == {"type": "rpeaks", "bed": "A", "signal": "II_SYNTH", "time_ns": T0, "hr_bpm": None}
    h = dict(sinks.dlq_headers("bad_json", "oops", "in", 2, 41))
    assert h["wavebridge.reason"] == b"bad_json" and h["wavebridge.source.offset"] == b"41"


def test_backoff_doubles_to_a_cap():
    d = sinks.Backoff(0.5, 3.0).delays()
    assert [next(d) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_counters_log(caplog):
    c = sinks.ReasonCounters(interval_s=10.0)
    c.add("dlq.bad_json")
    c.add("dlq.bad_json")
    assert not c.maybe_log(now=c._last + 1)
    with caplog.at_level("INFO"):
        assert c.maybe_log(now=c._last + 10)
    assert "dlq.bad_json=2" in caplog.text


@pytest.mark.integration
def test_influx_write_is_idempotent(influx_up):
    influx = influx_up
    influx.create_database("sinks_idem")
    sink = sinks.InfluxSink(influx.url, influx.token, influx.org, "sinks_idem", batch_points=7)
    try:
        s = series(np.arange(20, dtype=np.float32))
        sink.write(sinks.output_lines(s))
        s2 = series(np.arange(20, dtype=np.float32) + 100)  # replay with other values: overwrite
        sink.write(sinks.output_lines(s2))
    finally:
        sink.close()
    rows = influx.query('SELECT value FROM waveform', "sinks_idem")
    assert len(rows) == 20
    assert [r["time"] for r in rows] == s.times_ns.tolist()
    assert [r["value"] for r in rows] == (np.arange(20) + 100).astype(float).tolist()


@pytest.mark.integration
def test_influx_outage_blocks_and_retries_until_stored(influx_up):
    influx = influx_up
    influx.create_database("sinks_outage")
    retries = []
    sink = sinks.InfluxSink(influx.url, influx.token, influx.org, "sinks_outage", timeout_s=2.0,
                            backoff=sinks.Backoff(0.05, 0.2), on_retry=lambda a, e, d: retries.append(a))
    influx.set_down(True)
    done = threading.Event()
    t = threading.Thread(target=lambda: (sink.write(sinks.output_lines(series(np.ones(50)))), done.set()))
    t.start()
    try:
        time.sleep(1.0)
        assert not done.is_set(), "write returned while InfluxDB was down"
        assert len(retries) >= 3
        influx.set_down(False)
        assert done.wait(10), "write did not complete after InfluxDB came back"
    finally:
        influx.set_down(False)
        sink.stop_event.set()
        t.join(10)
        sink.close()
    assert len(influx.query("SELECT value FROM waveform", "sinks_outage")) == 50


@pytest.fixture
def proxy_reset(influx_up):
    yield influx_up
    influx_up.proxy.answer_writes(None)
    influx_up.proxy.reject_whole_batch_if(None)


@pytest.mark.integration
@pytest.mark.parametrize("v2_whole_batch", [False, True], ids=["1.x-partial-write", "2.x-whole-batch"])
def test_rejected_lines_are_isolated_by_splitting_and_every_good_line_is_stored(proxy_reset, v2_whole_batch):
    """InfluxDB 1.x stores the good lines of a batch with a bad one (a partial write, 400); 2.x stores none of it.
    Both must end with every good line stored and only the bad lines reported, never retried forever."""
    influx = proxy_reset
    db = f"sinks_reject_{int(v2_whole_batch)}"
    influx.create_database(db)
    if v2_whole_batch:
        influx.proxy.reject_whole_batch_if(lambda line: "notanumber" in line)
    retries, rejects = [], []
    sink = sinks.InfluxSink(influx.url, influx.token, influx.org, db, timeout_s=2.0, batch_points=1000,
                            backoff=sinks.Backoff(0.05, 0.1), on_retry=lambda a, e, d: retries.append(a),
                            on_reject=lambda e, lines: rejects.append((getattr(e, "status", None), lines)))
    good = sinks.output_lines(series(np.arange(100, dtype=np.float32)))
    bad = ["waveform,bed=a value=notanumber,x 1", "waveform,bed=b value=notanumber,y 2"]
    n_requests = influx.proxy.writes_ok + influx.proxy.writes_failed
    done = threading.Event()
    t = threading.Thread(target=lambda: (sink.write(good[:30] + bad[:1] + good[30:70] + bad[1:] + good[70:]),
                                         done.set()))
    t.start()
    try:
        assert done.wait(20), "write kept retrying a batch InfluxDB refused"
    finally:
        sink.stop_event.set()
        t.join(5)
        sink.close()
    assert sorted(rejects) == [(400, [bad[0]]), (400, [bad[1]])] and retries == [] and sink.rejected_lines == 2
    rows = influx.query("SELECT value FROM waveform", db)
    assert [r["value"] for r in rows] == list(range(100))
    # splitting costs a few requests per bad line (about 2 log2(batch)), not one per line
    assert influx.proxy.writes_ok + influx.proxy.writes_failed - n_requests <= 2 * 2 * 7 + 1


@pytest.mark.integration
@pytest.mark.parametrize("status, variable", [(401, "WAVEBRIDGE_INFLUX_TOKEN"), (403, "WAVEBRIDGE_INFLUX_TOKEN"),
                                              (404, "WAVEBRIDGE_INFLUX_BUCKET")])
def test_refused_token_or_bucket_is_a_configuration_error_not_retried(proxy_reset, status, variable):
    """401/403/404 were retried forever with a warning per attempt: no retry can fix them."""
    influx = proxy_reset
    influx.create_database("sinks_conf")
    influx.proxy.answer_writes(status)
    retries = []
    sink = sinks.InfluxSink(influx.url, influx.token, influx.org, "sinks_conf", timeout_s=2.0,
                            backoff=sinks.Backoff(0.05, 0.1), on_retry=lambda a, e, d: retries.append(a))
    try:
        with pytest.raises(sinks.InfluxConfigError) as err:
            sink.write(sinks.output_lines(series(np.ones(5))))
    finally:
        sink.close()
    assert str(err.value).startswith(variable) and "\n" not in str(err.value) and retries == []
    with pytest.raises(sinks.InfluxConfigError, match=variable):
        sinks.influx_probe(influx.url, influx.token, influx.org, "sinks_conf")


@pytest.mark.integration
def test_probe_accepts_a_writable_bucket_and_reports_an_outage_without_raising(proxy_reset):
    influx = proxy_reset
    influx.create_database("sinks_probe")
    assert sinks.influx_probe(influx.url, influx.token, influx.org, "sinks_probe") is None
    assert len(influx.query("SELECT * FROM waveform", "sinks_probe")) == 0  # the probe stores nothing
    with pytest.raises(sinks.InfluxConfigError, match="WAVEBRIDGE_INFLUX_BUCKET: .*'no_such_db'"):
        sinks.influx_probe(influx.url, influx.token, influx.org, "no_such_db")  # 1.x: database not found, 404
    assert sinks.influx_probe("http://127.0.0.1:9", "t", "o", "b", timeout_s=1.0) is not None


def test_line_series_names_the_series_without_the_values():
    assert sinks.line_series(r"waveform,bed=a\ b,signal=II value=1.5 17") == r"waveform,bed=a\ b,signal=II"


@pytest.mark.integration
def test_blocked_write_aborts_on_stop(influx_up):
    influx = influx_up
    sink = sinks.InfluxSink(influx.url, influx.token, influx.org, "sinks_stop", timeout_s=1.0,
                            backoff=sinks.Backoff(0.05, 0.1), on_retry=lambda *a: None)
    influx.set_down(True)
    errors = []

    def run():
        try:
            sink.write(["waveform,bed=a value=1 1"])
        except sinks.SinkStopped as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    sink.stop_event.set()
    t.join(5)
    influx.set_down(False)
    sink.close()
    assert errors and not t.is_alive()


def test_a_blocked_write_is_given_up_on_abort_and_the_sink_stays_usable():
    """A rebalance must not wait for InfluxDB to come back: abort_event ends the retry loop with WriteAborted
    (the worker carries on; SinkStopped would end it). Nothing listens on port 9 of loopback."""
    sink = sinks.InfluxSink("http://127.0.0.1:9", "t", "o", "b", timeout_s=0.5, backoff=sinks.Backoff(5.0, 5.0),
                            on_retry=lambda *a: None)
    errors = []

    def run():
        try:
            sink.write(["waveform,bed=a value=1 1"])
        except (sinks.WriteAborted, sinks.SinkStopped) as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)  # inside a 5 s back-off
    started = time.monotonic()
    sink.abort_event.set()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 1.0
    assert len(errors) == 1 and isinstance(errors[0], sinks.WriteAborted)
    sink.abort_event.clear()
    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    sink.stop_event.set()  # retrying again until stopped: the abort did not stick
    t.join(5)
    sink.close()
    assert len(errors) == 2 and isinstance(errors[1], sinks.SinkStopped)


class _SlowInflux:
    """A stand-in for influxdb-client's write API: a request of more than `limit` lines times out (stored anyway,
    as InfluxDB does with a request it finishes after the client gave up); after `give_up` requests it sets the
    sink's stop event, so a sink that never progresses ends with SinkStopped instead of hanging the test."""

    def __init__(self, sink, limit, give_up=200):
        self.sink, self.limit, self.give_up = sink, limit, give_up
        self.sizes, self.stored, self.answered = [], [], []

    def write(self, bucket, org, record, write_precision):
        from urllib3.exceptions import ReadTimeoutError

        lines = record.split("\n")
        self.sizes.append(len(lines))
        self.stored += lines
        if len(self.sizes) >= self.give_up:
            self.sink.stop_event.set()
        if len(lines) > self.limit:
            raise ReadTimeoutError(None, "/api/v2/write", "Read timed out. (read timeout=3)")
        self.answered += lines

    def close(self):
        pass


def test_a_request_influx_cannot_answer_in_time_is_resent_in_smaller_ones_that_grow_back():
    """A 20000-line request slower than the timeout would time out for ever (nothing committed, every attempt
    stored anyway): a timeout cuts the request size, answered requests grow it back."""
    from stream.sinks.influx import GROW_AFTER

    retries = []
    sink = sinks.InfluxSink("http://127.0.0.1:9", "t", "o", "b", batch_points=1000, backoff=sinks.Backoff(0.01, 0.01),
                            on_retry=lambda a, e, d: retries.append(d))
    fake = sink._write_api = _SlowInflux(sink, limit=300)
    lines = [f"waveform,bed=a value={i} {i}" for i in range(2500)]
    try:
        assert sink.write(lines) == len(lines)
        assert fake.answered == lines  # every line, in order, once answered
        assert fake.sizes[:3] == [1000, 500, 250] and max(fake.sizes[3:]) <= 500
        # parts queued before a cut go out at the cut size: the only timeouts are the first two and one try to grow
        assert sum(n > fake.limit for n in fake.sizes) == 3
        assert sorted(set(retries)) == [0.0]  # the cuts wait for nothing; each counts as a failed attempt
        assert sink.failures == len(retries) and sink.request_points <= 500
        fake.limit, fake.sizes = 10**6, []  # InfluxDB fast again: the size doubles after GROW_AFTER answers
        sink.write(lines * 4)
        body = fake.sizes[:-1]  # the last request carries the batch's remainder
        assert body == sorted(body) and body.count(500) == GROW_AFTER  # GROW_AFTER answers at a size, then double
        assert sink.request_points == 1000 and fake.sizes[-2] == 1000
    finally:
        sink.close()


def test_the_keep_alive_poll_runs_between_requests_never_after_the_last():
    """A poll after the last request could start a pending rejoin just before the commit and make it fail (the
    batch is then written again): the sink polls between the requests of a batch only."""
    polls = []
    sink = sinks.InfluxSink("http://127.0.0.1:9", "t", "o", "b", batch_points=100,
                            between_requests=lambda: polls.append(len(fake.sizes)))
    fake = sink._write_api = _SlowInflux(sink, limit=10**6)
    try:
        sink.write([f"waveform,bed=a value={i} {i}" for i in range(450)])
    finally:
        sink.close()
    assert fake.sizes == [100, 100, 100, 100, 50] and polls == [1, 2, 3, 4]


def test_a_timeout_at_the_smallest_request_size_is_an_outage_retried_with_back_off():
    delays = []
    sink = sinks.InfluxSink("http://127.0.0.1:9", "t", "o", "b", batch_points=1000, min_request_points=200,
                            backoff=sinks.Backoff(0.01, 0.02), on_retry=lambda a, e, d: delays.append(d))
    fake = sink._write_api = _SlowInflux(sink, limit=0, give_up=12)
    try:
        with pytest.raises(sinks.SinkStopped):
            sink.write([f"waveform,bed=a value={i} {i}" for i in range(1000)])
    finally:
        sink.close()
    assert fake.sizes == [1000, 500, 250] + [200] * 9 and delays[:3] == [0.0, 0.0, 0.0] and min(delays[3:]) > 0


def test_an_oversized_payload_is_dead_lettered_without_its_value():
    small, extra = sinks.dlq_value(b"x" * 10)
    assert small == b"x" * 10 and extra == []
    big, extra = sinks.dlq_value(b"x" * (sinks.DLQ_MAX_VALUE_BYTES + 1))
    assert big == b"" and extra == [("wavebridge.value_dropped_bytes", str(sinks.DLQ_MAX_VALUE_BYTES + 1).encode())]
    assert sinks.dlq_value(None) == (b"", [])


@pytest.mark.parametrize("binary", [True, False])
def test_the_sink_agent_makes_the_same_points_from_the_topics_as_from_the_pipeline(binary):
    """InfluxDB is written from the output and event topics (stream/influxsink.py): a message must give exactly the
    points its OutputSeries / PipelineEvent gives, true timestamps included where the segment grid has a period of
    fractional ns (360 Hz: no chunk grid can reproduce them), NaN staying absent, SR named by its source."""
    from operators.processing.samples import grid_ns
    from stream.influxsink import EVENT, OUTPUT, message_points

    seg = grid_ns(T0 + 7, 360.0, np.arange(1003, 1003 + 720))  # a segment's grid, 1003 samples in
    outs = [series([0.5, np.nan, -2.25, 1e-7, 3.0, 4.0], bed="bed-1"), series(np.linspace(-1, 1, 720), kind="sr", source="II", rate=360.0, bed="bed-2"),
            series([1.0, 2.0], kind="sr", source="PLETH", rate=100.0, bed="bed-3")]
    outs[1] = replace(outs[1], times_ns=seg)
    # a window's quality travels in the message (wire.OUTPUT_META) to its `quality` point
    outs[0] = replace(outs[0], quality=0.5, quality_flag="degraded", reason="flat_ppg", confidence=0.75,
                      context_used=True)
    outs[2] = replace(outs[2], quality=0.9, quality_flag="good", reason="ok")
    for out in outs:
        value = sinks.encode_output(out, binary)
        headers = sinks.output_headers(out)
        assert message_points(OUTPUT, value, headers) == sinks.output_lines(out)
    assert sum(name == sinks.HEADER_TIME_ADJUST for name, _ in sinks.output_headers(outs[1])) == 1
    assert [name for name, _ in sinks.output_headers(outs[0])] == [sinks.HEADER_MODEL]  # on the chunk grid
    assert sum(line.startswith("quality,") for out in outs for line in sinks.output_lines(out)) == 2
    events = [PipelineEvent("rpeaks", "A", "II_SYNTH", T0, {"peaks_ns": [T0 + 5, T0 + 900], "hr_bpm": 66.5,
                                                             "model": "m", "until_ns": T0 + 10**9}),
              PipelineEvent("rpeaks", "A", "II_SYNTH", T0, {"peaks_ns": [], "hr_bpm": float("nan"), "model": "m"}),
              PipelineEvent("gap", "bed 2", "PLETH", T0 + 3, {"end_ns": T0 + 10**9, "detail": 'a "quoted" gap'})]
    for ev in events:
        assert message_points(EVENT, sinks.encode_event(ev), None) == sinks.event_lines(ev)
    with pytest.raises(wire.WireError):
        message_points(OUTPUT, b"{not json", [])


def test_sink_agent_reports_rejected_lines_by_series_without_values_and_throttled(caplog):
    from stream.config import Settings
    from stream.influxsink import InfluxSinkAgent

    agent = InfluxSinkAgent(Settings(), influx=object())
    exc = RuntimeError("partial write: field type conflict")
    with caplog.at_level("ERROR", logger="wavebridge.sink"):
        for v in range(5):
            agent._on_reject(exc, [f"waveform,bed=b1,signal=II value={v + 1234.5} 17"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "waveform,bed=b1,signal=II" in lines[0] and "1234.5" not in lines[0]
    assert agent.counters.counts["influx_rejected"] == 5


def test_results_are_frozen_and_events_keep_the_published_field_order():
    """What the pipeline hands to the sinks cannot be changed by one consumer under the next; an event's message is
    the same bytes whichever constructor made it (docs/events.schema.json's field order)."""
    import dataclasses

    out = series([1.0, 2.0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.seq = 5
    rp = PipelineEvent.rpeaks("A", T0, peaks_ns=np.array([T0 + 5]), hr_bpm=None, model="m", window_start_ns=T0 - 9,
                              until_ns=T0 + 10, quality=0.9, quality_flag="good", confidence=0.8)
    with pytest.raises(TypeError):
        rp.fields["hr_bpm"] = 60.0
    assert sinks.encode_event(rp) == (
        b'{"type":"rpeaks","bed":"A","signal":"II_SYNTH","time_ns":%d,"peaks_ns":[%d],"hr_bpm":null,"model":"m",'
        b'"window_start_ns":%d,"until_ns":%d,"quality":0.9,"quality_flag":"good","confidence":0.8}'
        % (T0, T0 + 5, T0 - 9, T0 + 10))
    bad = PipelineEvent.unusable("source_unusable", "A", "PLETH", T0, T0 + 2, reason="flat", quality=0.1,
                                 quality_flag="unusable", outputs=["II_SYNTH"], window_start_ns=T0 - 1)
    assert sinks.encode_event(bad) == (
        b'{"type":"source_unusable","bed":"A","signal":"PLETH","time_ns":%d,"end_ns":%d,"reason":"flat",'
        b'"quality":0.1,"quality_flag":"unusable","outputs":["II_SYNTH"],"window_start_ns":%d}' % (T0, T0 + 2, T0 - 1))
    gap = PipelineEvent.stream_anomaly("gap", "A", "PLETH", T0, T0 + 3, "3 ns")
    assert sinks.encode_event(gap) == b'{"type":"gap","bed":"A","signal":"PLETH","time_ns":%d,"end_ns":%d,"detail":"3 ns"}' % (
        T0, T0 + 3)
    assert sinks.decode_event(sinks.encode_event(rp)) == dataclasses.replace(rp, fields={**rp.fields, "peaks_ns": [T0 + 5]})
