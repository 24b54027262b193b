"""Streaming benchmark: how many beds one worker (or a group of them) sustains in real time on this machine.

Starts a real Tansu broker, a real InfluxDB 1.x (behind the v2-write proxy from tests/support)
and the worker as a subprocess (`--workers N`: N of them in one consumer group), then replays a recording as N beds
for each N of a ramp. Each worker appends one JSON line per acknowledged input message to WAVEBRIDGE_STATS_FILE
(`produce_ms` = the chunk's Kafka timestamp, `published_ms` = when its outputs were delivered to the
Kafka output topics, the alarm feed; the worker's in-process sink agent writes InfluxDB from those topics, or with
`--influx-sink separate` one `wavebridge sink` process does); from these we get end-to-end latency percentiles
over each step's steady state (messages of a bed's first window, which waits for the window to fill, and of the
idle-flushed last one are written but not counted). The latency floor is about one hop of signal
(2 s at ×1, 0.5 s at ×4) plus batching.

Load: N beds replayed at ×speed are N×speed bed-equivalents of message and sample rate. A step
is *sustained* when every message is written, p99 latency stays below --max-p99-s, latency does not
grow over the step (--max-growth: a rig that falls 10 % behind gains 1 s of latency every 10 s, which
a short step's p99 alone would not show), and the replay itself kept pace (otherwise the load
generator, not the worker, was the limit). The ramp
stops at the first step that is not sustained (`--bisect K`: then K more steps halve the gap to the last
sustained one). The same ramp with the `passthrough` translator
(no translation) gives the pipeline's ceiling. Each step prints the workers' CPU time and where it went by stage
(decode, windowing: routing, quality, context selection and R-peaks, model: the translator call, publish, and the
sink agent's influx_points and influx_write), then the CPU of every process of the rig and of the whole host while
the replay offered load: all of them share this machine's cores, so a failing step with the host's cores busy was the
rig's limit, not only the worker's. After each step it waits for the InfluxDB sink to catch up (its lag on the output topics 0) and prints
the points written and how long that took: reported, not part of "sustained", since InfluxDB never holds the alarm
feed. The run starts with bytes of state per bed.

    python benchmarks/stream_bench.py                          # classic vs passthrough, ~12 min
    python benchmarks/stream_bench.py --beds 1,2,4,8 --speed 1 --duration 30 --translator clmt
    python benchmarks/stream_bench.py --translator clmt --beds 16,32,64 --workers 2 --threads 1
    python benchmarks/stream_bench.py --translator passthrough --baseline '' --beds 128,256 --workers 2 \
        --influx-sink separate --threads 1                    # the scale-out set-up of docs/deploy.md

Not a test: numbers depend on the machine and on whatever else runs on it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make stream/, operators/, tests/support importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from stream.config import Settings  # noqa: E402
from stream.tools.embedded import EmbeddedBroker, die_with_parent, free_port  # noqa: E402
from stream.tools.worker_process import (LOCAL_BROKER_TIMING, SINK, WorkerProcess,  # noqa: E402
                                         prefixed_topics, worker_environment)

DEFAULT_RECORD = REPO.parent / "shared" / "data" / "bidmc" / "bidmc01"
WINDOW_S = 8.0
HOP_S = 2.0
IDLE_FLUSH_S = 5.0


@dataclass
class StepResult:
    translator: str
    beds: int
    speed: float
    bed_equivalents: float
    sent: int
    written: int
    p50_s: float
    p99_s: float
    max_s: float
    replay_lag_s: float
    wall_s: float
    samples_per_s: float
    sustained: bool
    why: str = ""
    cpu: dict | None = None  # seconds by stage over the step, and the worker process's CPU seconds
    rig: dict | None = None  # CPU seconds over the step of each process of the rig and of the whole host
    influx_points: float = math.nan  # points the InfluxDB sink(s) wrote from the step's start until caught up
    influx_catchup_s: float | None = None  # after the alarm feed had everything; None: not caught up in the wait
    latency_growth: float = math.nan  # seconds of latency gained per second over the steady state (latency_growth)
    load_s: float = math.nan  # seconds the replay offered load
    rig_load: dict | None = None  # as `rig`, over the replay only


# ------------------------------------------------------------------ services


class InfluxStack:
    """influxd 1.x plus the v2-write proxy in its own process (keeps its GIL out of the replay)."""

    def __init__(self, workdir: Path):
        from tests.support.influx import start_influxdb

        self.server = start_influxdb(workdir / "influxdb")
        self.port = free_port()
        code = ("import sys, signal, threading\n"
                "from tests.support.influx_proxy import influx_v2_proxy\n"
                "p = influx_v2_proxy(sys.argv[1], port=int(sys.argv[2]))\n"
                "print('ready', flush=True)\n"
                "signal.signal(signal.SIGTERM, lambda *a: (p.stop(), sys.exit(0)))\n"
                "threading.Event().wait()\n")
        self.proxy = subprocess.Popen([sys.executable, "-c", code, self.server.url, str(self.port)], cwd=REPO,
                                      stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        if self.proxy.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("InfluxDB v2 proxy did not start")

    @property
    def url(self) -> str:
        """The v2-write proxy's URL (the worker's WAVEBRIDGE_INFLUX_URL)."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the proxy process, then influxd."""
        if self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        self.server.stop()


def worker_settings(bootstrap: str, influx: InfluxStack, db: str, prefix: str, translator: str, stats: Path,
                    args) -> Settings:
    """The benchmarked worker: topics named by `prefix`, metrics on a free port (scraped for where its time goes)."""
    return Settings(
        broker=f"kafka://{bootstrap}", group_id=f"bench-{db}", translator=translator, device=args.device,
        **LOCAL_BROKER_TIMING, window_s=WINDOW_S, hop_s=args.hop_s, batch_size=args.batch_size, idle_flush_s=IDLE_FLUSH_S,
        influx_url=influx.url, influx_bucket=db, influx_token="bench", influx_sink=args.influx_sink,
        stats_file=str(stats), without_web=True,
        metrics_host="127.0.0.1", metrics_port=free_port(), log_level="warn", **prefixed_topics(prefix))


# ------------------------------------------------------------------ stats


def read_stats(paths: list[Path], prefix: str) -> list[dict]:
    """The complete lines of the workers' stats files for beds whose id starts with `prefix`."""
    rows = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n") and f'"bed":"{prefix}' in line:  # skip a half-written last line
                        rows.append(json.loads(line))
        except FileNotFoundError:
            pass
    return rows


def wait_written(workers: list[WorkerProcess], stats: list[Path], prefix: str, sent: int,
                 timeout_s: float) -> list[dict]:
    """Stats rows of `prefix` once `sent` of them are written, or what there is after `timeout_s` seconds;
    RuntimeError when a worker exits or its agent crashes meanwhile."""
    deadline = time.monotonic() + timeout_s
    rows = read_stats(stats, prefix)
    while len(rows) < sent and time.monotonic() < deadline:
        for w in workers:
            w.check()  # also a crashed Faust agent, which leaves the process running
        time.sleep(0.5)
        rows = read_stats(stats, prefix)
    return rows


def percentile(x: np.ndarray, q: float) -> float:
    """The `q`-th percentile of `x`, NaN when empty."""
    return float(np.percentile(x, q)) if len(x) else math.nan


def scrape(settings: Settings) -> list:
    """The worker's metric samples (prometheus_client `Sample`s)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{settings.metrics_host}:{settings.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [sample for fam in text_string_to_metric_families(text) for sample in fam.samples]


def scrape_cpu(settings: list[Settings]) -> dict[str, float]:
    """The workers' `wavebridge_stage_seconds` by stage and `process_cpu_seconds_total` (cumulative, summed)."""
    out: dict[str, float] = {}
    for s in settings:
        for sample in scrape(s):
            if sample.name == "wavebridge_stage_seconds_total":
                out[sample.labels["stage"]] = out.get(sample.labels["stage"], 0.0) + sample.value
            elif sample.name == "process_cpu_seconds_total":
                out["process_cpu"] = out.get("process_cpu", 0.0) + sample.value
    return out


def scrape_influx(settings: list[Settings]) -> tuple[float, float]:
    """(points written to InfluxDB, messages of the output topics not yet written) summed over the processes that
    run a sink agent: the sink group's lag comes from the fetch responses' high watermark (stream.metrics)."""
    points, lag = 0.0, 0.0
    for s in settings:
        outputs = {s.topic_ecg_synth, s.topic_sr, s.topic_events, s.topic_verdicts}
        for sample in scrape(s):
            if sample.name == "wavebridge_influx_points_written_total":
                points += sample.value
            elif sample.name == "wavebridge_consumer_lag_messages" and sample.labels.get("topic") in outputs:
                lag += sample.value
    return points, lag


def wait_influx(settings: list[Settings], timeout_s: float) -> tuple[float, float | None]:
    """Poll the sink agents until their lag on the output topics is 0 and their written points stop growing (two
    polls a second apart); (points written so far, seconds waited), the seconds None after `timeout_s`."""
    started = time.monotonic()
    last = None
    while True:
        points, lag = scrape_influx(settings)
        if lag == 0 and last == points:
            return points, time.monotonic() - started - 1.0  # the stable poll's second does not count
        if time.monotonic() - started > timeout_s:
            return points, None
        last = points if lag == 0 else None
        time.sleep(1.0)


def wait_assigned(workers: list[WorkerProcess], settings: list[Settings], partitions: int, timeout_s: float) -> None:
    """Until every input partition is assigned and every worker holds one (as far as there are partitions), so no
    step starts with a rebalance pending; RuntimeError after `timeout_s` seconds."""
    import urllib.error

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            held = [sum(x.value for x in scrape(s) if x.name == "wavebridge_partitions_assigned") for s in settings]
        except urllib.error.URLError:  # a worker still starting: its metrics server is not up yet
            held = [0] * len(settings)
        if sum(held) == partitions and sum(h > 0 for h in held) == min(len(settings), partitions):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"input partitions held by the workers: {held} of {partitions} after {timeout_s:g} s")
        for w in workers:
            w.check()
        time.sleep(0.5)


STAGES = ("decode", "windowing", "model", "publish", "influx_points", "influx_write")


def cpu_line(cpu: dict[str, float], load_s: float, workers: int = 1) -> str:
    """One line: the workers' CPU seconds over the `load_s` seconds of the replay, and their time by stage over the
    whole step, backlog included (seconds and share)."""
    total = sum(cpu.get(k, 0.0) for k in STAGES) or math.nan
    busy = cpu.get("process_cpu_load", math.nan)
    return (f"worker{'s' if workers > 1 else ''} CPU {busy:.1f} s in the {load_s:.0f} s of the replay "
            f"({100 * busy / load_s:.0f} % of a core); time by stage over the step "
            "(wall, includes waiting for a core on a loaded machine): "
            + ", ".join(f"{k} {cpu.get(k, 0.0):.1f} s {100 * cpu.get(k, 0.0) / total:.0f}%" for k in STAGES))


# ------------------------------------------------------------------ the rig's CPU


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(stat: str) -> float:
    """User + system CPU seconds (all threads) from the text of /proc/PID/stat (fields 14 and 15 of proc(5))."""
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / _TICK


def host_busy_s(stat: str) -> float:
    """CPU seconds all cores spent working (user, nice, system, irq, softirq) from the text of /proc/stat: not idle,
    not waiting for I/O, not stolen by a hypervisor; guest time is already inside user and nice."""
    ticks = [int(v) for v in stat.splitlines()[0].split()[1:]]
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / _TICK


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # a process that ended, or no /proc
        return None


def _proc_cpu_now(pid: int | None) -> float:
    text = None if pid is None else _read(f"/proc/{pid}/stat")
    return math.nan if text is None else proc_cpu_s(text)


def _host_busy_now() -> float:
    text = _read("/proc/stat")
    return math.nan if text is None else host_busy_s(text)


class RigCpu:
    """CPU seconds of every process of the benchmark rig, and of the host, between two snapshots.

    Everything runs on this machine: broker, InfluxDB and its proxy, the replay (this process) and the workers
    share its cores. A step the workers fail while the host is near all its cores busy says that the rig, not the
    worker alone, ran out of CPU; a failing step with idle cores points at waiting (I/O, batching, the broker).
    """

    def __init__(self, roles: dict[str, list]):
        self.roles = roles  # role -> pids (None while a process is not running)

    def snapshot(self) -> dict[str, float]:
        """Cumulative CPU seconds per role and of the host ("host")."""
        snap = {role: sum(_proc_cpu_now(pid) for pid in pids) for role, pids in self.roles.items()}
        snap["host"] = _host_busy_now()
        return snap

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds per role (and "host") between two snapshots."""
        return {k: round(after[k] - before[k], 3) for k in after}

    @staticmethod
    def line(seconds: dict[str, float], wall_s: float) -> str:
        """One line: the host's and each role's CPU `seconds` over `wall_s` seconds, in % of one core."""
        pct = {k: 100.0 * v / wall_s for k, v in seconds.items()}
        cores = os.cpu_count() or 1
        return (f"host CPU {pct['host']:.0f} % of {cores * 100} % ({cores} cores); by process: "
                + ", ".join(f"{k} {v:.0f} %" for k, v in pct.items() if k != "host"))


# ------------------------------------------------------------------ one translator


def run_translator(translator: str, args, broker: EmbeddedBroker, influx: InfluxStack, recording, workdir: Path,
                   log=print) -> list[StepResult]:
    """The ramp for one translator spec: one worker (its own topics and database), a warm-up bed, then one step
    per bed count of `args.beds` until a step is not sustained (all of them with `--full-ramp`; `ramp`)."""
    from stream.topics import ensure_topics

    tag = "".join(ch if ch.isalnum() else "_" for ch in translator)
    db = f"bench_{tag}"
    ensure_topics(broker.bootstrap, list(prefixed_topics(f"bench.{tag}").values()), partitions=args.partitions)
    influx.server.create_database(db)
    # one stats file and metrics port per worker (same consumer group: the input partitions are spread over them)
    stats = [workdir / f"stats-{tag}-w{i}.jsonl" for i in range(args.workers)]
    for path in stats:
        path.unlink(missing_ok=True)  # the worker appends: rows of an earlier run would count as written
    results: list[StepResult] = []
    settings = [worker_settings(broker.bootstrap, influx, db, f"bench.{tag}", translator, path, args) for path in stats]
    threads = {} if not args.threads else {v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(WorkerProcess(worker_environment(s, extra=threads),
                                                     workdir / f"worker-{tag}-w{i}.log"))
                   for i, s in enumerate(settings)]
        roles = {"workers": [w.pid for w in workers]}
        watched, writers = list(workers), list(settings)  # processes that must stay up; those that write InfluxDB
        if args.influx_sink == "separate":  # one `wavebridge sink` for the group, on a metrics port of its own
            sink_settings = dataclasses.replace(settings[0], metrics_port=free_port(), stats_file=None)
            sink = stack.enter_context(WorkerProcess(worker_environment(sink_settings), workdir / f"sink-{tag}.log",
                                                     command=SINK))
            roles["sink"] = [sink.pid]
            watched, writers = watched + [sink], [sink_settings]
        t0 = time.monotonic()
        rig = RigCpu({**roles, "broker": [broker.pid], "influxd+proxy": [influx.server.proc.pid, influx.proxy.pid],
                      "replay (bench)": [os.getpid()]})
        wait_assigned(workers, settings, args.partitions, args.warmup_timeout)
        _warm_up(watched, settings, stats, recording, args)
        log(f"[{translator}] {len(workers)} worker(s) warm after {time.monotonic() - t0:.1f} s")
        def step(n: int) -> bool:
            res = run_step(n, watched, settings, stats, recording, args, rig, writers)
            results.append(res)
            log(f"[{translator}] {n:>4} beds x{args.speed:g} = {res.bed_equivalents:>6g} bed-eq  "
                f"written {res.written}/{res.sent}  p50 {res.p50_s:6.2f} s  p99 {res.p99_s:6.2f} s  "
                f"growth {res.latency_growth:+.3f} s/s  "
                f"{res.samples_per_s:8.0f} samples/s  {'OK' if res.sustained else 'NOT sustained: ' + res.why}\n"
                f"        {cpu_line(res.cpu, res.load_s, len(workers))}\n"
                f"        during the replay: {RigCpu.line(res.rig_load, res.load_s)}\n"
                f"        InfluxDB: {res.influx_points:.0f} points, "
                + (f"caught up {res.influx_catchup_s:.1f} s after the alarm feed had everything"
                   if res.influx_catchup_s is not None
                   else f"NOT caught up {args.influx_wait_s:g} s after the alarm feed"))
            return res.sustained

        ramp(step, args.beds, args.bisect, args.full_ramp)
    return results


def ramp(step, beds: list[int], bisect: int = 0, full_ramp: bool = False) -> None:
    """Run `step(n) -> sustained` for each bed count of `beds` (ascending) until one is not sustained (all of them with
    `full_ramp`), then `bisect` more steps halving the gap between the last sustained count and the failing one: a
    doubling ramp alone only tells capacities apart by factors of two."""
    lo = 0
    for n in beds:
        if step(n):
            lo = n
            continue
        if full_ramp:
            continue
        hi = n
        for _ in range(bisect):
            mid = (lo + hi) // 2
            if mid <= lo:
                break
            if step(mid):
                lo = mid
            else:
                hi = mid
        return


def _warm_up(workers: list[WorkerProcess], settings: list[Settings], stats: list[Path], recording, args) -> None:
    """One short bed per input partition, waited for: group join, translator load (torch for clmt) and the first
    InfluxDB write, in every worker."""
    from stream.tools.publisher import ReplayOptions, replay

    warm = replay([recording], settings[0].bootstrap_servers[0],
                  ReplayOptions(topic=settings[0].topic_input, beds=max(1, 2 * args.partitions), bed_prefix="warmup",
                                speed=0, duration_s=WINDOW_S + 2 * args.hop_s, resample=args.resample))
    rows = wait_written(workers, stats, "warmup", warm.chunks, args.warmup_timeout)
    if len(rows) < warm.chunks:
        raise RuntimeError(f"{settings[0].translator}: workers did not process the warm-up beds within "
                           f"{args.warmup_timeout:g} s; log:\n" + "\n".join(w.log_tail() for w in workers))


def run_step(n: int, workers: list[WorkerProcess], settings: list[Settings], stats: list[Path], recording,
             args, rig: RigCpu | None = None, writers: list[Settings] | None = None) -> StepResult:
    """One step of the ramp: `n` beds replayed at `args.speed`, every message waited for, latency over the steady
    state (a bed's first window must fill before anything is written, and its last one is closed by the idle
    flush: both are start/stop effects), and whether the step was sustained.

    `workers` are the processes that must stay up (a separate sink too), `settings` the workers'; `writers` those
    of the processes whose sink agents write InfluxDB (default: the workers). Sustained means the alarm feed kept
    up; InfluxDB follows on its own and is reported (points, catch-up time), not counted in it."""
    writers = settings if writers is None else writers
    from stream.tools.publisher import ReplayOptions, replay

    prefix = f"n{n:03d}-"
    cpu0 = scrape_cpu(settings)
    points0 = scrape_influx(writers)[0]
    rig0 = rig.snapshot() if rig is not None else None
    wall0 = time.time()
    st = replay([recording], settings[0].bootstrap_servers[0], ReplayOptions(
        topic=settings[0].topic_input, beds=n, bed_prefix=prefix.rstrip("-"), speed=args.speed, duration_s=args.duration,
        resample=args.resample))
    replay_end_ms = time.time() * 1000.0
    # CPU while the load was offered: over the whole step the idle-flush wait and the drain would dilute it, and a
    # saturated worker would look half idle.
    cpu_load = scrape_cpu(settings)
    rig_load = rig.snapshot() if rig is not None else None
    load_s = replay_end_ms / 1000.0 - wall0
    # Wait for every message to be written (including the idle-flushed tail).
    drain_s = args.drain_s if args.drain_s is not None else IDLE_FLUSH_S + args.max_p99_s + 10.0
    rows = wait_written(workers, stats, prefix, st.chunks, drain_s)
    wall = time.time() - wall0
    rig1 = rig.snapshot() if rig is not None else None
    cpu1 = scrape_cpu(settings)
    points1, catchup = wait_influx(writers, args.influx_wait_s)
    cpu = {k: round(v - cpu0.get(k, 0.0), 3) for k, v in cpu1.items()}
    cpu["process_cpu_load"] = round(cpu_load.get("process_cpu", 0.0) - cpu0.get("process_cpu", 0.0), 3)
    head_cut_ms = wall0 * 1000.0 + (WINDOW_S / args.speed) * 1000.0 + 1000.0
    tail_cut_ms = replay_end_ms - (WINDOW_S / args.speed) * 1000.0 - 1000.0
    steady = [r for r in rows if r.get("produce_ms") is not None and head_cut_ms <= r["produce_ms"] <= tail_cut_ms]
    lat = np.array([(r["published_ms"] - r["produce_ms"]) / 1000.0 for r in steady])
    p99 = percentile(lat, 99)
    growth = latency_growth([r["produce_ms"] / 1000.0 for r in steady], lat)
    why = step_problems(len(rows), st.chunks, drain_s, p99, growth, st.max_lag_s, args)
    return StepResult(
        translator=settings[0].translator, beds=n, speed=args.speed, bed_equivalents=n * args.speed, sent=st.chunks,
        written=len(rows), p50_s=percentile(lat, 50), p99_s=p99, max_s=float(lat.max()) if len(lat) else math.nan,
        replay_lag_s=st.max_lag_s, wall_s=wall, samples_per_s=st.samples / max(st.elapsed_s, 1e-9),
        sustained=not why, why="; ".join(why), cpu=cpu,
        rig=None if rig is None else RigCpu.delta(rig0, rig1), influx_points=points1 - points0,
        influx_catchup_s=catchup, latency_growth=growth, load_s=load_s,
        rig_load=None if rig is None else RigCpu.delta(rig0, rig_load))


def step_problems(written: int, sent: int, drain_s: float, p99: float, growth: float, replay_lag_s: float,
                  args) -> list[str]:
    """Why a step was not sustained (empty: it was): messages missing, p99 over --max-p99-s, latency growing faster
    than --max-growth, or the load generator falling behind (--max-replay-lag-s)."""
    why = []
    if written < sent:
        why.append(f"only {written}/{sent} messages written {drain_s:.0f} s after the replay")
    if not (p99 <= args.max_p99_s):
        why.append(f"p99 {p99:.2f} s > {args.max_p99_s:g} s")
    if growth > args.max_growth:
        why.append(f"falling behind: latency grew {growth:.2f} s per s")
    if replay_lag_s > args.max_replay_lag_s:
        why.append(f"replay fell {replay_lag_s:.1f} s behind (load generator limit)")
    return why


def latency_growth(produce_s, latency_s) -> float:
    """Seconds of latency gained per second of the step: the least-squares slope of latency against produce time.

    A pipeline that keeps up has a flat latency (a saw-tooth of one hop at most, which a fit over the step
    averages out); one that handles a fraction f less than it is offered gains about f / (1 - f) seconds per
    second, whatever the p99 bound says about a short step. NaN with fewer than two distinct produce times."""
    t = np.asarray(produce_s, dtype=np.float64)
    y = np.asarray(latency_s, dtype=np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return math.nan
    return float(np.polyfit(t - t[0], y, 1)[0])


def sustained(results: list[StepResult]) -> float:
    """Largest bed-equivalent load sustained below the smallest one that was not (0 if none)."""
    limit = min((r.bed_equivalents for r in results if not r.sustained), default=math.inf)
    return max((r.bed_equivalents for r in results if r.sustained and r.bed_equivalents < limit), default=0.0)


# ------------------------------------------------------------------ memory per bed


def bed_memory(recording, n_beds: int, seconds: float = 90.0, translator: str = "passthrough") -> dict:
    """Bytes of worker state per bed, measured in-process (tracemalloc) on the worker's own pipeline.

    `n_beds` beds each get `seconds` of the recording (II and PLETH, 1 s chunks) with the worker's default
    settings, so every bed holds full window buffers and a full patient-context store ("active"); then every
    stream is idle-flushed ("idle": what a bed that stopped sending keeps until WAVEBRIDGE_BED_EVICT_S), then
    evicted ("evicted": what is left of it). Translation is `translator`: `passthrough` (the default) keeps nothing per
    bed; `clmt` adds its per-bed context cache (features, template tokens, the prior's beat model: one context version
    per bed, at most `models.engine.CONTEXT_CACHE` entries), which outlives the bed's eviction until the cache's least
    recently used entries go. The model's own memory is per worker, not per bed.

    Each chunk is pushed with its binary wire encoding as its token, as the worker pushes the message it holds until
    the commit rule releases it (`PipelineConfig.ack_lag_s`; Faust's own per-message objects come on top):
    "held_input_bytes_per_bed" is what those still held at the end add up to.
    """
    import tracemalloc

    from operators.translator import load_translator
    from stream.config import Settings
    from stream.pipeline import Pipeline, PipelineConfig
    from stream.tools.chunker import iter_all_chunks, plan_beds

    settings = Settings(translator=translator, window_s=WINDOW_S, hop_s=HOP_S)
    now = [0.0]
    pipe = Pipeline(PipelineConfig.from_settings(settings), load_translator(translator), clock=lambda: now[0])
    plan = plan_beds([recording], n_beds, "mem")
    from stream import wire

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i, chunk in enumerate(iter_all_chunks(plan, 1.0, 1_750_000_000_000_000_000, None, None, seconds)):
        pipe.push(chunk, wire.encode_binary(chunk))
        if i % (2 * n_beds) == 2 * n_beds - 1:  # one batch per second of signal, as the worker would take them
            pipe.process()
    pipe.process()
    active = tracemalloc.get_traced_memory()[0] - base
    held_bytes = sum(len(t) for st in pipe._streams.values() for *_, t in st.pending)
    held_bytes += sum(len(t) for t in pipe._context_input.held())
    now[0] = 1e9  # every stream silent for longer than the idle flush
    pipe.flush_idle()
    pipe.process()
    idle = tracemalloc.get_traced_memory()[0] - base
    now[0] = 2e9  # past the eviction time too
    pipe.flush_idle()
    evicted = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"beds": n_beds, "seconds": seconds, "active_bytes_per_bed": round(active / n_beds),
            "idle_bytes_per_bed": round(idle / n_beds), "evicted_bytes_per_bed": round(evicted / n_beds),
            "held_input_bytes_per_bed": round(held_bytes / n_beds),
            "alarm_ring_bytes_per_bed": alarm_ring_memory(plan, settings.alarm_buffer_s) / n_beds}


def alarm_ring_memory(plan, keep_s: float) -> float:
    """Bytes the alarm agent's signal ring (stream/alarms.py) holds for the beds of `plan` once full: `keep_s` of
    every signal plus a chunk (measured with tracemalloc, room for every bed)."""
    import tracemalloc

    from stream import wire
    from stream.alarms import SignalRing
    from stream.tools.chunker import iter_all_chunks

    ring = SignalRing(keep_s, max_beds=len(plan))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for chunk in iter_all_chunks(plan, 1.0, 1_750_000_000_000_000_000, None, None, keep_s + 5.0):
        ring.add(wire.decode(wire.encode_binary(chunk)))  # samples of its own, as the worker decodes them
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return round(held)


# ------------------------------------------------------------------ main


def load_recording(record: str | None):
    """(II + PLETH recording, its description): `record`, else BIDMC bidmc01, else a synthetic one."""
    from operators.io.records import read_recording

    if record:
        return read_recording(record, ["II", "PLETH"]), record
    if DEFAULT_RECORD.with_suffix(".hea").exists():
        return read_recording(DEFAULT_RECORD, ["II", "PLETH"]), str(DEFAULT_RECORD)
    from operators.io.synthetic import synthesize, write_wfdb

    path = write_wfdb(synthesize(seconds=600), Path(tempfile.mkdtemp(prefix="wavebridge-bench-")), "synthetic")
    return read_recording(path, ["II", "PLETH"]), "synthetic (BIDMC not found)"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--record", help="recording to replay (default ../shared/data/bidmc/bidmc01, else synthetic)")
    p.add_argument("--beds", default="1,2,4,8,16,32,64,128", help="ramp of bed counts")
    p.add_argument("--speed", type=float, default=4.0, help="replay speed; load = beds x speed bed-equivalents")
    p.add_argument("--duration", type=float, default=120.0,
                   help="seconds of signal replayed per bed and step (30 s of load at x4: a shorter step hides a "
                        "pipeline that falls behind slowly)")
    p.add_argument("--translator", default="classic", help="translator spec under test")
    p.add_argument("--baseline", default="passthrough", help="ceiling translator ('' to skip)")
    p.add_argument("--device", default="auto", help="WAVEBRIDGE_DEVICE for the worker (auto, cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=64, help="WAVEBRIDGE_BATCH_SIZE")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input topic (most workers that get work)")
    p.add_argument("--resample", default="", metavar="SIGNAL=HZ,...",
                   help="send these signals at a lower rate, e.g. PLETH=25: a 25 Hz PPG gets super-resolution too")
    p.add_argument("--workers", type=int, default=1, help="worker processes in one consumer group")
    p.add_argument("--influx-sink", choices=("worker", "separate"), default="worker",
                   help="WAVEBRIDGE_INFLUX_SINK: InfluxDB written in each worker, or by one `wavebridge sink` process")
    p.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS / MKL_NUM_THREADS of each worker (torch's CPU threads); 0: torch's default")
    p.add_argument("--max-p99-s", type=float, default=5.0, help="p99 latency bound (wall seconds) for 'sustained'")
    p.add_argument("--max-growth", type=float, default=0.05,
                   help="latency growth bound (seconds gained per second over the step) for 'sustained': "
                        "0.05 lets a step lose 5 %% of its pace to noise, not more")
    p.add_argument("--hop-s", type=float, default=HOP_S,
                   help="the workers' WAVEBRIDGE_HOP_S: a longer hop computes each sample fewer times, for more latency")
    p.add_argument("--max-replay-lag-s", type=float, default=2.0, help="replay lateness beyond which a step is void")
    p.add_argument("--warmup-timeout", type=float, default=180.0, help="seconds to wait for the warm-up bed")
    p.add_argument("--drain-s", type=float, default=None,
                   help="wait this long after a step's replay for all messages (default idle flush + p99 bound + 10 s)")
    p.add_argument("--influx-wait-s", type=float, default=60.0,
                   help="after each step, wait this long for InfluxDB to catch up (reported, not part of 'sustained')")
    p.add_argument("--full-ramp", action="store_true", help="continue the ramp after the first failing step")
    p.add_argument("--bisect", type=int, default=0, metavar="K",
                   help="after the first failing step, K more steps halving the gap to the last sustained one "
                        "(not with --full-ramp)")
    p.add_argument("--memory-beds", type=int, default=50, help="beds for the in-process bytes-per-bed measurement")
    p.add_argument("--memory-translator", default="passthrough",
                   help="translator of the bytes-per-bed measurement (clmt: adds the engine's per-bed context cache)")
    p.add_argument("--memory-only", action="store_true", help="only measure bytes per bed (no services, seconds)")
    p.add_argument("--out", default="out/bench", help="folder for logs and stream_bench.json")
    return p


def main(argv=None) -> int:
    """Run the benchmark; returns the exit status (2: bad options)."""
    args = build_parser().parse_args(argv)
    try:
        args.beds = sorted({int(b) for b in args.beds.split(",") if b.strip()})
    except ValueError:
        print(f"--beds must be a comma list of integers, got {args.beds!r}", file=sys.stderr)
        return 2
    try:
        args.resample = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.resample.split(",") if kv.strip())}
    except ValueError:
        print(f"--resample must look like PLETH=25[,II=50], got {args.resample!r}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("--workers must be >= 1", file=sys.stderr)
        return 2
    if not args.beds or args.beds[0] < 1 or args.speed <= 0 or args.duration < 3 * WINDOW_S:
        print(f"need beds >= 1, speed > 0 and duration >= {3 * WINDOW_S:g} s (a steady-state stretch "
              "between the first window and the end)", file=sys.stderr)
        return 2
    if not 0 < args.hop_s <= WINDOW_S - Settings.lookahead_s:
        print(f"need 0 < --hop-s <= {WINDOW_S - Settings.lookahead_s:g} (the window less the look-ahead)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recording, source = load_recording(args.record)
    mem = bed_memory(recording, args.memory_beds, translator=args.memory_translator)
    print(f"memory per bed ({mem['beds']} beds, {mem['seconds']:g} s of II+PLETH each, {args.memory_translator}, in-process): "
          f"{mem['active_bytes_per_bed']:,} bytes active (of which {mem['held_input_bytes_per_bed']:,} input messages "
          f"held by the commit rule), {mem['idle_bytes_per_bed']:,} idle (after the idle flush), "
          f"{mem['evicted_bytes_per_bed']:,} after WAVEBRIDGE_BED_EVICT_S; 10,000 idle beds: "
          f"{mem['idle_bytes_per_bed'] * 10_000 / 2**20:.0f} MiB; alarm ring (full, WAVEBRIDGE_ALARM_BUFFER_S): "
          f"{mem['alarm_ring_bytes_per_bed']:,.0f} bytes per bed, at most WAVEBRIDGE_ALARM_MAX_BEDS beds", flush=True)
    if args.memory_only:
        return 0
    print(f"recording: {source}; ramp {args.beds} beds x{args.speed:g}, {args.duration:g} s each; "
          f"cores: {os.cpu_count()}", flush=True)

    translators = [args.translator] + ([args.baseline] if args.baseline and args.baseline != args.translator else [])
    all_results: dict[str, list[StepResult]] = {}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wavebridge-bench-") as tmp:
        work = Path(tmp)
        broker = EmbeddedBroker(log_path=out / "tansu.log").start()
        influx = None
        try:
            influx = InfluxStack(work)
            for tr in translators:
                all_results[tr] = run_translator(tr, args, broker, influx, recording, out,
                                                 log=lambda s: print(s, flush=True))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if influx is not None:
                influx.stop()
            broker.stop()

    print(f"\n=== stream benchmark ({time.monotonic() - t_start:.0f} s; p99 bound {args.max_p99_s:g} s, "
          f"window {WINDOW_S:g} s / hop {args.hop_s:g} s) ===")
    print(f"{'translator':<14}{'beds':>6}{'bed-eq':>8}{'written':>12}{'p50 s':>8}{'p99 s':>8}{'max s':>8}"
          f"{'growth':>8}  result")
    for tr, rows in all_results.items():
        for r in rows:
            print(f"{tr:<14}{r.beds:>6}{r.bed_equivalents:>8g}{f'{r.written}/{r.sent}':>12}{r.p50_s:>8.2f}"
                  f"{r.p99_s:>8.2f}{r.max_s:>8.2f}{r.latency_growth:>+8.3f}  {'sustained' if r.sustained else r.why}")
    summary = {tr: sustained(rows) for tr, rows in all_results.items()}
    print()
    for tr, beds in summary.items():
        capped = all(r.sustained for r in all_results[tr])
        print(f"beds sustained in real time, {tr}: {beds:g}{'+ (ramp never saturated)' if capped else ''}")
    ratio = None
    if len(summary) == 2 and summary[args.baseline]:
        ratio = summary[args.translator] / summary[args.baseline]
        print(f"ratio {args.translator} / {args.baseline}: {ratio:.2f}")
        # The ramp doubles, so equal capacity can hide a cost: compare latency at a common load.
        common = min(summary.values())
        at = {tr: r for tr, rows in all_results.items() for r in rows if r.bed_equivalents == common}
        if common and len(at) == len(all_results):
            print(f"at {common:g} bed-eq: p50/p99 " + ", ".join(
                f"{tr} {r.p50_s:.2f}/{r.p99_s:.2f} s" for tr, r in at.items()))
    report = {"recording": source, "args": {k: v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(),
              "steps": {tr: [asdict(r) for r in rows] for tr, rows in all_results.items()},
              "beds_sustained": summary, "ratio": ratio, "memory_per_bed": mem}
    (out / "stream_bench.json").write_text(json.dumps(report, indent=2))
    print(f"details: {out / 'stream_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
