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

An alarm's offset is committed once it is received, not once its verdict is published: on a graceful stop
the agent therefore judges every alarm still pending with the data at hand and publishes those verdicts marked
`judged_early: "shutdown"` before the producer stops (Faust sends `on_before_shutdown` after the consumer stopped
and before the producer does); a crash or SIGKILL still loses them (docs/alarms.md, "Stopping and restarting").

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
        self._judging = asyncio.Lock()  # one tick or the stop judges and publishes at a time
        self._stopped = False
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.alarms_topic = app.topic(settings.topic_alarms, **raw)
        self.verdicts_topic = app.topic(settings.topic_verdicts, **raw)
        worker_rt.chunk_listeners.append(self.ring.add)

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

        Parameters
        ----------
        event : faust.Event
            An alarms-topic message (JSON, docs/alarm.schema.json).
        """
        try:
            alarm = parse_alarm(event.value)
        except AlarmMessageError as exc:
            self.worker.counters.add("dlq.bad_alarm")
            metrics.DEAD_LETTERS.labels(BAD_ALARM).inc()
            metrics.MESSAGES_OUT.labels(self.settings.topic_dlq).inc()
            msg = event.message
            # one line per WAVEBRIDGE_LOG_REPEAT_S as for malformed chunks (a bad producer sends many); the problem
            # is short (parse_alarm cuts the values), all of it goes to the dead letter's header
            ok, held = self.worker.log_throttle.allow(("dlq", BAD_ALARM))
            if ok:
                log.warning("dead-letter %s[%s]@%s: bad_alarm: %s%s", msg.topic, msg.partition, msg.offset, exc,
                            held_note(held))
            value, extra = sinks.dlq_value(event.value)
            await self.worker.dlq_topic.send(key=msg.key, value=value, headers=sinks.dlq_headers(
                BAD_ALARM, str(exc), msg.topic, msg.partition, msg.offset) + extra)
            return
        if self._stopped:
            # the consumer handed it over after the pending alarms were judged: nothing judges it any more, and
            # its offset may be committed with the ones before it
            self.worker.counters.add("alarm_not_judged")
            log.error("alarm %s (%s, bed %s) received while stopping: not judged, no verdict", alarm.alarm_id,
                      alarm.alarm_type, alarm.bed_id)
            return
        warn_if_not_keyed_by_bed(alarm, event.message, self.worker.log_throttle)
        self.judge.submit(alarm)
        self.worker.counters.add("alarm_received")

    async def tick(self) -> None:
        """Judge every alarm whose data is there (or whose deadline passed) and publish the verdicts."""
        async with self._judging:
            if self.judge is None or self._stopped:
                return
            for p in self.judge.due():
                await self._publish(await self._run(self.judge.judge, p))

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

        Their offsets were committed on receipt, so no other worker would judge them. Each verdict is marked
        `judged_early: "shutdown"` (its reason starts with `judged early (shutdown): `); a WARNING line says how
        many. Call while the producer still runs (Faust's `on_before_shutdown`). A verdict that cannot be
        published is logged as an ERROR naming the alarms left without one.
        """
        async with self._judging:  # lets a tick that is publishing finish first
            self._stopped = True
            pending = [] if self.judge is None else self.judge.drain()
            done, lost = [], []
            for p in pending:  # one failed publish does not cost the others their verdicts
                try:
                    await self._publish(await self._run(self.judge.judge, p, JUDGED_EARLY_SHUTDOWN))
                    done.append(p.alarm.alarm_id)
                except Exception:  # noqa: BLE001 - logged below with the ids left without a verdict
                    log.exception("stopping: alarm %s not published", p.alarm.alarm_id)
                    lost.append(p.alarm.alarm_id)
            if lost:
                log.error("stopping: %d alarm(s) left without a verdict: %s", len(lost), _ids(lost))
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
        async for event in stream.events():
            await rt.on_alarm(event)
            rt.worker.consumed(event.message)  # Faust acknowledges it at the next event

    @app.timer(interval=0.5, name="wavebridge-alarm-judge")
    async def judge_due():
        await crash_on_error(app, "judging alarms", rt.tick())

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs):
        await rt.stop()

    return rt
