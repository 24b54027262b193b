"""Context selection and the per-bed ContextStore."""
from __future__ import annotations

import numpy as np
import pytest

from operators.state.context import ContextStore, select_context
from operators.translator import PairedContext
from operators.processing.resample import decimate_to
from operators.state.windowing import SlidingWindower

T0 = 1_700_000_000_000_000_000


def _pair(rate=125.0, dur=60.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(500 * dur)) / 500
    beats = np.cumsum(0.8 + rng.normal(0, 0.015, int(dur / 0.8) + 2)) - 0.5
    ecg = np.zeros_like(t)
    ppg = np.zeros_like(t)
    for b in beats:
        ecg += 1.2 * np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.4 * np.exp(-0.5 * ((t - b - 0.3) / 0.05) ** 2)
        ppg += np.exp(-0.5 * ((t - b - 0.3) / 0.09) ** 2)
    ecg += 0.01 * rng.standard_normal(len(t))
    ppg += 0.01 * rng.standard_normal(len(t))
    if rate != 500:
        ecg, ppg = decimate_to(ecg, 500, rate), decimate_to(ppg, 500, rate)
    return ecg, ppg


def test_select_context_avoids_bad_segments():
    rate = 125.0
    ecg, ppg = _pair(rate)
    rng = np.random.default_rng(1)
    ecg[: 40 * 125] += 2.0 * rng.standard_normal(40 * 125)  # first 40 s: ECG buried in noise
    ppg[50 * 125: 52 * 125] = np.nan  # dropout at 50-52 s
    ctx = select_context(ecg, ppg, rate, length_s=8.0)
    assert ctx is not None and ctx.rate_hz == rate
    assert len(ctx.ecg) == len(ctx.ppg) == 1000 and ctx.ecg.dtype == np.float32
    # it is a clean, aligned slice of the input
    e32, p32 = ecg.astype(np.float32), ppg.astype(np.float32)
    start = int(np.flatnonzero((e32 == ctx.ecg[0]) & (p32 == ctx.ppg[0]))[0])
    assert start >= 40 * 125 and not (50 * 125 - 1000 < start < 52 * 125)
    np.testing.assert_array_equal(ctx.ecg, ecg[start:start + 1000].astype(np.float32))
    np.testing.assert_array_equal(ctx.ppg, ppg[start:start + 1000].astype(np.float32))


def test_select_context_none_when_unusable():
    rate = 125.0
    ecg, ppg = _pair(rate, dur=20.0)
    assert select_context(ecg[:500], ppg[:500], rate, 10.0) is None  # too short
    assert select_context(np.zeros(2500), ppg[:2500], rate, 10.0) is None  # flat ECG
    rng = np.random.default_rng(2)
    assert select_context(ecg[:2500], rng.standard_normal(2500), rate, 10.0) is None  # PPG noise
    with pytest.raises(ValueError):
        select_context(ecg[:100], ppg[:99], rate)


def _feed(store, name, x, rate, window_s=8.0, hop_s=2.0, t0=T0):
    """Push what a SlidingWindower emits (overlapping windows), as the worker would."""
    w = SlidingWindower(window_s, hop_s)
    i = 0
    while i < len(x):
        n = int(rate)  # 1 s chunks
        for win in w.push(int(t0 + round(i * 1e9 / rate)), rate, x[i:i + n]).windows:
            store.push(name, win.start_ns, win.rate_hz, win.samples)
        i += n


def test_store_aligns_overlapping_windows_and_is_bounded():
    rate = 125.0
    ecg, ppg = _pair(rate, dur=40.0)
    store = ContextStore(length_s=10.0, keep_s=20.0, refresh_s=5.0)
    _feed(store, "II", ecg, rate)
    assert store.get(T0 + 6 * 10**9) is None  # no PPG yet
    _feed(store, "PLETH", ppg, rate)
    g = T0 + 35 * 10**9
    e, p, r, t0 = store.aligned(g)
    assert r == rate and len(e) == len(p) == 20 * 125 and t0 == g - 20 * 10**9  # the keep_s before the point
    k0 = int(round((t0 - T0) * rate / 1e9))
    np.testing.assert_array_equal(e, ecg[k0:k0 + len(e)].astype(np.float32))
    np.testing.assert_array_equal(p, ppg[k0:k0 + len(p)].astype(np.float32))
    ctx = store.get(g + 10**9)
    assert ctx is not None and len(ctx.ecg) == 1250
    assert store.get(g + 4 * 10**9) is ctx  # the same grid point: the same object
    # what is held is bounded by the pending point, not by arrival: samples before it - keep_s are gone
    assert store.nbytes() <= 2 * 4 * (20 + 5 + 8) * 125


def test_store_mixed_rates_aligns_at_the_faster_rate():
    ecg_hi, _ = _pair(250.0, dur=30.0)
    _, ppg = _pair(125.0, dur=30.0)
    _, ppg_hi = _pair(250.0, dur=30.0)
    store = ContextStore(length_s=10.0, keep_s=30.0)
    _feed(store, "II", ecg_hi, 250.0)
    _feed(store, "PLETH", ppg, 125.0)
    end = T0 + 30 * 10**9
    e, p, r, t0 = store.aligned(end)
    assert r == 250.0  # the ECG's rate: its band is kept
    k0 = int(round((t0 - T0) * 250.0 / 1e9))
    np.testing.assert_allclose(e, ecg_hi[k0:k0 + len(e)], atol=1e-6)
    # the 125 Hz PPG brought onto the ECG grid matches the same PPG made at 250 Hz directly
    assert np.corrcoef(p[100:-100], ppg_hi[k0 + 100:k0 + len(p) - 100])[0, 1] > 0.98
    assert store.get(end) is not None


def test_store_keeps_a_full_rate_ecg_qrs_when_the_ppg_is_slow():
    """A bed with a 25 Hz PPG and a 125 Hz ECG: the context ECG keeps its band (a PPG-rate grid would cut it at
    12.5 Hz and blunt the QRS that PPG->ECG draws from this context)."""
    ecg, _ = _pair(125.0, dur=30.0)
    _, ppg = _pair(25.0, dur=30.0)
    store = ContextStore(length_s=10.0, keep_s=30.0)
    _feed(store, "II", ecg, 125.0)
    _feed(store, "PLETH", ppg, 25.0)
    end = T0 + 30 * 10**9
    ctx = store.get(end)
    assert ctx is not None

    def p2p(x, rate):  # median peak-to-peak over 0.8 s spans (one beat each)
        n = int(0.8 * rate)
        return np.median([np.ptp(x[i:i + n]) for i in range(0, len(x) - n, n)])

    assert p2p(ctx.ecg, ctx.rate_hz) == pytest.approx(p2p(ecg, 125.0), rel=0.05)  # a 25 Hz grid kept 67 %
    assert ctx.rate_hz == 125.0 and len(ctx.ecg) == len(ctx.ppg) == 1250
    # still a slice of the ECG as measured, and the PPG upsampled onto its grid
    start = int(np.argmin([np.abs(ecg[s:s + 1250] - ctx.ecg).max() for s in range(len(ecg) - 1250 + 1)]))
    np.testing.assert_allclose(ctx.ecg, ecg[start:start + 1250], atol=1e-5)
    assert store.aligned(end)[2] == 125.0


def _fed_store(dur: float, keep_s: float, rate: float = 125.0):
    """(store, ecg, ppg, its context at the end) after `dur` s of a clean synthetic pair, fed as the worker feeds it."""
    ecg, ppg = _pair(rate, dur=dur)
    store = ContextStore(length_s=10.0, keep_s=keep_s, refresh_s=5.0)
    _feed(store, "II", ecg, rate)
    _feed(store, "PLETH", ppg, rate)
    good = store.get(T0 + int(dur * 1e9))
    assert good is not None
    return store, ecg, ppg, good


def test_store_gap_starts_a_segment_and_keeps_last_good():
    rate = 125.0
    store, ecg, ppg, good = _fed_store(30.0, 20.0)
    # after a 15 s gap only 4 s of new data: no fresh context from them, the last good one is kept (same patient)
    later = T0 + 45 * 10**9
    store.push("II", later, rate, ecg[:500])
    store.push("PLETH", later, rate, ppg[:500])
    before = store.get(later)  # chosen from the data before the gap
    assert before is not None and not np.array_equal(before.ecg, good.ecg)
    assert store.aligned(later + 5 * 10**9)[3] == later  # never spliced across the gap
    assert store.get(later + 5 * 10**9) is before
    store.clear()
    assert store.get(later + 5 * 10**9) is None
    with pytest.raises(ValueError):
        store.push("RESP", T0, rate, ecg[:10])


@pytest.mark.parametrize("restart_at_s", [30.0 + 3600.0, -100.0])
def test_store_forgets_its_last_good_context_after_a_long_break_or_a_clock_going_back(restart_at_s):
    """An hour's break, or a clock starting again (a re-run replay, a new recording): the bed may hold another
    patient, whose first unusable seconds used to be translated with the old patient's context. A clock going
    back also froze the store: every new sample was taken for one already held."""
    rate = 125.0
    store, ecg, ppg, _ = _fed_store(30.0, 20.0)
    later = T0 + int(restart_at_s * 1e9)
    store.push("II", later, rate, ecg[:375])
    store.push("PLETH", later, rate, ppg[:375])
    end = later + 3 * 10**9
    assert store.get(end) is None
    e, _, _, t0 = store.aligned(end)
    assert t0 == later and len(e) == 375  # the new data is held, not discarded as already seen


def test_a_late_or_repeated_chunk_does_not_cost_the_context():
    """Lead II reaches the store unfiltered (the windower never sees a 125 Hz II): a chunk re-delivered from 38 s
    back, or two chunks swapped, wiped the track and the last good context with it."""
    rate = 125.0
    store, ecg, _, good = _fed_store(60.0, 30.0)
    end = T0 + 60 * 10**9
    held = store.aligned(end)[0]
    store.push("II", T0 + 22 * 10**9, rate, ecg[22 * 125:23 * 125])  # from 38 s back
    store.push("II", T0 + 59 * 10**9, rate, ecg[59 * 125:60 * 125])  # again
    np.testing.assert_array_equal(store.aligned(end)[0], held)
    assert store.get(end) is good



def test_a_signal_whose_clock_steps_back_is_held_on_its_new_time_line():
    """PLETH's sender stepped its clock back 5 s (the windower's clock_step / resync): the store ignored the next 5 s
    as already held, so PLETH samples sat 5 s off the lead II they were paired with. `step_back` forgets that
    signal's samples from the new stamp on; the rest, and lead II, stay."""
    rate = 125.0
    store, ecg, ppg, good = _fed_store(60.0, 30.0)
    end = T0 + 60 * 10**9
    held_ecg = store.aligned(end)[0]
    new = -ppg[:625]  # what the sender sends from its new 55 s on
    store.step_back("PLETH", T0 + 55 * 10**9)
    store.push("PLETH", T0 + 55 * 10**9, rate, new)
    e, p, _, t0 = store.aligned(end)
    a = (t0 - T0) // 8_000_000  # sample index of the first held (8 ms apart)
    np.testing.assert_array_equal(e, held_ecg)
    np.testing.assert_allclose(p[-625:], new, rtol=0, atol=1e-6)
    np.testing.assert_allclose(p[:-625], ppg[a:55 * 125], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ determinism
def _chunks(ecg, ppg, rate, chunk_s=1.0):
    """(signal, start_ns, samples) of both signals, interleaved by end time as a monitor sends them."""
    n = int(chunk_s * rate)
    out = []
    for i in range(0, len(ecg), n):
        t = T0 + int(round(i * 1e9 / rate))
        out += [("II", t, ecg[i:i + n]), ("PLETH", t, ppg[i:i + n])]
    return out


def _contexts(feed, rate, ask_when, starts, **kw):
    """Context per window start: `feed` pushed in its order, a window asking once `ask_when(i, signal, end_ns)`
    says so and its PLETH (start + 8 s) has arrived, as the worker asks when it translates a window."""
    store = ContextStore(length_s=10.0, keep_s=30.0, refresh_s=5.0, **kw)
    got, todo = {}, list(starts)
    for i, (sig, t, x) in enumerate(feed):
        store.push(sig, t, rate, x)
        end = t + int(round(len(x) * 1e9 / rate))
        if sig == "PLETH" and ask_when(i, sig, end):
            while todo and todo[0] + 8 * 10**9 <= end:
                s = todo.pop(0)
                got[s] = store.get(s)
    for s in todo:
        got[s] = store.get(s)
    return got, store


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and a.rate_hz == b.rate_hz
                                         and np.array_equal(a.ecg, b.ecg) and np.array_equal(a.ppg, b.ppg))


def test_a_windows_context_depends_on_the_input_only_not_on_interleaving_or_asking():
    """Issue 17: two runs over the same input gave different contexts (so different synthesized ECG), because the
    store re-selected from whatever had arrived when a window happened to ask. Here lead II arrives all before
    PLETH, chunk by chunk with it, or in 0.5 s chunks, and windows ask right away, in bursts, or only at the end;
    a stretch of noisy ECG makes the last good context matter. Every window gets the same context each time."""
    rate = 125.0
    ecg, ppg = _pair(rate, dur=90.0)
    rng = np.random.default_rng(7)
    ecg[40 * 125:] += 3.0 * rng.standard_normal(50 * 125)  # from 40 s no usable ECG: the last good one holds
    starts = [T0 + k * 2 * 10**9 for k in range(42)]
    inter = _chunks(ecg, ppg, rate)
    ii_first = [c for c in inter if c[0] == "II"] + [c for c in inter if c[0] == "PLETH"]
    fine = _chunks(ecg, ppg, rate, chunk_s=0.5)
    ref, store = _contexts(inter, rate, lambda i, s, e: True, starts, max_lag_s=120.0)
    assert store.scored == 29  # each candidate (every 2.5 s, 0 ... 70 s) scored once, not once per window
    assert all(ref[s] is not None for s in starts if s >= T0 + 10 * 10**9)
    runs = [_contexts(ii_first, rate, lambda i, s, e: True, starts, max_lag_s=120.0)[0],
            _contexts(fine, rate, lambda i, s, e: i % 23 == 0, starts, max_lag_s=120.0)[0],
            _contexts(inter, rate, lambda i, s, e: False, starts, max_lag_s=120.0)[0]]
    held = [ref[s] for s in starts if s >= T0 + 65 * 10**9]  # no clean 10 s before these grid points
    assert held and all(c is ref[T0 + 60 * 10**9] for c in held)  # the last good context, from before the noise
    for got in runs:
        bad = [(s - T0) / 1e9 for s in starts if not _same(got[s], ref[s])]
        assert not bad, f"contexts differ at window starts {bad} s"


def test_lead_ii_lagging_pleth_by_less_than_a_window_changes_nothing():
    """A window asks once its PLETH (start + 8 s) has arrived, for the grid point at or before its start: lead II
    arriving up to a window after the PLETH of the same time is all there (docs/delivery-semantics.md)."""
    rate = 125.0
    ecg, ppg = _pair(rate, dur=60.0)
    starts = [T0 + k * 2 * 10**9 for k in range(26)]
    inter = _chunks(ecg, ppg, rate)
    ii, pleth = [c for c in inter if c[0] == "II"], [c for c in inter if c[0] == "PLETH"]
    lagging = []
    for k in range(len(pleth)):  # lead II 7 s (7 chunks) behind PLETH
        lagging += [pleth[k]] + ([ii[k - 7]] if k >= 7 else [])
    lagging += ii[len(pleth) - 7:]
    ref, _ = _contexts(inter, rate, lambda i, s, e: True, starts)
    got, _ = _contexts(lagging, rate, lambda i, s, e: True, starts)
    assert sum(c is not None for c in ref.values()) >= 20
    assert all(_same(got[s], ref[s]) for s in starts)


def test_a_context_is_chosen_from_data_before_its_grid_point_only():
    """What comes at or after a grid point (the window itself, later data) never changes that point's context."""
    rate = 125.0
    ecg, ppg = _pair(rate, dur=60.0)
    at = T0 + 42 * 10**9  # grid point 40 s
    a, _ = _contexts(_chunks(ecg, ppg, rate), rate, lambda i, s, e: True, [at])
    ecg2, ppg2 = ecg.copy(), ppg.copy()
    ecg2[40 * 125:] = 0.0  # a flat ECG from the grid point on
    b, _ = _contexts(_chunks(ecg2, ppg2, rate), rate, lambda i, s, e: True, [at])
    assert a[at] is not None and _same(a[at], b[at])
    k = int(np.flatnonzero(ecg.astype(np.float32) == a[at].ecg[0])[0])
    assert 10 * 125 <= k and k + 1250 <= 40 * 125  # inside [grid point - keep_s, grid point)


def test_a_signal_that_never_comes_bounds_what_the_store_holds():
    """Lead II without PLETH (or a lead far ahead of the other): the pending points are decided without the
    missing signal once the other is max_lag_s ahead, so memory stays bounded."""
    rate = 125.0
    ecg, _ = _pair(rate, dur=150.0)
    store = ContextStore(length_s=10.0, keep_s=30.0, refresh_s=5.0, max_lag_s=30.0)
    for sig, t, x in _chunks(ecg, ecg, rate)[::2]:
        store.push(sig, t, rate, x)
    assert store.nbytes() <= 4 * (30 + 30 + 5 + 1) * 125
    assert store.get(T0 + 140 * 10**9) is None and store.scored == 0


def test_context_cache_builds_once_per_object_and_tag_and_stays_bounded():
    from operators.state.context import ContextCache

    cache, calls = ContextCache(2), []
    build = lambda v: (lambda: calls.append(v) or v)
    a = PairedContext(np.zeros(10, np.float32), np.zeros(10, np.float32), 100.0)
    b = PairedContext(np.zeros(10, np.float32), np.zeros(10, np.float32), 100.0)  # equal content, other object
    assert cache.get(a, "beat", build(1)) == 1 and cache.get(a, "beat", build(2)) == 1
    assert cache.get(a, "qrs", build(3)) == 3  # another value of the same context
    assert cache.get(b, "beat", build(4)) == 4  # identity, not content, is the key
    assert calls == [1, 3, 4] and len(cache) == 2
    assert cache.get(a, "beat", build(5)) == 5  # least recently used went first


def test_context_cache_slot_holds_one_version_per_bed():
    """Keyed by bed, a refreshed context replaces its bed's entry: as many entries as beds, however often contexts
    change, and a stale version is rebuilt, never served for the new one."""
    from operators.state.context import ContextCache

    cache, calls = ContextCache(4), []
    build = lambda v: (lambda: calls.append(v) or v)
    ctx = lambda: PairedContext(np.zeros(10, np.float32), np.zeros(10, np.float32), 100.0)
    versions = [ctx() for _ in range(5)]
    for i, c in enumerate(versions):
        assert cache.get(c, "beat", build(i), slot="bed-1") == i
        assert cache.get(c, "beat", build(-1), slot="bed-1") == i  # the current version is cached
    assert calls == [0, 1, 2, 3, 4] and len(cache) == 1
    assert cache.get(versions[0], "beat", build(9), slot="bed-1") == 9  # the old one was replaced
    other = ctx()
    assert cache.get(other, "beat", build(7), slot="bed-2") == 7 and len(cache) == 2


def test_with_a_fallback_bound_a_decision_depends_on_history_s_of_input_only():
    """Issue 17: a worker taking over a bed re-reads its input from a committed offset, not from the beginning. With
    `fallback_s` a store fed from any point at or before `G - history_s` decides `G` as one fed the whole stream,
    through a lead-off where the last good context stands in (and then expires); without the bound the last good
    context reaches back to wherever the stream began."""
    rate = 125.0
    ecg, ppg = _pair(rate, dur=150.0)
    rng = np.random.default_rng(8)
    ecg[50 * 125:110 * 125] += 3.0 * rng.standard_normal(60 * 125)  # no usable ECG from 50 to 110 s
    feed = _chunks(ecg, ppg, rate)
    points = [T0 + k * 5 * 10**9 for k in range(29)]  # asked once their window (8 s) is in

    def decisions(fallback_s, from_s):
        store = ContextStore(length_s=10.0, keep_s=30.0, refresh_s=5.0, fallback_s=fallback_s)
        got = {}
        for sig, t, x in feed:
            if t >= T0 + from_s * 10**9:
                store.push(sig, t, rate, x)
            if sig == "PLETH":
                end = t + 10**9
                for g in [g for g in points if g + 8 * 10**9 <= end and g not in got]:
                    got[g] = store.get(g)
        return store, got

    store, full = decisions(30.0, 0)
    assert store.history_s == 60.0
    held = [(g - T0) // 10**9 for g in points if full[g] is not None]
    # fresh contexts to 70 s, the last good one to 100 s (found at 70 s), none while only noise is in range, then fresh
    assert held == list(range(10, 105, 5)) + list(range(120, 141, 5)), held
    for from_s in (3, 20, 41, 55):
        _, resumed = decisions(30.0, from_s)
        bad = [(g - T0) / 1e9 for g in points if g >= T0 + (from_s + 60) * 10**9 and not _same(resumed[g], full[g])]
        assert not bad, (from_s, bad)
    _, unbounded = decisions(None, 0)
    assert all(unbounded[g] is not None for g in points if g >= T0 + 10 * 10**9)  # the last good one, for ever
    _, late = decisions(None, 41)
    assert not _same(late[T0 + 105 * 10**9], unbounded[T0 + 105 * 10**9])  # 64 s later: still another context


def test_a_store_fed_from_resume_from_ns_on_makes_every_pending_decision_the_same():
    """What a worker commits must leave a new owner the input its bed's context is still decided from: the pending
    point's `keep_s`, and, through a lead-off, the data the last good context was found in (here 70 s back)."""
    rate = 125.0
    ecg, ppg = _pair(rate, dur=170.0)
    rng = np.random.default_rng(9)
    ecg[50 * 125:140 * 125] += 3.0 * rng.standard_normal(90 * 125)  # no usable ECG from 50 to 140 s
    feed = _chunks(ecg, ppg, rate)
    points = [T0 + k * 5 * 10**9 for k in range(33)]

    def run(from_ns=None, stop_after=None):
        store = ContextStore(length_s=10.0, keep_s=30.0, refresh_s=5.0, fallback_s=120.0)
        got, moments = {}, []
        for i, (sig, t, x) in enumerate(feed):
            if from_ns is None or t >= from_ns:
                store.push(sig, t, rate, x)
            if sig == "PLETH":
                for g in [g for g in points if g + 8 * 10**9 <= t + 10**9 and g not in got]:
                    got[g] = store.get(g)
                moments.append((t + 10**9, store.resume_from_ns(), store._next_g))
        return got, moments

    full, moments = run()
    assert all(full[g] is not None for g in points if g >= T0 + 10 * 10**9)  # the last good context throughout
    back = [(end - r) / 1e9 for end, r, _ in moments if r is not None]
    assert max(back) > 100 and min(back[40:]) < 45  # held back through the lead-off, not otherwise
    for end, r, pending in moments[20::17]:
        resumed, _ = run(from_ns=r)
        bad = [(g - T0) / 1e9 for g in points if g >= pending and not _same(resumed[g], full[g])]
        assert not bad, ((end - T0) / 1e9, bad)
        if T0 + 80 * 10**9 <= end <= T0 + 140 * 10**9:  # in the lead-off, a re-read from the pending point's
            later, _ = run(from_ns=pending - 30 * 10**9)  # keep_s only loses the last good context
            assert any(not _same(later[g], full[g]) for g in points if g >= pending), (end - T0) / 1e9
