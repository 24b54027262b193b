"""Rebalance soak: replay beds through N workers in one consumer group, SIGKILL and restart workers, and
compare everything that lands in InfluxDB with an uninterrupted run of the same input.

Each run uses fresh topics, consumer groups and InfluxDB database on one Tansu broker and one InfluxDB 1.x (real
services, worker subprocesses), replays the same recording as --beds beds from the same start time, and:

- run 0 (the reference) kills nothing;
- runs 1..K SIGKILL a randomly chosen worker at a random moment of the replay (20-80 % of it), restart it after
  0-3 s, and then wait until every input offset is committed and InfluxDB has stopped growing.

Counted per run, against the reference (points, summed over beds, signals and kinds):
- lost: waveform samples of the reference missing from the run;
- duplicated: waveform samples of the run on timestamps the reference does not have (InfluxDB cannot hold two
  points on one series and timestamp, so a re-emitted sample off the reference's grid is the only way a duplicate
  shows);
- derived-mismatch: waveform samples on common timestamps whose values differ (> 1e-6), plus R-peak and heart-rate
  points present in one run but not the other (by timestamp) or with a different value (split by measurement in
  each run's line); `first_mismatches` gives, per diverging series, where it first departs and where it last
  differs (seconds of signal).

Alarms (unless --no-alarms): when the replay reaches --alarm-at of the signal, each bed gets a real-time and a
retrospective asystole alarm at that onset (keyed by bed, as a monitor sends them). Counted per run, against the
reference's verdicts (by alarm id and mode): verdicts missing, repeated (at least once: after a kill an alarm whose
verdict was confirmed before its offset was committed is judged again) and differing (a verdict other than the
reference's, e.g. `uncertain` where the restarted worker re-read too little of the bed's data before the onset).
The run waits until the alarms topic is committed too.

Each run also reports the output-topic latency (input produce time to outputs delivered, from the workers'
WAVEBRIDGE_STATS_FILE): its maximum in a kill run is what a rebalance costs the alarm feed.

The reference itself is checked against the offline mode's sample grid (every expected timestamp, nothing else).
Patient context is off by default (--context-s 0). With it, a worker that takes over a bed rebuilds the bed's context
from input the old owner kept uncommitted, so values agree too (docs/delivery-semantics.md). The commit rule keeps
54 s of each bed's input uncommitted (WINDOW_S + the alarm verifier's 16 s + ALARM_WAIT_S; with the context on, the
longer of that and 3.5 x CONTEXT_S), so a replay shorter than that commits nothing before its final idle flush and
every kill re-reads it all: the defaults (150 s at x3, kills 20-80 % into the 50 s replay) resume mid-stream.

    python benchmarks/rebalance_soak.py --workers 3 --runs 10

The last line is `rebalance soak: runs K lost L duplicated D derived-mismatch M` (totals over the K kill runs); the
line before it `alarm verdicts: runs K expected E missing X repeated R differing V`.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402

from stream.config import Settings  # noqa: E402
from stream.tools.embedded import EmbeddedBroker  # noqa: E402
from stream.tools.worker_process import (LOCAL_BROKER_TIMING, WorkerProcess, prefixed_topics,  # noqa: E402
                                         worker_environment)
from stream.topics import committed_total  # noqa: E402

T0 = 1_750_000_000_000_000_000
SR_TARGET_HZ, SR_BELOW_HZ = 250.0, 200.0  # BIDMC is 125 Hz: super-resolve it too, as the integration tests do
ALARM_WAIT_S, ALARM_GRACE_S = 10.0, 10.0  # retrospective alarms wait 10 s of signal; grace for a slow replay


def worker_settings(bootstrap: str, influx, db: str, prefix: str, args) -> Settings:
    """One run's workers: topics and consumer group named by `prefix`, InfluxDB database `db`."""
    return Settings(
        broker=f"kafka://{bootstrap}", group_id=f"{prefix}-worker", **LOCAL_BROKER_TIMING, **prefixed_topics(prefix),
        influx_url=influx.url, influx_bucket=db, influx_token="soak", retry_initial_s=0.2, retry_max_s=1.0,
        translator=args.translator, idle_flush_s=2.0, sr_target_hz=SR_TARGET_HZ, sr_below_hz=SR_BELOW_HZ,
        context_s=args.context_s, stats_file=str(Path(args.out).resolve() / f"{prefix}-stats.jsonl"),
        without_web=True, metrics_port=0, log_level="info", alarm_wait_s=ALARM_WAIT_S, alarm_grace_s=ALARM_GRACE_S)


def influx_count(server, db: str) -> int:
    """Waveform points in `db`."""
    rows = server.query("SELECT count(value) FROM waveform", db)
    return int(rows[0]["count"]) if rows else 0


def snapshot(server, db: str) -> dict:
    """Everything derived in InfluxDB: {(measurement, bed, signal, kind): {time_ns: value}}."""
    out: dict = {}
    for meas, field, tags in (("waveform", "value", ("bed", "signal", "kind")), ("rpeak", "value", ("bed", "signal")),
                              ("hr", "bpm", ("bed", "signal"))):
        rows = server.query(f"SELECT {field}, {', '.join(tags)} FROM {meas}", db)
        for r in rows:
            key = (meas,) + tuple(r.get(t) for t in tags)
            out.setdefault(key, {})[int(r["time"])] = float(r[field])
    return out


def compare(ref: dict, run: dict, tol: float = 1e-6, limit: int = 6) -> dict:
    """lost, duplicated and derived-mismatch counts of `run` against `ref` (see the module docstring), the
    mismatch also split by measurement, and `first_mismatches`: where `run` first departs from `ref`, per series,
    earliest first: [measurement, bed, signal, kind, seconds after the replay's start, what, seconds of the last
    difference] for at most `limit` series (what: "value", "missing" or "extra"; the last difference bounds a
    warm-up, e.g. the patient context's after a rebalance). One walk over both snapshots."""
    c = {"lost": 0, "duplicated": 0, "waveform_values": 0, "rpeak": 0, "hr": 0}
    firsts = []
    for key in set(ref) | set(run):
        a, b = ref.get(key, {}), run.get(key, {})
        missing, extra = a.keys() - b.keys(), b.keys() - a.keys()
        values = [t for t in a.keys() & b.keys() if abs(a[t] - b[t]) > tol]
        if key[0] == "waveform":
            c["lost"] += len(missing)
            c["duplicated"] += len(extra)
            c["waveform_values"] += len(values)
        else:
            c[key[0]] += len(missing) + len(extra) + len(values)
        bad = [(t, "missing") for t in missing] + [(t, "extra") for t in extra] + [(t, "value") for t in values]
        if bad:
            t, what = min(bad)
            firsts.append([*key, *([None] * (4 - len(key))), round((t - T0) / 1e9, 3), what,
                           round((max(bad)[0] - T0) / 1e9, 3)])
    c["derived_mismatch"] = c["waveform_values"] + c["rpeak"] + c["hr"]
    c["first_mismatches"] = sorted(firsts, key=lambda f: f[4])[:limit]
    return c


def expected_grid(rec) -> dict:
    """{(signal tag, kind): times relative to T0} from the offline mode (what every bed must hold exactly)."""
    from stream.tools.offline import translate_recording

    out = {}
    res = translate_recording(rec, "ppg2ecg", target_rate=SR_TARGET_HZ, translator="classic", signal="PLETH")
    out[("II_SYNTH", "synth")] = res.times_ns
    for sig in ("PLETH", "II"):
        out[(sig, "sr")] = translate_recording(rec, "sr", target_rate=SR_TARGET_HZ, translator="classic",
                                               signal=sig).times_ns
    return out


def wait_ready(workers: list[WorkerProcess], what: str, timeout_s: float = 120.0) -> None:
    """Until every worker logged that it is ready; RuntimeError when one exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    for w in workers:
        while "Worker]: Ready" not in w.log_tail(400):
            w.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: a worker was not ready in {timeout_s:g} s:\n{w.log_tail()}")
            time.sleep(0.3)


def send_alarms(bootstrap: str, topic: str, beds: list[str], onset_ns: int) -> int:
    """A real-time and a retrospective asystole alarm per bed at `onset_ns`, keyed by bed; returns how many."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for bed in beds:
            for mode in ("realtime", "retrospective"):
                alarm = {"bed_id": bed, "alarm_type": "asystole", "onset_ns": onset_ns, "alarm_id": f"{bed}-a1",
                         "mode": mode}
                producer.send(topic, key=bed.encode(), value=json.dumps(alarm).encode())
        producer.flush()
    finally:
        producer.close()
    return 2 * len(beds)


def read_verdicts(bootstrap: str, topic: str, want: int, timeout_s: float = 30.0) -> list[tuple[str, str, str]]:
    """The verdicts on `topic` as (alarm_id, mode, verdict): at least `want` of them unless `timeout_s` passes
    (then what there is), and what else arrives in the same polls."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=f"soak-reader-{uuid.uuid4().hex[:6]}",
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    out: list = []

    def poll(ms: int) -> None:
        for batch in consumer.poll(timeout_ms=ms).values():
            out.extend((v["alarm_id"], v["mode"], v["verdict"]) for v in (json.loads(m.value) for m in batch))

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < want:
            poll(500)
        poll(2000)  # a repeated verdict may come after the expected ones
    finally:
        consumer.close()
    return out


def compare_verdicts(ref: list, run: list) -> dict:
    """expected / missing / repeated / differing verdicts of `run` against `ref` (module docstring)."""
    want = {(a, m): v for a, m, v in ref}
    got: dict = {}
    for a, m, v in run:
        got.setdefault((a, m), []).append(v)
    return {"expected": len(want), "missing": sum(1 for k in want if k not in got),
            "repeated": sum(len(v) - 1 for v in got.values()),
            "differing": sum(1 for k, vs in got.items() if any(v != want.get(k) for v in vs))}


def settle(workers: list[WorkerProcess], bootstrap: str, settings: Settings, influx, sent: int,
           timeout_s: float, alarms: int = 0) -> bool:
    """Until every input message (and each of the `alarms` alarms) is committed and InfluxDB has not grown for 6 s
    (the sink agents caught up); False when `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        for w in workers:
            w.check()
        done = (committed_total(bootstrap, settings.group_id, settings.topic_input) == sent
                and (not alarms or committed_total(bootstrap, settings.group_id, settings.topic_alarms) == alarms))
        n = influx_count(influx.server, settings.influx_bucket)
        if n != last:
            last, stable_since = n, time.monotonic()
        if done and time.monotonic() - stable_since > 6.0:
            return True
        time.sleep(0.5)
    return False


def one_run(i: int, args, broker, influx, rec, rng: random.Random, out: Path, log=print) -> dict:
    """Run `i` (see the module docstring): fresh topics, group and database, `args.workers` workers, the replay,
    in a kill run (i > 0) one SIGKILL and restart, then settle; returns its counts and InfluxDB snapshot."""
    from stream.tools.chunker import bed_ids
    from stream.tools.publisher import ReplayOptions, replay
    from stream.topics import ensure_topics

    prefix = f"soak{i:02d}{uuid.uuid4().hex[:6]}"
    db = f"soak_{prefix}"
    ensure_topics(broker.bootstrap, list(prefixed_topics(prefix).values()), partitions=args.partitions)
    influx.server.create_database(db)
    settings = worker_settings(broker.bootstrap, influx, db, prefix, args)
    env = worker_environment(settings)
    workers = [WorkerProcess(env, out / f"run{i:02d}-w{k}.log").start() for k in range(args.workers)]
    try:
        wait_ready(workers, f"run {i}")
        result: dict = {}

        def run_replay():
            try:
                result["stats"] = replay([rec], broker.bootstrap, ReplayOptions(
                    topic=settings.topic_input, beds=args.beds, speed=args.speed, start_ns=T0, chunk_s=1.0))
            except BaseException as exc:
                result["error"] = exc

        t = threading.Thread(target=run_replay, daemon=True)
        replay_wall = args.seconds / args.speed
        t.start()
        started = time.monotonic()
        alarms, kill = 0, None
        kill_at = rng.uniform(0.2, 0.8) * replay_wall if i > 0 and not args.no_kill else None

        def alarms_due():
            nonlocal alarms
            if args.alarms and not alarms and time.monotonic() - started >= args.alarm_at * replay_wall:
                beds = bed_ids(args.beds, ReplayOptions.bed_prefix)
                alarms = send_alarms(broker.bootstrap, settings.topic_alarms, beds,
                                     T0 + int(args.alarm_at * args.seconds * 1e9))

        if kill_at is not None:
            while time.monotonic() - started < kill_at:
                alarms_due()
                time.sleep(0.05)
            k = rng.randrange(len(workers))
            kill = {"worker": k, "at_s": round(kill_at, 2), "at_signal_s": round(kill_at * args.speed, 1),
                    "restart_after_s": round(rng.uniform(0.0, 3.0), 2)}
            workers[k].kill()
            time.sleep(kill["restart_after_s"])
            workers[k] = WorkerProcess(env, out / f"run{i:02d}-w{k}-restarted.log").start()
        while args.alarms and not alarms:
            alarms_due()
            time.sleep(0.05)
        t.join(replay_wall + 120)
        if "error" in result or "stats" not in result:
            raise RuntimeError(f"run {i}: replay failed: {result.get('error')}")
        sent = result["stats"].chunks
        if not settle(workers, broker.bootstrap, settings, influx, sent, args.settle_timeout, alarms):
            log(f"run {i}: not settled after {args.settle_timeout:g} s (committed/sent or InfluxDB still growing)")
        dead = 0
        for k in range(args.workers):
            for f in out.glob(f"run{i:02d}-w{k}*.log"):
                dead += f.read_text(errors="replace").count("dead-letter ")
        stats = Path(settings.stats_file)
        lat = np.array([(r["published_ms"] - r["produce_ms"]) / 1000.0
                        for r in map(json.loads, stats.read_text().splitlines()) if r.get("produce_ms")])
        verdicts = read_verdicts(broker.bootstrap, settings.topic_verdicts, alarms) if alarms else []
        return {"run": i, "sent": sent, "kill": kill, "snapshot": snapshot(influx.server, db), "dead_letters": dead,
                "verdicts": verdicts,
                "latency_p99_s": round(float(np.percentile(lat, 99)), 2), "latency_max_s": round(float(lat.max()), 2)}
    finally:
        for w in workers:
            w.stop()


def main(argv=None) -> int:
    """Run the soak; prints one line per run and the totals."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workers", type=int, default=3, help="workers in the consumer group")
    ap.add_argument("--runs", type=int, default=10, help="kill-and-restart runs (plus one uninterrupted reference)")
    ap.add_argument("--beds", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    ap.add_argument("--seconds", type=float, default=150.0, help="seconds of signal replayed per bed")
    ap.add_argument("--speed", type=float, default=3.0, help="replay speed")
    ap.add_argument("--translator", default="classic")
    ap.add_argument("--context-s", type=float, default=0.0, help="WAVEBRIDGE_CONTEXT_S (0: patient context off)")
    ap.add_argument("--no-kill", action="store_true",
                    help="kill nothing in runs 1..K either: the mismatch is then run-to-run variation alone")
    ap.add_argument("--record", default=str(REPO.parent / "shared" / "data" / "bidmc" / "bidmc02"))
    ap.add_argument("--settle-timeout", type=float, default=120.0)
    ap.add_argument("--no-alarms", dest="alarms", action="store_false", help="send no monitor alarms")
    ap.add_argument("--alarm-at", type=float, default=0.5,
                    help="the alarms' onset, as a share of the replayed signal (sent when the replay gets there)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--out", default="out/soak")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.runs < 1:
        print("need --workers >= 1 and --runs >= 1", file=sys.stderr)
        return 2
    from dataclasses import replace

    from operators.io.records import read_recording
    from stream_bench import InfluxStack

    if not Path(args.record + ".hea").exists():
        print(f"record {args.record} not found (BIDMC under ../shared/data/bidmc)", file=sys.stderr)
        return 2
    rec = read_recording(args.record, ["II", "PLETH"])
    n = int(round(args.seconds * rec.rates["PLETH"]))
    rec = replace(rec, signals={k: v[:n] for k, v in rec.signals.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    grid = expected_grid(rec)
    totals = {"lost": 0, "duplicated": 0, "derived-mismatch": 0}
    alarm_totals = {"expected": 0, "missing": 0, "repeated": 0, "differing": 0}
    rows = []
    with tempfile.TemporaryDirectory(prefix="wavebridge-soak-") as tmp:
        broker = EmbeddedBroker(log_path=out / "tansu.log").start()
        influx = None
        try:
            influx = InfluxStack(Path(tmp))
            ref = one_run(0, args, broker, influx, rec, rng, out)
            print(f"reference output-topic latency p99/max {ref['latency_p99_s']:.2f}/{ref['latency_max_s']:.2f} s",
                  flush=True)
            beds = sorted({k[1] for k in ref["snapshot"] if k[0] == "waveform"})
            want = {("waveform", b, sig, kind): set((T0 + t).tolist()) for b in beds for (sig, kind), t in grid.items()}
            ref_grid_missing = sum(len(w - ref["snapshot"].get(k, {}).keys()) for k, w in want.items())
            ref_grid_extra = sum(len(ref["snapshot"].get(k, {}).keys() - w) for k, w in want.items())
            print(f"reference: {len(beds)} beds, {sum(len(v) for v in ref['snapshot'].values())} points; against "
                  f"the offline grid missing {ref_grid_missing}, extra {ref_grid_extra}; verdicts "
                  f"{sorted(__import__('collections').Counter(v for *_, v in ref['verdicts']).items())}", flush=True)
            for i in range(1, args.runs + 1):
                t0 = time.monotonic()
                r = one_run(i, args, broker, influx, rec, rng, out)
                c = compare(ref["snapshot"], r["snapshot"])
                totals["lost"] += c["lost"]
                totals["duplicated"] += c["duplicated"]
                totals["derived-mismatch"] += c["derived_mismatch"]
                v = compare_verdicts(ref["verdicts"], r["verdicts"])
                for k in alarm_totals:
                    alarm_totals[k] += v[k]
                row = {"run": i, "kill": r["kill"], **c, "verdicts": v, "dead_letters": r["dead_letters"],
                       "output_latency_p99_s": r["latency_p99_s"], "output_latency_max_s": r["latency_max_s"],
                       "wall_s": round(time.monotonic() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if influx is not None:
                influx.stop()
            broker.stop()
    (out / "rebalance_soak.json").write_text(json.dumps({"args": vars(args), "runs": rows, "totals": totals,
                                                        "alarm_totals": alarm_totals}, indent=2))
    if args.alarms:
        print(f"alarm verdicts: runs {args.runs} expected {alarm_totals['expected']} missing {alarm_totals['missing']} "
              f"repeated {alarm_totals['repeated']} differing {alarm_totals['differing']}")
    print(f"rebalance soak: runs {args.runs} lost {totals['lost']} duplicated {totals['duplicated']} "
          f"derived-mismatch {totals['derived-mismatch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
