"""Where the pipeline's results go: InfluxDB points, Kafka messages, the worker's own accounting.

One module per job: `lineprotocol` (results -> InfluxDB line protocol, pure), `influx` (writing it: retry,
back-off, bisecting rejected batches, the start-up probe), `kafka` (output, event and dead-letter payloads and
their inverses), `telemetry` (log counters, latency records). What crosses from the pipeline is typed and frozen
(`stream.results`). The names below are the package's public API.
"""
from stream.sinks.influx import (CONFIG_STATUS, SPLIT_STATUS, Backoff, InfluxConfigError, InfluxSink, SinkStopped,
                                 WriteAborted, influx_probe, stop_for_configuration)
from stream.sinks.kafka import (DLQ_MAX_VALUE_BYTES, HEADER_MODEL, HEADER_TIME_ADJUST, decode_event, decode_output,
                                dlq_headers, dlq_value, encode_event, encode_output, output_headers)
from stream.sinks.lineprotocol import event_lines, field_set, line_series, output_lines, series_lines, tag_set
from stream.sinks.telemetry import LatencyRecord, ReasonCounters, StatsWriter

__all__ = [
    "Backoff", "CONFIG_STATUS", "SPLIT_STATUS", "InfluxConfigError", "InfluxSink", "SinkStopped", "WriteAborted",
    "influx_probe", "stop_for_configuration",
    "DLQ_MAX_VALUE_BYTES", "HEADER_MODEL", "HEADER_TIME_ADJUST", "decode_event", "decode_output", "dlq_headers",
    "dlq_value", "encode_event", "encode_output", "output_headers",
    "event_lines", "field_set", "line_series", "output_lines", "series_lines", "tag_set",
    "LatencyRecord", "ReasonCounters", "StatsWriter",
]
