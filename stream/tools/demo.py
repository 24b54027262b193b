"""`wavebridge demo`: the whole pipeline on one machine, with nothing to set up.

Starts an embedded Tansu broker, creates the topics, starts the worker as a subprocess, replays a
recording as several beds (plus one bed whose PLETH is down-sampled to 25 Hz so super-resolution
has work), collects the output topics and writes Parquet files and a PNG under `--out`.
Broker and worker are always stopped on exit, including on Ctrl-C and on errors.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stream.tools.cli import ArgumentParser
from stream.tools.embedded import die_with_parent

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RECORD = REPO.parent / "shared" / "data" / "bidmc" / "bidmc01"
SR_BED_PREFIX = "lowres"  # beds replayed at 25 Hz: lowres-001
SR_INPUT_HZ = 25.0
QUIET_S = 8.0  # after the replay, stop once no output arrived for this long (worker idle-flushes in 2 s)


@dataclass
class Collected:
    """Decoded chunks per topic role: "input", "synth", "sr"; events (JSON objects) from the events topic."""

    chunks: dict[str, list] = field(default_factory=lambda: {"input": [], "synth": [], "sr": []})
    events: list = field(default_factory=list)
    last_output_at: float = 0.0

    def samples(self, role: str) -> int:
        return sum(len(c.samples) for c in self.chunks[role])


# ------------------------------------------------------------------ inputs


def resolve_record(record: str | None, workdir: Path) -> tuple[Path, str]:
    """(record path, description). No --record: BIDMC bidmc01 if present, else the synthetic one."""
    if record:
        return Path(record), f"record {record}"
    if DEFAULT_RECORD.with_suffix(".hea").exists():
        return DEFAULT_RECORD, f"BIDMC {DEFAULT_RECORD.name} (from {DEFAULT_RECORD.parent})"
    from operators.io.synthetic import synthesize, write_wfdb

    rec = synthesize(seconds=180.0)
    path = write_wfdb(rec, workdir, "synthetic")
    return path, "embedded synthetic recording (BIDMC data not found at ../shared/data/bidmc)"


# ------------------------------------------------------------------ worker process


def worker_env(bootstrap: str, args, stats_file: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEBRIDGE_")}
    env.update({
        "WAVEBRIDGE_BROKER": f"kafka://{bootstrap}",
        "WAVEBRIDGE_GROUP_ID": f"wavebridge-demo-{os.getpid()}",
        "WAVEBRIDGE_TRANSLATOR": args.translator,
        # Tansu joins a group in about half the session timeout: keep it short for a snappy start.
        "WAVEBRIDGE_SESSION_TIMEOUT_S": "6",
        "WAVEBRIDGE_HEARTBEAT_S": "1",
        "WAVEBRIDGE_IDLE_FLUSH_S": "2",  # the replay ends abruptly: write each bed's tail soon after
        "WAVEBRIDGE_WITHOUT_WEB": "true",
        "WAVEBRIDGE_METRICS_PORT": "0",  # a demo is not monitored, and 9108 may be taken
        "WAVEBRIDGE_LOG_LEVEL": "warn",
        "WAVEBRIDGE_COUNTERS_LOG_S": "30",
        "WAVEBRIDGE_INFLUX_ENABLED": "true" if args.influx_url else "false",
        # Faust's state under the run's own output folder: in the temp folder, one per run piled up
        "WAVEBRIDGE_DATA_DIR": str(Path(args.out).resolve() / "faust-data"),
        "PYTHONUNBUFFERED": "1",
    })
    if args.influx_url:
        env["WAVEBRIDGE_INFLUX_URL"] = args.influx_url
        for opt, var in (("influx_org", "ORG"), ("influx_bucket", "BUCKET"), ("influx_token", "TOKEN")):
            if getattr(args, opt):
                env[f"WAVEBRIDGE_INFLUX_{var}"] = getattr(args, opt)
    if stats_file is not None:
        env["WAVEBRIDGE_STATS_FILE"] = str(stats_file)
    return env


class WorkerProcess:
    """`python -m stream.app worker` in its own session, so a terminal Ctrl-C reaches only us and we
    stop it in order (SIGTERM, then SIGKILL)."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "WorkerProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.app", "worker"], cwd=REPO, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        return self

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {self.proc.returncode}; last log lines:\n{self.log_tail()}")
        if self.proc is not None and "Crashed reason=" in self.log_tail(200):  # a crashed agent leaves Faust running
            raise RuntimeError(f"the worker's agent crashed; last log lines:\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the whole session: Faust may have helper children
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------ output collection


class Collector(threading.Thread):
    """Reads input and output topics from the earliest offset (never end offsets: Tansu quirk)."""

    def __init__(self, bootstrap: str, topics: dict[str, str]):
        super().__init__(name="demo-collector", daemon=True)
        self.bootstrap = bootstrap
        self.roles = {topic: role for role, topic in topics.items()}
        self.data = Collected()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._stop_evt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._collect()
        except BaseException as exc:  # the demo loop checks this: a dead collector would look like a silent worker
            self.failure = exc

    def _collect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from stream import wire

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
                                 enable_auto_commit=False, client_id="wavebridge-demo-collector")
        try:
            tps = []
            for topic in self.roles:
                parts = None
                deadline = time.monotonic() + 30
                while not parts and time.monotonic() < deadline:
                    parts = consumer.partitions_for_topic(topic)
                    if not parts:
                        time.sleep(0.2)
                if not parts:
                    self.errors.append(f"topic {topic} not found")
                    return
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            # Manual assignment: no consumer-group join (seconds on Tansu), and offsets start at 0.
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop_evt.is_set():
                batch = consumer.poll(timeout_ms=300, max_records=2000)
                for tp, records in batch.items():
                    role = self.roles[tp.topic]
                    for rec in records:
                        if role == "events":
                            with self.lock:
                                self.data.events.append(json.loads(rec.value))
                            continue
                        try:
                            chunk = wire.decode(rec.value)
                        except wire.WireError as exc:
                            self.errors.append(f"{tp.topic}@{rec.offset}: {exc}")
                            continue
                        with self.lock:
                            self.data.chunks[role].append(chunk)
                            if role != "input":
                                self.data.last_output_at = time.monotonic()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(10)

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.data.samples("input"), self.data.samples("synth"), self.data.samples("sr")


# ------------------------------------------------------------------ files


def chunks_to_table(chunks: Sequence):
    """One row per sample with its true timestamp; sorted by bed, signal, time, de-duplicated
    (a worker restart may re-send outputs; equal timestamps carry equal values). Output chunks add their quality
    metadata per sample: `quality`, `quality_flag`, `confidence`, `synthetic` (null for inputs)."""
    import pyarrow as pa

    cols = {"bed": [], "signal": [], "time": [], "value": [], "rate_hz": [], "quality": [], "quality_flag": [],
            "confidence": [], "synthetic": []}
    for c in chunks:
        n = len(c.samples)
        meta = getattr(c, "meta", {}) or {}
        cols["bed"].append(np.full(n, c.bed_id, dtype=object))
        cols["signal"].append(np.full(n, c.signal, dtype=object))
        cols["time"].append(c.start_ns + np.round(np.arange(n) * (1e9 / c.rate_hz)).astype(np.int64))
        cols["value"].append(np.asarray(c.samples, dtype=np.float32))
        cols["rate_hz"].append(np.full(n, c.rate_hz, dtype=np.float32))
        cols["quality"].append(np.full(n, np.nan if meta.get("quality") is None else meta["quality"], np.float32))
        cols["quality_flag"].append(np.full(n, meta.get("quality_flag"), dtype=object))
        cols["confidence"].append(np.full(n, np.nan if meta.get("confidence") is None else meta["confidence"], np.float32))
        cols["synthetic"].append(np.full(n, meta.get("synthetic"), dtype=object))
    dtypes = {"bed": object, "signal": object, "time": np.int64, "value": np.float32, "rate_hz": np.float32,
              "quality": np.float32, "quality_flag": object, "confidence": np.float32, "synthetic": object}
    if not chunks:
        arrays = {k: np.zeros(0, dtype=dt) for k, dt in dtypes.items()}
    else:
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.lexsort((arrays["time"], arrays["signal"].astype(str), arrays["bed"].astype(str)))
    arrays = {k: v[order] for k, v in arrays.items()}
    if len(order):
        key_change = np.ones(len(order), dtype=bool)
        key_change[1:] = ((arrays["bed"][1:] != arrays["bed"][:-1]) | (arrays["signal"][1:] != arrays["signal"][:-1])
                          | (arrays["time"][1:] != arrays["time"][:-1]))
        arrays = {k: v[key_change] for k, v in arrays.items()}
    return pa.table({
        "bed": pa.array(arrays["bed"].astype(str), pa.string()),
        "signal": pa.array(arrays["signal"].astype(str), pa.string()),
        "time": pa.array(arrays["time"], pa.timestamp("ns", tz="UTC")),
        "value": pa.array(arrays["value"], pa.float32()),
        "rate_hz": pa.array(arrays["rate_hz"], pa.float32()),
        "quality": pa.array(arrays["quality"], pa.float32(), from_pandas=True),
        "quality_flag": pa.array(list(arrays["quality_flag"]), pa.string()),
        "confidence": pa.array(arrays["confidence"], pa.float32(), from_pandas=True),
        "synthetic": pa.array(list(arrays["synthetic"]), pa.bool_()),
    })


def events_table(events: Sequence[dict]):
    """One row per event of the events topic: what the outputs' quality and R-peaks were, span by span."""
    import pyarrow as pa

    def col(key, typ):
        return pa.array([e.get(key) for e in events], typ)

    return pa.table({
        "bed": col("bed", pa.string()), "type": col("type", pa.string()), "signal": col("signal", pa.string()),
        "time": pa.array([e.get("time_ns") for e in events], pa.timestamp("ns", tz="UTC")),
        "end": pa.array([e.get("end_ns", e.get("until_ns")) for e in events], pa.timestamp("ns", tz="UTC")),
        "reason": col("reason", pa.string()), "quality": col("quality", pa.float64()),
        "quality_flag": col("quality_flag", pa.string()), "confidence": col("confidence", pa.float64()),
        "hr_bpm": col("hr_bpm", pa.float64()), "n_peaks": pa.array([len(e.get("peaks_ns") or []) for e in events], pa.int32()),
        "json": pa.array([json.dumps(e, separators=(",", ":")) for e in events], pa.string()),
    })


def write_parquet(data: Collected, out: Path) -> dict[str, Path]:
    import pyarrow.parquet as pq

    paths = {}
    for role, name in (("input", "input.parquet"), ("synth", "ecg_synth.parquet"), ("sr", "sr.parquet")):
        paths[role] = out / name
        pq.write_table(chunks_to_table(data.chunks[role]), paths[role])
    paths["events"] = out / "events.parquet"
    pq.write_table(events_table(data.events), paths["events"])
    return paths


def _series(table, bed: str, signal: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.compute as pc

    sel = table.filter(pc.and_(pc.equal(table["bed"], bed), pc.equal(table["signal"], signal)))
    t = sel["time"].cast("int64").to_numpy()
    return t, sel["value"].to_numpy()


def plot(paths: dict[str, Path], out_png: Path, main_bed: str | None, sr_bed: str | None, view_s: float = 8.0) -> None:
    """Input vs output: PPG → synthesized ECG (with the real ECG for reference), and 25 Hz → SR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    inp, syn, sr = (pq.read_table(paths[k]) for k in ("input", "synth", "sr"))
    events = pq.read_table(paths["events"]).to_pandas() if "events" in paths and Path(paths["events"]).exists() else None
    fig, axes = plt.subplots(4, 1, figsize=(13, 10.5), constrained_layout=True,
                             gridspec_kw={"height_ratios": [1, 1, 1, 0.6]})
    fig.suptitle("wavebridge demo: input vs. output (true timestamps)", fontsize=13)

    def window(t: np.ndarray) -> tuple[float, float]:
        # A stretch in the middle of the output, where every window has its full context.
        mid = t[len(t) // 2] / 1e9
        return mid - view_s / 2, mid + view_s / 2

    t0 = None
    twin_lines: list = []
    if main_bed:
        ts, ys = _series(syn, main_bed, "II_SYNTH")
        tp, yp = _series(inp, main_bed, "PLETH")
        te, ye = _series(inp, main_bed, "II")
        if len(ts):
            lo, hi = window(ts)
            t0 = lo
            for ax, (t, y, label, color) in zip(axes[:2], [(tp, yp, "input PLETH (PPG)", "tab:blue"),
                                                           (ts, ys, "output II_SYNTH (synthesized ECG)", "tab:red")]):
                m = (t / 1e9 >= lo) & (t / 1e9 < hi)
                ax.plot(t[m] / 1e9 - t0, y[m], color=color, lw=1.2, label=label)
            m = (te / 1e9 >= lo) & (te / 1e9 < hi)
            if m.any():
                # The real lead II on a twin axis: the synthesized one is not in mV-calibrated units.
                ax2 = axes[1].twinx()
                ax2.plot(te[m] / 1e9 - t0, ye[m], color="0.55", lw=0.9, alpha=0.8, label="measured II (reference)")
                ax2.set_ylabel("measured II")
                ax2.set_zorder(axes[1].get_zorder() - 1)  # keep the output trace on top
                axes[1].patch.set_visible(False)
                twin_lines = ax2.lines
            axes[0].set_title(f"{main_bed}: PPG in", loc="left", fontsize=10)
            axes[1].set_title(f"{main_bed}: II_SYNTH, synthesized from the PPG: not a measured or diagnostic lead "
                              f"(grey: the measured ECG)", loc="left", fontsize=10)
    if sr_bed:
        sig = next((s for s in ("PLETH_SR", "II_SR") if len(_series(sr, sr_bed, s)[0])), None)
        if sig:
            base = sig[:-3]
            tr, yr = _series(sr, sr_bed, sig)
            tl, yl = _series(inp, sr_bed, base)
            lo, hi = (t0, t0 + view_s) if t0 is not None else window(tr)
            t0 = lo if t0 is None else t0
            ax = axes[2]
            m = (tr / 1e9 >= lo) & (tr / 1e9 < hi)
            rate_out = round(1e9 / float(np.median(np.diff(tr)))) if len(tr) > 1 else 0
            ax.plot(tr[m] / 1e9 - t0, yr[m], color="tab:green", lw=1.2, label=f"output {sig} ({rate_out:g} Hz)")
            m = (tl / 1e9 >= lo) & (tl / 1e9 < hi)
            ax.plot(tl[m] / 1e9 - t0, yl[m], "o", color="black", ms=3.5, label=f"input {base} ({SR_INPUT_HZ:g} Hz)")
            ax.set_title(f"{sr_bed}: super-resolution of a {SR_INPUT_HZ:g} Hz monitor", loc="left", fontsize=10)
    if t0 is not None:
        _plot_quality(axes, t0, view_s, [(syn, main_bed, "II_SYNTH", "tab:red", 1),
                                         (sr, sr_bed, next((s for s in ("PLETH_SR", "II_SR") if sr_bed and len(
                                             _series(sr, sr_bed, s)[0])), None), "tab:green", 2)], events)
    for i, ax in enumerate(axes):
        if ax.lines:
            handles = ax.lines + (twin_lines if i == 1 else [])
            # Above the axes, right-aligned: never on top of the traces; titles sit on the left.
            ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
                      fontsize=9, frameon=False, borderaxespad=0.2)
        else:
            ax.text(0.5, 0.5, "no output collected", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s) from the start of the plotted stretch")
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _plot_quality(axes, t0: float, view_s: float, outputs: list, events) -> None:
    """Bottom panel: each output's quality score and confidence over the plotted stretch; spans withheld for an
    unusable source shaded (with the reason) on the output's panel and here."""
    import pyarrow.compute as pc

    qax = axes[-1]
    lo, hi = t0, t0 + view_s
    for table, bed, sig, color, row in outputs:
        if not bed or not sig:
            continue
        sel = table.filter(pc.and_(pc.equal(table["bed"], bed), pc.equal(table["signal"], sig)))
        t = sel["time"].cast("int64").to_numpy() / 1e9
        m = (t >= lo) & (t < hi)
        if m.any():
            qax.plot(t[m] - t0, sel["quality"].to_numpy(zero_copy_only=False)[m], color=color, lw=1.5,
                     label=f"{bed} {sig} quality")
            qax.plot(t[m] - t0, sel["confidence"].to_numpy(zero_copy_only=False)[m], color=color, lw=1.0, ls="--",
                     label=f"{sig} confidence")
        if events is not None and len(events):
            bad = events[(events["bed"] == bed) & events["type"].isin(["source_unusable", "output_unusable"])]
            for _, ev in bad.iterrows():
                a, b = ev["time"].value / 1e9, ev["end"].value / 1e9
                if b > lo and a < hi:
                    for ax in (axes[row], qax):
                        ax.axvspan(max(a, lo) - t0, min(b, hi) - t0, color="0.85", zorder=0)
                    axes[row].text(max(a, lo) - t0, 0.95, f"withheld: {ev['reason']}", transform=axes[row].get_xaxis_transform(),
                                   fontsize=8, va="top")
    qax.set_ylim(-0.05, 1.05)
    qax.set_ylabel("0-1")
    qax.set_title("quality (solid), confidence (dashed); grey: withheld", loc="left", fontsize=10)


# ------------------------------------------------------------------ main flow


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="wavebridge demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--record", help="WFDB/Parquet/CSV recording (default: ../shared/data/bidmc/bidmc01 if present, "
                                    "else an embedded synthetic recording)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of the recording to replay per bed")
    p.add_argument("--beds", type=int, default=2, help="beds at the recording's own rate (plus one 25 Hz bed)")
    p.add_argument("--speed", type=float, default=0.0, help="replay speed: 1 = real time, 0 = as fast as possible")
    p.add_argument("--translator", default="clmt", help="translator spec: clmt (shipped model), classic, passthrough, module:Class, or per task: ppg2ecg=classic,sr=clmt")
    p.add_argument("--no-sr-bed", action="store_true", help="do not add the 25 Hz super-resolution bed")
    p.add_argument("--influx-url", help="also write to this InfluxDB (v2 API); disabled when not given")
    p.add_argument("--influx-org", help="InfluxDB org (with --influx-url)")
    p.add_argument("--influx-bucket", help="InfluxDB bucket (with --influx-url)")
    p.add_argument("--influx-token", help="InfluxDB token (with --influx-url)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting for outputs after this many seconds")
    p.add_argument("--out", default="out/demo", help="output folder")
    return p


def run(args) -> dict:
    from stream import topics
    from stream.tools.embedded import EmbeddedBroker
    from stream.tools.replay import replay

    if args.beds < 1 and args.no_sr_bed:
        raise ValueError("nothing to replay: --beds 0 and --no-sr-bed")
    if args.seconds <= 0:
        raise ValueError("--seconds must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    record, desc = resolve_record(args.record, out / "_input")
    print(f"[demo] input: {desc}", flush=True)

    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=out / "broker.log"))
        print(f"[demo] embedded broker (Tansu) on {broker.bootstrap}", flush=True)
        topics.ensure_topics(broker.bootstrap, topics.DEFAULT_TOPICS, partitions=4)
        shutil.rmtree(out / "faust-data", ignore_errors=True)  # the last run's worker state: not this run's
        worker = stack.enter_context(WorkerProcess(worker_env(broker.bootstrap, args), out / "worker.log"))
        print(f"[demo] worker started (pid {worker.proc.pid}, translator {args.translator}, log {out / 'worker.log'})",
              flush=True)
        collector = Collector(broker.bootstrap, {"input": topics.WAVEFORMS, "synth": topics.ECG_SYNTH, "sr": topics.SR,
                                                 "events": topics.EVENTS})
        collector.start()
        stack.callback(collector.stop)

        # All beds share one start time, so the 25 Hz bed lines up with the full-rate one.
        start_ns = time.time_ns()
        jobs = []
        if args.beds > 0:
            jobs.append(dict(beds=args.beds, bed_prefix="bed", resample=None))
        if not args.no_sr_bed:
            jobs.append(dict(beds=1, bed_prefix=SR_BED_PREFIX, resample={"PLETH": SR_INPUT_HZ}))
        replay_errors: list[BaseException] = []

        def do_replay(job):
            try:
                replay([record], broker.bootstrap, topics.WAVEFORMS, speed=args.speed, start_ns=start_ns,
                       duration_s=args.seconds, **job)
            except BaseException as exc:  # surfaced in the main thread
                replay_errors.append(exc)

        threads = [threading.Thread(target=do_replay, args=(job,), daemon=True) for job in jobs]
        print(f"[demo] replaying {args.seconds:g} s x {args.beds} bed(s)"
              + ("" if args.no_sr_bed else f" + 1 bed with PLETH at {SR_INPUT_HZ:g} Hz")
              + (" as fast as possible" if args.speed == 0 else f" at x{args.speed:g}"), flush=True)
        for t in threads:
            t.start()
        deadline = time.monotonic() + args.timeout
        last_print = 0.0
        replay_done_at = None
        while True:
            worker.check()
            if replay_errors:
                raise RuntimeError(f"replay failed: {replay_errors[0]}")
            if replay_done_at is None and not any(t.is_alive() for t in threads):
                replay_done_at = time.monotonic()
                print("[demo] replay finished; waiting for the worker to drain", flush=True)
            now = time.monotonic()
            if now - last_print >= 3.0:
                n_in, n_syn, n_sr = collector.snapshot()
                print(f"[demo] {now - t_start:5.1f}s  samples in {n_in:>8}  synth out {n_syn:>8}  sr out {n_sr:>8}",
                      flush=True)
                last_print = now
            if collector.errors and any("not found" in e for e in collector.errors):
                raise RuntimeError(f"collector: {collector.errors[0]}")
            if collector.failure is not None:
                raise RuntimeError(f"the demo's output collector failed: {type(collector.failure).__name__}: "
                                   f"{collector.failure}") from collector.failure
            if replay_done_at is not None and _outputs_complete(collector, args):
                break
            last_out = collector.data.last_output_at
            if replay_done_at is not None and last_out and now - max(replay_done_at, last_out) > QUIET_S:
                break  # drained: output flowed, then nothing new for a while
            if now > deadline:
                print(f"[demo] timeout after {args.timeout:g} s; writing what arrived", file=sys.stderr, flush=True)
                break
            time.sleep(0.25)
        collector.stop()
        data = collector.data
        verdict = _demo_alarm(broker.bootstrap, start_ns, args, out)
    # Broker and worker are stopped here (ExitStack), before the slower file writing.

    paths = write_parquet(data, out)
    beds = sorted({c.bed_id for c in data.chunks["input"]})
    main_bed = next((b for b in beds if b.startswith("bed")), None)
    sr_bed = next((b for b in beds if b.startswith(SR_BED_PREFIX)), None)
    png = out / "demo.png"
    plot(paths, png, main_bed, sr_bed)
    summary = {
        "beds": beds,
        "samples_in": data.samples("input"),
        "samples_synth": data.samples("synth"),
        "samples_sr": data.samples("sr"),
        "elapsed_s": time.monotonic() - t_start,
        "files": {**{k: str(v) for k, v in paths.items()}, "png": str(png)},
        "decode_errors": len(collector.errors),
        "verdict": verdict,
    }
    return summary


def _demo_alarm(bootstrap: str, start_ns: int, args, out: Path) -> dict | None:
    """A monitor's asystole alarm on the first bed, 1 s before the replay's end, verified end to end (the
    recording's heart beats throughout, so the expected verdict is false); written to verdicts.json."""
    import json

    from stream import topics
    from stream.alarms import AlarmMessage, describe_verdict, publish_and_await_verdict

    if args.beds < 1:
        return None
    alarm = AlarmMessage("bed-001", "asystole", start_ns + int((args.seconds - 1.0) * 1e9), "demo-asystole-1",
                         source="wavebridge demo")
    print(f"[demo] publishing a monitor's asystole alarm for bed-001 at {args.seconds - 1.0:g} s; waiting for its verdict",
          flush=True)
    msg = publish_and_await_verdict(bootstrap, alarm, topics.ALARMS, topics.VERDICTS, timeout_s=60.0)
    if msg is None:
        print("[demo] no verdict arrived within 60 s; see worker.log", file=sys.stderr, flush=True)
        return None
    (out / "verdicts.json").write_text(json.dumps([msg], indent=1))
    print("[demo] " + describe_verdict(msg), flush=True)
    return msg


def _outputs_complete(collector: Collector, args) -> bool:
    """Every input (bed, signal) that should be translated has output up to (nearly) its end."""
    with collector.lock:
        d = collector.data
        in_end: dict[tuple[str, str], int] = {}
        for c in d.chunks["input"]:
            in_end[(c.bed_id, c.signal)] = max(in_end.get((c.bed_id, c.signal), 0), c.end_ns())
        out_end: dict[tuple[str, str], int] = {}
        for role in ("synth", "sr"):
            for c in d.chunks[role]:
                out_end[(c.bed_id, c.signal)] = max(out_end.get((c.bed_id, c.signal), 0), c.end_ns())
    if not in_end:
        return False
    want = []
    for (bed, sig), end in in_end.items():
        if sig == "PLETH":
            want.append(((bed, "II_SYNTH"), end))
        if bed.startswith(SR_BED_PREFIX) and sig == "PLETH":
            want.append(((bed, "PLETH_SR"), end))
    slack_ns = int(0.5e9)
    return all(out_end.get(k, 0) >= end - slack_ns for k, end in want)


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # SIGTERM (e.g. from a supervisor) takes the same clean-up path as Ctrl-C.
    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        summary = run(args)
    except KeyboardInterrupt:
        print("\n[demo] interrupted; broker and worker stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    f = summary["files"]
    print("\n[demo] done")
    print(f"  beds            {', '.join(summary['beds'])}")
    print(f"  samples in      {summary['samples_in']}")
    print(f"  synthesized ECG {summary['samples_synth']} samples  -> {f['synth']}")
    print(f"  super-resolved  {summary['samples_sr']} samples  -> {f['sr']}")
    print(f"  input           -> {f['input']}")
    print(f"  plot            -> {f['png']}")
    if summary.get("verdict"):
        v = summary["verdict"]
        print(f"  alarm verdict   {v['alarm_type']} on {v['bed_id']}: {v['verdict']} (confidence {v['confidence']:.2f})"
              f" -> {Path(args.out) / 'verdicts.json'}")
    print(f"  elapsed         {summary['elapsed_s']:.1f} s")
    if summary["samples_synth"] == 0:
        print("[demo] no synthesized output arrived; see worker.log in the output folder", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
