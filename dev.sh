#!/usr/bin/env bash
# wavebridge developer entry point. The two README commands:
#   ./dev.sh demo [ARGS]   set up (if needed), then run `wavebridge demo ARGS`
#   ./dev.sh test [ARGS]   set up (if needed, incl. InfluxDB and Prometheus), then run `python -m pytest -q ARGS`
# Also: ./dev.sh setup   (only the Python set-up)
# Set-up is idempotent: the venv is reused and pip runs again only when pyproject.toml changes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${WAVEBRIDGE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"  # pinned first: a bare torch requirement would pull a multi-GB CUDA build
STAMP="$VENV/.wavebridge-setup"

log() { printf '[dev.sh] %s\n' "$*" >&2; }
die() { printf '[dev.sh] error: %s\n' "$*" >&2; exit 1; }

# Run a command quietly; on failure show its output and stop.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "failed: $*"
  fi
}

setup_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python >= 3.10"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10"
  # A venv whose creation failed (no python3-venv, Ctrl-C) has a python but no pip: make it again.
  if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 || {
      rm -rf "$VENV"
      die "$PYTHON -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    }
  fi
  local py="$VENV/bin/python"
  local want
  want="$(cat pyproject.toml; echo "torch==$TORCH_VERSION")"
  if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want" ]] && "$py" -c 'import stream, torch' 2>/dev/null; then
    return 0  # already set up for this pyproject.toml
  fi
  if ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION (CPU)"
    quiet "$py" -m pip install --disable-pip-version-check -q "torch==$TORCH_VERSION"
  fi
  log "installing wavebridge (editable, with test extras)"
  quiet "$py" -m pip install --disable-pip-version-check -q -e ".[test]"
  printf '%s' "$want" >"$STAMP"
}

# Real services the integration tests start on loopback: InfluxDB 1.x (influxd) and Prometheus 2.x (prometheus,
# promtool), both from Debian/Ubuntu packages.
setup_services() {
  local missing=()
  command -v influxd >/dev/null || missing+=(influxdb)
  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=""  # root installs directly; a CI runner user with passwordless sudo (GitHub Actions) through it
  [[ "$(id -u)" -eq 0 ]] || { command -v sudo >/dev/null && sudo -n true 2>/dev/null && sudo="sudo -n"; }
  if { [[ "$(id -u)" -eq 0 ]] || [[ -n "$sudo" ]]; } && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (${sudo:+sudo }apt-get install)"
    quiet $sudo apt-get update -q
    quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    command -v influxd >/dev/null || die "apt-get installed influxdb but influxd is not on PATH"
    command -v prometheus >/dev/null || die "apt-get installed prometheus but prometheus is not on PATH"
  else
    die "${missing[*]} missing (influxd: InfluxDB 1.x; prometheus + promtool: Prometheus 2.x). Install as root, e.g.: apt-get update && apt-get install -y ${missing[*]} (Debian/Ubuntu), then rerun ./dev.sh test"
  fi
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup)
    setup_python
    ;;
  demo)
    setup_python
    exec "$VENV/bin/wavebridge" demo "$@"
    ;;
  test)
    setup_python
    setup_services
    set +e
    "$VENV/bin/python" -m pytest -q "$@"
    rc=$?
    set -e
    if [[ $rc -eq 5 ]]; then
      die "pytest collected no tests (exit code 5): treating as a failure"
    fi
    exit $rc
    ;;
  *)
    echo "usage: ./dev.sh {demo|test|setup} [ARGS...]" >&2
    exit 2
    ;;
esac
