#!/bin/bash
# One-shot of the compose service `influx-tokens`: a write-only token for the wavebridge image (the `sink` service,
# and workers that write InfluxDB themselves) and a read-only one for Grafana, both scoped to the wavebridge bucket,
# each written to the `tokens` volume as a file that only its container's user can read (wavebridge uid 10001,
# Grafana uid 472). The admin token never leaves InfluxDB and this
# service. Idempotent: a token file that exists is kept.
set -euo pipefail
INFLUX_TOKEN="$(cat /run/secrets/influx_admin_token)"
export INFLUX_TOKEN
bucket_id="$(influx bucket list --org "$INFLUX_ORG" --name "$BUCKET" --json | sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n1)"
[[ -n "$bucket_id" ]] || { echo "influx-tokens: bucket $BUCKET not found in org $INFLUX_ORG" >&2; exit 1; }

make_token() {  # FILE UID PERMISSION-FLAG DESCRIPTION
  local file="/tokens/$1" uid="$2" flag="$3" what="$4" token
  if [[ -s "$file" ]]; then
    echo "influx-tokens: $file exists, kept"
    return
  fi
  token="$(influx auth create --org "$INFLUX_ORG" "$flag" "$bucket_id" --description "$what" --json \
           | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p')"
  [[ -n "$token" ]] || { echo "influx-tokens: could not create the $what token" >&2; exit 1; }
  (umask 077 && printf '%s' "$token" >"$file.tmp")
  chown "$uid" "$file.tmp"
  chmod 0400 "$file.tmp"
  mv "$file.tmp" "$file"
  echo "influx-tokens: created $file ($what; readable by uid $uid only)"
}

make_token worker-write-token 10001 --write-bucket "wavebridge sink and workers (write only)"
make_token grafana-read-token 472 --read-bucket "Grafana (read only)"
