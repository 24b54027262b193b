"""Property test: `wire.decode` answers every input with a Chunk or a `WireError` carrying a known reason.

Before, fuzzing found RecursionError (deep JSON nesting) and OverflowError (a huge integer among the samples)
escaping the decoder: the worker dead-lettered them as `decode_error`, every other caller crashed. The decoder's
last-resort net (`bad_encoding: undecodable message ...`) must not be what catches anything here either: each
case needs its own reason.

Two parts: hypothesis properties (they shrink a failure to a small example; 4 x 400, derandomized so CI runs are
repeatable), and a seeded fuzz loop of 16,000 messages from the same kinds of awkward values, which costs a
fraction of hypothesis' per-example overhead (~3 ms here) and so gives the volume in about a second.
"""
from __future__ import annotations

import json
import random
import struct

import msgpack
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stream import wire  # noqa: E402

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD = {"v": 1, "bed_id": "bed-001", "signal": "PLETH", "rate_hz": 125.0, "start_ns": 1_700_000_000_000_000_000,
        "seq": 3, "units": "NU", "age": 70.0, "sex": "F"}

# Values of every JSON/msgpack kind, with the awkward ones over-represented: huge integers, float extremes,
# NaN/inf, falsy non-strings, lone surrogates, nesting.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, 1, -1, 2**63, 2**64, 10**308, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 3.4e38, -3.4e38, 1e39, 1e12, 1e-45, 2000.0, 2000.5]),
    st.text(max_size=20), st.sampled_from(["", "II", "PLETH_SR", "II_SYNTH", "M", "F", "\ud800", "bed 1"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abn"), inner,
                                                                                           max_size=2), max_leaves=4)
sample_lists = st.one_of(
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers()), max_size=30),
    st.lists(scalars, max_size=6),
    values,
)
field_names = st.sampled_from(list(GOOD) + ["samples", "n"])


def check(data: bytes) -> None:
    for fn in (wire.decode, lambda d: wire.decode_input(d).chunk):
        try:
            chunk = fn(data)
        except wire.WireError as exc:
            assert exc.reason in wire.REASONS, exc
            assert exc.detail and "undecodable message" not in exc.detail, exc
            continue
        s = chunk.samples
        assert isinstance(s, np.ndarray) and s.dtype == np.float32 and s.ndim == 1 and 0 < s.size <= wire.MAX_SAMPLES
        assert np.all(np.isfinite(s)) and np.all(np.abs(s) <= wire.MAX_ABS_SAMPLE)
        assert isinstance(chunk.units, str) and isinstance(chunk.bed_id, str) and wire.is_known_signal(chunk.signal)


def binary(header, payload: bytes) -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return wire.MAGIC + struct.pack("<I", len(head)) + head + payload


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    check(data)
    check(wire.MAGIC + data)


@FUZZ
@given(st.dictionaries(field_names, values, max_size=4), sample_lists, st.booleans())
def test_json_objects_with_arbitrary_fields(overrides, samples, as_text_constants):
    obj = {**GOOD, "samples": samples, **overrides}
    try:
        text = json.dumps(obj, allow_nan=as_text_constants)  # NaN/Infinity tokens are not JSON, Python reads them
    except (ValueError, TypeError):
        return
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    check(data)


@FUZZ
@given(st.dictionaries(field_names, values, max_size=4), st.binary(max_size=64),
       st.one_of(st.none(), st.integers(-3, 20), st.sampled_from([2**32, 2**64, -(2**63)])))
def test_binary_headers_with_arbitrary_fields(overrides, payload, n):
    header = {**GOOD, "n": len(payload) // 4 if n is None else n, **overrides}
    try:
        data = binary(header, payload)
    except (TypeError, ValueError, OverflowError):  # msgpack cannot carry it (e.g. ints past 64 bits)
        return
    check(data)


@FUZZ
@given(st.sampled_from(["json", "binary"]), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                     min_size=1, max_size=4), st.integers(0, 10_000))
def test_mutated_valid_messages(encoding, flips, cut):
    x = np.sin(np.arange(40, dtype=np.float32) / 5)
    chunk = wire.Chunk("bed-7", "II", 125.0, 1_700_000_000_000_000_000, 0, x, "mV", 50.0, "M")
    data = bytearray(wire.encode_json(chunk) if encoding == "json" else wire.encode_binary(chunk))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    check(bytes(data[: max(1, cut % (len(data) + 1))]))
    check(bytes(data))


def test_nesting_beyond_the_recursion_limit():
    for opener in (b"[", b'{"a":'):
        check(opener * 300_000)
        check(b'{"samples":' + b"[" * 300_000 + b"]" * 300_000 + b"}")


# ------------------------------------------------------------------ seeded volume fuzz
AWKWARD = [None, True, False, 0, 1, -1, 2**63, 2**64, 10**308, 10**400, -(10**400), 0.0, 1.0, 3.4e38, -3.4e38, 1e39,
           1e12, 1e-45, 2000.0, 2000.5, float("nan"), float("inf"), "", "II", "PLETH_SR", "II_SYNTH", "M", "F",
           "\ud800", "bed 1", "x" * 100, [], {}, [1.0], [[1.0, 2.0]], {"a": 1}, [None] * 3]


def _awkward(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.6 or depth > 2:
        return rng.choice(AWKWARD)
    if r < 0.75:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.randrange(-(2**70), 2**70)
    if r < 0.9:
        return [_awkward(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice("abn"): _awkward(rng, depth + 1) for _ in range(rng.randrange(3))}


def _fuzz_message(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    fields = dict(GOOD)
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(list(GOOD) + ["samples", "n"])
        if rng.random() < 0.2:
            fields.pop(key, None)
        else:
            fields[key] = _awkward(rng)
    if kind == 0:  # JSON object
        samples = [rng.choice([_awkward(rng), rng.uniform(-2, 2)]) for _ in range(rng.randrange(40))]
        fields.setdefault("samples", samples)
        text = json.dumps(fields)  # allow_nan: NaN/Infinity tokens are not JSON, but Python's reader takes them
        return text.encode("utf-8", "surrogatepass")
    if kind == 1:  # binary message
        fields.pop("samples", None)
        payload = rng.randbytes(4 * rng.randrange(20) + rng.choice([0, 0, 0, 1, 3]))
        fields.setdefault("n", len(payload) // 4)
        try:
            return binary(fields, payload)
        except (TypeError, ValueError, OverflowError):  # msgpack cannot carry it (e.g. ints past 64 bits)
            return binary(GOOD | {"n": 0}, b"")
    if kind == 2:  # a valid message with bytes changed, cut or inserted
        x = np.asarray([rng.uniform(-5, 5) for _ in range(30)], np.float32)
        chunk = wire.Chunk("bed-7", "II", 125.0, 1_700_000_000_000_000_000, 0, x, "mV", 50.0, "M")
        data = bytearray(wire.encode_json(chunk) if rng.random() < 0.5 else wire.encode_binary(chunk))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:]
            else:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 5))
            if not data:
                break
        return bytes(data)
    return rng.randbytes(rng.randrange(64)) if rng.random() < 0.5 else wire.MAGIC + rng.randbytes(rng.randrange(64))


def test_seeded_fuzz_of_16000_messages():
    rng = random.Random(20260418)
    n = 16_000
    for _ in range(n):
        check(_fuzz_message(rng))
