"""`wavebridge evaluate`: CLMT vs classic baselines on held-out BIDMC patients, per record and overall.

Every method runs through the same streaming window logic as the service (`stream.offline`), so the
numbers are what a bed would get. Protocol per validation record (125 Hz, 8 min):
  * PPG->ECG: the first `--context-s` seconds are the patient's earlier paired ECG+PPG context; the
    rest is translated from PLETH alone, with and without that context. The translators get all of it;
    the worker instead gives them the best 10 s segment of what it holds (`--context-pick 10` does that). Reference R-peaks are
    detected on the real lead II (BIDMC has no beat annotations).
  * SR: the same part after the context, lead II and PLETH brought to 25 Hz (anti-aliased decimation "aa",
    and plain every-5th-sample "plain", as monitors differ) and super-resolved to 100 Hz; the reference is
    the original resampled to 100 Hz. Lead II also runs "+context": the same full-rate context as above
    supplies the patient's QRS (CLMT's refiner input; the classic baseline pastes it, operators.beatsr).
Metrics: R-peak F1 at +-50 / +-150 ms (one-to-one matching), HR MAE per 8 s window, waveform Pearson
and RMSE per 8 s window (mean over windows).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data import data_root, split
from operators.context import select_context
from operators.metrics import hr_mae, peak_f1, pool_windows, sum_scores, windowed_pearson_rmse
from operators.records import Recording, read_recording
from operators.resample import decimate_to, resample
from operators.rpeaks import detect_rpeaks
from operators.translator import PPG2ECG, SR, PairedContext, load_translator

SR_RATE, SR_TARGET = 25.0, 100.0
TASKS = ("ppg2ecg", "sr-ecg", "sr-ppg")
SR_INPUTS = ("aa", "plain")


@dataclass
class Result:
    f1_50: list = field(default_factory=list)  # PeakScore per record
    f1_150: list = field(default_factory=list)
    hr: list = field(default_factory=list)
    windows: list = field(default_factory=list)  # WindowScores per record

    def add(self, ref: np.ndarray, out: np.ndarray, rate: float, peaks: bool = True) -> dict:
        n = min(len(ref), len(out))
        ref, out = ref[:n], out[:n]
        w = windowed_pearson_rmse(ref, out, rate)
        self.windows.append(w)
        row = {"pearson": w.mean_pearson, "rmse": w.mean_rmse}
        if peaks:
            rp, tp = detect_rpeaks(ref, rate), detect_rpeaks(out, rate)
            s50, s150 = peak_f1(rp, tp, rate, 0.05), peak_f1(rp, tp, rate, 0.15)
            self.f1_50.append(s50); self.f1_150.append(s150)
            h = hr_mae(rp, tp, rate, 8.0, n)
            self.hr.append(h)
            row |= {"f1_50": s50.f1, "f1_150": s150.f1, "hr_mae": h}
        return row

    def overall(self) -> dict:
        w = pool_windows(self.windows)
        row = {"pearson": w.mean_pearson, "rmse": w.mean_rmse}
        if self.f1_50:
            row |= {"f1_50": sum_scores(self.f1_50).f1, "f1_150": sum_scores(self.f1_150).f1,
                    "hr_mae": float(np.nanmean(self.hr))}
        return row


def _fmt(row: dict) -> str:
    keys = ("f1_50", "f1_150", "hr_mae", "pearson", "rmse")
    return "  ".join(f"{k}={row[k]:.3f}" for k in keys if k in row)


def translate_array(translator, task: str, x: np.ndarray, rate: float, target_rate: float, signal: str,
                    context: PairedContext | None = None, age=None, sex=None) -> np.ndarray:
    """One signal through the service's own window/stitch logic (stream.offline), output on its grid."""
    from stream.offline import translate_recording  # Kafka-free: the pipeline core without a broker

    rec = Recording("eval", {signal: np.asarray(x, np.float32)}, {signal: rate}, {signal: ""}, age, sex, {signal: signal})
    res = translate_recording(rec, task, target_rate=target_rate, context=context, translator=translator, signal=signal)
    return next(iter(res.columns.values())).astype(np.float64)


def _comma_list(ap: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        ap.error(f"{option}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose from {', '.join(allowed)}")
    return items


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="wavebridge evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--records", default=None, help="comma list (default: the validation split)")
    ap.add_argument("--weights", default=None, help="CLMT .safetensors (default: shipped weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context-s", type=float, default=60.0, help="the first S seconds are the patient's context")
    ap.add_argument("--context-pick", type=float, default=0.0, metavar="S",
                    help="give the translators only the best S-second segment of that context, as the worker does "
                         "(operators.context.select_context; the worker's default is 10); 0 = all of it")
    ap.add_argument("--seconds", type=float, default=None, help="evaluate only this much of each record")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--sr-input", default=",".join(SR_INPUTS),
                    help="comma list; how the 25 Hz input is made: aa = anti-aliased decimation, plain = every k-th sample")
    ap.add_argument("--json", default=None, help="also write all numbers here")
    args = ap.parse_args(argv)
    # Checked before any work: an unknown name would otherwise evaluate nothing (tasks) or run
    # plain decimation under the user's label (sr-input), and still exit 0.
    tasks = _comma_list(ap, "--tasks", args.tasks, TASKS)
    sr_inputs = _comma_list(ap, "--sr-input", args.sr_input, SR_INPUTS)
    root = data_root(args.data)
    names = args.records.split(",") if args.records else split()[1]
    methods = {"clmt": load_translator("clmt", weights=args.weights, device=args.device)}
    classic = load_translator("classic")
    cubic = load_translator("classic", sr_method="cubic")
    results: dict[str, Result] = {}
    per_record: dict[str, dict] = {}
    t0 = time.time()

    def run(key, rec_name, ref, out, rate, peaks=True):
        row = results.setdefault(key, Result()).add(ref, out, rate, peaks)
        per_record.setdefault(rec_name, {})[key] = row
        print(f"  {key:<42} {_fmt(row)}", flush=True)

    for name in names:
        rec = read_recording(root / f"bidmc{name}", signals=["II", "PLETH"])
        rate = rec.rates["II"]
        ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
        if args.seconds:
            n = int((args.context_s + args.seconds) * rate)
            ecg, ppg = ecg[:n], ppg[:n]
        print(f"bidmc{name} (age {rec.age}, sex {rec.sex})", flush=True)
        c = int(args.context_s * rate)
        meta = dict(age=rec.age, sex=rec.sex)
        ctx = PairedContext(ecg[:c], ppg[:c], rate)
        if args.context_pick:  # as the worker does: the best segment of that length from what it holds
            ctx = select_context(ecg[:c], ppg[:c], rate, args.context_pick)
            if ctx is None:
                print(f"  no {args.context_pick:g} s segment of the context passes selection: '+context' runs without",
                      flush=True)
        if "ppg2ecg" in tasks:
            ref = ecg[c:]
            for label, tr in (("clmt", methods["clmt"]), ("baseline", classic)):
                for with_ctx in (True, False):
                    out = translate_array(tr, PPG2ECG, ppg[c:], rate, rate, "PLETH", context=ctx if with_ctx else None, **meta)
                    run(f"ppg2ecg {label} {'+context' if with_ctx else 'no context'}", name, ref, out, rate)
        for sig, task in (("II", "sr-ecg"), ("PLETH", "sr-ppg")):
            if task not in tasks:
                continue
            x = rec.signals[sig].astype(np.float64)[c : len(ecg)]
            ref = resample(x, rate, SR_TARGET, method="polyphase")
            runs = [("clmt", methods["clmt"], None), ("polyphase", classic, None), ("cubic", cubic, None)]
            if sig == "II":
                runs += [("clmt +context", methods["clmt"], ctx), ("polyphase +context", classic, ctx)]
            for kind in sr_inputs:
                lo = decimate_to(x, rate, SR_RATE) if kind == "aa" else x[:: int(round(rate / SR_RATE))]
                for label, tr, context in runs:
                    out = translate_array(tr, SR, lo, SR_RATE, SR_TARGET, sig, context=context, **meta)
                    run(f"{task} 25->100 {kind} {label}", name, ref, out, SR_TARGET, peaks=sig == "II")
    print(f"\noverall over {len(names)} held-out records ({', '.join(names)}), {time.time() - t0:.0f}s:")
    overall = {k: r.overall() for k, r in results.items()}
    for k, row in overall.items():
        print(f"  {k:<42} {_fmt(row)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": names, "overall": overall, "per_record": per_record,
                                               "context_s": args.context_s, "context_pick": args.context_pick},
                                              indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
