"""Make Faust's "seek to the committed offsets" also rewind partitions that have none, to their first message.

The worker drops what it fetched before a rebalance (`WorkerRuntime.current`: events of a revoked generation are
stale) and counts on the new assignment re-delivering it from the committed offset. Faust 0.15 seeks there through
aiokafka's `seek_to_committed`, which only moves a partition whose committed offset is above 0; Faust does the same
when a fetch returns while the flow is stopped for a rebalance, and drops that fetch's records. A partition this
worker keeps across the rebalance and that nobody has committed yet therefore goes on from its fetch position, past
the messages dropped, and they never come back to this worker. That is the usual state of the alarms topic (an
alarm is acknowledged only once judged: a partition's first alarms have nothing committed), and of the input in the
first ack lag of a partition's life. Measured: soak runs left three and four beds' alarms, sent while the group
rebalanced, without a verdict until the worker that kept their partition stopped minutes later.

`rewind_uncommitted` wraps the consumer's `seek_to_committed`, so that every seek Faust makes to the committed
offsets also seeks the assigned partitions of the given topics that have no committed offset to their first retained
message, as the group's `earliest` offset reset does for a partition new to the consumer. Nothing of such a
partition was committed, so everything the worker had taken from it goes through again, as it would on another
worker.
"""
from __future__ import annotations

import logging
from typing import Collection

__all__ = ["rewind_uncommitted"]

log = logging.getLogger(__name__)


def rewind_uncommitted(consumer, topics: Collection[str]) -> bool:
    """Wrap `consumer.seek_to_committed` (once) so that it also seeks the assigned partitions of `topics` without a
    committed offset to their first retained message.

    Parameters
    ----------
    consumer : faust.transport.consumer.Consumer
        The app's consumer (`app.consumer`), before Faust's first seek (e.g. from `on_rebalance_complete`).
    topics : collection of str
        Topics whose partitions to rewind.

    Returns
    -------
    bool
        True when the wrapper was installed by this call (False: it already was).
    """
    if getattr(consumer, "_wavebridge_rewinds", None) is not None:
        return False
    seek_to_committed = consumer.seek_to_committed
    topics = frozenset(topics)

    async def seek_to_committed_or_first():
        committed = await seek_to_committed()
        bare = [tp for tp, offset in committed.items() if tp.topic in topics and not offset]
        if bare:
            first = await consumer.earliest_offsets(*bare)
            # in the consumer's own thread, and until the positions hold (`Consumer.seek` sets them from the event
            # loop's thread, where a fetch completing in the consumer's thread can overwrite them)
            await consumer.seek_wait({tp: first[tp] for tp in bare})
            log.info("%d partition(s) without a committed offset read from their first message: %s", len(bare),
                     ", ".join(f"{tp.topic}[{tp.partition}]@{first[tp]}" for tp in sorted(bare)))
        return committed

    consumer.seek_to_committed = seek_to_committed_or_first
    consumer._wavebridge_rewinds = topics
    return True
