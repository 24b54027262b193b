"""Kafka payloads: output messages, event messages and dead letters, and their inverses.

The output and events topics are what alarm systems subscribe to: their bytes are a contract
(docs/wire-format.md, docs/events.schema.json) and must not change with the code's structure. An output
message is a `stream.wire` chunk; what its InfluxDB points need beyond the chunk (the model tag, sample
timestamps off the chunk grid) travels in headers, so the InfluxDB sink agent (`stream.influxsink`) rebuilds
exactly the series the worker computed (`decode_output`, `decode_event`). A dead letter is the original
payload, unchanged, with headers saying why and where from.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

from operators.processing.samples import grid_ns
from operators.vocab import SR_SUFFIX, SYNTH_ECG
from stream import wire
from stream.results import OutputSeries, PipelineEvent

__all__ = ["HEADER_MODEL", "HEADER_TIME_ADJUST", "DLQ_MAX_VALUE_BYTES", "encode_output", "output_headers",
           "decode_output", "encode_event", "decode_event", "dlq_value", "dlq_headers"]

# Output messages carry what their InfluxDB points need beyond the chunk itself as headers (the wire format is
# the alarm systems' contract): the model tag, and where a sample's true timestamp is not the chunk grid
# `start_ns + round(i * 1e9 / rate_hz)` (a segment grid at a period of fractional ns), the difference per sample.
HEADER_MODEL = "wavebridge.model"
HEADER_TIME_ADJUST = "wavebridge.time_adjust_ns"  # int8 per sample, only when some differ


def _out_chunk(out: OutputSeries) -> wire.Chunk:
    """`wire.Chunk` for one output series (topic messages use the `_SR` suffix for SR)."""
    meta = {"synthetic": bool(out.synthetic), "quality": out.quality, "quality_flag": out.quality_flag or None,
            "quality_reason": out.reason or None, "confidence": out.confidence, "context_used": bool(out.context_used), "model": out.model or None}
    return wire.Chunk(bed_id=out.bed, signal=out.topic_signal, rate_hz=float(out.rate_hz), start_ns=int(out.times_ns[0]),
                      seq=int(out.seq), samples=np.asarray(out.values, dtype=np.float32), units=out.units or "",
                      meta={k: v for k, v in meta.items() if v is not None})


def encode_output(out: OutputSeries, binary: bool = True) -> bytes:
    """The value of an output message.

    Parameters
    ----------
    out : OutputSeries
        A published output.
    binary : bool
        The binary wire format (True) or JSON.

    Raises
    ------
    stream.wire.WireError
        If the series cannot be encoded (e.g. non-finite samples beyond what the format allows).
    """
    chunk = _out_chunk(out)
    return wire.encode_binary(chunk) if binary else wire.encode_json(chunk)


def output_headers(out: OutputSeries) -> list[tuple[str, bytes]]:
    """Kafka headers of an output message (`decode_output` restores the series exactly from message + headers).

    Parameters
    ----------
    out : OutputSeries
        A published output.

    Raises
    ------
    ValueError
        If a sample's timestamp is more than 127 ns off the chunk grid.
    """
    headers = [(HEADER_MODEL, str(out.model).encode())]
    times = np.asarray(out.times_ns, dtype=np.int64)
    adjust = times - grid_ns(int(times[0]), float(out.rate_hz), np.arange(len(times)))
    if adjust.any():
        if np.abs(adjust).max() > 127:
            raise ValueError(f"output {out.bed}/{out.topic_signal}: timestamps off the chunk grid by up to "
                             f"{int(np.abs(adjust).max())} ns")
        headers.append((HEADER_TIME_ADJUST, adjust.astype(np.int8).tobytes()))
    return headers


def decode_output(value: bytes, headers: Mapping[str, bytes]) -> OutputSeries:
    """The output series an output message (value + headers) was made from.

    Same tags, same true timestamps, NaN where the output had no finite value.

    Parameters
    ----------
    value : bytes
        Message value (binary or JSON wire format).
    headers : mapping of str to bytes
        Message headers by name.

    Raises
    ------
    stream.wire.WireError, ValueError
        If the message is malformed.
    """
    chunk = wire.decode_result(value, repair=False).chunk
    kind = "synth" if chunk.signal == SYNTH_ECG else "sr"
    source = chunk.signal[: -len(SR_SUFFIX)] if kind == "sr" and chunk.signal.endswith(SR_SUFFIX) else chunk.signal
    n = len(chunk.samples)
    times = grid_ns(chunk.start_ns, chunk.rate_hz, np.arange(n))
    adjust = headers.get(HEADER_TIME_ADJUST)
    if adjust:
        a = np.frombuffer(adjust, dtype=np.int8)
        if len(a) != n:
            raise ValueError(f"{HEADER_TIME_ADJUST}: {len(a)} values for {n} samples")
        times = times + a.astype(np.int64)
    meta = chunk.meta
    model = (headers.get(HEADER_MODEL) or b"").decode("utf-8", "replace") or meta.get("model", "")
    return OutputSeries(bed=chunk.bed_id, source_signal=source, kind=kind, model=model, rate_hz=float(chunk.rate_hz),
                        times_ns=times, values=chunk.samples, seq=chunk.seq, units=chunk.units,
                        quality=meta.get("quality"), quality_flag=meta.get("quality_flag", ""),
                        reason=meta.get("quality_reason", ""), confidence=meta.get("confidence"),
                        context_used=bool(meta.get("context_used", False)))


def encode_event(ev: PipelineEvent) -> bytes:
    """The value of an events-topic message: compact JSON, `type` first, then bed, signal, time_ns, the fields.

    Parameters
    ----------
    ev : PipelineEvent
        The event; its non-finite floats become null, arrays lists.
    """
    payload = {"type": ev.kind, "bed": ev.bed, "signal": ev.signal, "time_ns": int(ev.time_ns)}
    payload.update({k: _jsonable(v) for k, v in ev.fields.items()})
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_event(value: bytes) -> PipelineEvent:
    """The event of an events-topic message (`encode_event`'s inverse).

    Parameters
    ----------
    value : bytes
        Message value.

    Raises
    ------
    ValueError, KeyError
        If it is not a JSON object with type, bed, signal and time_ns.
    """
    obj = json.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("event message is not a JSON object")
    return PipelineEvent(kind=str(obj.pop("type")), bed=str(obj.pop("bed")), signal=str(obj.pop("signal")),
                         time_ns=int(obj.pop("time_ns")), fields=obj)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# A dead letter carries the original payload; one larger than this (with its headers) could exceed the producer's
# request limit (1,000,000 bytes by default), and a send that fails crashes the worker, which then re-reads the
# same message and crashes again. Such a payload is dead-lettered without its value.
DLQ_MAX_VALUE_BYTES = 900_000


def dlq_value(value: bytes | None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value to send, extra headers) for a dead letter of `value`.

    Parameters
    ----------
    value : bytes or None
        The original message value; one over `DLQ_MAX_VALUE_BYTES` is replaced by nothing and a header giving
        its size.
    """
    value = value if value is not None else b""
    if len(value) <= DLQ_MAX_VALUE_BYTES:
        return value, []
    return b"", [("wavebridge.value_dropped_bytes", str(len(value)).encode())]


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered message; its value is the original payload, unchanged (`dlq_value`).

    Parameters
    ----------
    reason : str
        Machine-readable reason (a `stream.wire` reason, duplicate, out_of_order, bad_alarm).
    detail : str
        Human-readable detail, cut to 1000 characters.
    topic, partition, offset
        Where the original message was read.
    """
    return [
        ("wavebridge.reason", reason.encode()),
        ("wavebridge.detail", detail[:1000].encode("utf-8", "replace")),
        ("wavebridge.source.topic", topic.encode()),
        ("wavebridge.source.partition", str(partition).encode()),
        ("wavebridge.source.offset", str(offset).encode()),
    ]
