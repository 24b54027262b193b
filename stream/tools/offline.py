"""Offline translation of a recording: the stream pipeline without Kafka.

    wavebridge translate INPUT --task ppg2ecg|sr --out OUT.parquet [--target-rate HZ]
        [--context REC] [--translator SPEC] [--signal NAME] [--window-s S] [--hop-s S] [--lookahead-s S] [--chunk-s S]

The recording is cut into exactly the chunks a replay would publish (`stream.tools.chunker.iter_chunks`:
a few NaNs in a chunk are sent and interpolated by the wire decoder, longer NaN runs become gaps, never
splices), each chunk goes through the wire format round trip the worker sees, then through the same
`stream.pipeline.Pipeline`, flushed at the end of input. So for identical chunks the worker and this mode
produce identical values. The output has a row for every point of the output grid over the whole input: where
the worker would publish nothing (a gap in the source, a withheld span) the row is NaN with `usable` False.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from operators.processing.samples import grid_ns, in_millivolts
from operators.translator import DEFAULT_SPEC, PPG2ECG, SR, PairedContext, is_ecg_signal
from operators import vocab
from operators.vocab import ECG, PPG
from stream import wire
from stream.tools.cli import ArgumentParser
from stream.pipeline import Pipeline, PipelineConfig

ECG_COLUMN = "ecg_ii"
TIME_COLUMN = "time_s"
QUALITY_COLUMN = "quality"  # 0-1, of the source window that produced the sample (operators.processing.quality)
USABLE_COLUMN = "usable"  # False: the source (or output) was unusable there and the signal column is NaN
OFFLINE_BED = "offline"
BATCH_CHUNKS = 64  # chunks pushed between translator calls (same order of magnitude as the worker)
# A synthesized ECG slower than this cannot show a QRS complex (80-100 ms: 4-5 samples at 50 Hz), and its R-peak
# detector band-passes 5-15 Hz, which needs more than 30 Hz.
PPG2ECG_MIN_RATE_HZ = 50.0


def _weights_glob() -> str:
    """`*.safetensors` in `models/weights`, found through the `models` package's location without importing it
    (its modules import torch); '' when the package is absent."""
    spec = importlib.util.find_spec("models")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(next(iter(spec.submodule_search_locations))) / "weights" / "*.safetensors")


WEIGHTS_GLOB = _weights_glob()


class OfflineError(Exception):
    """A user-facing problem (missing channel, bad rate): reported as one line, exit code 2."""


@dataclass
class OfflineResult:
    """One translated signal: sample times, the values, and per sample their quality and usability."""

    times_s: np.ndarray  # float64, seconds from the input's start (`start_s` puts them on the input's clock)
    columns: dict[str, np.ndarray]  # signal column name -> float32 (NaN where not usable)
    rate_hz: float
    times_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # relative to the input start
    translator: str = ""
    events: list = field(default_factory=list)
    quality: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # per sample, NaN if unjudged
    usable: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # per sample, True where nothing was translated (a gap or NaN run in the source, a piece too short to
    # translate): NaN, quality 0, not usable; not written to the Parquet file
    gap: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    start_s: float = 0.0  # the input's first sample on its own clock (`Recording.start_s`)

    def to_parquet(self, path: str | Path) -> None:
        """Write `time_s` (on the input's clock: `start_s` + `times_s`, so the file joins the input on it), the signal
        column, `quality` and `usable` to `path`; rate, translator and `start_s` as metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {TIME_COLUMN: pa.array(self.start_s + self.times_s, pa.float64())}
        cols.update({k: pa.array(v, pa.float32()) for k, v in self.columns.items()})
        cols[QUALITY_COLUMN] = pa.array(self.quality, pa.float32(), from_pandas=True)
        cols[USABLE_COLUMN] = pa.array(self.usable, pa.bool_())
        table = pa.table(cols).replace_schema_metadata({"rate_hz": str(self.rate_hz), "translator": self.translator,
                                                        "start_s": repr(self.start_s)})
        pq.write_table(table, str(path))


def default_translator_spec() -> tuple[str, str]:
    """(`DEFAULT_SPEC`, per task the best measured, if trained weights ship and torch imports, else `classic`;
    the reason)."""
    if not WEIGHTS_GLOB or not glob.glob(WEIGHTS_GLOB):
        return "classic", "no models/weights/*.safetensors"
    try:
        import torch  # noqa: F401
    except Exception as exc:  # pragma: no cover - torch is a dependency
        return "classic", f"torch does not import ({exc})"
    return DEFAULT_SPEC, "weights found"


def pick_source(recording, task: str, signal: str | None) -> str:
    """Canonical name of the source channel for `task`.

    Parameters
    ----------
    recording : Recording
        The input.
    task : str
        "ppg2ecg" (the source is PLETH) or "sr" (II, else PLETH, else the only channel if it is an ECG lead).
    signal : str, optional
        The channel asked for (`--signal`), any spelling `canonical_name` knows.

    Raises
    ------
    OfflineError
        The channel is missing, cannot feed `task`, or "sr" cannot tell which channel to use.
    """
    from operators.io.records import canonical_name

    have = list(recording.signals)
    if signal is not None:
        name = canonical_name(signal)
        check_task_source(task, name)
        if name not in recording.signals:
            raise OfflineError(f"channel {signal!r} not found in {recording.name} (has: {', '.join(have) or 'none'})")
        return name
    if task == PPG2ECG:
        if PPG not in recording.signals:
            raise OfflineError(f"ppg2ecg needs a PLETH (PPG) channel; {recording.name} has: {', '.join(have) or 'none'}")
        return PPG
    for name in (ECG, PPG):
        if name in recording.signals:
            return name
    if len(have) == 1:
        check_task_source(task, have[0])
        return have[0]
    raise OfflineError(f"sr: cannot tell which channel to super-resolve in {recording.name} (has: {', '.join(have)}); "
                       f"pass --signal")


def check_task_source(task: str, name: str) -> None:
    """ppg2ecg translates PLETH only: the pipeline routes no other signal to it, so any other
    source would silently produce an empty output. sr takes what the worker super-resolves
    (`operators.vocab.super_resolvable`): ECG leads and PLETH."""
    if task == PPG2ECG and name != PPG:
        raise OfflineError(f"ppg2ecg translates a PLETH (PPG) channel only; {name} is not one "
                           f"(omit --signal, or use --task sr)")
    if task == SR and not vocab.super_resolvable(name):
        raise OfflineError(f"sr super-resolves ECG leads and {PPG} only, as the worker does; {name} is "
                           f"neither (the models know no other waveform)")


def check_interleaved(recording, src: str, path) -> None:
    """Refuse a source whose values stand alone between empty rows: a channel stored at 1/k of the time column's
    rate, whose finite samples are single points that no window can use (it failed later as "7500 segments too
    short").

    Raises
    ------
    OfflineError
        At least a third of the samples missing, and most values without a value on either side.
    """
    ok = np.isfinite(np.asarray(recording.signals[src], dtype=np.float64))
    if not len(ok) or ok.all() or (~ok).mean() < 1 / 3:
        return
    pad = np.concatenate([[False], ok, [False]])
    alone = ok & ~pad[:-2] & ~pad[2:]  # a value with no value on either side: one row in k at 1/k of the rate
    if alone.sum() > ok.sum() / 2:
        rate = recording.rates[src]
        raise OfflineError(f"{path}: {src} is empty on {(~ok).mean():.0%} of the rows, its values alone between empty "
                           f"ones: stored at a fraction of the time column's {rate:g} Hz? Give it a file (or a time "
                           "column) of its own rate")


def check_target_rate(task: str, src: str, src_rate: float, target_rate: float | None) -> float:
    """The output rate in Hz: `target_rate`, or the worker's choice for this source when None.

    Raises
    ------
    OfflineError
        Above the wire format's limit, below what shows a QRS complex (ppg2ecg), or not above the source (sr).
    """
    if target_rate is None:
        # as the worker routes it: a PLETH too slow for its own rate's ECG gets the super-resolution rate
        slow = src_rate < PipelineConfig.sr_below_hz
        target_rate = src_rate if task == PPG2ECG and not slow else vocab.SR_TARGET_HZ
    target_rate = float(target_rate)
    if not 0 < target_rate <= wire.MAX_RATE_HZ:
        raise OfflineError(f"--target-rate must be > 0 and at most {wire.MAX_RATE_HZ:g} Hz (the wire format's "
                           f"limit, as in the service), got {target_rate:g}")
    if task == PPG2ECG and target_rate < PPG2ECG_MIN_RATE_HZ:
        raise OfflineError(f"ppg2ecg: --target-rate {target_rate:g} Hz is below {PPG2ECG_MIN_RATE_HZ:g} Hz: an ECG that "
                           "slow shows no QRS complex")
    if task == SR and target_rate <= src_rate:
        raise OfflineError(f"sr: target rate {target_rate:g} Hz is not above the source rate {src_rate:g} Hz of {src}")
    return target_rate


def check_chunk_s(chunk_s: float, rate_hz: float, signal: str, n_samples: int | None = None) -> None:
    """Chunks go through the wire format like a replay's: `chunker.check_chunk_s` (seconds, Hz, the signal's
    name and length), as a one-line OfflineError naming `--chunk-s`."""
    from stream.tools.chunker import check_chunk_s as check

    try:
        check(chunk_s, rate_hz, signal, n_samples, name="--chunk-s")
    except ValueError as exc:
        raise OfflineError(str(exc)) from None


def uses_context(task: str, source_signal: str) -> bool:
    """PPG->ECG uses the patient's paired context; SR only for an ECG (its QRS high band, operators.processing.beatsr)."""
    return task == PPG2ECG or is_ecg_signal(source_signal)


def builds_own_context(task: str, context, context_s: float, has_ecg: bool = True) -> bool:
    """Whether the bed's patient context is built from the record's own lead II and PLETH, as the worker builds it:
    for ppg2ecg (the only task the pipeline gives a stream-built context), with no `context` given, a context length
    `context_s` > 0 (s) and a lead II to build it from (`has_ecg`)."""
    return task == PPG2ECG and context is None and context_s > 0 and has_ecg


def load_context(path: str | Path, context_s: float = 10.0) -> PairedContext:
    """Best paired ECG+PPG segment of a context record of the same patient.

    Parameters
    ----------
    path : str or Path
        A record with II and PLETH (both brought to the faster one's rate, as the worker does).
    context_s : float
        Length of the segment, s.

    Raises
    ------
    OfflineError
        The record cannot be read, lacks a channel, or has no usable paired segment that long.
    """
    from operators.state.context import select_context
    from operators.io.records import read_recording

    try:
        rec = read_recording(path, [ECG, PPG])
    except (ValueError, OSError, KeyError) as exc:  # as for the input: a missing .csv is an OSError, not the user's 1
        raise OfflineError(f"--context {path}: {exc}") from None
    ecg, ppg, rate = rec.signals[ECG], rec.signals[PPG], max(rec.rates[ECG], rec.rates[PPG])
    ecg = in_millivolts(ecg, rec.units.get(ECG, ""))  # as the worker's context
    if rec.rates[ECG] != rec.rates[PPG]:  # e.g. II stored 4 samples a frame: both at the faster rate, as the worker does
        from operators.processing.resample import resample

        ecg = resample(np.asarray(ecg, np.float64), rec.rates[ECG], rate) if rec.rates[ECG] != rate else ecg
        ppg = resample(np.asarray(ppg, np.float64), rec.rates[PPG], rate) if rec.rates[PPG] != rate else ppg
        n = min(len(ecg), len(ppg))
        ecg, ppg = ecg[:n], ppg[:n]
    ctx = select_context(ecg, ppg, rate, context_s)
    if ctx is None:
        raise OfflineError(f"--context {path}: no usable paired ECG+PPG segment of {context_s:g} s")
    return ctx


def iter_source_chunks(recording, signal: str | Sequence[str], chunk_s: float, bed: str = OFFLINE_BED,
                       start_ns: int = 0):
    """The chunks a replay publishes for this signal (or these, interleaved as a monitor sends them), after the wire
    round trip the worker sees.

    Parameters
    ----------
    recording : Recording
        The input.
    signal : str or sequence of str
        Canonical channel name(s).
    chunk_s : float
        Seconds of signal per chunk.
    bed : str
        Bed id of the chunks.
    start_ns : int
        Timestamp of the first sample, ns.
    """
    from stream.tools.chunker import iter_chunks

    signals = [signal] if isinstance(signal, str) else list(signal)
    for chunk in iter_chunks(recording, bed, chunk_s=chunk_s, start_ns=start_ns, signals=signals):
        yield wire.decode(wire.encode_binary(chunk))


def translate_chunks(chunks: Iterable, task: str, *, source_signal: str, target_rate: float, translator,
                     window_s: float = 8.0, hop_s: float = 2.0, context: PairedContext | None = None,
                     progress=None, lookahead_s: float = PipelineConfig.lookahead_s, quality: bool = True,
                     context_s: float = 0.0):
    """Run the pipeline over `chunks` (one bed) and flush at the end.

    Parameters
    ----------
    chunks : iterable of Chunk
        One bed's chunks of `source_signal` in order (with `context_s`, also its lead II: context only).
    task : str
        "ppg2ecg" or "sr".
    source_signal : str
        The signal translated.
    target_rate : float
        Output rate, Hz (for ppg2ecg too: the synthesized ECG's rate).
    translator : Translator
        A loaded translator (`operators.translator.load_translator`).
    window_s, hop_s, lookahead_s : float
        The worker's window, hop and look-ahead, s.
    context : PairedContext, optional
        The patient's paired ECG+PPG context.
    progress : callable, optional
        Called with the sample count of every `source_signal` chunk pushed.
    quality : bool
        False turns gating off (benchmarks measure what it changes).
    context_s : float
        ppg2ecg without `context`: > 0 builds the bed's context from its own lead II and PLETH chunks, as the worker
        does (`WAVEBRIDGE_CONTEXT_S`, s; the same chunks give the same context, operators.state.context.ContextStore;
        `builds_own_context`).

    Returns
    -------
    (list of OutputSeries, list of events)
        The published series and the withheld ones (NaN values, `usable=False`), and the pipeline's events.
    """
    own = builds_own_context(task, context, context_s)
    cfg = PipelineConfig(window_s=window_s, hop_s=hop_s, lookahead_s=lookahead_s, tasks=(task,), sr_target_hz=float(target_rate),
                         sr_below_hz=float(target_rate), context_s=float(context_s) if own else 0.0,
                         ppg2ecg_rate_hz=float(target_rate) if task == PPG2ECG else None,
                         sr_signals=(source_signal,), quality=quality)
    pipe = Pipeline(cfg, translator, context_provider=None if own else (lambda bed: context))
    outputs, events = [], []

    def take(res):
        outputs.extend(res.outputs)
        outputs.extend(res.withheld)
        events.extend(res.events)

    for i, chunk in enumerate(chunks, 1):
        pipe.push(chunk)
        if progress and chunk.signal == source_signal:
            progress(len(chunk.samples))
        if i % BATCH_CHUNKS == 0:
            take(pipe.process())
    take(pipe.process())
    pipe.flush_all()
    take(pipe.process())
    return outputs, events


def gap_times_ns(times_ns: np.ndarray, rate_hz: float, end_ns: int) -> np.ndarray:
    """Times of the rows missing from an output on its grid: before its first row, between rows more than 1.5
    periods apart, and after its last row up to the input's end.

    Each missing stretch continues the grid of the row before it (`grid_ns`), the leading one that of the first
    row backwards to 0, so the times stay evenly spaced across a gap wherever the input was.

    Parameters
    ----------
    times_ns : numpy.ndarray of int64
        The output's row times, increasing, ns from the input's start (at least one).
    rate_hz : float
        The output's rate, Hz.
    end_ns : int
        The input's end (one sample period after its last sample), ns from its start.

    Returns
    -------
    numpy.ndarray of int64
        The missing times, increasing.
    """
    half = 0.5e9 / rate_hz
    first, last = int(times_ns[0]), int(times_ns[-1])
    parts = [grid_ns(first, rate_hz, np.arange(-math.ceil(first * rate_hz / 1e9) - 1, 0))]
    parts[0] = parts[0][parts[0] > -half]
    gaps = np.flatnonzero(np.diff(times_ns) > 3 * half)
    for a, b in zip(times_ns[gaps].tolist(), times_ns[gaps + 1].tolist()):
        t = grid_ns(a, rate_hz, np.arange(1, math.ceil((b - a) * rate_hz / 1e9) + 1))
        parts.append(t[t < b - half])
    t = grid_ns(last, rate_hz, np.arange(1, max(0, math.ceil((end_ns - last) * rate_hz / 1e9)) + 1))
    parts.append(t[t < end_ns - half])
    return np.concatenate(parts).astype(np.int64)


def translate_recording(recording, task: str, *, target_rate: float | None = None, context: PairedContext | None = None,
                        translator=None, signal: str | None = None, window_s: float = 8.0, hop_s: float = 2.0,
                        chunk_s: float = 1.0, progress: bool = False,
                        lookahead_s: float = PipelineConfig.lookahead_s, context_s: float = 0.0) -> OfflineResult:
    """Translate one in-memory `operators.io.records.Recording`, cut into a replay's chunks.

    Parameters
    ----------
    recording : Recording
        The input.
    task : str
        "ppg2ecg" or "sr".
    target_rate : float, optional
        Output rate, Hz; default: the source's rate for ppg2ecg, 100 Hz for sr.
    context : PairedContext, optional
        The patient's paired context (used by ppg2ecg and by sr of an ECG).
    translator : Translator or str, optional
        A translator, a spec string, or None (`default_translator_spec`).
    signal : str, optional
        The source channel (`pick_source`).
    window_s, hop_s, lookahead_s, chunk_s : float
        The worker's window, hop and look-ahead, and the replay's chunk length, s.
    progress : bool
        A progress bar on stderr.
    context_s : float
        ppg2ecg without `context`: > 0 builds the patient context from the recording's own lead II (if it has one)
        and PLETH, as the worker does with `WAVEBRIDGE_CONTEXT_S` (s); 0: none.

    Returns
    -------
    OfflineResult
        `time_s` (seconds from the input's start), one signal column: `ecg_ii` (ppg2ecg) or the source channel's
        own name (sr), NaN where the source window was unusable, and per sample `quality` (0-1) and `usable`.
        Where nothing was translated (a gap or NaN run in the source) the output grid goes on with NaN rows,
        quality 0, not usable (`gap_times_ns`; `gap` marks them); none at all when nothing was translated.

    Raises
    ------
    OfflineError
        An unknown task, a bad rate, window or chunk length, or a missing source channel.
    """
    from operators.translator import load_translator

    if task not in (PPG2ECG, SR):
        raise OfflineError(f"unknown task {task!r} (ppg2ecg or sr)")
    src = pick_source(recording, task, signal)
    src_rate = float(recording.rates[src])
    target_rate = check_target_rate(task, src, src_rate, target_rate)
    if hop_s <= 0 or window_s <= 0 or hop_s > window_s:
        raise OfflineError(f"need 0 < hop ({hop_s:g} s) <= window ({window_s:g} s)")
    if lookahead_s < 0 or hop_s + lookahead_s > window_s:
        raise OfflineError(f"need 0 <= look-ahead ({lookahead_s:g} s) and hop + look-ahead <= window ({window_s:g} s)")
    check_chunk_s(chunk_s, src_rate, src, len(recording.signals[src]))
    if translator is None or isinstance(translator, str):
        translator = load_translator(translator or default_translator_spec()[0])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(recording.signals[src]), unit="sample", unit_scale=True, desc=recording.name, file=sys.stderr)
    context = context if uses_context(task, src) else None
    own = builds_own_context(task, context, context_s, ECG in recording.signals)
    try:
        outputs, events = translate_chunks(
            iter_source_chunks(recording, [src, ECG] if own else src, chunk_s), task, source_signal=src,
            target_rate=target_rate, translator=translator, window_s=window_s, hop_s=hop_s, context=context,
            progress=bar.update if bar else None, lookahead_s=lookahead_s, context_s=context_s if own else 0.0)
    finally:
        if bar:
            bar.close()
    times = np.concatenate([o.times_ns for o in outputs]) if outputs else np.zeros(0, np.int64)
    values = np.concatenate([o.values for o in outputs]) if outputs else np.zeros(0, np.float32)
    quality = np.concatenate([np.full(len(o.values), np.nan if o.quality is None else o.quality, np.float32)
                              for o in outputs]) if outputs else np.zeros(0, np.float32)
    usable = np.concatenate([np.full(len(o.values), o.usable) for o in outputs]) if outputs else np.zeros(0, bool)
    order = np.argsort(times, kind="stable")  # withheld spans were collected apart from the published ones
    times, values, quality, usable = times[order], values[order], quality[order], usable[order]
    gap = np.zeros(len(times), bool)
    if len(times):  # a row for every grid point of the input, so rows after a gap keep their place
        missing = gap_times_ns(times, target_rate, int(grid_ns(0, src_rate, len(recording.signals[src]))))
        n = len(missing)
        times = np.concatenate([times, missing])
        values = np.concatenate([values, np.full(n, np.nan, np.float32)])
        quality = np.concatenate([quality, np.zeros(n, np.float32)])
        usable = np.concatenate([usable, np.zeros(n, bool)])
        gap = np.concatenate([gap, np.ones(n, bool)])
        order = np.argsort(times, kind="stable")
        times, values, quality, usable, gap = times[order], values[order], quality[order], usable[order], gap[order]
    name = ECG_COLUMN if task == PPG2ECG else recording.original_names.get(src, src)
    return OfflineResult(times_s=times / 1e9, columns={name: values}, rate_hz=target_rate, times_ns=times,
                         translator=getattr(translator, "name", type(translator).__name__), events=events,
                         quality=quality, usable=usable, gap=gap, start_s=float(recording.start_s))


# --------------------------------------------------------------------------------------------

def _about(path: Path, exc: Exception) -> str:
    """`path: message`, without the record's name that the readers put first (it read "x.csv: x: ...")."""
    text = str(exc)
    for name in (str(path), path.name, path.stem):
        if text.startswith(f"{name}: "):
            text = text[len(name) + 2:]
            break
    return f"{path}: {text}"


def _one_task_spec(spec: str, task: str) -> str:
    """`translate` runs one task, so `TASK=SPEC` naming only that task is enough: its SPEC."""
    task_part, eq, one = spec.partition("=")
    if eq and "," not in spec and task_part.strip() == task:
        return one.strip()
    return spec


def _spec_for(spec: str, task: str) -> str | None:
    """The translator a spec names for `task` (None when the spec does not parse: load_translator says why)."""
    from operators.translator import parse_spec

    try:
        parsed = parse_spec(spec)
    except ValueError:
        return None
    return parsed.get(task) if isinstance(parsed, dict) else parsed


def _finite(text: str) -> float:
    """argparse type: a finite number ("nan" and "inf" parse as floats and pass every range check)."""
    v = float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v

def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="wavebridge translate",
                                description="Translate a recording offline (same pipeline as the stream worker).")
    p.add_argument("input", help="WFDB record (with or without .hea), .parquet or .csv")
    p.add_argument("--task", required=True, choices=[PPG2ECG, SR],
                   help="ppg2ecg: lead II synthesized from PLETH; sr: super-resolution of the source to --target-rate")
    p.add_argument("--out", required=True, help="output Parquet file (*.parquet)")
    p.add_argument("--target-rate", type=_finite, default=None,
                   help=f"output rate in Hz, at most {wire.MAX_RATE_HZ:g} (default: ppg2ecg = the source's rate, "
                        f"{vocab.SR_TARGET_HZ:g} from a source below {PipelineConfig.sr_below_hz:g} Hz as in the worker, "
                        f"at least {PPG2ECG_MIN_RATE_HZ:g}; sr = {vocab.SR_TARGET_HZ:g})")
    p.add_argument("--context", default=None,
                   help="WFDB record of the same patient with II and PLETH (ppg2ecg; sr of an ECG, if II is full-rate)")
    p.add_argument("--translator", default=None,
                   help=f"translator spec: classic, clmt, module:Class, or TASK=SPEC for the task run (default: "
                        f"{DEFAULT_SPEC}, per task the best measured, when the weights ship and torch imports; else "
                        "classic)")
    p.add_argument("--signal", default=None, help="source channel name (default: PLETH for ppg2ecg; II or PLETH for sr)")
    p.add_argument("--window-s", type=_finite, default=8.0, help="window length in s (the worker's WAVEBRIDGE_WINDOW_S)")
    p.add_argument("--hop-s", type=_finite, default=2.0, help="hop between windows in s (WAVEBRIDGE_HOP_S)")
    p.add_argument("--lookahead-s", type=_finite, default=PipelineConfig.lookahead_s,
                   help="newest part of each window used as context only, for every task (as the worker does)")
    p.add_argument("--chunk-s", type=_finite, default=1.0, help="chunk length, as a replay would publish")
    p.add_argument("--input-rate", type=_finite, default=None, help="sample rate of a CSV/Parquet without time_s")
    p.add_argument("--context-s", type=_finite, default=10.0,
                   help="length of the paired context segment; ppg2ecg without --context builds it from the record's "
                        "own II and PLETH as the worker does (0: no context)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """`wavebridge translate ARGV`; returns the exit status (2: a one-line error)."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except OfflineError as exc:
        print(f"wavebridge translate: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from operators.io.records import MissingChannel, read_recording
    from operators.translator import load_translator

    path = Path(args.input)
    out = Path(args.out)
    # first: a long translation must not end in an error about where to write it
    check_out(out, {"input": path, "--context": args.context})
    if args.context_s < 0:
        raise OfflineError(f"--context-s must be >= 0 (0: no context), got {args.context_s:g}")
    if path.suffix.lower() in (".parquet", ".pq", ".csv"):
        if not path.exists():
            raise OfflineError(f"input {path} does not exist")
    if args.signal:
        from operators.io.records import canonical_name

        check_task_source(args.task, canonical_name(args.signal))  # before reading anything
    wanted = [args.signal] if args.signal else ([PPG] if args.task == PPG2ECG else None)
    own_context = builds_own_context(args.task, args.context or None, args.context_s)
    try:
        try:  # ppg2ecg: the record's own lead II too, for the patient context the worker would build
            rec = read_recording(path, wanted + [ECG] if own_context else wanted, rate_hz=args.input_rate)
        except MissingChannel:
            if not own_context:
                raise
            own_context = False
            rec = read_recording(path, wanted, rate_hz=args.input_rate)
    except MissingChannel as exc:
        need = "ppg2ecg needs a PLETH (PPG) channel: " if args.task == PPG2ECG and not args.signal else ""
        raise OfflineError(f"{need}{path}: {exc}") from None
    except (ValueError, OSError, KeyError) as exc:  # unreadable, not found: no channel advice
        raise OfflineError(_about(path, exc)) from None
    if not rec.signals:
        raise OfflineError(f"{path}: no channels")
    src = pick_source(rec, args.task, args.signal)
    if not wire.is_input_signal(src):  # the windows go through the wire's chunk checks, which would refuse it
        raise OfflineError(f"{path}: channel {src} cannot be translated (translatable: "
                           f"{', '.join(sorted(vocab.WIRE_SIGNALS))})")
    check_chunk_s(args.chunk_s, float(rec.rates[src]), src, len(rec.signals[src]))  # before loading a model
    check_target_rate(args.task, src, float(rec.rates[src]), args.target_rate)
    check_interleaved(rec, src, path)
    spec, why = (_one_task_spec(args.translator, args.task), "given") if args.translator else default_translator_spec()
    try:
        if _spec_for(spec, args.task) == "passthrough":
            raise ValueError("passthrough copies the source unchanged (the benchmarks' ceiling), it translates nothing: "
                             "use classic or clmt")
        translator = load_translator(spec)
    except Exception as exc:
        raise OfflineError(f"translator {spec!r}: {exc}") from None
    print(f"wavebridge translate: translator {spec} ({why})", file=sys.stderr)
    context = None
    if args.context:
        if uses_context(args.task, src):
            context = load_context(args.context, args.context_s)
        else:
            print(f"wavebridge translate: note: --context is used by ppg2ecg and ECG sr only; ignored for sr of {src}",
                  file=sys.stderr)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if own_context:
        print("wavebridge translate: patient context: from the record's own II and PLETH, as the worker builds it "
              "(--context-s 0: none)", file=sys.stderr)
    res = translate_recording(rec, args.task, target_rate=args.target_rate, context=context, translator=translator,
                              signal=args.signal, window_s=args.window_s, hop_s=args.hop_s, chunk_s=args.chunk_s,
                              lookahead_s=args.lookahead_s, context_s=args.context_s if own_context else 0.0,
                              progress=progress)
    col = next(iter(res.columns))
    if len(res.times_s) == 0:
        dropped = sum(e.kind == "short_segment_dropped" for e in res.events)
        why = f" ({dropped} segment(s) of finite samples too short to translate were dropped)" if dropped else ""
        raise OfflineError(f"{args.task} of {src} in {path} produced no samples{why}; nothing written")
    try:
        res.to_parquet(out)
    except OSError as exc:  # e.g. the disk filled up
        raise OfflineError(f"--out {out}: {exc}") from None
    print(f"wavebridge translate: {summary(res, out)}", file=sys.stderr)
    return 0


def check_out(out: Path, sources: dict[str, str | Path | None] | None = None) -> None:
    """Refuse (OfflineError) an `--out` that is a directory, not named *.parquet (the output is Parquet only), is
    one of the files read (a Parquet input, or a link to it: writing the translation there would destroy the
    recording), or cannot be written: tried by opening it, which also catches what permission bits do not tell root.
    Leaves an existing file as it is and no new one behind.

    Parameters
    ----------
    out : Path
        The `--out` file.
    sources : dict of str to path, optional
        The files read, by how the user named them ("input", "--context"); None values are skipped.
    """
    if out.is_dir():
        raise OfflineError(f"--out {out} is a directory; give a file name such as {out / 'out.parquet'}")
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise OfflineError(f"--out {out}: the output is Parquet; name it *.parquet")
    if not out.parent.is_dir():
        what = "is a file, not a directory" if out.parent.exists() else "does not exist"
        raise OfflineError(f"output directory {out.parent} {what}")
    for what, src in (sources or {}).items():
        if src is not None and out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise OfflineError(f"--out {out} is the {what} {src}: writing there would overwrite the recording; "
                               f"give another file name")
    try:
        if out.exists():
            open(out, "r+b").close()  # writable, not truncated
        else:
            open(out, "xb").close()
            out.unlink()
    except OSError as exc:
        raise OfflineError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def summary(res: OfflineResult, out) -> str:
    """The line `wavebridge translate` ends with: rows written, and how many are NaN for which reason."""
    col, rate = next(iter(res.columns)), res.rate_hz
    n_gap = int(np.count_nonzero(res.gap))
    n_withheld = int(np.count_nonzero(~res.usable & ~res.gap))
    parts = [f"{int(np.count_nonzero(res.usable))} usable"]
    if n_gap:
        short = sum(e.kind == "short_segment_dropped" for e in res.events)
        why = f", {short} piece(s) too short to translate" if short else ""
        parts.append(f"{n_gap} NaN ({n_gap / rate:.1f} s) in gaps of the source (no samples, NaN runs{why})")
    if n_withheld:
        parts.append(f"{n_withheld} NaN ({n_withheld / rate:.1f} s) withheld as unusable (see the usable column)")
    return f"wrote {len(res.times_s)} samples of {col} at {rate:g} Hz to {out}: {', '.join(parts)}"


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
