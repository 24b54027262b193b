"""WorkerRuntime's rebalance handling, with stand-ins for the Faust app, topics and events (no broker).

The alarm agent is not registered here, so its settings are off too: with it, the commit rule would hold 54 s of
input (stream.pipeline.alarm_history_s) and these short streams would acknowledge nothing before they end."""
from __future__ import annotations

import asyncio

import numpy as np

from stream import wire
from stream.agents import WorkerRuntime
from stream.config import Settings


class _Zeros:
    """A stand-in translator with a waveform (a flat output is withheld by quality gating as a failed translation)."""

    name = "zeros"

    def translate(self, requests):
        return [np.sin(np.arange(r.n_out) / 3.0).astype(np.float32) for r in requests]


class _Topic:
    def __init__(self, name, sent):
        self.name, self.sent = name, sent

    async def send(self, key=None, value=None, headers=None):
        self.sent.append((self.name, value, dict(headers or [])))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _BrokenTopic(_Topic):
    async def send(self, key=None, value=None, headers=None):
        self.sent.append((self.name, value, dict(headers or [])))
        done = asyncio.get_running_loop().create_future()
        done.set_exception(ConnectionError("broker gone"))
        return done


class _App:
    def __init__(self, broken=()):
        self.consumer_generation_id = 1
        self.sent: list = []
        self.broken = set(broken)  # topics whose sends fail

    def topic(self, name, **kwargs):
        return (_BrokenTopic if name in self.broken else _Topic)(name, self.sent)


class _Message:
    def __init__(self, offset, generation):
        self.topic, self.partition, self.offset, self.key = "in", 0, offset, b"bed-1"
        self.generation_id, self.timestamp = generation, None


class _Event:
    def __init__(self, offset, generation):
        self.message = _Message(offset, generation)
        # each chunk its own noise: chunks of a sine shifted by whole samples repeat each other value for value,
        # which quality gating withholds as a frozen monitor's
        samples = (np.sin(np.arange(25) / 3.0 + offset)
                   + 0.01 * np.random.default_rng(offset).standard_normal(25)).astype(np.float32)
        self.value = wire.encode_binary(wire.Chunk("bed-1", "PLETH", 25.0, offset * 10**9, offset, samples))
        self.acked = False

    def ack(self):
        self.acked = True


def test_a_batch_queued_behind_a_revoke_is_dropped_not_pushed_into_the_emptied_pipeline():
    """The revoke's reset() can get the lock before a batch fetched earlier. That batch used to start fresh segments
    in the emptied pipeline; Faust then re-delivered from the committed offset and the earlier chunks were
    dead-lettered as duplicates, their samples never written."""

    async def scenario():
        app = _App()
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False)
        rt = WorkerRuntime(app, settings, translator=_Zeros())
        await rt.start()
        await rt.handle_events([_Event(i, 1) for i in range(10)])  # buffered in 8 s windows, nothing acked past 0
        await rt.lock.acquire()  # e.g. the idle-flush timer holds it
        reset = asyncio.create_task(rt.reset())
        await asyncio.sleep(0)
        late = [_Event(i, 1) for i in range(10, 13)]
        batch = asyncio.create_task(rt.handle_events(late))
        await asyncio.sleep(0)
        rt.lock.release()
        await reset
        await batch
        assert not any(e.acked for e in late)  # left for the new owner to consume
        app.consumer_generation_id = 2  # the assignment arrives; Faust re-delivers from the committed offset
        rt.assigned({("in", 0)})
        again = [_Event(i, 2) for i in range(13)]
        await rt.handle_events(again)
        await rt.stop()
        return app, settings

    app, settings = asyncio.run(scenario())
    dead = [h for name, _, h in app.sent if name == settings.topic_dlq]
    assert dead == [], [h.get("wavebridge.reason") for h in dead]


def test_a_second_assignment_in_generation_minus_one_neither_loses_nor_dead_letters_a_chunk():
    """The loss seen in a 3-worker SIGKILL soak: an OffsetCommit failed with IllegalGenerationError, which reset the
    coordinator's generation to -1 while the group was being joined, so the assignment was reported as generation -1,
    and the rejoin that followed was reported as -1 again. Events fetched before the second revoke then still
    matched the 'current' generation: pushed into the emptied pipeline they started fresh segments, the
    re-delivery from the committed offset was dead-lettered as `duplicate` and acknowledged, and the original
    chunk's samples were dropped by the next rebalance with its offset already committed."""

    async def scenario():
        app = _App()
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False)
        rt = WorkerRuntime(app, settings, translator=_Zeros())
        await rt.start()
        acked_in_minus_one = []
        app.consumer_generation_id = -1  # assignment while the coordinator's generation was reset
        rt.assigned({("in", 0)})
        first = [_Event(i, -1) for i in range(10)]
        await rt.handle_events(first)
        await rt.drain()
        acked_in_minus_one += [e for e in first if e.acked]
        stale = [_Event(i, -1) for i in range(10, 13)]  # fetched, still in noack_take's buffer
        await rt.reset()
        app.consumer_generation_id = -1  # the rejoin's assignment, reported as -1 again
        rt.assigned({("in", 0)})
        await rt.handle_events(stale)
        redelivered = [_Event(i, -1) for i in range(13)]  # Faust seeks to the committed offset on assignment
        await rt.handle_events(redelivered)
        await rt.drain()
        acked_in_minus_one += [e for e in stale + redelivered if e.acked]
        await rt.reset()  # membership is re-established: a valid generation, re-delivery from offset 0
        app.consumer_generation_id = 7
        rt.assigned({("in", 0)})
        again = [_Event(i, 7) for i in range(30)]
        await rt.handle_events(again)
        await rt.stop()
        return app, settings, acked_in_minus_one, again

    app, settings, acked_in_minus_one, again = asyncio.run(scenario())
    dead = [h for name, _, h in app.sent if name == settings.topic_dlq]
    assert dead == [], [(h.get("wavebridge.reason"), h.get("wavebridge.detail")) for h in dead]
    assert acked_in_minus_one == []  # a commit in generation -1 can only fail; nothing may count as done
    acked = [e.message.offset for e in again if e.acked]
    assert acked == list(range(len(acked))) and len(acked) >= 20  # a contiguous prefix from the committed offset
    sr = [wire.decode(v) for name, v, _ in app.sent if name == settings.topic_sr]
    starts = sorted(c.start_ns for c in sr)
    assert starts[0] == 0 and len(set(starts)) == len(starts)  # from the first chunk on, each output once


def test_dead_letters_log_a_line_per_reason_per_interval_without_the_value(caplog):
    """One WARNING per dead letter, each echoing the rejected value (bed ids, units, ...), flooded the log."""

    class _Bad(_Event):
        def __init__(self, offset, value):
            super().__init__(offset, 1)
            self.value = value

    async def scenario():
        app = _App()
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False, log_repeat_s=3600)
        rt = WorkerRuntime(app, settings, translator=_Zeros())
        await rt.start()
        bad = [_Bad(i, b'{"bed_id":"SECRET-NAME-%d","signal":"II"' % i) for i in range(50)]  # truncated JSON
        bad += [_Bad(50 + i, b'{"v":1,"bed_id":"SECRET bed","signal":"II","rate_hz":100,"start_ns":1,"seq":0,'
                             b'"samples":[1]}') for i in range(30)]
        await rt.handle_events(bad)
        await rt.stop()
        return app, settings, bad

    with caplog.at_level("WARNING", logger="wavebridge.worker"):
        app, settings, bad = asyncio.run(scenario())
    dlq = [r for r in caplog.records if "dead-letter" in r.getMessage()]
    assert [r.getMessage().split(": ")[-1] for r in dlq] == ["bad_json", "bad_bed_id"]
    assert not any("SECRET" in r.getMessage() for r in caplog.records)
    assert len([1 for name, _, _ in app.sent if name == settings.topic_dlq]) == 80  # every one dead-lettered
    assert all(e.acked for e in bad)


def test_an_idle_flush_acks_its_input_only_after_its_outputs_and_then_its_flush_point():
    """A flush releases a stream's last window of input; its flush point (stream.progress) tells the next owner that
    the output is complete up to there, so it is written once the flush's outputs are delivered, and the input is
    acknowledged only once it is delivered too. A flush point that cannot be written leaves that input
    unacknowledged and fails the flush (the timer then crashes the worker)."""
    from stream.progress import FlushPoint

    async def scenario(broken):
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False, idle_flush_s=0.05)
        app = _App(broken=[settings.topic_progress] if broken else [])
        rt = WorkerRuntime(app, settings, translator=_Zeros())
        await rt.start()
        events = [_Event(i, 1) for i in range(12)]  # bed-1 PLETH, 1 s chunks, seq = offset
        await rt.handle_events(events)
        await rt.drain()  # the batch's own acks (confirmed in the background)
        held = [e for e in events if not e.acked]
        await asyncio.sleep(0.1)
        error = None
        try:
            await rt.flush_idle()
        except ConnectionError as exc:
            error = exc
        await rt.stop()
        return app, settings, events, held, error

    app, settings, events, held, error = asyncio.run(scenario(broken=False))
    assert held and error is None and all(e.acked for e in events)
    names = [name for name, _, _ in app.sent]
    assert names.count(settings.topic_progress) == 1
    assert max(i for i, n in enumerate(names) if n == settings.topic_sr) < names.index(settings.topic_progress)
    value = next(v for name, v, _ in app.sent if name == settings.topic_progress)
    assert FlushPoint.decode(value) == FlushPoint("bed-1", "PLETH", 12 * 10**9, 11)

    app, settings, events, held, error = asyncio.run(scenario(broken=True))
    assert isinstance(error, ConnectionError) and held and not any(e.acked for e in held)


class _HeldTopic(_Topic):
    """A slow sink: each send's delivery stays pending until the test resolves it."""

    def __init__(self, name, sent, held):
        super().__init__(name, sent)
        self.held = held

    async def send(self, key=None, value=None, headers=None):
        self.sent.append((self.name, value, dict(headers or [])))
        fut = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        return fut


class _Counting(_Zeros):
    def __init__(self):
        self.calls = 0

    def translate(self, requests):
        self.calls += 1
        return super().translate(requests)


class _AckLog(_Event):
    def __init__(self, offset, acks):
        super().__init__(offset, 1)
        self.acks = acks

    def ack(self):
        super().ack()
        self.acks.append(self.message.offset)


def _overlap_scenario(fail: bool):
    """Batch 1's outputs held back by a slow sink while batch 2 computes; then delivered (or failed)."""

    async def scenario():
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False)
        held: list = []
        app = _App()
        app.topic = lambda name, **kw: (_HeldTopic(name, app.sent, held) if name == settings.topic_sr
                                        else _Topic(name, app.sent))
        translator = _Counting()
        rt = WorkerRuntime(app, settings, translator=translator)
        failures: list = []

        async def crash(exc):
            failures.append(exc)

        rt.on_delivery_failure = crash
        await rt.start()
        acks: list = []
        first = [_AckLog(i, acks) for i in range(16)]  # bed-1 PLETH, 1 s chunks: several windows, early ones complete
        second = [_AckLog(i, acks) for i in range(16, 24)]
        await asyncio.wait_for(rt.handle_events(first), 30)  # returns once sent: delivery is confirmed in the background
        n_first = len(held)
        assert n_first > 0 and acks == []
        calls = translator.calls
        batch2 = asyncio.create_task(rt.handle_events(second))
        for _ in range(1000):  # batch 2 computes while batch 1's delivery is pending
            if translator.calls > calls:
                break
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0.01)
        seen = dict(computed=translator.calls > calls, acks_while_held=list(acks), sent_while_held=len(held) - n_first)
        if fail:
            held[0].set_exception(ConnectionError("broker gone"))
            for fut in held[1:n_first]:
                fut.set_result(None)
            try:
                await batch2
            except ConnectionError as exc:
                seen["batch2_error"] = exc
        else:
            for fut in held[:n_first]:
                fut.set_result(None)
            await batch2
            seen["acks_after_first"] = list(acks)
            for fut in held[n_first:]:
                fut.set_result(None)
            await rt.drain()
        seen.update(acks=acks, failures=failures, sent_after=len(held) - n_first)
        await rt.stop()
        return seen

    return asyncio.run(scenario())


def test_a_batch_computes_while_the_previous_delivery_is_pending_and_no_ack_overtakes_it():
    """Delivery of batch N overlaps the computation of batch N+1. Its input must stay unacknowledged until its own
    outputs are delivered, acks leave in input order, and batch N+1 sends nothing before batch N is confirmed (the
    order of outputs per bed is the input order)."""
    seen = _overlap_scenario(fail=False)
    assert seen["computed"]  # the overlap itself: batch 2's translation ran while batch 1's sends were pending
    assert seen["acks_while_held"] == []  # nothing of either batch acked before batch 1's outputs were delivered
    assert seen["sent_while_held"] == 0
    first_acks = seen["acks_after_first"]
    assert first_acks and first_acks == list(range(len(first_acks))) and max(first_acks) < 16
    assert seen["acks"] == list(range(len(seen["acks"]))) and len(seen["acks"]) > len(first_acks)
    assert seen["failures"] == []


def test_a_failed_delivery_acks_nothing_and_fails_the_next_batch_before_it_sends():
    seen = _overlap_scenario(fail=True)
    assert seen["computed"] and seen["acks_while_held"] == []
    assert isinstance(seen.get("batch2_error"), ConnectionError)
    assert seen["acks"] == [] and seen["sent_after"] == 0  # no later ack, no later output
    assert len(seen["failures"]) == 1 and isinstance(seen["failures"][0], ConnectionError)  # the worker crashes


class _ChunkEvent(_Event):
    def __init__(self, offset, chunk):
        self.message = _Message(offset, 1)
        self.value = wire.encode_binary(chunk)
        self.acked = False


def test_the_alarm_ring_gets_only_the_chunks_the_pipeline_accepts_and_hears_of_a_step_back():
    """The alarm ring holds what the pipeline accepted: a dead-lettered duplicate or out-of-order chunk would put
    samples in it that no output was drawn from, and a step back must drop the time line the stream left."""
    from operators.state.windowing import RESYNC_CHUNKS

    heard = []

    async def scenario():
        rt = WorkerRuntime(_App(), Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False), translator=_Zeros())
        await rt.start()
        rt.chunk_listeners.append(lambda chunk, stepped_back: heard.append((chunk.seq, stepped_back)))
        mk = lambda k, ahead=0: wire.Chunk("bed-1", "PLETH", 25.0, (k + ahead) * 10**9, k,  # noqa: E731
                                           np.sin(np.arange(25) / 3.0 + k).astype(np.float32))
        cks = [mk(k) for k in range(5)] + [mk(2)] + [mk(5, ahead=3600)] + [mk(k) for k in range(6, 6 + RESYNC_CHUNKS)]
        rt._compute([_ChunkEvent(i, c) for i, c in enumerate(cks)])
        await rt.stop()

    asyncio.run(scenario())
    resync = 5 + RESYNC_CHUNKS
    assert heard == [(k, False) for k in range(6)] + [(resync, True)]


def test_an_output_that_cannot_be_encoded_becomes_an_output_unusable_event(monkeypatch):
    """An output chunk the encoder rejects leaves a hole in the output topic: an `output_unusable` event
    (reason `not_encodable`) must say so over exactly its span, never a silent gap."""
    import json

    import jsonschema

    from stream import sinks
    from tests.conftest import REPO

    encode = sinks.encode_output
    failed = []

    def flaky(out, binary):
        if not failed:
            failed.append(out)
            raise wire.WireError(wire.NAN_FLOOD, "output holds NaN")
        return encode(out, binary)

    monkeypatch.setattr(sinks, "encode_output", flaky)

    async def scenario():
        app = _App()
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False)
        rt = WorkerRuntime(app, settings, translator=_Zeros())
        await rt.start()
        await rt.handle_events([_Event(i, 1) for i in range(16)])
        await rt.drain()
        await rt.stop()
        return app, settings

    app, settings = asyncio.run(scenario())
    (out,) = failed
    events = [json.loads(v) for name, v, _ in app.sent if name == settings.topic_events]
    lost = [e for e in events if e["type"] == "output_unusable"]
    assert len(lost) == 1, events
    schema = json.loads((REPO / "docs" / "events.schema.json").read_text())
    jsonschema.validate(lost[0], schema)
    step = int(round(1e9 / out.rate_hz))
    assert lost[0]["reason"] == "not_encodable" and lost[0]["outputs"] == [out.topic_signal] == ["PLETH_SR"]
    assert (lost[0]["time_ns"], lost[0]["end_ns"]) == (int(out.times_ns[0]), int(out.times_ns[-1]) + step)


def test_a_started_worker_exports_its_input_counter_before_any_message():
    """Alert rules on rate(wavebridge_messages_in_total) see nothing in a series that does not exist yet: a worker
    that never consumed a message must still export 0 for its input topic, or `WavebridgeNoInput` never fires."""
    from prometheus_client import generate_latest

    from stream.metrics import REGISTRY

    async def scenario():
        settings = Settings(influx_enabled=False, tasks=("sr",), alarm_enabled=False, topic_input="never-fed")
        rt = WorkerRuntime(_App(), settings, translator=_Zeros())
        await rt.start()
        await rt.stop()

    asyncio.run(scenario())
    exposed = generate_latest(REGISTRY).decode()
    assert 'wavebridge_messages_in_total{topic="never-fed"} 0.0' in exposed
    assert 'wavebridge_samples_in_total{topic="never-fed"} 0.0' in exposed


def test_an_unencodable_ii_synth_chunk_takes_its_windows_r_peaks_with_it():
    from stream.agents import _not_encodable
    from stream.results import OutputSeries, PipelineEvent

    times = 1_000_000_000 + np.arange(300) * 3_333_333 + (np.arange(300) // 3)  # 300 Hz on the exact ns grid
    out = OutputSeries(bed="b", source_signal="PLETH", kind="synth", model="classic", rate_hz=300.0,
                       times_ns=times, values=np.zeros(300, np.float32))
    mine = PipelineEvent.rpeaks("b", int(times[0]), peaks_ns=[int(times[10])], hr_bpm=None, model="classic",
                                window_start_ns=0, until_ns=int(times[-1]))
    other = PipelineEvent.rpeaks("other-bed", int(times[0]), peaks_ns=[], hr_bpm=None, model="classic",
                                 window_start_ns=0, until_ns=int(times[-1]))
    events = _not_encodable(out, [mine, other])
    assert mine not in events and other in events
    (lost,) = [e for e in events if e.kind == "output_unusable"]
    assert (lost.time_ns, lost.fields["end_ns"]) == (int(times[0]), 1_000_000_000 + 1_000_000_000)
