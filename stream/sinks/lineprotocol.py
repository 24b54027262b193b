"""InfluxDB line protocol for the pipeline's results: what each output and event becomes as points.

Schema: docs/influx-schema.md. Kept apart from the writer (`stream.sinks.influx`) because the points are a pure
function of one result, and that is what makes the InfluxDB sink idempotent: a point with the same measurement,
tag set and timestamp overwrites the previous one, and every output sample carries its true timestamp, so
re-processing a message after a crash rewrites the same points instead of adding new ones. Nothing here does
I/O; the alarm verdicts (`stream.alarms.verdict_lines`) use the same tag and field encoders.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from stream.results import OUTPUT_UNUSABLE, RPEAKS, SOURCE_UNUSABLE, OutputSeries, PipelineEvent

__all__ = ["WAVEFORM", "RPEAK", "HR", "STREAM_EVENT", "QUALITY", "tag_set", "field_set", "series_lines",
           "output_lines", "event_lines", "line_series"]

WAVEFORM = "waveform"
RPEAK = "rpeak"
HR = "hr"
STREAM_EVENT = "stream_event"
QUALITY = "quality"
UNUSABLE_EVENTS = (SOURCE_UNUSABLE, OUTPUT_UNUSABLE)


def _escape_tag(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_str_field(v: str) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', r"\"") + '"'


def tag_set(tags: Mapping[str, Any]) -> str:
    """The tag set of a point, `k1=v1,k2=v2`, keys sorted and escaped; empty and None values left out.

    Parameters
    ----------
    tags : mapping of str to str
        Tag names and values.

    Returns
    -------
    str
        Without a leading comma (the caller joins it to the measurement).
    """
    # Sorted tag keys: InfluxDB's canonical order, cheapest for it to index.
    return ",".join(f"{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(tags.items()) if v not in (None, ""))


def field_set(fields: Mapping[str, Any]) -> str:
    """The field set of a point, keys sorted: booleans, `<n>i` integers, floats, quoted strings.

    Parameters
    ----------
    fields : mapping of str to value
        Field names and values; None and non-finite floats are left out (line protocol cannot carry them).

    Returns
    -------
    str
        Possibly empty: a point needs at least one field, which the caller ensures.
    """
    parts = []
    for k, v in sorted(fields.items()):
        if v is None:
            continue
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, (int, np.integer)):
            parts.append(f"{k}={int(v)}i")
        elif isinstance(v, (float, np.floating)):
            if math.isfinite(float(v)):
                parts.append(f"{k}={float(v)!r}")
        else:
            parts.append(f"{k}={_escape_str_field(v)}")
    return ",".join(parts)


def series_lines(measurement: str, tags: Mapping[str, Any], times_ns: np.ndarray, values: np.ndarray) -> list[str]:
    """One line per sample, `<measurement>,<tags> value=<v> <ns>`.

    Parameters
    ----------
    measurement : str
        Measurement name.
    tags : mapping of str to str
        Tags of every point.
    times_ns : ndarray of int64
        Sample times, ns since the epoch.
    values : ndarray
        Sample values, written as float32 (`%.9g` round-trips any float32 exactly); non-finite ones are
        skipped: the sample is absent, which the gap and unusable events explain.
    """
    vals = np.asarray(values, dtype=np.float32)
    ok = np.isfinite(vals)
    n = int(np.count_nonzero(ok))
    if n == 0:
        return []
    # The numbers of the whole series in one %-format call (no interpreter loop formatting sample by sample); the
    # body holds only numbers, so splitting it on newlines is safe whatever the tags hold.
    args: list = [None] * (2 * n)
    args[0::2] = vals[ok].tolist()
    args[1::2] = np.asarray(times_ns, dtype=np.int64)[ok].tolist()
    prefix = f"{measurement},{tag_set(tags)} value="
    return [prefix + body for body in ("%.9g %d\n" * n % tuple(args))[:-1].split("\n")]


def output_lines(out: OutputSeries) -> list[str]:
    """Points of one output series: a `waveform` point per sample, and one `quality` point at its first sample.

    Parameters
    ----------
    out : OutputSeries
        A published or withheld output (a withheld one has NaN samples: only its quality point remains).
    """
    tags = {"bed": out.bed, "signal": out.influx_signal, "kind": out.kind, "model": out.model}
    lines = series_lines(WAVEFORM, tags, out.times_ns, out.values)
    if out.quality is not None and len(out.times_ns):
        fields = {"score": float(out.quality), "flag": out.quality_flag or None, "reason": out.reason or None,
                  "usable": bool(out.usable),
                  "confidence": out.confidence, "context_used": bool(out.context_used), "synthetic": bool(out.synthetic),
                  "end_ns": int(out.times_ns[-1])}
        lines.append(f"{QUALITY},{tag_set(tags)} {field_set(fields)} {int(out.times_ns[0])}")
    return lines


def event_lines(ev: PipelineEvent) -> list[str]:
    """Points of one event.

    R-peak events expand to one `rpeak` point per peak (time = the peak) plus one `hr` point; stream anomalies
    (gap, out_of_order, duplicate, ...) go to `stream_event`, withheld spans to `quality` as well.

    Parameters
    ----------
    ev : PipelineEvent
        The event, as the pipeline made it or as `stream.sinks.kafka.decode_event` read it back.
    """
    lines: list[str] = []
    if ev.kind == RPEAKS:
        tags = tag_set({"bed": ev.bed, "signal": ev.signal, "model": ev.fields.get("model")})
        for p in ev.fields.get("peaks_ns", []):
            lines.append(f"{RPEAK},{tags} value=1i {int(p)}")
        hr = ev.fields.get("hr_bpm")
        if hr is not None and math.isfinite(hr):
            fields = {"bpm": float(hr), "n_peaks": len(ev.fields.get("peaks_ns", [])),
                      "quality": ev.fields.get("quality"), "confidence": ev.fields.get("confidence")}
            lines.append(f"{HR},{tags} {field_set(fields)} {int(ev.time_ns)}")
        return lines
    if ev.kind in UNUSABLE_EVENTS:  # the withheld span in the quality measurement too, where dashboards look
        kind = "source" if ev.kind == SOURCE_UNUSABLE else "output"
        qtags = tag_set({"bed": ev.bed, "signal": ev.signal, "kind": kind})
        fields = {"score": ev.fields.get("quality"), "flag": ev.fields.get("quality_flag"),
                  "reason": ev.fields.get("reason"), "usable": False, "end_ns": ev.fields.get("end_ns")}
        lines.append(f"{QUALITY},{qtags} {field_set(fields)} {int(ev.time_ns)}")
    tags = tag_set({"bed": ev.bed, "signal": ev.signal, "type": ev.kind})
    fields = {k: v for k, v in ev.fields.items() if isinstance(v, (str, int, float, bool, np.integer, np.floating))}
    fields.setdefault("count", 1)
    body = field_set(fields) or "count=1i"
    lines.append(f"{STREAM_EVENT},{tags} {body} {int(ev.time_ns)}")
    return lines


def line_series(line: str) -> str:
    """The measurement and tags of a line (up to its first unescaped space), at most 200 characters.

    Names the series of a rejected point in a log line without its values.

    Parameters
    ----------
    line : str
        One line of line protocol.
    """
    i = 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == " ":
            return line[:i][:200]
        i += 1
    return line[:200]
