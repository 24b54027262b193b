"""CPU per bed-second of the worker's pipeline, in process: what one core can carry before Kafka's share.

Feeds N copies of a recording (II + PLETH, 1 s chunks, all beds in step) through `stream.pipeline.Pipeline` with
each translator spec, batching as the worker does, and measures the process's CPU time (`time.process_time`, so
other work on the machine inflates it less than wall time). Windowing, quality, patient context selection,
R-peaks, the translator and emission are in it; decoding, Kafka and InfluxDB are not (`stream_bench.py` measures
those, end to end). Specs run in rounds, alternately, and every figure is also printed as a ratio to `passthrough`
in the same round. `--rate 25` resamples the input first, so ECG super-resolution runs as well.

    python benchmarks/pipeline_cpu.py                                  # 16 beds x 120 s, 125 Hz, ~2 min
    python benchmarks/pipeline_cpu.py --rate 25 --specs ppg2ecg=classic,sr=clmt clmt
    python benchmarks/pipeline_cpu.py --specs clmt --profile 30         # cProfile, top 30 by cumulative time

Not a test: numbers depend on the machine and on whatever else runs on it.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make stream/, operators/, models/ importable
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from operators.processing.resample import resample  # noqa: E402
from operators.processing.samples import grid_ns  # noqa: E402
from operators.translator import load_translator  # noqa: E402
from stream.config import Settings  # noqa: E402
from stream.pipeline import Pipeline, PipelineConfig  # noqa: E402
from stream.wire import Chunk  # noqa: E402
from stream_bench import load_recording  # noqa: E402

T0_NS = 1_700_000_000_000_000_000
BATCH_CHUNKS = 64  # chunks pushed between two `process` calls (the worker's take(n))


def make_chunks(signals: dict[str, np.ndarray], rate_hz: float, beds: int, seconds: int) -> list[Chunk]:
    """1 s chunks of every signal for `beds` beds, in time order (all beds in step)."""
    n = int(round(rate_hz))
    return [Chunk(f"bed{b}", name, rate_hz, int(grid_ns(T0_NS, rate_hz, s * n)), s,
                  np.asarray(x[s * n:(s + 1) * n], np.float32))
            for s in range(seconds) for b in range(beds) for name, x in signals.items()]


def run(spec: str, chunks: list[Chunk], profile: int = 0) -> tuple[float, int]:
    """(CPU seconds, windows translated) of one pipeline over `chunks`; the translator is loaded untimed."""
    pipe = Pipeline(PipelineConfig.from_settings(Settings.from_env()), load_translator(spec))
    windows = 0

    def feed() -> None:
        nonlocal windows
        for i in range(0, len(chunks), BATCH_CHUNKS):
            for c in chunks[i:i + BATCH_CHUNKS]:
                pipe.push(c, token=(c.bed_id, c.signal, c.seq))
            windows += pipe.process().n_windows
        pipe.flush_all()
        windows += pipe.process().n_windows

    prof = cProfile.Profile() if profile else None
    t = time.process_time()
    if prof:
        prof.runcall(feed)
    else:
        feed()
    cpu = time.process_time() - t
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(profile)
    return cpu, windows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--record", help="II + PLETH recording (default ../shared/data/bidmc/bidmc01, else synthetic)")
    p.add_argument("--specs", nargs="+", default=["passthrough", "classic", "ppg2ecg=classic,sr=clmt", "clmt"],
                   help="translator specs (passthrough is always run: the ratios' baseline)")
    p.add_argument("--beds", type=int, default=16)
    p.add_argument("--seconds", type=int, default=120, help="seconds of signal per bed")
    p.add_argument("--rate", type=float, default=None, help="resample II and PLETH to this rate (Hz) first")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all specs, alternately")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the worker's image runs 1)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile each run, print the top N")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rec, desc = load_recording(a.record)
    rate = rec.rates["PLETH"]
    signals = {k: rec.signals[k] for k in ("II", "PLETH")}
    if a.rate:
        signals = {k: resample(np.asarray(v, np.float64), rec.rates[k], a.rate) for k, v in signals.items()}
        rate = a.rate
    if min(len(v) for v in signals.values()) < a.seconds * rate:
        p.error(f"{desc} holds less than --seconds {a.seconds} of signal")
    specs = list(dict.fromkeys(a.specs))
    if "passthrough" not in specs:
        specs.insert(0, "passthrough")
    chunks = make_chunks(signals, rate, a.beds, a.seconds)
    print(f"{desc}: II + PLETH at {rate:g} Hz, {a.beds} beds x {a.seconds} s, {len(chunks)} chunks; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {a.threads}", flush=True)
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in specs}
    for r in range(a.rounds):
        cpu = {}
        for spec in specs:
            cpu[spec], windows = run(spec, chunks, a.profile)
            print(f"round {r + 1} {spec:<28} {1000 * cpu[spec] / (a.beds * a.seconds):7.2f} ms CPU per bed-second "
                  f"({windows} windows)", flush=True)
        for spec in specs:
            results[spec].append((1000 * cpu[spec] / (a.beds * a.seconds), cpu[spec] / cpu["passthrough"]))
    print("\nspec                          ms per bed-second (rounds)   x passthrough   beds per core at most")
    for spec, rows in results.items():
        ms = [m for m, _ in rows]
        print(f"{spec:<28} {' / '.join(f'{m:.2f}' for m in ms):>28}   {' / '.join(f'{x:.2f}' for _, x in rows):>13}"
              f"   {1000 / max(ms):.0f}-{1000 / min(ms):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
