"""Static checks of docker-compose.yml, deploy/Dockerfile and deploy/.env.example.

No Docker engine (and no `docker compose` plugin) is available where the tests run, so the compose
file is parsed with PyYAML, `${VAR:-default}` interpolation is resolved the way Compose does, and
the resulting worker environment is fed to the real `Settings.from_env` to prove it configures
the worker.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stream import topics
from stream.config import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pip install -e .[test])")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# Read by compose itself (kafka-init topic creation), not by Settings.
COMPOSE_ONLY_WAVEBRIDGE_VARS = {"WAVEBRIDGE_PARTITIONS", "WAVEBRIDGE_RETENTION_MS", "WAVEBRIDGE_DLQ_RETENTION_MS",
                                "WAVEBRIDGE_IMAGE", "WAVEBRIDGE_IMAGE_GPU"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose-style `${VAR}` / `${VAR:-default}` substitution; `$$` is a literal `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    out = _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value.replace("$$", "\0"))
    return out.replace("\0", "$")


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip()
    return env


def config_variables() -> set[str]:
    """Every WAVEBRIDGE_* name `Settings.from_env` reads (from its source, so new ones are picked up)."""
    src = (REPO / "stream" / "config.py").read_text()
    names = {"WAVEBRIDGE_" + n for n in re.findall(r'(?:text|num|flag|get)\(\s*"([A-Z0-9_]+)"', src)}
    for n in re.findall(r'secret\(\s*"([A-Z0-9_]+)"', src):  # a secret is read from NAME or NAME_FILE
        names |= {"WAVEBRIDGE_" + n, "WAVEBRIDGE_" + n + "_FILE"}
    return names


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return interpolate(raw_compose, {})  # defaults only, as with no env file


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"kafka", "kafka-init", "influxdb", "worker", "replay"} <= set(services)
    assert services["replay"].get("profiles") == ["replay"]
    assert all("profiles" not in services[s] for s in ("kafka", "kafka-init", "influxdb", "worker"))


def test_kafka_is_single_node_kraft_with_internal_and_host_listeners(compose):
    k = compose["services"]["kafka"]
    assert k["image"].startswith("apache/kafka:")
    env = k["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocol_map) and set(advertised) <= set(listeners)
    assert advertised["INTERNAL"] == "kafka:9092"  # what the worker's default broker points at
    assert advertised["EXTERNAL"] == "localhost:9094"
    assert "9094:9094" in k["ports"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised  # never advertise the controller
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"  # one node cannot hold 3 replicas


def test_kafka_init_creates_the_configured_topics(compose):
    init = compose["services"]["kafka-init"]
    names = init["environment"]["TOPICS"].split() + [init["environment"]["DLQ_TOPIC"]]
    assert sorted(names) == sorted(topics.DEFAULT_TOPICS)
    script = init["command"][0]
    assert "--if-not-exists" in script and "$PARTITIONS" in script  # `$$` became `$` for the shell
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_influxdb2_setup_uses_the_token_secret(compose):
    influx = compose["services"]["influxdb"]
    assert influx["image"].startswith("influxdb:2")
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("ORG", "BUCKET", "USERNAME"):
        assert env[f"DOCKER_INFLUXDB_INIT_{key}"]
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"] == "/run/secrets/influx_token"
    assert "influx_token" in influx["secrets"]
    assert "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN" not in env  # never a plain-text token in the file


def test_worker_environment_configures_settings(compose, tmp_path):
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (REPO / worker["build"]["dockerfile"]).is_file()
    assert "cpu" in worker["build"]["args"]["TORCH_INDEX_URL"]
    assert worker["command"] == ["worker"]
    deps = worker["depends_on"]
    assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert deps["influxdb"]["condition"] == "service_healthy"

    env = {k: str(v) for k, v in worker["environment"].items()}
    unknown = set(env) - config_variables()
    assert not unknown, f"worker variables unknown to stream/config.py: {sorted(unknown)}"
    assert env["WAVEBRIDGE_INFLUX_TOKEN_FILE"] == "/run/secrets/influx_token" and "influx_token" in worker["secrets"]

    # Settings must accept it; the secret file is stood in for by a temporary file.
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    s = Settings.from_env({**env, "WAVEBRIDGE_INFLUX_TOKEN_FILE": str(token)})
    assert s.bootstrap_servers == ["kafka:9092"]
    assert s.influx_url == "http://influxdb:8086"
    assert s.influx_token == "s3cret"
    assert s.device == "cpu"


def test_env_example_variables_are_real_and_valid(compose, tmp_path):
    example = parse_env_file(ENV_EXAMPLE)
    wb = {k: v for k, v in example.items() if k.startswith("WAVEBRIDGE_")}
    unknown = set(wb) - config_variables() - COMPOSE_ONLY_WAVEBRIDGE_VARS
    assert not unknown, f".env.example sets variables the worker does not read: {sorted(unknown)}"
    # Every compose-level ${VAR} has an example, so the file documents the whole surface.
    raw = COMPOSE.read_text() + (REPO / "deploy" / "compose.gpu.yml").read_text()
    used = {m.group(1) for m in _VAR.finditer(raw)}
    optional = {"WAVEBRIDGE_IMAGE", "WAVEBRIDGE_IMAGE_GPU", "TORCH_INDEX_URL_GPU", "WAVEBRIDGE_BATCH_SIZE_GPU",
                "WORKER_GPUS", "WAVEBRIDGE_TRANSLATOR"}
    missing = used - set(example) - optional
    assert not missing, f"compose variables without an example in deploy/.env.example: {sorted(missing)}"
    # The example, applied through compose, still gives a valid worker configuration.
    worker = interpolate(yaml.safe_load(COMPOSE.read_text()), example)["services"]["worker"]
    token = tmp_path / "token"
    token.write_text("t")
    env = {**{k: v for k, v in wb.items() if k not in COMPOSE_ONLY_WAVEBRIDGE_VARS},
           **{k: str(v) for k, v in worker["environment"].items()}, "WAVEBRIDGE_INFLUX_TOKEN_FILE": str(token)}
    s = Settings.from_env(env)
    assert (s.window_s, s.hop_s, s.batch_size) == (8.0, 2.0, 64)


def test_env_example_variables_are_documented():
    doc = (REPO / "docs" / "configuration.md").read_text()
    wb = [k for k in parse_env_file(ENV_EXAMPLE) if k.startswith("WAVEBRIDGE_") and k not in COMPOSE_ONLY_WAVEBRIDGE_VARS]
    assert [k for k in wb if f"`{k}`" not in doc] == []


def test_replay_profile_command_parses(compose):
    from stream.replay import build_parser

    replay = compose["services"]["replay"]
    assert replay["command"][0] == "replay"
    args = build_parser().parse_args([str(a) for a in replay["command"][1:]])
    assert args.broker == "kafka:9092"
    assert args.records == ["/data/bidmc01"]
    assert any(v.endswith(":/data:ro") for v in replay["volumes"])


def test_gpu_override_reserves_nvidia_devices():
    gpu = interpolate(yaml.safe_load((REPO / "deploy" / "compose.gpu.yml").read_text()), {})
    worker = gpu["services"]["worker"]
    assert worker["environment"]["WAVEBRIDGE_DEVICE"] == "cuda"
    dev = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert "cu" in worker["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]


def test_dockerfile_builds_from_slim_python_with_cpu_torch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    assert shlex.split(entry.strip("[]").replace(",", " ")) == ["wavebridge"]
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for src in sum(copies, []):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image must not run as root"
