"""Non-finite samples in the training split, and what repairing them as serving does changes in training's inputs.

Per training record with a NaN/inf sample (BIDMC and Challenge 2015 training splits): how many there are per
signal; how many samples at 100 Hz the interpolation (`models.prep.finite`, serving's repair) makes differ from
zero-filling (`np.nan_to_num`, what training did before) by more than 1e-3 of the record's spread; and how many of
those lie outside the unusable mask (`models.data.unusable_mask`), i.e. where a training window may hold them.

    python benchmarks/training_nonfinite.py      # ~2 min on 2 cores

Not a test: it needs ../shared/data. The model card quotes its output.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from models.data import (DatasetNotFound, challenge_split, find_dataset, found_dataset,  # noqa: E402
                         missing_at_canonical, record_path, split, unusable_mask)
from models.prep import finite  # noqa: E402
from operators.io.records import read_recording  # noqa: E402
from operators.processing.resample import resample  # noqa: E402
from operators.vocab import CANONICAL_RATE_HZ

SIGNALS = ("II", "PLETH")


def record_changes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """{signal: (samples, non-finite, changed at 100 Hz, changed outside the unusable mask)}."""
    rec = read_recording(path, signals=list(SIGNALS))
    raw = {k: rec.signals[k].astype(np.float64) for k in SIGNALS}
    if all(np.isfinite(v).all() for v in raw.values()):
        return {k: (len(v), 0, 0, 0) for k, v in raw.items()}
    at100, changed, missing = {}, {}, {}
    for k, x in raw.items():
        rate = rec.rates[k]
        repaired = resample(finite(x), rate, CANONICAL_RATE_HZ, method="polyphase")
        zeroed = resample(np.nan_to_num(x), rate, CANONICAL_RATE_HZ, method="polyphase")
        at100[k] = repaired.astype(np.float32)
        changed[k] = np.abs(repaired - zeroed) > 1e-3 * np.std(repaired)
        missing[k] = missing_at_canonical(x, rate, len(repaired))
    n = min(len(v) for v in at100.values())
    bad = np.logical_or.reduce([unusable_mask(at100[k][:n], missing[k][:n]) for k in SIGNALS])
    return {k: (len(raw[k]), int((~np.isfinite(raw[k])).sum()), int(changed[k].sum()),
                int((changed[k][:n] & ~bad).sum())) for k in SIGNALS}


def main() -> int:
    bidmc = found_dataset("bidmc")
    if bidmc is None:
        return 2
    names = [("bidmc", n) for n in split()[0]]
    try:
        croot = find_dataset("challenge")
    except DatasetNotFound:
        croot = None  # BIDMC's training split alone
    else:
        names += [("challenge", n) for n in challenge_split(croot)[0]]
    totals: dict[tuple[str, str], list[int]] = {}
    for ds, name in names:
        for k, (samples, nonfinite, changed, outside) in record_changes(record_path(name, bidmc, croot)).items():
            tot = totals.setdefault((ds, k), [0, 0, 0, 0, 0])
            for i, v in enumerate((1, samples, nonfinite, changed, outside)):
                tot[i] += v
            if nonfinite:
                print(f"{ds} {name} {k}: {nonfinite} of {samples} non-finite ({nonfinite / samples:.2%}); "
                      f"{changed} samples at 100 Hz changed, {outside} outside the unusable mask", flush=True)
    for (ds, k), (recs, samples, nonfinite, changed, outside) in totals.items():
        print(f"{ds} {k}: {recs} training records, {nonfinite} of {samples} samples non-finite; at 100 Hz {changed} "
              f"changed by the repair, {outside} outside the unusable mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
