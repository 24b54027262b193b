"""Start a throw-away InfluxDB 1.x (`influxd`) on loopback and query it with InfluxQL."""
from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from stream.tools.embedded import free_port
from tests.support.service import ServiceProcess, start_service

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


class InfluxServer(ServiceProcess):
    """A running `influxd` (v1 HTTP API at `.url`). Stop it with `.stop()`."""

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (no error if it exists)."""
        _post_query(self.url, f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name`."""
        _post_query(self.url, f'DROP DATABASE "{name}"')

    def query(self, q: str, db: str) -> list[dict]:
        """InfluxQL `q` on database `db` (see the module's `query`)."""
        return query(q, db, self.url)


def influxd_path() -> str | None:
    """The `influxd` binary on PATH, or None."""
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
    return start_service(InfluxServer, [binary, "run", "-config", str(config)], f"http://127.0.0.1:{http_port}", root,
                         root / "influxd.log", "/ping", 204, start_timeout_s)


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
