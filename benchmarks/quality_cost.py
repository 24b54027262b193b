"""CPU cost of quality judgement per window, against the translator's, on one BIDMC record.

Per 8 s PLETH window at 125 Hz, what the pipeline adds: `assess` of the source's judged span (emitted 2 s +- 1 s)
and of the output over the same span (kind "other"), timed over every window of the record, against the
translator's `translate()` per window (a batch of 64 windows, as the worker batches), for the classic translator
and CLMT on this machine's CPU. `--signal II --rate-hz 25` times the super-resolution source instead: lead II
brought to 25 Hz (anti-aliased), judged as ECG, against the translators' 25 -> 100 Hz `sr`.

    python benchmarks/quality_cost.py [--record 01] [--translators classic,clmt]
    python benchmarks/quality_cost.py --signal II --rate-hz 25
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from operators.processing import quality as Q  # noqa: E402
from operators.io.records import read_recording  # noqa: E402
from operators.processing.resample import decimate_to  # noqa: E402
from operators.processing.samples import fill_nonfinite  # noqa: E402
from operators.translator import TranslationRequest, load_translator  # noqa: E402
from operators.vocab import PPG2ECG, SR, SR_TARGET_HZ  # noqa: E402


def main(argv=None) -> int:
    from models.data import found_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--record", default="01")
    ap.add_argument("--translators", default="classic,clmt")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--signal", default="PLETH", help="source channel (PLETH: ppg2ecg; any other: sr)")
    ap.add_argument("--rate-hz", type=float, default=None, help="bring the source to this rate first (anti-aliased)")
    args = ap.parse_args(argv)
    root = found_dataset("bidmc", args.data)
    if root is None:
        return 2
    rec = read_recording(root / f"bidmc{args.record}", [args.signal])
    fs = float(rec.rates[args.signal])
    x = fill_nonfinite(rec.signals[args.signal].astype(np.float64))[0]
    if args.rate_hz:
        x, fs = decimate_to(x, fs, args.rate_hz), float(args.rate_hz)
    x = x.astype(np.float32)
    kind = Q.kind_of(args.signal)
    task, target = (PPG2ECG, fs) if args.signal == "PLETH" else (SR, SR_TARGET_HZ)
    n, hop = int(8 * fs), int(2 * fs)
    wins = [x[i:i + n] for i in range(0, len(x) - n, hop)][:64]
    a, b = int(4 * fs), int(8 * fs)  # a steady window's judged span: emitted [5, 7) s +- 1 s
    best = np.inf
    for _ in range(args.repeat):
        t0 = time.process_time()
        for w in wins:
            Q.assess(w[a:b], fs, kind)
            Q.assess(w[a:b], fs, "other")  # the output's own check (same length at the source rate)
        best = min(best, (time.process_time() - t0) / len(wins))
    print(f"quality per window: {best * 1e3:.3f} ms CPU ({len(wins)} windows of bidmc{args.record} {args.signal} at "
          f"{fs:g} Hz, best of {args.repeat})")
    for spec in args.translators.split(","):
        tr = load_translator(spec)
        reqs = [TranslationRequest(task, w, fs, target, args.signal) for w in wins]
        tr.translate(reqs[:2])  # warm-up (model load, first-call allocations)
        t_best = np.inf
        for _ in range(args.repeat):
            t0 = time.process_time()
            tr.translate(reqs)
            t_best = min(t_best, (time.process_time() - t0) / len(reqs))
        print(f"{spec} {task} per window (batch {len(reqs)}): {t_best * 1e3:.3f} ms CPU; quality / translator = "
              f"{best / t_best:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
