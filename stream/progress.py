"""Each stream's idle-flush point, persisted, so that whoever owns its bed next publishes the rest of its output.

An idle flush (`WAVEBRIDGE_IDLE_FLUSH_S`) emits a stream's whole tail and releases its input: the committed offset
passes the stream's last chunk. A worker that later gets the bed's partition (rebalance, restart, a bed moved by new
partitions, a bed evicted and back) sees the continuation as that stream's first chunk, and a first chunk with
`seq > 0` is a mid-stream resume whose head someone else emitted (operators.state.windowing): up to
`WINDOW_S - LOOKAHEAD_S` of output after the silence was never published, and no event said so. The commit rule that
makes the mid-stream rule safe (a window of input kept uncommitted) is exactly what a flush gives up, and holding the
flushed input instead would hold every later message of its partition for as long as the bed stays silent.

So a flush writes a `FlushPoint` (bed, signal, `flushed_until_ns`, `last_seq`) to the progress topic, and the worker
acknowledges the flushed input only once the flush's outputs and then its flush point are delivered
(stream.agents): a flush point never claims output that was not published, and no flushed offset is committed
without its flush point. Every worker reads the whole topic (every partition, no consumer group: one small record
per flush) into a `FlushPoints` map, the latest record per (bed, signal), and catches up after each partition
assignment before it processes any input of that assignment (`ProgressLog.catch_up`): it produces a marker of its
own to every partition of the topic and reads until it has seen them all. Tansu's ListOffsets(latest) is wrong for
multi-record batches, so end offsets cannot say "caught up"; a marker can: a flush point acknowledged before the old
owner's commit lies before the marker in its partition.

`FlushPoints.resume_from` decides, from the first chunk a process sees of a stream, where its output is known
complete (None: not known, the mid-stream rule applies):

- the chunk right after the flush (`seq == last_seq + 1`, contiguous or after a gap): the flush point. The stream
  then starts with a head there, as on the old owner, which emits from where the flush stopped. The new owner lacks
  the samples before the silence, so values in its first window after a contiguous continuation can differ from an
  uninterrupted run's: different, not lost. Its patient context too is decided from the input after the flush point
  only (the flush released what came before, which the commit rule otherwise keeps for the next owner: stream.pipeline),
  so with the context on, PPG->ECG values can differ until a context is found after the flush point;
- a chunk from before the flush (`seq <= last_seq` and starting before the flush point), read again because an
  earlier message of its partition held the commit back: the flush point too (the old owner's output stops there,
  while the mid-stream rule would take most of a window after this chunk as emitted);
- anything else: None. `seq > last_seq + 1` means the continuation was committed, hence emitted under the commit
  rule by whoever read it; stamps after the flush point with an older seq are a sender that restarted its count.

A flush point can only make a stream emit more than the mid-stream rule, never less: one applied where the old owner
had already gone on (it read the continuation but died before committing it) re-emits that stretch, on the same
timestamps, with values of other windows.

Record key `<bed>/<signal>` (`/` is not allowed in a bed id): a compacted topic then keeps the latest record of each
stream; a key of the bed alone would drop a bed's other signals. Markers are keyed `~marker/<reader id>`. The map
holds one small record per stream ever flushed (385 bytes measured with tracemalloc: 10,000 beds of three signals,
12 MB).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.config import Settings

__all__ = ["FlushPoint", "FlushPoints", "ProgressLog", "ProgressError"]

log = logging.getLogger("wavebridge.progress")

MARKER_PREFIX = "~marker/"
# Compacted: the latest record of every stream is kept however long its bed stays silent (a delete policy would
# forget a bed silent longer than the retention, and its continuation would be resumed mid-stream again).
TOPIC_CONFIG = {"cleanup.policy": "compact"}


class ProgressError(RuntimeError):
    """The progress topic could not be read up to this reader's markers (the worker must not process input then)."""


@dataclass(frozen=True)
class FlushPoint:
    """A stream's output is complete up to `flushed_until_ns` (exclusive), and `last_seq` was its last chunk then."""

    bed_id: str
    signal: str
    flushed_until_ns: int
    last_seq: int

    @property
    def key(self) -> bytes:
        """Record key: one per (bed, signal)."""
        return f"{self.bed_id}/{self.signal}".encode()

    def encode(self) -> bytes:
        """JSON value of the progress record."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> "FlushPoint":
        """Inverse of `encode`.

        Raises
        ------
        ValueError
            A value that is not a flush point.
        """
        d = json.loads(value)
        if not (isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("bed_id", "signal"))
                and all(type(d.get(k)) is int for k in ("flushed_until_ns", "last_seq"))):
            raise ValueError(f"not a flush point: {value[:200]!r}")
        return cls(d["bed_id"], d["signal"], d["flushed_until_ns"], d["last_seq"])


class FlushPoints:
    """The latest flush point of every (bed, signal), and the decision it gives a stream's first chunk."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], FlushPoint] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def update(self, fp: FlushPoint) -> None:
        """Record `fp`; records come in their partition's order, and one stream's records share a partition."""
        self._latest[(fp.bed_id, fp.signal)] = fp

    def get(self, bed: str, signal: str) -> FlushPoint | None:
        """The latest flush point of a stream, if any."""
        return self._latest.get((bed, signal))

    def resume_from(self, bed: str, signal: str, seq: int, start_ns: int) -> int | None:
        """Where the output of a stream whose first chunk here is (`seq`, `start_ns`) is known complete (module doc).

        Parameters
        ----------
        bed, signal : str
            The stream.
        seq : int
            The chunk's sequence number.
        start_ns : int
            Its first sample's timestamp, ns since the epoch.

        Returns
        -------
        int or None
            The flush point (ns): the stream emits everything from there on; None: the mid-stream rule.
        """
        fp = self._latest.get((bed, signal))
        if fp is None:
            return None
        if seq == fp.last_seq + 1 or (seq <= fp.last_seq and start_ns < fp.flushed_until_ns):
            return fp.flushed_until_ns
        return None


class ProgressLog:
    """The progress topic, read whole into `points` (kafka-python, no consumer group), and its markers.

    Parameters
    ----------
    settings : Settings
        Broker, security and `topic_progress`.
    points : FlushPoints, optional
        The map to fill (a new one by default).
    timeout_s : float
        Longest wait for this reader's markers to come back.
    """

    def __init__(self, settings: Settings, points: FlushPoints | None = None, timeout_s: float = 30.0):
        self.settings = settings
        self.topic = settings.topic_progress
        self.points = FlushPoints() if points is None else points
        self.timeout_s = float(timeout_s)
        self.reader_id = uuid.uuid4().hex
        self._consumer = None
        self._producer = None
        self._assigned: set = set()

    def _open(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        s = self.settings
        kw = dict(bootstrap_servers=s.bootstrap_servers, client_id=f"wavebridge-progress-{self.reader_id[:8]}",
                  **s.kafka_client_kwargs())
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **kw)
        self._producer = KafkaProducer(acks="all", **kw)

    def _assign(self) -> list:
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(self.topic)
        if not parts:
            raise ProgressError(f"progress topic {self.topic} does not exist (WAVEBRIDGE_TOPIC_PROGRESS)")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        new = [tp for tp in tps if tp not in self._assigned]
        if new:  # the first call, or partitions added: read those from their beginning
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*new)
            self._assigned.update(new)
        return tps

    def catch_up(self) -> int:
        """Read every record written to the topic before this call; returns how many flush points were read.

        Raises
        ------
        ProgressError
            The markers did not come back within `timeout_s` (the topic is missing or unreadable).
        """
        started = time.monotonic()
        if self._consumer is None:
            self._open()
        tps = self._assign()
        token = uuid.uuid4().hex
        key = (MARKER_PREFIX + self.reader_id).encode()
        value = json.dumps({"marker": token}).encode()
        sent = [self._producer.send(self.topic, key=key, value=value, partition=tp.partition) for tp in tps]
        for fut in sent:
            fut.get(timeout=self.timeout_s)  # raises the producer's error
        waiting = {tp.partition for tp in tps}
        n = 0
        while waiting:
            if time.monotonic() - started > self.timeout_s:
                raise ProgressError(f"progress topic {self.topic}: own markers not read back within {self.timeout_s:g} s "
                                    f"(partitions {sorted(waiting)}); not processing input without its flush points")
            for tp, records in self._consumer.poll(timeout_ms=200).items():
                for r in records:
                    if r.key is not None and r.key.startswith(MARKER_PREFIX.encode()):
                        if r.key == key and json.loads(r.value).get("marker") == token:
                            waiting.discard(tp.partition)
                        continue
                    if r.value is None:  # a tombstone (an operator deleting a key): nothing to learn
                        continue
                    try:
                        self.points.update(FlushPoint.decode(r.value))
                        n += 1
                    except ValueError as exc:  # not ours to fix: skip it, say so
                        log.error("progress topic %s[%d]@%d: not a flush point, skipped: %s", self.topic, tp.partition,
                                  r.offset, exc)
        log.info("progress topic %s read up to this reader's markers: %d flush points (%d streams known) in %.2f s",
                 self.topic, n, len(self.points), time.monotonic() - started)
        return n

    def close(self) -> None:
        """Close the clients."""
        for c in (self._consumer, self._producer):
            if c is not None:
                c.close()
        self._consumer = self._producer = None
