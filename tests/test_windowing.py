"""SlidingWindower: exact reassembly, timestamps, gaps, overlaps, rate changes, flushing."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.samples import grid_ns
from operators.state.windowing import SlidingWindower, Window

T0 = 1_700_000_000_000_000_000


def _chunks(x, rate, rng, t0=T0, max_chunk=400, jitter_ns=0):
    """Split x into random-size chunks with exact-grid start times (plus optional jitter)."""
    i = 0
    while i < len(x):
        n = int(rng.integers(1, max_chunk + 1))
        start = int(grid_ns(t0, rate, i)) + (int(rng.integers(-jitter_ns, jitter_ns + 1)) if jitter_ns and i else 0)
        yield start, x[i:i + n]
        i += n


def _run(w, chunks, rate, seq0=0):
    wins, events = [], []
    for k, (start, part) in enumerate(chunks):
        r = w.push(start, rate, part, seq=seq0 + k)
        assert r.accepted
        wins += r.windows
        events += r.events
    r = w.flush()
    return wins + r.windows, events + r.events


def _reassemble(wins):
    vals = np.concatenate([w.samples[w.emit_from:w.emit_stop] for w in wins]) if wins else np.zeros(0)
    ts = np.concatenate([w.timestamps_ns()[w.emit_from:w.emit_stop] for w in wins]) if wins else np.zeros(0, np.int64)
    return vals, ts


@pytest.mark.parametrize("rate", [25.0, 125.0, 360.0, 500.0, 62.5])
def test_random_chunkings_reassemble_exactly(rate):
    rng = np.random.default_rng(int(rate * 10))
    for trial in range(6):
        n = int(rng.integers(1, 40) * rate / 2) + int(rng.integers(0, 50))
        x = rng.standard_normal(n).astype(np.float32)
        window_s, hop_s = [(8.0, 2.0), (4.0, 4.0), (3.0, 0.5), (2.0, 1.3)][trial % 4]
        w = SlidingWindower(window_s, hop_s, min_segment_s=0.0)
        # big chunks (> window) sometimes, so one push yields several windows
        wins, events = _run(w, _chunks(x, rate, rng, max_chunk=int(rate * 5)), rate)
        assert events == []
        vals, ts = _reassemble(wins)
        np.testing.assert_array_equal(vals, x)
        np.testing.assert_array_equal(ts, grid_ns(T0, rate, np.arange(n)))
        win_len, hop = round(window_s * rate), round(hop_s * rate)
        for wi in wins:
            assert wi.samples.dtype == np.float32
            if wi.kind == "full":
                assert len(wi.samples) == win_len
            # every window is a contiguous slice of the input at its timestamps
            k0 = int(round((wi.start_ns - T0) * rate / 1e9))
            np.testing.assert_array_equal(wi.samples, x[k0:k0 + len(wi.samples)])
        full = [wi for wi in wins if wi.kind == "full"]
        if full:
            assert full[0].emit_from == 0
            hop_ns = round(hop_s * 1e9)
            for wi in full[1:]:
                # on the absolute grid: the window ends at the first sample at or after a multiple of the hop,
                # and emits (about) one hop
                last = int(wi.timestamps_ns()[-1])
                assert last < -(-(last + 1) // hop_ns) * hop_ns <= wi.end_ns
                assert abs(wi.emit_stop - wi.emit_from - hop) <= 1


def test_jitter_is_absorbed_onto_the_grid():
    rate = 125.0
    rng = np.random.default_rng(1)
    x = rng.standard_normal(3000).astype(np.float32)
    w = SlidingWindower(8.0, 2.0)
    # up to 0.4 sample periods (3.2 ms) of start jitter: same segment, exact grid
    wins, events = _run(w, _chunks(x, rate, rng, max_chunk=60, jitter_ns=3_200_000), rate)
    assert events == []
    assert {wi.segment for wi in wins} == {0}
    vals, ts = _reassemble(wins)
    np.testing.assert_array_equal(vals, x)
    np.testing.assert_array_equal(ts, T0 + np.arange(3000) * 8_000_000)


def test_first_window_then_every_hop():
    rate = 100.0
    w = SlidingWindower(window_s=2.0, hop_s=0.5)
    x = np.arange(1000, dtype=np.float32)
    r = w.push(T0, rate, x[:199])
    assert r.windows == [] and w.pending == 199 and w.emitted_until_ns is None
    r = w.push(grid_ns(T0, rate, 199), rate, x[199:200])
    assert len(r.windows) == 1
    first = r.windows[0]
    assert (first.emit_from, first.start_ns, first.kind, len(first.samples)) == (0, T0, "full", 200)
    assert w.emitted_until_ns == T0 + 2_000_000_000 and w.pending == 0
    # 320 more samples in one push -> windows ending at 250, 300, ..., 500: six windows
    r = w.push(grid_ns(T0, rate, 200), rate, x[200:520])
    assert [int(wi.samples[-1]) + 1 for wi in r.windows] == [250, 300, 350, 400, 450, 500]
    assert all(wi.emit_from == 150 for wi in r.windows)
    assert w.pending == 20
    # bounded memory: never more than window + hop samples kept
    assert len(w._buf) <= 200 + 50
    r = w.flush()
    (tail,) = r.windows
    assert tail.kind == "flush" and len(tail.samples) == 200 and tail.emit_from == 180
    np.testing.assert_array_equal(tail.samples[tail.emit_from:], x[500:520])
    assert w.flush().windows == []  # nothing left


def test_gap_flushes_tail_and_starts_new_segment_without_splicing():
    rate = 125.0
    w = SlidingWindower(4.0, 1.0, min_segment_s=1.0)
    a = np.ones(700, np.float32)
    b = np.full(600, 2.0, np.float32)
    r = w.push(T0, rate, a)
    assert len(r.windows) == 2  # ends at 500, 625 (750 not yet)
    gap_start = grid_ns(T0, rate, 700)
    b_start = gap_start + 3_000_000_000
    r = w.push(b_start, rate, b)
    assert r.accepted
    kinds = [e.kind for e in r.events]
    assert kinds == ["gap"]
    assert (r.events[0].start_ns, r.events[0].end_ns) == (gap_start, b_start)
    # the old tail was flushed before the reset: samples 625..700 of segment 0
    tail = r.windows[0]
    assert tail.segment == 0 and tail.kind == "flush"
    np.testing.assert_array_equal(tail.samples[tail.emit_from:], a[625:700])
    # the new segment's windows contain only b, on a grid anchored at b_start
    new = [wi for wi in r.windows if wi.segment == 1]
    assert new and all(np.all(wi.samples == 2.0) for wi in new)
    assert new[0].start_ns == b_start and new[0].emit_from == 0
    assert w.expected_next_ns == b_start + 600 * 8_000_000


def test_short_segment_flushed_or_dropped_with_event():
    rate = 50.0
    w = SlidingWindower(8.0, 2.0, min_segment_s=1.0)
    w.push(T0, rate, np.arange(120, dtype=np.float32))  # 2.4 s < window
    r = w.flush()
    (short,) = r.windows
    assert short.kind == "flush" and short.emit_from == 0 and len(short.samples) == 120
    # a 0.5 s segment after a gap is dropped, and says so
    w2 = SlidingWindower(8.0, 2.0, min_segment_s=1.0)
    w2.push(T0, rate, np.zeros(25, np.float32))
    r = w2.push(T0 + 10 * 10**9, rate, np.zeros(10, np.float32))
    assert [e.kind for e in r.events] == ["short_segment_dropped", "gap"]
    assert r.events[0].start_ns == T0 and r.events[0].end_ns == T0 + 500_000_000
    assert r.windows == []


def test_segment_continues_after_idle_flush():
    rate = 10.0
    w = SlidingWindower(4.0, 1.0, min_segment_s=1.0)
    x = np.arange(100, dtype=np.float32)
    wins = w.push(T0, rate, x[:25]).windows + w.flush().windows  # short flush of 25 samples
    wins += w.push(grid_ns(T0, rate, 25), rate, x[25:]).windows + w.flush().windows
    vals, ts = _reassemble(wins)
    np.testing.assert_array_equal(vals, x)
    np.testing.assert_array_equal(ts, T0 + np.arange(100) * 100_000_000)
    assert wins[1].emit_from == 25 and len(wins[1].samples) == 40  # first full window: context 0..25


def test_overlap_rejected_as_out_of_order_or_duplicate():
    rate = 100.0
    w = SlidingWindower(2.0, 1.0)
    assert w.push(T0, rate, np.zeros(150, np.float32), seq=7).accepted
    before = (w.pending, w.expected_next_ns)
    r = w.push(T0, rate, np.zeros(150, np.float32), seq=7)  # resend
    assert not r.accepted and [e.kind for e in r.events] == ["duplicate"]
    r = w.push(T0 + 500_000_000, rate, np.zeros(150, np.float32), seq=8)  # overlaps, newer seq
    assert not r.accepted and [e.kind for e in r.events] == ["out_of_order"]
    assert r.windows == [] and (w.pending, w.expected_next_ns) == before
    r = w.push(T0 + 500_000_000, rate, np.zeros(150, np.float32))  # no seq at all
    assert [e.kind for e in r.events] == ["out_of_order"]
    # still contiguous afterwards
    assert w.push(grid_ns(T0, rate, 150), rate, np.zeros(50, np.float32), seq=9).accepted


def test_rate_change_flushes_and_resets():
    w = SlidingWindower(2.0, 1.0, min_segment_s=0.5)
    w.push(T0, 100.0, np.ones(250, np.float32))
    r = w.push(grid_ns(T0, 100.0, 250), 200.0, np.full(400, 3.0, np.float32))
    assert [e.kind for e in r.events] == ["rate_change"]
    assert "100 Hz -> 200 Hz" in r.events[0].detail
    old = [wi for wi in r.windows if wi.segment == 0]
    new = [wi for wi in r.windows if wi.segment == 1]
    assert len(old) == 1 and old[0].kind == "flush" and len(old[0].samples[old[0].emit_from:]) == 50
    assert len(new) == 1 and new[0].rate_hz == 200.0 and len(new[0].samples) == 400


def test_mixed_gaps_random_property():
    """Random chunkings with random gaps: every sample of every segment comes back once."""
    rng = np.random.default_rng(42)
    rate = 125.0
    for _ in range(10):
        w = SlidingWindower(4.0, 1.0, min_segment_s=0.0)
        t = T0
        expected_vals, expected_ts, wins = [], [], []
        for _seg in range(int(rng.integers(1, 5))):
            n = int(rng.integers(1, 2000))
            x = rng.standard_normal(n).astype(np.float32)
            for start, part in _chunks(x, rate, rng, t0=t, max_chunk=300):
                r = w.push(start, rate, part)
                assert r.accepted
                wins += r.windows
            expected_vals.append(x)
            expected_ts.append(grid_ns(t, rate, np.arange(n)))
            t = int(grid_ns(t, rate, n)) + int(rng.integers(1, 50)) * 10**9
        wins += w.flush().windows
        vals, ts = _reassemble(wins)
        np.testing.assert_array_equal(vals, np.concatenate(expected_vals))
        np.testing.assert_array_equal(ts, np.concatenate(expected_ts))


def test_window_timestamps_at_other_rate_and_emit_index():
    wi = Window(start_ns=T0, rate_hz=25.0, samples=np.zeros(200, np.float32), emit_from=150, segment=0, kind="full")
    ts = wi.timestamps_ns(100.0)
    assert len(ts) == 800 and ts[0] == T0 and ts[1] - ts[0] == 10_000_000
    assert wi.emit_from_at(100.0) == 600
    assert len(wi.timestamps_ns(100.0, n=5)) == 5
    assert wi.end_ns == T0 + 8 * 10**9


def test_invalid_configuration():
    with pytest.raises(ValueError):
        SlidingWindower(2.0, 3.0)
    with pytest.raises(ValueError):
        SlidingWindower(2.0, 1.0).push(T0, 0.0, np.zeros(3))


@pytest.mark.parametrize("lookahead_s", [0.5, 1.0, 1.37])
def test_lookahead_holds_back_window_edge_and_still_covers_everything(lookahead_s):
    rng = np.random.default_rng(11)
    rate = 100.0
    x = rng.standard_normal(3000).astype(np.float32)
    w = SlidingWindower(8.0, 2.0, lookahead_s=lookahead_s)
    la = int(round(lookahead_s * rate))
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, 250))
        for win in w.push(int(round(i * 1e9 / rate)), rate, x[i:i + k]).windows:
            if win.kind == "full":
                # the newest `la` samples are context only: emitted by a later window
                assert win.emit_stop == len(win.samples) - la
            parts.append(win.samples[win.emit_from:win.emit_stop])
        i += k
        assert w.emitted_until_ns is None or w.emitted_until_ns <= int(round((i - la) * 1e9 / rate))
    tail = w.flush().windows
    assert tail and tail[0].emit_stop == len(tail[0].samples)
    parts += [t.samples[t.emit_from:t.emit_stop] for t in tail]
    assert np.array_equal(np.concatenate(parts), x)


def test_lookahead_plus_hop_must_fit_in_window():
    with pytest.raises(ValueError, match="lookahead"):
        SlidingWindower(4.0, 2.0, lookahead_s=2.5)


@pytest.mark.parametrize("offset_ms", [5.0, -5.0, 7.9, -7.9])
def test_stamp_jitter_under_a_period_is_absorbed_for_the_next_seq(offset_ms):
    """At 125 Hz a stamp 5 ms off (0.625 periods) used to start a new segment or be rejected, and the next,
    correctly stamped chunk then looked out of order: a whole chunk dead-lettered plus a spurious gap."""
    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    results = []
    for k in range(6):
        start = grid_ns(T0, rate, k * n) + (int(offset_ms * 1e6) if k == 2 else 0)
        results.append(w.push(start, rate, np.full(n, float(k), np.float32), seq=k))
    assert all(r.accepted and not r.events for r in results), [r.events for r in results]
    assert w.segment == 0 and w.expected_next_ns == grid_ns(T0, rate, 6 * n)
    # without seq continuity the stricter gap_tolerance still applies
    late = w.push(grid_ns(T0, rate, 6 * n) + 5_000_000, rate, np.zeros(n, np.float32), seq=9)
    assert [e.kind for e in late.events] == ["gap"]


@pytest.mark.parametrize("rate, n_in", [(62.5, 194), (40.0, 121)])
def test_output_grid_of_a_short_flushed_segment_covers_its_whole_span(rate, n_in):
    """Rounding the output length down (194 samples at 62.5 Hz -> 310 at 100 Hz) used to end the published span
    a few ms before the input's end: the 10 ms point there was lost between this flush and the next window."""
    start = T0 + 8_000_000
    w = SlidingWindower(8.0, 2.0)
    w.push(start, rate, np.zeros(n_in, np.float32))
    win = w.flush().windows[0]
    n_out = int(round(n_in * 100.0 / rate))
    times, values, k0, k1 = win.on_output_grid(100.0, np.arange(n_out, dtype=np.float32))
    first = -(-start // 10_000_000) * 10_000_000
    np.testing.assert_array_equal(times, np.arange(first, win.end_ns, 10_000_000))
    assert (k0, k1) == (0, len(times))
    np.testing.assert_allclose(values, (times - start) / 1e7, atol=1e-3)  # y is a ramp: extrapolated past its end


def test_output_grid_keeps_a_non_finite_sample_local_and_works_near_the_end_of_time():
    rate = 62.5
    for start in (T0, 2**63 - 10 * 10**9):  # the wire admits chunks ending just below 2^63 ns
        w = SlidingWindower(8.0, 2.0)
        win = w.push(start, rate, np.zeros(500, np.float32)).windows[0]
        y = np.ones(800, np.float32)
        y[400] = np.nan
        times, values, _, _ = win.on_output_grid(100.0, y)
        assert len(times) == 800 and times[-1] < win.end_ns
        assert 0 < np.count_nonzero(~np.isfinite(values)) <= 3 and np.all(values[np.isfinite(values)] == 1.0)


def test_a_fast_sender_clock_steps_segments_instead_of_losing_chunks():
    """Stamps from a clock 1000 ppm fast drift a sample early every 8 s at 125 Hz: each time, the next chunk by seq
    was dead-lettered as out of order. Now it starts a new segment at its stamp (a `clock_step`), losing nothing."""
    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    wins, events = [], []
    for k in range(40):
        r = w.push(T0 + int(k * n / rate * 1e9 * (1 - 1e-3)), rate, np.full(n, float(k), np.float32), seq=k)
        assert r.accepted, r.events
        wins, events = wins + r.windows, events + r.events
    wins += w.flush().windows
    assert {e.kind for e in events} == {"clock_step"} and len(events) >= 3
    vals, _ = _reassemble(wins)
    np.testing.assert_array_equal(vals, np.repeat(np.arange(40.0), n))  # every sample once, in order
    # an overlap larger than a clock could step is still refused
    r = w.push(T0, rate, np.zeros(n, np.float32), seq=40)
    assert not r.accepted and r.events[0].kind == "out_of_order"


def test_seq_continuity_counts_again_after_a_producer_restart():
    """seq restarts at 0; with the highest seq ever seen kept as 'last', jitter was not absorbed until the new seq
    passed the old maximum, and a 5 ms late stamp dead-lettered the next chunk."""
    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    for k in range(10):
        assert w.push(grid_ns(T0, rate, k * n), rate, np.zeros(n, np.float32), seq=100 + k).accepted
    for k in range(10, 14):
        jitter = 5_000_000 if k == 12 else 0
        r = w.push(grid_ns(T0, rate, k * n) + jitter, rate, np.zeros(n, np.float32), seq=k - 10)
        assert r.accepted and not r.events, r.events


def test_rate_change_on_time_continues_where_the_old_rate_ended_and_after_an_outage_reports_the_gap():
    w = SlidingWindower(2.0, 1.0, min_segment_s=0.5)
    w.push(T0, 62.5, np.ones(625, np.float32), seq=0)
    end = w.expected_next_ns
    r = w.push(end - 12_000_000, 40.0, np.ones(400, np.float32), seq=1)  # 12 ms early: jitter, not an overlap
    assert [e.kind for e in r.events] == ["rate_change"]
    new = [wi for wi in r.windows if wi.rate_hz == 40.0]
    assert new and new[0].start_ns == end  # not inside the old segment's last period
    later = w.expected_next_ns + 30 * 10**9
    r = w.push(later, 125.0, np.ones(250, np.float32), seq=2)
    assert [e.kind for e in r.events] == ["gap", "rate_change"]


def test_an_empty_chunk_changes_nothing():
    w = SlidingWindower(2.0, 1.0)
    w.push(T0, 100.0, np.ones(150, np.float32), seq=0)
    before = (w.segment, w.expected_next_ns)
    r = w.push(T0 + 123_456_789, 50.0, np.zeros(0, np.float32), seq=1)  # off the grid, another rate
    assert r.accepted and not r.events and not r.windows and (w.segment, w.expected_next_ns) == before
    assert w.push(w.expected_next_ns, 100.0, np.ones(100, np.float32), seq=2).accepted


def test_whole_multiple_outputs_stay_on_the_segment_grid():
    """300 Hz in, 600 Hz out: offsets from a window's rounded start drifted 1 ns off the segment's grid."""
    w = SlidingWindower(2.0, 1.0)
    wins, _ = _run(w, [(grid_ns(T0, 300.0, k * 301), np.zeros(301, np.float32)) for k in range(5)], 300.0)  # flush at 905
    for win in wins:
        idx = 2 * win.offset + np.arange(2 * len(win.samples))
        np.testing.assert_array_equal(win.timestamps_ns(600.0), grid_ns(T0, 600.0, idx))


@pytest.mark.parametrize("rate, window_s, hop_s, lookahead_s", [(125.0, 8.0, 2.0, 1.0), (62.5, 4.0, 1.3, 0.5),
                                                                 (360.0, 3.0, 1.0, 0.0)])
def test_windows_lie_on_the_absolute_grid_and_a_resumed_stream_computes_the_same_ones(rate, window_s, hop_s,
                                                                                      lookahead_s):
    """A stream joined mid-way (first chunk with seq > 0, as after a rebalance) emits no head: from the first grid
    window wholly in its data on, it emits the very windows (same samples, same emitted part) an uninterrupted
    windower emits, whatever chunk it starts at. Windows used to be anchored at the first chunk a process saw."""
    rng = np.random.default_rng(int(rate))
    x = rng.standard_normal(int(40 * rate)).astype(np.float32)
    t0 = T0 + 1_234_567_000  # not on the hop grid
    if (1e9 / rate).is_integer():
        cks = list(_chunks(x, rate, rng, t0=t0, max_chunk=int(rate)))
    else:  # a resumed grid starts at its first chunk's stamp: exact when that stamp is exact (1 s chunks at 360 Hz)
        cks = [(int(grid_ns(t0, rate, i)), x[i:i + int(rate)]) for i in range(0, len(x), int(rate))]
    full = SlidingWindower(window_s, hop_s, lookahead_s=lookahead_s)
    ref, _ = _run(full, cks, rate)
    hop_ns = round(hop_s * 1e9)
    for wi in ref[1:-1]:  # every window but the head and the final flush ends on the grid
        last = int(wi.timestamps_ns()[-1])
        assert last < -(-(last + 1) // hop_ns) * hop_ns <= wi.end_ns
    by_start = {wi.start_ns: wi for wi in ref}
    for j in rng.integers(1, len(cks) - 1, size=5):
        w = SlidingWindower(window_s, hop_s, lookahead_s=lookahead_s)
        wins, _ = _run(w, cks[j:], rate, seq0=int(j))
        assert w.resumed
        head_end = wins[0].timestamps_ns()[wins[0].emit_from] if wins else None
        # nothing before the first grid core whose window lies wholly in the data
        assert head_end is None or head_end >= cks[j][0] + int(window_s * 1e9) - round((hop_s + lookahead_s) * 1e9) - 2e9 / rate
        for wi in wins:
            twin = by_start[wi.start_ns]
            np.testing.assert_array_equal(wi.samples, twin.samples)
            assert (wi.emit_from, wi.emit_stop, wi.kind) == (twin.emit_from, twin.emit_stop, twin.kind)
    # a first chunk with seq 0 (or none) is a stream's start: its head is emitted
    w = SlidingWindower(window_s, hop_s, lookahead_s=lookahead_s)
    first, _ = _run(w, cks, rate)
    assert not w.resumed and first[0].emit_from == 0 and first[0].start_ns == t0


@pytest.mark.parametrize("known_s", [0.0, 17.0, 18.5, 40.0])
def test_the_windower_takes_its_head_as_emitted_only_up_to_a_known_end(known_s):
    """Resumed at seq 15 (15 s), output known complete up to `known_s`: everything after it is emitted exactly once;
    at or before the segment's start that is a whole head, beyond the head the mid-stream rule."""
    rate = 125.0
    w = SlidingWindower(8.0, 2.0, lookahead_s=1.0, flushed_until_ns=T0 + int(known_s * 1e9))
    emitted = []
    for k in range(15, 40):
        res = w.push(T0 + k * 10**9, rate, np.arange(125, dtype=np.float32) + k * 125, seq=k)
        emitted += [x.samples[x.emit_from:x.emit_stop] for x in res.windows]
    emitted += [x.samples[x.emit_from:x.emit_stop] for x in w.flush().windows]
    got = np.concatenate(emitted)
    plain = SlidingWindower(8.0, 2.0, lookahead_s=1.0)
    plain.push(T0 + 15 * 10**9, rate, np.zeros(125, np.float32), seq=15)
    head_s = (plain.emitted_until_ns - T0) / 1e9  # where the mid-stream rule starts emitting
    first_s = max(15.0, min(known_s, head_s))
    np.testing.assert_array_equal(got, np.arange(int(np.ceil(first_s * 125)), 40 * 125, dtype=np.float32))
    assert w.resumed == (known_s >= head_s)


def test_a_resumed_stream_with_resume_history_emits_the_same_windows_from_that_much_later():
    """`resume_history_s`: a resumed segment's first seconds only rebuild a reader's other state (the pipeline's
    patient context). Its windows are still the uninterrupted windower's, the first one starting no earlier than
    that much after the segment's start, and emission starts no later than history + window after it."""
    rate, window_s, hop_s, la, history_s = 125.0, 8.0, 2.0, 1.0, 65.0
    rng = np.random.default_rng(3)
    x = rng.standard_normal(int(150 * rate)).astype(np.float32)
    t0 = T0 + 1_234_567_000
    cks = list(_chunks(x, rate, rng, t0=t0, max_chunk=int(rate)))
    ref, _ = _run(SlidingWindower(window_s, hop_s, lookahead_s=la), cks, rate)
    by_start = {wi.start_ns: wi for wi in ref}
    for j in rng.integers(1, len(cks) // 3, size=5):
        w = SlidingWindower(window_s, hop_s, lookahead_s=la, resume_history_s=history_s)
        wins, _ = _run(w, cks[j:], rate, seq0=int(j))
        assert w.resumed and wins
        start = cks[j][0]
        assert wins[0].start_ns >= start + history_s * 1e9
        assert wins[0].timestamps_ns()[wins[0].emit_from] <= start + (history_s + window_s) * 1e9
        for wi in wins:
            twin = by_start[wi.start_ns]
            np.testing.assert_array_equal(wi.samples, twin.samples)
            assert (wi.emit_from, wi.emit_stop, wi.kind) == (twin.emit_from, twin.emit_stop, twin.kind)
    with pytest.raises(ValueError):
        SlidingWindower(window_s, hop_s, resume_history_s=-1.0)


def _glitched(w, rate, n, glitch_k, ks, seq_of=lambda k: k, ahead_ns=3600 * 10**9):
    """Push chunk k of a 1 s grid for every k in `ks`, chunk `glitch_k` stamped `ahead_ns` ahead; (k, result) pairs."""
    out = []
    for k in ks:
        start = int(grid_ns(T0, rate, k * n)) + (ahead_ns if k == glitch_k else 0)
        out.append((k, w.push(start, rate, np.full(n, float(k), np.float32), seq=seq_of(k))))
    return out


def test_one_future_stamped_chunk_does_not_cut_the_stream_off():
    """A monitor clock glitch stamps one chunk an hour ahead, so every later, correctly stamped chunk lies before
    its segment: RESYNC_CHUNKS of them in a row close the glitch's segment with a `clock_step` event and the stream
    goes on at the right stamps (the ones before are refused, each with its event)."""
    from operators.state.windowing import RESYNC_CHUNKS

    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    res = _glitched(w, rate, n, 15, range(40))
    refused = [k for k, r in res if not r.accepted]
    assert refused == list(range(16, 16 + RESYNC_CHUNKS - 1))  # reported, each with its own event
    assert all([e.kind for e in r.events] == ["out_of_order"] for k, r in res if k in refused)
    steps = [(k, e) for k, r in res for e in r.events if e.kind == "clock_step"]
    assert len(steps) == 1 and steps[0][0] == 15 + RESYNC_CHUNKS
    k, ev = steps[0]
    glitch_start = grid_ns(T0, rate, 15 * n) + 3600 * 10**9
    assert ev.start_ns == grid_ns(T0, rate, k * n) and f"segment from {glitch_start} closed" in ev.detail
    assert w.segment_start_ns == grid_ns(T0, rate, k * n) and w.expected_next_ns == grid_ns(T0, rate, 40 * n)
    # every accepted sample comes back once, on its own stamp
    wins = [x for _, r in res for x in r.windows] + w.flush().windows
    vals, ts = _reassemble(wins)
    kept = [k for k, r in res if r.accepted]
    np.testing.assert_array_equal(vals, np.repeat(np.array(kept, np.float32), n))
    assert np.all(ts[vals >= k] == grid_ns(T0, rate, np.arange(k * n, 40 * n)))


def test_a_producer_restart_after_a_clock_glitch_resyncs_too():
    """After the glitch the producer restarts (seq from 0): its chunks were refused as duplicates for good."""
    from operators.state.windowing import RESYNC_CHUNKS

    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    res = _glitched(w, rate, n, 15, range(17))  # the glitch, then one refused chunk
    assert not res[-1][1].accepted
    res = _glitched(w, rate, n, None, range(17, 30), seq_of=lambda k: k - 17)  # restarted: seq 0, 1, ...
    kinds = [[e.kind for e in r.events] for _, r in res]
    assert kinds[:RESYNC_CHUNKS - 1] == [["duplicate"]] * (RESYNC_CHUNKS - 1)
    assert "clock_step" in kinds[RESYNC_CHUNKS - 1] and all(r.accepted for _, r in res[RESYNC_CHUNKS - 1:])
    assert w.expected_next_ns == grid_ns(T0, rate, 30 * n) and w.last_seq == 12


def test_a_replay_of_old_chunks_never_resyncs_and_a_broken_run_starts_over():
    """Resent chunks (old seqs, old stamps) are duplicates however many come in a row; a run of early chunks that
    stops following itself by seq or stamp starts counting anew."""
    rate, n = 125.0, 125
    w = SlidingWindower(8.0, 2.0)
    for k in range(20):
        assert w.push(grid_ns(T0, rate, k * n), rate, np.zeros(n, np.float32), seq=k).accepted
    for k in range(5, 15):  # a replay
        r = w.push(grid_ns(T0, rate, k * n), rate, np.zeros(n, np.float32), seq=k)
        assert not r.accepted and [e.kind for e in r.events] == ["duplicate"]
    # newer by seq but each starting far from where the previous one ended: no consistent run
    for i, k in enumerate((3, 9, 1, 12, 6)):
        r = w.push(grid_ns(T0, rate, k * n), rate, np.zeros(n, np.float32), seq=20 + i)
        assert not r.accepted and [e.kind for e in r.events] == ["out_of_order"]
    assert w.push(grid_ns(T0, rate, 20 * n), rate, np.zeros(n, np.float32), seq=25).accepted
    assert w.segment == 0
    # a replay from seq 0 with the old stamps (a replay tool re-run while the bed is held) is no producer restart
    for k in range(0, 8):
        r = w.push(grid_ns(T0, rate, k * n), rate, np.zeros(n, np.float32), seq=k)
        assert not r.accepted and [e.kind for e in r.events] == ["duplicate"]
    assert w.segment == 0
