"""Start a throw-away Prometheus 2.x (Debian's `prometheus`) on loopback and query it with PromQL."""
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

START_TIMEOUT_S = 60.0


class PrometheusServer:
    """A running `prometheus` (HTTP API at `.url`). Stop it with `.stop()`."""

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
        return [t for t in self._api("targets", {})["activeTargets"] if t.get("health") == "up"]

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)


def prometheus_path() -> str | None:
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
    log_path = root / "prometheus.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent)
    log.close()
    server = PrometheusServer(proc, f"http://127.0.0.1:{port}", root, log_path)
    atexit.register(server.stop)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/-/ready", timeout=1) as resp:
                if resp.status == 200 and still_ours(proc):
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus did not answer /-/ready within {start_timeout_s:.0f} s:\n{server.log_tail()}")
