"""How far can other patients' beats take ECG super-resolution without a context of the patient's own?

For every held-out BIDMC record, the classic SR path (polyphase + QRS high band pasted at matched beats,
`operators/processing/beatsr.py`) is run with the first 60 s of EACH training record as the "context", i.e. with a
foreign patient's beat. Printed per held-out record: the best foreign beat (chosen against the truth: an
oracle no selector can beat), the median foreign beat, the patient's own first 60 s, and polyphase alone;
then the means. The model card quotes the result (mean best 0.947 vs own 0.978). Scored like
`wavebridge evaluate`: 25 Hz anti-aliased input, everything after the first 60 s, Pearson per 8 s window.

    python benchmarks/sr_template_oracle.py            # ~4 min on 2 idle cores (7 x 33 pastes over 7 min each)

Not a test: it needs ../shared/data/bidmc.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from models.data import found_dataset, split  # noqa: E402
from operators.io.records import read_recording  # noqa: E402
from operators.processing.resample import decimate_to, resample  # noqa: E402
from operators.translator import SR, PairedContext, load_translator  # noqa: E402
from models.evaluate import SR_RATE, SR_TARGET, Result  # noqa: E402
from stream.tools.evaluate import translate_array  # noqa: E402

CONTEXT_S = 60.0


def _first(rec, seconds: float) -> PairedContext:
    rate = rec.rates["II"]
    c = int(seconds * rate)
    return PairedContext(rec.signals["II"][:c].astype(float), rec.signals["PLETH"][:c].astype(float), rate)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    args = ap.parse_args(argv)
    root = found_dataset("bidmc", args.data)
    if root is None:
        return 2
    train, val = split()
    classic = load_translator("classic")
    foreign = {t: _first(read_recording(root / f"bidmc{t}", signals=["II", "PLETH"]), CONTEXT_S) for t in train}
    pearson = lambda ref, y: Result().add(ref, y, SR_TARGET, peaks=False)["pearson"]
    rows = []
    print(f"{'record':<7} {'best foreign':>14} {'median foreign':>15} {'own':>7} {'polyphase':>10}")
    for v in val:
        rec = read_recording(root / f"bidmc{v}", signals=["II", "PLETH"])
        rate = rec.rates["II"]
        x = rec.signals["II"].astype(np.float64)[int(CONTEXT_S * rate):]
        ref = resample(x, rate, SR_TARGET, method="polyphase")
        lo = decimate_to(x, rate, SR_RATE)
        sr = lambda ctx: translate_array(classic, SR, lo, SR_RATE, SR_TARGET, "II", context=ctx)
        scores = {t: pearson(ref, sr(ctx)) for t, ctx in foreign.items()}
        best = max(scores, key=scores.get)
        row = (scores[best], float(np.median(list(scores.values()))), pearson(ref, sr(_first(rec, CONTEXT_S))),
               pearson(ref, sr(None)))
        rows.append(row)
        print(f"{v:<7} {row[0]:>8.3f} ({best}) {row[1]:>15.3f} {row[2]:>7.3f} {row[3]:>10.3f}", flush=True)
    m = np.mean(rows, axis=0)
    print(f"{'mean':<7} {m[0]:>14.3f} {m[1]:>15.3f} {m[2]:>7.3f} {m[3]:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
