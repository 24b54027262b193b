"""Wire format: round trips, every reason code, NaN repair, JSON Schema agreement."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest

from stream import wire
from stream.wire import Chunk, WireError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "wire-format.schema.json"
T0 = 1_700_000_000_123_456_789  # > 2^53: must survive JSON exactly


def make(**kw) -> Chunk:
    base = dict(bed_id="bed-001", signal="PLETH", rate_hz=125.0, start_ns=T0, seq=7,
                samples=np.sin(np.arange(250) / 10).astype(np.float32), units="NU", age=88.0, sex="M")
    base.update(kw)
    return Chunk(**base)


def json_obj(**kw) -> dict:
    return json.loads(wire.encode_json(make(**kw)))


def reason_of(data: bytes) -> str:
    with pytest.raises(WireError) as err:
        wire.decode(data)
    assert err.value.detail  # always a human-readable detail
    return err.value.reason


@pytest.mark.parametrize("encode", [wire.encode_json, wire.encode_binary])
def test_round_trip_is_exact(encode):
    c = make(samples=(np.random.default_rng(0).standard_normal(1000) * 1e-3).astype(np.float32))
    res = wire.decode_result(encode(c))
    assert res.encoding == ("json" if encode is wire.encode_json else "binary")
    assert res.repaired == 0
    out = res.chunk
    assert out.samples.dtype == np.float32
    np.testing.assert_array_equal(out.samples, c.samples)  # bit-exact, including float32 -> JSON -> float32
    assert (out.bed_id, out.signal, out.rate_hz, out.start_ns, out.seq, out.units, out.age, out.sex) == \
        (c.bed_id, c.signal, c.rate_hz, T0, 7, "NU", 88.0, "M")
    assert out.end_ns() == c.end_ns() == T0 + 2 * 10**9 * 4  # 1000 samples at 125 Hz = 8 s


@pytest.mark.parametrize("encode", [wire.encode_json, wire.encode_binary])
def test_optional_fields_and_output_signals(encode):
    for sig in ("II_SYNTH", "PLETH_SR", "ABP"):
        out = wire.decode(encode(make(signal=sig, units="", age=None, sex=None)))
        assert (out.signal, out.units, out.age, out.sex) == (sig, "", None, None)


def test_binary_is_compact_and_layout_is_documented():
    c = make(samples=np.random.default_rng(1).standard_normal(5000).astype(np.float32))
    data = wire.encode_binary(c)
    assert data.startswith(wire.MAGIC)
    (hlen,) = struct.unpack_from("<I", data, 4)
    header = msgpack.unpackb(data[8: 8 + hlen])
    assert header["n"] == 5000 and header["bed_id"] == "bed-001" and header["start_ns"] == T0
    assert np.array_equal(np.frombuffer(data[8 + hlen:], "<f4"), c.samples)
    assert len(data) < 4 * 5000 + 200
    assert len(data) * 3 < len(wire.encode_json(c))


def test_message_key_is_bed_id():
    assert wire.message_key(make(bed_id="icu3:bed-17")) == b"icu3:bed-17"


def test_few_nan_are_interpolated_and_counted():
    x = np.arange(100, dtype=np.float32)
    x[[0, 10, 11, 50]] = np.nan
    x[70] = np.inf
    for data in (wire.encode_binary(make(samples=x)), wire.encode_json(make(samples=x))):
        res = wire.decode_result(data)
        assert res.repaired == 5
        assert np.all(np.isfinite(res.chunk.samples))
        expect = np.arange(100, dtype=np.float32)
        expect[0] = 1.0  # edge holds the nearest finite value
        np.testing.assert_allclose(res.chunk.samples, expect)
    assert b"null" in wire.encode_json(make(samples=x))  # JSON has no NaN literal


def test_validate_repairs_in_place():
    c = make(samples=np.array([1, np.nan, 3, 4, 5, 6], dtype=np.float32))
    assert wire.validate(c) == 1
    np.testing.assert_array_equal(c.samples, [1, 2, 3, 4, 5, 6])


# ------------------------------------------------------------------ reason codes (decode side)


def test_bad_json():
    assert reason_of(b"{not json") == wire.BAD_JSON
    assert reason_of(b"[1, 2, 3]") == wire.BAD_JSON


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_literals_are_bad_json(token):
    """JSON (RFC 8259) has no NaN or Infinity, though Python's reader takes them: a producer that writes them is not
    writing JSON, and other readers of the topic would fail on the message. All three are `bad_json`, wherever they
    stand (an invalid sample is `null`)."""
    good = json.dumps(json_obj())
    with_sample = good.replace('"samples": [', f'"samples": [{token}, ', 1)
    assert with_sample != good
    with pytest.raises(WireError) as err:
        wire.decode(with_sample.encode())
    assert err.value.reason == wire.BAD_JSON and token.lstrip("-") in err.value.detail and "null" in err.value.detail
    assert reason_of(good.replace('"age": 88.0', f'"age": {token}').encode()) == wire.BAD_JSON
    assert wire.decode(good.replace('"units": "NU"', f'"units": "{token}"').encode()).units == token  # a string


def test_bad_encoding():
    assert reason_of(b"\xff\xfe\x00garbage") == wire.BAD_ENCODING
    good = wire.encode_binary(make())
    assert reason_of(good[:-3]) == wire.BAD_ENCODING  # truncated samples
    assert reason_of(good[:6]) == wire.BAD_ENCODING  # truncated header length
    assert reason_of(wire.MAGIC + struct.pack("<I", 3) + b"\xc1\xc1\xc1") == wire.BAD_ENCODING  # not msgpack
    assert reason_of(b"WBC\x09" + good[4:]) == wire.BAD_ENCODING  # unknown version
    assert reason_of(json.dumps({**json_obj(), "v": 2}).encode()) == wire.BAD_ENCODING


def test_missing_field():
    for field in wire.REQUIRED_FIELDS:
        obj = json_obj()
        del obj[field]
        with pytest.raises(WireError) as err:
            wire.decode(json.dumps(obj).encode())
        assert err.value.reason == wire.MISSING_FIELD and field in err.value.detail


@pytest.mark.parametrize("field,value", [("rate_hz", "125"), ("seq", 1.5), ("seq", -1), ("samples", "abc"),
                                         ("samples", [1, "x"]), ("samples", [[1, 2], [3, 4]]), ("bed_id", 5),
                                         ("signal", ["II"]), ("start_ns", "now"), ("units", 3)])
def test_wrong_type(field, value):
    assert reason_of(json.dumps({**json_obj(), field: value}).encode()) == wire.WRONG_TYPE


@pytest.mark.parametrize("rate", [0.5, 2000.5, -125, 0])
def test_bad_rate(rate):
    assert reason_of(json.dumps({**json_obj(), "rate_hz": rate}).encode()) == wire.BAD_RATE
    assert wire.decode(json.dumps({**json_obj(), "rate_hz": 2000}).encode()).rate_hz == 2000


def test_oversized():
    at_limit = make(rate_hz=2000.0, samples=np.zeros(wire.MAX_SAMPLES, np.float32))
    assert wire.decode(wire.encode_binary(at_limit)).samples.size == wire.MAX_SAMPLES
    too_many = make(rate_hz=2000.0, samples=np.zeros(65537, np.float32))
    too_long = make(rate_hz=25.0, samples=np.zeros(25 * 60 + 1, np.float32))
    for c in (too_many, too_long):
        with pytest.raises(WireError) as err:
            wire.encode_binary(c)  # encoders refuse too
        assert err.value.reason == wire.OVERSIZED
    assert wire.decode(wire.encode_binary(make(rate_hz=25.0, samples=np.zeros(25 * 60, np.float32)))).seq == 7


def test_oversized_binary_built_by_hand_is_rejected():
    header = msgpack.packb({"bed_id": "b", "signal": "II", "rate_hz": 2000.0, "start_ns": 1, "seq": 0, "n": 70000})
    data = wire.MAGIC + struct.pack("<I", len(header)) + header + np.zeros(70000, "<f4").tobytes()
    assert reason_of(data) == wire.OVERSIZED


def test_empty():
    assert reason_of(b"") == wire.EMPTY
    assert reason_of(json.dumps({**json_obj(), "samples": []}).encode()) == wire.EMPTY


def test_nan_flood():
    x = np.ones(100, np.float32)
    x[:21] = np.nan
    assert reason_of(json.dumps({**json_obj(), "samples": [None] * 21 + [1.0] * 79}).encode()) == wire.NAN_FLOOD
    with pytest.raises(WireError) as err:
        wire.encode_binary(make(samples=x))
    assert err.value.reason == wire.NAN_FLOOD
    x[20] = 1.0  # exactly 20 % is still repaired
    assert wire.decode_result(json.dumps({**json_obj(), "samples": [None] * 20 + [1.0] * 80}).encode()).repaired == 20


@pytest.mark.parametrize("signal", ["ECG", "pleth", "II_FOO", "_SR", "II_SR_SR", ""])
def test_unknown_signal(signal):
    assert reason_of(json.dumps({**json_obj(), "signal": signal}).encode()) == wire.UNKNOWN_SIGNAL


@pytest.mark.parametrize("ts", [-1, 1.7e18, 2**63])
def test_bad_timestamp(ts):
    assert reason_of(json.dumps({**json_obj(), "start_ns": ts}).encode()) == wire.BAD_TIMESTAMP


@pytest.mark.parametrize("sex", ["m", "X", "male", 1])
def test_bad_sex(sex):
    assert reason_of(json.dumps({**json_obj(), "sex": sex}).encode()) == wire.BAD_SEX


@pytest.mark.parametrize("age", [-1, 151, "88", True])
def test_bad_age(age):
    assert reason_of(json.dumps({**json_obj(), "age": age}).encode()) == wire.BAD_AGE


@pytest.mark.parametrize("bed", ["", "a" * 65, "bed 1", "bed/1", "bett-ü"])
def test_bad_bed_id(bed):
    assert reason_of(json.dumps({**json_obj(), "bed_id": bed}).encode()) == wire.BAD_BED_ID
    assert wire.decode(json.dumps({**json_obj(), "bed_id": "a" * 64}).encode()).bed_id == "a" * 64


def test_every_reason_code_is_exercised():
    # Guard: a new reason code must get a test above (this list mirrors the tests in this file).
    tested = {wire.BAD_JSON, wire.BAD_ENCODING, wire.MISSING_FIELD, wire.WRONG_TYPE, wire.BAD_RATE, wire.OVERSIZED,
              wire.EMPTY, wire.NAN_FLOOD, wire.UNKNOWN_SIGNAL, wire.BAD_TIMESTAMP, wire.BAD_SEX, wire.BAD_AGE,
              wire.BAD_BED_ID, wire.OUT_OF_RANGE, wire.OUTPUT_SIGNAL}
    assert tested == set(wire.REASONS)
    doc = (SCHEMA_PATH.parent / "wire-format.md").read_text()
    assert all(f"`{r}`" in doc for r in wire.REASONS)


# ------------------------------------------------------------------ JSON Schema


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_encoder_output(validator):
    x = np.linspace(-1, 1, 500, dtype=np.float32)
    x[3] = np.nan
    for c in (make(), make(samples=x, age=None, sex=None, units=""), make(signal="II_SYNTH", bed_id="icu.3:b-1_x")):
        validator.validate(json.loads(wire.encode_json(c)))


@pytest.mark.parametrize("field,value", [("rate_hz", 0.5), ("signal", "ECG"), ("sex", "X"), ("age", 200),
                                         ("bed_id", "bed 1"), ("samples", []), ("start_ns", -5), ("seq", -1)])
def test_schema_and_decoder_agree_on_rejects(validator, field, value):
    obj = {**json_obj(), field: value}
    assert not validator.is_valid(obj)
    with pytest.raises(WireError):
        wire.decode(json.dumps(obj).encode())


def test_integers_too_large_for_a_float_are_range_errors_not_crashes():
    """JSON integers have no size limit; float() of 10**400 raised OverflowError past the WireError handling."""
    assert reason_of(json.dumps({**json_obj(), "rate_hz": 10**400}).encode()) == wire.BAD_RATE
    assert reason_of(json.dumps({**json_obj(), "rate_hz": -(10**400)}).encode()) == wire.BAD_RATE
    assert reason_of(json.dumps({**json_obj(), "age": 10**400}).encode()) == wire.BAD_AGE


def test_booleans_among_samples_and_units_that_are_not_unicode_are_refused():
    """[1, true, false] was read as 1, 1, 0; units "\\ud800" (valid JSON) passed and then crashed the output encoder
    on every restart."""
    assert reason_of(json.dumps({**json_obj(), "samples": [1.0, True, False] + [0.5] * 97}).encode()) == wire.WRONG_TYPE
    bad_units = json.dumps({**json_obj(), "units": "mV"}).replace('"mV"', '"\\ud800"').encode()
    assert reason_of(bad_units) == wire.WRONG_TYPE


def test_deep_nesting_is_bad_json_not_a_recursion_error():
    for depth in (10_000, 200_000):
        assert reason_of(b"[" * depth + b"]" * depth) == wire.BAD_JSON
        assert reason_of(b'{"samples":' + b"[" * depth + b"]" * depth + b"}") == wire.BAD_JSON


@pytest.mark.parametrize("value", [10**400, -(10**400), 1e39, -3.4e38, 2e12])
def test_samples_out_of_range_are_refused(value):
    """10**400 raised OverflowError out of decode; +-3.4e38 (float32's limit) passed and the translators' outputs
    then vanished as non-finite without any event. Both are refused before the float32 cast."""
    samples = [0.5] * 99 + [value]
    assert reason_of(json.dumps({**json_obj(), "samples": samples}).encode()) == wire.OUT_OF_RANGE
    assert reason_of(b'{"bed_id":"b","signal":"II","rate_hz":100,"start_ns":1,"seq":0,"samples":[1e400]}') \
        == wire.OUT_OF_RANGE  # a number beyond float64, not a null
    if abs(value) < 3.4e38:
        x = np.full(100, 0.5, np.float32)
        x[-1] = value
        with pytest.raises(WireError) as err:
            wire.encode_binary(make(samples=x))  # encoders refuse it, so the binary decoder is checked too
        assert err.value.reason == wire.OUT_OF_RANGE
        header = msgpack.packb({"bed_id": "b", "signal": "II", "rate_hz": 100.0, "start_ns": 1, "seq": 0, "n": 100})
        assert reason_of(wire.MAGIC + struct.pack("<I", len(header)) + header + x.astype("<f4").tobytes()) \
            == wire.OUT_OF_RANGE


def test_samples_at_the_range_limit_and_binary_infinities_still_decode():
    x = np.full(100, wire.MAX_ABS_SAMPLE, np.float64)
    x[1] = -wire.MAX_ABS_SAMPLE
    assert wire.decode(json.dumps({**json_obj(), "samples": x.tolist()}).encode()).samples.size == 100
    y = np.ones(100, np.float32)
    y[3] = np.inf  # binary carries IEEE non-finite samples: repaired, as documented
    header = msgpack.packb({"bed_id": "b", "signal": "II", "rate_hz": 100.0, "start_ns": 1, "seq": 0, "n": 100})
    assert wire.decode_result(wire.MAGIC + struct.pack("<I", len(header)) + header + y.astype("<f4").tobytes()).repaired == 1


@pytest.mark.parametrize("units", [0, False, [], {}, 0.0])
def test_falsy_non_string_units_are_wrong_type(units):
    """`units or ""` turned 0, false, [] and {} into "" and accepted them."""
    assert reason_of(json.dumps({**json_obj(), "units": units}).encode()) == wire.WRONG_TYPE


@pytest.mark.parametrize("v", [1.0, True, "1", [1]])
def test_version_must_be_the_integer_1(v):
    assert reason_of(json.dumps({**json_obj(), "v": v}).encode()) == wire.BAD_ENCODING
    header = msgpack.packb({"v": v, "bed_id": "b", "signal": "II", "rate_hz": 100.0, "start_ns": 1, "seq": 0, "n": 1})
    assert reason_of(wire.MAGIC + struct.pack("<I", len(header)) + header + b"\0\0\0\0") == wire.BAD_ENCODING


@pytest.mark.parametrize("encode", [wire.encode_json, wire.encode_binary])
@pytest.mark.parametrize("signal", ["PLETH_SR", "II_SYNTH", "II_SR"])
def test_output_signals_are_refused_as_input(encode, signal):
    """The worker's own outputs fed back as input were translated again (`PLETH_SR_SR`) and the result dropped."""
    data = encode(make(signal=signal))
    assert wire.decode(data).signal == signal  # a consumer of the output topics still decodes them
    with pytest.raises(WireError) as err:
        wire.decode_input(data)
    assert err.value.reason == wire.OUTPUT_SIGNAL and signal in err.value.detail
    assert wire.decode_input(encode(make(signal="PLETH"))).chunk.signal == "PLETH"


# ---------------------------------------------------------------- output metadata (docs/wire-format.md)
META = {"synthetic": True, "quality": 0.93, "quality_flag": "good", "quality_reason": "ok", "confidence": 0.81,
        "context_used": False, "model": "classic"}


@pytest.mark.parametrize("encode", [wire.encode_json, wire.encode_binary])
def test_output_metadata_round_trips_and_v1_fields_are_unchanged(encode):
    plain, tagged = make(signal="II_SYNTH"), make(signal="II_SYNTH", meta=dict(META))
    back = wire.decode(encode(tagged))
    assert back.meta == META
    ref = wire.decode(encode(plain))
    assert ref.meta == {}
    # what a v1 reader uses is identical: the keys are additions, `v` stays 1
    for f in ("bed_id", "signal", "rate_hz", "start_ns", "seq", "units", "age", "sex"):
        assert getattr(back, f) == getattr(ref, f)
    np.testing.assert_array_equal(back.samples, ref.samples)
    if encode is wire.encode_json:
        assert json.loads(encode(tagged))["v"] == 1


@pytest.mark.parametrize("key,value", [("quality", 1.5), ("quality", float("nan")), ("quality_flag", "unusable"),
                                       ("synthetic", "yes"), ("quality", True), ("model", ""), ("confidence", -0.1),
                                       ("colour", "red")])
def test_output_metadata_is_validated(key, value):
    with pytest.raises(WireError) as err:
        wire.encode_binary(make(meta={**META, key: value}))
    assert err.value.reason == "wrong_type" and key in err.value.detail


def test_schema_accepts_output_metadata(validator):
    validator.validate(json.loads(wire.encode_json(make(signal="II_SYNTH", meta=dict(META)))))
    assert not validator.is_valid({**json.loads(wire.encode_json(make(signal="II_SYNTH"))), "quality_flag": "unusable"})


def test_published_output_chunks_carry_their_quality():
    """sinks.encode_output: what the worker sends for a pipeline output."""
    from stream.results import OutputSeries
    from stream.sinks import encode_output

    out = OutputSeries(bed="bed-001", source_signal="PLETH", kind="synth", model="clmt", rate_hz=125.0,
                       times_ns=T0 + np.arange(250) * 8_000_000, values=np.sin(np.arange(250) / 9).astype(np.float32),
                       units="mV", quality=0.88, quality_flag="good", reason="ok", confidence=0.9, context_used=True)
    for binary in (True, False):
        c = wire.decode(encode_output(out, binary))
        assert c.signal == "II_SYNTH" and c.meta == {"synthetic": True, "quality": 0.88, "quality_flag": "good",
                                                     "quality_reason": "ok", "confidence": 0.9, "context_used": True,
                                                     "model": "clmt"}
    # the InfluxDB sink (stream.influxsink) rebuilds the series from the message: the quality point survives
    from stream.sinks import decode_output, output_lines

    assert [x for x in output_lines(decode_output(encode_output(out, True), {})) if x.startswith("quality,")] == \
        [x for x in output_lines(out) if x.startswith("quality,")]
