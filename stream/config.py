"""Worker settings, read once from `WAVEBRIDGE_*` environment variables (docs/configuration.md).

`Settings.from_env(os.environ)` validates everything up front so a misconfigured container fails
at start with one clear message instead of deep inside Kafka/Influx client code.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from operators.translator import DEFAULT_SPEC, TASKS, check_spec
from operators import vocab
from stream import wire

JSON_OUTPUT_MAX_BYTES = 900_000  # under Kafka's default 1,000,000-byte request, with room for the header
JSON_BYTES_PER_SAMPLE = 25  # "-1.2345678431987762e-05," is 24

PREFIX = "WAVEBRIDGE_"
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# No OAUTHBEARER: it needs a token provider object, which no environment variable can supply.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI")
DEVICES = ("auto", "cpu", "cuda")
INFLUX_SINKS = ("worker", "separate")
KNOWN_TASKS = TASKS  # the translator interface's tasks, one list
# WAVEBRIDGE_* names the worker does not read but other parts of the project do (compose's topic set-up and images,
# dev.sh): not reported as unknown when they reach the worker's environment.
OTHER_VARIABLES = frozenset({"IMAGE", "IMAGE_GPU", "BATCH_SIZE_GPU", "PARTITIONS", "RETENTION_MS", "DLQ_RETENTION_MS",
                             "CI", "VENV", "TRACEBACK"})
# Apache Kafka's default group.min/max.session.timeout.ms: a session outside them is refused at every join.
SESSION_TIMEOUT_RANGE_S = (6.0, 1800.0)


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


def _read_secret_file(var: str, path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{var}: cannot read {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{var}: {path!r} is not UTF-8 text") from None
    if not value:  # an unfilled secret would otherwise authenticate as nobody, and fail much later
        raise ConfigError(f"{var}: {path!r} is empty")
    return value


def parse_host_port(var: str, url: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` (optionally `kafka://host:port`, `[v6]:port`) -> (host, port).

    Parameters
    ----------
    var : str
        The variable's name without `WAVEBRIDGE_`, for the error message.
    url : str
        The address.
    default_port : int, optional
        Port when `url` names none; without it a missing port is an error.

    Raises
    ------
    ConfigError
        Not `host:port`, or the port is not a number in 1-65535.
    """
    rest = url.split("://", 1)[-1]
    split = _urlsplit(var, "//" + rest, f"{url!r} is not host:port")
    try:
        port = split.port
    except ValueError:
        port_text = rest.rsplit(":", 1)[-1] if ":" in rest else ""
        raise ConfigError(f"{PREFIX}{var}: {url!r}: port {port_text!r} is not a number in 1-65535") from None
    host = split.hostname
    if not host or split.path or split.query or split.fragment or split.username:
        raise ConfigError(f"{PREFIX}{var}: {url!r} is not host:port")
    if port is None:
        if default_port is None or rest.endswith(":"):
            raise ConfigError(f"{PREFIX}{var}: {url!r} has no port")
        port = default_port
    if not 0 < port < 65536:
        raise ConfigError(f"{PREFIX}{var}: {url!r}: port {port} is not in 1-65535")
    return host, port


@dataclass(frozen=True)
class Variable:
    """One `WAVEBRIDGE_<name>` variable: the `Settings` field it sets and how its text reads and writes.

    `kind` is one of "text", "float", "int", "flag" (true/false, 1/0, yes/no, on/off), "secret" (text, or read
    from the file named by `<name>_FILE`, e.g. a Docker secret; not both), "format" (binary/json -> a bool) and
    "list" (comma list -> tuple)."""

    name: str
    attr: str
    kind: str = "text"


# In the order `--help` lists them (defaults_table) and the order a bad value is reported in.
VARIABLES: tuple[Variable, ...] = (
    Variable("BROKER", "broker"),
    Variable("KAFKA_SECURITY_PROTOCOL", "security_protocol"),
    Variable("KAFKA_SASL_MECHANISM", "sasl_mechanism"),
    Variable("KAFKA_SASL_USERNAME", "sasl_username"),
    Variable("KAFKA_SASL_PASSWORD", "sasl_password", "secret"),
    Variable("KAFKA_SSL_CAFILE", "ssl_cafile"),
    Variable("KAFKA_SSL_CERTFILE", "ssl_certfile"),
    Variable("KAFKA_SSL_KEYFILE", "ssl_keyfile"),
    Variable("GROUP_ID", "group_id"),
    Variable("SESSION_TIMEOUT_S", "session_timeout_s", "float"),
    Variable("HEARTBEAT_S", "heartbeat_s", "float"),
    Variable("TOPIC_INPUT", "topic_input"),
    Variable("TOPIC_ECG_SYNTH", "topic_ecg_synth"),
    Variable("TOPIC_SR", "topic_sr"),
    Variable("TOPIC_EVENTS", "topic_events"),
    Variable("TOPIC_DLQ", "topic_dlq"),
    Variable("TOPIC_PROGRESS", "topic_progress"),
    Variable("CREATE_TOPICS", "create_topics", "flag"),
    Variable("TOPIC_PARTITIONS", "topic_partitions", "int"),
    Variable("TOPIC_REPLICATION", "topic_replication", "int"),
    Variable("OUTPUT_FORMAT", "output_binary", "format"),
    Variable("INFLUX_ENABLED", "influx_enabled", "flag"),
    Variable("INFLUX_URL", "influx_url"),
    Variable("INFLUX_ORG", "influx_org"),
    Variable("INFLUX_BUCKET", "influx_bucket"),
    Variable("INFLUX_TOKEN", "influx_token", "secret"),
    Variable("INFLUX_BATCH_POINTS", "influx_batch_points", "int"),
    Variable("INFLUX_TIMEOUT_S", "influx_timeout_s", "float"),
    Variable("RETRY_INITIAL_S", "retry_initial_s", "float"),
    Variable("RETRY_MAX_S", "retry_max_s", "float"),
    Variable("INFLUX_SINK", "influx_sink"),
    Variable("INFLUX_GROUP_ID", "influx_group_id"),
    Variable("WINDOW_S", "window_s", "float"),
    Variable("HOP_S", "hop_s", "float"),
    Variable("LOOKAHEAD_S", "lookahead_s", "float"),
    Variable("BATCH_SIZE", "batch_size", "int"),
    Variable("BATCH_WAIT_S", "batch_wait_s", "float"),
    Variable("IDLE_FLUSH_S", "idle_flush_s", "float"),
    Variable("BED_EVICT_S", "bed_evict_s", "float"),
    Variable("TRANSLATOR", "translator"),
    Variable("DEVICE", "device"),
    Variable("TASKS", "tasks", "list"),
    Variable("SR_TARGET_HZ", "sr_target_hz", "float"),
    Variable("SR_BELOW_HZ", "sr_below_hz", "float"),
    Variable("SR_SIGNALS", "sr_signals", "list"),
    Variable("CONTEXT_S", "context_s", "float"),
    Variable("WEB_PORT", "web_port", "int"),
    Variable("METRICS_HOST", "metrics_host"),
    Variable("METRICS_PORT", "metrics_port", "int"),
    Variable("WITHOUT_WEB", "without_web", "flag"),
    Variable("STATS_FILE", "stats_file"),
    Variable("DATA_DIR", "data_dir"),
    Variable("LOG_LEVEL", "log_level"),
    Variable("COUNTERS_LOG_S", "counters_log_s", "float"),
    Variable("ALARM_ENABLED", "alarm_enabled", "flag"),
    Variable("TOPIC_ALARMS", "topic_alarms"),
    Variable("TOPIC_VERDICTS", "topic_verdicts"),
    Variable("ALARM_MODE", "alarm_mode"),
    Variable("ALARM_WAIT_S", "alarm_wait_s", "float"),
    Variable("ALARM_GRACE_S", "alarm_grace_s", "float"),
    Variable("ALARM_BUFFER_S", "alarm_buffer_s", "float"),
    Variable("ALARM_MAX_BEDS", "alarm_max_beds", "int"),
    Variable("ALARM_TRANSLATOR", "alarm_translator"),
    Variable("LOG_REPEAT_S", "log_repeat_s", "float"),
)


def _variable_names() -> dict[str, Variable | None]:
    """Every variable name read, in order -> its Variable (None: a secret's `_FILE` variant)."""
    names: dict[str, Variable | None] = {}
    for var in VARIABLES:
        names[PREFIX + var.name] = var
        if var.kind == "secret":
            names[PREFIX + var.name + "_FILE"] = None
    return names


def known_variables() -> frozenset[str]:
    """Every `WAVEBRIDGE_*` name `Settings.from_env` reads."""
    return frozenset(_variable_names())


def defaults_table() -> str:
    """`WAVEBRIDGE_NAME  default` lines, one per variable, for `--help` (details: docs/configuration.md)."""
    defaults = Settings()
    special = {PREFIX + "OUTPUT_FORMAT": "binary", PREFIX + "TASKS": ",".join(KNOWN_TASKS),
               PREFIX + "INFLUX_GROUP_ID": "<GROUP_ID>-influx", PREFIX + "DATA_DIR": "<system temp>/wavebridge-<GROUP_ID>"}
    rows = []
    for name, var in _variable_names().items():
        value = special.get(name, getattr(defaults, var.attr) if var else None)
        if isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        rows.append((name, "-" if value is None else str(value)))
    width = max(len(v) for v, _ in rows)
    return "\n".join(f"  {var.ljust(width)}  {value}" for var, value in rows)


# ------------------------------------------------------------------ reading and writing one variable


def _raw(env: Mapping[str, str], name: str) -> str | None:
    """The stripped text of `WAVEBRIDGE_<name>`; None when unset or blank."""
    v = env.get(PREFIX + name)
    return None if v is None or v.strip() == "" else v.strip()


def _read_number(conv):
    def read(name: str, text: str):
        try:
            return conv(text)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name}={text!r} is not a valid {conv.__name__}") from None
    return read


def _read_flag(name: str, text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name}={text!r} is not a boolean (true/false)")


def _read_format(name: str, text: str) -> bool:
    if text.lower() not in ("binary", "json"):
        raise ConfigError(f"{PREFIX}{name}={text!r} must be 'binary' or 'json'")
    return text.lower() == "binary"


_READERS = {
    "text": lambda name, text: text,
    "secret": lambda name, text: text,
    "float": _read_number(float),
    "int": _read_number(int),
    "flag": _read_flag,
    "format": _read_format,
    "list": lambda name, text: tuple(t.strip() for t in text.split(",") if t.strip()),
}

_WRITERS = {
    "text": str,
    "secret": str,
    "float": str,  # str(float) is its shortest round-tripping repr
    "int": str,
    "flag": lambda v: "true" if v else "false",
    "format": lambda binary: "binary" if binary else "json",
    "list": ",".join,
}


def _read_variable(env: Mapping[str, str], var: Variable):
    """The value `var` sets from `env`, or None when it is unset."""
    text = _raw(env, var.name)
    if var.kind == "secret":
        path = _raw(env, var.name + "_FILE")
        if path is not None:
            if text is not None:
                raise ConfigError(f"set only one of {PREFIX}{var.name} and {PREFIX}{var.name}_FILE")
            return _read_secret_file(PREFIX + var.name + "_FILE", path)
    return None if text is None else _READERS[var.kind](var.name, text)


def _read_variables(env: Mapping[str, str]) -> dict:
    """`Settings` keywords for every variable set in `env`."""
    kw = {}
    for var in VARIABLES:
        value = _read_variable(env, var)
        if value is not None:
            kw[var.attr] = value
    return kw


def _refuse_unknown_names(env: Mapping[str, str]) -> None:
    """ConfigError naming every `WAVEBRIDGE_*` variable nobody reads, each with the closest known name."""
    known = _variable_names()
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known and k[len(PREFIX):] not in OTHER_VARIABLES)
    if not unknown:
        return
    short_known = sorted(k[len(PREFIX):] for k in known)

    def hint(name: str) -> str:  # compared without the shared prefix, which would make everything "close"
        close = difflib.get_close_matches(name[len(PREFIX):], short_known, n=1, cutoff=0.7)
        return f"{name} (did you mean {PREFIX}{close[0]}?)" if close else name

    raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(hint, unknown))}; "
                      f"the known ones are listed in docs/configuration.md")


def _error(var: str, msg: str) -> ConfigError:
    return ConfigError(f"{PREFIX}{var}: {msg}")


def _urlsplit(var: str, url: str, what: str) -> urllib.parse.SplitResult:
    """`urllib.parse.urlsplit(url)`, its ValueError (e.g. an unclosed IPv6 bracket) a ConfigError `var: what (...)`."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{var}: {what} ({exc})") from None


def file_write_problem(path: str) -> str | None:
    """Why a file could not be written at `path` (its folder missing or not writable, or a folder there), or None.
    For an option whose file is written only later, after work that would be lost."""
    where = Path(path)
    folder = where.resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} does not exist or is not writable"
    if where.is_dir():
        return "is a folder, not a file"
    return None


def is_topic_name(name: str) -> bool:
    """Whether Kafka takes `name` as a topic name (1-249 characters of [a-zA-Z0-9._-], not "." or "..")."""
    return bool(TOPIC_NAME.fullmatch(name)) and name not in (".", "..")


def _check_topic_name(var: str, name: str) -> None:
    if not is_topic_name(name):
        raise _error(var, f"{name!r} is not a Kafka topic name (1-249 chars of [a-zA-Z0-9._-])")


def _check_translator_spec(var: str, spec: str) -> None:
    try:
        check_spec(spec)  # names only; loading is the worker's first step (stream.app)
    except ValueError as exc:
        raise _error(var, str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """Every setting of the worker and the sink, validated when made (`validate`; ConfigError naming the
    variable). Units are in the names (`_s` seconds, `_hz` Hz); docs/configuration.md describes each field by
    its `WAVEBRIDGE_*` variable (`VARIABLES`)."""

    # --- Kafka -----------------------------------------------------------------------------
    broker: str = "kafka://localhost:9092"  # comma list allowed: kafka://a:9092,kafka://b:9092
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    group_id: str = "wavebridge-worker"
    session_timeout_s: float = 30.0
    heartbeat_s: float = 3.0
    # --- topics ----------------------------------------------------------------------------
    topic_input: str = vocab.TOPIC_WAVEFORMS
    topic_ecg_synth: str = vocab.TOPIC_ECG_SYNTH
    topic_sr: str = vocab.TOPIC_SR
    topic_events: str = vocab.TOPIC_EVENTS
    topic_dlq: str = vocab.TOPIC_DLQ
    topic_progress: str = vocab.TOPIC_PROGRESS
    output_binary: bool = True  # wire format of out chunks: binary (default) or JSON
    # --- InfluxDB --------------------------------------------------------------------------
    influx_enabled: bool = True
    influx_url: str = "http://localhost:8086"
    influx_org: str = "wavebridge"
    influx_bucket: str = "wavebridge"
    influx_token: str | None = field(default=None, repr=False)
    influx_batch_points: int = 20000
    influx_timeout_s: float = 10.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    influx_sink: str = "worker"  # where the InfluxDB sink agent runs: "worker" (in-process) or "separate"
    influx_group_id: str | None = None  # the sink agent's consumer group; None: "<group_id>-influx"
    # --- windowing / batching -------------------------------------------------------------
    window_s: float = 8.0
    hop_s: float = 2.0
    lookahead_s: float = 1.0  # PPG->ECG: newest part of a window is context only (pulse arrives after the R-peak)
    batch_size: int = 64
    batch_wait_s: float = 0.2
    idle_flush_s: float = 10.0
    bed_evict_s: float = 600.0  # a bed silent this long is forgotten (bounded memory); 0: never
    # --- translation -----------------------------------------------------------------------
    translator: str = DEFAULT_SPEC  # per task the best measured (operators.translator); "classic" needs no torch
    device: str = "auto"
    tasks: tuple[str, ...] = KNOWN_TASKS
    sr_target_hz: float = vocab.SR_TARGET_HZ
    sr_below_hz: float = 100.0  # signals sampled below this rate are super-resolved
    # which slow signals are super-resolved: ECG leads and/or PLETH; empty: all of those (PipelineConfig.sr_signals)
    sr_signals: tuple[str, ...] = ()
    context_s: float = 10.0  # paired ECG+PPG context length (ContextStore keeps 3x)
    # --- topic creation (opt-in: on a managed cluster a typo in a topic name would make a new topic) ----------
    create_topics: bool = False
    topic_partitions: int = 4
    topic_replication: int = 1
    # --- process ---------------------------------------------------------------------------
    web_port: int = 6066
    # /metrics, /healthz, /readyz (stream.metrics); loopback by default, port 0 turns the server off
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108
    without_web: bool = False
    stats_file: str | None = None
    data_dir: str | None = None  # Faust's state directory; None: <system temp>/wavebridge-<group id>
    log_level: str = "info"
    counters_log_s: float = 60.0
    # --- alarm verification (stream/alarm_agent.py, docs/alarms.md) ----------------------------
    alarm_enabled: bool = True
    topic_alarms: str = vocab.TOPIC_ALARMS
    topic_verdicts: str = vocab.TOPIC_VERDICTS
    alarm_mode: str = "realtime"  # an alarm message's own "mode" overrides it
    alarm_wait_s: float = 30.0  # retrospective mode: data wanted after the onset
    alarm_grace_s: float = 2.0  # longest wait for a bed's data to reach what the mode needs, past the wait
    alarm_buffer_s: float = 120.0  # per-bed signal ring, s behind the newest sample
    alarm_max_beds: int = 1024
    alarm_translator: str = "classic"  # II_SYNTH for verdicts; "none" leaves it out
    log_repeat_s: float = 30.0  # a repeating log line (Kafka connection errors, dead letters) at most once per this

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from `WAVEBRIDGE_*` variables.

        Parameters
        ----------
        environ : mapping of str to str, optional
            The environment to read; `os.environ` when None. Empty values count as unset.

        Returns
        -------
        Settings
            Validated settings.

        Raises
        ------
        ConfigError
            A value does not parse or is invalid, or a `WAVEBRIDGE_*` name is unknown (with the closest known one).
        """
        env = os.environ if environ is None else environ
        kw = _read_variables(env)
        _refuse_unknown_names(env)
        return cls(**kw)

    def to_env(self) -> dict[str, str]:
        """These settings as `WAVEBRIDGE_*` variables, the inverse of `from_env`: `from_env(s.to_env()) == s`.

        Only values that differ from the defaults are written; secrets are written as values (never as `_FILE`
        paths), so the result is for a child process's environment, not for a log.

        Returns
        -------
        dict of str to str
            Variable name -> value text.

        Raises
        ------
        ConfigError
            A text value the environment cannot carry: empty or with surrounding white space (`from_env` reads
            those as unset or trimmed).
        """
        defaults = Settings()
        env = {}
        for var in VARIABLES:
            value = getattr(self, var.attr)
            if value is None or value == getattr(defaults, var.attr):
                continue
            text = _WRITERS[var.kind](value)
            if not text or text != text.strip():
                raise ConfigError(f"{PREFIX}{var.name}: {value!r} cannot be carried by an environment variable "
                                  f"(an empty or space-padded value reads as unset or trimmed)")
            env[PREFIX + var.name] = text
        return env

    # ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse any value the worker could not run with, one group of settings after the other.

        Raises
        ------
        ConfigError
            The first invalid value, naming its `WAVEBRIDGE_*` variable.
        """
        self._check_finite()
        self._check_kafka()
        self._check_topics()
        self._check_influx()
        self._check_windows()
        self._check_translation()
        self._check_process()
        self._check_alarms()

    def _check_finite(self) -> None:
        for f in fields(self):  # NaN passes every `<= 0` check below, and inf means "never"
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise _error(f.name.upper(), f"must be a finite number, got {v}")

    def _check_kafka(self) -> None:
        if not self.broker_urls:
            raise _error("BROKER", "no broker given")
        for url in self.broker_urls:
            if "://" in url and not url.startswith("kafka://"):
                raise _error("BROKER", f"{url!r}: only kafka:// URLs are supported")
            parse_host_port("BROKER", url, default_port=9092)
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise _error("KAFKA_SECURITY_PROTOCOL", f"{self.security_protocol!r} not in {SECURITY_PROTOCOLS}")
        if self.security_protocol.startswith("SASL"):
            self._check_sasl()
        self._check_ssl_files()
        if self.heartbeat_s <= 0:
            raise _error("HEARTBEAT_S", "must be > 0")
        lo, hi = SESSION_TIMEOUT_RANGE_S
        if not lo <= self.session_timeout_s <= hi:
            raise _error("SESSION_TIMEOUT_S", f"{self.session_timeout_s:g} s is outside [{lo:g}, {hi:g}] s, the range "
                                              f"Kafka brokers accept by default (group.min/max.session.timeout.ms)")
        if self.heartbeat_s >= self.session_timeout_s:
            raise _error("HEARTBEAT_S", f"heartbeat ({self.heartbeat_s}s) must be below the session timeout "
                                        f"({self.session_timeout_s}s)")

    def _check_sasl(self) -> None:
        if self.sasl_mechanism == "OAUTHBEARER":
            raise _error("KAFKA_SASL_MECHANISM", "OAUTHBEARER is not supported (it needs a token provider, "
                                                 f"which cannot be configured here); use one of {SASL_MECHANISMS}")
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise _error("KAFKA_SASL_MECHANISM", f"{self.sasl_mechanism!r} not in {SASL_MECHANISMS}")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_username and self.sasl_password
        ):
            raise _error("KAFKA_SASL_USERNAME",
                         f"{self.sasl_mechanism} needs a username and a password (or _PASSWORD_FILE)")
        if self.sasl_mechanism == "GSSAPI" and importlib.util.find_spec("gssapi") is None:
            # not a dependency (it needs the system's Kerberos libraries); the Kafka clients fail late without it
            raise _error("KAFKA_SASL_MECHANISM", "GSSAPI needs the 'gssapi' Python package (and a Kerberos set-up): "
                                                 "pip install gssapi")

    def _check_ssl_files(self) -> None:
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise _error("KAFKA_SSL_CERTFILE", "client certificate and key (_SSL_KEYFILE) must be given together")
        for var, path in (("KAFKA_SSL_CAFILE", self.ssl_cafile), ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
                          ("KAFKA_SSL_KEYFILE", self.ssl_keyfile)):
            if path and not Path(path).is_file():
                raise _error(var, f"file {path!r} does not exist")

    @property
    def _pipeline_topics(self) -> dict[str, str]:
        """Variable (without the prefix) -> topic name, for the pipeline's six topics."""
        return {"TOPIC_INPUT": self.topic_input, "TOPIC_ECG_SYNTH": self.topic_ecg_synth, "TOPIC_SR": self.topic_sr,
                "TOPIC_EVENTS": self.topic_events, "TOPIC_DLQ": self.topic_dlq, "TOPIC_PROGRESS": self.topic_progress}

    def _check_topics(self) -> None:
        topics = list(self._pipeline_topics.values())
        if len(set(topics)) != len(topics):
            raise _error("TOPIC_INPUT", f"topic names must be distinct, got {topics}")
        for var, name in self._pipeline_topics.items():
            _check_topic_name(var, name)
        if not 1 <= self.topic_partitions <= 10_000:
            raise _error("TOPIC_PARTITIONS", f"{self.topic_partitions} is not in 1-10000")
        if not 1 <= self.topic_replication <= 32:
            raise _error("TOPIC_REPLICATION", f"{self.topic_replication} is not in 1-32")

    def _check_influx(self) -> None:
        if self.influx_enabled:
            self._check_influx_url()
            if not self.influx_bucket:
                raise _error("INFLUX_BUCKET", "must not be empty")
        if self.influx_sink not in INFLUX_SINKS:
            raise _error("INFLUX_SINK", f"{self.influx_sink!r} not in {INFLUX_SINKS} ('separate': run `wavebridge sink`)")
        if self.influx_sink_group == self.group_id:
            raise _error("INFLUX_GROUP_ID", "must differ from GROUP_ID (the sink commits offsets of its own)")
        if self.influx_batch_points < 1:
            raise _error("INFLUX_BATCH_POINTS", "must be >= 1")
        if self.influx_timeout_s <= 0:
            raise _error("INFLUX_TIMEOUT_S", "must be > 0")
        if not (0 < self.retry_initial_s <= self.retry_max_s):
            raise _error("RETRY_INITIAL_S", "need 0 < RETRY_INITIAL_S <= RETRY_MAX_S")

    def _check_influx_url(self) -> None:
        if not self.influx_url.startswith(("http://", "https://")):
            raise _error("INFLUX_URL", f"{self.influx_url!r} must start with http:// or https://")
        split = _urlsplit("INFLUX_URL", self.influx_url, f"{self.influx_url!r} is not a URL")
        try:
            split.port
        except ValueError:
            raise _error("INFLUX_URL", f"{self.influx_url!r}: the port is not a number in 1-65535") from None
        if not split.hostname:
            raise _error("INFLUX_URL", f"{self.influx_url!r} names no host")

    def _check_windows(self) -> None:
        if self.window_s <= 0:
            raise _error("WINDOW_S", "must be > 0")
        if self.hop_s <= 0:
            raise _error("HOP_S", "must be > 0")
        if self.hop_s > self.window_s:
            raise _error("HOP_S", f"hop ({self.hop_s}s) must not exceed the window ({self.window_s}s)")
        if self.lookahead_s < 0 or self.hop_s + self.lookahead_s > self.window_s:
            raise _error("LOOKAHEAD_S", f"need 0 <= look-ahead and hop + look-ahead ({self.hop_s + self.lookahead_s}s) "
                                        f"<= window ({self.window_s}s)")
        if self.batch_size < 1:
            raise _error("BATCH_SIZE", "must be >= 1")
        if self.batch_wait_s < 0:
            raise _error("BATCH_WAIT_S", "must be >= 0")
        if self.idle_flush_s <= 0:
            raise _error("IDLE_FLUSH_S", "must be > 0")
        if self.bed_evict_s < 0 or (self.bed_evict_s and self.bed_evict_s <= self.idle_flush_s):
            raise _error("BED_EVICT_S", f"must be 0 (never) or longer than IDLE_FLUSH_S ({self.idle_flush_s:g} s)")

    def _check_translation(self) -> None:
        if not self.translator:
            raise _error("TRANSLATOR", "must not be empty")
        _check_translator_spec("TRANSLATOR", self.translator)  # names only; the worker loads it before connecting
        if self.device not in DEVICES:
            raise _error("DEVICE", f"{self.device!r} not in {DEVICES}")
        if not self.tasks:
            raise _error("TASKS", f"enable at least one of {KNOWN_TASKS}")
        for t in self.tasks:
            if t not in KNOWN_TASKS:
                raise _error("TASKS", f"unknown task {t!r} (known: {', '.join(KNOWN_TASKS)})")
        if not (wire.MIN_RATE_HZ <= self.sr_target_hz <= wire.MAX_RATE_HZ):
            raise _error("SR_TARGET_HZ", f"{self.sr_target_hz:g} Hz is outside the wire format's "
                                         f"[{wire.MIN_RATE_HZ:g}, {wire.MAX_RATE_HZ:g}] Hz")
        if not (0 < self.sr_below_hz <= self.sr_target_hz):
            raise _error("SR_BELOW_HZ", f"must be > 0 and <= SR_TARGET_HZ ({self.sr_target_hz})")
        for name in self.sr_signals:
            if not vocab.super_resolvable(name):
                raise _error("SR_SIGNALS", f"{name!r} cannot be super-resolved: only ECG leads and {vocab.PPG} "
                                           f"(empty: all of those)")
        self._check_output_chunk_size()
        if self.context_s < 0:
            raise _error("CONTEXT_S", "must be >= 0 (0 disables patient context)")

    def _check_process(self) -> None:
        if not (0 < self.web_port < 65536):
            raise _error("WEB_PORT", f"{self.web_port} is not a TCP port")
        if not (0 <= self.metrics_port < 65536):
            raise _error("METRICS_PORT", f"{self.metrics_port} is not a TCP port (0 turns the metrics server off)")
        if self.log_level.lower() not in ("crit", "critical", "error", "warn", "warning", "info", "debug"):
            raise _error("LOG_LEVEL", f"{self.log_level!r} not one of crit, error, warn, info, debug")
        if self.counters_log_s <= 0:
            raise _error("COUNTERS_LOG_S", "must be > 0")
        if self.log_repeat_s < 0:
            raise _error("LOG_REPEAT_S", "must be >= 0 (0 shows every line)")
        problem = file_write_problem(self.stats_file) if self.stats_file else None
        if problem:
            raise _error("STATS_FILE", f"{self.stats_file!r}: {problem}")

    def _check_alarms(self) -> None:
        from operators.processing.alarms import LEARN_S, MODES, PRE_S

        if self.alarm_mode not in MODES:
            raise _error("ALARM_MODE", f"{self.alarm_mode!r} not one of {', '.join(MODES)}")
        if self.alarm_wait_s < 0 or self.alarm_grace_s < 0:
            raise _error("ALARM_WAIT_S", "ALARM_WAIT_S and ALARM_GRACE_S must be >= 0")
        need = PRE_S + LEARN_S + self.alarm_wait_s
        if self.alarm_buffer_s < need:
            raise _error("ALARM_BUFFER_S", f"{self.alarm_buffer_s:g} s is shorter than a verdict reads "
                                           f"({PRE_S:g} s window + {LEARN_S:g} s learning + ALARM_WAIT_S = {need:g} s)")
        if self.alarm_max_beds < 1:
            raise _error("ALARM_MAX_BEDS", "must be >= 1")
        others = set(self._pipeline_topics.values())
        if self.topic_alarms == self.topic_verdicts or {self.topic_alarms, self.topic_verdicts} & others:
            raise _error("TOPIC_ALARMS", "the alarms and verdicts topics must differ from each other and every other "
                                         "topic")
        if not self.alarm_translator:
            raise _error("ALARM_TRANSLATOR", "must not be empty ('none' leaves the synthesized ECG out)")
        if self.alarm_translator != "none":
            _check_translator_spec("ALARM_TRANSLATOR", self.alarm_translator)
        _check_topic_name("TOPIC_ALARMS", self.topic_alarms)
        _check_topic_name("TOPIC_VERDICTS", self.topic_verdicts)

    def _check_output_chunk_size(self) -> None:
        """Every emitted output chunk must pass `wire` validation, or the worker drops it (only
        counted) while still acknowledging its input. The longest emitted span is WINDOW_S, not
        WINDOW_S - LOOKAHEAD_S: a flushed segment shorter than one window (before a gap, at idle
        flush) is emitted whole. ppg2ecg keeps a fast PPG's own rate, which the wire
        admits up to MAX_RATE_HZ, so that bounds the output rate whenever ppg2ecg is enabled."""
        if self.window_s > wire.MAX_DURATION_S:
            raise ConfigError(f"{PREFIX}WINDOW_S: {self.window_s:g} s > {wire.MAX_DURATION_S:g} s, the longest chunk "
                              f"the wire format allows (a flushed window can be emitted whole as one chunk)")
        if "ppg2ecg" in self.tasks:
            rate, why = wire.MAX_RATE_HZ, "ppg2ecg keeps the PPG's own rate, up to the wire's maximum"
        else:
            rate, why = self.sr_target_hz, "SR_TARGET_HZ"
        if self.window_s * rate > wire.MAX_SAMPLES:
            raise ConfigError(f"{PREFIX}WINDOW_S: {self.window_s:g} s at {rate:g} Hz ({why}) is "
                              f"{self.window_s * rate:.0f} samples > {wire.MAX_SAMPLES}, the most the wire format "
                              f"allows in one chunk; use WINDOW_S <= {wire.MAX_SAMPLES / rate:g}")
        # JSON writes each sample as float64 text (up to ~25 bytes): past this a chunk outgrows Kafka's default
        # 1 MB request, and the failed send would crash the worker on the same input after every restart.
        json_max = JSON_OUTPUT_MAX_BYTES // JSON_BYTES_PER_SAMPLE
        if not self.output_binary and self.window_s * rate > json_max:
            raise ConfigError(f"{PREFIX}WINDOW_S: {self.window_s:g} s at {rate:g} Hz ({why}) makes JSON output chunks "
                              f"of up to {self.window_s * rate:.0f} samples, over {JSON_OUTPUT_MAX_BYTES:,} bytes; use "
                              f"WINDOW_S <= {json_max / rate:g} or {PREFIX}OUTPUT_FORMAT=binary")

    # ------------------------------------------------------------------------------------
    @property
    def faust_log_level(self) -> str:
        """The level in Faust's spelling (it knows CRIT/ERROR/WARN/INFO/DEBUG)."""
        low = self.log_level.lower()
        return {"critical": "crit", "warning": "warn"}.get(low, low)

    @property
    def influx_sink_group(self) -> str:
        """Consumer group of the InfluxDB sink agent (stream/influxsink.py)."""
        return self.influx_group_id or f"{self.group_id}-influx"

    @property
    def broker_urls(self) -> list[str]:
        """`broker` split at commas."""
        return [u.strip() for u in self.broker.split(",") if u.strip()]

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for plain Kafka clients (kafka-python, aiokafka)."""
        return [u.split("://", 1)[-1] for u in self.broker_urls]

    @property
    def faust_broker(self) -> str:
        """Faust's broker string: `kafka://a:9092;b:9092`."""
        return "kafka://" + ";".join(self.bootstrap_servers)

    def kafka_client_kwargs(self) -> dict:
        """Security options in kafka-python's keyword names."""
        kw: dict = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        return kw
