"""One start-up path (stream/startup.py) for `wavebridge worker` and `wavebridge sink`: the same refusals give the
same one line and the same exit status in both (2: configuration, 1: Kafka unreachable), before any connection."""
from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request

import pytest

from stream import metrics, startup
from stream.config import ConfigError


class _Process:
    def __init__(self, status: int = 0):
        self.health = metrics.Health()
        self.topics = ["t.in", "t.out"]
        self.status = status
        self.ran = False

    def run(self) -> int:
        self.ran = True
        return self.status


@pytest.fixture
def env(monkeypatch):
    import os

    for k in [k for k in os.environ if k.startswith("WAVEBRIDGE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("WAVEBRIDGE_METRICS_PORT", "0")
    topics_asked = []

    def prepare(settings, names):
        topics_asked.append(list(names))
        return []

    monkeypatch.setattr("stream.topics.prepare_topics", prepare)
    return monkeypatch, topics_asked


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_a_process_that_passes_its_checks_runs_and_its_status_is_the_exit_status(env, name):
    _, topics_asked = env
    proc = _Process(status=3)
    assert startup.run_service(name, "doc", [], lambda s, a: proc) == 3
    assert proc.ran and topics_asked == [["t.in", "t.out"]]


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_configuration_errors_are_one_line_and_status_2_before_kafka(env, capsys, name):
    monkeypatch, topics_asked = env

    def refuse(settings, args):
        raise ConfigError("WAVEBRIDGE_TRANSLATOR=foo: cannot load")

    assert startup.run_service(name, "doc", [], refuse) == startup.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wavebridge {name}: configuration error: WAVEBRIDGE_TRANSLATOR=foo: cannot load"]
    assert topics_asked == []  # refused before any connection

    monkeypatch.setenv("WAVEBRIDGE_WINDOWS_S", "4")  # a typo: the settings themselves refuse
    assert startup.run_service(name, "doc", [], lambda s, a: _Process()) == startup.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wavebridge {name}: configuration error: ") and "WINDOW_S" in err[0]


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_a_taken_metrics_port_is_a_configuration_error_before_kafka(env, capsys, name):
    monkeypatch, topics_asked = env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("WAVEBRIDGE_METRICS_PORT", str(port))
        proc = _Process()
        assert startup.run_service(name, "doc", [], lambda s, a: proc) == startup.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wavebridge {name}: configuration error: ")
    assert "WAVEBRIDGE_METRICS_HOST/_PORT" in err[0] and f":{port}" in err[0]
    assert topics_asked == [] and not proc.ran


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_topics_missing_is_status_2_and_kafka_unreachable_status_1(env, capsys, name):
    monkeypatch, _ = env

    def missing(settings, names):
        raise ConfigError("topic(s) t.in do not exist")

    monkeypatch.setattr("stream.topics.prepare_topics", missing)
    assert startup.run_service(name, "doc", [], lambda s, a: _Process()) == startup.EXIT_CONFIG
    assert capsys.readouterr().err.strip().splitlines() == [
        f"wavebridge {name}: configuration error: topic(s) t.in do not exist"]

    def unreachable(settings, names):
        raise OSError("NoBrokersAvailable")

    monkeypatch.setattr("stream.topics.prepare_topics", unreachable)
    assert startup.run_service(name, "doc", [], lambda s, a: _Process()) == startup.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wavebridge {name}: cannot reach Kafka at ")
    assert "(WAVEBRIDGE_BROKER): OSError: NoBrokersAvailable" in err[0]


def test_the_metrics_server_runs_while_the_process_runs_and_stops_after(env):
    monkeypatch, _ = env
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("WAVEBRIDGE_METRICS_PORT", str(port))
    seen = []

    class Serving(_Process):
        def run(self):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                seen.append(r.status)
            return 0

    assert startup.run_service("sink", "doc", [], lambda s, a: Serving()) == 0
    assert seen == [200]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_arguments_and_help(env, capsys):
    assert startup.run_service("sink", "the doc", ["--help"], lambda s, a: pytest.fail("opened")) == 0
    out = capsys.readouterr().out
    assert out.startswith("the doc") and "WAVEBRIDGE_WINDOW_S" in out
    assert startup.run_service("sink", "doc", ["extra"], lambda s, a: pytest.fail("opened")) == startup.EXIT_CONFIG
    assert capsys.readouterr().err.strip().splitlines() == [
        "wavebridge sink: takes no arguments (configured by WAVEBRIDGE_* variables), got ['extra']"]
    got = []
    assert startup.run_service("worker", "doc", ["-l", "info"], lambda s, a: got.append(a) or _Process(),
                               takes_args=True) == 0
    assert got == [["-l", "info"]]


def test_the_worker_object_holds_its_runtimes_and_nothing_is_hung_on_the_faust_app(tmp_path):
    import dataclasses

    from stream.app import create_worker
    from stream.config import Settings

    s = Settings(translator="classic", influx_enabled=False, alarm_enabled=True, topic_input="in", topic_ecg_synth="synth",
                 topic_sr="sr", topic_events="ev", topic_dlq="dlq", topic_alarms="al", topic_verdicts="ve",
                 topic_progress="pr", data_dir=str(tmp_path))
    w = create_worker(s, faust_args=["-l", "info"])
    assert w.runtime.app is w.app and w.alarms is not None and w.alarms.worker is w.runtime
    assert w.health is w.runtime.health and w.settings is s and w.faust_args == ["-l", "info"]
    assert [a for a in vars(w.app) if a.startswith("wavebridge")] == []
    assert w.topics == ["in", "synth", "sr", "ev", "dlq", "pr", "al", "ve"]
    without_alarms = create_worker(dataclasses.replace(s, alarm_enabled=False, group_id="other"))
    assert without_alarms.alarms is None and without_alarms.topics == ["in", "synth", "sr", "ev", "dlq", "pr"]


@pytest.mark.parametrize("level, expected",
                         [("warn", logging.WARNING), ("error", logging.ERROR), ("info", logging.INFO)])
def test_the_faust_worker_leaves_the_root_logger_at_the_level_asked_for(tmp_path, level, expected):
    """Stock Faust sets the root logger to DEBUG at WARN and above (for its terminal spinner), so every debug call of
    aiokafka and Faust builds a record nobody prints: the worker's Faust worker class must not."""
    import faust

    from stream.app import create_worker
    from stream.config import Settings

    s = Settings(translator="passthrough", influx_enabled=False, alarm_enabled=False, data_dir=str(tmp_path))
    app = create_worker(s).app
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        stock = logging.DEBUG if expected >= logging.WARNING else expected
        for cls, want in ((app.conf.Worker, expected), (faust.Worker, stock)):
            # redirect_stdouts off: a worker that redirects sys.stdout/stderr and is never stopped restores them
            # whenever its redirecting generator is collected, which can be in the middle of a later test that
            # captures them (capsys then sees nothing)
            worker = cls(app, loglevel=level, loop=asyncio.new_event_loop(), redirect_stdouts=False)
            worker._setup_logging()
            assert root.level == want, cls  # the stock class shows what the test would catch
            assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG) or cls is faust.Worker
            worker.loop.close()
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_an_unreachable_influxdb_at_start_is_one_warning_line_and_not_an_error(capsys):
    """The worker's logging is set up only when Faust starts: a log record here came out bare."""
    from stream.app import preflight
    from stream.config import Settings

    s = Settings(translator="classic", influx_url="http://127.0.0.1:9", influx_sink="worker", influx_timeout_s=1.0)
    assert preflight(s) is not None
    err = capsys.readouterr().err
    assert err.startswith("wavebridge worker: warning: InfluxDB not reachable at start (") and err.count("\n") == 1, err
