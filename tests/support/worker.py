"""A worker subprocess for integration tests: its settings (topics, consumer group and InfluxDB database unique
to the test, on the session's shared broker and InfluxDB) and its start (`stream.tools.worker_process`)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stream.config import Settings
from stream.tools.worker_process import LOCAL_BROKER_TIMING, WorkerProcess, prefixed_topics, worker_environment

SR_TARGET_HZ = 250.0  # BIDMC is 125 Hz: SR everything below 200 Hz to 250 Hz so SR is exercised too
SR_BELOW_HZ = 200.0


@dataclass
class WorkerEnv:
    """What one test's worker runs against. `prefix` names its topics and consumer group, `db` its InfluxDB
    database; both may be changed between starts. `extra`: raw `WAVEBRIDGE_*` variables set last."""

    bootstrap: str
    influx: object
    db: str
    tmp: Path
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    extra: dict = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        """Role ("input", "ecg_synth", "sr", "events", "dlq", "alarms", "verdicts") -> this test's topic."""
        return {f[len("topic_"):]: name for f, name in prefixed_topics(self.prefix).items()}

    def settings(self) -> Settings:
        """The worker's settings: classic translator, SR of everything below 200 Hz to 250 Hz, quick idle flush and
        InfluxDB retries, no web server and no metrics port, state and stats file under `tmp`."""
        return Settings(
            broker=f"kafka://{self.bootstrap}", group_id=f"{self.prefix}-worker", **LOCAL_BROKER_TIMING,
            **prefixed_topics(self.prefix),
            influx_url=self.influx.url, influx_org=self.influx.org, influx_bucket=self.db,
            influx_token=self.influx.token, retry_initial_s=0.2, retry_max_s=1.0,
            translator="classic", idle_flush_s=2.0, sr_target_hz=SR_TARGET_HZ, sr_below_hz=SR_BELOW_HZ,
            without_web=True, metrics_port=0, data_dir=str(self.tmp / "faust-data"),
            stats_file=str(self.tmp / "stats.jsonl"), counters_log_s=5.0)

    def env(self) -> dict[str, str]:
        """The worker's environment (`worker_environment`), `extra` set last."""
        return worker_environment(self.settings(), extra=self.extra)

    def create_topics(self, partitions: int = 2) -> None:
        """Create this test's topics (`partitions` each) and its InfluxDB database."""
        from stream.topics import ensure_topics

        ensure_topics(self.bootstrap, list(self.topics.values()), partitions=partitions)
        self.influx.create_database(self.db)


def start_worker(wenv: WorkerEnv, name: str = "worker") -> WorkerProcess:
    """A started worker for `wenv`, its output appended to `<tmp>/<name>.log`."""
    return WorkerProcess(wenv.env(), wenv.tmp / f"{name}.log", append=True, cwd=wenv.tmp).start()

