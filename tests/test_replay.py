"""Replay: exact chunking, NaN gaps, resampling, pacing, and a real replay into Tansu read back with kafka-python."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from operators.io.records import Recording, read_recording
from stream.tools import chunker, publisher, resampling
from stream.tools import replay as rp
from stream.tools.publisher import ReplayOptions
from stream import wire

T0 = 1_700_000_000_000_000_000


def make_rec(seconds=10.0, rate=125.0, name="r", nan_at=None, ppg_rate=None) -> Recording:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    ecg = np.sin(2 * np.pi * 1.2 * t).astype(np.float32)
    pr = ppg_rate or rate
    ppg = np.cos(2 * np.pi * 1.2 * np.arange(int(seconds * pr)) / pr).astype(np.float32)
    if nan_at is not None:
        ecg[nan_at] = np.nan
    return Recording(name=name, signals={"II": ecg, "PLETH": ppg}, rates={"II": rate, "PLETH": float(pr)},
                     units={"II": "mV", "PLETH": "NU"}, age=70.0, sex="F")


def test_iter_chunks_timing_and_seq_are_exact():
    rec = make_rec(seconds=10.5, rate=125.0, ppg_rate=50.0)
    chunks = list(chunker.iter_chunks(rec, "bed-007", chunk_s=1.0, start_ns=T0))
    for sig, rate in (("II", 125.0), ("PLETH", 50.0)):
        mine = [c for c in chunks if c.signal == sig]
        assert [c.seq for c in mine] == list(range(11))
        # Chunk k starts exactly at sample k*step; no rounding drift over the record.
        step = int(rate)
        assert [c.start_ns for c in mine] == [T0 + int(round(k * step * 1e9 / rate)) for k in range(11)]
        assert all(a.end_ns() == b.start_ns for a, b in zip(mine, mine[1:]))  # contiguous
        np.testing.assert_array_equal(np.concatenate([c.samples for c in mine]), rec.signals[sig])
        assert len(mine[-1].samples) == step // 2  # the half-second tail
        assert all(c.bed_id == "bed-007" and c.rate_hz == rate and c.age == 70.0 and c.sex == "F" for c in mine)
    # Interleaved across signals in send order (end time), like a monitor.
    ends = [c.end_ns() for c in chunks]
    assert ends == sorted(ends)


def test_odd_rate_timestamps_do_not_drift():
    rec = make_rec(seconds=30, rate=360.0)
    chunks = [c for c in chunker.iter_chunks(rec, "b", chunk_s=0.3, start_ns=0, signals=["II"])]
    assert chunks[-1].end_ns() == int(round(30 * 360 * 1e9 / 360))
    assert {len(c.samples) for c in chunks} == {108}


def test_fractional_chunk_sizes_stay_aligned():
    rec = make_rec(seconds=3, rate=125.0)
    ii = [c for c in chunker.iter_chunks(rec, "b", chunk_s=0.5, start_ns=0, signals=["II"])]
    # 62.5 samples per chunk: sizes alternate and chunk k starts within one sample of k * 0.5 s.
    assert sorted({len(c.samples) for c in ii}) == [62, 63]
    assert len(ii) == 6 and sum(len(c.samples) for c in ii) == 375
    assert all(abs(c.start_ns - k * 500_000_000) <= 8_000_000 for k, c in enumerate(ii))
    assert all(a.end_ns() == b.start_ns for a, b in zip(ii, ii[1:]))


def test_nan_runs_beyond_the_wire_repair_split_the_stream():
    rec = make_rec(seconds=4, rate=100.0, nan_at=slice(150, 190))  # 40 % of chunk 1: the wire would refuse it
    ii = [c for c in chunker.iter_chunks(rec, "b", chunk_s=1.0, start_ns=0, signals=["II"])]
    assert [c.seq for c in ii] == list(range(5))
    assert [(c.start_ns, len(c.samples)) for c in ii] == [(0, 100), (1_000_000_000, 50), (1_900_000_000, 10),
                                                          (2_000_000_000, 100), (3_000_000_000, 100)]
    assert all(np.isfinite(c.samples).all() for c in ii)
    assert ii[1].end_ns() < ii[2].start_ns  # the receiver sees a 400 ms gap


@pytest.mark.parametrize("n_nan, whole", [(20, True), (21, False)])
def test_a_chunk_the_wire_repairs_is_sent_whole_with_its_nans(n_nan, whole):
    # 20 of 100 samples is MAX_NONFINITE_FRACTION: the receiver interpolates them, exactly as it does live;
    # one more and it would dead-letter the chunk (nan_flood), so the chunker splits it at the NaN run instead
    rec = make_rec(seconds=3, rate=100.0, nan_at=slice(140, 140 + n_nan))
    ii = [c for c in chunker.iter_chunks(rec, "b", chunk_s=1.0, start_ns=0, signals=["II"])]
    assert (len(ii) == 3) is whole
    for c in ii:
        res = wire.decode_result(wire.encode_binary(c))  # never a dead letter
        assert res.repaired == (n_nan if whole and c.start_ns == 1_000_000_000 else 0)
    if whole:
        assert ii[1].start_ns == 1_000_000_000 and len(ii[1].samples) == 100
        assert np.isnan(ii[1].samples[40:40 + n_nan]).all()


def test_sparse_single_nans_do_not_fragment_the_stream():
    rec = make_rec(seconds=20, rate=125.0)
    ecg = rec.signals["II"].copy()
    ecg[np.random.default_rng(0).choice(ecg.size, size=int(0.03 * ecg.size), replace=False)] = np.nan
    rec = Recording(name="r", signals={"II": ecg}, rates={"II": 125.0}, units={"II": "mV"})
    ii = list(chunker.iter_chunks(rec, "b", chunk_s=1.0, start_ns=0, signals=["II"]))
    assert [(c.seq, c.start_ns, len(c.samples)) for c in ii] == [(k, k * 1_000_000_000, 125) for k in range(20)]
    assert sum(np.isnan(c.samples).sum() for c in ii) == np.isnan(ecg).sum()
    assert all(np.isfinite(wire.decode(wire.encode_binary(c)).samples).all() for c in ii)


def test_resample_to_monitor_rate():
    rec = make_rec(seconds=8, rate=125.0)
    out = resampling.resample_recording(rec, {"PLETH": 25})
    assert out.rates["PLETH"] == 25.0 and out.signals["PLETH"].size == 200 and out.signals["PLETH"].dtype == np.float32
    t = np.arange(200) / 25
    ref = np.cos(2 * np.pi * 1.2 * t)
    np.testing.assert_allclose(out.signals["PLETH"][10:-10], ref[10:-10], atol=0.02)  # 1.2 Hz is far below Nyquist
    assert out.signals["II"] is rec.signals["II"]  # others untouched
    chunks = [c for c in chunker.iter_chunks(rec, "b", 1.0, 0, resample={"PLETH": 25}) if c.signal == "PLETH"]
    assert len(chunks) == 8 and all(len(c.samples) == 25 and c.rate_hz == 25.0 for c in chunks)


def test_resample_keeps_nan_runs_invalid():
    rec = make_rec(seconds=4, rate=125.0, nan_at=slice(250, 300))
    out = resampling.resample_recording(rec, {"II": 25})
    bad = np.flatnonzero(np.isnan(out.signals["II"]))
    assert bad.min() == 50 and bad.max() == 59


def test_plan_cycles_records_over_beds():
    a, b = make_rec(name="a"), make_rec(name="b")
    plan = chunker.plan_beds([a, b], beds=5, prefix="icu")
    assert [(bed, rec.name) for bed, rec in plan] == [("icu-001", "a"), ("icu-002", "b"), ("icu-003", "a"),
                                                      ("icu-004", "b"), ("icu-005", "a")]
    merged = list(chunker.iter_all_chunks(plan, 1.0, 0, duration_s=3))
    assert len(merged) == 5 * 2 * 3
    assert [c.end_ns() for c in merged] == sorted(c.end_ns() for c in merged)
    assert len({c.bed_id for c in merged[:10]}) == 5  # beds interleave rather than one after another


def test_fewer_beds_than_records_and_bad_durations_are_refused_before_sending():
    """`--beds 1` with two records read both and silently sent one; a negative duration crashed mid-way."""
    a, b = make_rec(name="a"), make_rec(name="b")
    with pytest.raises(ValueError, match="each record needs a bed"):
        chunker.plan_beds([a, b], beds=1)
    sink = RecordingSink()
    for bad in (-5.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="duration_s"):
            publisher.replay([a], sink, ReplayOptions(speed=0, start_ns=T0, duration_s=bad))
    assert sink.sent == []


class RecordingSink:
    """Producer-shaped recorder of send times, to measure pacing without a broker."""

    def __init__(self):
        self.sent: list[tuple[float, bytes, bytes]] = []

    def send(self, topic, key, value):
        self.sent.append((time.monotonic(), key, value))

    def flush(self):
        pass


def test_pacing_at_speed():
    rec = make_rec(seconds=2.0, rate=100.0)
    sink = RecordingSink()
    t_start = time.monotonic()
    stats = publisher.replay([rec], sink, ReplayOptions(beds=2, speed=10.0, chunk_s=0.25, start_ns=T0, signals=["II"]))
    assert stats.chunks == 2 * 8 and len(sink.sent) == 16
    # Chunk k (k = 1..8) is due (k * 0.25 s) / 10 after start; measured loosely (shared, busy CPU).
    for i, (t, key, value) in enumerate(sink.sent):
        chunk = wire.decode(value)
        due = (chunk.end_ns() - T0) / 1e9 / 10
        assert t - t_start >= due - 0.005, f"chunk {i} sent early"
        assert key == chunk.bed_id.encode()
    assert 0.19 <= stats.elapsed_s < 1.5
    fast = RecordingSink()
    stats = publisher.replay([rec], fast, ReplayOptions(beds=2, speed=0, chunk_s=0.25, start_ns=T0, signals=["II"],
                                                        fmt="json"))
    assert stats.elapsed_s < 0.15 and len(fast.sent) == 16
    assert fast.sent[0][2].startswith(b"{")


def test_stamped_from_now_a_chunk_leaves_when_its_last_sample_is_due(monkeypatch):
    """Stamps start when the replay starts, but pacing started only after the records were resampled and the
    producer made: every chunk left that much (about 0.5 s) after its last sample's time."""
    slow = publisher.iter_all_chunks

    def slow_start(*a, **k):
        time.sleep(0.4)  # resampling many beds, or a broker slow to answer
        return slow(*a, **k)

    monkeypatch.setattr(publisher, "iter_all_chunks", slow_start)

    class WallSink(RecordingSink):
        def send(self, topic, key, value):
            self.sent.append((time.time_ns(), key, value))

    sink = WallSink()
    publisher.replay([make_rec(seconds=3.0, rate=100.0)], sink, ReplayOptions(speed=1.0, chunk_s=0.25, signals=["II"]))
    late_s = [(t - wire.decode(value).end_ns()) / 1e9 for t, _, value in sink.sent]
    assert len(late_s) == 12 and min(late_s) > -0.01, late_s
    assert max(late_s[-4:]) < 0.1, late_s  # those due after the slow start leave on time (they were 0.4 s late)


def test_nan_runs_not_sent_are_counted():
    rec = make_rec(seconds=6.0, rate=100.0, nan_at=slice(200, 350))  # 1.5 s of II beyond the wire's repair
    stats = publisher.replay([rec], RecordingSink(), ReplayOptions(speed=0, start_ns=T0, signals=["II"]))
    assert stats.unsent_s == pytest.approx(1.5, abs=0.011) and stats.gaps == 1


def test_replay_rejects_bad_arguments():
    rec = make_rec()
    with pytest.raises(ValueError, match="chunk_s"):
        publisher.replay([rec], RecordingSink(), ReplayOptions(chunk_s=61))
    with pytest.raises(ValueError, match="no channel RESP"):
        publisher.replay([rec], RecordingSink(), ReplayOptions(signals=["RESP"]))
    odd = Recording("odd", {"V5": np.zeros(100, np.float32)}, {"V5": 100.0}, {"V5": "mV"})
    with pytest.raises(ValueError, match="not allowed on the wire"):
        publisher.replay([odd], RecordingSink(), ReplayOptions(signals=["V5"]))


def test_replay_refuses_chunks_the_wire_would_reject_before_sending_anything():
    # 60 s at 2000 Hz is 120,000 samples, beyond the wire's 65,536: refused up front, not as a WireError mid-run
    fast = Recording("fast", {"II": np.zeros(130_000, np.float32)}, {"II": 2000.0}, {"II": "mV"})
    sink = RecordingSink()
    with pytest.raises(ValueError, match=r"fast/II\) is 120000 samples per chunk > 65536.*use chunk_s <= 32\.768"):
        publisher.replay([fast], sink, ReplayOptions(chunk_s=60, speed=0, start_ns=T0))
    assert sink.sent == []
    with pytest.raises(ValueError, match="120000 samples per chunk"):
        chunker.iter_chunks(fast, "bed-001", chunk_s=60)
    # the limit is the samples actually sent: a record shorter than one chunk goes whole, a resampled one at its new rate
    short = publisher.replay([fast], RecordingSink(), ReplayOptions(chunk_s=60, speed=0, start_ns=T0, duration_s=30))
    assert short.chunks == 1 and short.samples == 60_000
    down = publisher.replay([fast], RecordingSink(),
                            ReplayOptions(chunk_s=60, speed=0, start_ns=T0, resample={"II": 500}))
    assert down.chunks == 2 and down.samples == 32_500
    # resample keys are channel aliases like everywhere else ("ecg" is lead II)
    opts = ReplayOptions(chunk_s=60, speed=0, start_ns=T0, resample={"ecg": 500})
    assert publisher.replay([fast], RecordingSink(), opts).chunks == 2
    # at 62.51 Hz a 60 s chunk rounds up to 3751 samples = 60.006 s, over the wire's 60 s
    odd = Recording("odd", {"II": np.zeros(10_000, np.float32)}, {"II": 62.51}, {"II": "mV"})
    with pytest.raises(ValueError, match="3751 samples = 60.006 s > 60 s"):
        publisher.replay([odd], RecordingSink(), ReplayOptions(chunk_s=60, speed=0, start_ns=T0))


class OwnedSink(RecordingSink):
    """Stands in for the KafkaProducer the CLI creates (and flushes and closes) itself."""

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


class InterruptedSink(OwnedSink):
    """A producer the user stops with Ctrl-C while it is handed its `at`-th chunk; `flush_fails` makes every delivery
    fail at the flush (through the send futures' errbacks), `flush_interrupted` a second Ctrl-C hit the flush."""

    def __init__(self, at: int, flush_fails: bool = False, flush_interrupted: bool = False):
        super().__init__()
        self.at, self.flushed, self.errbacks = at, 0, []
        self.flush_fails, self.flush_interrupted = flush_fails, flush_interrupted

    def send(self, topic, key, value):
        if len(self.sent) + 1 == self.at:
            raise KeyboardInterrupt
        super().send(topic, key, value)
        sink = self

        class Future:
            def add_errback(self, fn):
                sink.errbacks.append(fn)
        return Future()

    def flush(self, timeout=None):
        self.flushed += 1
        if self.flush_interrupted:
            raise KeyboardInterrupt
        if self.flush_fails:
            for fn in self.errbacks:
                fn(RuntimeError("broker refused it"))


def test_an_interrupted_replay_flushes_and_counts_what_it_sent():
    sink = InterruptedSink(at=4)
    with pytest.raises(KeyboardInterrupt) as stop:  # a caller that does not look for it stops as before
        publisher.replay([make_rec(seconds=6.0)], sink, ReplayOptions(speed=0, start_ns=T0, signals=["II"]))
    stats = stop.value.stats
    assert isinstance(stop.value, publisher.ReplayInterrupted) and stats.failed == 0
    assert stats.chunks == 3 == len(sink.sent) and sink.flushed == 1
    assert stats.last_end_ns == T0 + 3 * 10**9
    assert stats.handed_end_ns == T0 + 4 * 10**9  # the chunk whose send was interrupted may have left too
    assert stats.unsent_s == 0.0  # the rest of the replay, not NaN runs the wire refused


@pytest.mark.parametrize("fails, again", [(True, False), (False, True)])
def test_an_interrupted_replay_reports_deliveries_its_flush_did_not_confirm(fails, again):
    sink = InterruptedSink(at=4, flush_fails=fails, flush_interrupted=again)
    with pytest.raises(publisher.ReplayInterrupted) as stop:
        publisher.replay([make_rec(seconds=6.0)], sink, ReplayOptions(speed=0, start_ns=T0, signals=["II"]))
    assert stop.value.stats.failed == (3 if fails else 1)


def test_cli_says_what_an_interrupted_replay_sent_and_where_to_resume(tmp_path, monkeypatch, capsys):
    sink = InterruptedSink(at=3, flush_fails=True)
    monkeypatch.setattr(publisher, "_make_producer", lambda bootstrap, **kw: sink)
    monkeypatch.setattr("stream.topics.missing_topics", lambda *a, **k: [])
    path = tmp_path / "ii.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"time_s": np.arange(1250) / 125.0, "II": np.zeros(1250, np.float32)}), path)
    rc = rp.cli([str(path), "--broker", "127.0.0.1:1", "--no-create-topic", "--speed", "0", "--no-progress",
                 "--start-ns", str(T0)])
    out, err = capsys.readouterr()
    assert rc == 130, out + err
    assert out.startswith("interrupted after 2 chunks") and f"--start-ns {T0 + 3 * 10**9}" in out
    assert "the delivery of 2 chunk(s) was not confirmed" in err


@pytest.mark.parametrize("only", ["PLETH", "II"])
def test_cli_default_signals_are_whichever_the_record_has(tmp_path, monkeypatch, capsys, only):
    # The CLI used to pass II,PLETH explicitly, so a single-channel record failed with "has no channel".
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"{only}.parquet"
    pq.write_table(pa.table({"time_s": np.arange(250) / 125.0, only: np.zeros(250, np.float32)}), path)
    sink = OwnedSink()
    monkeypatch.setattr(publisher, "_make_producer", lambda bootstrap, **kw: sink)
    monkeypatch.setattr("stream.topics.missing_topics", lambda *a, **k: [])
    rc = rp.cli([str(path), "--broker", "127.0.0.1:1", "--no-create-topic", "--speed", "0", "--no-progress",
                 "--start-ns", str(T0)])
    assert rc == 0, capsys.readouterr().err
    assert {wire.decode(value).signal for _, _, value in sink.sent} == {only}
    assert len(sink.sent) == 2  # 2 s in 1 s chunks
    assert "whichever of II, PLETH each record has" in " ".join(rp.build_parser().format_help().split())


@pytest.mark.parametrize("extra, says", [
    (["--signals", "II,SpO2"], "signal SPO2 of record rec is not allowed on the wire"),
    (["--signals", "RESP"], "record rec has no channel RESP"),
    (["--chunk-s", "40", "--resample", "II=2000"], "40 at 2000 Hz (rec/II) is 80000 samples per chunk"),
    (["--resample", "PLETH=1e9"], "resample rate for PLETH must be in the wire format's [1, 2000] Hz"),
    (["--resample", "ABP=25"], "cannot resample ABP: record rec has II, SPO2"),
    (["--bed-prefix", "icu 3"], "bed id 'icu 3-001' (the bed prefix and a number) must be"),
    (["--start-ns", "-5"], "start_ns must be in [0, 2^63)"),
    (["--speed", "-1"], "speed must be >= 0"),
    (["--topic", "bad topic"], "--topic 'bad topic' is not a Kafka topic name"),
    (["--topic", "wavebridge.events"], "--topic wavebridge.events is wavebridge's events topic, not an input"),
    (["--start-ns", "1700000000"], "--start-ns 1700000000 is 1.7 s after 1970-01-01: give nanoseconds"),
])
def test_cli_reports_a_record_or_option_problem_before_connecting(tmp_path, monkeypatch, capsys, extra, says):
    """These were found only after the topic had been created (or, with an unreachable broker, never: the user was
    told the broker could not be reached), and ended in exit 1 (--resample PLETH=1e9: MemoryError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stream import topics

    path = tmp_path / "rec.parquet"
    pq.write_table(pa.table({"time_s": np.arange(6000) / 125.0, "II": np.zeros(6000, np.float32),
                             "SpO2": np.zeros(6000, np.float32)}), path)
    connects = []
    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: connects.append("topic"))
    monkeypatch.setattr(publisher, "_make_producer", lambda *a, **k: connects.append("producer"))
    from stream.tools.cli import main

    assert main(["replay", str(path), "--broker", "127.0.0.1:1", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wavebridge replay: error: ") and says in err and err.count("\n") == 1, err
    assert connects == []


@pytest.mark.parametrize("extra", [[], ["--resample", "II=25"]])
def test_a_channel_without_a_finite_sample_is_refused_before_connecting(tmp_path, monkeypatch, capsys, extra):
    """It replayed "0 chunks" with exit 0, or, resampled, failed after the topic was created (exit 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stream import topics

    path = tmp_path / "rec.parquet"
    pq.write_table(pa.table({"time_s": np.arange(600) / 125.0, "II": np.full(600, np.nan, np.float32)}), path)
    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: pytest.fail("connected"))
    assert rp.cli([str(path), "--broker", "127.0.0.1:1", "--no-progress", *extra]) == 2
    assert "rec/II has no finite sample" in capsys.readouterr().err


def test_an_empty_default_channel_is_left_out_and_one_that_resamples_to_nothing_is_refused(tmp_path, monkeypatch,
                                                                                         capsys):
    """Of the default channels an empty one is left out with a note (the other is sent); a PLETH blank on every
    other row is all NaN once resampled, which failed after the topic had been created."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stream import topics

    path = tmp_path / "rec.parquet"
    pq.write_table(pa.table({"time_s": np.arange(600) / 125.0, "II": np.ones(600, np.float32),
                             "PLETH": np.full(600, np.nan, np.float32)}), path)
    sink = OwnedSink()
    monkeypatch.setattr(publisher, "_make_producer", lambda bootstrap, **kw: sink)
    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: [])
    assert rp.cli([str(path), "--broker", "127.0.0.1:1", "--no-progress", "--speed", "0", "--start-ns", str(T0)]) == 0
    assert "note: rec/PLETH has no finite sample to send; left out" in capsys.readouterr().err
    assert {wire.decode(v).signal for _, _, v in sink.sent} == {"II"}
    blank = np.ones(600, np.float32)
    blank[1::2] = np.nan
    pq.write_table(pa.table({"time_s": np.arange(600) / 125.0, "PLETH": blank}), path)
    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: pytest.fail("connected"))
    assert rp.cli([str(path), "--broker", "127.0.0.1:1", "--no-progress", "--resample", "PLETH=25"]) == 2
    assert "rec/PLETH has no finite sample once resampled" in capsys.readouterr().err


def test_rate_hz_on_a_wfdb_record_is_refused_not_ignored(bidmc_record, monkeypatch, capsys):
    from stream import topics

    monkeypatch.setattr(topics, "ensure_topics", lambda *a, **k: pytest.fail("connected"))
    assert rp.cli([str(bidmc_record(2)), "--broker", "127.0.0.1:1", "--rate-hz", "250", "--no-progress"]) == 2
    assert "--rate-hz is for CSV/Parquet files without a time column" in capsys.readouterr().err


def test_cli_refuses_an_empty_signal_list(capsys):
    with pytest.raises(SystemExit) as exc:
        rp.cli(["rec.csv", "--broker", "127.0.0.1:1", "--signals", " , ", "--no-create-topic"])
    assert exc.value.code == 2 and "--signals: empty" in capsys.readouterr().err


# ------------------------------------------------------------------ against a real broker


def _consume_all(bootstrap, topic, n_expected, timeout_s=30):
    from kafka import KafkaConsumer

    from tests.conftest import KAFKA_CONSUMER_TEST_KWARGS

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}",
                             auto_offset_reset="earliest", consumer_timeout_ms=10000, **KAFKA_CONSUMER_TEST_KWARGS)
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n_expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["binary", "json"])
def test_replay_into_tansu_round_trip(kafka_bootstrap, bidmc_record, fmt):
    from stream.topics import ensure_topics

    topic = f"test.replay.{fmt}.{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    rec = read_recording(bidmc_record(1), ["II", "PLETH"])
    kw = dict(chunk_s=1.0, resample={"PLETH": 25}, duration_s=5.0, signals=["II", "PLETH"])
    stats = publisher.replay([rec], kafka_bootstrap,
                             ReplayOptions(topic=topic, beds=3, speed=0, fmt=fmt, start_ns=T0, **kw))
    assert stats.chunks == 3 * 2 * 5 and stats.failed == 0
    msgs = _consume_all(kafka_bootstrap, topic, stats.chunks)
    assert len(msgs) == stats.chunks
    got: dict[tuple[str, str], list] = {}
    partition_of: dict[bytes, set] = {}
    for m in msgs:
        c = wire.decode(m.value)
        assert m.key == c.bed_id.encode()
        partition_of.setdefault(m.key, set()).add(m.partition)
        got.setdefault((c.bed_id, c.signal), []).append(c)
    assert all(len(p) == 1 for p in partition_of.values())  # one bed -> one partition
    for bed in ("bed-001", "bed-002", "bed-003"):
        expected = list(chunker.iter_chunks(rec, bed, start_ns=T0, **kw))
        for sig in ("II", "PLETH"):
            want = [c for c in expected if c.signal == sig]
            have = got[(bed, sig)]  # per-partition order = send order
            assert [c.seq for c in have] == [c.seq for c in want] == list(range(5))
            assert [c.start_ns for c in have] == [c.start_ns for c in want]
            for a, b in zip(have, want):
                np.testing.assert_array_equal(a.samples, b.samples)
                assert (a.rate_hz, a.units, a.age, a.sex) == (b.rate_hz, b.units, 88.0, "M")


@pytest.mark.integration
def test_cli_replays_a_record(kafka_bootstrap, bidmc_record, capsys):
    from stream.topics import partition_count

    topic = f"test.replay.cli.{uuid.uuid4().hex[:6]}"
    rc = rp.cli([str(bidmc_record(2)), "--broker", kafka_bootstrap, "--topic", topic, "--beds", "2",
                 "--speed", "0", "--duration-s", "3", "--chunk-s", "0.5", "--resample", "PLETH=25",
                 "--format", "json", "--start-ns", str(T0), "--no-progress", "--partitions", "2"])
    assert rc == 0, capsys.readouterr().err
    assert "replayed 24 chunks" in capsys.readouterr().out
    assert partition_count(kafka_bootstrap, topic) == 2  # created explicitly, not auto-created with 4
    msgs = _consume_all(kafka_bootstrap, topic, 24)
    chunks = [wire.decode(m.value) for m in msgs]
    assert {(c.signal, c.rate_hz, len(c.samples)) for c in chunks} == {("II", 125.0, 62), ("II", 125.0, 63),
                                                                       ("PLETH", 25.0, 12), ("PLETH", 25.0, 13)}
    assert sum(len(c.samples) for c in chunks) == 2 * (375 + 75)
    assert min(c.start_ns for c in chunks) == T0


@pytest.mark.integration
def test_send_failures_fail_loudly(kafka_bootstrap):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=200)  # every chunk is bigger
    try:
        with pytest.raises(publisher.ReplayError, match="failed"):
            publisher.replay([make_rec()], producer,
                             ReplayOptions(topic=f"test.replay.fail.{uuid.uuid4().hex[:6]}", speed=0, start_ns=T0))
    finally:
        producer.close(timeout=5)


def test_cli_reports_unreachable_broker(capsys, tmp_path):
    from operators.io.synthetic import synthesize, write_wfdb
    from stream.tools.embedded import free_port

    rec = write_wfdb(synthesize(seconds=5.0), tmp_path, "r")  # needs no archive: only the broker is missing
    start = time.monotonic()
    rc = rp.cli([str(rec), "--broker", f"127.0.0.1:{free_port()}", "--speed", "0", "--duration-s", "1",
                 "--no-progress", "--connect-timeout-s", "2"])
    assert rc == 1
    assert "error" in capsys.readouterr().err
    assert time.monotonic() - start < 20
