"""Worker settings: limits the wire format puts on output chunks, and SASL mechanisms that cannot work."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.samples import grid_ns
from stream import wire
from stream.config import ConfigError, Settings
from stream.pipeline import Pipeline, PipelineConfig

T0 = 1_700_000_000_000_000_000


class Identity:
    """Same-rate translator stand-in: output = input (only chunk sizes matter here)."""

    name = "identity"

    def translate(self, requests):
        return [np.asarray(r.source, np.float32)[: r.n_out] for r in requests]


def emitted_chunks(settings: Settings, rate_hz: float, seconds: float, signal: str = "PLETH") -> list[wire.Chunk]:
    """Push `seconds` of one signal through the pipeline as the worker would, flush, return the output chunks."""
    pipe = Pipeline(PipelineConfig.from_settings(settings), Identity())
    x = np.sin(np.arange(int(round(seconds * rate_hz))) / 50.0).astype(np.float32)
    per = int(rate_hz)  # 1 s input chunks
    outs = []
    for seq, a in enumerate(range(0, len(x), per)):
        pipe.push(wire.Chunk("bed-1", signal, rate_hz, int(grid_ns(T0, rate_hz, a)), seq, x[a:a + per]))
        outs += pipe.process().outputs
    pipe.flush_all()
    outs += pipe.process().outputs
    return [wire.Chunk(o.bed, o.topic_signal, o.rate_hz, int(o.times_ns[0]), o.seq, o.values) for o in outs]


def test_sr_target_above_the_wire_rate_is_refused():
    with pytest.raises(ConfigError, match=r"WAVEBRIDGE_SR_TARGET_HZ: 4000 Hz .*\[1, 2000\]"):
        Settings(window_s=90, sr_target_hz=4000)
    with pytest.raises(ConfigError, match="WAVEBRIDGE_SR_TARGET_HZ"):
        Settings(sr_target_hz=0.5, sr_below_hz=0.5)
    Settings(sr_target_hz=2000)


def test_window_longer_than_the_wire_chunk_duration_is_refused():
    with pytest.raises(ConfigError, match=r"WAVEBRIDGE_WINDOW_S: 90 s > 60 s"):
        Settings(window_s=90, tasks=("sr",))
    # hop + look-ahead are not the limit: a segment shorter than one window is flushed whole
    with pytest.raises(ConfigError, match="WAVEBRIDGE_WINDOW_S"):
        Settings(window_s=61, hop_s=2, lookahead_s=30, tasks=("sr",))
    Settings(window_s=60, tasks=("sr",))


def test_window_over_the_wire_sample_limit_at_the_highest_output_rate_is_refused():
    # ppg2ecg keeps the PPG's own rate, which the wire admits up to 2000 Hz: 40 s -> 80,000 samples
    with pytest.raises(ConfigError, match=r"WAVEBRIDGE_WINDOW_S: 40 s at 2000 Hz .*65536.*WINDOW_S <= 32\.768"):
        Settings(window_s=40)
    with pytest.raises(ConfigError, match=r"40 s at 1800 Hz"):
        Settings(window_s=40, tasks=("sr",), sr_target_hz=1800)
    Settings(window_s=40, tasks=("sr",))  # SR alone at 100 Hz: 4,000 samples
    Settings(window_s=wire.MAX_SAMPLES / wire.MAX_RATE_HZ)


def test_largest_accepted_window_emits_only_chunks_the_wire_accepts():
    s = Settings(window_s=wire.MAX_SAMPLES / wire.MAX_RATE_HZ, hop_s=2.0, lookahead_s=1.0, context_s=0.0)
    # just under one window, flushed: the longest chunk the pipeline emits, at the wire's top rate
    chunks = emitted_chunks(s, wire.MAX_RATE_HZ, s.window_s - 0.5)
    assert chunks and max(len(c.samples) for c in chunks) > (s.window_s - s.lookahead_s) * wire.MAX_RATE_HZ
    for c in chunks:
        wire.encode_binary(c)
    # the same input with a window the check refuses would be dropped by the worker
    too_big = Settings(window_s=32.768, hop_s=2.0, lookahead_s=1.0, context_s=0.0)
    object.__setattr__(too_big, "window_s", 40.0)  # bypass validation to show what it prevents
    with pytest.raises(wire.WireError, match="oversized"):
        for c in emitted_chunks(too_big, wire.MAX_RATE_HZ, 39.5):
            wire.encode_binary(c)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_oauthbearer_is_refused_with_a_clear_message(protocol):
    env = {"WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL": protocol, "WAVEBRIDGE_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
           "WAVEBRIDGE_KAFKA_SASL_USERNAME": "u", "WAVEBRIDGE_KAFKA_SASL_PASSWORD": "p"}
    with pytest.raises(ConfigError, match="WAVEBRIDGE_KAFKA_SASL_MECHANISM: OAUTHBEARER is not supported"):
        Settings.from_env(env)
    env["WAVEBRIDGE_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-512"
    assert Settings.from_env(env).sasl_mechanism == "SCRAM-SHA-512"


def test_configuration_doc_lists_only_accepted_sasl_mechanisms():
    from stream.config import SASL_MECHANISMS
    from tests.conftest import REPO

    row = next(ln for ln in (REPO / "docs" / "configuration.md").read_text().splitlines()
               if ln.startswith("| `WAVEBRIDGE_KAFKA_SASL_MECHANISM`"))
    assert "OAUTHBEARER" not in SASL_MECHANISMS
    assert "OAUTHBEARER` is refused" in row
    for mech in SASL_MECHANISMS:
        assert f"`{mech}`" in row


def test_gssapi_without_its_package_is_refused_up_front(monkeypatch):
    """GSSAPI is accepted only when the gssapi package is importable (the Kafka clients fail late without it)."""
    import importlib.util

    env = {"WAVEBRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "WAVEBRIDGE_KAFKA_SASL_MECHANISM": "GSSAPI"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gssapi" else real(name, *a))
    with pytest.raises(ConfigError, match="GSSAPI needs the 'gssapi' Python package"):
        Settings.from_env(env)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "gssapi" else real(name, *a))
    assert Settings.from_env(env).sasl_mechanism == "GSSAPI"


def test_translator_may_be_given_per_task_and_a_malformed_one_is_refused_at_start():
    assert Settings.from_env({"WAVEBRIDGE_TRANSLATOR": "ppg2ecg=classic,sr=clmt"}).translator == "ppg2ecg=classic,sr=clmt"
    with pytest.raises(ConfigError, match="WAVEBRIDGE_TRANSLATOR: .*names no translator for sr"):
        Settings.from_env({"WAVEBRIDGE_TRANSLATOR": "ppg2ecg=classic"})


@pytest.mark.parametrize("var, value", [("WINDOW_S", "nan"), ("IDLE_FLUSH_S", "nan"), ("BATCH_WAIT_S", "inf"),
                                        ("SESSION_TIMEOUT_S", "inf"), ("CONTEXT_S", "nan")])
def test_non_finite_numbers_are_refused_up_front(var, value):
    """NaN passes every `<= 0` check, so the worker accepted it and failed later, deep inside."""
    with pytest.raises(ConfigError, match=f"WAVEBRIDGE_{var}: must be a finite number"):
        Settings.from_env({f"WAVEBRIDGE_{var}": value})


def test_json_output_chunks_that_would_outgrow_a_kafka_request_are_refused():
    env = {"WAVEBRIDGE_OUTPUT_FORMAT": "json", "WAVEBRIDGE_WINDOW_S": "25.6"}  # 2000 Hz ppg2ecg: 51,200 samples
    with pytest.raises(ConfigError, match="OUTPUT_FORMAT=binary"):
        Settings.from_env(env)
    assert Settings.from_env(env | {"WAVEBRIDGE_OUTPUT_FORMAT": "binary"}).window_s == 25.6
    assert Settings.from_env({"WAVEBRIDGE_OUTPUT_FORMAT": "json"}).window_s == 8.0  # the default fits
    assert Settings.from_env(env | {"WAVEBRIDGE_WINDOW_S": "18"}).window_s == 18.0  # the largest it admits at 2000 Hz
    worst = -np.random.default_rng(0).random(36_000).astype(np.float32) / 7e4  # long float64 texts: "-1.23...e-05"
    assert len(wire.encode_json(wire.Chunk("b", "PLETH", 2000.0, 0, 0, worst))) < 900_000  # ... and it fits


def test_influx_sink_placement_and_its_own_group():
    s = Settings.from_env({"WAVEBRIDGE_GROUP_ID": "g"})
    assert (s.influx_sink, s.influx_sink_group) == ("worker", "g-influx")
    s = Settings.from_env({"WAVEBRIDGE_INFLUX_SINK": "separate", "WAVEBRIDGE_INFLUX_GROUP_ID": "sinks"})
    assert (s.influx_sink, s.influx_sink_group) == ("separate", "sinks")
    with pytest.raises(ConfigError, match="WAVEBRIDGE_INFLUX_SINK"):
        Settings.from_env({"WAVEBRIDGE_INFLUX_SINK": "thread"})
    with pytest.raises(ConfigError, match="WAVEBRIDGE_INFLUX_GROUP_ID"):  # would share the worker's offsets
        Settings.from_env({"WAVEBRIDGE_GROUP_ID": "g", "WAVEBRIDGE_INFLUX_GROUP_ID": "g"})


# ------------------------------------------------------------------ fail-fast validation (issue 18)
@pytest.mark.parametrize("env, needle", [
    ({"WAVEBRIDGE_TRANSLATOR": "foo"}, "WAVEBRIDGE_TRANSLATOR: translator spec 'foo' is not an alias"),
    ({"WAVEBRIDGE_TRANSLATOR": "ppg2ecg=classic,sr=no such"}, "WAVEBRIDGE_TRANSLATOR"),
    ({"WAVEBRIDGE_BROKER": "127.0.0.1:9092x"}, "WAVEBRIDGE_BROKER: '127.0.0.1:9092x': port '9092x' is not a number"),
    ({"WAVEBRIDGE_BROKER": "kafka://"}, "WAVEBRIDGE_BROKER: 'kafka://' is not host:port"),
    ({"WAVEBRIDGE_BROKER": "kafka://a:9092,kafka://b:70000"}, "port '70000'"),
    ({"WAVEBRIDGE_INFLUX_URL": "http://:8086"}, "WAVEBRIDGE_INFLUX_URL"),
    ({"WAVEBRIDGE_INFLUX_URL": "http://influx:80x"}, "WAVEBRIDGE_INFLUX_URL"),
    ({"WAVEBRIDGE_INFLUX_URL": "http://[::1"}, "WAVEBRIDGE_INFLUX_URL: 'http://[::1' is not a URL"),
    ({"WAVEBRIDGE_BROKER": "kafka://[::1"}, "WAVEBRIDGE_BROKER: 'kafka://[::1' is not host:port"),
    ({"WAVEBRIDGE_STATS_FILE": "/nonexistent/dir/stats.jsonl"}, "WAVEBRIDGE_STATS_FILE: '/nonexistent/dir/stats.jsonl'"),
    ({"WAVEBRIDGE_SESSION_TIMEOUT_S": "3", "WAVEBRIDGE_HEARTBEAT_S": "1"}, "WAVEBRIDGE_SESSION_TIMEOUT_S: 3 s"),
    ({"WAVEBRIDGE_TOPIC_SR": "wave bridge"}, "WAVEBRIDGE_TOPIC_SR"),
    ({"WAVEBRIDGE_TOPIC_PARTITIONS": "0"}, "WAVEBRIDGE_TOPIC_PARTITIONS"),
    ({"WAVEBRIDGE_CREATE_TOPICS": "sometimes"}, "WAVEBRIDGE_CREATE_TOPICS"),
    ({"WAVEBRIDGE_LOG_REPEAT_S": "-1"}, "WAVEBRIDGE_LOG_REPEAT_S"),
])
def test_values_that_used_to_fail_late_are_refused_up_front(env, needle):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_names_are_reported_with_the_closest_known_one():
    with pytest.raises(ConfigError, match=r"unknown setting WAVEBRIDGE_WINDOWS_S \(did you mean WAVEBRIDGE_WINDOW_S\?\)"):
        Settings.from_env({"WAVEBRIDGE_WINDOWS_S": "4"})
    with pytest.raises(ConfigError, match=r"settings WAVEBRIDGE_FOO, WAVEBRIDGE_INFLUX_TOKN \(did you mean "
                                          r"WAVEBRIDGE_INFLUX_TOKEN\?\)"):
        Settings.from_env({"WAVEBRIDGE_INFLUX_TOKN": "x", "WAVEBRIDGE_FOO": "1"})
    # names of compose and dev.sh that reach the worker's environment are not the worker's typos
    assert Settings.from_env({"WAVEBRIDGE_PARTITIONS": "8", "WAVEBRIDGE_CI": "1", "OTHER": "x"}).window_s == 8.0


def test_every_known_variable_is_documented():
    from pathlib import Path

    from stream.config import known_variables

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = sorted(v for v in known_variables() if f"`{v}`" not in doc)
    assert not missing, f"undocumented in docs/configuration.md: {missing}"


def test_an_empty_secret_file_is_refused(tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"WAVEBRIDGE_INFLUX_TOKEN_FILE: .* is empty"):
        Settings.from_env({"WAVEBRIDGE_INFLUX_TOKEN_FILE": str(tmp_path / "token")})


def test_broker_addresses_accept_ipv6_and_a_default_port():
    s = Settings.from_env({"WAVEBRIDGE_BROKER": "kafka://[::1]:9093,kafka://b"})
    assert s.bootstrap_servers == ["[::1]:9093", "b"]


def test_topic_creation_is_opt_in():
    assert Settings().create_topics is False
    s = Settings.from_env({"WAVEBRIDGE_CREATE_TOPICS": "true", "WAVEBRIDGE_TOPIC_PARTITIONS": "8",
                           "WAVEBRIDGE_TOPIC_REPLICATION": "3"})
    assert (s.create_topics, s.topic_partitions, s.topic_replication) == (True, 8, 3)


# ------------------------------------------------------------------ to_env: the inverse of from_env
def test_to_env_round_trips_through_from_env(tmp_path):
    cafile = tmp_path / "ca.pem"
    cafile.write_text("x")
    s = Settings(broker="kafka://a:9092,kafka://[::1]:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="u", sasl_password="p w", ssl_cafile=str(cafile), session_timeout_s=6.0, heartbeat_s=0.1,
                 topic_input="t.in", output_binary=False, window_s=7.3, hop_s=1.7, lookahead_s=0.0, batch_size=3,
                 influx_enabled=False, influx_token="tok", influx_group_id="sinks", tasks=("sr",), create_topics=True,
                 translator="ppg2ecg=classic,sr=passthrough", metrics_port=0, without_web=True, alarm_enabled=False,
                 sr_target_hz=250.0, sr_below_hz=200.0, stats_file=str(tmp_path / "stats.jsonl"))
    env = s.to_env()
    assert all(k.startswith("WAVEBRIDGE_") and isinstance(v, str) for k, v in env.items())
    assert env["WAVEBRIDGE_OUTPUT_FORMAT"] == "json" and env["WAVEBRIDGE_TASKS"] == "sr"
    assert env["WAVEBRIDGE_INFLUX_ENABLED"] == "false" and env["WAVEBRIDGE_KAFKA_SASL_PASSWORD"] == "p w"
    assert Settings.from_env(env) == s
    assert Settings().to_env() == {}  # defaults are left to the reader
    assert Settings.from_env(Settings(window_s=2.1 + 0.2, hop_s=0.1).to_env()).window_s == 2.1 + 0.2  # exact floats


def test_to_env_refuses_a_value_the_environment_cannot_carry():
    with pytest.raises(ConfigError, match="WAVEBRIDGE_INFLUX_ORG: '' cannot be carried"):
        Settings(influx_org="").to_env()
    with pytest.raises(ConfigError, match="WAVEBRIDGE_GROUP_ID"):
        Settings(group_id=" g").to_env()


def test_sr_signals_narrows_what_is_super_resolved_and_refuses_what_no_sr_model_knows():
    """`PipelineConfig.sr_signals` had no worker setting. A RESP or ABP named there would reach a translator that takes
    any signal but an ECG lead for a PPG (models/engine.py): refused up front instead."""
    from stream.pipeline import PipelineConfig

    assert Settings.from_env({}).sr_signals == () and PipelineConfig.from_settings(Settings()).sr_signals is None
    s = Settings.from_env({"WAVEBRIDGE_SR_SIGNALS": "PLETH, II"})
    assert s.sr_signals == ("PLETH", "II") and Settings.from_env(s.to_env()) == s
    assert PipelineConfig.from_settings(s).sr_signals == ("PLETH", "II")
    assert Settings.from_env({"WAVEBRIDGE_SR_SIGNALS": ""}).sr_signals == ()  # empty: the default
    for bad in ("RESP", "PLETH,ABP", "ii"):
        with pytest.raises(ConfigError, match=r"WAVEBRIDGE_SR_SIGNALS: '\w+' cannot be super-resolved"):
            Settings.from_env({"WAVEBRIDGE_SR_SIGNALS": bad})
