"""Wire format of waveform chunks (see docs/wire-format.md).

Two encodings of the same `Chunk`:
- JSON (`encode_json`): a UTF-8 object, easy to produce from any monitor gateway;
- binary (`encode_binary`): `MAGIC` + uint32 LE header length + msgpack header map + raw
  little-endian float32 samples; compact and fast for thousands of samples.
`decode` auto-detects the encoding and validates; invalid input raises `WireError(reason, detail)`
with a stable machine-readable `reason` (the DLQ records it), and nothing else, whatever the bytes
(tests/test_wire_fuzz.py). `decode_input` also refuses this service's own output signals. A few non-finite samples
(≤ `MAX_NONFINITE_FRACTION`) are repaired by linear interpolation; `decode_result` reports how many.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field

import msgpack
import numpy as np

from operators.processing.samples import fill_nonfinite, grid_ns
from operators.vocab import OUTPUT_SUFFIXES, SEXES, WIRE_SIGNALS

VERSION = 1
MAGIC = b"WBC\x01"  # "WaveBridge Chunk", format version 1
_HEADER_LEN = struct.Struct("<I")

# Validation limits.
MIN_RATE_HZ = 1.0
MAX_RATE_HZ = 2000.0
MAX_SAMPLES = 65536
MAX_DURATION_S = 60.0
MAX_NONFINITE_FRACTION = 0.20
MAX_BED_ID_LEN = 64
BED_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_BED_ID_LEN)
MIN_AGE, MAX_AGE = 0.0, 150.0
MAX_UNITS_LEN = 32
MAX_START_NS = 2**63 - 1  # int64 nanoseconds (year 2262)
# Largest accepted |sample|. Physiological signals in any unit (mV, mmHg, raw 32-bit ADC counts) stay far below;
# values near float32's 3.4e38 overflow the translators' arithmetic and their outputs would vanish as non-finite.
MAX_ABS_SAMPLE = 1e12

# Reason codes (stable; documented in docs/wire-format.md).
BAD_JSON = "bad_json"
BAD_ENCODING = "bad_encoding"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_RATE = "bad_rate"
OVERSIZED = "oversized"
EMPTY = "empty"
NAN_FLOOD = "nan_flood"
UNKNOWN_SIGNAL = "unknown_signal"
BAD_TIMESTAMP = "bad_timestamp"
BAD_SEX = "bad_sex"
BAD_AGE = "bad_age"
BAD_BED_ID = "bad_bed_id"
OUT_OF_RANGE = "out_of_range"
OUTPUT_SIGNAL = "output_signal"
REASONS = (BAD_JSON, BAD_ENCODING, MISSING_FIELD, WRONG_TYPE, BAD_RATE, OVERSIZED, EMPTY, NAN_FLOOD,
           UNKNOWN_SIGNAL, BAD_TIMESTAMP, BAD_SEX, BAD_AGE, BAD_BED_ID, OUT_OF_RANGE, OUTPUT_SIGNAL)

# Optional header keys of OUTPUT chunks (docs/wire-format.md, "Output metadata"): a v1 reader that does not know
# them ignores them and sees the same chunk. key -> (types, check, what it must be)
QUALITY_FLAGS = ("good", "degraded")  # an unusable span is never published
MAX_MODEL_LEN = 64
OUTPUT_META = {
    "synthetic": ((bool,), lambda v: True, "true or false"),
    "quality": ((int, float), lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "quality_flag": ((str,), lambda v: v in QUALITY_FLAGS, f"one of {', '.join(QUALITY_FLAGS)}"),
    "quality_reason": ((str,), lambda v: 0 < len(v) <= 32, "1-32 chars (operators.processing.quality.REASONS)"),
    "confidence": ((int, float), lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "context_used": ((bool,), lambda v: True, "true or false"),
    "model": ((str,), lambda v: 0 < len(v) <= MAX_MODEL_LEN, f"1-{MAX_MODEL_LEN} chars"),
}

REQUIRED_FIELDS = ("bed_id", "signal", "rate_hz", "start_ns", "seq", "samples")
JSON = "json"
BINARY = "binary"


@dataclass
class Chunk:
    """A run of consecutive samples of one signal of one bed."""

    bed_id: str
    signal: str  # e.g. "PLETH", "II" (lead II ECG), "II_SYNTH"
    rate_hz: float
    start_ns: int  # timestamp of samples[0], ns since the Unix epoch
    seq: int  # per (bed, signal) sequence number, +1 per chunk
    samples: np.ndarray  # float32
    units: str = ""
    age: float | None = None
    sex: str | None = None  # "M" / "F"
    # Output chunks only (keys of OUTPUT_META): synthetic, quality, quality_flag, quality_reason, confidence,
    # context_used, model.
    meta: dict = field(default_factory=dict)

    def end_ns(self) -> int:
        """Timestamp one sample period after the last sample."""
        return int(grid_ns(self.start_ns, self.rate_hz, len(self.samples)))


class WireError(ValueError):
    """Invalid message. `reason` is one of `REASONS`; `detail` says what exactly, for humans."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def to_dict(self) -> dict:
        """`{"reason": ..., "detail": ...}` (JSON-ready)."""
        return {"reason": self.reason, "detail": self.detail}


@dataclass
class DecodeResult:
    """A decoded chunk, with how it was encoded and how much was repaired."""

    chunk: Chunk
    encoding: str  # JSON or BINARY
    repaired: int  # non-finite samples replaced by linear interpolation


def message_key(chunk: Chunk) -> bytes:
    """Kafka message key: the bed id, so all chunks of one bed stay ordered on one partition.

    Parameters
    ----------
    chunk : Chunk
        Any chunk.
    """
    return chunk.bed_id.encode("utf-8")


def is_known_signal(name: str) -> bool:
    """A signal the wire carries: a base signal, or an output name (base + `_SYNTH`/`_SR`)."""
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name in WIRE_SIGNALS


def is_input_signal(name: str) -> bool:
    """A signal a monitor may send: a base signal. Output names are refused as input, or the worker would
    translate its own outputs again (`PLETH_SR` -> `PLETH_SR_SR`, which no topic carries)."""
    return name in WIRE_SIGNALS


# ------------------------------------------------------------------ encode


def nonfinite_repairable(n_nonfinite: int, n_samples: int) -> bool:
    """Whether decoding repairs a chunk of `n_samples` with `n_nonfinite` non-finite samples (by linear
    interpolation) instead of rejecting it as `nan_flood`: at most `MAX_NONFINITE_FRACTION` of them.

    Parameters
    ----------
    n_nonfinite : int
        Non-finite samples (NaN, +-inf) in the chunk.
    n_samples : int
        All samples in the chunk.
    """
    return n_nonfinite <= MAX_NONFINITE_FRACTION * n_samples


def encode_json(chunk: Chunk) -> bytes:
    """UTF-8 JSON object; non-finite samples become `null`. Validates first (raises WireError).

    Parameters
    ----------
    chunk : Chunk
        The chunk to encode.
    """
    samples = _validate(chunk, repair=False)
    values = samples.tolist()  # float32 -> float64 is exact, so decoding gives back identical float32
    if not np.all(np.isfinite(samples)):
        values = [v if math.isfinite(v) else None for v in values]
    obj = {"v": VERSION, **_header(chunk), "samples": values}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_binary(chunk: Chunk) -> bytes:
    """MAGIC | uint32 LE header length | msgpack header | float32 LE samples. Validates first (raises WireError).

    Parameters
    ----------
    chunk : Chunk
        The chunk to encode.
    """
    samples = _validate(chunk, repair=False)
    header = msgpack.packb({"v": VERSION, **_header(chunk), "n": int(samples.size)}, use_bin_type=True)
    return b"".join((MAGIC, _HEADER_LEN.pack(len(header)), header, samples.astype("<f4", copy=False).tobytes()))


def _header(chunk: Chunk) -> dict:
    return {
        "bed_id": chunk.bed_id,
        "signal": chunk.signal,
        "rate_hz": float(chunk.rate_hz),
        "start_ns": int(chunk.start_ns),
        "seq": int(chunk.seq),
        "units": chunk.units or "",
        "age": None if chunk.age is None else float(chunk.age),
        "sex": chunk.sex,
        **{k: chunk.meta[k] for k in OUTPUT_META if chunk.meta.get(k) is not None},
    }


# ------------------------------------------------------------------ decode


def decode(data: bytes) -> Chunk:
    """Decode and validate a JSON or binary message (auto-detected); raises WireError, never anything else.

    Parameters
    ----------
    data : bytes
        A message value.
    """
    return decode_result(data).chunk


def decode_input(data: bytes) -> DecodeResult:
    """`decode_result` for the worker's input: also refuses output signal names (`OUTPUT_SIGNAL`)."""
    res = decode_result(data)
    if not is_input_signal(res.chunk.signal):
        raise WireError(OUTPUT_SIGNAL, f"signal {res.chunk.signal!r} is an output of this service, not an input "
                                       f"(inputs: {', '.join(sorted(WIRE_SIGNALS))})")
    return res


def decode_result(data: bytes, repair: bool = True) -> DecodeResult:
    """Like `decode`, also reporting the encoding and how many samples were interpolated.

    Parameters
    ----------
    data : bytes
        A message value.
    repair : bool
        Interpolate a few non-finite samples (input); False keeps them as NaN (a reader of the output topics,
        where a missing output sample stays missing).
    """
    try:
        return _decode_result(data, repair)
    except WireError:
        raise
    except RecursionError:  # a C-level guard may trip past json's own: deep nesting anywhere
        raise WireError(BAD_JSON, "nesting too deep") from None
    except Exception as exc:  # the contract is WireError only; a case we did not foresee still gets a reason
        raise WireError(BAD_ENCODING, f"undecodable message ({type(exc).__name__}: {str(exc)[:200]})") from None


def _decode_result(data: bytes, repair: bool) -> DecodeResult:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(BAD_ENCODING, f"message must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.strip():
        raise WireError(EMPTY, "empty message")
    if data.startswith(MAGIC):
        fields, encoding = _parse_binary(data), BINARY
    elif data[:3] == MAGIC[:3] and len(data) >= 4:
        raise WireError(BAD_ENCODING, f"unsupported binary format version {data[3]}")
    else:
        fields, encoding = _parse_json(data), JSON
    chunk = _build(fields)
    repaired = _validate(chunk, repair=repair)
    n_bad = int(np.count_nonzero(~np.isfinite(chunk.samples))) if repair else 0
    chunk.samples = repaired
    return DecodeResult(chunk=chunk, encoding=encoding, repaired=n_bad)


def _parse_json(data: bytes) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(BAD_ENCODING, f"neither binary (no {MAGIC!r} prefix) nor UTF-8 JSON: {exc}") from None
    try:
        obj = json.loads(text, parse_constant=refuse_json_constant)
    except ValueError as exc:
        raise WireError(BAD_JSON, f"invalid JSON: {exc}") from None
    except RecursionError:  # e.g. 100,000 nested '['
        raise WireError(BAD_JSON, "invalid JSON: nesting too deep") from None
    if not isinstance(obj, dict):
        raise WireError(BAD_JSON, f"top level must be an object, got {type(obj).__name__}")
    _check_version(obj)
    if "samples" in obj:
        obj["samples"] = _json_samples(obj["samples"])
    return obj


def refuse_json_constant(token: str):
    """Python's JSON reader takes NaN, Infinity and -Infinity; JSON (RFC 8259) has none of them, and other readers
    of the topic fail on them, so a message holding one is not JSON."""
    raise ValueError(f"{token} is not JSON (RFC 8259); write null for an invalid or missing value")


def _json_samples(values) -> np.ndarray:
    if not isinstance(values, list):
        raise WireError(WRONG_TYPE, f"samples must be an array of numbers, got {type(values).__name__}")
    if any(isinstance(v, bool) for v in values):  # np.array would read [1, true, false] as 1, 1, 0
        raise WireError(WRONG_TYPE, "samples must contain only numbers or null, not true/false")
    try:
        arr = np.array(values)
    except ValueError as exc:  # ragged nesting
        raise WireError(WRONG_TYPE, f"samples must be a flat array of numbers: {exc}") from None
    if arr.dtype == object:  # nulls (non-finite samples) mixed with numbers, or integers beyond int64
        if any(not (v is None or _is_number(v)) for v in values):
            raise WireError(WRONG_TYPE, "samples must contain only numbers or null")
        # _as_float: an integer past float64 (JSON allows any) is out of range, not an OverflowError
        arr = np.array([np.nan if v is None else _as_float(v) for v in values], dtype=np.float64)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "fiu"):
        raise WireError(WRONG_TYPE, "samples must be a flat array of numbers or null")
    # Range-checked before the float32 cast, which would turn 1e39 into inf and so into a "repaired" sample. An
    # inf here was a number (1e400, a huge integer), not a null: out of range too.
    _check_range(arr, allow_inf=False)
    return arr.astype(np.float32)


def _check_range(arr: np.ndarray, allow_inf: bool = True) -> None:
    """Refuse finite samples beyond `MAX_ABS_SAMPLE` (and infinities unless `allow_inf`; NaN is repaired later)."""
    with np.errstate(invalid="ignore"):  # a signalling NaN (binary payload) warns when widened
        a = np.abs(arr.astype(np.float64, copy=False))
    over = a > MAX_ABS_SAMPLE
    if allow_inf:
        over &= np.isfinite(a)
    if over.any():
        i = int(np.argmax(over))
        raise WireError(OUT_OF_RANGE, f"{int(over.sum())} sample(s) beyond +-{MAX_ABS_SAMPLE:g} "
                                      f"(first at index {i})")


def _parse_binary(data: bytes) -> dict:
    offset = len(MAGIC) + _HEADER_LEN.size
    if len(data) < offset:
        raise WireError(BAD_ENCODING, "truncated binary message (no header length)")
    (hlen,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    if offset + hlen > len(data):
        raise WireError(BAD_ENCODING, f"header length {hlen} exceeds message size {len(data)}")
    try:
        header = msgpack.unpackb(data[offset: offset + hlen], raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise WireError(BAD_ENCODING, f"bad msgpack header: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(BAD_ENCODING, "binary header must be a msgpack map")
    _check_version(header)
    if "samples" in header:
        raise WireError(BAD_ENCODING, "binary header must not carry 'samples' (they follow the header)")
    n = header.get("n")
    if n is None:
        raise WireError(MISSING_FIELD, "binary header lacks 'n' (sample count)")
    if not _is_int(n) or n < 0:
        raise WireError(WRONG_TYPE, f"'n' must be a non-negative integer, got {n!r}")
    payload = len(data) - offset - hlen
    if payload != 4 * n:
        raise WireError(BAD_ENCODING, f"header says {n} float32 samples ({4 * n} bytes) but {payload} bytes follow")
    header["samples"] = np.frombuffer(data, dtype="<f4", count=n, offset=offset + hlen).astype(np.float32)
    return header


def _check_version(obj: dict) -> None:
    v = obj.get("v", VERSION)
    if not _is_int(v) or v != VERSION:  # 1.0 == 1 and True == 1 in Python; the schema says integer 1
        raise WireError(BAD_ENCODING, f"unsupported wire version {v!r} (this reader speaks {VERSION})")


def _build(f: dict) -> Chunk:
    missing = [k for k in REQUIRED_FIELDS if k not in f or f[k] is None]
    if missing:
        raise WireError(MISSING_FIELD, f"missing field(s): {', '.join(missing)}")
    return Chunk(bed_id=f["bed_id"], signal=f["signal"], rate_hz=f["rate_hz"], start_ns=f["start_ns"], seq=f["seq"],
                 samples=f["samples"], units="" if f.get("units") is None else f["units"], age=f.get("age"),
                 sex=f.get("sex"), meta={k: f[k] for k in OUTPUT_META if f.get(k) is not None})


# ------------------------------------------------------------------ validation


def validate(chunk: Chunk) -> int:
    """Validate a chunk in place (what `decode` does); repairs a few non-finite samples.

    Parameters
    ----------
    chunk : Chunk
        Its `samples` are replaced by the validated float32 array.

    Returns
    -------
    int
        The number of samples interpolated.

    Raises
    ------
    WireError
        Naming the first problem.
    """
    n_bad = int(np.count_nonzero(~np.isfinite(np.asarray(chunk.samples, dtype=np.float32)))) if _array_ok(chunk) else 0
    chunk.samples = _validate(chunk, repair=True)
    return n_bad


def _array_ok(chunk: Chunk) -> bool:
    try:
        return np.asarray(chunk.samples).dtype.kind in "fiu"
    except Exception:
        return False


def _check_meta(meta) -> None:
    if not isinstance(meta, dict):
        raise WireError(WRONG_TYPE, f"output metadata must be a mapping, got {type(meta).__name__}")
    for key, value in meta.items():
        if key not in OUTPUT_META:
            raise WireError(WRONG_TYPE, f"unknown output metadata key {key!r} (known: {', '.join(OUTPUT_META)})")
        if value is None:
            continue
        types, ok, what = OUTPUT_META[key]
        number = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not number or (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            raise WireError(WRONG_TYPE, f"{key} must be {what}, got {value!r}")


def _validate(chunk: Chunk, repair: bool) -> np.ndarray:
    """Check every field; return the float32 samples (interpolated where non-finite if `repair`)."""
    _check_meta(chunk.meta)
    if not isinstance(chunk.bed_id, str):
        raise WireError(WRONG_TYPE, f"bed_id must be a string, got {type(chunk.bed_id).__name__}")
    if not BED_ID_PATTERN.fullmatch(chunk.bed_id):
        raise WireError(BAD_BED_ID, f"bed_id {chunk.bed_id[:80]!r} must be 1-{MAX_BED_ID_LEN} chars of [A-Za-z0-9_.:-]")
    if not isinstance(chunk.signal, str):
        raise WireError(WRONG_TYPE, f"signal must be a string, got {type(chunk.signal).__name__}")
    if not is_known_signal(chunk.signal):
        raise WireError(UNKNOWN_SIGNAL, f"signal {chunk.signal[:40]!r} not in {sorted(WIRE_SIGNALS)} "
                                        f"(optionally suffixed {'/'.join(OUTPUT_SUFFIXES)})")
    if not _is_number(chunk.rate_hz):
        raise WireError(WRONG_TYPE, f"rate_hz must be a number, got {type(chunk.rate_hz).__name__}")
    rate = _as_float(chunk.rate_hz)
    if not (math.isfinite(rate) and MIN_RATE_HZ <= rate <= MAX_RATE_HZ):
        raise WireError(BAD_RATE, f"rate_hz {rate!r} outside [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}] Hz")
    if not _is_int(chunk.seq):
        raise WireError(WRONG_TYPE, f"seq must be an integer, got {type(chunk.seq).__name__}")
    if chunk.seq < 0:
        raise WireError(WRONG_TYPE, f"seq must be >= 0, got {chunk.seq}")
    if not isinstance(chunk.units, str):
        raise WireError(WRONG_TYPE, f"units must be a string, got {type(chunk.units).__name__}")
    if len(chunk.units) > MAX_UNITS_LEN:
        raise WireError(WRONG_TYPE, f"units longer than {MAX_UNITS_LEN} chars")
    try:  # JSON admits lone surrogates ("\ud800"); the units travel on into outputs, which must encode them
        chunk.units.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError(WRONG_TYPE, f"units {chunk.units!r} is not valid Unicode text") from None
    if chunk.age is not None and not (_is_number(chunk.age) and MIN_AGE <= _as_float(chunk.age) <= MAX_AGE):
        raise WireError(BAD_AGE, f"age {chunk.age!r} must be null or a number in [{MIN_AGE:g}, {MAX_AGE:g}]")
    if chunk.sex is not None and chunk.sex not in SEXES:
        raise WireError(BAD_SEX, f"sex {chunk.sex!r} must be null, 'M' or 'F'")
    samples = _samples_array(chunk.samples)
    n = samples.size
    if n == 0:
        raise WireError(EMPTY, "no samples")
    if n > MAX_SAMPLES:
        raise WireError(OVERSIZED, f"{n} samples > {MAX_SAMPLES}")
    if n / rate > MAX_DURATION_S:
        raise WireError(OVERSIZED, f"{n} samples at {rate:g} Hz = {n / rate:.1f} s > {MAX_DURATION_S:g} s")
    if not _is_int(chunk.start_ns):
        raise WireError(WRONG_TYPE if not _is_number(chunk.start_ns) else BAD_TIMESTAMP,
                        f"start_ns must be an integer (ns since the Unix epoch), got {chunk.start_ns!r}")
    if not (0 <= chunk.start_ns <= MAX_START_NS - int(math.ceil(n * 1e9 / rate))):
        raise WireError(BAD_TIMESTAMP, f"start_ns {chunk.start_ns} outside [0, 2^63) ns for this chunk")
    finite = np.isfinite(samples)
    n_bad = n - int(np.count_nonzero(finite))
    if not nonfinite_repairable(n_bad, n):
        raise WireError(NAN_FLOOD, f"{n_bad}/{n} samples are not finite (> {MAX_NONFINITE_FRACTION:.0%})")
    if n_bad and repair:
        samples = fill_nonfinite(samples)[0]  # linear between finite neighbours; edges hold the nearest one
    return samples


def _samples_array(samples) -> np.ndarray:
    try:
        arr = np.asarray(samples)
    except Exception as exc:
        raise WireError(WRONG_TYPE, f"samples not an array: {exc}") from None
    if arr.ndim != 1:
        raise WireError(WRONG_TYPE, f"samples must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "fiu":
        raise WireError(WRONG_TYPE, f"samples must be numbers, got dtype {arr.dtype}")
    _check_range(arr)  # before the float32 cast, which would make 1e39 an inf (a repairable sample)
    return arr.astype(np.float32, copy=False)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _as_float(v) -> float:
    """float(v), with an integer too large for a float (JSON allows any) as inf, so range checks reject it."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
