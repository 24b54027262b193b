"""The worker's Faust agent: input batches → pipeline → output topics → manual acks.

Delivery rule (docs/delivery-semantics.md): an input message is acknowledged only after the Kafka
sends covering ALL its samples are confirmed, and only once every earlier message of its partition
is acknowledged too (`stream.ackgate`: Faust would commit past a single held message), so the
committed offset never passes a message whose outputs are not durably published; input released by an idle
flush also waits for the flush point written after those outputs (`stream.progress`), and no input of a new
partition assignment is processed before every flush point written so far is read. InfluxDB is not
on this path: the InfluxDB sink agent (`stream.influxsink`) reads the output topics in a consumer
group of its own, so an InfluxDB outage never holds the alarm feed. Everything heavy (decode,
windowing, torch) runs on one dedicated thread, never on the event loop.

A batch's outputs are sent before the next batch is computed, but the wait for their delivery, the
flush points and the acks run in the background (`WorkerRuntime._confirm`) while the next batch
computes: at most one batch's delivery is in flight, and the next batch sends nothing until it is
confirmed and acknowledged, so outputs keep their order, acks stay in input order and nothing is
acknowledged before its outputs are delivered. A failed delivery acknowledges nothing of its batch,
fails every later batch before it sends or acks anything, and crashes the worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from operators.processing.samples import grid_ns
from operators.translator import PPG2ECG, SR, Translator
from stream import metrics, sinks, wire
from stream.ackgate import AckGate
from stream.config import Settings
from stream.logthrottle import Throttle, held_note
from stream.pipeline import Pipeline, PipelineConfig
from stream.progress import ProgressLog
from stream.results import NOT_ENCODABLE, OUTPUT_UNUSABLE, RPEAKS, BatchResult, OutputSeries, PipelineEvent, Rejected

TASK_OF_KIND = {"synth": PPG2ECG, "sr": SR}  # OutputSeries.kind -> translator task
STOP_CONFIRM_WAIT_S = 10.0  # on shutdown, how long the last batch's acks may take before they are given up

log = logging.getLogger("wavebridge.worker")


@dataclass(eq=False)
class InMsg:
    """Pipeline token for one input message (identity-compared)."""

    event: Any  # faust Event
    bed: str = ""
    signal: str = ""

    @property
    def message(self):
        """The Faust message (topic, partition, offset, key, timestamp)."""
        return self.event.message


class WorkerRuntime:
    """State of the worker's input agent, owned by its app and passed explicitly to whatever needs it.

    Parameters
    ----------
    app : faust.App
        The app whose topics it reads and writes.
    settings : Settings
        The worker's configuration.
    translator : Translator, optional
        Already loaded; loaded on the compute thread by `start` otherwise.
    progress : ProgressLog, optional
        Reader of the progress topic's flush points (`register` passes one); None reads none, so a stream that
        continues after another worker's idle flush is resumed by the mid-stream rule alone (tests without a broker).
    """

    def __init__(self, app, settings: Settings, translator: Translator | None = None,
                 progress: ProgressLog | None = None):
        self.app = app
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavebridge-compute")
        self._translator = translator
        self.pipeline: Pipeline | None = None
        self.sink = None  # stream.influxsink.InfluxSinkAgent when it runs in this process
        self.counters = sinks.ReasonCounters(settings.counters_log_s, log)
        self.log_throttle = Throttle(settings.log_repeat_s)  # dead letters, rejected points: a line per kind
        self.stats = sinks.StatsWriter(settings.stats_file)
        self.stream = None  # the agent's stream, for acks
        self.gate = AckGate()  # acks leave in offset order per partition
        self.lag = metrics.LagTracker()
        self.assignment_seen = False  # a first partition assignment arrived (possibly empty)
        self.n_assigned = 0
        self.health = metrics.Health()
        self.health.add_check("partitions_assigned", self._check_assigned)
        self.health.add_check("translator_loaded", self._check_translator)
        self.health.add_check("sinks_writable", self._check_sinks)
        self._lock: asyncio.Lock | None = None
        # The last batch's delivery confirmation (await its sends, write its flush points, ack), running while the
        # next batch computes; at most one at a time (`_settle`).
        self._confirming: asyncio.Future | None = None
        # Called with the exception when a background confirmation fails (`register`: crash the app).
        self.on_delivery_failure = None
        self._stopping = False
        self._rebalancing = False  # between a revoke and the next assignment
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.input_topic = app.topic(settings.topic_input, **raw)
        self.out_topics = {
            "synth": app.topic(settings.topic_ecg_synth, **raw),
            "sr": app.topic(settings.topic_sr, **raw),
        }
        self.events_topic = app.topic(settings.topic_events, **raw)
        self.dlq_topic = app.topic(settings.topic_dlq, **raw)
        self.progress_topic = app.topic(settings.topic_progress, **raw)
        self.progress = progress
        self._progress_generation: int | None = None  # the consumer generation the flush points were read up to in
        # called with every chunk the pipeline accepts, and whether its stream stepped back with it
        # (PushOutcome), on the compute thread (alarm ring)
        self.chunk_listeners: list = []

    # ------------------------------------------------------------------ readiness (/readyz; read-only)
    def _check_assigned(self) -> tuple[bool, str]:
        if not self.assignment_seen or self._rebalancing:
            return False, "waiting for a partition assignment"
        if (self.app.consumer_generation_id or 0) < 0:
            return False, "consumer generation -1: waiting to rejoin the group"
        return True, f"{self.n_assigned} partitions"

    def _check_translator(self) -> tuple[bool, str]:
        return (True, self.pipeline.model) if self.pipeline is not None else (False, "translator not loaded yet")

    def _check_sinks(self) -> tuple[bool, str]:
        if not self.settings.influx_enabled:
            return True, "InfluxDB disabled"
        if self.settings.influx_sink != "worker":
            return True, "InfluxDB written by a separate `wavebridge sink`"
        if self.sink is None:
            return False, "InfluxDB sink agent not started yet"
        # The output topics do not wait for InfluxDB; this reports the in-process sink agent's.
        return self.sink.check_ready()

    # ------------------------------------------------------------------ lifecycle
    @property
    def lock(self) -> asyncio.Lock:
        """Held by a batch and the idle flush while they use the pipeline (made in the running event loop)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(self) -> None:
        """Load the translator off the event loop (torch import is slow); start the in-process InfluxDB sink."""
        await self._run(self._open)
        s = self.settings
        # a series at 0 from the start: "no input since the worker started" must read as a rate of 0, not as no data
        # (alert rules on rate() see nothing in a missing series)
        for topic in (s.topic_input,) + ((s.topic_alarms,) if s.alarm_enabled else ()):
            metrics.MESSAGES_IN.labels(topic)
        metrics.SAMPLES_IN.labels(s.topic_input)
        if s.influx_enabled and s.influx_sink == "worker":
            from stream.influxsink import InfluxSinkAgent

            self.sink = InfluxSinkAgent(s, counters=self.counters).start()

    def _open(self) -> None:
        if self._translator is None:
            self._translator = configured_translator(self.settings)
        self.pipeline = Pipeline(PipelineConfig.from_settings(self.settings), self._translator,
                                 resume_from=None if self.progress is None else self._resume_from)
        log.info("translator %s loaded; tasks=%s window=%ss hop=%ss", self.pipeline.model,
                 ",".join(self.settings.tasks), self.settings.window_s, self.settings.hop_s)

    async def stop(self) -> None:
        """Shut down: stop the in-process InfluxDB sink, log the counters, close the stats file."""
        self._stopping = True
        if self._confirming is not None and not self._confirming.done():
            # Acks not yet made leave their input uncommitted: re-consumed by the next owner (at-least-once).
            await asyncio.wait([self._confirming], timeout=STOP_CONFIRM_WAIT_S)
        if self.sink is not None:
            # its uncommitted batch is read again by the next sink (the points overwrite themselves)
            await asyncio.get_running_loop().run_in_executor(None, self.sink.stop)
        self.counters.maybe_log(force=True)
        self.stats.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.progress is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.progress.close)

    async def _run(self, fn, *args):
        if self._stopping:
            raise sinks.SinkStopped("worker stopping")
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------------ processing
    async def handle_events(self, events: list) -> None:
        """Process one input batch and deliver what it produced (outputs, events, dead letters, acks).

        Parameters
        ----------
        events : list of faust.Event
            Input messages with raw bytes values, in partition order.
        """
        started = time.monotonic()
        for ev in events:
            msg = ev.message
            metrics.MESSAGES_IN.labels(msg.topic).inc()
            self.lag.seen((msg.topic, msg.partition), msg.offset)
        async with self.lock:
            # Checked under the lock: a revoke that queued its reset() ahead of this batch has emptied the
            # pipeline, and this batch's chunks would start fresh segments there.
            fresh = self.current(events)
            if len(fresh) != len(events):
                # Fetched before a rebalance: Faust re-delivers them from the committed offset.
                log.info("skipping %d events of a revoked consumer generation", len(events) - len(fresh))
            if fresh and self.progress is not None and self._progress_generation != self.app.consumer_generation_id:
                await self._read_flush_points()
            self.gate.taken(ev for ev in fresh)
            result, dead = await self._run(self._compute, fresh)  # the previous batch's delivery is confirmed meanwhile
            await self._settle()  # raises if it failed: nothing of this batch is then sent or acked
            futs = await self._send(result, dead)
            self._confirming = asyncio.ensure_future(self._confirm_in_background(futs, result, dead))
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)

    async def drain(self) -> None:
        """Wait until the last batch's outputs are delivered and its input acknowledged (raises if that failed)."""
        async with self.lock:
            await self._settle()

    async def _settle(self) -> None:
        """Await the background confirmation of the previous batch (under the lock); re-raise its failure."""
        pending, self._confirming = self._confirming, None
        if pending is not None:
            await pending

    async def _confirm_in_background(self, futs: list, result: BatchResult, dead: list[Rejected]) -> None:
        try:
            await self._confirm(futs, result, dead)
        except Exception as exc:
            # Nothing of this batch was acked; the next batch fails in `_settle` before sending anything.
            log.error("delivery of a batch failed (%s: %s); its input stays unacknowledged and the worker crashes",
                      type(exc).__name__, exc)
            if self.on_delivery_failure is not None:
                await self.on_delivery_failure(exc)
            raise

    async def flush_idle(self) -> None:
        """Flush idle streams (`WAVEBRIDGE_IDLE_FLUSH_S`) and deliver what that produced."""
        if self.pipeline is None:
            return
        async with self.lock:
            await self._settle()  # its acks come first, and a failed delivery crashes before this flush acks anything
            result, dead = await self._run(self._compute_idle), []
            if result.outputs or result.events or result.completed or result.rejected or dead:
                await self._deliver(result, dead)
        self.counters.maybe_log()

    async def _read_flush_points(self) -> None:
        """Read the progress topic up to this worker's markers, once per consumer generation, before its first batch:
        a flush point written before the old owner committed is then known before the continuation is pushed."""
        generation = self.app.consumer_generation_id
        started = time.monotonic()
        try:
            n = await self._run(self.progress.catch_up)
        except Exception:
            metrics.PROGRESS_ERRORS.labels("read").inc()
            log.error("progress topic %s: flush points not read; crashing rather than resume streams without them "
                      "(input is re-consumed after the restart)", self.settings.topic_progress)
            raise
        metrics.PROGRESS_CATCHUP_SECONDS.observe(time.monotonic() - started)
        metrics.FLUSH_POINTS.labels("read").inc(n)
        self._progress_generation = generation

    def _resume_from(self, bed: str, signal: str, seq: int, start_ns: int) -> int | None:
        """The pipeline's `resume_from`: the stream's flush point when it applies (stream.progress), counted."""
        at = self.progress.points.resume_from(bed, signal, seq, start_ns)
        if at is not None:
            metrics.FLUSH_POINTS.labels("applied").inc()
            log.info("%s/%s continues after a flush at %d ns (seq %d): its output is published from there",
                     bed, signal, at, seq)
        return at

    def current(self, events: list) -> list:
        """The events of the live consumer generation. Faust sets the new generation id only when the new
        assignment arrives, after the revoke: in between, every event is stale."""
        if self._rebalancing:
            return []
        current = self.app.consumer_generation_id
        if current is None or current < 0:
            # An assignment reported while the coordinator's generation was reset (an OffsetCommit failed with
            # IllegalGenerationError during the join): every event then carries -1, those fetched before the next
            # revoke too, so -1 cannot tell a stale event from a current one, and no commit in it can succeed.
            # The coordinator rejoins at once; the new assignment re-delivers from the committed offsets.
            return []
        return [e for e in events if getattr(e.message, "generation_id", current) == current]

    def assigned(self, partitions) -> None:
        """Partitions assigned: events of the new generation count again (none while it is -1, see `current`).

        Parameters
        ----------
        partitions : iterable of (topic, partition)
            Every partition assigned to this app.
        """
        self._rebalancing = False
        if (self.app.consumer_generation_id or 0) < 0:
            log.warning("partitions assigned in consumer generation -1 (membership lost during the join): "
                        "consuming nothing until the group is rejoined")
        self.assignment_seen = True
        self.lag.assigned(partitions)  # every agent's of this app: the alarm agent reports through `seen` and `ack`
        self.n_assigned = sum(1 for tp in partitions if tp[0] == self.settings.topic_input)
        metrics.PARTITIONS_ASSIGNED.set(self.n_assigned)

    def seen(self, message) -> None:
        """Another agent of this app (the alarm agent) took `message`: count it and its partition's lag (`ack` counts
        it done).

        Parameters
        ----------
        message : faust message
            Its topic, partition and offset.
        """
        self.lag.seen((message.topic, message.partition), message.offset)
        metrics.MESSAGES_IN.labels(message.topic).inc()

    def update_lag(self) -> None:
        """Set the lag gauge of every assigned partition (event loop; reads the consumer's fetch state)."""
        consumer = self.app.consumer
        # Faust's record of the group's committed offsets (Kafka's meaning: the next offset to read; it keeps
        # None for 0): the position of a partition nothing has been fetched from since the assignment.
        committed = getattr(consumer, "_committed_offset", {})
        for tp in consumer.assignment():
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched from yet, or the consumer is restarting
                highwater = None
            self.lag.publish(tp, highwater, committed.get(tp))

    async def reset(self) -> None:
        """Partitions revoked: drop buffered state; unacknowledged input is consumed again."""
        self._rebalancing = True  # before waiting for the lock: batches queued on it must see this
        self._progress_generation = None
        if self.pipeline is None:
            return
        async with self.lock:
            try:
                await self._settle()  # acks its batch as before a revoke; the gate is reset below
            except Exception:
                pass  # logged, and the worker crashing, by `_confirm_in_background`
            dropped = self.pipeline.reset()
            self.gate.reset()
            if dropped:
                log.info("rebalance: dropped %d buffered, unacknowledged input messages (they will be re-consumed)",
                         len(dropped))

    def _compute(self, events: list) -> tuple[BatchResult, list[Rejected]]:
        dead: list[Rejected] = []  # undecodable input: tokens are InMsg
        decode_s = 0.0
        started = time.perf_counter()
        for ev in events:
            tok = InMsg(ev)
            t0 = time.perf_counter()
            try:
                chunk = wire.decode_input(ev.value).chunk
            except wire.WireError as exc:
                dead.append(Rejected(tok, exc.reason, exc.detail))
                continue
            except Exception as exc:  # a decoder bug must not stop the stream either
                dead.append(Rejected(tok, "decode_error", f"{type(exc).__name__}: {exc}"))
                continue
            finally:
                decode_s += time.perf_counter() - t0
            tok.bed, tok.signal = chunk.bed_id, chunk.signal
            metrics.SAMPLES_IN.labels(ev.message.topic).inc(len(chunk.samples))
            outcome = self.pipeline.push(chunk, tok)
            if outcome.accepted:  # a chunk the pipeline dead-letters is no input to anything else either
                for listen in self.chunk_listeners:
                    listen(chunk, outcome.stepped_back)
        metrics.STAGE_SECONDS.labels("decode").inc(decode_s)
        metrics.STAGE_SECONDS.labels("windowing").inc(time.perf_counter() - started - decode_s)
        return self._compute_idle(), dead

    def _compute_idle(self) -> BatchResult:
        started = time.perf_counter()
        self.pipeline.flush_idle()
        result = self.pipeline.process()
        metrics.STAGE_SECONDS.labels("windowing").inc(time.perf_counter() - started - result.model_s)
        metrics.STAGE_SECONDS.labels("model").inc(result.model_s)
        metrics.BEDS_ACTIVE.set(self.pipeline.active_beds())
        if result.n_windows:
            metrics.MODEL_SECONDS.inc(result.model_s)
            metrics.MODEL_SECONDS_PER_WINDOW.observe(result.model_s / result.n_windows)
            for task in set(result.window_tasks):
                metrics.MODEL_WINDOWS.labels(task).inc(result.window_tasks.count(task))
        for out in result.outputs + result.withheld:  # published and withheld windows, by quality class
            if out.quality_flag:
                metrics.observe_quality(TASK_OF_KIND[out.kind], out.quality_flag)
        return result

    async def _deliver(self, result: BatchResult, dead: list[Rejected]) -> None:
        await self._confirm(await self._send(result, dead), result, dead)

    async def _send(self, result: BatchResult, dead: list[Rejected]) -> list:
        """Hand a result's Kafka outputs, events and dead letters to the producer, in order; their delivery futures.

        InfluxDB reads them from the topics (stream.influxsink).
        """
        s = self.settings
        publish_started = time.perf_counter()
        futs = []
        events = list(result.events)
        for out in result.outputs:
            try:
                value = sinks.encode_output(out, s.output_binary)
                headers = sinks.output_headers(out)
            except wire.WireError as exc:  # e.g. a translator emitting NaN floods: counted and logged
                self.counters.add(f"output_invalid.{exc.reason}")
                metrics.OUTPUTS_DROPPED.labels(exc.reason).inc()
                log.warning("output %s/%s not published: %s", out.bed, out.topic_signal, exc)
                events = _not_encodable(out, events)
                continue
            except Exception as exc:  # an encoder failing on one output must not crash-loop the worker
                self.counters.add("output_invalid.encode_error")
                metrics.OUTPUTS_DROPPED.labels("encode_error").inc()
                log.error("output %s/%s not published: %s: %s", out.bed, out.topic_signal, type(exc).__name__, exc)
                events = _not_encodable(out, events)
                continue
            futs.append(await self.out_topics[out.kind].send(key=out.bed.encode(), value=value, headers=headers))
            topic = s.topic_ecg_synth if out.kind == "synth" else s.topic_sr
            metrics.MESSAGES_OUT.labels(topic).inc()
            metrics.SAMPLES_OUT.labels(topic).inc(len(out.values))
        for ev in events:
            self.counters.add(f"event.{ev.kind}")
            metrics.STREAM_EVENTS.labels(ev.kind).inc()
            futs.append(await self.events_topic.send(key=ev.bed.encode(), value=sinks.encode_event(ev)))
        if events:
            metrics.MESSAGES_OUT.labels(s.topic_events).inc(len(events))
        for tok, reason, detail in ((r.token, r.reason, r.detail) for r in dead + result.rejected):
            self.counters.add(f"dlq.{reason}")
            metrics.DEAD_LETTERS.labels(reason).inc()
            metrics.MESSAGES_OUT.labels(s.topic_dlq).inc()
            msg = tok.message
            ok, held = self.log_throttle.allow(("dlq", reason))
            if ok:  # the detail (it may quote the rejected value) goes to the dead letter's headers, not the log
                log.warning("dead-letter %s[%s]@%s: %s%s", msg.topic, msg.partition, msg.offset, reason, held_note(held))
            value, extra = sinks.dlq_value(tok.event.value)
            futs.append(await self.dlq_topic.send(
                key=msg.key, value=value, headers=sinks.dlq_headers(reason, detail, msg.topic, msg.partition, msg.offset) + extra))
        # the event loop's own work (encoding, handing to the producer), not the wait for the broker's acks
        metrics.STAGE_SECONDS.labels("publish").inc(time.perf_counter() - publish_started)
        return futs

    async def _confirm(self, futs: list, result: BatchResult, dead: list[Rejected]) -> None:
        """Await every delivery of `_send`, then write the result's flush points, then acknowledge its input."""
        if futs:
            await asyncio.gather(*futs)  # raises if a send failed: then nothing below is acked
        published_ms = time.time() * 1000.0
        if result.flushed:
            await self._persist(result.flushed)
        # 2) Acknowledge, each partition's finished head only (the gate holds the rest until it is contiguous).
        done = list(result.completed) + [r.token for r in dead + result.rejected]
        released = self.gate.finish(t.event for t in done)
        for event in released:
            await self.ack(event)
        self.counters.add("acked", len(released))
        for t in result.emitted:  # latency: to the outputs, not to the (ack-lagged) acknowledgement
            produce_ms = _produce_ms(t.message)
            if produce_ms is not None:
                metrics.END_TO_END_SECONDS.observe(max(0.0, published_ms - produce_ms) / 1000.0)
        if self.stats.path is not None:
            self.stats.record(sinks.LatencyRecord(t.bed, t.signal, _produce_ms(t.message), published_ms)
                              for t in result.emitted)

    async def _persist(self, flushed: list) -> None:
        """Write the flush points of this result, after its outputs are delivered and before its input is acked."""
        try:
            await asyncio.gather(*[await self.progress_topic.send(key=fp.key, value=fp.encode()) for fp in flushed])
        except Exception as exc:
            metrics.PROGRESS_ERRORS.labels("write").inc(len(flushed))
            log.error("progress topic %s: %d flush point(s) not delivered (%s: %s); their input stays unacknowledged "
                      "and the worker crashes", self.settings.topic_progress, len(flushed), type(exc).__name__, exc)
            raise
        metrics.FLUSH_POINTS.labels("written").inc(len(flushed))
        metrics.MESSAGES_OUT.labels(self.settings.topic_progress).inc(len(flushed))

    async def ack(self, event, stream=None) -> None:
        """Acknowledge `event` and count it, unless it was fetched in an older consumer generation.

        Parameters
        ----------
        event : faust.Event
            A message this app's agent took.
        stream : faust.Stream, optional
            The agent's stream it came from (default: the input agent's).
        """
        gen = getattr(event.message, "generation_id", None)
        if gen is not None and gen != self.app.consumer_generation_id:
            # Fetched before a rebalance: its partition may be someone else's now and Faust reset
            # its ack bookkeeping; the new owner re-consumes it (InfluxDB writes are idempotent).
            return
        stream = stream if stream is not None else self.stream
        if stream is not None:
            await stream.ack(event)
        else:
            event.ack()
        msg = event.message
        self.lag.acked((msg.topic, msg.partition), msg.offset)
        metrics.ACKED.labels(msg.topic).inc()


def _produce_ms(message) -> float | None:
    ts = getattr(message, "timestamp", None)  # seconds (Faust divides the record's ms by 1000)
    return None if ts is None else round(float(ts) * 1000.0, 3)


def configured_translator(settings: Settings) -> Translator:
    """The translator `WAVEBRIDGE_TRANSLATOR` names, on `WAVEBRIDGE_DEVICE`.

    Parameters
    ----------
    settings : Settings
        The worker's configuration.
    """
    from operators.translator import load_translator

    # translators that take no device (the numpy ones) simply don't get it
    return load_translator(settings.translator, device=settings.device)


async def crash_on_error(app, what: str, coro) -> None:
    """Await a timer's work `coro`: a stopping sink ends it quietly, any other error crashes the worker.

    A timer has no stream to fail, so an error it swallowed would leave state half-updated while input keeps
    being acknowledged; crashing makes a restart re-consume from the committed offsets instead.

    Parameters
    ----------
    app : faust.App
        The app to crash.
    what : str
        What the timer does, for the log line.
    coro : awaitable
        The timer's work.
    """
    try:
        await coro
    except sinks.SinkStopped:
        pass
    except Exception as exc:
        log.exception("%s failed; crashing the worker", what)
        await app.crash(exc)


def register(app, settings: Settings, translator: Translator | None = None) -> WorkerRuntime:
    """Attach the input agent, the idle-flush timer and rebalance/stop hooks to `app`.

    Parameters
    ----------
    app, settings, translator
        As for `WorkerRuntime`.

    Returns
    -------
    WorkerRuntime
        The agent's state, for the caller to pass where needed (`stream.app.Worker`).
    """
    rt = WorkerRuntime(app, settings, translator, progress=ProgressLog(settings))
    rt.on_delivery_failure = app.crash  # a batch's delivery is confirmed in the background: crash from there

    # concurrency=1: with more, Faust could commit past messages another actor still holds.
    @app.agent(rt.input_topic, concurrency=1, name="wavebridge-input")
    async def process(stream):
        rt.stream = stream
        if rt.pipeline is None:
            try:
                await rt.start()
            except Exception as exc:  # e.g. missing weights, CUDA asked for but absent: exit, don't idle
                log.exception("worker start-up failed (translator or InfluxDB client); crashing the worker")
                await app.crash(exc)
                return
        # noack_take yields Events and never acks: we ack each one once its samples are stored.
        async for events in stream.noack_take(settings.batch_size, within=settings.batch_wait_s):
            try:
                await rt.handle_events(events)
            except sinks.SinkStopped:
                return
            except Exception as exc:
                # State may be inconsistent: crash so a restart re-consumes from the committed offsets.
                log.exception("batch failed; crashing the worker so input is re-consumed after restart")
                await app.crash(exc)
                return

    async def flush_idle_once():
        await crash_on_error(app, "idle flush", rt.flush_idle())

    flushing: list[asyncio.Task] = []

    @app.timer(interval=max(0.2, min(1.0, settings.idle_flush_s / 4)), name="wavebridge-idle-flush")
    async def idle_flush():
        # The flush waits for the pipeline lock, which a batch (or an InfluxDB retry) holds for longer than this
        # interval: awaited here, every such tick logged "Timer wavebridge-idle-flush is overlapping". It runs as
        # a task instead, one at a time; a tick that finds it still running has nothing to add.
        if flushing and not flushing[0].done():
            return
        flushing[:] = [asyncio.ensure_future(flush_idle_once())]

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await rt.reset()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        rt.assigned(assigned)

    @app.timer(interval=1.0, name="wavebridge-heartbeat")
    async def heartbeat():
        # Never waits on the pipeline lock (a batch being computed holds it): /healthz reports a stuck event
        # loop, not a slow batch.
        rt.health.beat()
        rt.update_lag()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs):
        await rt.stop()  # stops the in-process InfluxDB sink (its uncommitted batch is read again)

    return rt


def _not_encodable(out: OutputSeries, events: list[PipelineEvent]) -> list[PipelineEvent]:
    """`events` with an `output_unusable` event for an output chunk that could not be encoded, and without the
    R-peaks of its window: its span is a hole in the output topic like a withheld one, which a consumer must be
    told about rather than find, and a withheld span has no beats (docs/events.schema.json)."""
    if not len(out.times_ns):
        return events
    start = int(out.times_ns[0])
    end = int(grid_ns(start, out.rate_hz, len(out.times_ns)))
    kept = [e for e in events if not (e.kind == RPEAKS and out.kind == "synth" and e.bed == out.bed
                                      and e.time_ns == start)]
    return kept + [PipelineEvent.unusable(OUTPUT_UNUSABLE, out.bed, out.topic_signal, start, end,
                                          reason=NOT_ENCODABLE, quality=0.0, quality_flag="unusable",
                                          outputs=[out.topic_signal], window_start_ns=start)]
