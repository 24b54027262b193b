"""CPU cost of quality judgement per window, against the translator's, on one BIDMC record.

Per 8 s PLETH window at 125 Hz, what the pipeline adds: `assess` of the source's judged span (emitted 2 s +- 1 s)
and of the output over the same span (kind "other"), timed over every window of the record, against the
translator's `translate()` per window (a batch of 64 windows, as the worker batches), for the classic translator
and CLMT on this machine's CPU.

    python benchmarks/quality_cost.py [--record 01] [--translators classic,clmt]
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
from operators.translator import TranslationRequest, load_translator  # noqa: E402


def main(argv=None) -> int:
    from models.data import found_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--record", default="01")
    ap.add_argument("--translators", default="classic,clmt")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    root = found_dataset("bidmc", args.data)
    if root is None:
        return 2
    rec = read_recording(root / f"bidmc{args.record}", ["PLETH"])
    fs = float(rec.rates["PLETH"])
    x = rec.signals["PLETH"].astype(np.float32)
    n, hop = int(8 * fs), int(2 * fs)
    wins = [x[i:i + n] for i in range(0, len(x) - n, hop)][:64]
    a, b = int(4 * fs), int(8 * fs)  # a steady window's judged span: emitted [5, 7) s +- 1 s
    best = np.inf
    for _ in range(args.repeat):
        t0 = time.process_time()
        for w in wins:
            Q.assess(w[a:b], fs, "ppg")
            Q.assess(w[a:b], fs, "other")  # the output's own check (same length at the source rate)
        best = min(best, (time.process_time() - t0) / len(wins))
    print(f"quality per window: {best * 1e3:.3f} ms CPU ({len(wins)} windows of bidmc{args.record}, best of {args.repeat})")
    for spec in args.translators.split(","):
        tr = load_translator(spec)
        reqs = [TranslationRequest("ppg2ecg", w, fs, fs, "PLETH") for w in wins]
        tr.translate(reqs[:2])  # warm-up (model load, first-call allocations)
        t_best = np.inf
        for _ in range(args.repeat):
            t0 = time.process_time()
            tr.translate(reqs)
            t_best = min(t_best, (time.process_time() - t0) / len(reqs))
        print(f"{spec} ppg2ecg per window (batch {len(reqs)}): {t_best * 1e3:.3f} ms CPU; quality / translator = "
              f"{best / t_best:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
