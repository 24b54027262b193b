"""One start-up path for the service's processes, `wavebridge worker` and `wavebridge sink`.

Why one: both refuse the same mistakes (a bad variable, a translator that does not load, a refused InfluxDB token,
a taken metrics port, topics that do not exist), and an operator or an orchestrator must be able to tell a mistake
from an outage by the exit status alone, the same for either process:

- 2, configuration error: one line naming the variable to fix; restarting unchanged cannot help.
- 1, Kafka unreachable at start, or the service failed while running: restarting later may succeed.
- 0, stopped on request.

Order: settings, then every check that needs no Kafka (the process's own: translator, InfluxDB probe), then the
metrics address is bound, then the topics are checked or created, then the process runs. So everything that can
be refused without Kafka is refused before the first connection attempt, and a refusal is one line on stderr,
never a traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Protocol, Sequence

from stream import metrics
from stream.config import ConfigError, Settings
from stream.errors import short_error

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "ServiceProcess", "run_service"]

EXIT_CONFIG = 2
EXIT_FAILED = 1

log = logging.getLogger("wavebridge.startup")


class ServiceProcess(Protocol):
    """A process that passed its own checks and is ready to connect."""

    health: metrics.Health  # served on WAVEBRIDGE_METRICS_HOST/_PORT (/healthz, /readyz)
    topics: list[str]  # required (or created with WAVEBRIDGE_CREATE_TOPICS=true) before `run`

    def run(self) -> int:
        """Run until stopped; the exit status."""


def run_service(name: str, doc: str, argv: Sequence[str], open_process: Callable[[Settings, list[str]], ServiceProcess],
                *, takes_args: bool = False, help_note: str = "") -> int:
    """Start one service process: parse, check, bind, prepare topics, run. Returns its exit status.

    Parameters
    ----------
    name : str
        Command name (`worker`, `sink`): every message starts with `wavebridge <name>: `.
    doc : str
        Printed by `--help`, with `help_note` and the table of settings and their defaults.
    argv : sequence of str
        Command-line arguments after the command name.
    open_process : callable(settings, args) -> ServiceProcess
        The process's own checks and set-up, without Kafka; raises ConfigError for a configuration error.
    takes_args : bool
        Whether arguments pass through to the process (the worker's are Faust's); if not, any is an error.
    help_note : str
        Extra `--help` text.
    """
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        from stream.config import defaults_table

        print(doc)
        if help_note:
            print(help_note)
        print(f"\nSettings and their defaults (ranges and meaning: docs/configuration.md):\n{defaults_table()}")
        return 0
    if args and not takes_args:
        return _fail(name, f"takes no arguments (configured by WAVEBRIDGE_* variables), got {args}", EXIT_CONFIG)
    from stream.logthrottle import throttle_kafka_logs
    from stream.topics import prepare_topics

    try:
        settings = Settings.from_env()
        throttle_kafka_logs(settings.log_repeat_s)
        process = open_process(settings, args)
        server = metrics.serve(settings.metrics_host, settings.metrics_port, process.health)
    except (ConfigError, metrics.MetricsBindError) as exc:
        return _fail(name, f"configuration error: {exc}", EXIT_CONFIG)
    try:
        try:
            created = prepare_topics(settings, process.topics)
        except ConfigError as exc:
            return _fail(name, f"configuration error: {exc}", EXIT_CONFIG)
        except Exception as exc:  # e.g. NoBrokersAvailable
            return _fail(name, f"cannot reach Kafka at {settings.broker} (WAVEBRIDGE_BROKER): {short_error(exc)}",
                         EXIT_FAILED)
        if created:
            log.info("created topics %s (%d partitions, replication %d)", ", ".join(created),
                     settings.topic_partitions, settings.topic_replication)
        return process.run()
    finally:
        if server is not None:
            server.stop()


def _fail(name: str, message: str, status: int) -> int:
    print(f"wavebridge {name}: {message}", file=sys.stderr)
    return status
