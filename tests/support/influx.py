"""Start a throw-away InfluxDB 1.x (`influxd`) on loopback and query it with InfluxQL."""
from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from stream.embedded import die_with_parent, free_port, still_ours

START_TIMEOUT_S = 30.0

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxServer:
    """A running `influxd` (v1 HTTP API at `.url`). Stop it with `.stop()`."""

    def __init__(self, proc: subprocess.Popen, url: str, workdir: Path, log_path: Path):
        self.proc = proc
        self.url = url
        self.workdir = workdir
        self.log_path = log_path

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def create_database(self, name: str) -> None:
        _post_query(self.url, f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        _post_query(self.url, f'DROP DATABASE "{name}"')

    def query(self, q: str, db: str) -> list[dict]:
        return query(q, db, self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)


def influxd_path() -> str | None:
    return shutil.which("influxd")


def start_influxdb(workdir: str | Path, start_timeout_s: float = START_TIMEOUT_S) -> InfluxServer:
    """Write a config with all state under `workdir`, run `influxd run -config`, wait for `/ping`."""
    binary = influxd_path()
    if binary is None:
        raise FileNotFoundError("influxd not on PATH (apt-get install influxdb)")
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = free_port(), free_port()
    while rpc_port == http_port:
        rpc_port = free_port()
    config = root / "influxdb.conf"
    config.write_text(_CONFIG.format(root=root, http_port=http_port, rpc_port=rpc_port))
    log_path = root / "influxd.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([binary, "run", "-config", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    log.close()  # the child keeps its own descriptor
    server = InfluxServer(proc, f"http://127.0.0.1:{http_port}", root, log_path)
    atexit.register(server.stop)  # no orphan influxd if the session dies without teardown
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"influxd exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/ping", timeout=1) as resp:
                if resp.status == 204 and still_ours(proc):  # not another run's influxd on a port taken meanwhile
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"influxd did not answer /ping within {start_timeout_s:.0f} s:\n{server.log_tail()}")


def _post_query(url: str, q: str) -> dict:
    data = urllib.parse.urlencode({"q": q}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/query", data=data, method="POST"), timeout=30) as resp:
        body = json.loads(resp.read() or b"{}")
    for result in body.get("results", []):
        if "error" in result:
            raise RuntimeError(f"InfluxQL {q!r} failed: {result['error']}")
    return body


def query(q: str, db: str, url: str) -> list[dict]:
    """Run InfluxQL against the v1 server at `url`; one dict per row (columns + the series' tags).

    Times come back as integer ns since the epoch (`epoch=ns`).
    """
    params = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    rows: list[dict] = []
    for result in body.get("results", []):
        if "error" in result:
            raise RuntimeError(f"InfluxQL {q!r} failed: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series.get("values", []):
                row = dict(zip(series["columns"], values))
                row.update(tags)
                row.setdefault("_measurement", series.get("name"))
                rows.append(row)
    return rows
