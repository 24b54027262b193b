"""Helpers that start real services (Tansu broker, InfluxDB 1.x + v2-write proxy) and worker subprocesses on
loopback for tests."""
from tests.support.broker import start_tansu
from tests.support.influx import InfluxServer, query, start_influxdb
from tests.support.influx_proxy import InfluxV2Proxy, influx_v2_proxy
from tests.support.worker import WorkerEnv, start_worker

__all__ = ["start_tansu", "start_influxdb", "InfluxServer", "query", "InfluxV2Proxy", "influx_v2_proxy", "WorkerEnv",
           "start_worker"]
