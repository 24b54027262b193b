"""Codebook use of the shipped tokenizer on held-out patients: per RVQ level, how many of its codes the validation
records' lead II and PLETH actually pick, and the perplexity of that use (max = codes per level).

The training log's perplexity is of recent training batches; this is the same health question asked of data the
tokenizer never saw. Every 8 s window (2 s hop) of each held-out record, at 100 Hz, z-scored as the engine does.

    python benchmarks/codebook_usage.py          # ~20 s on 2 cores

Not a test: it needs ../shared/data/bidmc. The model card quotes its output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import weights as W  # noqa: E402
from models.data import found_dataset, load_records, split  # noqa: E402
from models.prep import zscore  # noqa: E402

WINDOW, HOP = 800, 200  # samples at 100 Hz


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--weights", default=None, help="CLMT .safetensors (default: the shipped weights)")
    args = ap.parse_args(argv)
    root = found_dataset("bidmc", args.data)
    if root is None:
        return 2
    torch.set_num_threads(2)
    tok, _, _, _ = W.load(args.weights)
    recs = load_records(root, split()[1], with_lowres=False)
    levels, codes = len(tok.rvq.levels), tok.rvq.levels[0].codes
    counts = {m: np.zeros((levels, codes), np.int64) for m in ("ecg", "ppg")}
    with torch.inference_mode():
        for rec in recs:
            for mod in ("ecg", "ppg"):
                x = getattr(rec, mod)
                wins = [zscore(x[s:s + WINDOW])[0] for s in range(0, len(x) - WINDOW + 1, HOP)]
                idx = tok.tokens(torch.from_numpy(np.stack(wins)), mod).reshape(-1, levels).numpy()
                for lvl in range(levels):
                    counts[mod][lvl] += np.bincount(idx[:, lvl], minlength=codes)
    print(f"held-out records {', '.join(split()[1])}; {codes} codes a level; used = picked at least once")
    print(f"{'level':<6} " + " ".join(f"{m + ' used':>9} {m + ' ppl':>8}" for m in counts) + f" {'both used':>9}")
    for lvl in range(levels):
        row = []
        for m in counts:
            c = counts[m][lvl]
            p = c[c > 0] / c.sum()
            row.append(f"{int((c > 0).sum()):>9} {float(np.exp(-(p * np.log(p)).sum())):>8.1f}")
        both = int(((counts["ecg"][lvl] + counts["ppg"][lvl]) > 0).sum())
        print(f"{lvl:<6} " + " ".join(row) + f" {both:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
