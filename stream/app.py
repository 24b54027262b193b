"""Faust application of the stream worker.

    wavebridge worker [faust worker options]      # e.g. -l info --web-port 6067
    python -m stream.app worker [faust worker options]

All settings come from `WAVEBRIDGE_*` environment variables (docs/configuration.md). Before
connecting to Kafka the worker validates them, loads the translator on its device and asks
InfluxDB whether the token may write to the bucket (`preflight`): a configuration error stops it
with one line naming the variable, exit status 2. It then checks that its topics exist, or creates
them when WAVEBRIDGE_CREATE_TOPICS=true; Faust itself never declares topics here.
"""
from __future__ import annotations

import logging
import ssl
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from operators.translator import Translator
from stream import metrics
from stream.config import ConfigError, Settings
from stream.errors import short_error
from stream.startup import run_service

if TYPE_CHECKING:  # the agents import faust: loaded with the app, not with this module
    from stream.agents import WorkerRuntime
    from stream.alarm_agent import AlarmRuntime

log = logging.getLogger("wavebridge.worker")


def _credentials(s: Settings):
    import faust

    ctx = None
    if s.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ssl_cafile)
        if s.ssl_certfile:
            ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile)
    if s.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=s.sasl_username, password=s.sasl_password, ssl_context=ctx,
                                     mechanism=s.sasl_mechanism)
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


@dataclass(frozen=True)
class Worker:
    """The worker process: its Faust app and the runtimes its agents share, passed explicitly where needed.

    `run` hands the command line to Faust's worker CLI (`faust_args`, e.g. `--loglevel info`).
    """

    app: Any  # faust.App
    settings: Settings
    runtime: WorkerRuntime
    alarms: AlarmRuntime | None = None
    faust_args: list[str] = field(default_factory=list)

    @property
    def health(self) -> metrics.Health:
        """Liveness and readiness checks of the input agent (served by `stream.startup`)."""
        return self.runtime.health

    @property
    def topics(self) -> list[str]:
        """Every topic the worker reads or writes (required to exist before it connects)."""
        s = self.settings
        names = [s.topic_input, s.topic_ecg_synth, s.topic_sr, s.topic_events, s.topic_dlq, s.topic_progress]
        if s.alarm_enabled:
            names += [s.topic_alarms, s.topic_verdicts]
        return names

    def run(self) -> int:
        """Faust's worker CLI in the foreground; its exit status."""
        sys.argv = ["wavebridge", "worker", *self.faust_args]
        try:
            self.app.main()  # Faust's click CLI; exits via SystemExit
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else 1
        return 0


def faust_worker_class():
    """Faust's worker class without its terminal spinner.

    At a log level of WARN or above, Faust's worker sets the root logger to DEBUG and adds a handler that turns
    its spinner on every record. Every debug call of aiokafka and Faust (several per message sent or received)
    then builds a `LogRecord` that no handler prints (3-4 % of the GIL samples of a `passthrough` worker at 1,024
    bed-equivalents under py-spy; about 5 % of one worker's CPU in stream_bench), for a spinner that draws nothing
    without a terminal. This class leaves the root logger at the level asked for. A function, not a module-level
    class: this module does not import faust (the CLI's help and config errors come before it).

    Returns
    -------
    type
        A subclass of `faust.Worker`, for `faust.App(..., Worker=...)`.
    """
    import faust

    class QuietWorker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            self.spinner = None

    return QuietWorker


def create_worker(settings: Settings, translator: Translator | None = None, faust_args: Sequence[str] = ()) -> Worker:
    """Build the Faust app with the input agent (and the alarm agent when enabled) registered.

    Parameters
    ----------
    settings : Settings
        The worker's configuration.
    translator : Translator, optional
        Already loaded (`preflight`); loaded on the compute thread at start otherwise.
    faust_args : sequence of str
        Faust worker options for `Worker.run`.
    """
    import faust

    from stream.agents import register

    s = settings
    app = faust.App(
        s.group_id,
        broker=s.faust_broker,
        broker_credentials=_credentials(s),
        key_serializer="raw",
        value_serializer="raw",
        # Waveform buffers live in process memory; nothing needs tables or their changelogs.
        store="memory://",
        topic_allow_declare=False,  # topics are created explicitly with their partition counts
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",  # never "latest": a new group must not skip input
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_s,
        broker_commit_interval=1.0,
        # We hold messages unacknowledged until their samples are written (up to a window), so a
        # rebalance must not wait for "all acked" (it never would while input is paused).
        stream_wait_empty=False,
        producer_acks=-1,
        web_enabled=not s.without_web,
        web_port=s.web_port,
        # Faust's own page serves nothing wavebridge needs (health and metrics: WAVEBRIDGE_METRICS_*).
        web_bind="127.0.0.1",
        # Faust would otherwise create `<app id>-data/` in the current directory.
        datadir=s.data_dir or str(Path(tempfile.gettempdir()) / f"wavebridge-{s.group_id}"),
        Worker=faust_worker_class(),
    )
    rt = register(app, s, translator)
    alarms = None
    if s.alarm_enabled:
        from stream.alarm_agent import register as register_alarms

        alarms = register_alarms(app, s, rt)
    acked_topics = {s.topic_input} | ({s.topic_alarms} if s.alarm_enabled else set())

    @app.on_rebalance_complete.connect
    async def rewind(sender, **kwargs):  # before Faust's first seek to the committed offsets
        from stream.rewind import rewind_uncommitted

        rewind_uncommitted(app.consumer, acked_topics)
    return Worker(app, s, rt, alarms, list(faust_args))


def preflight(s: Settings) -> Translator:
    """Everything that can be checked before connecting to Kafka; returns the loaded translator.

    Parameters
    ----------
    s : Settings
        The worker's configuration.

    Raises
    ------
    ConfigError
        Naming the variable, for a translator that does not load (a CUDA device without a GPU is the CLMT
        engine's own refusal: the service itself never imports torch), or an InfluxDB that refuses the token,
        org or bucket. An unreachable InfluxDB is not an error here: writes retry until it is back.
    """
    from stream.agents import configured_translator
    from stream.sinks.influx import influx_probe

    try:
        translator = configured_translator(s)
    except Exception as exc:  # missing weights, an import error in a plug-in, ...: all configuration
        raise ConfigError(f"WAVEBRIDGE_TRANSLATOR={s.translator}: cannot load: {short_error(exc)}") from None
    if s.influx_enabled and s.influx_sink == "worker":
        problem = influx_probe(s.influx_url, s.influx_token, s.influx_org, s.influx_bucket, s.influx_timeout_s)
        if problem is not None:
            # said on stderr as the start-up's other lines are: the worker's logging is not set up yet, and a
            # log record now would come out bare (no time, no level)
            print(f"wavebridge worker: warning: InfluxDB not reachable at start ({problem}); writes will be retried",
                  file=sys.stderr, flush=True)
    return translator


def _open_worker(settings: Settings, args: list[str]) -> Worker:
    """`stream.startup`'s hook: every check before Kafka (`preflight`), then the app."""
    translator = preflight(settings)
    args = list(args)
    if settings.without_web and "--without-web" not in args:
        args.append("--without-web")
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in args):
        args += ["--loglevel", settings.faust_log_level]
    return create_worker(settings, translator, args)


def cli(argv: Sequence[str] | None = None) -> int:
    """`wavebridge worker [faust worker options]`; returns the exit status (`stream.startup`).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: `sys.argv[1:]`); a leading `worker` is skipped.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "worker":
        args = args[1:]
    return run_service("worker", __doc__, args, _open_worker, takes_args=True,
                       help_note="Worker options are Faust's (`faust worker --help`): -l/--loglevel, --web-port, "
                                 "--without-web, ...")


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
