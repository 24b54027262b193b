"""The pure chunker: a recording cut into the wire chunks a bedside monitor would send, bed by bed.

Used by `wavebridge replay` (stream.tools.publisher) and by the offline mode (stream.tools.offline), so both
see identical chunks. No Kafka, no clock.

Chunking rules: chunks are cut on a fixed grid of `round(chunk_s * rate)` samples per signal;
timestamps advance exactly with the sample count (`start_ns + round(k * 1e9 / rate)` for absolute
sample index k); seq starts at 0 per (bed, signal). Non-finite samples: a chunk with no more of them than the wire
format repairs (`wire.nonfinite_repairable`, 20 %) is sent whole, NaNs included, and the receiver interpolates them
exactly as it does for a live monitor's chunk; a chunk with more is split at its NaN runs (only its finite runs
are sent), so the receiver sees a gap there instead of dead-lettering the chunk as `nan_flood`.
"""
from __future__ import annotations

import heapq
import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from operators.io.records import Recording, canonical_name
from operators.processing.samples import grid_ns, true_runs
from operators import vocab
from stream import wire
from stream.tools.resampling import resample_recording
from stream.wire import Chunk

DEFAULT_SIGNALS = (vocab.ECG, vocab.PPG)


def chunk_bounds(n: int, rate_hz: float, chunk_s: float) -> np.ndarray:
    """Sample indices where chunks start (plus n at the end).

    Chunk j covers samples [round(j * chunk_s * rate_hz), round((j + 1) * chunk_s * rate_hz)), so chunks
    stay aligned to multiples of chunk_s even when chunk_s * rate_hz is not an integer (62.5 -> 62/63).

    Parameters
    ----------
    n : int
        Samples in the signal.
    rate_hz : float
        Its sampling rate, Hz.
    chunk_s : float
        Seconds of signal per chunk.

    Returns
    -------
    numpy.ndarray of int64
        Increasing boundaries from 0 to `n`.
    """
    per = max(1.0, chunk_s * rate_hz)
    bounds = np.round(np.arange(0, n / per + 1) * per).astype(np.int64)
    bounds = np.unique(np.clip(bounds, 0, n))
    return bounds if bounds[-1] == n else np.append(bounds, n)


def iter_signal_chunks(rec: Recording, signal: str, bed_id: str, chunk_s: float, start_ns: int,
                       duration_s: float | None = None) -> Iterator[Chunk]:
    """Chunks of one signal in time order; seq from 0.

    Parameters
    ----------
    rec : Recording
        The recording; `signal` must be one of its canonical names.
    signal, bed_id : str
        The signal sent and the bed it is sent as.
    chunk_s : float
        Seconds of signal per chunk (`chunk_bounds`).
    start_ns : int
        Timestamp of the first sample, ns since the epoch.
    duration_s : float, optional
        Send only the first `duration_s` seconds.
    """
    rate = float(rec.rates[signal])
    x = rec.signals[signal]
    if duration_s is not None:
        x = x[: int(round(duration_s * rate))]
    bounds = chunk_bounds(x.size, rate, chunk_s)
    seq = 0
    for g0, g1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        part = np.ascontiguousarray(x[g0:g1], dtype=np.float32)  # judged as sent: float32 (1e39 -> inf)
        finite = np.isfinite(part)
        if wire.nonfinite_repairable(part.size - int(np.count_nonzero(finite)), part.size):
            starts, ends = np.array([0]), np.array([part.size])
        else:
            starts, ends = true_runs(finite)
        for a, b in zip(starts.tolist(), ends.tolist()):
            k = g0 + a  # absolute sample index
            yield Chunk(bed_id=bed_id, signal=signal, rate_hz=rate, start_ns=int(grid_ns(start_ns, rate, k)),
                        seq=seq, samples=part[a:b], units=rec.units.get(signal, ""), age=rec.age, sex=rec.sex)
            seq += 1


def iter_chunks(rec: Recording, bed_id: str, chunk_s: float = 1.0, start_ns: int = 0,
                signals: Sequence[str] | None = None, resample: Mapping[str, float] | None = None,
                duration_s: float | None = None) -> Iterator[Chunk]:
    """All chunks of one bed, interleaved across signals in order of their end time (when a monitor sends them).

    Parameters
    ----------
    rec : Recording
        The recording sent.
    bed_id : str
        The bed it is sent as.
    chunk_s : float
        Seconds of signal per chunk.
    start_ns : int
        Timestamp of the first sample, ns since the epoch.
    signals : sequence of str, optional
        Signals to send (`select_signals`; default: whichever of `DEFAULT_SIGNALS` the record has).
    resample : mapping of str to float, optional
        Signal -> rate in Hz to send it at (`resample_recording`).
    duration_s : float, optional
        Send only the first `duration_s` seconds.

    Raises
    ------
    ValueError
        Before the first chunk: a missing signal, or a chunk length the wire format would refuse (`check_chunk_s`).
    """
    check_chunk_s(chunk_s)
    check_chunks(rec, chunk_s, signals, resample, duration_s)  # before resampling what cannot be sent anyway
    rec = resample_recording(rec, resample or {})
    names = select_signals(rec, signals)
    streams = [iter_signal_chunks(rec, s, bed_id, chunk_s, start_ns, duration_s) for s in names]
    return heapq.merge(*streams, key=_due_key)


def _due_key(c: Chunk) -> int:
    return c.end_ns()


def select_signals(rec: Recording, signals: Sequence[str] | None) -> list[str]:
    """Canonical names of `signals` in `rec` (ValueError naming a missing one); None: the `DEFAULT_SIGNALS` it has."""
    if signals is not None:
        names = [canonical_name(s) for s in signals]
        missing = [s for s in names if s not in rec.signals]
        if missing:
            raise ValueError(f"record {rec.name} has no channel {', '.join(missing)} (has: {', '.join(rec.signals)})")
        return names
    names = [s for s in DEFAULT_SIGNALS if s in rec.signals]
    if not names:
        raise ValueError(f"record {rec.name} has neither of {DEFAULT_SIGNALS} (has: {', '.join(rec.signals)}); "
                         "pick signals explicitly")
    return names


def check_chunk_s(chunk_s: float, rate_hz: float | None = None, signal: str = "", n_samples: int | None = None,
                  name: str = "chunk_s") -> None:
    """Refuse a chunk length the wire format would reject mid-run (ValueError).

    Parameters
    ----------
    chunk_s : float
        Seconds of signal per chunk.
    rate_hz : float, optional
        The signal's rate, Hz; with it, also the rate and the samples per chunk are checked.
    signal : str
        The signal's name, for the message.
    n_samples : int, optional
        The signal's length: a signal shorter than one chunk is sent whole.
    name : str
        How the caller's user spells the option (`chunk_s`, `--chunk-s`).
    """
    if not (0 < chunk_s <= wire.MAX_DURATION_S):
        raise ValueError(f"{name} must be in (0, {wire.MAX_DURATION_S:g}] s (the wire format's longest chunk), "
                         f"got {chunk_s:g}")
    if rate_hz is None:
        return
    if not (wire.MIN_RATE_HZ <= rate_hz <= wire.MAX_RATE_HZ):
        raise ValueError(f"{signal} is sampled at {rate_hz!r} Hz, outside the wire format's "
                         f"[{wire.MIN_RATE_HZ:g}, {wire.MAX_RATE_HZ:g}] Hz")
    n = math.ceil(chunk_s * rate_hz)  # chunk_bounds rounds, so a chunk can be one sample longer than chunk_s * rate
    if n_samples is not None:
        n = min(n, n_samples)
    if n > wire.MAX_SAMPLES:
        most = math.floor(wire.MAX_SAMPLES / rate_hz * 1000) / 1000
        raise ValueError(f"{name} {chunk_s:g} at {rate_hz:g} Hz ({signal}) is {n} samples per chunk > "
                         f"{wire.MAX_SAMPLES}, the wire format's limit; use {name} <= {most:g}")
    if n / rate_hz > wire.MAX_DURATION_S:  # the rounded-up sample count can overshoot 60 s (60 s at 62.51 Hz: 3751)
        raise ValueError(f"{name} {chunk_s:g} at {rate_hz:g} Hz ({signal}) makes chunks of {n} samples = "
                         f"{n / rate_hz:.3f} s > {wire.MAX_DURATION_S:g} s, the wire format's limit; use a shorter {name}")


def check_chunks(rec: Recording, chunk_s: float, signals: Sequence[str] | None = None,
                 resample: Mapping[str, float] | None = None, duration_s: float | None = None) -> None:
    """Refuse (ValueError) what `iter_chunks` with these arguments could not send, without resampling anything: a
    missing signal, one to resample that the record lacks, or chunks the wire format refuses at a signal's rate
    (after `resample` and the `duration_s` cut; `check_chunk_s`).

    Parameters
    ----------
    rec : Recording
        The recording.
    chunk_s, signals, resample, duration_s
        As for `iter_chunks`.
    """
    missing = [k for k in (resample or {}) if canonical_name(k) not in rec.signals]
    if missing:
        raise ValueError(f"cannot resample {', '.join(missing)}: record {rec.name} has {', '.join(rec.signals)}")
    for s in select_signals(rec, signals):
        rate, n = signal_length(rec, s, resample, duration_s)
        check_chunk_s(chunk_s, rate, f"{rec.name}/{s}", n)


def has_samples(rec: Recording, signal: str, resample: Mapping[str, float] | None = None,
                duration_s: float | None = None) -> bool:
    """Whether `signal` would send any sample: a finite one in the `duration_s` cut, and, when it is resampled, two
    neighbours both finite (the resampler makes an output NaN next to any NaN input, so a channel blank on every
    other row comes out all NaN)."""
    x = rec.signals[signal]
    if duration_s is not None:
        x = x[:int(round(duration_s * rec.rates[signal]))]
    ok = np.isfinite(np.asarray(x, dtype=np.float64))
    resampled = {canonical_name(k) for k in (resample or {})}
    return bool((ok[1:] & ok[:-1]).any()) if signal in resampled else bool(ok.any())


def signal_length(rec: Recording, signal: str, resample: Mapping[str, float] | None,
                   duration_s: float | None) -> tuple[float, int]:
    """(rate, samples) of a signal as it will be replayed: after `resample` and the `duration_s` cut."""
    targets = {canonical_name(k): v for k, v in (resample or {}).items()}  # as resample_recording reads them
    rate = float(targets.get(signal, rec.rates[signal]))
    n = int(round(len(rec.signals[signal]) * rate / rec.rates[signal]))
    if duration_s is not None:
        n = min(n, int(round(duration_s * rate)))
    return rate, n


def bed_ids(n: int, prefix: str = "bed") -> list[str]:
    """`prefix-001` ... `prefix-<n>`."""
    return [f"{prefix}-{i:03d}" for i in range(1, n + 1)]


def plan_beds(recordings: Sequence[Recording], beds: int | None = None, prefix: str = "bed") -> list[tuple[str, Recording]]:
    """Map N bed ids onto the recordings, cycling through them (bed-001 ← rec 0, bed-002 ← rec 1, ...).

    Parameters
    ----------
    recordings : sequence of Recording
        At least one, and no more than `beds`.
    beds : int, optional
        Number of beds; default one per recording.
    prefix : str
        Bed ids are `prefix-001` ...

    Returns
    -------
    list of (str, Recording)
        Bed id and the recording it sends.
    """
    check_plan(len(recordings), beds)
    n = len(recordings) if beds is None else beds
    return [(bed, recordings[i % len(recordings)]) for i, bed in enumerate(bed_ids(n, prefix))]


def check_plan(n_records: int, beds: int | None = None, duration_s: float | None = None) -> None:
    """Refuse (ValueError) a bed count or duration a replay cannot use; needs only the record count, so callers
    check before reading any record.

    Parameters
    ----------
    n_records : int
        Recordings to replay.
    beds : int, optional
        Beds asked for (None: one per recording); at least one per recording.
    duration_s : float, optional
        Seconds replayed per recording; positive and finite.
    """
    if n_records < 1:
        raise ValueError("no recordings to replay")
    n = n_records if beds is None else beds
    if n < 1:
        raise ValueError(f"beds must be >= 1, got {n}")
    if n < n_records:  # the records past the last bed would be read and never sent
        raise ValueError(f"{n} bed(s) for {n_records} records: each record needs a bed (beds >= records)")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s}")


def iter_all_chunks(plan: Sequence[tuple[str, Recording]], chunk_s: float, start_ns: int,
                    signals: Sequence[str] | None = None, resample: Mapping[str, float] | None = None,
                    duration_s: float | None = None) -> Iterator[Chunk]:
    """Chunks of all beds of `plan` (`plan_beds`) merged in time order; the other parameters as for `iter_chunks`.

    Each recording is resampled once, however many beds send it.
    """
    resampled: dict[int, Recording] = {}  # resample each recording once, not once per bed
    streams = []
    for bed, rec in plan:
        if id(rec) not in resampled:
            resampled[id(rec)] = resample_recording(rec, resample or {})
        streams.append(iter_chunks(resampled[id(rec)], bed, chunk_s, start_ns, signals, None, duration_s))
    return heapq.merge(*streams, key=_due_key)


def expected_chunk_count(plan: Sequence[tuple[str, Recording]], chunk_s: float, signals: Sequence[str] | None = None,
                         resample: Mapping[str, float] | None = None, duration_s: float | None = None) -> int:
    """Chunks `iter_all_chunks` yields on the fixed grid (splits at the NaN runs of chunks the wire would refuse may
    add more); for a progress bar."""
    total = 0
    for _, rec in plan:
        for s in select_signals(rec, signals):
            rate, n = signal_length(rec, s, resample, duration_s)
            total += len(chunk_bounds(n, rate, chunk_s)) - 1
    return total
