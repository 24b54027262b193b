"""A service binary the tests run as a child on loopback (influxd, prometheus): start, wait until it answers, stop."""
from __future__ import annotations

import atexit
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream.tools.embedded import die_with_parent, still_ours


class ServiceProcess:
    """A running service child (HTTP API at `.url`, output in `.log_path`). Stop it with `.stop()`."""

    def __init__(self, proc: subprocess.Popen, url: str, workdir: Path, log_path: Path):
        self.proc = proc
        self.url = url
        self.workdir = workdir
        self.log_path = log_path

    def log_tail(self, n: int = 30) -> str:
        """The log's last `n` lines ('' when unreadable)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)


def start_service(cls: type[ServiceProcess], cmd: list[str], url: str, workdir: Path, log_path: Path,
                  ready_path: str, ready_status: int, start_timeout_s: float):
    """Run `cmd` (output to `log_path`) as `cls(proc, url, workdir, log_path)`, dying with this process, and wait
    until `url + ready_path` answers `ready_status` from our child (not another run's on a port taken meanwhile)."""
    name = Path(cmd[0]).name
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent)
    log.close()  # the child keeps its own descriptor
    server = cls(proc, url, workdir, log_path)
    atexit.register(server.stop)  # no orphan if the session dies without teardown
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=1) as resp:
                if resp.status == ready_status and still_ours(proc):
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} did not answer {ready_path} within {start_timeout_s:.0f} s:\n{server.log_tail()}")
