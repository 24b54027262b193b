"""stream.contextinput: context-only input held until the commit rule may release it."""
from __future__ import annotations

from stream.contextinput import CONTEXT_INPUT_SKEW_S, ContextOnlyInput

S = 10**9
INF = float("inf")


def _held(lag_s: float, beds=("A",), seconds: int = 60) -> ContextOnlyInput:
    """One 1 s chunk per bed and second (token (bed, k), ending at k + 1 s), pushed at clock() = k."""
    ctx = ContextOnlyInput(lag_s)
    for k in range(seconds):
        for bed in beds:
            ctx.hold(bed, (k + 1) * S, (bed, k), float(k))
    return ctx


def test_a_chunk_is_released_ack_lag_plus_skew_before_the_newest_and_not_after_the_context_needs_it():
    ctx = _held(43.0)
    ctx.release_due(lambda bed: INF)
    lag = 43.0 + CONTEXT_INPUT_SKEW_S
    assert ctx.completed() == [("A", k) for k in range(int(60 - lag))]  # ends at or before 60 s - lag
    assert ctx.completed() == []  # handed out once
    ctx.hold("A", 70 * S, ("A", 69), 69.0)  # newest 70 s, but the context needs the input from 20 s on
    ctx.release_due(lambda bed: 20 * S)
    assert ctx.completed() == [("A", k) for k in range(int(60 - lag), 20)]
    assert len(ctx.held()) == 60 - 20 + 1


def test_without_an_ack_lag_there_is_no_skew_either():
    ctx = _held(0.0, seconds=5)
    ctx.release_due(lambda bed: INF)
    assert ctx.completed() == [("A", k) for k in range(5)] and ctx.held() == []
    assert len(ctx) == 1  # the bed is forgotten only by a full release


def test_a_silent_bed_is_released_whole_and_forgotten():
    ctx = _held(43.0, beds=("A",), seconds=30)
    ctx.hold("B", 50 * S, ("B", 0), 49.0)
    ctx.release_idle(now=58.0, idle_s=10.0)  # A last pushed at 29 s, B at 49 s (silent for 9 s only)
    assert ctx.completed() == [("A", k) for k in range(30)] and len(ctx) == 1
    ctx.release_all()
    assert ctx.completed() == [("B", 0)] and len(ctx) == 0


def test_latency_records_skip_a_resumed_pleth_streams_re_read_head():
    ctx = _held(43.0, beds=("A", "B"), seconds=3)
    out = ctx.emitted(lambda bed: 2 * S if bed == "A" else None)  # A's chunks ending by 2 s were published before
    assert out == [("B", 0), ("B", 1), ("A", 2), ("B", 2)]
    assert ctx.emitted(lambda bed: None) == []  # each chunk once


def test_reset_returns_held_then_released_tokens_and_forgets_everything():
    ctx = _held(0.0, beds=("A", "B"), seconds=2)
    ctx.release_due(lambda bed: 1 * S if bed == "A" else INF)  # A's second chunk (ending at 2 s) stays held
    assert ctx.reset() == [("A", 1), ("A", 0), ("B", 0), ("B", 1)]
    assert len(ctx) == 0 and ctx.held() == [] and ctx.completed() == [] and ctx.emitted(lambda bed: None) == []
