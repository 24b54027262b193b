"""After a rebalance, read a kept partition that has no committed offset again from its first message.

The worker drops what it fetched before a rebalance (`WorkerRuntime.current`: events of a revoked generation are
stale) and counts on the new assignment re-delivering it from the committed offset. Faust 0.15 seeks there through
aiokafka's `seek_to_committed`, which only moves a partition whose committed offset is above 0. A partition this
worker keeps across the rebalance and that nobody has committed yet therefore goes on from the fetch position, past
the messages it dropped, and they never come back to this worker. That is the usual state of the alarms topic (an
alarm is acknowledged only once judged: a partition's first alarms have nothing committed), and of the input in the
first `ack_lag_s` of a partition's life. Measured: in a 5-run soak one run left three beds' real-time and
retrospective alarms without a verdict until the worker holding them stopped three minutes later.

`rewind_uncommitted` runs on Faust's `on_rebalance_complete` signal, which comes after the new assignment and
before Faust seeks and resumes fetching: it seeks every assigned partition of the given topics that has no committed
offset to its first retained message, as the group's `earliest` offset reset does for a partition new to the
consumer. Nothing of it was committed, so everything the worker had taken from it goes through again, as it would
on another worker.
"""
from __future__ import annotations

import logging
from typing import Collection

__all__ = ["rewind_uncommitted"]

log = logging.getLogger(__name__)


async def rewind_uncommitted(consumer, topics: Collection[str]) -> dict:
    """Seek the assigned partitions of `topics` that have no committed offset to their first retained message.

    Parameters
    ----------
    consumer : faust.transport.consumer.Consumer
        The app's consumer (`app.consumer`), called between the assignment and the resumption of fetching.
    topics : collection of str
        Topics whose partitions to check.

    Returns
    -------
    dict
        The partitions sought, with the offset each now starts at.
    """
    assigned = [tp for tp in consumer.assignment() if tp.topic in topics]
    if not assigned:
        return {}
    # seeks the committed ones (Faust does the same right after); returns None or 0 for the others
    committed = await consumer.seek_to_committed()
    bare = [tp for tp in assigned if not committed.get(tp)]
    if not bare:
        return {}
    first = await consumer.earliest_offsets(*bare)
    # in the consumer's own thread, and until the positions are set: `Consumer.seek` sets them from the event loop's
    # thread, where a fetch completing in the consumer's thread can overwrite them (a soak run lost the seek)
    await consumer.seek_wait({tp: first[tp] for tp in bare})
    log.info("rebalance: %d partition(s) without a committed offset read from their first message: %s",
             len(bare), ", ".join(f"{tp.topic}[{tp.partition}]@{first[tp]}" for tp in sorted(bare)))
    return {tp: first[tp] for tp in bare}
