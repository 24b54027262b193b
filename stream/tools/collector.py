"""Collects what a run put on the input and output topics, as decoded chunks and event objects.

Reads from the earliest offset with manual partition assignment: no consumer-group join (seconds on Tansu),
and no end offsets (Tansu's ListOffsets(latest) is wrong for multi-record batches).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Collected:
    """Decoded chunks per topic role: "input", "synth", "sr"; events (JSON objects) from the events topic."""

    chunks: dict[str, list] = field(default_factory=lambda: {"input": [], "synth": [], "sr": []})
    events: list = field(default_factory=list)
    last_output_at: float = 0.0

    def samples(self, role: str) -> int:
        """Samples of every chunk collected for `role`."""
        return sum(len(c.samples) for c in self.chunks[role])


class Collector(threading.Thread):
    """A daemon thread reading topics into `data` (a `Collected`) until `stop()`.

    Parameters
    ----------
    bootstrap : str
        `host:port` of the broker.
    topics : dict of str to str
        Role -> topic; roles "input", "synth" and "sr" carry wire chunks, "events" JSON events.

    A topic that does not appear within 30 s is reported in `errors` ("topic ... not found"), a message that
    does not decode as well; an exception that ends the thread is kept in `failure`, so a dead collector is
    not mistaken for a silent worker.
    """

    def __init__(self, bootstrap: str, topics: dict[str, str]):
        super().__init__(name="demo-collector", daemon=True)
        self.bootstrap = bootstrap
        self.roles = {topic: role for role, topic in topics.items()}
        self.data = Collected()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._stop_evt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._collect()
        except BaseException as exc:  # the demo loop checks this: a dead collector would look like a silent worker
            self.failure = exc

    def _collect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from stream import wire

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
                                 enable_auto_commit=False, client_id="wavebridge-demo-collector")
        try:
            tps = []
            for topic in self.roles:
                parts = None
                deadline = time.monotonic() + 30
                while not parts and time.monotonic() < deadline:
                    parts = consumer.partitions_for_topic(topic)
                    if not parts:
                        time.sleep(0.2)
                if not parts:
                    self.errors.append(f"topic {topic} not found")
                    return
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            # Manual assignment: no consumer-group join (seconds on Tansu), and offsets start at 0.
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop_evt.is_set():
                batch = consumer.poll(timeout_ms=300, max_records=2000)
                for tp, records in batch.items():
                    role = self.roles[tp.topic]
                    for rec in records:
                        if role == "events":
                            with self.lock:
                                self.data.events.append(json.loads(rec.value))
                            continue
                        try:
                            chunk = wire.decode(rec.value)
                        except wire.WireError as exc:
                            self.errors.append(f"{tp.topic}@{rec.offset}: {exc}")
                            continue
                        with self.lock:
                            self.data.chunks[role].append(chunk)
                            if role != "input":
                                self.data.last_output_at = time.monotonic()
        finally:
            consumer.close()

    def stop(self) -> None:
        """Ask the thread to end and wait up to 10 s for it."""
        self._stop_evt.set()
        self.join(10)

    def snapshot(self) -> tuple[int, int, int]:
        """(input, synthesized, super-resolved) samples collected so far."""
        with self.lock:
            return self.data.samples("input"), self.data.samples("synth"), self.data.samples("sr")
