"""The ack gate: acknowledgements leave in offset order per partition, so Faust's commit never passes a
message still held in a window. Checked against Faust's own commit-offset logic."""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer

from stream.ackgate import AckGate


def _ev(offset: int, partition: int = 0, topic: str = "in"):
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=offset))


class _FaustCommits:
    """Faust's `Consumer._new_offset` (the code that decides the commit) on a stub consumer state."""

    def __init__(self):
        self.state = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(lambda: None),
                                     _committed_offset=defaultdict(lambda: None))
        self.tp = ("in", 0)

    def ack(self, offset: int) -> None:
        self.state._acked[self.tp].append(offset)
        self.state._acked_index[self.tp].add(offset)

    def commit(self) -> int | None:
        new = Consumer._new_offset(self.state, self.tp)
        if new is not None:
            self.state._committed_offset[self.tp] = new
        return self.state._committed_offset[self.tp]


def _interleaved(n: int):
    """Offsets 0..n-1 of one partition: even = lead II (done at once), odd = PLETH (held in its window)."""
    return [_ev(i) for i in range(n)]


def test_faust_alone_commits_past_a_single_held_message():
    """Why the gate exists: acking finished messages straight away lets Faust commit a held PLETH chunk."""
    faust = _FaustCommits()
    for ev in _interleaved(8)[::2]:  # the lead II chunks finish first
        faust.ack(ev.message.offset)
        committed = faust.commit()
    assert committed is not None and committed > 1  # offset 1 (held) is behind the commit: lost on a crash


def test_gate_releases_only_each_partitions_finished_head():
    gate, events = AckGate(), _interleaved(8)
    gate.taken(events)
    assert gate.finish(events[::2]) == [events[0]]  # 0 is the head; 2, 4, 6 wait behind held 1, 3, 5
    assert gate.finish([events[3]]) == []
    assert gate.finish([events[1]]) == events[1:5]  # 1 frees 2, 3 (finished) and 4
    assert gate.held() == 3
    assert gate.finish([events[5], events[7]]) == events[5:8]
    assert gate.held() == 0


def test_gated_acks_never_let_faust_commit_a_held_message():
    faust, gate, events = _FaustCommits(), AckGate(), _interleaved(12)
    gate.taken(events)
    held = {ev.message.offset for ev in events[1::2]}
    finish_order = events[::2] + events[1::2]  # every II chunk, then the PLETH chunks as their windows emit
    for ev in finish_order:
        for out in gate.finish([ev]):
            faust.ack(out.message.offset)
        held.discard(ev.message.offset)
        committed = faust.commit()
        if held:
            assert committed is None or committed <= min(held), (committed, sorted(held))
    assert committed == 12


def test_partitions_are_independent_and_reset_forgets_everything():
    gate = AckGate()
    a0, a1, b0 = _ev(0, 0), _ev(1, 0), _ev(0, 1)
    gate.taken([a0, b0, a1])
    assert gate.finish([a1, b0]) == [b0]  # partition 1 is not held back by partition 0
    assert gate.reset() == 2 and gate.held() == 0
    with pytest.raises(KeyError, match="never taken"):
        gate.finish([a0])  # a token the gate never saw is a bug: the worker crashes rather than mis-commit


def test_an_offset_taken_again_while_held_is_refused():
    """A re-delivery without a partition reset would be rejected as a duplicate and acknowledged while the first
    copy's samples are still buffered; the gate refuses it instead of silently replacing the held entry."""
    gate = AckGate()
    gate.taken([_ev(0), _ev(1)])
    with pytest.raises(RuntimeError, match="taken again"):
        gate.taken([_ev(1)])
    gate.reset()
    gate.taken([_ev(1)])  # after a reset the offset is new again
    assert gate.held() == 1
