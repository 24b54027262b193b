"""Signal-quality gating measured on injected PPG artifacts, and the confidence of synthesized-ECG windows.

For each BIDMC record (default: the held-out validation patients, models.data.split) the PLETH channel is
corrupted with one artifact kind at a time (operators.processing.artifacts: flat = probe off, noise, clipping, motion, NaN
runs), in `--span-s` spans every `--every-s` seconds after the first 60 s (the patient's paired context, as in
`wavebridge evaluate`), and translated PPG->ECG by the offline pipeline (stream.tools.offline: the worker's windows, its
quality gating and events) with gating on, and once more with it off (`--no-baseline` skips that). A window is
the emitted span of one pipeline window; it is *corrupted* when its quality span (emitted part +- 1 s) touches an
injected span, and *clean* when the record is uncorrupted. Printed per artifact kind:

- flagged: share of corrupted windows withheld (source_unusable) / not judged good;
- kept: share of clean windows published;
- wrong HR: share of windows that publish an `hr_bpm` more than 10 bpm from the true ECG's heart rate over the
  same span (true R-peaks of lead II, operators.processing.rpeaks), gated and ungated.

Then the confidence of every published window (clean runs) against its measured error: R-peak timing error
(median |synth - true| ms of the peaks it reports, 150 ms for a missed or extra peak), Spearman's rho, and a
calibration table (confidence bins: windows, share "right" = every true peak found within 50 ms and no extra
one, mean error). `--fit` also fits operators.processing.quality.CONFIDENCE_COEFS["ppg2ecg"] and ["sr"] on the given
records and prints them (never fit and score on the same records: "ppg2ecg", the classic template's, is fitted on
training patients; "sr", a learned model's, on records it was not trained on, see below); a feature whose weight
comes out with the wrong sign (FIT_SIGNS) is dropped. The `sr` part (PLETH and lead II anti-aliased to 25 Hz, as the
service gets them, super-resolved to 100 Hz) reports the same for *_SR windows against their normalised RMSE; its
fit is made from saved runs (`--json` of `--parts sr --fit` runs, `--sr-rows`) and checked on other saved runs
(`--sr-check`): the served super-resolution is a learned model, so its confidence is fitted on records it never saw.

`--rate-hz 25` runs only the `lowrate` part: `assess` alone on 4 s ECG windows (the pipeline's judged span) at the
super-resolution input's rate, made anti-aliased (`--lowres iir`, as `wavebridge evaluate`) and by taking every k-th
sample (`plain`). Windows whose native-rate span is good are *clean*; per case it prints the share kept (usable),
good and unusable: the clean window, each artifact injected at the low rate, the record re-timed into an AF-like
irregular rhythm (`af`), and white and pink noise alone; then the worst records' clean windows kept.

    python benchmarks/quality_artifacts.py                       # held-out patients, clmt, ~5-10 min on 2 cores
    python benchmarks/quality_artifacts.py --translator classic  # the classic template translator
    python benchmarks/quality_artifacts.py --split train --fit   # fit the confidence model on training patients
    python benchmarks/quality_artifacts.py --rate-hz 25 --records all   # lead II at the 25 Hz SR input, ~5-10 min
    python benchmarks/quality_artifacts.py --rate-hz 25 --dataset challenge   # every ECG lead, held-out records
    python benchmarks/quality_artifacts.py --dataset challenge --parts sr   # *_SR confidence, held-out records
    python benchmarks/quality_artifacts.py --sr-rows bidmc.json --sr-check challenge.json   # fit one, check the other

Not a test: it needs ../shared/data/bidmc (and challenge2015 for `--dataset challenge`).
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

from operators.processing import quality as Q  # noqa: E402
from operators.processing.samples import fill_nonfinite  # noqa: E402
from operators.processing.resample import low_rate_copy  # noqa: E402
from operators.processing.artifacts import ARTIFACTS, inject, pink_noise  # noqa: E402
from operators.state.context import select_context  # noqa: E402
from operators.io.records import Recording, read_recording  # noqa: E402
from operators.processing.rpeaks import detect_rpeaks, heart_rate_bpm  # noqa: E402
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
        if ev.kind == "rpeaks":
            s, e = ev.time_ns, ev.fields["until_ns"]
        elif ev.kind in ("source_unusable", "output_unusable"):
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
    from stream.tools.offline import iter_source_chunks, translate_chunks

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
                       "published": ev.kind == "rpeaks", "flag": ev.fields.get("quality_flag"),
                       "reason": ev.fields.get("reason")}
                if ev.kind == "rpeaks":
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


SR_RATE, SR_TARGET = 25.0, 100.0


def run_record_detectors(name, root, kinds, rng, window_s=4.0):
    """`assess` alone on `window_s` windows of PLETH, II and V (the judged span of a steady pipeline window), each
    artifact over the whole window; "lead_off" flattens II at 0 mV while V keeps recording (one of two leads)."""
    rec = read_recording(root / f"bidmc{name}")  # not every record has lead V
    rows = []
    for sig in [s for s in ("PLETH", "II", "V") if s in rec.signals]:
        fs = float(rec.rates[sig])
        x = rec.signals[sig].astype(np.float64)
        n = int(window_s * fs)
        for i in range(int(CONTEXT_S * fs), len(x) - n, n):
            w = x[i:i + n]
            for kind in kinds:
                y = w if kind == "clean" else inject(kind, w, 0, n, fs, rng)
                q = Q.assess(y, fs, Q.kind_of(sig))
                rows.append({"record": name, "signal": sig, "kind": kind, "cls": q.cls, "reason": q.reason})
            if sig == "II" and "V" in rec.signals:  # lead II off, V on: judged separately
                v = rec.signals["V"].astype(np.float64)[i:i + n]
                qi, qv = Q.assess(np.zeros(n), fs, "ecg"), Q.assess(v, fs, "ecg")
                rows.append({"record": name, "signal": "II", "kind": "lead_off", "cls": qi.cls, "reason": qi.reason})
                rows.append({"record": name, "signal": "V", "kind": "lead_off (other lead)", "cls": qv.cls,
                             "reason": qv.reason})
    return rows


def report_detectors(rows):
    print("\n## Detectors alone (operators.processing.quality.assess on 4 s windows, artifact over the whole window)")
    print("| signal | artifact | windows | unusable | not good | most common reason |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(r["signal"], r["kind"]) for r in rows}, key=lambda k: (k[0], k[1] != "clean", k[1]))
    for sig, kind in keys:
        g = [r for r in rows if r["signal"] == sig and r["kind"] == kind]
        reasons = {}
        for r in g:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        top = max(reasons, key=reasons.get)
        print(f"| {sig} | {kind} | {len(g)} | {sum(r['cls'] == 'unusable' for r in g) / len(g):.1%} | "
              f"{sum(r['cls'] != 'good' for r in g) / len(g):.1%} | {top} ({reasons[top] / len(g):.0%}) |")


def _irregular(x, fs, rng, cv=0.25):
    """`x` (clean ECG) re-timed beat by beat into an irregularly irregular rhythm (atrial fibrillation-like).

    Each beat cycle (0.2 s before its R-peak to 0.2 s before the next) gets a new length, the record's mean RR times
    a log-normal factor (coefficient of variation ~`cv`, 0.3-2 s). Its first 0.65 s (P, QRS, T) stay as recorded;
    the T-P baseline after them is cut short or extended by mirroring it (no stretched waves, no straight lines);
    a cycle shorter than 0.65 s is cut: the next beat arrives during the T wave, as in fast AF."""
    r = detect_rpeaks(x, fs)
    if len(r) < 3:
        return x.copy()
    q, keep, rr_mean = int(round(0.2 * fs)), int(round(0.65 * fs)), float(np.mean(np.diff(r)))
    out = [x[: max(r[0] - q, 0)]]
    for a, b in zip(r[:-1], r[1:]):
        cyc = x[max(a - q, 0): b - q]
        m = int(round(np.clip(rr_mean * np.exp(rng.normal(0.0, cv)), 0.3 * fs, 2.0 * fs)))
        if m > len(cyc) and len(cyc) >= 2:
            base = cyc[keep:] if len(cyc) - keep >= 2 else cyc
            cyc = np.concatenate([cyc, np.pad(base, (0, m - len(cyc)), mode="reflect")[len(base):]])
        out.append(cyc[:m])
    out.append(x[r[-1] - q:])
    return np.concatenate(out)


def run_record_lowrate(label, path, kinds, args, rng):
    """`assess` on ECG windows (BIDMC: lead II; Challenge: every ECG lead) brought to `--rate-hz` (the
    super-resolution input), per `--lowres` kind.

    A window is *clean* when its native-rate span is judged good; each clean window is then judged at the low rate
    as it is (kept = usable), with each artifact injected at the low rate, and re-timed into an AF-like rhythm
    (`_irregular`, the whole record, then the same span). White and pink noise windows of the same length are
    judged too (noise_white, noise_pink: no signal at all)."""
    rec = read_recording(path, None if args.dataset == "challenge" else ["II"])
    rows = []
    for sig in [s for s in rec.signals if Q.kind_of(s) == Q.ECG]:
        fs = float(rec.rates[sig])
        x = rec.signals[sig].astype(np.float64)
        fl, n = args.rate_hz, int(round(args.window_s * args.rate_hz))
        hop = int(round(args.window_s / 2 * fl))
        af = _irregular(fill_nonfinite(x)[0], fs, rng) if "af" in kinds else x
        for how in args.lowres.split(","):
            lo, lo_af = low_rate_copy(x, fs, fl, how), low_rate_copy(af, fs, fl, how)
            for i in range(0, len(lo) - n + 1, hop):
                a = int(round(i * fs / fl))
                if Q.assess(x[a: a + int(round(args.window_s * fs))], fs, "ecg").cls != Q.GOOD:
                    continue
                w = lo[i: i + n]
                cases = [(k, w if k == "clean" else inject(k, w, 0, n, fl, rng)) for k in kinds if k in ARTIFACTS
                         or k == "clean"]
                if "af" in kinds and i + n <= len(lo_af):
                    cases.append(("af", lo_af[i: i + n]))
                if "noise_only" in kinds:
                    cases += [("noise_white", rng.standard_normal(n)), ("noise_pink", pink_noise(n, rng))]
                for kind, y in cases:
                    q = Q.assess(y, fl, "ecg")
                    rows.append({"record": label, "signal": sig, "lowres": how, "kind": kind, "cls": q.cls,
                                 "reason": q.reason})
    print(f"  {label} lowrate", file=sys.stderr)
    return rows


def report_lowrate(rows, rate_hz, window_s, worst=8):
    print(f"\n## ECG ({', '.join(sorted({r['signal'] for r in rows}))}) at {rate_hz:g} Hz ({window_s:g} s windows "
          f"whose native-rate span is good)")
    print("| input | case | windows | usable (kept) | good | unusable | most common reason when unusable |")
    print("|---|---|---|---|---|---|---|")
    for how in sorted({r["lowres"] for r in rows}):
        for kind in dict.fromkeys(r["kind"] for r in rows):
            g = [r for r in rows if r["lowres"] == how and r["kind"] == kind]
            if not g:
                continue
            bad = {}
            for r in g:
                if r["cls"] == Q.UNUSABLE:
                    bad[r["reason"]] = bad.get(r["reason"], 0) + 1
            top = max(bad, key=bad.get) if bad else "-"
            print(f"| {how} | {kind} | {len(g)} | {sum(r['cls'] != Q.UNUSABLE for r in g) / len(g):.1%} | "
                  f"{sum(r['cls'] == Q.GOOD for r in g) / len(g):.1%} | "
                  f"{sum(r['cls'] == Q.UNUSABLE for r in g) / len(g):.1%} | {top} |")
        per = {}
        for r in rows:
            if r["lowres"] == how and r["kind"] == "clean":
                k = per.setdefault(r["record"] if r["signal"] == "II" else f"{r['record']} {r['signal']}", [0, 0])
                k[0] += r["cls"] != Q.UNUSABLE
                k[1] += 1
        ranked = sorted(per.items(), key=lambda kv: kv[1][0] / kv[1][1])
        print(f"\n{how}, clean windows kept per record (worst {worst}): " + ", ".join(
            f"{rec} {k}/{m}" for rec, (k, m) in ranked[:worst]) + f"; records (leads) losing any: "
            f"{sum(k < m for k, m in per.values())} of {len(per)}")


def run_record_sr(name, path, translator, kinds, args, rng):
    """Super-resolution windows (25 -> 100 Hz) of PLETH and lead II (those of the two the record has) with their
    confidence and measured error: normalised RMSE (RMSE / the record's SD of the truth: a window's own SD is ~0
    where the truth is flat) against the full-rate signal resampled to 100 Hz."""
    from operators.processing.resample import decimate_to, resample
    from operators.translator import SR
    from stream.tools.offline import iter_source_chunks, translate_chunks

    rec = read_recording(path, None)
    rows = []
    for sig in [s for s in ("PLETH", "II") if s in rec.signals]:
        fs = float(rec.rates[sig])
        x = fill_nonfinite(rec.signals[sig].astype(np.float64)[int(CONTEXT_S * fs):])[0]
        ref = resample(x, fs, SR_TARGET, method="polyphase")
        lo = decimate_to(x, fs, SR_RATE)
        sd = float(np.std(ref))
        for kind in kinds:
            y = lo.copy()
            if kind not in ("clean", "nan"):
                for a in range(int(5 * SR_RATE), len(y) - int(args.span_s * SR_RATE), int(args.every_s * SR_RATE)):
                    y = inject(kind, y, a, a + int(args.span_s * SR_RATE), SR_RATE, rng)
            r = Recording(path.name, {sig: y.astype(np.float32)}, {sig: SR_RATE}, {sig: ""}, rec.age, rec.sex,
                          {sig: sig})
            outs, _ = translate_chunks(iter_source_chunks(r, sig, 1.0), SR, source_signal=sig, target_rate=SR_TARGET,
                                       translator=translator)
            for o in outs:
                if not o.usable or o.confidence is None:
                    continue
                k = np.round(o.times_ns / 1e7).astype(np.int64)
                k = k[k < len(ref)]
                truth, got = ref[k], np.asarray(o.values[: len(k)], np.float64)
                if len(k) < 10 or sd == 0:
                    continue
                nrmse = float(np.sqrt(np.mean((got - truth) ** 2)) / sd)
                row = {"record": name, "signal": sig, "kind": kind, "confidence": o.confidence, "nrmse": nrmse,
                       "flag": o.quality_flag}
                if args.fit:
                    src = r.signals[sig][slice(*_judged_span(o, r.signals[sig]))]  # the float32 samples the pipeline saw
                    q = Q.assess(src, SR_RATE, Q.kind_of(sig))
                    if Q.confidence("sr", q) != o.confidence:  # not the span the pipeline judged
                        raise RuntimeError(f"{path.name} {sig} at {o.times_ns[0] / 1e9:.2f} s: confidence "
                                           f"{o.confidence} published, {Q.confidence('sr', q)} recomputed")
                    row["features"] = Q.confidence_features(q, False).tolist()
                rows.append(row)
        print(f"  {path.name} sr {sig}", file=sys.stderr)
    return rows


def _judged_span(o, src):
    """Source sample range `[a, b)` of `src` (the whole source at SR_RATE) the pipeline judged for output chunk `o`:
    `stream.pipeline.quality_span` of a window over `src` that emits what `o` covers."""
    from operators.state.windowing import Window
    from stream.pipeline import quality_span

    emit = [int(round(t * SR_RATE)) for t in (o.times_ns[0] / NS, o.times_ns[-1] / NS + 1.0 / SR_TARGET)]
    return quality_span(Window(0, SR_RATE, src, emit_from=emit[0], segment=0, kind="full", emit_to=emit[1]))


def report_sr(rows):
    if len(rows) < 10:
        return
    conf = np.array([r["confidence"] for r in rows])
    err = np.array([r["nrmse"] for r in rows])
    right = err < Q.SR_RIGHT_NRMSE
    rho, p = stats.spearmanr(conf, err)
    print(f"\n## Confidence of published *_SR windows, 25 -> 100 Hz ({len(rows)} windows: PLETH and II, clean and "
          f"corrupted runs)")
    print(f"Spearman rho(confidence, normalised RMSE) = {rho:.3f} (p = {p:.2g}); per signal: " + ", ".join(
        f"{s} {stats.spearmanr(conf[m], err[m])[0]:.3f}" for s in ("PLETH", "II")
        if (m := np.array([r['signal'] == s for r in rows])).sum() > 10))
    _calibration(conf, right, err, "normalised RMSE", f"right (nRMSE < {Q.SR_RIGHT_NRMSE:g})", 1.0)
    for s in ("PLETH", "II"):
        if (m := np.array([r["signal"] == s for r in rows])).sum() > 10:
            print(f"\n{s} only ({m.sum()} windows):")
            _calibration(conf[m], right[m], err[m], "normalised RMSE", "right", 1.0)


def _calibration(conf, right, err, err_name, right_name, scale):
    edges = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0001]
    print(f"| confidence | windows | predicted P(right) | observed {right_name} | mean {err_name} | median {err_name} |")
    print("|---|---|---|---|---|---|")
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf >= lo) & (conf < hi)
        if m.any():
            print(f"| [{lo:.2f}, {min(hi, 1):.2f}) | {m.sum()} | {conf[m].mean():.3f} | {right[m].mean():.3f} | "
                  f"{err[m].mean() * scale:.3g} | {np.median(err[m]) * scale:.3g} |")


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
    _calibration(conf, right, err, "error ms", "right", 1.0)


# Sign each quality feature's weight must have: confidence never rises as the source's quality falls. A feature
# fitted with the other sign (a confound of the training mix, e.g. lead II windows with a high shape grade whose SR
# is never right) is dropped and the model refitted.
FIT_SIGNS = {"score": 1, "shape": 1, "swing": -1, "hf_frac": -1}


def fit(rows, task, target):
    """Logistic regression (Newton's method, small ridge) of `target(row)` on the confidence features, a feature
    with the wrong sign (FIT_SIGNS) dropped at a time, the worst first."""
    pub = [r for r in rows if r.get("gated", True) and r.get("published", True) and "features" in r]
    if len(pub) < 20:
        return
    names = ("intercept",) + Q.CONFIDENCE_FEATURES
    used = np.array([True] + [f not in Q.CONFIDENCE_UNUSED.get(task, ()) for f in Q.CONFIDENCE_FEATURES])
    X = np.array([[1.0] + r["features"] for r in pub])
    y = np.array([float(target(r)) for r in pub])
    while True:
        Xu = X * used  # an unused feature is a zero column: weight 0
        w = np.zeros(X.shape[1])
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-Xu @ w))
            g = Xu.T @ (p - y) + 1e-2 * w
            H = (Xu * (p * (1 - p))[:, None]).T @ Xu + 1e-2 * np.eye(len(w))
            w -= np.linalg.solve(H, g)
        wrong = {i: -w[i] * FIT_SIGNS[f] for i, f in enumerate(names) if f in FIT_SIGNS and used[i]
                 and w[i] * FIT_SIGNS[f] < 0}
        if not wrong:
            break
        i = max(wrong, key=wrong.get)
        print(f"\n{task}: {names[i]} fitted with the wrong sign ({w[i]:.3f}): dropped, refitting")
        used[i] = False
    print(f"\nfitted on {len(pub)} windows, {y.mean():.1%} right: CONFIDENCE_COEFS[{task!r}] = "
          f"({', '.join(f'{v:.3f}' for v in w)})  # {', '.join(names)}")
    return w


def saved_sr_rows(paths: str) -> list[dict]:
    """The sr windows, with their features, of the --json files (comma list) of earlier `--parts sr --fit` runs."""
    rows = []
    for path in paths.split(","):
        got = json.loads(Path(path).read_text()).get("sr")
        if not got or "features" not in got[0]:
            raise SystemExit(f"{path}: no sr windows with features (the --json of a `--parts sr --fit` run)")
        rows += got
    return rows


def refit_sr(args) -> int:
    """--sr-rows: fit the sr confidence on saved windows (e.g. one dataset's held-out records, which the served model
    never saw); --sr-check: score that fit on other saved windows (another dataset's), the estimate of how it holds
    on records it was not fitted on."""
    w = fit(saved_sr_rows(args.sr_rows), "sr", lambda r: r["nrmse"] < Q.SR_RIGHT_NRMSE)
    if w is None:
        print("too few windows to fit", file=sys.stderr)
        return 1
    if args.sr_check:
        check = saved_sr_rows(args.sr_check)
        for r in check:
            r["confidence"] = float(1.0 / (1.0 + np.exp(-(w[0] + np.dot(w[1:], r["features"])))))
        print(f"\nthat fit scored on {args.sr_check}:")
        report_sr(check)
    return 0


def main(argv=None) -> int:
    from models.data import challenge_split, found_dataset, split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="the dataset's folder (default ../shared/data/<dataset>)")
    ap.add_argument("--dataset", choices=("bidmc", "challenge"), default="bidmc",
                    help="challenge: Challenge 2015 records (--split val: held-out), for the lowrate part (every ECG "
                         "lead) or --parts sr (PLETH and lead II)")
    ap.add_argument("--split", choices=("val", "train"), default="val")
    ap.add_argument("--records", default=None, help="comma list of BIDMC numbers, or all (overrides --split)")
    ap.add_argument("--translator", default="clmt")
    ap.add_argument("--kinds", default=",".join(["clean", *ARTIFACTS]))
    ap.add_argument("--span-s", type=float, default=10.0)
    ap.add_argument("--every-s", type=float, default=40.0)
    ap.add_argument("--seconds", type=float, default=None, help="use only the first S seconds of each record")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the ungated runs")
    ap.add_argument("--fit", action="store_true",
                    help="fit the confidence coefficients on these records (and keep each sr window's features for "
                         "--json): score the fit on others")
    ap.add_argument("--parts", default="detectors,ppg2ecg,sr",
                    help="comma list: detectors (assess alone, PLETH/II/V), ppg2ecg (gating + its confidence), sr, "
                         "lowrate (assess alone on lead II at --rate-hz)")
    ap.add_argument("--rate-hz", type=float, default=None,
                    help="judge lead II at this rate (the 25 Hz super-resolution input); implies --parts lowrate")
    ap.add_argument("--lowres", default="iir,plain", help="comma list of how the low-rate copy is made: iir "
                    "(anti-aliased, as `wavebridge evaluate`), plain (every k-th sample)")
    ap.add_argument("--window-s", type=float, default=4.0, help="lowrate window length (s; the pipeline judges 4 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sr-rows", default=None,
                    help="comma list of --json files of earlier `--parts sr --fit` runs: fit the sr confidence on their "
                         "windows instead of running records")
    ap.add_argument("--sr-check", default=None,
                    help="with --sr-rows: --json files whose sr windows the fit is scored on (records it was not fitted on)")
    args = ap.parse_args(argv)
    if args.sr_check and not args.sr_rows:
        ap.error("--sr-check scores the fit of --sr-rows: give both")
    if args.sr_rows:
        return refit_sr(args)
    root = found_dataset(args.dataset, args.data)
    if root is None:
        return 2
    if args.dataset == "challenge":
        if not args.rate_hz and set(args.parts.split(",")) != {"sr"}:
            ap.error("--dataset challenge runs the lowrate part (give --rate-hz) or the sr part (--parts sr)")
        names = challenge_split(root)[0 if args.split == "train" else 1]
        names = args.records.split(",") if args.records else names
    else:
        if args.records == "all":
            args.records = ",".join(f"{i:02d}" for i in range(1, 41))
        names = args.records.split(",") if args.records else split()[0 if args.split == "train" else 1]
    kinds = args.kinds.split(",")
    rng = np.random.default_rng(args.seed)
    parts = ["lowrate"] if args.rate_hz else args.parts.split(",")
    args.rate_hz = args.rate_hz or SR_RATE
    rows, sr_rows, det_rows, low_rows = [], [], [], []
    translator = load_translator(args.translator) if {"ppg2ecg", "sr"} & set(parts) else None
    for name in names:
        if "detectors" in parts:
            det_rows += run_record_detectors(name, root, kinds, rng)
        if "ppg2ecg" in parts:
            rows += run_record(name, root, translator, kinds, args, rng)
        path = root / (name if args.dataset == "challenge" else f"bidmc{name}")
        if "lowrate" in parts:
            low_rows += run_record_lowrate(name, path, kinds + ["af", "noise_only"], args, rng)
        if "sr" in parts:
            sr_rows += run_record_sr(name, path, translator, [k for k in kinds if k in ("clean", "motion", "noise",
                                                                                       "clipping")], args, rng)
    print(f"records {','.join(names)}; translator {args.translator}; artifacts {args.span_s:g} s every "
          f"{args.every_s:g} s; wrong HR = more than {HR_WRONG_BPM:g} bpm off")
    if det_rows:
        report_detectors(det_rows)
    if low_rows:
        report_lowrate(low_rows, args.rate_hz, args.window_s)
    if rows:
        report(rows, kinds)
        report_confidence(rows)
    report_sr(sr_rows)
    if args.fit:
        fit(rows, "ppg2ecg", lambda r: r["right"])
        fit(sr_rows, "sr", lambda r: r["nrmse"] < Q.SR_RIGHT_NRMSE)
    if args.json:
        Path(args.json).write_text(json.dumps({"detectors": det_rows, "ppg2ecg": rows, "sr": sr_rows,
                                               "lowrate": low_rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
