"""Pipeline core: windows → one batched translate call → exactly-once emission on true timestamps,
events for anomalies, and token release only once a chunk's samples are all emitted."""
from __future__ import annotations

import numpy as np
import pytest

from operators.io.synthetic import synthesize
from operators.translator import PairedContext, output_length
from operators.processing.samples import grid_ns
from operators.vocab import SYNTH_ECG
from stream.pipeline import Pipeline, PipelineConfig
from stream.wire import Chunk

T0 = 1_700_000_000_000_000_000


class RecordingTranslator:
    """Deterministic fake: same-rate = 2*x; other rates = linear interpolation. Records calls."""

    name = "fake"

    def __init__(self):
        self.calls: list[list] = []

    def translate(self, requests):
        self.calls.append(list(requests))
        outs = []
        for r in requests:
            n = r.n_out
            if r.target_rate == r.source_rate:
                outs.append((2.0 * r.source).astype(np.float32))
            else:
                t_in = np.arange(len(r.source)) / r.source_rate
                t_out = np.arange(n) / r.target_rate
                outs.append(np.interp(t_out, t_in, r.source).astype(np.float32))
        return outs


def chunks(x, rate, bed="A", signal="PLETH", chunk_s=1.0, t0=T0, seq0=0, **kw):
    n = int(round(chunk_s * rate))
    out = []
    for i, a in enumerate(range(0, len(x), n)):
        out.append(Chunk(bed, signal, rate, int(grid_ns(t0, rate, a)), seq0 + i, np.asarray(x[a:a + n], np.float32), **kw))
    return out


def run_all(pipe: Pipeline, cks, tokens=True, batch: int | None = 1):
    """Push `cks` in order (each with the token (bed, signal, seq) unless not `tokens`), process after every `batch`
    of them (None: once, after all), then flush and process again; the BatchResults."""
    results = []
    step = batch or max(1, len(cks))
    for i in range(0, len(cks), step):
        for c in cks[i:i + step]:
            pipe.push(c, token=(c.bed_id, c.signal, c.seq) if tokens else None)
        results.append(pipe.process())
    pipe.flush_all()
    results.append(pipe.process())
    return results


def collect(results, bed=None, kind=None):
    outs = [o for r in results for o in r.outputs if (bed is None or o.bed == bed) and (kind is None or o.kind == kind)]
    if not outs:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate([o.times_ns for o in outs]), np.concatenate([o.values for o in outs])


def cfg(**kw):
    # quality=False: these tests check windowing, timestamps and acknowledgements with ramps, constants and sines,
    # which quality gating would rightly withhold as flat or pulseless; gating has its own tests below.
    base = dict(window_s=8.0, hop_s=2.0, tasks=("ppg2ecg", "sr"), sr_target_hz=100.0, sr_below_hz=100.0, context_s=0.0,
                lookahead_s=0.0, quality=False)
    base.update(kw)
    return PipelineConfig(**base)


def test_every_sample_emitted_once_on_its_true_timestamp():
    rate = 125.0
    x = np.sin(np.arange(int(37.3 * rate)) / 7.0).astype(np.float32)  # not a whole number of hops
    pipe = Pipeline(cfg(), RecordingTranslator())
    res = run_all(pipe, chunks(x, rate, chunk_s=0.64))
    t, v = collect(res, kind="synth")
    assert len(t) == len(x)
    np.testing.assert_array_equal(t, grid_ns(T0, rate, np.arange(len(x))))
    np.testing.assert_array_equal(v, 2.0 * x)  # each sample comes from the window that first emitted it
    assert all(o.source_signal == "PLETH" and o.topic_signal == SYNTH_ECG for r in res for o in r.outputs)


def test_super_resolution_output_grid_and_count():
    rate = 25.0
    x = np.cos(np.arange(int(30 * rate)) / 3.0).astype(np.float32)
    pipe = Pipeline(cfg(tasks=("sr",)), RecordingTranslator())
    res = run_all(pipe, chunks(x, rate, signal="II"))
    t, v = collect(res, kind="sr")
    assert len(t) == output_length(len(x), rate, 100.0)
    np.testing.assert_array_equal(t, T0 + np.arange(len(t)) * 10_000_000)  # 100 Hz grid, exact
    assert {o.topic_signal for r in res for o in r.outputs} == {"II_SR"}
    assert {o.influx_signal for r in res for o in r.outputs} == {"II"}


def test_slow_ppg_goes_to_both_tasks_and_fast_ecg_to_none():
    pipe = Pipeline(cfg(), RecordingTranslator())
    assert pipe.routes("PLETH", 62.5) == [("ppg2ecg", 100.0), ("sr", 100.0)]
    assert pipe.routes("PLETH", 125.0) == [("ppg2ecg", 125.0)]
    assert pipe.routes("II", 125.0) == []
    assert pipe.routes("II", 50.0) == [("sr", 100.0)]
    # the model and the confidence know ECG leads and PLETH only: a slow RESP or ABP is not super-resolved
    assert pipe.routes("V", 50.0) == [("sr", 100.0)]
    assert pipe.routes("RESP", 25.0) == [] and pipe.routes("ABP", 62.5) == []
    assert Pipeline(cfg(sr_signals=("RESP",)), RecordingTranslator()).routes("RESP", 25.0) == [("sr", 100.0)]
    # An unrouted signal produces nothing, and its message is immediately acknowledgeable.
    pipe.push(Chunk("A", "II", 125.0, T0, 0, np.zeros(125, np.float32)), token="ii-0")
    r = pipe.process()
    assert r.outputs == [] and r.completed == ["ii-0"]


def test_windows_of_many_beds_are_translated_in_one_call():
    rate = 125.0
    tr = RecordingTranslator()
    pipe = Pipeline(cfg(), tr)
    x = np.ones(int(8 * rate), np.float32)
    for bed in ("A", "B", "C"):
        pipe.push(Chunk(bed, "PLETH", rate, T0, 0, x), token=bed)
    r = pipe.process()
    assert len(tr.calls) == 1
    assert sorted(req.meta["bed"] for req in tr.calls[0]) == ["A", "B", "C"]
    assert sorted(r.completed) == ["A", "B", "C"]


def test_tokens_released_only_when_all_samples_emitted():
    rate = 125.0
    x = np.arange(int(12 * rate), dtype=np.float32)
    pipe = Pipeline(cfg(), RecordingTranslator())
    cks = chunks(x, rate, chunk_s=1.0)
    released = []
    for c in cks:
        pipe.push(c, token=c.seq)
        released += pipe.process().completed
    # first window covers [0, 8 s), then hops at 10 s, 12 s: chunks 0..9 done; 10, 11 wait for the hop at 12 s
    # ... which the 12th chunk completes, so everything is released by data alone here.
    assert released == list(range(12))
    pipe.push(Chunk("A", "PLETH", rate, int(grid_ns(T0, rate, 12 * 125)), 12, np.ones(125, np.float32)), token=12)
    assert pipe.process().completed == []  # 1 s of a 2 s hop: not emitted yet
    pipe.flush_all()
    r = pipe.process()
    assert r.completed == [12]
    assert r.outputs[0].times_ns[-1] == grid_ns(T0, rate, 13 * 125 - 1)


def test_gap_becomes_event_and_is_never_spliced():
    rate = 125.0
    x = np.random.default_rng(0).normal(size=int(20 * rate)).astype(np.float32)
    cks = chunks(x, rate)
    later = [Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns + 5_000_000_000, c.seq + 100, c.samples) for c in cks[10:]]
    pipe = Pipeline(cfg(), RecordingTranslator())
    res = run_all(pipe, cks[:10] + later)
    gaps = [e for r in res for e in r.events if e.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].time_ns == cks[10].start_ns
    t, v = collect(res, kind="synth")
    assert len(t) == len(x) and len(np.unique(t)) == len(t)
    in_gap = (t >= cks[10].start_ns) & (t < cks[10].start_ns + 5_000_000_000)
    assert not in_gap.any()
    np.testing.assert_array_equal(v, 2 * x)


def test_duplicate_and_out_of_order_chunks_are_rejected_not_emitted_twice():
    rate = 125.0
    x = np.arange(int(10 * rate), dtype=np.float32)
    cks = chunks(x, rate)
    pipe = Pipeline(cfg(), RecordingTranslator())
    feed = cks[:5] + [cks[3]] + cks[5:]
    rejected, events = [], []
    for i, c in enumerate(feed):
        pipe.push(c, token=("tok", i))
        r = pipe.process()
        rejected += r.rejected
        events += r.events
    pipe.flush_all()
    r = pipe.process()
    assert [(rj.token, rj.reason) for rj in rejected] == [(("tok", 5), "duplicate")]
    assert any(e.kind == "duplicate" for e in events)


def test_idle_flush_uses_the_clock():
    now = [0.0]
    pipe = Pipeline(cfg(idle_flush_s=3.0), RecordingTranslator(), clock=lambda: now[0])
    pipe.push(Chunk("A", "PLETH", 125.0, T0, 0, np.ones(250, np.float32)), token="t")
    assert pipe.process().completed == []
    now[0] = 2.9
    assert pipe.flush_idle() == 0
    now[0] = 3.0
    assert pipe.flush_idle() == 1
    r = pipe.process()
    assert r.completed == ["t"] and sum(len(o.values) for o in r.outputs) == 250
    assert pipe.flush_idle() == 0  # nothing new since


class SineTranslator:
    """Returns the true signal sin(2 pi f (t - t0)) at each output sample's time: whatever the pipeline then does
    to the values and timestamps is what the test sees."""

    name = "sine"

    def __init__(self, t0, f=1.1):
        self.t0, self.f = t0, f

    def translate(self, requests):
        return [np.sin(2 * np.pi * self.f * ((r.meta["start_ns"] - self.t0) / 1e9 + np.arange(r.n_out) / r.target_rate))
                .astype(np.float32) for r in requests]


@pytest.mark.parametrize("rate, hop_s", [(62.5, 2.0), (62.5, 1.0), (40.0, 2.0)])
def test_outputs_at_a_non_integer_ratio_share_one_grid_across_flushes_and_restarts(rate, hop_s):
    """62.5 or 40 Hz in, 100 Hz out: each window's output grid used to start at the window's own start, so a
    flush mid-stream or a 1 s hop (62 samples at 62.5 Hz) gave uneven spacing, and a re-run from a later chunk
    published other timestamps (duplicates in InfluxDB instead of overwrites)."""
    t0 = T0 + 3_000_000  # the input grid does not sit on the 10 ms output grid either
    x = np.zeros(int(40 * rate))
    cks = chunks(x, rate, t0=t0)
    pipe = Pipeline(cfg(tasks=("sr",), hop_s=hop_s), SineTranslator(t0))
    results = []
    for c in cks[:17]:
        pipe.push(c)
        results.append(pipe.process())
    pipe.flush_all()  # an idle flush mid-stream; the stream then resumes contiguously
    results += run_all(pipe, cks[17:], tokens=False)
    times, values = collect(results, kind="sr")
    assert np.all(times % 10_000_000 == 0) and np.all(np.diff(times) == 10_000_000)
    assert times[0] >= t0 and abs(len(times) - len(x) / rate * 100) <= 1
    truth = np.sin(2 * np.pi * 1.1 * (times - t0) / 1e9)
    assert np.max(np.abs(values - truth)) < 1e-3  # the values moved with their timestamps
    rerun = Pipeline(cfg(tasks=("sr",), hop_s=hop_s), SineTranslator(t0))
    again, _ = collect(run_all(rerun, cks[3:], tokens=False), kind="sr")
    assert len(again) and set(again.tolist()) <= set(times.tolist())  # a re-run overwrites, never adds


def test_rpeaks_reported_once_each_with_absolute_times():
    """A fake ppg2ecg that returns the true ECG for the window's span: every R-peak of the
    recording must be reported exactly once despite the 4x window overlap."""
    rec = synthesize(seconds=60.0, seed=3)
    rate = rec.rate_hz
    ecg = rec.signals["II"]

    class TrueEcg:
        name = "true-ecg"

        def translate(self, requests):
            out = []
            for r in requests:
                i0 = int(round((r.meta["start_ns"] - T0) * rate / 1e9))
                out.append(ecg[i0:i0 + len(r.source)].astype(np.float32))
            return out

    pipe = Pipeline(cfg(), TrueEcg())
    res = run_all(pipe, chunks(rec.signals["PLETH"], rate, chunk_s=0.5))
    ev = [e for r in res for e in r.events if e.kind == "rpeaks"]
    peaks = np.array([p for e in ev for p in e.fields["peaks_ns"]], dtype=np.int64)
    assert len(np.unique(peaks)) == len(peaks)
    truth = grid_ns(T0, rate, rec.r_peaks[rec.r_peaks < len(ecg)])
    # each true beat matched by one reported peak within 20 ms
    d = np.abs(peaks[:, None] - truth[None, :]).min(axis=0)
    assert np.mean(d <= 20_000_000) > 0.97
    assert len(peaks) <= len(truth) + 1
    hrs = [e.fields["hr_bpm"] for e in ev if e.fields["hr_bpm"] is not None]
    assert hrs and 55 < np.median(hrs) < 90


def test_context_provider_is_attached_to_ppg2ecg_and_ecg_sr():
    ctx = PairedContext(np.zeros(100, np.float32), np.zeros(100, np.float32), 125.0)
    tr = RecordingTranslator()
    pipe = Pipeline(cfg(sr_below_hz=200.0, sr_target_hz=250.0), tr, context_provider=lambda bed: ctx)
    pipe.push(Chunk("A", "PLETH", 125.0, T0, 0, np.ones(1000, np.float32)))
    pipe.push(Chunk("A", "II", 25.0, T0, 0, np.ones(200, np.float32)))
    pipe.process()
    by_task = {(r.task, r.source_signal): r for call in tr.calls for r in call}
    assert by_task[("ppg2ecg", "PLETH")].context is ctx and by_task[("sr", "II")].context is ctx
    assert by_task[("sr", "PLETH")].context is None  # a pulse has no QRS to borrow


def test_stream_memory_never_gives_ecg_sr_a_context():
    """A bed's own context store holds the ECG at whatever rate it arrives (here 25 Hz, upsampled): no high band."""
    rec = synthesize(seconds=30.0, seed=2)
    tr = RecordingTranslator()
    pipe = Pipeline(cfg(context_s=10.0, tasks=("ppg2ecg", "sr")), tr)
    ecg25 = rec.signals["II"][:: int(round(rec.rate_hz / 25))]
    feed = sorted(chunks(rec.signals["PLETH"], rec.rate_hz) + chunks(ecg25, 25.0, signal="II"),
                  key=lambda c: (c.end_ns(), c.signal))
    run_all(pipe, feed, tokens=False)
    sr_ecg = [r for call in tr.calls for r in call if r.task == "sr" and r.source_signal == "II"]
    assert sr_ecg and all(r.context is None for r in sr_ecg)


def test_reset_returns_pending_tokens():
    pipe = Pipeline(cfg(), RecordingTranslator())
    pipe.push(Chunk("A", "PLETH", 125.0, T0, 0, np.ones(250, np.float32)), token="a")
    assert pipe.reset() == ["a"]
    pipe.push(Chunk("A", "PLETH", 125.0, T0, 0, np.ones(250, np.float32)), token="b")  # no duplicate after reset
    assert pipe.process().rejected == []


def test_bed_with_ecg_and_ppg_gets_its_own_paired_context():
    rec = synthesize(seconds=40.0, seed=5)
    rate = rec.rate_hz
    tr = RecordingTranslator()
    pipe = Pipeline(cfg(context_s=10.0), tr)
    feed = sorted(chunks(rec.signals["PLETH"], rate, bed="A") + chunks(rec.signals["II"], rate, bed="A", signal="II")
                  + chunks(rec.signals["PLETH"], rate, bed="B"), key=lambda c: (c.end_ns(), c.bed_id, c.signal))
    run_all(pipe, feed, tokens=False)
    reqs = [r for call in tr.calls for r in call if r.task == "ppg2ecg"]
    late_a = [r for r in reqs if r.meta["bed"] == "A" and r.meta["start_ns"] >= T0 + 20 * 10**9]
    assert late_a and all(r.context is not None and len(r.context.ecg) == int(10 * rate) for r in late_a)
    assert all(r.context is None for r in reqs if r.meta["bed"] == "B")


def test_slow_ppg_bed_gets_a_context_with_its_full_rate_ecg():
    """25 Hz PPG + 125 Hz lead II: the PPG->ECG context keeps the ECG at 125 Hz (its QRS), not at the PPG's rate."""
    from operators.processing.resample import decimate_to

    rec = synthesize(seconds=40.0, seed=5)
    rate = rec.rate_hz
    ecg = rec.signals["II"]
    tr = RecordingTranslator()
    pipe = Pipeline(cfg(context_s=10.0, tasks=("ppg2ecg",)), tr)
    feed = sorted(chunks(decimate_to(rec.signals["PLETH"], rate, 25.0), 25.0) + chunks(ecg, rate, signal="II"),
                  key=lambda c: (c.end_ns(), c.signal))
    run_all(pipe, feed, tokens=False)
    ctxs = [r.context for call in tr.calls for r in call if r.context is not None]
    assert ctxs and all(c.rate_hz == rate and len(c.ecg) == int(10 * rate) for c in ctxs)
    assert np.ptp(ctxs[-1].ecg) == pytest.approx(np.ptp(ecg[int(5 * rate):]), rel=0.1)  # the QRS as measured


class ContextTranslator(RecordingTranslator):
    """2*x plus a number drawn from the request's context: outputs differ whenever the contexts do."""

    def translate(self, requests):
        outs = super().translate(requests)
        return [y if r.context is None else y + np.float32(np.sum(r.context.ecg) + 3.0 * np.sum(r.context.ppg))
                for r, y in zip(requests, outs)]


def test_synthesized_ecg_with_context_does_not_depend_on_batch_timing():
    """Issue 17: with the bed's own context on, two runs over the same input published different II_SYNTH, because the
    context was re-selected from whatever lead II and PLETH had arrived when a batch was translated. Here one run
    translates after every chunk, the other in batches of 7 chunks with each batch's lead II pushed first."""
    rec = synthesize(seconds=60.0, seed=5)
    rate = rec.rate_hz
    feed = sorted(chunks(rec.signals["PLETH"], rate) + chunks(rec.signals["II"], rate, signal="II"),
                  key=lambda c: (c.end_ns(), c.signal))

    def run(batch):
        tr = ContextTranslator()
        pipe = Pipeline(cfg(context_s=10.0, tasks=("ppg2ecg",)), tr)
        ii_first = [c for i in range(0, len(feed), batch)
                    for c in sorted(feed[i:i + batch], key=lambda c: c.signal != "II")]
        results = run_all(pipe, ii_first, tokens=False, batch=batch)
        used = sum(r.context is not None for call in tr.calls for r in call)
        return collect(results, kind="synth"), used

    (t1, v1), used1 = run(1)
    (t2, v2), used2 = run(7)
    assert used1 >= 20 and used2 >= 20
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(v1, v2)


def test_offline_translate_builds_the_context_the_worker_builds():
    """`wavebridge translate` without --context gives PPG->ECG the context the worker builds from the same chunks
    (the record's own lead II and PLETH), whatever the worker's batches."""
    from stream.tools.offline import iter_source_chunks, translate_recording

    rec = synthesize(seconds=60.0, seed=5)
    off = translate_recording(rec, "ppg2ecg", translator=ContextTranslator(), context_s=10.0)
    plain = translate_recording(rec, "ppg2ecg", translator=ContextTranslator())
    assert not np.allclose(off.columns["ecg_ii"], plain.columns["ecg_ii"])  # the context was used
    tr = ContextTranslator()
    pipe = Pipeline(PipelineConfig(context_s=10.0, tasks=("ppg2ecg",)), tr)  # the worker's defaults
    results = run_all(pipe, list(iter_source_chunks(rec, ["PLETH", "II"], 1.0, bed="A")), tokens=False, batch=5)
    outs = [o for r in results for o in r.outputs + r.withheld]
    t = np.concatenate([o.times_ns for o in outs])
    v = np.concatenate([o.values for o in outs])[np.argsort(t, kind="stable")]
    np.testing.assert_array_equal(np.sort(t), off.times_ns)
    np.testing.assert_array_equal(v, off.columns["ecg_ii"])


# ------------------------------------------------------------------ settings (stream/config.py)
def test_settings_from_env_and_pipeline_config(tmp_path):
    from stream.config import Settings

    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = Settings.from_env({
        "WAVEBRIDGE_BROKER": "kafka://a:9092, kafka://b:9093", "WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "WAVEBRIDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "WAVEBRIDGE_KAFKA_SASL_USERNAME": "u",
        "WAVEBRIDGE_KAFKA_SASL_PASSWORD_FILE": str(secret), "WAVEBRIDGE_WINDOW_S": "10", "WAVEBRIDGE_HOP_S": "2.5",
        "WAVEBRIDGE_TASKS": "sr", "WAVEBRIDGE_INFLUX_ENABLED": "no", "WAVEBRIDGE_WITHOUT_WEB": "1", "WAVEBRIDGE_TOPIC_DLQ": "",
    })
    assert s.bootstrap_servers == ["a:9092", "b:9093"] and s.faust_broker == "kafka://a:9092;b:9093"
    assert s.sasl_password == "s3cret" and "s3cret" not in repr(s)
    assert s.kafka_client_kwargs()["sasl_plain_password"] == "s3cret"
    assert s.topic_dlq == "wavebridge.dlq"  # empty = unset
    assert (s.influx_enabled, s.without_web, s.tasks) == (False, True, ("sr",))
    pc = PipelineConfig.from_settings(s)
    assert (pc.window_s, pc.hop_s, pc.tasks) == (10.0, 2.5, ("sr",))


@pytest.mark.parametrize("env, needle", [
    ({"WAVEBRIDGE_HOP_S": "9"}, "WAVEBRIDGE_HOP_S"),
    ({"WAVEBRIDGE_BATCH_SIZE": "many"}, "WAVEBRIDGE_BATCH_SIZE='many'"),
    ({"WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL": "TLS"}, "WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL"),
    ({"WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs a username"),
    ({"WAVEBRIDGE_TASKS": "ppg2ecg,denoise"}, "unknown task 'denoise'"),
    ({"WAVEBRIDGE_DEVICE": "tpu"}, "WAVEBRIDGE_DEVICE"),
    ({"WAVEBRIDGE_SR_BELOW_HZ": "200"}, "SR_BELOW_HZ"),
    ({"WAVEBRIDGE_INFLUX_TOKEN": "a", "WAVEBRIDGE_INFLUX_TOKEN_FILE": "/x"}, "only one of"),
    ({"WAVEBRIDGE_INFLUX_TOKEN_FILE": "/nonexistent/token"}, "cannot read"),
    ({"WAVEBRIDGE_HEARTBEAT_S": "10", "WAVEBRIDGE_SESSION_TIMEOUT_S": "6"}, "below the session timeout"),
    ({"WAVEBRIDGE_WITHOUT_WEB": "maybe"}, "not a boolean"),
])
def test_settings_reject_bad_values_with_the_variable_name(env, needle):
    from stream.config import ConfigError, Settings

    with pytest.raises(ConfigError, match=None) as err:
        Settings.from_env(env)
    assert needle in str(err.value)


def test_ppg_lookahead_holds_back_edge_but_emits_every_sample_once():
    rate = 125.0
    rng = np.random.default_rng(5)
    x = rng.standard_normal(int(37.3 * rate)).astype(np.float32)
    pipe = Pipeline(cfg(tasks=("ppg2ecg",), lookahead_s=1.0), RecordingTranslator())
    res = []
    for i, c in enumerate(chunks(x, rate)):
        pipe.push(c, token=i)
        r = pipe.process()
        res.append(r)
        t, _ = collect(res, kind="synth")
        if len(t):  # never emitted closer than the look-ahead to the newest input sample
            newest = c.start_ns + int(round((len(c.samples) - 1) * 1e9 / rate))
            assert t.max() <= newest - int(0.99e9)
    # the tail held back as look-ahead keeps its chunks unacknowledged until flushed
    assert len([tok for r in res for tok in r.completed]) < i + 1
    pipe.flush_all()
    res.append(pipe.process())
    t, _ = collect(res, kind="synth")
    assert len(t) == len(x) and len(np.unique(t)) == len(t)
    np.testing.assert_array_equal(t, T0 + np.round(np.arange(len(x)) * 1e9 / rate).astype(np.int64))
    done = [tok for r in res for tok in r.completed]
    assert sorted(done) == list(range(len(done))) and len(done) == i + 1


def test_outputs_carry_the_model_of_their_own_task():
    """With one translator per task, InfluxDB's model tag names the one that made each series."""
    from operators.translator import TaskRouter

    class Named(RecordingTranslator):
        def __init__(self, name):
            super().__init__()
            self.name = name

    rate = 125.0
    x = np.sin(np.arange(int(20 * rate)) / 7.0).astype(np.float32)
    pipe = Pipeline(cfg(), TaskRouter({"ppg2ecg": Named("m-synth"), "sr": Named("m-sr")}))
    res = run_all(pipe, chunks(x, rate) + chunks(x[::5], 25.0, bed="B"))
    models = {(o.bed, o.kind): o.model for r in res for o in r.outputs}
    assert models == {("A", "synth"): "m-synth", ("B", "synth"): "m-synth", ("B", "sr"): "m-sr"}
    assert {e.fields["model"] for r in res for e in r.events if e.kind == "rpeaks"} == {"m-synth"}

    # a translator that hands some requests to another method says so per request (`method_for`), and those
    # outputs carry that method's name, the others its own
    class Resampling(Named):
        def method_for(self, request):
            return "polyphase" if request.source_rate >= 25.0 else None

    pipe = Pipeline(cfg(), TaskRouter({"ppg2ecg": Named("m-synth"), "sr": Resampling("m-sr")}))
    res = run_all(pipe, chunks(x[::5], 25.0, bed="B") + chunks(x[::10], 12.5, bed="C"))
    models = {(o.bed, o.kind): o.model for r in res for o in r.outputs}
    assert models == {("B", "synth"): "m-synth", ("B", "sr"): "polyphase", ("C", "synth"): "m-synth", ("C", "sr"): "m-sr"}


# ---------------------------------------------------------------- quality gating
OFF_S = (14.0, 26.0)


def _probe_off_chunks(seconds=40.0):
    rec = synthesize(seconds=seconds, seed=4)
    ppg = rec.signals["PLETH"].copy()
    a, b = int(OFF_S[0] * rec.rate_hz), int(OFF_S[1] * rec.rate_hz)
    ppg[a:b] = ppg[a]
    return chunks(ppg, rec.rate_hz)


def _run_gated(cks, per_chunk: bool):
    from operators.translator import load_translator

    pipe = Pipeline(cfg(quality=True, tasks=("ppg2ecg",), lookahead_s=1.0), load_translator("classic"))
    return run_all(pipe, cks, tokens=False, batch=1 if per_chunk else None)


@pytest.mark.parametrize("per_chunk", [True, False], ids=["batch-per-chunk", "one-batch"])
def test_probe_off_span_is_withheld_with_an_event_and_no_rpeaks(per_chunk):
    """A flat PPG (probe off) is never translated into a flat II_SYNTH or beats: its span has no published
    samples and no R-peaks (also when clean windows after it are in the same batch), it is withheld as NaN, and
    source_unusable events cover it."""
    results = _run_gated(_probe_off_chunks(), per_chunk)
    lo, hi = T0 + int(OFF_S[0] * 1e9), T0 + int(OFF_S[1] * 1e9)
    t, v = collect(results, kind="synth")
    assert len(t) and not np.any((t >= lo) & (t < hi)) and np.isfinite(v).all()
    withheld = [o for r in results for o in r.withheld]
    tw = np.concatenate([o.times_ns for o in withheld])
    assert all(not o.usable and np.isnan(o.values).all() and o.quality_flag == "unusable" for o in withheld)
    assert tw.min() <= lo + int(1e9) and tw.max() >= hi - int(1e9)
    assert len(np.intersect1d(t, tw)) == 0 and len(t) + len(tw) == int(40.0 * 125)  # every sample once
    events = [e for r in results for e in r.events]
    unusable = [e for e in events if e.kind == "source_unusable"]
    assert unusable and {(e.signal, e.fields["reason"]) for e in unusable} == {("PLETH", "probe_off")}
    assert all(e.fields["outputs"] == [SYNTH_ECG] for e in unusable)
    peaks = np.array([p for e in events if e.kind == "rpeaks" for p in e.fields["peaks_ns"]])
    assert len(peaks) > 20 and not np.any((peaks >= lo) & (peaks < hi))
    rp = [e for e in events if e.kind == "rpeaks"]
    assert all(e.fields["quality_flag"] in ("good", "degraded") and 0 <= e.fields["confidence"] <= 1 for e in rp)
    assert all(e.fields["hr_bpm"] is None for e in rp if e.fields["quality_flag"] != "good" or e.fields["confidence"] < 0.7)
    published = [o for r in results for o in r.outputs]
    assert all(o.synthetic and o.quality_flag in ("good", "degraded") and o.confidence is not None for o in published)


def test_clean_input_is_published_whole_and_good():
    """Gating keeps clean input: every sample published, every window good with a heart rate."""
    rec = synthesize(seconds=40.0, seed=4)
    results = _run_gated(chunks(rec.signals["PLETH"], rec.rate_hz), per_chunk=False)
    t, _ = collect(results, kind="synth")
    assert len(t) == len(rec.signals["PLETH"]) and not [o for r in results for o in r.withheld]
    rp = [e for r in results for e in r.events if e.kind == "rpeaks"]
    assert rp and sum(e.fields["quality_flag"] == "good" for e in rp) >= len(rp) - 1  # the flushed tail may not be
    assert all(abs(e.fields["hr_bpm"] - 72) < 15 for e in rp if e.fields["hr_bpm"] is not None)


class DoublingTranslator:
    """The classic translator's output plus a copy of it 0.31 s later: two beats per pulse, as when a tall
    synthesized T wave is taken for a beat."""

    name = "doubling"

    def __init__(self):
        from operators.translator import load_translator

        self.inner = load_translator("classic")

    def translate(self, requests):
        out = []
        for r, y in zip(requests, self.inner.translate(requests)):
            k = int(0.31 * r.target_rate)
            z = y - np.median(y)
            out.append((y + np.concatenate([np.zeros(k, np.float32), z[:-k]])).astype(np.float32))
        return out


def test_beats_far_from_the_source_pulse_rate_carry_no_heart_rate_and_no_confidence():
    """Synthesized beats at twice the PLETH's pulse rate are not the pulses they were drawn from: their peaks are
    still reported, but no heart rate, and the window (event and output chunk) has confidence 0, since its peaks
    cannot all be right; through the classic translator the same windows carry the pulse's rate and a confidence."""
    rec = synthesize(seconds=40.0, seed=4)
    rp, outs = {}, {}
    for name, tr in (("doubling", DoublingTranslator()), ("classic", None)):
        from operators.translator import load_translator

        pipe = Pipeline(cfg(quality=True, tasks=("ppg2ecg",), lookahead_s=1.0), tr or load_translator("classic"))
        results = run_all(pipe, chunks(rec.signals["PLETH"], rec.rate_hz), tokens=False)
        rp[name] = [e for r in results for e in r.events if e.kind == "rpeaks"]
        outs[name] = [o for r in results for o in r.outputs]
    doubled = rp["doubling"]
    assert doubled and sum(len(e.fields["peaks_ns"]) for e in doubled) > 1.6 * sum(len(e.fields["peaks_ns"])
                                                                                  for e in rp["classic"])
    assert sum(e.fields["quality_flag"] == "good" for e in doubled) >= len(doubled) - 1  # judged good all the same
    assert all(e.fields["hr_bpm"] is None for e in doubled)
    zero = [e for e in doubled if e.fields["confidence"] == 0.0]
    assert len(zero) >= len(doubled) - 1
    # the output chunk of each such window says the same
    assert {o.times_ns[0] for o in outs["doubling"] if o.confidence == 0.0} == {e.time_ns for e in zero}
    # the classic run's windows that are confident enough to carry a heart rate carry the right one
    rates = [e.fields["hr_bpm"] for e in rp["classic"] if e.fields["hr_bpm"] is not None]
    assert len(rates) >= 8 and all(70 < hr < 77 for hr in rates), rates
    assert all(e.fields["confidence"] > 0.5 for e in rp["classic"])
    assert [o.confidence for o in outs["classic"]] == [e.fields["confidence"] for e in rp["classic"]]


@pytest.mark.parametrize("rate", [62.5, 125.0])
def test_an_output_off_its_sources_grid_is_judged_on_as_long_a_span_as_its_source(rate):
    """62.5 Hz PLETH goes out at 100 Hz on the absolute grid, where a window's emitted part can be a sample short of
    2 s: its output must be judged on 4 s, as its source is, not graded too_short (which withheld the flushed tail
    as output_unusable and kept every window from good, so no heart rate was ever published)."""
    rec = synthesize(seconds=40.0, seed=4, rate_hz=rate)
    results = _run_gated(chunks(rec.signals["PLETH"], rate), per_chunk=False)
    out_rate = 100.0 if rate < 100 else rate
    t, _ = collect(results, kind="synth")
    assert len(t) == int(40.0 * out_rate)  # every sample, the flushed tail too
    events = [e for r in results for e in r.events]
    assert not [e for e in events if e.kind in ("output_unusable", "source_unusable")]
    outs = [o for r in results for o in r.outputs]
    assert all(o.quality_flag == "good" for o in outs), {(o.quality_flag, o.reason) for o in outs}
    hr = [e.fields["hr_bpm"] for e in events if e.kind == "rpeaks" and e.fields["hr_bpm"] is not None]
    assert len(hr) >= len(outs) // 2 and all(abs(h - 72) < 15 for h in hr)


def _frozen_from(x, rate, a_s, b_s, chunk_s=1.0):
    """`x` with [a_s, b_s) made of the chunk at a_s sent again and again (a frozen monitor)."""
    y, n = x.copy(), int(round(chunk_s * rate))
    a, b = int(a_s * rate), int(b_s * rate)
    for k in range(a + n, b, n):
        y[k:min(k + n, b)] = y[a:a + min(n, b - k)]
    return y


@pytest.mark.parametrize("fault", ["frozen", "inverted"])
def test_a_frozen_or_upside_down_ppg_publishes_no_beats_and_no_heart_rate(fault):
    """A monitor re-sending one chunk for 20 s looks like a steady pulse (before: every window good, a heart rate
    from the repeated beats); a PPG sent upside down too (before: good, confident, every R-peak a fraction of a beat
    late). Both spans are withheld with their reason: no II_SYNTH samples, no R-peaks, no heart rate there."""
    rec = synthesize(seconds=40.0, seed=4)
    fs, ppg = rec.rate_hz, rec.signals["PLETH"].astype(np.float64)
    lo_s, hi_s = 10.0, 30.0
    if fault == "frozen":
        ppg = _frozen_from(ppg, fs, lo_s, hi_s)
    else:
        ppg[int(lo_s * fs):int(hi_s * fs)] *= -1
    results = _run_gated(chunks(ppg, fs), per_chunk=False)
    inner = T0 + int((lo_s + 2.0) * 1e9), T0 + int((hi_s - 1.0) * 1e9)  # the judged spans wholly inside the fault
    t, _ = collect(results, kind="synth")
    assert len(t) and not np.any((t >= inner[0]) & (t < inner[1]))
    events = [e for r in results for e in r.events]
    inside = [e for e in events if e.kind == "source_unusable" and inner[0] <= e.time_ns < inner[1]]
    assert inside and {e.fields["reason"] for e in inside} == {fault}  # (its edges, half turned, may read as motion)
    rp = [e for e in events if e.kind == "rpeaks"]
    peaks = np.array([p for e in rp for p in e.fields["peaks_ns"]])
    assert len(peaks) > 10 and not np.any((peaks >= inner[0]) & (peaks < inner[1]))
    assert all(e.fields["hr_bpm"] is None for e in rp if inner[0] - int(2e9) <= e.time_ns < inner[1])


def test_a_failed_translation_is_withheld_as_output_unusable():
    """A translator returning a flat line for a clean PPG: not published; output_unusable names the output."""
    rec = synthesize(seconds=20.0, seed=4)
    pipe = Pipeline(cfg(quality=True, tasks=("ppg2ecg",)), type("Flat", (), {
        "name": "flat", "translate": lambda self, reqs: [np.full(r.n_out, 0.38, np.float32) for r in reqs]})())
    results = run_all(pipe, chunks(rec.signals["PLETH"], rec.rate_hz), tokens=False)
    assert not [o for r in results for o in r.outputs]
    ev = [e for r in results for e in r.events if e.kind == "output_unusable"]
    assert ev and all(e.signal == SYNTH_ECG and e.fields["reason"] == "flat" for e in ev)
    assert not [e for r in results for e in r.events if e.kind == "rpeaks"]  # no beats from a flat line


def test_events_match_the_published_schema():
    """Every event the pipeline emits (R-peaks, withheld spans, gaps) validates against docs/events.schema.json,
    once encoded as the worker publishes it."""
    import json
    from pathlib import Path

    jsonschema = pytest.importorskip("jsonschema")
    from stream.sinks import encode_event

    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "events.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    cks = _probe_off_chunks()
    gap = [Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns + 3_000_000_000, c.seq, c.samples) for c in cks[30:]]
    events = [e for r in _run_gated(cks[:30] + gap, per_chunk=True) for e in r.events]
    assert {e.kind for e in events} >= {"rpeaks", "source_unusable", "gap"}
    for ev in events:
        validator.validate(json.loads(encode_event(ev)))
    bad = json.loads(encode_event(next(e for e in events if e.kind == "source_unusable")))
    bad["reason"] = "bad_luck"
    assert not validator.is_valid(bad)


def test_a_bed_silent_past_the_eviction_time_is_forgotten_and_can_start_again():
    """Idle beds keep window overlap and patient context (~50 KB each) until evicted: a hospital's bed churn must
    not grow a worker without bound. Eviction waits until the bed's tail is flushed and its tokens released."""
    now = [0.0]
    pipe = Pipeline(cfg(idle_flush_s=3.0, bed_evict_s=60.0, context_s=10.0), RecordingTranslator(),
                    clock=lambda: now[0])
    ones = np.ones(125, np.float32)
    for seq in range(13):  # 13 s: the last second waits for the flush
        for bed in ("A", "B"):
            pipe.push(Chunk(bed, "PLETH", 125.0, T0 + seq * 10**9, seq, ones), token=(bed, seq))
            pipe.push(Chunk(bed, "II", 125.0, T0 + seq * 10**9, seq, ones))
    pipe.process()
    now[0] = 59.0
    pipe.push(Chunk("B", "PLETH", 125.0, T0 + 13 * 10**9, 13, ones), token=("B", 13))
    assert pipe.flush_idle() == 1  # A's tail: flushed, not yet released
    pipe.flush_idle(now=61.0)
    assert {k[0] for k in pipe._streams} == {"A", "B"}  # A's flushed windows are still to be processed
    done = pipe.process().completed
    assert ("A", 12) in done
    now[0] = 61.0
    pipe.flush_idle()
    assert {k[0] for k in pipe._streams} == {"B"} and set(pipe._contexts._stores) == {"B"}
    assert not any(k[0] == "A" for k in pipe._seq)
    pipe.push(Chunk("A", "PLETH", 125.0, T0 + 3 * 10**9, 3, ones), token=("A", 3))  # back, from an older seq
    assert pipe.process().rejected == []
    # A stream this pipeline evicted starts anew, head included, though its seq says continuation (a seq > 0 first
    # chunk is otherwise a mid-stream resume whose head someone else emitted): nothing of it goes unpublished.
    back = [pipe.process()] + run_all(pipe, [Chunk("A", "PLETH", 125.0, T0 + k * 10**9, k, ones) for k in range(4, 13)])
    t, _ = collect(back, bed="A", kind="synth")
    np.testing.assert_array_equal(np.sort(t), grid_ns(T0 + 3 * 10**9, 125.0, np.arange(10 * 125)))


def test_the_worker_keeps_a_window_of_input_unacknowledged_for_the_next_owner():
    """With ack_lag_s = window a chunk is completed only once its stream has received a whole window after it, so a
    new owner after a rebalance re-consumes the data of every window not yet emitted (a lone look-ahead tail of 1 s
    was withheld as too short by the quality gate, and the next window was computed on other data). A flush
    releases everything."""
    pipe = Pipeline(cfg(lookahead_s=1.0, ack_lag_s=8.0, tasks=("ppg2ecg",)), RecordingTranslator())
    done, emitted = [], []
    for seq in range(20):  # 1 s chunks: windows end at 8, 10, ... 20 s and emit up to 1 s before their end
        pipe.push(Chunk("A", "PLETH", 125.0, T0 + seq * 10**9, seq, np.ones(125, np.float32)), token=seq)
        res = pipe.process()
        done += res.completed
        emitted += res.emitted
    # received up to 20 s: chunks ending at or before 20 - 8 = 12 s are done, the later windows' data is not
    assert done == list(range(12))
    assert emitted == list(range(19))  # each reported once, when its samples are out (latency records)
    pipe.flush_all()
    res = pipe.process()
    assert res.completed == list(range(12, 20)) and res.emitted == [19]


def _landed(results) -> dict:
    """What a run leaves in InfluxDB, by series: later writes of a timestamp overwrite earlier ones."""
    out: dict = {}
    for r in results:
        for o in r.outputs:
            out.setdefault(("wave", o.bed, o.topic_signal), {}).update(zip(o.times_ns.tolist(), o.values.tolist()))
        for e in r.events:
            if e.kind == "rpeaks":
                out.setdefault(("rpeak", e.bed), {}).update((int(p), 1.0) for p in e.fields["peaks_ns"])
                if e.fields["hr_bpm"] is not None:
                    out.setdefault(("hr", e.bed), {})[e.time_ns] = e.fields["hr_bpm"]
            else:
                out.setdefault(("event", e.bed, e.signal, e.kind), {})[e.time_ns] = repr(sorted(e.fields.items()))
    return out


def _merge(*runs: dict) -> dict:
    out: dict = {}
    for run in runs:
        for key, series in run.items():
            out.setdefault(key, {}).update(series)
    return out


def _killed_and_resumed(conf, msgs, kill_at: int) -> tuple[dict, int]:
    """A worker killed after `kill_at` messages of one partition and a fresh one resuming at the committed offset (the
    contiguous prefix of completed messages): what they land together, and that offset."""
    from operators.translator import load_translator

    old, completed = Pipeline(conf, load_translator("classic")), set()
    before = []
    for offset, c in enumerate(msgs[:kill_at]):
        old.push(c, token=offset)
        before.append(old.process())
        completed.update(before[-1].completed)
    committed = next(o for o in range(len(msgs) + 1) if o not in completed)
    after = run_all(Pipeline(conf, load_translator("classic")), msgs[committed:])
    return _merge(_landed(before), _landed(after)), committed


def _partition(seconds: float = 48.0):
    """Two beds' lead II and PLETH (125 Hz, 1 s chunks) interleaved as in one Kafka partition; bed B has a 3 s gap
    (its seq goes on) and starts 2.5 s late, off the hop grid."""
    msgs = []
    for bed, seed, t0 in (("A", 5, T0), ("B", 6, T0 + 2_500_000_000)):
        rec = synthesize(seconds=seconds, seed=seed)
        for sig in ("II", "PLETH"):
            cks = chunks(rec.signals[sig], rec.rate_hz, bed=bed, signal=sig, t0=t0)
            if bed == "B":
                cks = [c if c.seq < 20 else Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns + 3 * 10**9, c.seq, c.samples)
                       for c in cks]
            msgs += [(c.start_ns, bed, sig, c) for c in cks]
    return [c for *_, c in sorted(msgs, key=lambda m: m[:3])]


def test_a_new_owner_resuming_at_the_committed_offset_gives_the_uninterrupted_outputs():
    """A worker killed at any message and a fresh one resuming from the committed offset (ack_lag_s = window) must
    land exactly what an uninterrupted run lands: every waveform value, R-peak, heart rate and event. Windows were
    anchored at the first chunk a process saw, so the new owner re-translated the re-consumed stretch on other
    windows (other values, R-peaks and heart rates; 2306 mismatches in a 2-bed soak run)."""
    from operators.translator import load_translator

    conf = cfg(quality=True, lookahead_s=1.0, ack_lag_s=8.0, sr_target_hz=250.0, sr_below_hz=200.0)
    msgs = _partition()
    reference = _landed(run_all(Pipeline(conf, load_translator("classic")), msgs))
    assert sum(len(v) for k, v in reference.items() if k[0] == "rpeak") > 50 and ("hr", "B") in reference
    assert any(k[0] == "event" and k[3] == "gap" for k in reference)
    for kill_at in (5, 23, 40, 61, 88, 133, 150, 171):
        landed, committed = _killed_and_resumed(conf, msgs, kill_at)
        assert committed < kill_at  # something is re-consumed
        assert landed.keys() == reference.keys(), kill_at
        for key in reference:
            assert landed[key] == reference[key], (kill_at, key)


def test_a_new_owner_resuming_with_the_patient_context_gives_the_uninterrupted_outputs():
    """Issue 17: with the patient context on, a killed worker's beds got another synthesized ECG (and R-peaks, heart
    rates) on the new owner for 8-25 s: the context is decided from the input before each grid point, and the new
    owner only had the input from its resume point. The worker's configuration (`PipelineConfig.from_settings`)
    keeps enough input uncommitted, and a resumed stream re-reads it into the context only, so the new owner lands
    exactly the uninterrupted run's outputs. Bed A's lead II is noise for 150 s: its windows get the last good context
    (found 30 s before, so its input stays uncommitted) for CONTEXT_FALLBACK_S, then none."""
    from dataclasses import replace

    from operators.translator import load_translator
    from stream.config import Settings

    seconds = 240.0
    conf = replace(PipelineConfig.from_settings(Settings(context_s=10.0, sr_target_hz=250.0, sr_below_hz=200.0)),
                   tasks=("ppg2ecg",))
    msgs = []
    for bed, seed, t0 in (("A", 5, T0), ("B", 6, T0 + 2_500_000_000)):
        rec = synthesize(seconds=seconds, seed=seed)
        ii = rec.signals["II"].copy()
        if bed == "A":
            ii[40 * 125:190 * 125] += 2.0 * np.random.default_rng(3).standard_normal(150 * 125).astype(np.float32)
        for sig, x in (("II", ii), ("PLETH", rec.signals["PLETH"])):
            msgs += [(c.start_ns, bed, sig, c) for c in chunks(x, rec.rate_hz, bed=bed, signal=sig, t0=t0)]
    msgs = [c for *_, c in sorted(msgs, key=lambda m: m[:3])]
    ref_results = run_all(Pipeline(conf, load_translator("classic")), msgs)
    reference = _landed(ref_results)
    assert sum(len(v) for k, v in reference.items() if k[0] == "rpeak") > 200
    used = {round((o.times_ns[0] - T0) / 1e9): o.context_used for r in ref_results for o in r.outputs if o.bed == "A"}
    assert all(used[t] for t in range(81, 180, 2)) and not any(used[t] for t in range(191, 202, 2))  # fallback, none
    for kill_at in (240, 560, 920):  # 60, 140 and 230 s in: bed A before its lead-off, in its fallback, after
        landed, committed = _killed_and_resumed(conf, msgs, kill_at)
        assert 0 < committed < kill_at  # a mid-stream resume: something was committed, something is re-consumed
        if kill_at == 560:  # not 140 - 43 s: bed A's last good context, found at 60 s from data since 30 s, holds it
            assert msgs[committed].start_ns <= T0 + 30 * 10**9
        assert landed.keys() == reference.keys(), kill_at
        for key in reference:
            bad = sorted((t - T0) / 1e9 for t in reference[key] if landed[key].get(t) != reference[key][t])
            assert not bad, (kill_at, key, len(bad), bad[:3])


def test_a_new_owner_re_reads_the_analysis_window_of_the_alarms_pending_at_a_takeover():
    """The alarm agent judges an alarm from the ring that the worker's accepted chunks fill. With the patient context
    off, the commit rule kept one window (8 s) of input, so a worker taking a bed over had 8 s before an alarm pending
    at the takeover and judged it `uncertain` where the uninterrupted worker said `false` (37 of 160 verdicts in a
    10-run soak). The worker's configuration keeps PRE_S + ALARM_WAIT_S uncommitted with the agent on: the new
    owner's ring then holds the whole analysis window of a real-time alarm at the takeover and of a retrospective
    one whose onset was ALARM_WAIT_S before it, and judges both as the old owner would have. A bed sending nothing
    to translate (lead II at 125 Hz, no PLETH) had each chunk committed at once: nothing of it was re-read."""
    from operators.processing.alarms import PRE_S
    from operators.translator import load_translator
    from stream.alarms import AlarmJudge, AlarmMessage, SignalRing
    from stream.config import Settings

    settings = Settings(context_s=0.0)
    conf = PipelineConfig.from_settings(settings)
    rec = synthesize(seconds=150.0, seed=5)

    def verdicts(msgs_read, kill_ns):
        ring = SignalRing(settings.alarm_buffer_s, clock=lambda: 0.0)
        for c in msgs_read:
            if c.end_ns() <= kill_ns + settings.alarm_wait_s * 10**9:
                ring.add(c)
        judge = AlarmJudge(ring, wait_s=settings.alarm_wait_s)
        judge.submit(AlarmMessage("A", "asystole", kill_ns, "rt"), now=0.0)
        judge.submit(AlarmMessage("A", "asystole", kill_ns - int(settings.alarm_wait_s * 10**9), "retro",
                                  mode="retrospective"), now=0.0)
        msgs = {p.alarm.alarm_id: judge.judge(p) for p in judge.due(now=100.0)}
        return {k: (m["verdict"], m["confidence"], [(c["name"], c["quality"], c["hr_bpm"], c["beats_s"])
                                                      for c in m["channels"]]) for k, m in msgs.items()}

    # II + PLETH, and lead II alone (its PLETH probe off: no task routes a 125 Hz lead II, so nothing held it)
    ii_pleth = sorted((c for sig in ("II", "PLETH") for c in chunks(rec.signals[sig], rec.rate_hz, signal=sig)),
                      key=lambda c: (c.start_ns, c.signal))
    ii_only = chunks(rec.signals["II"], rec.rate_hz, signal="II")
    for msgs, kill_at in ((ii_pleth, 200), (ii_pleth, 260), (ii_only, 100), (ii_only, 130)):  # 100 s, 130 s read
        old, completed = Pipeline(conf, load_translator("passthrough")), set()
        for offset, c in enumerate(msgs[:kill_at]):
            old.push(c, token=offset)
            completed.update(old.process().completed)
        committed = next(o for o in range(len(msgs) + 1) if o not in completed)
        kill_ns = msgs[kill_at - 1].end_ns()
        assert msgs[committed].start_ns <= kill_ns - (PRE_S + settings.alarm_wait_s) * 10**9
        reference = verdicts(msgs, kill_ns)
        assert all(v[2] and all(c[2] for c in v[2]) for v in reference.values())  # every channel with a heart rate
        if msgs is ii_pleth:
            assert {k: v[0] for k, v in reference.items()} == {"rt": "false", "retro": "false"}
        assert verdicts(msgs[committed:], kill_ns) == reference, kill_at
    assert not PipelineConfig.from_settings(Settings(alarm_enabled=False)).hold_unrouted


def test_with_the_context_on_lead_ii_is_held_like_pleth_and_released_by_an_idle_flush():
    """A 125 Hz lead II only feeds the patient context; committed at once, a new owner would lack the lead II its
    context is decided from. It is held `ack_lag_s` + CONTEXT_INPUT_SKEW_S after the newest lead II (so never
    committed before the PLETH of the same time), and released with the bed's streams when it goes silent."""
    from dataclasses import replace

    from stream.config import Settings
    from stream.contextinput import CONTEXT_INPUT_SKEW_S
    from stream.pipeline import resume_history_s

    conf = PipelineConfig.from_settings(Settings(context_s=10.0, alarm_enabled=False))
    assert conf.resume_history_s == resume_history_s(10.0) == 35.0
    assert conf.ack_lag_s == 8.0 + 35.0
    assert PipelineConfig.from_settings(Settings(context_s=0.0, alarm_enabled=False)).ack_lag_s == 8.0
    no_ppg2ecg = Settings(context_s=10.0, tasks=("sr",), alarm_enabled=False)
    assert PipelineConfig.from_settings(no_ppg2ecg).ack_lag_s == 8.0
    # with the alarm agent on, a new owner re-reads the analysis window of an alarm that waited wait_s (16 + 30 s)
    for context_s in (0.0, 10.0):
        on = PipelineConfig.from_settings(Settings(context_s=context_s))
        assert on.resume_history_s == 46.0 and on.ack_lag_s == 8.0 + 46.0
    now = [0.0]
    pipe = Pipeline(replace(conf, tasks=("ppg2ecg",), quality=False), RecordingTranslator(), clock=lambda: now[0])
    done, emitted = [], []
    rec = synthesize(seconds=100.0, seed=4)
    for sig in ("II", "PLETH"):
        assert pipe._contexts.keeps(sig)
    for k, (ii, pl) in enumerate(zip(chunks(rec.signals["II"], 125.0, signal="II"),
                                     chunks(rec.signals["PLETH"], 125.0))):
        now[0] = float(k)
        pipe.push(ii, token=("II", k))
        pipe.push(pl, token=("PLETH", k))
        res = pipe.process()
        done += res.completed
        emitted += res.emitted
    lag = conf.ack_lag_s + CONTEXT_INPUT_SKEW_S
    assert [k for s, k in done if s == "II"] == list(range(int(100 - lag)))  # ends at or before 100 s - lag
    assert [k for s, k in done if s == "PLETH"] == list(range(int(100 - conf.ack_lag_s)))
    assert sorted(k for s, k in emitted if s == "II") == list(range(100))  # nothing to publish: latency at once
    now[0] += conf.idle_flush_s
    pipe.flush_idle()
    res = pipe.process()
    assert sorted(res.completed) == sorted(set((s, k) for s in ("II", "PLETH") for k in range(100)) - set(done))
    assert len(pipe._context_input) == 0 and pipe.reset() == []


def test_a_resumed_streams_re_read_history_gives_no_latency_records():
    """The re-read head of a resumed stream was published by its earlier reader: its chunks (and the lead II beside
    them) are completed, but they are not this reader's outputs (35 s of re-read input read as 35 s of latency)."""
    pipe = Pipeline(cfg(tasks=("ppg2ecg",), context_s=10.0, resume_history_s=35.0, ack_lag_s=43.0),
                    RecordingTranslator())
    emitted, done = [], []
    rec = synthesize(seconds=100.0, seed=4)
    for ii, pl in list(zip(chunks(rec.signals["II"], 125.0, signal="II"), chunks(rec.signals["PLETH"], 125.0)))[40:]:
        pipe.push(ii, token=("II", ii.seq))
        pipe.push(pl, token=("PLETH", pl.seq))
        res = pipe.process()
        emitted += res.emitted
        done += res.completed
    head = (pipe._streams[("A", "PLETH")].taken_until_ns - T0) / 1e9
    assert 40 + 35 < head <= 40 + 35 + 8
    for sig in ("II", "PLETH"):
        got = [k for s, k in emitted if s == sig]
        assert got == list(range(int(head), 100)), (sig, got[:3], head)
    assert [k for s, k in done if s == "PLETH"] == list(range(40, 100 - 43))


def _glitched_partition(seconds: float = 60.0, glitch_seq: int = 15, restart_at: int | None = None):
    """`_partition` with bed A's PLETH chunk `glitch_seq` stamped an hour ahead (a monitor clock glitch), kept where
    it arrived; from seq `restart_at` on A's PLETH producer restarted (seq from 0). Also its index in the list."""
    msgs = []
    for c in _partition(seconds):
        if c.bed_id == "A" and c.signal == "PLETH":
            if c.seq == glitch_seq:
                c = Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns + 3600 * 10**9, c.seq, c.samples)
            elif restart_at is not None and c.seq >= restart_at:
                c = Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns, c.seq - restart_at, c.samples)
        msgs.append(c)
    at = next(i for i, c in enumerate(msgs) if c.bed_id == "A" and c.signal == "PLETH" and c.seq == glitch_seq)
    return msgs, at


@pytest.mark.parametrize("restart_at", [None, 17])
def test_one_future_stamped_chunk_costs_a_few_chunks_not_the_bed(restart_at):
    """One PLETH chunk stamped an hour ahead (a monitor clock glitch), with or without a producer restart after it,
    costs RESYNC_CHUNKS - 1 dead-lettered chunks, not the bed: the stream resyncs, goes on at the right stamps, its
    chunks are acknowledged again, and a new owner after a kill lands what an uninterrupted run lands."""
    from operators.state.windowing import RESYNC_CHUNKS
    from operators.translator import load_translator

    conf = cfg(quality=True, lookahead_s=1.0, ack_lag_s=8.0, sr_target_hz=250.0, sr_below_hz=200.0)
    msgs, at = _glitched_partition(restart_at=restart_at)
    pipe, results, completed = Pipeline(conf, load_translator("classic")), [], set()
    for offset, c in enumerate(msgs):
        pipe.push(c, token=offset)
        results.append(pipe.process())
        completed.update(results[-1].completed)
    rejected = [rj.token for r in results for rj in r.rejected]
    pleth_after = [i for i, c in enumerate(msgs) if i > at and c.bed_id == "A" and c.signal == "PLETH"]
    before_restart = 0 if restart_at is None else restart_at - 16  # refused before the producer restarted
    assert rejected == pleth_after[:before_restart + RESYNC_CHUNKS - 1]
    assert [e.kind for r in results for e in r.events if e.bed == "A" and e.kind == "clock_step"] == ["clock_step"]
    # the synthesized ECG of bed A goes on at the right stamps up to (near) the end of its input
    t, _ = collect(results, bed="A", kind="synth")
    assert t.max() < T0 + 3600 * 10**9 and (t > T0 + 50 * 10**9).sum() > 125 * 5
    # and its input is committed again: all but the last ack lag's worth
    committed = next(o for o in range(len(msgs) + 1) if o not in completed and o not in rejected)
    assert msgs[committed].start_ns > T0 + 40 * 10**9
    results.append((pipe.flush_all(), pipe.process())[1])
    reference = _landed(results)
    for kill_at in (at - 3, at + 1, at + 3, at + 5, at + 9, at + 30, at + 60):
        landed, _ = _killed_and_resumed(conf, msgs, kill_at)
        assert landed.keys() == reference.keys(), kill_at
        for key in reference:
            assert landed[key] == reference[key], (kill_at, key)


def _bed_a_context_run(msgs):
    """Run bed A's `msgs` through the worker's pipeline (PPG->ECG, patient context on, a 125 Hz lead II feeding the
    context only); the context each PLETH window was translated with, by window start: None or (ecg, ppg) bytes."""
    from dataclasses import replace

    from operators.translator import load_translator
    from stream.config import Settings

    classic, seen = load_translator("classic"), {}

    class Recording:
        name = classic.name

        def translate(self, requests):
            for r in requests:
                c = r.context
                seen[r.meta["start_ns"]] = None if c is None else (c.ecg.tobytes(), c.ppg.tobytes())
            return classic.translate(requests)

    conf = replace(PipelineConfig.from_settings(Settings(context_s=10.0)), tasks=("ppg2ecg",))
    run_all(Pipeline(conf, Recording()), msgs)
    return seen


def _bed_a_msgs(seconds: float = 100.0):
    rec = synthesize(seconds=seconds, seed=5)
    msgs = [(c.start_ns, sig, c) for sig in ("II", "PLETH") for c in chunks(rec.signals[sig], 125.0, signal=sig)]
    return [c for *_, c in sorted(msgs, key=lambda m: m[:2])]


def test_a_refused_replay_of_an_old_chunk_leaves_the_patient_context_alone():
    """A PLETH chunk resent 60 s late with other samples is refused (duplicate) by the windower, but the context store
    took it, read it as the clock going back and started anew: 20 s of windows without a context."""
    msgs = _bed_a_msgs()
    old = next(c for c in msgs if c.signal == "PLETH" and c.seq == 20)
    at = next(i for i, c in enumerate(msgs) if c.signal == "PLETH" and c.seq == 90) + 1
    replay = Chunk(old.bed_id, old.signal, old.rate_hz, old.start_ns, old.seq, old.samples + 5.0)
    reference = _bed_a_context_run(msgs)
    got = _bed_a_context_run(msgs[:at] + [replay] + msgs[at:])
    assert sum(v is not None for v in reference.values()) > 30
    assert got == reference


def test_after_a_clock_glitch_the_context_is_a_fresh_streams_from_the_resync_on():
    """One PLETH chunk stamped an hour ahead, then the right stamps again: the windower refuses two chunks and resyncs
    at the third. The context store took the refused ones too (it started anew at the first and chose from samples no
    window came from). It now sees what the windower took and starts anew at the resync: from there every window
    gets the context of a stream that starts at the resync."""
    from operators.state.windowing import RESYNC_CHUNKS

    msgs = _bed_a_msgs()
    glitch = 30
    resync = glitch + RESYNC_CHUNKS
    msgs = [Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns + 3600 * 10**9, c.seq, c.samples)
            if c.signal == "PLETH" and c.seq == glitch else c for c in msgs]
    got = _bed_a_context_run(msgs)
    t_resync = T0 + resync * 10**9
    # a stream starting at the resync: lead II from there on too (the store restarts at the resync chunk)
    fresh = [Chunk(c.bed_id, c.signal, c.rate_hz, c.start_ns, c.seq - resync, c.samples)
             for c in msgs if c.start_ns >= t_resync and c.start_ns < T0 + 3600 * 10**9
             and not (c.signal == "II" and c.seq == resync)]
    reference = _bed_a_context_run(fresh)
    after = {t: v for t, v in got.items() if t_resync <= t < T0 + 3600 * 10**9}
    assert after == reference
    back = min(t for t, v in reference.items() if v is not None)
    assert (back - t_resync) / 1e9 <= 15.0  # a stream's first context: 10 s of paired data, on the 5 s grid


def test_a_lead_ii_sent_in_microvolts_gives_the_same_synthesized_ecg_in_mv():
    """II_SYNTH takes the patient context's ECG level and spread and is published in mV: a gateway sending lead II
    in µV (or V) must not make it a thousand times larger (or smaller) under the same label."""
    from operators.classic import ClassicTranslator

    rec = synthesize(seconds=40.0, seed=5)
    rate = rec.rate_hz

    def run(factor, units):
        feed = sorted(chunks(rec.signals["PLETH"], rate)
                      + chunks(rec.signals["II"] * factor, rate, signal="II", units=units),
                      key=lambda c: (c.end_ns(), c.signal))
        results = run_all(Pipeline(cfg(context_s=10.0, tasks=("ppg2ecg",)), ClassicTranslator()), feed, tokens=False)
        outs = [o for r in results for o in r.outputs if o.kind == "synth" and o.context_used]
        assert outs and {o.units for o in outs} == {"mV"}
        return np.concatenate([o.values for o in outs])

    mv = run(1.0, "mV")
    np.testing.assert_allclose(run(1000.0, "uV"), mv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run(1e-3, "V"), mv, rtol=1e-4, atol=1e-4)


def test_releasing_only_the_beds_touched_since_the_last_batch_releases_what_a_full_scan_does():
    """`process()` looks only at the beds pushed or flushed since the last call (a full scan of every stream cost
    about 4 ms a batch at 1024 beds). What decides a release changes only with those: the same input, batched at
    random, completes and reports exactly the tokens a pipeline scanning every bed each time does."""
    from stream.config import Settings

    class FullScan(Pipeline):
        def process(self):
            self._touched |= {st.bed for st in self._streams.values()} | set(self._bed_seen)
            return super().process()

    rng = np.random.default_rng(7)
    msgs = []
    for b in range(6):
        rec = synthesize(seconds=70.0, seed=b)
        t0 = T0 + b * 300_000_000
        signals = ("II", "PLETH") if b % 3 else ("II",)  # beds 0 and 3: lead II only (nothing routed)
        for sig in signals:
            msgs += [(c.start_ns, b, sig, c) for c in chunks(rec.signals[sig], rec.rate_hz, bed=f"b{b}", signal=sig,
                                                               t0=t0)]
    msgs = [c for *_, c in sorted(msgs, key=lambda m: m[:3])]
    for context_s in (0.0, 10.0):
        conf = PipelineConfig.from_settings(Settings(context_s=context_s))
        now = [0.0]
        pipes = [cls(conf, RecordingTranslator(), clock=lambda: now[0]) for cls in (Pipeline, FullScan)]
        runs = [[], []]
        i = 0
        while i < len(msgs):
            n = int(rng.integers(1, 12))
            for k, pipe in enumerate(pipes):
                for c in msgs[i:i + n]:
                    pipe.push(c, token=(c.bed_id, c.signal, c.seq))
                res = pipe.process()
                runs[k].append((res.completed, res.emitted))
            i += n
            now[0] += 0.5
        now[0] += 1e4  # every bed silent: flushed and released
        for k, pipe in enumerate(pipes):
            pipe.flush_idle()
            res = pipe.process()
            runs[k].append((res.completed, res.emitted))
        assert runs[0] == runs[1]
        assert sum(len(c) for c, _ in runs[0]) == len(msgs)  # every token completed once
