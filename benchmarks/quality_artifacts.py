"""Signal-quality gating measured on injected PPG artifacts, and the confidence of synthesized-ECG windows.

For each BIDMC record (default: the held-out validation patients, models.data.split) the PLETH channel is
corrupted with one artifact kind at a time (operators.artifacts: flat = probe off, noise, clipping, motion, NaN
runs), in `--span-s` spans every `--every-s` seconds after the first 60 s (the patient's paired context, as in
`wavebridge evaluate`), and translated PPG->ECG by the offline pipeline (stream.offline: the worker's windows, its
quality gating and events) with gating on, and once more with it off (`--no-baseline` skips that). A window is
the emitted span of one pipeline window; it is *corrupted* when its quality span (emitted part +- 1 s) touches an
injected span, and *clean* when the record is uncorrupted. Printed per artifact kind:

- flagged: share of corrupted windows withheld (source_unusable) / not judged good;
- kept: share of clean windows published;
- wrong HR: share of windows that publish an `hr_bpm` more than 10 bpm from the true ECG's heart rate over the
  same span (true R-peaks of lead II, operators.rpeaks), gated and ungated.

Then the confidence of every published window (clean runs) against its measured error: R-peak timing error
(median |synth - true| ms of the peaks it reports, 150 ms for a missed or extra peak), Spearman's rho, and a
calibration table (confidence bins: windows, share "right" = every true peak found within 50 ms and no extra
one, mean error). `--fit` instead fits operators.quality.CONFIDENCE_COEFS["ppg2ecg"] on the given records
(use `--split train`: never fit and score on the same patients) and prints them.

    python benchmarks/quality_artifacts.py                       # held-out patients, clmt, ~5-10 min on 2 cores
    python benchmarks/quality_artifacts.py --translator classic  # the classic template translator
    python benchmarks/quality_artifacts.py --split train --fit   # fit the confidence model on training patients

Not a test: it needs ../shared/data/bidmc.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from operators import quality as Q  # noqa: E402
from operators.artifacts import ARTIFACTS, inject  # noqa: E402
from operators.context import select_context  # noqa: E402
from operators.records import Recording, read_recording  # noqa: E402
from operators.rpeaks import detect_rpeaks, heart_rate_bpm  # noqa: E402
from operators.translator import PPG2ECG, load_translator  # noqa: E402

CONTEXT_S = 60.0
NS = 1_000_000_000
HR_WRONG_BPM = 10.0
RIGHT_MS = 50.0
MISS_MS = 150.0


def _windows(events, quality_margin_s: float = 1.0):
    """(start_ns, end_ns, judged span (a, b), event) for every rpeaks or source_unusable event."""
    out = []
    for ev in events:
        if ev.type == "rpeaks":
            s, e = ev.time_ns, ev.fields["until_ns"]
        elif ev.type in ("source_unusable", "output_unusable"):
            s, e = ev.time_ns, ev.fields["end_ns"]
        else:
            continue
        ws = ev.fields["window_start_ns"]
        a = max(ws, s - int(quality_margin_s * NS))
        b = min(ws + 8 * NS, e + int(quality_margin_s * NS))
        out.append((s, e, (a, b), ev))
    return out


def _overlaps(a, b, spans) -> bool:
    return any(a < y and x < b for x, y in spans)


def _true_hr(r_ns, a, b):
    sel = r_ns[(r_ns >= a) & (r_ns < b)]
    return heart_rate_bpm(sel, 1e9) if len(sel) >= 2 else float("nan")


def _timing_error(peaks_ns, r_ns, lo, hi):
    """(median |error| ms with MISS_MS per missed/extra peak, right?) over the reporting range [lo, hi)."""
    true = r_ns[(r_ns >= lo) & (r_ns < hi)]
    got = np.asarray(peaks_ns, dtype=np.int64)
    errs, used = [], set()
    for t in true:
        if len(got):
            j = int(np.argmin(np.abs(got - t)))
            d = abs(int(got[j]) - int(t)) / 1e6
            if d <= MISS_MS and j not in used:
                used.add(j)
                errs.append(d)
                continue
        errs.append(MISS_MS)
    errs += [MISS_MS] * (len(got) - len(used))
    if not errs:
        return 0.0, True
    right = all(e <= RIGHT_MS for e in errs)
    return float(np.median(errs)), right


def run_record(name, root, translator, kinds, args, rng):
    from stream.offline import iter_source_chunks, translate_chunks

    rec = read_recording(root / f"bidmc{name}", ["II", "PLETH"])
    fs = float(rec.rates["PLETH"])
    ppg, ecg = rec.signals["PLETH"].astype(np.float64), rec.signals["II"].astype(np.float64)
    n_ctx = int(CONTEXT_S * fs)
    ctx = select_context(ecg[:n_ctx], ppg[:n_ctx], fs, 10.0)
    body_ppg, body_ecg = ppg[n_ctx:], ecg[n_ctx:]
    r_ns = (detect_rpeaks(body_ecg, fs) / fs * NS).astype(np.int64)  # truth, times from the body's start
    rows = []
    for kind in kinds:
        spans_idx = []
        x = body_ppg.copy()
        if kind != "clean":
            every, span = int(args.every_s * fs), int(args.span_s * fs)
            for a in range(int(5 * fs), len(x) - span, every):
                x = inject(kind, x, a, a + span, fs, rng)
                spans_idx.append((a, a + span))
        spans = [(int(a / fs * NS), int(b / fs * NS)) for a, b in spans_idx]
        r = Recording(f"bidmc{name}", {"PLETH": x.astype(np.float32)}, {"PLETH": fs}, {"PLETH": "NU"},
                      rec.age, rec.sex, {"PLETH": "PLETH"})
        for gated in ((True, False) if args.baseline and kind != "clean" else (True,)):
            t0 = time.perf_counter()
            _, events = translate_chunks(iter_source_chunks(r, "PLETH", 1.0), PPG2ECG, source_signal="PLETH",
                                         target_rate=fs, translator=translator, context=ctx, quality=gated)
            for s, e, (a, b), ev in _windows(events):
                corrupted = _overlaps(a, b, spans)
                row = {"record": name, "kind": kind, "gated": gated, "corrupted": corrupted, "start_ns": s,
                       "published": ev.type == "rpeaks", "flag": ev.fields.get("quality_flag"),
                       "reason": ev.fields.get("reason")}
                if ev.type == "rpeaks":
                    hr, truth = ev.fields["hr_bpm"], _true_hr(r_ns, a, b)
                    row["hr_wrong"] = bool(hr is not None and np.isfinite(truth) and abs(hr - truth) > HR_WRONG_BPM)
                    row["hr_published"] = hr is not None
                    row["confidence"] = ev.fields.get("confidence")
                    err, right = _timing_error(ev.fields["peaks_ns"], r_ns, s if not rows else s, e)
                    row["err_ms"], row["right"] = err, right
                    if gated and args.fit:
                        src = x[max(0, int(a * fs / NS)): int(b * fs / NS)]
                        row["features"] = Q.confidence_features(Q.assess(src, fs, "ppg"), ctx is not None).tolist()
                rows.append(row)
            print(f"  bidmc{name} {kind:9s} gated={gated!s:5s} {time.perf_counter() - t0:5.1f} s", file=sys.stderr)
    return rows


def _share(rows, pred):
    rows = list(rows)
    return (sum(1 for r in rows if pred(r)) / len(rows) if rows else float("nan")), len(rows)


def report(rows, kinds):
    print("\n## Gating on injected PPG artifacts (PPG->ECG windows)")
    print("| artifact | corrupted windows | withheld | not good | clean windows kept | wrong HR gated | wrong HR ungated |")
    print("|---|---|---|---|---|---|---|")
    clean = [r for r in rows if r["kind"] == "clean" and r["gated"]]
    kept, n_clean = _share(clean, lambda r: r["published"])
    wrong_clean, _ = _share(clean, lambda r: r.get("hr_wrong", False))
    print(f"| none (clean) | - | - | - | {kept:.1%} of {n_clean} | {wrong_clean:.1%} | - |")
    for kind in kinds:
        if kind == "clean":
            continue
        g = [r for r in rows if r["kind"] == kind and r["gated"] and r["corrupted"]]
        u = [r for r in rows if r["kind"] == kind and not r["gated"] and r["corrupted"]]
        withheld, n = _share(g, lambda r: not r["published"])
        notgood, _ = _share(g, lambda r: r["flag"] != "good")
        wrong_g, _ = _share(g, lambda r: r.get("hr_wrong", False))
        wrong_u, nu = _share(u, lambda r: r.get("hr_wrong", False))
        clean_here = [r for r in rows if r["kind"] == kind and r["gated"] and not r["corrupted"]]
        kept_here, nk = _share(clean_here, lambda r: r["published"])
        print(f"| {kind} | {n} | {withheld:.1%} | {notgood:.1%} | {kept_here:.1%} of {nk} (between spans) | "
              f"{wrong_g:.1%} | {wrong_u:.1%} |" if nu else f"| {kind} | {n} | {withheld:.1%} | {notgood:.1%} | "
              f"{kept_here:.1%} of {nk} | {wrong_g:.1%} | - |")
    reasons = {}
    for r in rows:
        if r["gated"] and r["corrupted"] and not r["published"]:
            reasons.setdefault(r["kind"], {}).setdefault(r["reason"], 0)
            reasons[r["kind"]][r["reason"]] += 1
    print("\nwithheld windows by reason:", json.dumps(reasons))


def report_confidence(rows):
    pub = [r for r in rows if r["gated"] and r["published"] and r.get("confidence") is not None]
    if len(pub) < 10:
        print("\n(too few published windows for the confidence report)")
        return
    conf = np.array([r["confidence"] for r in pub])
    err = np.array([r["err_ms"] for r in pub])
    right = np.array([r["right"] for r in pub])
    rho, p = stats.spearmanr(conf, err)
    print(f"\n## Confidence of published II_SYNTH windows ({len(pub)} windows, clean and corrupted runs)")
    print(f"Spearman rho(confidence, R-peak timing error) = {rho:.3f} (p = {p:.2g}); "
          f"rho(confidence, right) = {stats.spearmanr(conf, right)[0]:.3f}")
    edges = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001]
    print("| confidence | windows | predicted P(right) | observed right | mean error ms | median error ms |")
    print("|---|---|---|---|---|---|")
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf >= lo) & (conf < hi)
        if m.any():
            print(f"| [{lo:.2f}, {min(hi, 1):.2f}) | {m.sum()} | {conf[m].mean():.3f} | {right[m].mean():.3f} | "
                  f"{err[m].mean():.1f} | {np.median(err[m]):.1f} |")


def fit(rows):
    """Logistic regression (Newton's method, small ridge) of `right` on the confidence features."""
    pub = [r for r in rows if r["gated"] and r["published"] and "features" in r]
    X = np.array([[1.0] + r["features"] for r in pub])
    y = np.array([float(r["right"]) for r in pub])
    w = np.zeros(X.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        g = X.T @ (p - y) + 1e-2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X + 1e-2 * np.eye(len(w))
        w -= np.linalg.solve(H, g)
    print(f"\nfitted on {len(pub)} windows, {y.mean():.1%} right: CONFIDENCE_COEFS['ppg2ecg'] = "
          f"({', '.join(f'{v:.3f}' for v in w)})  # {', '.join(('intercept',) + Q.CONFIDENCE_FEATURES)}")


def main(argv=None) -> int:
    from models.data import found_data_root, split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=("val", "train"), default="val")
    ap.add_argument("--records", default=None, help="comma list of BIDMC numbers (overrides --split)")
    ap.add_argument("--translator", default="clmt")
    ap.add_argument("--kinds", default=",".join(["clean", *ARTIFACTS]))
    ap.add_argument("--span-s", type=float, default=10.0)
    ap.add_argument("--every-s", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=None, help="use only the first S seconds of each record")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the ungated runs")
    ap.add_argument("--fit", action="store_true", help="fit the ppg2ecg confidence coefficients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    root = found_data_root(args.data)
    if root is None:
        return 2
    names = args.records.split(",") if args.records else split()[0 if args.split == "train" else 1]
    kinds = args.kinds.split(",")
    translator = load_translator(args.translator)
    rng = np.random.default_rng(args.seed)
    rows = []
    for name in names:
        rows += run_record(name, root, translator, kinds, args, rng)
    print(f"records {','.join(names)}; translator {args.translator}; artifacts {args.span_s:g} s every "
          f"{args.every_s:g} s; wrong HR = more than {HR_WRONG_BPM:g} bpm off")
    report(rows, kinds)
    report_confidence(rows)
    if args.fit:
        fit(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
