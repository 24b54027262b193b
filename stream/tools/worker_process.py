"""The stream worker as a child process: its environment from a `Settings`, and its start and stop.

One implementation for every tool that runs a worker beside itself: `wavebridge demo`, the benchmarks
(benchmarks/stream_bench.py, benchmarks/rebalance_soak.py) and the integration tests (tests/support/worker.py).
The child reads its settings only from the environment built here (`Settings.to_env`), never from a
`WAVEBRIDGE_*` variable that happened to be set in the parent's, so what a test or a benchmark measures is
the configuration it wrote down.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from stream.config import PREFIX, Settings
from stream.tools.embedded import die_with_parent

# A crashed Faust agent logs this and leaves the process running: `check` treats it as an exit.
AGENT_CRASHED = "Crashed reason="
# Tansu joins a consumer group in about half the session timeout: local runs keep it short for a quick start.
LOCAL_BROKER_TIMING = {"session_timeout_s": 6.0, "heartbeat_s": 1.0}
# Topic fields of Settings; `prefixed_topics` renames them all at once.
TOPIC_FIELDS = ("topic_input", "topic_ecg_synth", "topic_sr", "topic_events", "topic_dlq", "topic_alarms",
                "topic_verdicts", "topic_progress")


def import_root() -> Path:
    """The folder this process imports the `stream` package from.

    A worker child must run this same tree, whatever its working directory and whatever is installed in the
    virtualenv (an editable install may point at another checkout); nothing but the package's own location
    says where that is.
    """
    spec = importlib.util.find_spec("stream")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def prefixed_topics(prefix: str) -> dict[str, str]:
    """`Settings` topic fields -> the default topic names with `wavebridge` replaced by `prefix`.

    Parameters
    ----------
    prefix : str
        Stands for `wavebridge` in every name: "t1a2b" -> "t1a2b.waveforms", "t1a2b.ecg-synth", ...

    Returns
    -------
    dict of str to str
        Keywords for `Settings` / `dataclasses.replace`, so runs sharing a broker keep apart.
    """
    defaults = Settings()
    return {f: prefix + "." + getattr(defaults, f).split(".", 1)[1] for f in TOPIC_FIELDS}


def worker_environment(settings: Settings, base: Mapping[str, str] | None = None,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker child.

    Parameters
    ----------
    settings : Settings
        Written as `WAVEBRIDGE_*` variables (`Settings.to_env`).
    base : mapping of str to str, optional
        The rest of the environment (default `os.environ`), without any `WAVEBRIDGE_*` variable of its own.
    extra : mapping of str to str, optional
        Raw variables set last: for values `Settings` would refuse, which is what a test of the worker's
        start-up checks needs.

    Returns
    -------
    dict of str to str
        With `PYTHONPATH` led by `import_root()` and `PYTHONUNBUFFERED=1` (log lines arrive as written).
    """
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith(PREFIX)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(import_root()), env.get("PYTHONPATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings.to_env())
    env.update(extra or {})
    return env


WORKER = ("stream.app", "worker")  # `python -m` arguments of a worker
SINK = ("stream.influxsink",)  # of the InfluxDB sink agent on its own (`WAVEBRIDGE_INFLUX_SINK=separate`)


class WorkerProcess:
    """`python -m stream.app worker` (or another of the service's commands) as a child, output to `log_path`, in its
    own session.

    Its own session: a terminal's Ctrl-C reaches only the parent, which stops the child in order, and a stop
    reaches the whole process group (Faust may start helpers). The child dies with the parent
    (`die_with_parent`), so no run leaves a worker behind.

    Parameters
    ----------
    env : mapping of str to str
        The child's whole environment, normally from `worker_environment`.
    log_path : Path
        File for the child's stdout and stderr.
    append : bool
        Append to `log_path` (several workers of one test writing one file) instead of truncating it.
    cwd : Path, optional
        The child's working directory (default: this process's).
    command : tuple of str
        What `python -m` runs: `WORKER` (default) or `SINK`.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, *, append: bool = False, cwd: Path | None = None,
                 command: tuple[str, ...] = WORKER):
        self.command = tuple(command)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.append = append
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "WorkerProcess":
        """Start the child; returns self."""
        self._log = open(self.log_path, "ab" if self.append else "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *self.command], cwd=self.cwd, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def alive(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise RuntimeError, with the log's last lines, if the child exited or one of its agents crashed."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.command)} exited with code {self.proc.returncode}; last log lines:\n"
                               f"{self.log_tail()}")
        if self.proc is not None and AGENT_CRASHED in self.log_tail(200):
            raise RuntimeError(f"the agent of {' '.join(self.command)} crashed; last log lines:\n{self.log_tail()}")

    def log(self) -> str:
        """The whole log so far ('' when unreadable)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        """The log's last `n` lines."""
        return "\n".join(self.log().splitlines()[-n:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after `timeout_s` seconds; closes the log."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL to the child's process group at once (a crash, as a test or a soak wants it); closes the log."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout_s: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # exited meanwhile
        pass
