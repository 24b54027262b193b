"""`python -m stream.tools.fit_blend`: fit CLMT's PPG->ECG shrinkage toward the classic synthesis on training records.

Runs the model as serving does over training records (`models.blend.served_windows`: the first 60 s of each record
are the patient's context, 8 s windows after it with and without that context) and fits `models.blend.PriorBlend`
by least squares (`models.blend.fit`); the weights' JSON gets the result as `prior_blend` (the tensors are not
touched). The default records are Challenge 2015's training split, which the shipped weights never saw: on records
the translator was trained on (BIDMC's training patients) its output is better than on new patients, and a blend
fitted there would trust it too much. Validation records are refused.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import weights as W
from models.blend import fit, served_windows
from models.data import find_dataset, record_path
from models.engine import ClmtTranslator
from models.evaluate import training_records
from operators.io.records import read_recording
from operators.vocab import CANONICAL_RATE_HZ
from stream.pipeline import PipelineConfig
from stream.tools.cli import ArgumentParser

# the worker's windows: the fit weighs the part of each window serving emits
WINDOW_S, HOP_S, LOOKAHEAD_S = PipelineConfig.window_s, PipelineConfig.hop_s, PipelineConfig.lookahead_s


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def cli(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m stream.tools.fit_blend", description=__doc__.splitlines()[0].split(": ", 1)[1])
    ap.add_argument("--weights", default=None, help="CLMT .safetensors whose JSON gets the blend (default: shipped)")
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--challenge-data", default=None, help="Challenge 2015 folder (default ../shared/data/challenge2015)")
    ap.add_argument("--datasets", default="challenge", help="comma list of bidmc, challenge: whose training split")
    ap.add_argument("--max-records", type=int, default=0, metavar="N",
                    help="at most N training records per dataset, spread over its list; 0 = all")
    ap.add_argument("--hop-s", type=float, default=4.0, help="seconds between the windows drawn from a record")
    ap.add_argument("--context-s", type=float, default=60.0, help="the first S seconds of a record are its context")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--dry-run", action="store_true", help="print the fitted weights without writing them")
    args = ap.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or set(datasets) - {"bidmc", "challenge"}:
        ap.error(f"--datasets {args.datasets!r}: choose from bidmc, challenge")
    torch.set_num_threads(args.threads)
    path = W.resolve(args.weights)
    engine = ClmtTranslator(weights=str(path), device="cpu")
    roots = {d: find_dataset(d, args.data if d == "bidmc" else args.challenge_data) for d in datasets}
    names = {d: training_records(d, roots[d], args.max_records) for d in datasets}
    # the part of each window the worker emits: between hop + look-ahead and look-ahead before its end
    region = tuple(int(round((WINDOW_S - v) * CANONICAL_RATE_HZ)) for v in (HOP_S + LOOKAHEAD_S, LOOKAHEAD_S))
    t0, parts = time.time(), []
    for d in datasets:
        for name in names[d]:
            rec = read_recording(record_path(name, roots[d], roots[d]), signals=["II", "PLETH"])
            if abs(rec.rates["II"] - rec.rates["PLETH"]) > 1e-9:
                continue
            part = served_windows(engine, rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64),
                                  rec.rates["II"], args.context_s, WINDOW_S, args.hop_s, rec.age, rec.sex)
            if len(part["target"]):
                parts.append(part)
            print(f"  {d} {name}: {len(part['target'])} windows ({time.time() - t0:.0f} s)", flush=True)
    data = {k: np.concatenate([p[k] for p in parts]) for k in ("model_out", "prior", "target", "has_ctx")}
    command = "python -m stream.tools.fit_blend " + " ".join(argv if argv is not None else sys.argv[1:])
    blend = fit(data["model_out"], data["prior"], data["target"], data["has_ctx"], region,
                meta={"command": command.strip(), "records": [n for d in datasets for n in names[d]],
                      "windows": len(data["target"]), "context_windows": int(data["has_ctx"].sum()),
                      "hop_s": args.hop_s, "context_s": args.context_s, "commit": _commit()})
    print(f"fitted on {len(data['target'])} windows in {time.time() - t0:.0f} s: (w_model, w_classic) with context "
          f"{blend.context}, without {blend.no_context}", flush=True)
    if not args.dry_run:
        jpath = path.with_suffix(".json")
        cfg = json.loads(jpath.read_text())
        cfg["prior_blend"] = blend.to_dict()
        jpath.write_text(json.dumps(cfg, indent=2, default=float))
        print(f"wrote prior_blend to {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
