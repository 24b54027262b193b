"""The tests' InfluxDB set-up in the foreground, for local work without Docker (docs/operations.md).

    python -m tests.support.local_influx [--dir .work/influxdb] [--db wavebridge]

Starts `influxd` (InfluxDB 1.x, Debian's package: 1.6, without the v2 write API) with the tests' configuration on a
free loopback port, the v2-write proxy in front of it (what the worker's influxdb-client talks to), creates the
database, prints the settings for the worker and the InfluxQL URL, and runs until Ctrl-C.
"""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tests.support.influx import start_influxdb
from tests.support.influx_proxy import influx_v2_proxy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.local_influx", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dir", default=".work/influxdb", help="state folder (kept between runs)")
    ap.add_argument("--db", default="wavebridge", help="database to create (the worker's WAVEBRIDGE_INFLUX_BUCKET)")
    args = ap.parse_args(argv)
    server = start_influxdb(Path(args.dir))
    proxy = influx_v2_proxy(server.url)
    try:
        server.create_database(args.db)
        print(f"InfluxDB 1.x (InfluxQL, Grafana): {server.url}  database {args.db}\n"
              f"worker: WAVEBRIDGE_INFLUX_URL={proxy.url} WAVEBRIDGE_INFLUX_BUCKET={args.db} "
              f"WAVEBRIDGE_INFLUX_TOKEN=local\n"
              f"query:  curl -G {server.url}/query --data-urlencode db={args.db} "
              f"--data-urlencode q='SELECT count(value) FROM waveform'\nCtrl-C stops both.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        proxy.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
