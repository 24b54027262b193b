"""Configuration errors stop the worker with one line naming the variable, before or after it connects (issue 18).

Before: a missing bucket (404) or a refused token (401) was retried forever with a warning per attempt; a missing
topic was created silently with 4 partitions and replication 1.
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from tests.support.worker import WorkerEnv, start_worker
from tests.test_worker_integration import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def wenv(kafka_bootstrap, influx_up, tmp_path):
    yield WorkerEnv(kafka_bootstrap, influx_up, db="ff_" + uuid.uuid4().hex[:8], tmp=tmp_path)
    influx_up.proxy.answer_writes(None)


def run_worker(wenv: WorkerEnv, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.app", "worker"], cwd=wenv.tmp, env=wenv.env(),
                          capture_output=True, text=True, timeout=timeout)


def test_missing_bucket_and_missing_topics_stop_the_worker_before_it_consumes(wenv):
    wenv.create_topics()
    wenv.db = "no_such_db_" + uuid.uuid4().hex[:6]  # InfluxDB 1.x: database not found, 404
    res = run_worker(wenv)
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wavebridge worker: configuration error: WAVEBRIDGE_INFLUX_BUCKET"), err

    wenv.prefix = "t" + uuid.uuid4().hex[:8]  # topics nobody created
    wenv.db = "ff_" + uuid.uuid4().hex[:8]
    wenv.influx.create_database(wenv.db)
    res = run_worker(wenv)
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "do not exist" in err[0] and "WAVEBRIDGE_CREATE_TOPICS=true" in err[0], err
    from stream.topics import missing_topics

    assert len(missing_topics(wenv.bootstrap, list(wenv.topics.values()))) == len(wenv.topics)  # none created


def test_a_token_refused_while_running_stops_the_worker_with_one_line(wenv, bidmc_record):
    from stream.tools.publisher import ReplayOptions, replay
    from tests.test_worker_integration import T0, bidmc_recording

    wenv.create_topics()
    worker = start_worker(wenv)
    try:
        wait_until(lambda: "InfluxDB sink assigned" in worker.log(), 90, "the InfluxDB sink's assignment", worker)
        wenv.influx.proxy.answer_writes(401)  # after the start-up probe passed: the token is revoked meanwhile
        rec = bidmc_recording(bidmc_record(1), seconds=20.0)
        replay([rec], wenv.bootstrap, ReplayOptions(topic=wenv.topics["input"], speed=0, start_ns=T0, progress=False))
        deadline = time.monotonic() + 90
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not worker.alive(), "worker kept running with a refused token:\n" + worker.log()[-3000:]
        assert worker.proc.returncode == 2
    finally:
        worker.kill()
    log = worker.log()
    critical = [ln for ln in log.splitlines() if "CRITICAL" in ln or "configuration error" in ln]
    assert len(critical) == 1 and "WAVEBRIDGE_INFLUX_TOKEN" in critical[0], log[-3000:]
    assert "Traceback" not in log
    assert log.count("InfluxDB write failed") == 0  # not retried
