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
from stream.agents import WorkerRuntime, _held, crash_on_error
from stream.alarms import BAD_ALARM, AlarmJudge, AlarmMessageError, SignalRing, parse_alarm
from stream.alarms import warn_if_not_keyed_by_bed
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
                            _held(held))
            value, extra = sinks.dlq_value(event.value)
            await self.worker.dlq_topic.send(key=msg.key, value=value, headers=sinks.dlq_headers(
                BAD_ALARM, str(exc), msg.topic, msg.partition, msg.offset) + extra)
            return
        warn_if_not_keyed_by_bed(alarm, event.message, self.worker.log_throttle)
        self.judge.submit(alarm)
        self.worker.counters.add("alarm_received")

    async def tick(self) -> None:
        """Judge every alarm whose data is there (or whose deadline passed) and publish the verdicts."""
        if self.judge is None:
            return
        for p in self.judge.due():
            msg = await self._run(self.judge.judge, p)
            fut = await self.verdicts_topic.send(key=msg["bed_id"].encode(), value=json.dumps(msg).encode())
            await fut  # confirmed before it is logged as published
            self.worker.counters.add(f"verdict.{msg['verdict']}")
            metrics.ALARM_VERDICTS.labels(msg["verdict"]).inc()
            metrics.MESSAGES_OUT.labels(self.settings.topic_verdicts).inc()
            log.info("alarm %s (%s, bed %s): %s, confidence %.2f: %s", msg["alarm_id"], msg["alarm_type"],
                     msg["bed_id"], msg["verdict"], msg["confidence"] or 0.0, msg["reason"])

    async def stop(self) -> None:
        """Stop the judging thread (pending alarms are not judged)."""
        self.executor.shutdown(wait=False, cancel_futures=True)


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
