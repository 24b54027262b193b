"""`wavebridge evaluate`: CLMT vs classic baselines on held-out records of BIDMC and Challenge 2015, per record,
per dataset and overall.

Every method runs through the same streaming window logic as the service (`stream.tools.offline`), so the
numbers are what a bed would get. Held-out records (`models.data`): BIDMC's validation patients (125 Hz, 8 min,
split by patient) and Challenge 2015's held-out records with lead II + PLETH (250 Hz, 5-5.5 min, split by record:
one patient may have records on both sides, so those figures can be optimistic). Protocol per record:
  * PPG->ECG: the first `--context-s` seconds are the patient's earlier paired ECG+PPG context; the
    rest is translated from PLETH alone, with and without that context. The translators get all of it;
    the worker instead gives them the best 10 s segment of what it holds (`--context-pick 10` does that).
    `--ppg-rates native,25` also translates the PLETH brought to 25 Hz (anti-aliased; the context stays at the
    record's rate). Reference R-peaks are detected on the real lead II (neither dataset's beats are annotated here).
  * SR: the same part after the context, lead II and PLETH brought to 25 Hz (anti-aliased decimation "aa",
    and plain every-k-th-sample "plain", as monitors differ) and super-resolved to 100 Hz; the reference is
    the original resampled to 100 Hz. Lead II also runs "+context": the same full-rate context as above
    supplies the patient's QRS (CLMT's refiner input; the classic baseline pastes it, operators.processing.beatsr).
Metrics: R-peak F1 at +-50 / +-150 ms (one-to-one matching, pooled counts), HR MAE per 8 s window, waveform
Pearson and RMSE per 8 s window (mean over windows), raw and after the best shift within +-150 ms per window
("aligned", the figure comparable with published PPG->ECG results on pre-aligned windows).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.data import challenge_root, challenge_split, data_root, is_bidmc_name, record_path, split
from operators.state.context import select_context
from operators.processing.metrics import (hr_mae, peak_f1, pool_windows, sum_scores, windowed_aligned_pearson_rmse,
                               windowed_pearson_rmse)
from operators.processing.samples import fill_nonfinite
from operators.io.records import Recording, read_recording
from operators.processing.resample import decimate_to, resample
from operators.processing.rpeaks import detect_rpeaks
from operators.translator import PPG2ECG, SR, PairedContext, load_translator
from stream.tools.cli import ArgumentParser

SR_RATE, SR_TARGET = 25.0, 100.0
TASKS = ("ppg2ecg", "sr-ecg", "sr-ppg")
SR_INPUTS = ("aa", "plain")
DATASETS = ("bidmc", "challenge")
PPG_RATES = ("native", "25")
MAX_SHIFT_S = 0.15  # "aligned": best shift of each 8 s window within this


@dataclass
class Result:
    f1_50: list = field(default_factory=list)  # PeakScore per record
    f1_150: list = field(default_factory=list)
    hr: list = field(default_factory=list)
    windows: list = field(default_factory=list)  # WindowScores per record
    aligned: list = field(default_factory=list)  # the same windows after the best shift

    def add(self, ref: np.ndarray, out: np.ndarray, rate: float, peaks: bool = True) -> dict:
        n = min(len(ref), len(out))
        ref, out = ref[:n], out[:n]
        w = windowed_pearson_rmse(ref, out, rate)
        a = windowed_aligned_pearson_rmse(ref, out, rate, MAX_SHIFT_S)
        self.windows.append(w)
        self.aligned.append(a)
        row = {"pearson": w.mean_pearson, "pearson_aligned": a.mean_pearson, "rmse": w.mean_rmse}
        if peaks:
            # a gap (NaN run) in either holds no beat: interpolated across for the detector
            rp, tp = detect_rpeaks(fill_nonfinite(ref)[0], rate), detect_rpeaks(fill_nonfinite(out)[0], rate)
            s50, s150 = peak_f1(rp, tp, rate, 0.05), peak_f1(rp, tp, rate, 0.15)
            self.f1_50.append(s50); self.f1_150.append(s150)
            h = hr_mae(rp, tp, rate, 8.0, n)
            self.hr.append(h)
            row |= {"f1_50": s50.f1, "f1_150": s150.f1, "hr_mae": h}
        return row

    def merge(self, other: "Result") -> "Result":
        return Result(self.f1_50 + other.f1_50, self.f1_150 + other.f1_150, self.hr + other.hr,
                      self.windows + other.windows, self.aligned + other.aligned)

    def overall(self) -> dict:
        w, a = pool_windows(self.windows), pool_windows(self.aligned)
        row = {"pearson": w.mean_pearson, "pearson_aligned": a.mean_pearson, "rmse": w.mean_rmse, "windows": len(w.pearson)}
        if self.f1_50:
            row |= {"f1_50": sum_scores(self.f1_50).f1, "f1_150": sum_scores(self.f1_150).f1,
                    "hr_mae": float(np.nanmean(self.hr)) if np.isfinite(self.hr).any() else float("nan")}
        return row


def _fmt(row: dict) -> str:
    keys = ("f1_50", "f1_150", "hr_mae", "pearson", "pearson_aligned", "rmse")
    return "  ".join(f"{k.replace('pearson_aligned', 'aligned')}={row[k]:.3f}" for k in keys if k in row)


def translate_array(translator, task: str, x: np.ndarray, rate: float, target_rate: float, signal: str,
                    context: PairedContext | None = None, age=None, sex=None) -> np.ndarray:
    """One signal through the service's own window/stitch logic (stream.tools.offline), output on its grid: the
    samples of a gap the service leaves (a NaN run in `x`) stay NaN, so everything after it stays in step."""
    from stream.tools.offline import translate_recording  # Kafka-free: the pipeline core without a broker

    rec = Recording("eval", {signal: np.asarray(x, np.float32)}, {signal: rate}, {signal: ""}, age, sex, {signal: signal})
    res = translate_recording(rec, task, target_rate=target_rate, context=context, translator=translator, signal=signal)
    values = next(iter(res.columns.values())).astype(np.float64)
    n = int(round(len(x) * target_rate / rate))
    out = np.full(n, np.nan)
    idx = np.round(res.times_s * target_rate).astype(np.int64)
    ok = (idx >= 0) & (idx < n)
    out[idx[ok]] = values[ok]
    return out


def _comma_list(ap: argparse.ArgumentParser, option: str, value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        ap.error(f"{option}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose from {', '.join(allowed)}")
    return items


def spread_pick(names: list[str], most: int) -> list[str]:
    """At most `most` of `names`, evenly spread over the list (Challenge names are sorted by alarm type, so the
    first few would all be asystole records)."""
    if most <= 0 or most >= len(names):
        return list(names)
    return [names[int(i)] for i in np.linspace(0, len(names) - 1, most).round()]


def _plan(ap: argparse.ArgumentParser, args: argparse.Namespace, datasets: list[str]) -> dict[str, list[str]]:
    """dataset -> the record names to evaluate (the held-out ones unless --records names others)."""
    if args.records:
        names = [n.strip() for n in args.records.split(",") if n.strip()]
        names = [n[5:] if n.startswith("bidmc") and is_bidmc_name(n[5:]) else n for n in names]
        plan = {"bidmc": [n for n in names if is_bidmc_name(n)], "challenge": [n for n in names if not is_bidmc_name(n)]}
        return {d: v for d, v in plan.items() if v}
    plan = {}
    for d in datasets:
        root = challenge_root(args.challenge_data) if d == "challenge" else data_root(args.data)
        marker = root / ("RECORDS" if d == "challenge" else "bidmc01.hea")
        if not marker.exists():
            given = args.data if d == "bidmc" else args.challenge_data
            if args.datasets is not None or given:  # asked for by name or folder: an error, not a silent skip
                option = "--data" if d == "bidmc" else "--challenge-data"
                what = f"--datasets {d}" if args.datasets is not None else f"{option} {given}"
                ap.error(f"{what}: {d} records not found under {root}")
            print(f"{d}: records not found under {root}; skipped", flush=True)
            continue
        plan[d] = spread_pick(challenge_split(root)[1] if d == "challenge" else split()[1], args.max_records)
    return plan


def cli(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="wavebridge evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--challenge-data", default=None, help="Challenge 2015 folder (default ../shared/data/challenge2015)")
    ap.add_argument("--datasets", default=None,
                    help=f"comma list of {', '.join(DATASETS)} (default: each whose records are found)")
    ap.add_argument("--records", default=None,
                    help="comma list of record names instead of the held-out ones: BIDMC's '03' or 'bidmc03', Challenge's 'v158s'")
    ap.add_argument("--max-records", type=int, default=0, metavar="N",
                    help="at most N held-out records per dataset, spread evenly over its list (a quick run); 0 = all")
    ap.add_argument("--weights", default=None, help="CLMT .safetensors (default: shipped weights)")
    ap.add_argument("--classic", default="classic", help="the classic translator spec to compare with (default classic)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--context-s", type=float, default=60.0, help="the first S seconds are the patient's context")
    ap.add_argument("--context-pick", type=float, default=0.0, metavar="S",
                    help="give the translators only the best S-second segment of that context, as the worker does "
                         "(operators.state.context.select_context; the worker's default is 10); 0 = all of it")
    ap.add_argument("--seconds", type=float, default=None, help="evaluate only this much of each record")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--ppg-rates", default="native",
                    help="comma list of the PLETH rates PPG->ECG translates from: native (the record's) and/or 25 (Hz)")
    ap.add_argument("--sr-input", default=",".join(SR_INPUTS),
                    help="comma list; how the 25 Hz input is made: aa = anti-aliased decimation, plain = every k-th sample")
    ap.add_argument("--json", default=None, help="also write all numbers here")
    args = ap.parse_args(argv)
    # Checked before any work: an unknown name would otherwise evaluate nothing (tasks) or run
    # plain decimation under the user's label (sr-input), and still exit 0.
    tasks = _comma_list(ap, "--tasks", args.tasks, TASKS)
    sr_inputs = _comma_list(ap, "--sr-input", args.sr_input, SR_INPUTS)
    ppg_rates = _comma_list(ap, "--ppg-rates", args.ppg_rates, PPG_RATES)
    datasets = _comma_list(ap, "--datasets", args.datasets or ",".join(DATASETS), DATASETS)
    if args.max_records < 0:
        ap.error("--max-records must be >= 0")
    plan = _plan(ap, args, datasets)
    if not plan:
        ap.error("no records to evaluate")
    for d, names in plan.items():  # before loading the model, not after evaluating the records before a bad one
        root = challenge_root(args.challenge_data) if d == "challenge" else data_root(args.data)
        missing = [n for n in names if not (root / (n if d == "challenge" else f"bidmc{n}")).with_suffix(".hea").exists()]
        if missing:
            ap.error(f"--records: no {d} record {missing[0]} under {root} (--data / --challenge-data)")
    methods = {"clmt": load_translator("clmt", weights=args.weights, device=args.device)}
    classic = load_translator(args.classic)
    cubic = load_translator("classic", sr_method="cubic")
    results: dict[str, dict[str, Result]] = {d: {} for d in plan}
    per_record: dict[str, dict] = {}
    t0 = time.time()

    done: dict[str, list[str]] = {}
    for dataset, names in plan.items():
        print(f"== {dataset}: {len(names)} records", flush=True)
        for name in names:
            path = record_path(name, data_root(args.data), challenge_root(args.challenge_data))
            _evaluate_record(dataset, name, read_recording(path, signals=["II", "PLETH"]), args, tasks, sr_inputs,
                             ppg_rates, methods["clmt"], classic, cubic, results[dataset], per_record)
            done.setdefault(dataset, []).append(name)
            if args.json:  # after every record: an interrupted long run keeps what it measured
                _write_json(args, done, results, per_record, complete=False)
    for dataset, names in plan.items():
        print(f"\n{dataset}: overall over {len(names)} held-out records ({', '.join(names)}):")
        for k, row in _report(results, done)["datasets"][dataset]["overall"].items():
            print(f"  {k:<44} {_fmt(row)}")
    report = _report(results, done)
    print(f"\nall datasets ({', '.join(plan)}), {time.time() - t0:.0f}s:")
    for k, row in report["overall"].items():
        print(f"  {k:<44} {_fmt(row)}")
    for part, rows in [(d, report["datasets"][d]["overall"]) for d in done] + [("all", report["overall"])]:
        print(f"\nCLMT against the strongest classic method in this run ({part}; Pearson raw / aligned, RMSE, "
              f"F1 +-50 / +-150 ms, HR MAE bpm):")
        print(markdown_comparison(rows))
    if args.json:
        _write_json(args, done, results, per_record, complete=True)
    return 0


def comparison(rows: dict[str, dict]) -> list[tuple[str, str, dict, str, dict]]:
    """(task row, CLMT metrics, classic method, its metrics) for each CLMT row, the classic side being
    the strongest classic method run on the same input (by mean window Pearson: polyphase or cubic for SR; the
    context paste for ECG SR + context; the template for PPG->ECG)."""
    out = []
    for key, row in rows.items():
        parts = key.split(" ")
        if "clmt" not in parts:
            continue
        i = parts.index("clmt")
        task, rest = " ".join(parts[:i]), " ".join(parts[i + 1:])
        names = ("baseline",) if task.startswith("ppg2ecg") else ("polyphase",) if rest else ("polyphase", "cubic")
        rivals = {n: f"{task} {n}{' ' + rest if rest else ''}" for n in names}
        rivals = {n: r for n, r in rivals.items() if r in rows}
        if rivals:
            best = max(rivals, key=lambda n: rows[rivals[n]]["pearson"])
            out.append((f"{task}{' ' + rest if rest else ''}", row, best, rows[rivals[best]]))
    return out


def markdown_comparison(rows: dict[str, dict]) -> str:
    """`comparison` as a markdown table."""
    cell = lambda r: (f"{r['pearson']:.4f} / {r['pearson_aligned']:.4f}, {r['rmse']:.4f}"
                      + (f", {r['f1_50']:.3f} / {r['f1_150']:.3f}, {r['hr_mae']:.2f}" if "f1_50" in r else ""))
    lines = ["| task | CLMT | strongest classic | classic method |", "|---|---|---|---|"]
    for task, a, method, b in comparison(rows):
        lines.append(f"| {task} | {cell(a)} | {cell(b)} | {method} |")
    return "\n".join(lines)


def _report(results: dict[str, dict[str, "Result"]], done: dict[str, list[str]]) -> dict:
    """Per dataset and pooled over the datasets: row -> overall metrics."""
    out = {"datasets": {d: {"records": names, "overall": {k: r.overall() for k, r in results[d].items()}}
                        for d, names in done.items()}}
    keys = {k: None for d in done for k in results[d]}
    out["overall"] = {k: _merged([results[d][k] for d in done if k in results[d]]).overall() for k in keys}
    return out


def _write_json(args, done, results, per_record, complete: bool) -> None:
    out = {"complete": complete, "context_s": args.context_s, "context_pick": args.context_pick, "max_shift_s": MAX_SHIFT_S,
           "records": [n for v in done.values() for n in v], **_report(results, done), "per_record": per_record}
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=float))
    tmp.replace(args.json)


def _merged(parts: list[Result]) -> Result:
    out = Result()
    for p in parts:
        out = out.merge(p)
    return out


def _evaluate_record(dataset, name, rec, args, tasks, sr_inputs, ppg_rates, clmt, classic, cubic, results, per_record):
    """Every asked-for row of one record into `results` (row -> Result) and `per_record`."""
    rate = rec.rates["II"]
    if abs(rec.rates["PLETH"] - rate) > 1e-9:
        print(f"  {name}: lead II at {rate:g} Hz, PLETH at {rec.rates['PLETH']:g} Hz: skipped", flush=True)
        return
    ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
    if args.seconds:
        n = int((args.context_s + args.seconds) * rate)
        ecg, ppg = ecg[:n], ppg[:n]
    print(f"{dataset} {name} ({rate:g} Hz, age {rec.age}, sex {rec.sex})", flush=True)
    c = int(args.context_s * rate)
    meta = dict(age=rec.age, sex=rec.sex)
    ctx = PairedContext(ecg[:c], ppg[:c], rate)
    if args.context_pick:  # as the worker does: the best segment of that length from what it holds
        ctx = select_context(ecg[:c], ppg[:c], rate, args.context_pick)
        if ctx is None:
            print(f"  no {args.context_pick:g} s segment of the context passes selection: '+context' runs without",
                  flush=True)

    def run(key, ref, out, out_rate, peaks=True):
        row = results.setdefault(key, Result()).add(ref, out, out_rate, peaks)
        per_record.setdefault(f"{dataset}/{name}", {})[key] = row
        print(f"  {key:<44} {_fmt(row)}", flush=True)

    if "ppg2ecg" in tasks:
        ref = ecg[c:]
        for prate in ppg_rates:
            src, src_rate, tag = ppg[c:], rate, "ppg2ecg"
            if prate != "native":
                src_rate, tag = float(prate), f"ppg2ecg@{prate}Hz"
                src = decimate_to(fill_nonfinite(src)[0], rate, src_rate)
            for label, tr in (("clmt", clmt), ("baseline", classic)):
                for with_ctx in (True, False):
                    out = translate_array(tr, PPG2ECG, src, src_rate, rate, "PLETH", context=ctx if with_ctx else None, **meta)
                    run(f"{tag} {label} {'+context' if with_ctx else 'no context'}", ref, out, rate)
    for sig, task in (("II", "sr-ecg"), ("PLETH", "sr-ppg")):
        if task not in tasks:
            continue
        x = rec.signals[sig].astype(np.float64)[c : len(ecg)]
        ref = resample(fill_nonfinite(x)[0], rate, SR_TARGET, method="polyphase")
        ref[np.round(np.flatnonzero(~np.isfinite(x)) * SR_TARGET / rate).astype(np.int64).clip(0, len(ref) - 1)] = np.nan
        runs = [("clmt", clmt, None), ("polyphase", classic, None), ("cubic", cubic, None)]
        if sig == "II":
            runs += [("clmt +context", clmt, ctx), ("polyphase +context", classic, ctx)]
        for kind in sr_inputs:
            lo = decimate_to(fill_nonfinite(x)[0], rate, SR_RATE) if kind == "aa" else x[:: int(round(rate / SR_RATE))]
            for label, tr, context in runs:
                out = translate_array(tr, SR, lo, SR_RATE, SR_TARGET, sig, context=context, **meta)
                run(f"{task} 25->100 {kind} {label}", ref, out, SR_TARGET, peaks=sig == "II")


if __name__ == "__main__":
    sys.exit(cli())
