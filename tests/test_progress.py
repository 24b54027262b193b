"""Flush points (stream/progress.py): a stream that continues after an idle flush on another worker publishes every
sample after the flush exactly once; a flush point that does not apply leaves the mid-stream rule alone."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.samples import grid_ns
from stream.pipeline import Pipeline
from stream.progress import FlushPoint, FlushPoints
from stream.wire import Chunk
from tests.test_pipeline import T0, RecordingTranslator, cfg

S = 10**9
X = T0 + 20 * S  # flush point of the stream below: 20 1 s chunks, seq 0-19


def _points(*fps: FlushPoint) -> FlushPoints:
    points = FlushPoints()
    for fp in fps:
        points.update(fp)
    return points


def test_a_flush_point_survives_its_record_and_refuses_anything_else():
    fp = FlushPoint("bed-1", "PLETH", X, 19)
    assert FlushPoint.decode(fp.encode()) == fp and fp.key == b"bed-1/PLETH"
    for bad in (b"{}", b"[1]", b"not json", b'{"bed_id":"b","signal":"PLETH","flushed_until_ns":1.5,"last_seq":1}',
                b'{"bed_id":"b","signal":"PLETH","flushed_until_ns":true,"last_seq":1}', b'{"marker":"x"}'):
        with pytest.raises(ValueError):
            FlushPoint.decode(bad)


@pytest.mark.parametrize("seq,start_ns,expected", [
    (20, X, X),  # the continuation right after the flush
    (20, X + 3600 * S, X),  # ... after a gap (a monitor off for an hour, its seq going on)
    (17, T0 + 17 * S, X),  # re-read from before the flush: the old owner's output stops at the flush point
    (19, T0 + 19 * S, X),
    (21, X + S, None),  # the continuation was committed: its owner emitted it under the commit rule
    (3, X + 100 * S, None),  # a sender that restarted its seq, stamps after the flush
    (0, X, None),  # a restarted sender (seq 0 starts anew anyway)
])
def test_the_flush_point_applies_only_to_the_stream_at_and_before_its_continuation(seq, start_ns, expected):
    points = _points(FlushPoint("bed-1", "PLETH", X, 19))
    assert points.resume_from("bed-1", "PLETH", seq, start_ns) == expected
    assert points.resume_from("bed-1", "II", seq, start_ns) is None
    assert points.resume_from("bed-2", "PLETH", seq, start_ns) is None


def test_the_latest_flush_point_of_a_stream_wins():
    points = _points(FlushPoint("b", "PLETH", X, 19), FlushPoint("b", "PLETH", X + 30 * S, 49))
    assert points.resume_from("b", "PLETH", 50, X + 30 * S) == X + 30 * S
    # re-read from before both flushes: the output is complete up to the later one (the windower takes the mid-stream
    # rule's head where that lies before it)
    assert points.resume_from("b", "PLETH", 20, X) == X + 30 * S
    assert len(points) == 1


def _silent_bed_partition(signals=None):
    """One partition, in arrival order: bed A streams 20 s (seq 0-19), is silent past the idle flush, then continues
    contiguously (seq 20-39). Bed B's sender stalls 8 s after its chunk 18 (less than the idle flush) and then runs
    8 s behind, so B's chunk 18, ahead of A's last chunks in the partition, holds their commit back past A's flush.
    Items: (arrival s, Chunk), and (30.5, None) where the clock passes A's idle flush. `signals`: bed -> 125 Hz PLETH
    (noise by default)."""
    rng = np.random.default_rng(3)
    x = signals or {"A": rng.standard_normal(40 * 125).astype(np.float32),
                    "B": rng.standard_normal(60 * 125).astype(np.float32)}
    items = [(30.5, None)]
    for bed, n, late_from, late_s in (("A", 40, 20, 10.0), ("B", 60, 19, 8.0)):
        for k in range(n):
            c = Chunk(bed, "PLETH", 125.0, T0 + k * S, k, x[bed][k * 125:(k + 1) * 125])
            items.append((k + 1.0 + (late_s if k >= late_from else 0.0) + (0.01 if bed == "B" else 0.0), c))
    return [it for it in sorted(items, key=lambda it: it[0])]


def _run(pipe: Pipeline, items, now: list, first_token: int = 0):
    """Process `items` one by one, the clock at each one's arrival (+ `now[1]`); returns their results."""
    out = []
    for i, (arrival, c) in enumerate(items):
        now[0] = now[1] + arrival
        if c is None:
            pipe.flush_idle()
        else:
            pipe.push(c, token=first_token + i)
        out.append(pipe.process())
    return out


def _wave(results) -> dict:
    out: dict = {}
    for r in results:
        for o in r.outputs:
            for t in o.times_ns.tolist():
                out.setdefault(o.bed, []).append(t)
    return out


def _kill_and_resume(conf, items, translator, use_flush_points: bool, step: int = 2):
    """The old owner flushes A during its silence (releasing its input) and is killed at every `step`-th later
    message; a new owner resumes from the committed offset with the flush points the old one delivered (or none).
    Yields (kill_at, old owner's results, new owner's results, seq of A's first chunk the new owner reads)."""
    flush_at = next(i for i, (_, c) in enumerate(items) if c is None)
    for kill_at in range(flush_at + 1, len(items), step):
        now = [0.0, 0.0]
        old = Pipeline(conf, translator(), clock=lambda: now[0])
        before = _run(old, items[:kill_at], now)
        completed = {t for r in before for t in r.completed} | {flush_at}
        committed = next(o for o in range(len(items) + 1) if o not in completed)
        points = FlushPoints()
        for r in before:
            for fp in r.flushed:
                points.update(fp)
        assert points.get("A", "PLETH") == FlushPoint("A", "PLETH", X, 19)
        now2 = [0.0, 1000.0]
        new = Pipeline(conf, translator(), clock=lambda: now2[0],
                       resume_from=points.resume_from if use_flush_points else None)
        after = _run(new, items[committed:], now2, first_token=committed)
        new.flush_all()
        after.append(new.process())
        yield kill_at, before, after, next(c.seq for _, c in items[committed:] if c is not None and c.bed_id == "A")


@pytest.mark.parametrize("use_flush_points", [True, False])
def test_a_stream_continuing_after_a_flush_on_a_new_owner_loses_nothing(use_flush_points):
    """Every sample of both beds lands, none twice within one process, whichever message the old owner dies at
    (`_kill_and_resume`), A's continuation or A's last chunks before the silence being the new owner's first. Without
    flush points the new owner took them for a mid-stream resume and never published up to 7 s after the flush."""
    conf = cfg(lookahead_s=1.0, ack_lag_s=8.0, tasks=("ppg2ecg",), idle_flush_s=10.0)
    items = _silent_bed_partition()
    want = {bed: set(grid_ns(T0, 125.0, np.arange(n * 125)).tolist()) for bed, n in (("A", 40), ("B", 60))}
    lost, firsts = [], set()
    for kill_at, before, after, first in _kill_and_resume(conf, items, RecordingTranslator, use_flush_points):
        got_old, got_new = _wave(before), _wave(after)
        for bed, times in got_new.items():
            assert len(times) == len(set(times)), (kill_at, bed)
        landed = {bed: set(got_old.get(bed, [])) | set(got_new.get(bed, [])) for bed in want}
        for bed in want:
            assert landed[bed] <= want[bed]
        lost.append(sum(len(want[bed] - landed[bed]) for bed in want))
        firsts.add(first <= 19)
    assert firsts == {True, False}  # both cases: A re-read from before the flush, and from its continuation
    if use_flush_points:
        assert lost == [0] * len(lost)
    else:
        assert max(lost) >= 3 * 125, lost  # the loss this fixes (up to 4 s here; 7 s at most)


def test_rpeaks_after_a_flush_point_are_reported_from_there_and_none_is_lost():
    """R-peaks of the synthesized ECG: the old owner's flush reports them up to the flush point, the new owner from
    there. Every beat of an uninterrupted run is found (within 60 ms). The new owner's first window after the flush
    point is not the uninterrupted run's (it starts there, or at the first chunk re-read): a peak off the
    uninterrupted ones can appear only in it, and a beat at the flush point can be reported on both sides of it."""
    from operators.io.synthetic import synthesize
    from operators.translator import load_translator

    conf = cfg(quality=True, lookahead_s=1.0, ack_lag_s=8.0, tasks=("ppg2ecg",), idle_flush_s=10.0)
    sig = {bed: synthesize(seconds=n, seed=seed).signals["PLETH"].astype(np.float32)
           for bed, n, seed in (("A", 40, 5), ("B", 60, 6))}
    items = _silent_bed_partition(sig)

    def peaks(results, bed="A"):
        return sorted(int(p) for r in results for e in r.events if e.kind == "rpeaks" and e.bed == bed
                      for p in e.fields["peaks_ns"])
    now = [0.0, 0.0]
    uninterrupted = Pipeline(conf, load_translator("classic"), clock=lambda: now[0])
    results = _run(uninterrupted, items, now)
    uninterrupted.flush_all()
    reference = np.array(peaks(results + [uninterrupted.process()]))
    assert len(reference) > 30
    for kill_at, before, after, _ in _kill_and_resume(conf, items, lambda: load_translator("classic"), True, step=5):
        got = np.array(sorted(set(peaks(before)) | set(peaks(after))))
        near = np.abs(got[:, None] - reference[None, :]) <= 60e6
        assert near.any(axis=0).all(), kill_at  # no beat lost
        off = got[~near.any(axis=1)]
        assert ((off >= X) & (off < X + 8 * S)).all(), (kill_at, off)
        close = np.flatnonzero(np.diff(got) <= 250e6)  # one beat twice: only across the flush point
        assert ((got[close] < X) & (got[close + 1] >= X)).all(), kill_at


@pytest.mark.integration
def test_the_progress_log_reads_every_partition_up_to_its_own_markers(kafka_bootstrap):
    """On the real broker (Tansu: its end offsets are wrong for multi-record batches, so markers say caught up)."""
    import uuid

    from kafka import KafkaProducer

    from stream.config import Settings
    from stream.progress import ProgressLog
    from stream.topics import ensure_topics

    topic = f"progress-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=3)
    settings = Settings(broker=f"kafka://{kafka_bootstrap}", topic_progress=topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    fps = [FlushPoint(f"bed-{i}", "PLETH", X + i, 19 + i) for i in range(12)]
    for fp in fps[:10]:  # one batch: several records per partition
        producer.send(topic, key=fp.key, value=fp.encode())
    producer.send(topic, key=b"bed-0/PLETH", value=b"garbage")  # logged and skipped
    producer.flush()
    log = ProgressLog(settings, timeout_s=20.0)
    try:
        assert log.catch_up() == 10 and len(log.points) == 10
        assert log.points.resume_from("bed-3", "PLETH", 23, X) == X + 3
        for fp in fps[10:] + [FlushPoint("bed-3", "PLETH", X + 100, 40)]:
            producer.send(topic, key=fp.key, value=fp.encode())
        producer.flush()
        assert log.catch_up() == 3 and len(log.points) == 12
        assert log.points.get("bed-3", "PLETH").last_seq == 40
    finally:
        log.close()
        producer.close()
