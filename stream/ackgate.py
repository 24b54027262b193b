"""Acknowledge input in offset order per partition, so Faust never commits past a held message.

The worker finishes messages out of order: a 125 Hz lead II chunk with no task is done at once, the
PLETH chunk before it in the same partition waits in its window for up to WINDOW_S. Faust 0.15's
`Consumer._new_offset` commits the first run of consecutive acknowledged offsets, but it only refuses when
the head gap is MORE than one message (`min(acked) - committed > 1`) and does not check at all before the
first commit of a partition. Acking out of order therefore commits past a single held message, and a crash
or rebalance then loses it. The gate holds a finished message until every message taken before it from its
partition is finished too; Faust then only ever sees a contiguous prefix.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Iterable

__all__ = ["AckGate"]


class AckGate:
    """Per partition, the messages taken and not yet released, in the order they were taken."""

    def __init__(self) -> None:
        # partition key -> offset -> [event, finished]
        self._open: dict[Hashable, OrderedDict[int, list]] = {}

    @staticmethod
    def _key(event: Any) -> tuple[Hashable, int]:
        m = event.message
        return (m.topic, m.partition), int(m.offset)

    def taken(self, events: Iterable[Any]) -> None:
        """Register events in the order the stream delivered them (before any of them can finish).

        Parameters
        ----------
        events : iterable of faust.Event
            Each with `.message.topic`, `.partition` and `.offset`.

        Raises
        ------
        RuntimeError
            If an offset is taken again while still held (re-delivered without a partition reset).
        """
        for ev in events:
            tp, off = self._key(ev)
            q = self._open.setdefault(tp, OrderedDict())
            if off in q:
                # Re-delivered while the first copy is still held: a rebalance went by without a reset, and the
                # pipeline would reject the copy as a duplicate (acknowledging it) while the original's samples
                # are still buffered. Not recoverable here; a crash re-consumes from the committed offsets.
                raise RuntimeError(f"ack gate: {tp} offset {off} taken again while still held (re-delivered "
                                   "without a partition reset)")
            q[off] = [ev, False]

    def finish(self, events: Iterable[Any]) -> list[Any]:
        """Mark events finished.

        Parameters
        ----------
        events : iterable of faust.Event
            Events taken earlier.

        Returns
        -------
        list of faust.Event
            Those now safe to acknowledge (each partition's finished head), in offset order.

        Raises
        ------
        KeyError
            If an event was never taken.
        """
        touched = set()
        for ev in events:
            tp, off = self._key(ev)
            entry = self._open.get(tp, {}).get(off)
            if entry is None:
                raise KeyError(f"ack gate: {tp} offset {off} finished but never taken")
            entry[1] = True
            touched.add(tp)
        out = []
        for tp in touched:
            q = self._open[tp]
            while q and next(iter(q.values()))[1]:
                out.append(q.popitem(last=False)[1][0])
            if not q:
                del self._open[tp]
        return out

    def held(self) -> int:
        """Messages taken and not yet released (finished or not)."""
        return sum(len(q) for q in self._open.values())

    def reset(self) -> int:
        """Partitions revoked: forget everything (the unreleased input is consumed again); returns how many."""
        n = self.held()
        self._open.clear()
        return n
