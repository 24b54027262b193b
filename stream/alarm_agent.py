"""The worker's alarm-verification agent: monitor alarms in, verdicts out (Kafka + InfluxDB).

Every waveform chunk the worker decodes is also put into a bounded per-bed `SignalRing`
(`stream/alarms.py` says why it is not the pipeline's windows). The agent consumes the alarms topic
(JSON, key = bed id, docs/alarm.schema.json); each alarm waits in an `AlarmJudge` until its bed's data
reaches what the mode needs (real-time: the onset; retrospective: the configured wait after it), at most
a grace period longer, then is judged on a thread of its own (never on the event loop, never on the
translation thread) and its verdict goes to the verdicts topic (docs/verdict.schema.json); the InfluxDB
sink agent (`stream.influxsink`) writes it to InfluxDB (`alarm_verdict`) from there, so a verdict never
waits for InfluxDB. A malformed alarm gets no verdict (there is nothing to judge): it goes to the
dead-letter topic with reason `bad_alarm` and the problem in the `wavebridge.detail` header, as malformed
chunks do.

An alarm's offset is acknowledged once its verdict is confirmed on the verdicts topic (or, for a malformed one,
once its dead letter is), in offset order per partition (`stream/ackgate.py`): a crash, SIGKILL or power loss
therefore loses no alarm; the worker that next holds the partition reads it again and judges it, from a ring
refilled with the input it re-reads. The price is at-least-once verdicts: an alarm whose verdict was published just
before a crash, before its offset was committed, is judged again (readers deduplicate on `alarm_id` + `mode`).
On a revoke the pending alarms are dropped unjudged: their partition's new owner reads them again. On a graceful
stop the agent judges every alarm still pending with the data at hand and publishes those verdicts marked
`judged_early: "shutdown"` before the producer stops (Faust sends `on_before_shutdown` after the consumer stopped
and before the producer does, and commits what was acknowledged then when the consumer service stops).

The alarms topic must have as many partitions as the waveforms topic and be keyed by bed id the same
way: Faust assigns co-partitioned topics' partitions together, so the worker holding a bed's waveforms
also gets its alarms.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from stream import metrics, sinks
from stream.ackgate import AckGate
from stream.logthrottle import held_note
from stream.agents import WorkerRuntime, crash_on_error
from stream.alarms import (BAD_ALARM, JUDGED_EARLY_SHUTDOWN, AlarmJudge, AlarmMessageError, SignalRing, parse_alarm,
                           warn_if_not_keyed_by_bed)
from stream.config import Settings

log = logging.getLogger("wavebridge.alarms")


class AlarmRuntime:
    """State of the alarm agent: the signal ring the worker fills, the judge, the verdicts topic.

    Parameters
    ----------
    app : faust.App
        The worker's app.
    settings : Settings
        The worker's configuration.
    worker_rt : stream.agents.WorkerRuntime
        The input agent's state: its decoded chunks fill the ring, its dead-letter topic and counters are shared.
    """

    def __init__(self, app, settings: Settings, worker_rt: WorkerRuntime):
        self.app = app
        self.settings = settings
        self.worker = worker_rt
        self.ring = SignalRing(settings.alarm_buffer_s, settings.alarm_max_beds)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavebridge-alarms")
        self.judge: AlarmJudge | None = None
        self._judging = asyncio.Lock()  # one tick, revoke or stop judges, publishes or drops at a time
        self._stopped = False
        self.gate = AckGate()  # an alarm is acknowledged once its verdict is confirmed, in offset order
        self.stream = None  # the agent's stream (no automatic acks)
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.alarms_topic = app.topic(settings.topic_alarms, **raw)
        self.verdicts_topic = app.topic(settings.topic_verdicts, **raw)
        worker_rt.chunk_listeners.append(self._buffer)

    def _buffer(self, chunk, stepped_back: bool = False) -> None:
        """Put a decoded chunk into the ring (the compute thread calls it); count and log a chunk the full ring
        refused: that bed's alarms get `uncertain` verdicts until a bed falls silent (SignalRing)."""
        if self.ring.add(chunk, stepped_back):
            return
        metrics.ALARM_RING_REFUSED.inc()
        ok, held = self.worker.log_throttle.allow("alarm_ring_full")
        if ok:
            log.warning("alarm ring full: %d beds heard in the last %g s; bed %s not buffered, its alarms are judged "
                        "uncertain (raise WAVEBRIDGE_ALARM_MAX_BEDS or add workers)%s", self.ring.max_beds,
                        self.ring.keep_s, chunk.bed_id, held_note(held))

    def _open(self) -> None:
        from operators.processing.alarms import VerifierConfig
        from operators.translator import load_translator

        s = self.settings
        tr = None if s.alarm_translator.lower() == "none" else load_translator(s.alarm_translator)
        self.judge = AlarmJudge(self.ring, s.alarm_mode, s.alarm_wait_s, s.alarm_grace_s, tr, VerifierConfig())

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self) -> None:
        """Load the alarm translator and make the judge, off the event loop."""
        if self.judge is None:
            await self._run(self._open)

    async def on_alarm(self, event) -> None:
        """Queue one alarm message for judging, or dead-letter it (`bad_alarm`) if malformed.

        The message is acknowledged once its verdict (or dead letter) is confirmed, not here.

        Parameters
        ----------
        event : faust.Event
            An alarms-topic message (JSON, docs/alarm.schema.json).
        """
        msg = event.message
        if not self.worker.current([event]):
            return  # fetched before a rebalance: the partition's owner reads it again from the committed offset
        if self._stopped:
            # the stop has judged the pending alarms; left unacknowledged, this one is read again by the next worker
            self.worker.counters.add("alarm_left_for_next_worker")
            log.warning("alarm at %s[%s]@%s received while stopping: left unacknowledged for the next worker",
                        msg.topic, msg.partition, msg.offset)
            return
        self.gate.taken([event])
        self.worker.seen(msg)
        try:
            alarm = parse_alarm(event.value)
        except AlarmMessageError as exc:
            self.worker.counters.add("dlq.bad_alarm")
            metrics.DEAD_LETTERS.labels(BAD_ALARM).inc()
            metrics.MESSAGES_OUT.labels(self.settings.topic_dlq).inc()
            # one line per WAVEBRIDGE_LOG_REPEAT_S as for malformed chunks (a bad producer sends many); the problem
            # is short (parse_alarm cuts the values), all of it goes to the dead letter's header
            ok, held = self.worker.log_throttle.allow(("dlq", BAD_ALARM))
            if ok:
                log.warning("dead-letter %s[%s]@%s: bad_alarm: %s%s", msg.topic, msg.partition, msg.offset, exc,
                            held_note(held))
            value, extra = sinks.dlq_value(event.value)
            async with self._judging:  # a revoke resets the gate before or after this, never in between
                fut = await self.worker.dlq_topic.send(key=msg.key, value=value, headers=sinks.dlq_headers(
                    BAD_ALARM, str(exc), msg.topic, msg.partition, msg.offset) + extra)
                await fut  # raises if not delivered: the agent crashes the worker, the alarm is read again
                if self.worker.current([event]):  # else a revoke came first and dropped it from the gate
                    await self._release(event)
            return
        warn_if_not_keyed_by_bed(alarm, msg, self.worker.log_throttle)
        self.judge.submit(alarm, token=event)
        self.worker.counters.add("alarm_received")

    async def _release(self, event) -> None:
        """`event` is done (its verdict or dead letter confirmed): acknowledge it and any later ones it held back."""
        for ev in self.gate.finish([event]):
            await self.worker.ack(ev, self.stream)

    async def revoked(self) -> None:
        """Partitions revoked: drop the pending alarms unjudged; their partition's owner reads them again."""
        async with self._judging:  # a tick that is publishing finishes (and acknowledges) first
            dropped = [] if self.judge is None else self.judge.drain()
            self.gate.reset()
        if dropped:
            log.info("rebalance: %d pending alarm%s dropped unjudged; the owner of their partition reads them again",
                     len(dropped), "" if len(dropped) == 1 else "s")

    async def tick(self) -> None:
        """Judge every alarm whose data is there (or whose deadline passed) and publish the verdicts."""
        async with self._judging:
            if self.judge is None or self._stopped:
                return
            for p in self.judge.due():
                await self._publish(await self._run(self.judge.judge, p))
                await self._release(p.token)

    async def _publish(self, msg: dict) -> None:
        fut = await self.verdicts_topic.send(key=msg["bed_id"].encode(), value=json.dumps(msg).encode())
        await fut  # confirmed before it is logged as published
        self.worker.counters.add(f"verdict.{msg['verdict']}")
        metrics.ALARM_VERDICTS.labels(msg["verdict"]).inc()
        metrics.MESSAGES_OUT.labels(self.settings.topic_verdicts).inc()
        log.info("alarm %s (%s, bed %s): %s, confidence %.2f: %s", msg["alarm_id"], msg["alarm_type"],
                 msg["bed_id"], msg["verdict"], msg["confidence"] or 0.0, msg["reason"])

    async def stop(self) -> None:
        """Judge every pending alarm now, with the data at hand, publish those verdicts, then stop the thread.

        A stop should not leave alarms to wait for the next worker, which may be minutes away (or never come). Each
        verdict is marked `judged_early: "shutdown"` (its reason starts with `judged early (shutdown): `) and its
        alarm acknowledged; a WARNING line says how many. Call while the producer still runs (Faust's
        `on_before_shutdown`). An alarm whose verdict cannot be published stays unacknowledged (the next worker
        judges it) and an ERROR line names it.
        """
        async with self._judging:  # lets a tick that is publishing finish first
            self._stopped = True
            pending = [] if self.judge is None else self.judge.drain()
            done, lost = [], []
            for p in pending:  # one failed publish does not cost the others their verdicts
                try:
                    await self._publish(await self._run(self.judge.judge, p, JUDGED_EARLY_SHUTDOWN))
                    done.append(p.alarm.alarm_id)
                    await self._release(p.token)
                except Exception:  # noqa: BLE001 - logged below with the ids left without a verdict
                    log.exception("stopping: alarm %s not published", p.alarm.alarm_id)
                    lost.append(p.alarm.alarm_id)
            if lost:
                log.error("stopping: %d alarm(s) left without a verdict, unacknowledged for the next worker: %s",
                          len(lost), _ids(lost))
            if pending:
                log.warning("stopping: judged %d pending alarm%s early, with the data at hand (judged_early: %s): %s",
                            len(done), "" if len(done) == 1 else "s", JUDGED_EARLY_SHUTDOWN, _ids(done))
            self.executor.shutdown(wait=False, cancel_futures=True)


def _ids(alarm_ids: list[str], shown: int = 20) -> str:
    """The first `shown` alarm ids for a log line (a stop may judge hundreds), and how many more."""
    more = len(alarm_ids) - shown
    return ", ".join(alarm_ids[:shown]) + (f" and {more} more" if more > 0 else "")


def register(app, settings: Settings, worker_rt: WorkerRuntime) -> AlarmRuntime:
    """Attach the alarms agent and its judging timer to `app` (after `stream.agents.register`).

    Parameters
    ----------
    app, settings, worker_rt
        As for `AlarmRuntime` (`worker_rt`: what `stream.agents.register` returned).
    """
    rt = AlarmRuntime(app, settings, worker_rt)

    @app.agent(rt.alarms_topic, concurrency=1, name="wavebridge-alarms")
    async def alarms(stream):
        try:
            await rt.start()
        except Exception as exc:
            log.exception("alarm verifier start-up failed (translator); crashing the worker")
            await app.crash(exc)
            return
        rt.stream = stream.noack()  # acknowledged by `rt` once judged (or dead-lettered)
        async for event in rt.stream.events():
            # an alarm that fails here stays unacknowledged in the gate and would hold back its partition's acks for
            # good (Faust's supervisor restarts the agent, not the worker): crash, and the restart reads it again
            await crash_on_error(app, "taking an alarm", rt.on_alarm(event))

    @app.timer(interval=0.5, name="wavebridge-alarm-judge")
    async def judge_due():
        await crash_on_error(app, "judging alarms", rt.tick())

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await rt.revoked()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs):
        await rt.stop()

    return rt
