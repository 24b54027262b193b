"""wavebridge's streaming service: Kafka waveforms in, translated waveforms and events out.

The names below are the service's public API, loaded on first use so that `import stream` stays light (no
faust, no Kafka client, no torch): the tools (`stream.tools`) and tests import the submodules they need.

- configuration: `Settings`, `ConfigError` (`stream.config`);
- the wire format of chunks: `Chunk`, `WireError` (`stream.wire`);
- the broker-free core: `Pipeline`, `PipelineConfig` (`stream.pipeline`) and the typed results it hands to the
  sinks, `BatchResult`, `OutputSeries`, `PipelineEvent`, `Rejected` (`stream.results`);
- delivery: `AckGate` (`stream.ackgate`), `InfluxSink` (`stream.sinks`), `InfluxSinkAgent` (`stream.influxsink`);
- the processes: `create_worker`, `Worker` (`stream.app`), `run_service` (`stream.startup`).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Settings": "stream.config",
    "ConfigError": "stream.config",
    "Chunk": "stream.wire",
    "WireError": "stream.wire",
    "Pipeline": "stream.pipeline",
    "PipelineConfig": "stream.pipeline",
    "BatchResult": "stream.results",
    "OutputSeries": "stream.results",
    "PipelineEvent": "stream.results",
    "Rejected": "stream.results",
    "AckGate": "stream.ackgate",
    "InfluxSink": "stream.sinks",
    "InfluxSinkAgent": "stream.influxsink",
    "Worker": "stream.app",
    "create_worker": "stream.app",
    "run_service": "stream.startup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
