"""Start a throw-away Prometheus 2.x (Debian's `prometheus`) on loopback and query it with PromQL."""
from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from stream.tools.embedded import free_port
from tests.support.service import ServiceProcess, start_service

START_TIMEOUT_S = 60.0


class PrometheusServer(ServiceProcess):
    """A running `prometheus` (HTTP API at `.url`). Stop it with `.stop()`."""

    def _api(self, path: str, params: dict) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the reason in the body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params.get('query')!r}: {body.get('error', body)}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """Instant query at now: the result vector (`[{"metric": {...}, "value": [t, "v"]}, ...]`)."""
        data = self._api("query", {"query": promql})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, None when it returned nothing."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{promql!r} returned {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def query_range(self, promql: str, start_s: float, end_s: float, step_s: float = 1.0) -> list[dict]:
        """Range query, as a Grafana panel runs it: `[{"metric": {...}, "values": [[t, "v"], ...]}, ...]`."""
        return self._api("query_range", {"query": promql, "start": start_s, "end": end_s, "step": step_s})["result"]

    def targets_up(self) -> list[dict]:
        """The scrape targets whose last scrape succeeded."""
        return [t for t in self._api("targets", {})["activeTargets"] if t.get("health") == "up"]


def prometheus_path() -> str | None:
    """The `prometheus` binary on PATH, or None."""
    return shutil.which("prometheus")


def start_prometheus(workdir: str | Path, targets: list[str], job: str = "wavebridge", scrape_interval_s: float = 1.0,
                     rule_files: list[str | Path] = (), start_timeout_s: float = START_TIMEOUT_S) -> PrometheusServer:
    """Scrape `targets` (host:port) every `scrape_interval_s` with all state under `workdir`; wait for `/-/ready`."""
    binary = prometheus_path()
    if binary is None:
        raise FileNotFoundError("prometheus not on PATH (apt-get install prometheus)")
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(Path(r).resolve()) for r in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    (root / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    port = free_port()
    cmd = [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return start_service(PrometheusServer, cmd, f"http://127.0.0.1:{port}", root, root / "prometheus.log", "/-/ready",
                         200, start_timeout_s)
