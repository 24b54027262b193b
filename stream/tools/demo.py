"""`wavebridge demo`: the whole pipeline on one machine, with nothing to set up.

Starts an embedded Tansu broker, creates the topics, starts the worker as a subprocess, replays a
recording as several beds, plus one bed whose lead II and PLETH are down-sampled to 25 Hz (so
super-resolution has work: lead II by the model, PLETH by polyphase) and one whose PPG probe comes off
for a while (a flat PLETH: what the service must withhold, never turn into a flat ECG), collects the
output topics and writes Parquet files and a PNG under `--out`.
Broker and worker are always stopped on exit, including on Ctrl-C and on errors.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from operators import vocab
from operators.translator import DEFAULT_SPEC
from stream.config import ConfigError, Settings
from stream.tools.cli import ArgumentParser
from stream.tools.collector import Collector
from stream.tools.demo_plot import merge_spans, plot
from stream.tools.replay import ReplayOptions, replay
from stream.tools.tables import write_parquet
from stream.tools.worker_process import LOCAL_BROKER_TIMING, WorkerProcess, worker_environment

# The shared data sits beside the checkout (`<checkout>/../shared/data`), not inside the package, and the demo
# must find it from any working directory: only this file's own location says where the checkout is.
DEFAULT_RECORD = Path(__file__).resolve().parents[3] / "shared" / "data" / "bidmc" / "bidmc01"
SR_BED_PREFIX = "lowres"  # beds replayed at 25 Hz: lowres-001
SR_INPUT_HZ = vocab.LOW_RATE_HZ
SR_SIGNALS = (vocab.ECG, vocab.PPG)  # what the low-rate bed sends at SR_INPUT_HZ
PROBE_OFF_BED_PREFIX = "probeoff"  # a bed whose PLETH goes flat for a while: probeoff-001
PROBE_OFF_SPAN = (0.4, 0.65)  # of --seconds: where that bed's PLETH is flat
QUIET_S = 8.0  # after the replay, stop once no output arrived for this long (worker idle-flushes in 2 s)
FAUST_DATA = "faust-data"  # the worker's state folder under --out


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


# ------------------------------------------------------------------ main flow


def build_parser() -> argparse.ArgumentParser:
    """The options of `wavebridge demo`."""
    p = ArgumentParser(prog="wavebridge demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--record", help="WFDB/Parquet/CSV recording (default: ../shared/data/bidmc/bidmc01 if present, "
                                    "else an embedded synthetic recording)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of the recording to replay per bed")
    p.add_argument("--beds", type=int, default=2,
                   help="beds at the recording's own rate (plus the 25 Hz bed and the probe-off bed)")
    p.add_argument("--speed", type=float, default=0.0, help="replay speed: 1 = real time, 0 = as fast as possible")
    p.add_argument("--translator", default=DEFAULT_SPEC,
                   help="translator spec: the worker's default (per task the best measured), clmt (the shipped model "
                        "for every task), classic, passthrough, module:Class, or per task: ppg2ecg=classic,sr=clmt")
    p.add_argument("--no-sr-bed", action="store_true", help="do not add the 25 Hz super-resolution bed")
    p.add_argument("--no-probe-off-bed", action="store_true",
                   help="do not add the bed whose PPG probe comes off (flat PLETH) over the middle of the replay")
    p.add_argument("--influx-url", help="also write to this InfluxDB (v2 API); disabled when not given")
    p.add_argument("--influx-org", help="InfluxDB org (with --influx-url)")
    p.add_argument("--influx-bucket", help="InfluxDB bucket (with --influx-url)")
    p.add_argument("--influx-token", help="InfluxDB token (with --influx-url)")
    p.add_argument("--timeout", type=float, default=300.0, help="give up waiting for outputs after this many seconds")
    p.add_argument("--out", default="out/demo", help="output folder")
    return p


def demo_settings(bootstrap: str, args) -> Settings:
    """The demo worker's settings: the default topics on the embedded broker, quick to start and to drain.

    Parameters
    ----------
    bootstrap : str
        `host:port` of the embedded broker.
    args : argparse.Namespace
        The demo's options (`build_parser`): translator, InfluxDB, output folder.
    """
    influx = {}
    if args.influx_url:
        influx = {"influx_url": args.influx_url, **{f"influx_{k}": getattr(args, f"influx_{k}")
                                                      for k in ("org", "bucket", "token") if getattr(args, f"influx_{k}")}}
    try:
        return Settings(
            broker=f"kafka://{bootstrap}", group_id=f"wavebridge-demo-{os.getpid()}", translator=args.translator,
            **LOCAL_BROKER_TIMING,
            idle_flush_s=2.0,  # the replay ends abruptly: write each bed's tail soon after
            without_web=True, metrics_port=0,  # a demo is not monitored, and 9108 may be taken
            log_level="warn", counters_log_s=30.0, influx_enabled=bool(args.influx_url), **influx,
            # Faust's state under the run's own output folder: in the temp folder, one per run piled up
            data_dir=str(Path(args.out).resolve() / FAUST_DATA))
    except ConfigError as exc:
        raise ValueError(str(exc).replace("WAVEBRIDGE_TRANSLATOR:", "--translator:")) from None


def replay_jobs(args, start_ns: int) -> list[ReplayOptions]:
    """The demo's replays: `--beds` beds at the recording's rate and, unless `--no-sr-bed`, one with lead II and PLETH
    at `SR_INPUT_HZ`; all start at `start_ns` (ns since the epoch) so the low-rate bed lines up with the others."""
    common = dict(speed=args.speed, start_ns=start_ns, duration_s=args.seconds)
    jobs = []
    if args.beds > 0:
        jobs.append(ReplayOptions(beds=args.beds, bed_prefix="bed", **common))
    if not args.no_sr_bed:
        jobs.append(ReplayOptions(beds=1, bed_prefix=SR_BED_PREFIX, resample={s: SR_INPUT_HZ for s in SR_SIGNALS},
                                  **common))
    return jobs


def probe_off_span_s(seconds: float) -> tuple[float, float]:
    """[start, end) in s from the replay's start where the probe-off bed's PLETH is flat (`PROBE_OFF_SPAN`)."""
    return PROBE_OFF_SPAN[0] * seconds, PROBE_OFF_SPAN[1] * seconds


def probe_off_recording(record: Path, seconds: float):
    """(`record` with its PLETH held at one value over `probe_off_span_s` of the seconds replayed, a probe off the
    finger as `operators.processing.artifacts.flat` injects it, the other signals as recorded; that span in s), or
    None for a record without a PLETH."""
    import dataclasses

    import numpy as np

    from operators.io.records import read_recording
    from operators.processing.artifacts import inject

    rec = read_recording(record, None)
    if vocab.PPG not in rec.signals:
        return None
    fs = rec.rates[vocab.PPG]
    span = probe_off_span_s(min(seconds, rec.duration_s(vocab.PPG)))  # within what is replayed
    a, b = (int(round(t * fs)) for t in span)
    ppg = inject("flat", rec.signals[vocab.PPG], a, b, fs, np.random.default_rng(0)).astype(np.float32)
    return dataclasses.replace(rec, signals={**rec.signals, vocab.PPG: ppg}), span


class Replays:
    """Replay threads, one per job; a failure is kept in `errors` for the main loop to raise."""

    def __init__(self, jobs: list[tuple[object, ReplayOptions]], bootstrap: str):
        """`jobs`: (recording path or `Recording`, options) pairs."""
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(record, bootstrap, job), daemon=True)
                        for record, job in jobs]

    def _run(self, record: Path, bootstrap: str, job: ReplayOptions) -> None:
        try:
            replay([record], bootstrap, job)
        except BaseException as exc:  # surfaced in the main thread
            self.errors.append(exc)

    def start(self) -> "Replays":
        for t in self.threads:
            t.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)


def wait_for_outputs(worker: WorkerProcess, collector: Collector, replays: Replays, args, t_start: float) -> None:
    """Until the outputs are complete, or the worker went quiet after the replay, or `--timeout` passed; prints
    progress every 3 s and raises RuntimeError when the worker, a replay or the collector fails."""
    deadline = time.monotonic() + args.timeout
    last_print = 0.0
    replay_done_at = None
    while True:
        _check_parts(worker, collector, replays)
        if replay_done_at is None and replays.done():
            replay_done_at = time.monotonic()
            print("[demo] replay finished; waiting for the worker to drain", flush=True)
        now = time.monotonic()
        if now - last_print >= 3.0:
            n_in, n_syn, n_sr = collector.snapshot()
            print(f"[demo] {now - t_start:5.1f}s  samples in {n_in:>8}  synth out {n_syn:>8}  sr out {n_sr:>8}",
                  flush=True)
            last_print = now
        if replay_done_at is not None and _outputs_complete(collector):
            return
        last_out = collector.data.last_output_at
        if replay_done_at is not None and last_out and now - max(replay_done_at, last_out) > QUIET_S:
            return  # drained: output flowed, then nothing new for a while
        if now > deadline:
            print(f"[demo] timeout after {args.timeout:g} s; writing what arrived", file=sys.stderr, flush=True)
            return
        time.sleep(0.25)


def _check_parts(worker: WorkerProcess, collector: Collector, replays: Replays) -> None:
    worker.check()
    if replays.errors:
        raise RuntimeError(f"replay failed: {replays.errors[0]}")
    if collector.errors and any("not found" in e for e in collector.errors):
        raise RuntimeError(f"collector: {collector.errors[0]}")
    if collector.failure is not None:
        raise RuntimeError(f"the demo's output collector failed: {type(collector.failure).__name__}: "
                           f"{collector.failure}") from collector.failure


def run(args) -> dict:
    """The whole demo (see the module docstring); returns the summary `cli` prints.

    Raises ValueError for options that leave nothing to do, RuntimeError when a part fails; broker, worker and
    collector are stopped in every case.
    """
    from stream import topics
    from stream.tools.embedded import EmbeddedBroker

    if args.beds < 1 and args.no_sr_bed and args.no_probe_off_bed:
        raise ValueError("nothing to replay: --beds 0, --no-sr-bed and --no-probe-off-bed")
    if args.seconds <= 0:
        raise ValueError("--seconds must be > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    record, desc = resolve_record(args.record, out / "_input")
    print(f"[demo] input: {desc}", flush=True)
    probe_off = None if args.no_probe_off_bed else probe_off_recording(record, args.seconds)
    if probe_off is None and not args.no_probe_off_bed:
        print("[demo] the record has no PLETH: no probe-off bed", flush=True)

    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=out / "broker.log"))
        print(f"[demo] embedded broker (Tansu) on {broker.bootstrap}", flush=True)
        settings = demo_settings(broker.bootstrap, args)
        topics.ensure_topics(broker.bootstrap, vocab.DEFAULT_TOPICS, partitions=vocab.DEFAULT_PARTITIONS)
        shutil.rmtree(out / FAUST_DATA, ignore_errors=True)  # the last run's worker state: not this run's
        worker = stack.enter_context(WorkerProcess(worker_environment(settings), out / "worker.log"))
        print(f"[demo] worker started (pid {worker.pid}, translator {args.translator}, log {out / 'worker.log'})",
              flush=True)
        collector = Collector(broker.bootstrap, {"input": settings.topic_input, "synth": settings.topic_ecg_synth,
                                                 "sr": settings.topic_sr, "events": settings.topic_events})
        collector.start()
        stack.callback(collector.stop)

        start_ns = time.time_ns()
        print(f"[demo] replaying {args.seconds:g} s x {args.beds} bed(s)"
              + ("" if args.no_sr_bed else f" + 1 bed with II and PLETH at {SR_INPUT_HZ:g} Hz")
              + ("" if probe_off is None else " + 1 bed whose PPG probe comes off from {:g} to {:g} s".format(
                  *probe_off[1]))
              + (" as fast as possible" if args.speed == 0 else f" at x{args.speed:g}"), flush=True)
        jobs = [(record, job) for job in replay_jobs(args, start_ns)]
        if probe_off is not None:
            jobs.append((probe_off[0],
                         ReplayOptions(beds=1, bed_prefix=PROBE_OFF_BED_PREFIX, speed=args.speed, start_ns=start_ns,
                                       duration_s=args.seconds)))
        replays = Replays(jobs, broker.bootstrap).start()
        wait_for_outputs(worker, collector, replays, args, t_start)
        collector.stop()
        verdict = _demo_alarm(broker.bootstrap, start_ns, args, out)
    # Broker and worker are stopped here (ExitStack), before the slower file writing.
    return _write_outputs(collector, out, t_start, verdict,
                          None if probe_off is None else (start_ns, probe_off[1]))


def _write_outputs(collector: Collector, out: Path, t_start: float, verdict: dict | None,
                   probe_off: tuple[int, tuple[float, float]] | None) -> dict:
    """Parquet files and the PNG under `out`; returns the run's summary. `probe_off`: (the replay's start in ns, the
    probe-off span in s from it), None without a probe-off bed."""
    data = collector.data
    paths = write_parquet(data, out)
    beds = sorted({c.bed_id for c in data.chunks["input"]})
    main_bed = next((b for b in beds if b.startswith("bed")), None)
    sr_bed = next((b for b in beds if b.startswith(SR_BED_PREFIX)), None)
    probe_off_bed = next((b for b in beds if b.startswith(PROBE_OFF_BED_PREFIX)), None)
    png = out / "demo.png"
    shown = (probe_off_bed, [probe_off[0] + int(t * 1e9) for t in probe_off[1]]) if probe_off and probe_off_bed else None
    plot(paths, png, main_bed, sr_bed, SR_INPUT_HZ, probe_off=shown)
    return {
        "probe_off": _probe_off_summary(data, *shown) if shown else None,
        "beds": beds,
        "samples_in": data.samples("input"),
        "samples_synth": data.samples("synth"),
        "samples_sr": data.samples("sr"),
        "elapsed_s": time.monotonic() - t_start,
        "files": {**{k: str(v) for k, v in paths.items()}, "png": str(png)},
        "decode_errors": len(collector.errors),
        "verdict": verdict,
    }


def _probe_off_summary(data, bed: str, span_ns: list[int]) -> dict:
    """What the service made of the probe-off bed's flat PLETH span `[span_ns[0], span_ns[1])`: seconds of it
    covered by `source_unusable` events, their reasons, and the II_SYNTH samples published inside it."""
    import numpy as np

    from operators.processing.samples import grid_ns

    a, b = span_ns
    withheld = merge_spans((max(a, e["time_ns"]), min(b, e["end_ns"]), e.get("reason")) for e in data.events
                           if e.get("bed") == bed and e.get("type") == "source_unusable"
                           and e["end_ns"] > a and e["time_ns"] < b)
    covered = sum(hi - lo for lo, hi, _ in withheld)
    reasons = sorted({r for _, _, why in withheld for r in why})
    published = 0
    for c in data.chunks["synth"]:
        if c.bed_id == bed:
            t = grid_ns(c.start_ns, c.rate_hz, np.arange(len(c.samples)))
            published += int(((t >= a) & (t < b)).sum())
    return {"bed": bed, "span_s": (b - a) / 1e9, "withheld_s": covered / 1e9, "reasons": reasons,
            "synth_samples_in_span": published}


def _demo_alarm(bootstrap: str, start_ns: int, args, out: Path) -> dict | None:
    """A monitor's asystole alarm on the first bed, 1 s before the replay's end, verified end to end (the
    recording's heart beats throughout, so the expected verdict is false); written to verdicts.json."""
    from stream.alarms import AlarmMessage, describe_verdict, publish_and_await_verdict

    if args.beds < 1:
        return None
    alarm = AlarmMessage("bed-001", "asystole", start_ns + int((args.seconds - 1.0) * 1e9), "demo-asystole-1",
                         source="wavebridge demo")
    print(f"[demo] publishing a monitor's asystole alarm for bed-001 at {args.seconds - 1.0:g} s; waiting for its verdict",
          flush=True)
    msg = publish_and_await_verdict(bootstrap, alarm, vocab.TOPIC_ALARMS, vocab.TOPIC_VERDICTS, timeout_s=60.0)
    if msg is None:
        print("[demo] no verdict arrived within 60 s; see worker.log", file=sys.stderr, flush=True)
        return None
    (out / "verdicts.json").write_text(json.dumps([msg], indent=1))
    print("[demo] " + describe_verdict(msg), flush=True)
    return msg


def _outputs_complete(collector: Collector) -> bool:
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
            want.append(((bed, vocab.SYNTH_ECG), end))
        if bed.startswith(SR_BED_PREFIX) and sig in SR_SIGNALS:
            want.append(((bed, sig + vocab.SR_SUFFIX), end))
    slack_ns = int(0.5e9)
    # no PLETH read yet (the collector can trail the replay): nothing is complete, however vacuously
    return bool(want) and all(out_end.get(k, 0) >= end - slack_ns for k, end in want)


def cli(argv: Sequence[str] | None = None) -> int:
    """`wavebridge demo ARGV`: run it and print the summary; returns the exit status (1: failed or no synthesized
    output, 130: interrupted)."""
    args = build_parser().parse_args(argv)

    # SIGTERM (e.g. from a supervisor) takes the same clean-up path as Ctrl-C. The signal is remembered as well as
    # raised: a library call that catches every exception can swallow the KeyboardInterrupt, and the demo then ran
    # to its end and exited 0 after a Ctrl-C (seen once in the test suite under load).
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        summary = run(args)
    except KeyboardInterrupt:
        interrupted.append(signal.SIGINT)
    except Exception as exc:
        if not interrupted:
            print(f"[demo] failed: {exc}", file=sys.stderr)
            return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if interrupted:
        print("\n[demo] interrupted; broker and worker stopped", file=sys.stderr)
        return 130
    f = summary["files"]
    print("\n[demo] done")
    print(f"  beds            {', '.join(summary['beds'])}")
    print(f"  samples in      {summary['samples_in']}")
    print(f"  synthesized ECG {summary['samples_synth']} samples  -> {f['synth']}")
    print(f"  super-resolved  {summary['samples_sr']} samples  -> {f['sr']}")
    print(f"  input           -> {f['input']}")
    print(f"  plot            -> {f['png']}")
    if summary.get("probe_off"):
        p = summary["probe_off"]
        print(f"  probe off       {p['bed']}: PLETH flat for {p['span_s']:.0f} s, {p['withheld_s']:.1f} s of it withheld "
              f"({', '.join(p['reasons']) or 'no event'}), {p['synth_samples_in_span']} II_SYNTH samples published there")
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
