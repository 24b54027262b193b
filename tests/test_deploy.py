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

from operators.translator import DEFAULT_SPEC
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
    """Every WAVEBRIDGE_* name `Settings.from_env` reads (a secret's NAME_FILE too)."""
    from stream.config import known_variables

    return set(known_variables())


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return interpolate(raw_compose, {})  # defaults only, as with no env file


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"kafka", "kafka-init", "influxdb", "worker", "sink", "replay"} <= set(services)
    assert services["replay"].get("profiles") == ["replay"]
    assert all("profiles" not in services[s] for s in ("kafka", "kafka-init", "influxdb", "worker", "sink"))


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
    assert "127.0.0.1:9094:9094" in k["ports"]  # PLAINTEXT: loopback unless KAFKA_HOST_BIND says otherwise
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised  # never advertise the controller
    assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "1"  # one node cannot hold 3 replicas


def test_kafka_init_creates_the_configured_topics(compose):
    init = compose["services"]["kafka-init"]
    names = init["environment"]["TOPICS"].split() + [init["environment"]["DLQ_TOPIC"], init["environment"]["PROGRESS_TOPIC"]]
    assert sorted(names) == sorted(topics.DEFAULT_TOPICS)
    script = init["command"][0]
    assert "--if-not-exists" in script and "$PARTITIONS" in script  # `$$` became `$` for the shell
    assert '--topic "$PROGRESS_TOPIC"' in script and "cleanup.policy=compact" in script
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_influxdb2_setup_uses_the_admin_token_secret_and_nobody_else_does(compose):
    influx = compose["services"]["influxdb"]
    assert influx["image"].startswith("influxdb:2")
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    for key in ("ORG", "BUCKET", "USERNAME"):
        assert env[f"DOCKER_INFLUXDB_INIT_{key}"]
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"] == "/run/secrets/influx_admin_token"
    assert "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN" not in env  # never a plain-text token in the file
    holders = {name for name, svc in compose["services"].items() if "influx_admin_token" in svc.get("secrets", [])}
    assert holders == {"influxdb", "influx-tokens"}


def test_worker_environment_configures_settings(compose, tmp_path):
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (REPO / worker["build"]["dockerfile"]).is_file()
    assert "cpu" in worker["build"]["args"]["TORCH_INDEX_URL"]
    assert worker["command"] == ["worker"]
    deps = worker["depends_on"]
    assert deps["kafka-init"]["condition"] == "service_completed_successfully"
    assert deps["influx-tokens"]["condition"] == "service_completed_successfully"

    env = {k: str(v) for k, v in worker["environment"].items()}
    unknown = set(env) - config_variables()
    assert not unknown, f"worker variables unknown to stream/config.py: {sorted(unknown)}"
    assert env["WAVEBRIDGE_INFLUX_TOKEN_FILE"] == "/run/wavebridge-tokens/worker-write-token"
    assert "influx-tokens:/run/wavebridge-tokens:ro" in worker["volumes"]

    # Settings must accept it; the secret file is stood in for by a temporary file.
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    s = Settings.from_env({**env, "WAVEBRIDGE_INFLUX_TOKEN_FILE": str(token)})
    assert s.bootstrap_servers == ["kafka:9092"]
    assert s.influx_url == "http://influxdb:8086"
    assert s.influx_token == "s3cret"
    assert s.device == "cpu"
    assert s.translator == DEFAULT_SPEC  # compose's default is the worker's own
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9108)  # inside the container; no port published
    assert "ports" not in worker


def test_the_sink_service_writes_influxdb_for_the_workers_with_their_settings(compose, tmp_path):
    from stream.config import Settings

    services = compose["services"]
    sink, worker = services["sink"], services["worker"]
    assert sink["command"] == ["sink"] and sink["build"] == worker["build"]
    assert sink["depends_on"] == worker["depends_on"] and sink["volumes"] == worker["volumes"]
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    env = lambda svc: {**{k: str(v) for k, v in svc["environment"].items()}, "WAVEBRIDGE_INFLUX_TOKEN_FILE": str(token)}
    w, k = Settings.from_env(env(worker)), Settings.from_env(env(sink))
    assert w.influx_sink == "separate"  # the workers leave InfluxDB to it
    # the same group of sinks, reading the topics the workers write, into the same bucket with the same token
    for field in ("influx_sink_group", "topic_ecg_synth", "topic_sr", "topic_events", "topic_verdicts", "influx_url",
                  "influx_org", "influx_bucket", "influx_token", "bootstrap_servers", "metrics_port"):
        assert getattr(k, field) == getattr(w, field), field
    scraped = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    names = [n for job in scraped["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    assert "sink" in names and "worker" in names


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
    from stream.tools.replay import build_parser

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
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", text, re.M)  # a pinned patch release
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert '--index-url "${TORCH_INDEX_URL}"' in text
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    assert shlex.split(entry.strip("[]").replace(",", " ")) == ["wavebridge"]
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for src in sum(copies, []):
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image must not run as root"


# ------------------------------------------------------------------ hardening (issue 18)
def _compose_text_defaults(path: Path) -> dict:
    """The file with every `${VAR:-default}` replaced by its default *before* YAML parsing, as Compose does for
    values, so numbers come back as numbers."""
    return yaml.safe_load(interpolate(path.read_text(), {}))


@pytest.mark.parametrize("name", ["docker-compose.yml", "deploy/compose.gpu.yml"])
def test_compose_files_are_valid_compose_spec(name):
    """Parsed by a Compose-spec implementation (the compose_spec Rust crate's Python bindings): unknown keys,
    wrong types and invalid enum values (restart policy, depends_on condition) are rejected."""
    import json

    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is a test dependency (pip install -e .[test])")
    parsed = compose_spec.PyCompose.from_json(json.dumps(_compose_text_defaults(REPO / name)))
    assert "worker" in parsed.service_names()


def test_compose_spec_parser_rejects_what_compose_rejects():
    import json

    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is a test dependency (pip install -e .[test])")
    text = interpolate(COMPOSE.read_text(), {})
    for good, bad in (("restart: unless-stopped", "restart: sometimes"), ("healthcheck:", "helthcheck:"),
                      ("condition: service_healthy", "condition: service_happy")):
        with pytest.raises(ValueError):
            compose_spec.PyCompose.from_json(json.dumps(yaml.safe_load(text.replace(good, bad, 1))))


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":  # one-shots: their exit status is their health
            continue
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"service {name} has no healthcheck"
    worker_check = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "127.0.0.1:9108/healthz" in worker_check


def test_published_ports_bind_loopback_by_default(compose):
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert set(published) == {"kafka", "influxdb", "prometheus", "grafana"}
    for name, ports in published.items():
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"


def test_no_env_file_leaks_compose_variables_into_containers(raw_compose):
    for name, svc in raw_compose["services"].items():
        assert "env_file" not in svc, f"service {name} gets every compose variable through env_file"


def test_every_worker_setting_of_the_env_example_reaches_the_worker():
    example = parse_env_file(ENV_EXAMPLE)
    wired = yaml.safe_load(COMPOSE.read_text())["services"]["worker"]["environment"]
    worker_vars = {k for k in example if k.startswith("WAVEBRIDGE_") and k not in COMPOSE_ONLY_WAVEBRIDGE_VARS}
    assert worker_vars - set(wired) == set()
    for k in worker_vars:  # each is passed from the env file, not hard-coded
        assert f"${{{k}:-" in wired[k], (k, wired[k])


def test_worker_gets_a_write_only_token_and_grafana_a_read_only_one():
    script = (REPO / "deploy" / "influxdb" / "create-tokens.sh").read_text()
    assert re.search(r"make_token worker-write-token 10001 --write-bucket ", script)
    assert re.search(r"make_token grafana-read-token 472 --read-bucket ", script)
    assert "chmod 0400" in script and 'chown "$uid"' in script
    datasources = (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    assert "$__file{/run/wavebridge-tokens/grafana-read-token}" in datasources


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        if "build" in svc:  # built here from the pinned Dockerfile
            continue
        image = svc["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), f"service {name} image {image} is not pinned to a release"
    gpu = _compose_text_defaults(REPO / "deploy" / "compose.gpu.yml")
    assert all("build" in svc or "image" not in svc for svc in gpu["services"].values())


def test_image_dependencies_are_pinned_and_match_dev_sh():
    text = DOCKERFILE.read_text()
    dev = (REPO / "dev.sh").read_text()
    torch = re.search(r'^TORCH_VERSION="([^"]+)"', dev, re.M).group(1)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(torch)}$", text, re.M), "Dockerfile torch != dev.sh torch"
    assert 'pip install -c constraints.txt .' in text
    pins = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version), f"not an exact pin: {line}"
            pins[name.lower()] = version
    assert pins["torch"] == torch
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req.specifier}"


def test_env_file_is_git_ignored():
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("deploy/.env", "deploy/secrets/influx-admin-token"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, f"{path} not ignored"


def test_compose_mounts_exist_and_prometheus_config_is_valid(compose):
    import subprocess

    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("./deploy/"):
                assert (REPO / src).exists(), f"service {name} mounts {src}, which does not exist"
    from tests.test_prometheus import _need

    promtool = _need("promtool")
    res = subprocess.run([promtool, "check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
