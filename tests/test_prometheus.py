"""A real Prometheus scrapes a worker SUBPROCESS under replay (real Tansu, real InfluxDB); PromQL results are checked
against what the test sent and what InfluxDB holds. Then every query of the Grafana dashboard
(deploy/grafana/dashboards/wavebridge.json) runs against that Prometheus and InfluxDB and must return data, and the
alert rules (deploy/prometheus/alerts.yml) pass `promtool check rules` and evaluate without error.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import pytest

from stream.tools.embedded import free_port
from tests.conftest import REPO
from tests.support.worker import WorkerEnv, WorkerProcess, start_worker
from tests.test_worker_integration import T0, bidmc_recording, count

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "wavebridge.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
BEDS = ("bed-001", "bed-002")
SECONDS = 40.0
SPEED = 4.0  # 10 s of replay: several scrapes see the counters rise
ALARM_ONSET_S = 30.0


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("WAVEBRIDGE_CI"):
            pytest.fail(f"{binary} is not on PATH but WAVEBRIDGE_CI is set: CI must not skip the Prometheus tests")
        pytest.skip(f"{binary} is not on PATH; `./dev.sh test` installs it (apt-get install prometheus)")
    return path


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@dataclass
class Run:
    wenv: WorkerEnv
    prom: object
    worker: WorkerProcess
    metrics_url: str
    n_input: int
    n_data: int
    n_samples: int
    started_s: float


@pytest.fixture(scope="module")
def run(kafka_bootstrap, influx, bidmc_record, tmp_path_factory):
    from kafka import KafkaProducer

    from stream import wire
    from stream.tools.publisher import ReplayOptions, replay
    from tests.support.prometheus import start_prometheus

    _need("prometheus")
    influx.set_down(False)  # an earlier test's simulated outage must not outlive it
    tmp = tmp_path_factory.mktemp("prometheus-run")
    port = free_port()
    wenv = WorkerEnv(kafka_bootstrap, influx, db="wb_" + uuid.uuid4().hex[:8], tmp=tmp)
    wenv.extra.update({"WAVEBRIDGE_METRICS_HOST": "127.0.0.1", "WAVEBRIDGE_METRICS_PORT": str(port)})
    wenv.create_topics(partitions=2)
    rec = bidmc_recording(bidmc_record(1), seconds=SECONDS)
    started_s = time.time()
    prom = start_prometheus(tmp / "prometheus", [f"127.0.0.1:{port}"], rule_files=[ALERTS])
    worker = start_worker(wenv)
    metrics_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _http_status(metrics_url + "/readyz") != 200:  # assigned, translator loaded, InfluxDB writable
            if not worker.alive() or time.monotonic() > deadline:
                pytest.fail(f"worker never became ready (alive={worker.alive()}):\n{worker.log()[-4000:]}")
            time.sleep(0.5)
        producer = KafkaProducer(bootstrap_servers=wenv.bootstrap, acks="all")
        try:
            producer.send(wenv.topics["input"], key=b"bed-001", value=b"{not json").get(10)
            # a monitor alarm for bed-001, judged by the alarm agent once the bed's data reaches its onset
            alarm = {"bed_id": "bed-001", "alarm_type": "asystole", "onset_ns": T0 + int(ALARM_ONSET_S * 1e9),
                     "alarm_id": "mon-1"}
            producer.send(wenv.topics["alarms"], key=b"bed-001", value=json.dumps(alarm).encode()).get(10)
            stats = replay([rec], producer, ReplayOptions(topic=wenv.topics["input"], beds=len(BEDS), speed=SPEED,
                                                          start_ns=T0, chunk_s=1.0))
            # bed-001's first PLETH chunk again: a duplicate, dead-lettered and reported as a stream event
            again = wire.Chunk("bed-001", "PLETH", 125.0, T0, 0, np.zeros(125, np.float32))
            producer.send(wenv.topics["input"], key=b"bed-001", value=wire.encode_json(again)).get(10)
        finally:
            producer.close()
        yield Run(wenv, prom, worker, metrics_url, n_input=stats.chunks + 2, n_data=stats.chunks,
                  n_samples=stats.samples + 125, started_s=started_s)
    finally:
        worker.stop()
        prom.stop()


def _wait(prom, promql: str, want: float, worker: WorkerProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = prom.value(promql)
        if got == want:
            return
        if not worker.alive():
            pytest.fail(f"worker exited while waiting for {promql} == {want}:\n{worker.log()[-4000:]}")
        time.sleep(1.0)
    pytest.fail(f"{promql} is {got}, expected {want} within {timeout:.0f} s\n{worker.log()[-3000:]}")


def test_promql_reports_what_the_worker_did(run, capsys):
    prom, w = run.prom, run.wenv
    topic = w.topics["input"]
    _wait(prom, f'sum(wavebridge_messages_acked_total{{topic="{topic}"}})', run.n_input, run.worker)
    _wait(prom, f'max(wavebridge_consumer_lag_messages{{topic="{topic}"}})', 0, run.worker, timeout=30)
    synth = w.topics["ecg_synth"]  # read back by the InfluxDB sink agent, in a consumer group of its own
    _wait(prom, f'max(wavebridge_consumer_lag_messages{{topic="{synth}"}})', 0, run.worker, timeout=30)
    alarms = w.topics["alarms"]
    _wait(prom, "sum(wavebridge_alarm_verdicts_total)", 1, run.worker, timeout=60)
    time.sleep(3)  # a few more scrapes after the last write

    measurements = [r["name"] for r in w.influx.query("SHOW MEASUREMENTS", w.db)]
    assert {"waveform", "rpeak", "hr", "stream_event", "alarm_verdict"} <= set(measurements)
    influx_points = sum(count(w.influx, w.db, m) for m in measurements)
    usable_quality_points = w.influx.query("SELECT count(score) FROM quality WHERE usable = true", w.db)[0]["count"]
    window = f"{int(time.time() - run.started_s) + 5}s"
    checks = [  # (PromQL, expected value or predicate)
        ('up{job="wavebridge"}', 1),
        ("wavebridge_ready", 1),
        (f'sum(wavebridge_messages_in_total{{topic="{topic}"}})', run.n_input),
        (f'sum(wavebridge_samples_in_total{{topic="{topic}"}})', run.n_samples),
        (f'sum(wavebridge_messages_acked_total{{topic="{topic}"}})', run.n_input),
        ("sum(wavebridge_end_to_end_seconds_count)", run.n_data),  # one observation per data message stored
        ('sum(wavebridge_dead_letters_total{reason="bad_json"})', 1),
        ('sum(wavebridge_dead_letters_total{reason="duplicate"})', 1),
        (f'sum(wavebridge_messages_out_total{{topic="{w.topics["dlq"]}"}})', 2),
        ("sum(wavebridge_influx_points_written_total)", influx_points),  # cross-checked with InfluxDB's own count
        ("sum(wavebridge_influx_retries_total)", 0),
        ("sum(wavebridge_influx_backlog_lines)", 0),
        (f'count(wavebridge_consumer_lag_messages{{topic="{topic}"}})', 2),  # one series per partition
        (f'count(wavebridge_consumer_lag_messages{{topic="{synth}"}})', 2),  # the sink's group, on its topics
        (f'sum(wavebridge_messages_in_total{{topic="{synth}"}}) - sum(wavebridge_messages_out_total{{topic="{synth}"}})',
         0),  # the sink read every synthesized chunk the worker produced
        (f'sum(wavebridge_messages_acked_total{{topic="{synth}"}})', lambda v: v >= 2 * (SECONDS / 2 - 4)),
        (f'sum(wavebridge_messages_acked_total{{topic="{alarms}"}})', 1),  # the alarm agent's topic, same group
        (f'count(wavebridge_consumer_lag_messages{{topic="{alarms}"}})', 2),
        (f'max(wavebridge_consumer_lag_messages{{topic="{alarms}"}})', 0),
        ("sum(wavebridge_alarm_verdicts_total)", 1),
        # every published output window has a quality class, and one quality point in InfluxDB
        ('sum(wavebridge_quality_windows_total{quality!="unusable"})', usable_quality_points),
        ('sum(wavebridge_quality_windows_total{quality="good"})', lambda v: v > 0),
        (f'sum(wavebridge_messages_out_total{{topic="{w.topics["verdicts"]}"}})', 1),
        (f'max(wavebridge_consumer_lag_messages{{topic="{topic}"}})', 0),
        # lag was really measured while input waited for its window, and never went negative
        (f'max_over_time(max(wavebridge_consumer_lag_messages{{topic="{topic}"}})[{window}:1s])', lambda v: v >= 2),
        (f'min_over_time(min(wavebridge_consumer_lag_messages{{topic="{topic}"}})[{window}:1s])', 0),
        (f"max_over_time(wavebridge_beds_active[{window}])", len(BEDS)),
        ("wavebridge_partitions_assigned", 2),
        (f'sum(rate(wavebridge_samples_in_total{{topic="{topic}"}}[{window}]))', lambda v: v > 0),
        ("histogram_quantile(0.99, sum by (le) (wavebridge_end_to_end_seconds_bucket))", lambda v: 0 < v < 60),
        ("sum(wavebridge_model_seconds_total) / sum(wavebridge_model_windows_total)", lambda v: 0 < v < 1),
        ('sum(wavebridge_model_windows_total{task="ppg2ecg"})', lambda v: v >= len(BEDS) * (SECONDS / 2 - 4)),
    ]
    failures = []
    with capsys.disabled():
        print()
        for promql, want in checks:
            got = prom.value(promql)
            ok = got is not None and (want(got) if callable(want) else got == want)
            print(f"  PromQL {'ok  ' if ok else 'FAIL'} {promql} = {got}" + ("" if callable(want) else f" (want {want})"))
            if not ok:
                failures.append((promql, got, want))
    assert not failures, failures


def test_health_endpoints(run):
    assert _http_status(run.metrics_url + "/healthz") == 200
    with urllib.request.urlopen(run.metrics_url + "/readyz", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["ready"] is True
    assert set(body["checks"]) == {"partitions_assigned", "translator_loaded", "sinks_writable"}
    assert body["checks"]["translator_loaded"]["detail"] == "classic"


# ------------------------------------------------------------------ the dashboard
def _panels(panels: list) -> list:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels", []))
    return out


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, datasource type, query) of every target and every templating variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in _panels(dash["panels"]):
        for t in p.get("targets", []):
            ds = (t.get("datasource") or p.get("datasource"))["type"]
            out.append((p["title"], ds, t["query"] if ds == "influxdb" else t["expr"]))
    for v in dash["templating"]["list"]:
        q = v["query"]
        out.append((f"${v['name']}", v["datasource"]["type"], q["query"] if isinstance(q, dict) else q))
    return out


def _influxql(q: str, lo_ns: int, hi_ns: int, bed: str) -> str:
    return (q.replace("$timeFilter", f"time >= {lo_ns // 1_000_000}ms AND time <= {hi_ns // 1_000_000}ms")
            .replace("$__interval", "1s").replace("$bed", bed))


def _promql(q: str) -> str:
    return q.replace("$__rate_interval", "30s").replace("$instance", ".*")


def test_dashboard_is_provisionable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "wavebridge"
    uids = {t["datasource"]["uid"] for p in _panels(dash["panels"]) for t in p.get("targets", [])}
    provisioned = (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    for uid in uids:
        assert f"uid: {uid}" in provisioned, f"dashboard uses datasource {uid}, which is not provisioned"
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries()
    assert {ds for _, ds, _ in queries} == {"influxdb", "prometheus"}
    titles = " ".join(t.lower() for t, _, _ in queries)
    for topic in ("synthesized", "heart rate", "lag", "throughput", "errors", "latency", "anomalies", "alarm verdicts",
                  "quality"):
        assert topic in titles, f"the dashboard has no {topic} panel"


def test_every_dashboard_query_returns_data(run):
    prom, w = run.prom, run.wenv
    _wait(prom, f'sum(wavebridge_messages_acked_total{{topic="{w.topics["input"]}"}})', run.n_input, run.worker)
    time.sleep(2)
    lo, hi = T0 - 10**9, T0 + int((SECONDS + 10) * 1e9)
    empty = []
    for title, ds, q in dashboard_queries():
        if ds == "influxdb":
            for bed in BEDS:
                rows = w.influx.query(_influxql(q, lo, hi, bed), w.db)
                values = [v for r in rows for k, v in r.items() if k not in ("time", "_measurement") and v is not None]
                one_bed = title in ("Input anomalies by type", "Alarm verdicts")  # only bed-001 had an anomaly, an alarm
                if not values and not (one_bed and bed != "bed-001"):
                    empty.append((title, bed, q))
        else:
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", q)
            if m:  # a Grafana variable function, answered by the series API
                data = prom._api(f"label/{m.group(2)}/values", {"match[]": m.group(1)})
                ok = bool(data)
            else:
                result = prom.query_range(_promql(q), run.started_s, time.time(), 1.0)
                ok = any(not math.isnan(float(v)) for s in result for _, v in s["values"])
            if not ok:
                empty.append((title, "-", q))
    assert not empty, "dashboard queries without data:\n" + "\n".join(map(str, empty))


# ------------------------------------------------------------------ alert rules
def test_alert_rules_pass_promtool():
    promtool = _need("promtool")
    res = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 12 rules found" in res.stdout


def test_no_input_fires_for_a_worker_that_never_consumed_while_the_sink_is_busy(tmp_path):
    """`WavebridgeNoInput` on a worker whose input samples stay at 0 from its start (exported at 0: see
    tests/test_agents.py) while its sink and alarm agent, or a separate sink, keep consuming other topics: it fires;
    with input flowing it does not."""
    import yaml

    promtool = _need("promtool")
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "WavebridgeNoInput")
    fired = [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]

    def case(worker_input: str, expected: list) -> dict:
        busy = "0+50x30"  # everything else a worker or sink consumes keeps moving
        return {"interval": "1m", "input_series": [
            {"series": 'wavebridge_samples_in_total{job="wavebridge",instance="w:9108",topic="wavebridge.waveforms"}',
             "values": worker_input},
            {"series": 'wavebridge_messages_in_total{job="wavebridge",instance="w:9108",topic="wavebridge.verdicts"}',
             "values": busy},
            {"series": 'wavebridge_messages_in_total{job="wavebridge",instance="w:9108",topic="wavebridge.alarms"}',
             "values": busy},
            {"series": 'wavebridge_messages_in_total{job="wavebridge-sink",instance="s:9108",topic="wavebridge.sr"}',
             "values": busy}],
            "alert_rule_test": [{"eval_time": "25m", "alertname": "WavebridgeNoInput", "exp_alerts": expected}]}

    spec = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m",
            "tests": [case("0x30", fired), case("0+50x30", [])]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(spec))
    res = subprocess.run([promtool, "test", "rules", str(tmp_path / "t.yml")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alert_rules_evaluate_against_a_live_worker(run):
    deadline = time.monotonic() + 30
    while True:
        groups = run.prom._api("rules", {})["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") and r["health"] != "unknown" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(1)
    assert len(rules) == 12
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == []  # a healthy run fires nothing
