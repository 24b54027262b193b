"""What the pipeline hands to the sinks: typed, frozen result objects.

The pipeline (`stream.pipeline`) produces them; the sinks (`stream.sinks`) turn them into InfluxDB points and
Kafka messages, and the InfluxDB sink agent rebuilds them from those messages. Defined apart from both so the
seam is one small module: a sink depends on what a result *is*, never on how the pipeline computes it.

Frozen because one result goes to several consumers (Kafka payload, its headers, line protocol, metrics,
the offline writer): none may change what the next one sees. An event's `fields` are the body of its
events-topic message (docs/events.schema.json: names and order are the alarm systems' contract), kept as a
read-only mapping in that order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from operators.vocab import SR_SUFFIX, SYNTH_ECG

__all__ = ["SOURCE_UNUSABLE", "OUTPUT_UNUSABLE", "NOT_ENCODABLE", "RPEAKS", "OutputSeries",
           "PipelineEvent", "Rejected", "BatchResult"]

SOURCE_UNUSABLE = "source_unusable"
OUTPUT_UNUSABLE = "output_unusable"
# The reason of an `output_unusable` event whose output failed wire encoding (e.g. NaN from a translator): not a
# signal quality, but its span is withheld all the same.
NOT_ENCODABLE = "not_encodable"
RPEAKS = "rpeaks"


@dataclass(frozen=True, eq=False)
class OutputSeries:
    """Newly emitted output samples of one window of one task (compared by identity: it holds arrays)."""

    bed: str
    source_signal: str
    kind: str  # "synth" | "sr"
    model: str
    rate_hz: float
    times_ns: np.ndarray  # int64, true timestamps
    values: np.ndarray  # float32
    seq: int = 0
    units: str = ""
    quality: float | None = None  # 0-1: the worse of the source span's and this output's own quality score
    quality_flag: str = ""  # operators.processing.quality class of `quality`: good | degraded | unusable
    reason: str = ""  # operators.processing.quality reason of the worse of the two ("ok" when good)
    confidence: float | None = None  # operators.processing.quality.confidence: probability the window's output is right
    context_used: bool = False  # a paired patient context went into this window
    usable: bool = True  # False: a withheld span (BatchResult.withheld), values NaN, never published

    @property
    def synthetic(self) -> bool:
        """True for synthesized signals (II_SYNTH): not a measured lead, never a diagnostic one."""
        return self.kind == "synth"

    @property
    def influx_signal(self) -> str:
        """`signal` tag in InfluxDB: II_SYNTH for synthesis, the source name for SR (kind=sr)."""
        return SYNTH_ECG if self.kind == "synth" else self.source_signal

    @property
    def topic_signal(self) -> str:
        """Signal name in output topic messages: II_SYNTH, or `<source>_SR`."""
        return SYNTH_ECG if self.kind == "synth" else self.source_signal + SR_SUFFIX


@dataclass(frozen=True)
class PipelineEvent:
    """One event of a bed's signal at `time_ns` (ns since the epoch).

    `kind` is the event type (the `type` field of its message): rpeaks | source_unusable | output_unusable |
    gap | rate_change | clock_step | out_of_order | duplicate | short_segment_dropped. `fields` is the rest of
    the message body, read-only, in its published order; build one with `stream_anomaly`, `unusable` or
    `rpeaks` so each kind carries the fields docs/events.schema.json gives it.
    """

    kind: str
    bed: str
    signal: str
    time_ns: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    @classmethod
    def stream_anomaly(cls, kind: str, bed: str, signal: str, start_ns: int, end_ns: int,
                       detail: str) -> "PipelineEvent":
        """A stream anomaly from the windower (gap, duplicate, ...) over `[start_ns, end_ns)`.

        Parameters
        ----------
        kind : str
            `operators.state.windowing.StreamEvent.kind`.
        bed, signal : str
            Where it happened.
        start_ns, end_ns : int
            Span, ns since the epoch.
        detail : str
            Human-readable description.
        """
        return cls(kind, bed, signal, int(start_ns), {"end_ns": int(end_ns), "detail": detail})

    @classmethod
    def unusable(cls, kind: str, bed: str, signal: str, start_ns: int, end_ns: int, *, reason: str,
                 quality: float, quality_flag: str, outputs: Sequence[str], window_start_ns: int) -> "PipelineEvent":
        """`source_unusable` / `output_unusable`: the outputs named are withheld over `[start_ns, end_ns)`.

        Parameters
        ----------
        kind : str
            `SOURCE_UNUSABLE` (the input signal `signal` is unusable) or `OUTPUT_UNUSABLE` (the output is).
        bed, signal : str
            The bed, and the signal that was judged.
        start_ns, end_ns : int
            Withheld span, ns since the epoch.
        reason, quality_flag : str
            `operators.processing.quality` reason and class.
        quality : float
            Quality score, 0-1.
        outputs : sequence of str
            Topic signal names of the withheld outputs.
        window_start_ns : int
            Start of the window judged, ns since the epoch.
        """
        return cls(kind, bed, signal, int(start_ns),
                   {"end_ns": int(end_ns), "reason": reason, "quality": quality, "quality_flag": quality_flag,
                    "outputs": list(outputs), "window_start_ns": int(window_start_ns)})

    @classmethod
    def rpeaks(cls, bed: str, time_ns: int, *, peaks_ns: Sequence[int], hr_bpm: float | None, model: str,
               window_start_ns: int, until_ns: int, quality: float | None = None, quality_flag: str | None = None,
               confidence: float | None = None) -> "PipelineEvent":
        """R-peaks of a window of synthesized lead II, and its heart rate.

        Parameters
        ----------
        bed : str
            The bed.
        time_ns : int
            First emitted sample of the window, ns since the epoch (where the `hr` point goes).
        peaks_ns : sequence of int
            R-peak times, ns since the epoch.
        hr_bpm : float or None
            Heart rate in beats per minute; None when the window may not give one.
        model : str
            Model tag of the synthesis.
        window_start_ns, until_ns : int
            Window start, and the end of the range this event reports peaks for, ns since the epoch.
        quality, quality_flag, confidence : optional
            The window's quality score (0-1), class and confidence (0-1); all absent without quality gating.
        """
        fields: dict[str, Any] = {"peaks_ns": [int(p) for p in peaks_ns], "hr_bpm": hr_bpm, "model": model,
                                  "window_start_ns": int(window_start_ns), "until_ns": int(until_ns)}
        if quality_flag is not None:
            fields.update(quality=quality, quality_flag=quality_flag, confidence=confidence)
        return cls(RPEAKS, bed, SYNTH_ECG, int(time_ns), fields)


@dataclass(frozen=True)
class Rejected:
    """An input message to dead-letter, then acknowledge."""

    token: Any  # the caller's token for the message (`Pipeline.push`)
    reason: str  # "out_of_order" | "duplicate" | a `stream.wire` reason
    detail: str


@dataclass(frozen=True, eq=False)
class BatchResult:
    """Everything one `Pipeline.process()` call produced."""

    outputs: list[OutputSeries] = field(default_factory=list)
    # spans not published because their source (or the output itself) is unusable: NaN values, usable=False.
    # The offline mode writes them as NaN rows; the worker publishes only their event.
    withheld: list[OutputSeries] = field(default_factory=list)
    events: list[PipelineEvent] = field(default_factory=list)
    completed: list[Hashable] = field(default_factory=list)  # tokens whose samples are all in `outputs` (or earlier)
    # tokens whose samples are all in `outputs` for the first time (latency records): `completed` may follow
    # later, by the ack lag
    emitted: list[Hashable] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # tokens to dead-letter, then acknowledge
    n_windows: int = 0
    model_s: float = 0.0  # wall time of the translator call (monotonic clock), 0 without windows
    window_tasks: list[str] = field(default_factory=list)  # task of each translated window
    # streams flushed (stream.progress.FlushPoint): the worker persists them before acknowledging the flushed input
    flushed: list = field(default_factory=list)
