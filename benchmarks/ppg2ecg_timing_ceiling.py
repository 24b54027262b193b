"""Why PPG->ECG waveform Pearson stays far below 0.85 on BIDMC: beat timing, measured.

Part 1, training records: the delay from each R peak to its pulse in the PPG, for four PPG fiducials
(systolic peak, maximum upslope, tangent foot, second-derivative peak; located on the PPG upsampled to
1 kHz). Printed per record: the delay's median, its beat-to-beat robust SD (1.4826 x MAD), the lag-1
autocorrelation, what is left after removing a centred 9-beat running mean (drift a context could in
principle track), and after a least-squares fit on the neighbouring RR intervals (what a model could
predict from the PPG's own rhythm).

Part 2, held-out records (`--split train`: the training records), scored like `wavebridge evaluate` (first 60 s = the patient's context, the rest
scored, Pearson per 8 s window, all windows pooled): the patient's own context beat
(`operators.classic.beat_model_from_context`) drawn at the TRUE R peaks of the scored part, then at
true R peaks plus Gaussian timing errors of a given SD (sharp, and blurred by that SD, the MSE-optimal
drawing under that error), then at the R times the PPG predicts (each pulse's systolic peak or tangent foot
minus the context's median delay to it: the classic baseline's timing, `operators.classic.pulse_times`),
whose error against the true R peaks is also printed (median |error| per record, which counts the delay's
drift away from the context's value; the robust SD does not), and finally at the PPG foot with the delay's drift
known exactly (a running median of the scored part's true delays: a ceiling for any drift tracking, since only
the beat-to-beat jitter is left).

Part 3, training records: what the drift is. In most records the R -> foot delay climbs ~0.3 ms/s and drops
~30 ms (about 4 samples at 125 Hz) every 85-105 s, and the drops coincide with PLETH sample glitches far more
often than chance. That is what a PLETH channel on a slightly fast clock, resynced by skipping samples, would
give: mostly the recording's inter-channel timing, not physiology.

    python benchmarks/ppg2ecg_timing_ceiling.py                 # all parts, ~15 s on 2 cores
    python benchmarks/ppg2ecg_timing_ceiling.py --part 2 --split train   # part 2 on the training records

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
from scipy.ndimage import median_filter, uniform_filter1d  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

from models.data import found_dataset, split  # noqa: E402
from operators.classic import (TIMING_BLUR_S, beat_model_from_context, blur_timing, pulse_delays,  # noqa: E402
                                 pulse_times, render_ecg)
from operators.processing.metrics import pool_windows, windowed_pearson_rmse  # noqa: E402
from operators.io.records import read_recording  # noqa: E402
from operators.processing.rpeaks import detect_ppg_peaks, detect_rpeaks, ppg_foot_times, refine_peak_times  # noqa: E402
from operators.translator import PairedContext  # noqa: E402

CONTEXT_S = 60.0
UP = 8  # 125 Hz -> 1 kHz for the slope fiducials
FIDUCIALS = ("peak", "max_slope", "tangent_foot", "d2_peak")
JITTER_MS = (0, 5, 10, 13, 20)
BLUR_MS = (0, 10, 13, 16)  # blurs tried on the PPG-predicted drawings (TIMING_BLUR_S was chosen on the training records)
SEEDS = 3
DRIFT_BEATS = 9  # the running median that stands for a perfectly tracked drift (part 2's ceiling)
ORACLE_BLUR_MS = (0, 4, 7)
STEP_BEATS, STEP_MS = 6, 15.0  # part 3: a drop of the delay's running median
GLITCH_Z, GLITCH_WINDOW_S = 20.0, 3.0


def robust_sd(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def ppg_fiducials(ppg: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """Per detected PPG beat, the time (s) of each fiducial; NaN where a beat has no clean upstroke. The peak and
    the tangent foot are the service's own (`operators.processing.rpeaks`); the two slope points are found here."""
    peaks = detect_ppg_peaks(ppg, rate)
    out = {"peak": refine_peak_times(ppg, peaks, rate), "tangent_foot": ppg_foot_times(ppg, peaks, rate)}
    x = resample_poly(ppg - np.median(ppg), UP, 1)
    fs = rate * UP
    d1 = np.gradient(x) * fs
    d2 = np.gradient(d1) * fs
    slope, dd = (np.full(len(peaks), np.nan) for _ in range(2))
    for k, p in enumerate(peaks * UP):
        lo = max(0, p - int(0.6 * fs))
        if p - lo < 4:
            continue
        m = lo + int(np.argmin(x[lo:p]))  # the pulse's onset minimum before its peak
        if p - m < 4:
            continue
        s = m + int(np.argmax(d1[m:p]))
        slope[k] = s / fs
        dd[k] = (m + int(np.argmax(d2[m:s + 1]))) / fs
    out |= {"max_slope": slope, "d2_peak": dd}
    return out


def delays(r_t: np.ndarray, p_peak: np.ndarray, fid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each R peak's delay to its pulse's fiducial (the service's pairing, `pulse_delays`) and the RR interval
    before that R; outliers (mismatched beats, > 0.15 s from the median) dropped."""
    i, d = pulse_delays(r_t, p_peak, fid)
    rr = np.concatenate([[np.nan], np.diff(r_t)])[i]
    good = np.isfinite(d) & np.isfinite(rr)
    good &= np.abs(d - np.nanmedian(d[good])) < 0.15
    return d[good], rr[good]


def delay_stats(d: np.ndarray, rr: np.ndarray) -> dict[str, float]:
    dc = d - d.mean()
    ac1 = float(np.dot(dc[:-1], dc[1:]) / np.dot(dc, dc)) if len(d) > 2 and np.dot(dc, dc) > 0 else float("nan")
    drift = uniform_filter1d(d, 9, mode="nearest")
    a = np.column_stack([np.ones_like(rr), rr, np.concatenate([rr[1:], rr[-1:]])])  # RR before and after
    coef, *_ = np.linalg.lstsq(a, d, rcond=None)
    return {"median_ms": 1e3 * float(np.median(d)), "sd_ms": 1e3 * robust_sd(d), "lag1": ac1,
            "sd_no_drift_ms": 1e3 * robust_sd(d - drift), "sd_after_rr_ms": 1e3 * robust_sd(d - a @ coef), "beats": len(d)}


def part1(root: Path, names: list[str]) -> None:
    print("Part 1: R peak -> PPG fiducial delay on the training records (ms; robust SDs)")
    print(f"{'record':<7} {'fiducial':<13} {'beats':>5} {'median':>7} {'SD':>6} {'lag-1':>6} {'SD-drift':>9} {'SD-RR fit':>9}")
    pooled: dict[str, list[dict]] = {f: [] for f in FIDUCIALS}
    for name in names:
        rec = read_recording(root / f"bidmc{name}", signals=["II", "PLETH"])
        rate = rec.rates["II"]
        ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
        r_t = refine_peak_times(ecg, detect_rpeaks(ecg, rate), rate)
        fids = ppg_fiducials(ppg, rate)
        for f in FIDUCIALS:
            d, rr = delays(r_t, fids["peak"], fids[f])
            if len(d) < 20:
                print(f"{name:<7} {f:<13} too few matched beats ({len(d)})")
                continue
            s = delay_stats(d, rr)
            pooled[f].append(s)
            print(f"{name:<7} {f:<13} {s['beats']:>5} {s['median_ms']:>7.0f} {s['sd_ms']:>6.1f} {s['lag1']:>6.2f} "
                  f"{s['sd_no_drift_ms']:>9.1f} {s['sd_after_rr_ms']:>9.1f}")
    print("median over records:")
    for f in FIDUCIALS:
        rows = pooled[f]
        if rows:
            med = {k: float(np.median([r[k] for r in rows])) for k in ("sd_ms", "lag1", "sd_no_drift_ms", "sd_after_rr_ms")}
            print(f"  {f:<13} SD {med['sd_ms']:.1f}  lag-1 {med['lag1']:.2f}  without drift {med['sd_no_drift_ms']:.1f}  "
                  f"after RR fit {med['sd_after_rr_ms']:.1f}  ({len(rows)} records)")


def _predicted(fid: str, blur_ms: int) -> str:
    return f"R from PPG {fid}" + (f" blurred {blur_ms} ms" if blur_ms else "")


def _oracle(blur_ms: int) -> str:
    return "R from PPG foot, drift known" + (f" blurred {blur_ms} ms" if blur_ms else "")


def part2(root: Path, names: list[str], split_name: str) -> None:
    print(f"\nPart 2: own context beat drawn at given R times, {split_name} records (pooled Pearson per 8 s window; "
          f"jitter averaged over {SEEDS} seeds)")
    cases = [f"true R + {j} ms{' blurred' if b else ''}" for j in JITTER_MS for b in ((False, True) if j else (False,))]
    predicted = [_predicted(fid, b) for fid in ("peak", "foot") for b in BLUR_MS]
    cases += predicted + [_oracle(b) for b in ORACLE_BLUR_MS]
    scores: dict[str, list] = {c: [] for c in cases}
    errors: dict[str, list] = {"peak": [], "foot": []}  # per record (robust SD, median |error|), ms
    rng = np.random.default_rng(0)
    print(f"{'record':<7} {'|error| ms peak/foot':>21} " + " ".join(f"{c:>12}" for c in ("true R", "+13 ms", "+13 ms blur",
                                                                                        "PPG peak", "PPG foot")))
    for name in names:
        rec = read_recording(root / f"bidmc{name}", signals=["II", "PLETH"])
        rate = rec.rates["II"]
        ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
        c = int(CONTEXT_S * rate)
        ctx = PairedContext(ecg[:c], ppg[:c], rate)
        model = beat_model_from_context(ctx)
        if model is None:
            print(f"{name:<7} no usable context beat")
            continue
        ref = ecg[c:]
        n = len(ref)
        r_t = refine_peak_times(ref, detect_rpeaks(ref, rate), rate)
        draw = lambda t, sd_s=0.0: blur_timing(render_ecg(t, model, n, rate), rate, sd_s) + model.level  # noqa: E731
        row = {}
        for j in JITTER_MS:
            for blur in ((False, True) if j else (False,)):
                key = f"true R + {j} ms{' blurred' if blur else ''}"
                ws = [windowed_pearson_rmse(ref, draw(r_t + (rng.normal(0, j / 1e3, len(r_t)) if j else 0.0),
                                                      j / 1e3 if blur else 0.0), rate) for _ in range(SEEDS if j else 1)]
                scores[key] += ws
                row[key] = float(np.mean([w.mean_pearson for w in ws]))
        for fid in ("peak", "foot"):
            delay = beat_model_from_context(ctx, fid).delay_s  # the same beat, the delay to this fiducial
            p_t = pulse_times(ppg[c:], rate, fid)[1] - delay
            for blur in BLUR_MS:
                key = _predicted(fid, blur)
                w = windowed_pearson_rmse(ref, draw(p_t, blur / 1e3), rate)
                scores[key].append(w)
                row[key] = w.mean_pearson
            near = np.abs(p_t[:, None] - r_t[None, :]).argmin(axis=1) if len(r_t) else np.zeros(0, int)
            e = p_t - r_t[near] if len(r_t) else np.zeros(0)
            e = e[np.abs(e) < 0.15]  # a PPG beat that matches no R peak is a detection error, not jitter
            errors[fid].append((robust_sd(e) * 1e3, float(np.median(np.abs(e))) * 1e3))
        # The delay's drift known exactly (a ceiling, not a method: it reads the real ECG of the scored part).
        p_s, f_s = pulse_times(ppg[c:], rate, "foot")
        i, d = pulse_delays(r_t, p_s, f_s)
        if len(d) >= DRIFT_BEATS:
            drift = median_filter(d, DRIFT_BEATS, mode="nearest")
            o_t = f_s - np.interp(f_s, r_t[i] + drift, drift)
            for blur in ORACLE_BLUR_MS:
                scores[_oracle(blur)].append(windowed_pearson_rmse(ref, draw(o_t, blur / 1e3), rate))
        print(f"{name:<7} {errors['peak'][-1][1]:>10.1f} / {errors['foot'][-1][1]:<8.1f} " + " ".join(f"{row[k]:>12.3f}" for k in
              ("true R + 0 ms", "true R + 13 ms", "true R + 13 ms blurred", "R from PPG peak", "R from PPG foot")))
    print(f"pooled over records (the service blurs by TIMING_BLUR_S = {TIMING_BLUR_S * 1e3:g} ms):")
    for c in cases:
        if scores[c]:
            print(f"  {c:<42} Pearson {pool_windows(scores[c]).mean_pearson:.3f}")
    print(f"  ('drift known': the delay of each beat is the {DRIFT_BEATS}-beat running median of the true R -> foot "
          "delays of the scored part, so only beat-to-beat jitter is left)")
    for fid, e in errors.items():
        sd, mae = np.array(e).T
        print(f"  R from PPG {fid} vs true R peaks: median |error| {np.median(mae):.1f} ms (per record {mae.min():.1f}-"
              f"{mae.max():.1f}; it includes drift away from the context's delay), robust SD {np.median(sd):.1f} ms")


def plethysmogram_glitches(ppg: np.ndarray, rate: float) -> np.ndarray:
    """Times (s) where a PPG sample departs from the cubic through its four neighbours by more than GLITCH_Z
    times the median departure. A smooth pulse wave has none; skipped samples and artefacts make them."""
    x = np.asarray(ppg, dtype=np.float64)
    e = np.abs(x[2:-2] - (-x[:-4] + 4 * x[1:-3] + 4 * x[3:-1] - x[4:]) / 6.0)
    return (np.flatnonzero(e > GLITCH_Z * (np.median(e) + 1e-12)) + 2) / rate


def delay_steps(t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices of abrupt drops in the delay: the median of the STEP_BEATS delays after minus that of the
    STEP_BEATS before is below -STEP_MS, largest first, at least 20 s apart."""
    k = STEP_BEATS
    step = np.array([np.median(d[j:j + k]) - np.median(d[j - k:j]) for j in range(k, len(d) - k)])
    found: list[int] = []
    for j in np.argsort(step):
        if step[j] >= -STEP_MS / 1e3:
            break
        if all(abs(t[j + k] - t[x]) > 20.0 for x in found):
            found.append(j + k)
    return np.sort(np.asarray(found, dtype=int))


def part3(root: Path, names: list[str]) -> None:
    print("\nPart 3: the delay's drift on the training records. Abrupt drops of the R -> foot delay (a median over "
          f"{STEP_BEATS} beats falls by > {STEP_MS:g} ms), the delay's slope between drops, and how often a drop has "
          f"a PLETH sample glitch within +-{GLITCH_WINDOW_S:g} s (chance: the same for every whole second)")
    print(f"{'record':<7} {'drops':>5} {'size ms':>8} {'every s':>8} {'slope ms/s':>10} {'glitch':>7} {'chance':>7}")
    sizes, slopes, gaps, hits, chance = [], [], [], [], []
    for name in names:
        rec = read_recording(root / f"bidmc{name}", signals=["II", "PLETH"])
        rate = rec.rates["II"]
        ecg, ppg = rec.signals["II"].astype(np.float64), rec.signals["PLETH"].astype(np.float64)
        r_t = refine_peak_times(ecg, detect_rpeaks(ecg, rate), rate)
        i, d = pulse_delays(r_t, *pulse_times(ppg, rate, "foot"))
        t = r_t[i]
        drops = delay_steps(t, d)
        size = [1e3 * (np.median(d[j:j + STEP_BEATS]) - np.median(d[j - STEP_BEATS:j])) for j in drops]
        edges = [0, *drops, len(d)]
        slope = [1e3 * np.polyfit(t[a + 2:b - 2], d[a + 2:b - 2], 1)[0] for a, b in zip(edges[:-1], edges[1:])
                 if b - a > 30 and t[b - 1] - t[a] > 30]
        glitches = plethysmogram_glitches(ppg, rate)
        near = lambda q: bool(len(glitches)) and bool(np.min(np.abs(glitches - q)) <= GLITCH_WINDOW_S)  # noqa: E731
        hit = [near(0.5 * (t[j - 1] + t[j])) for j in drops]
        ch = float(np.mean([near(q) for q in np.arange(0.0, len(ppg) / rate)]))
        sizes += size
        slopes += slope
        gaps += list(np.diff(t[drops]))
        hits += hit
        chance.append(ch)
        med = lambda v: float(np.median(v)) if len(v) else float("nan")  # noqa: E731
        print(f"{name:<7} {len(drops):>5} {med(size):>8.1f} {med(np.diff(t[drops])):>8.0f} {med(slope):>10.2f} "
              f"{np.mean(hit) if hit else float('nan'):>7.2f} {ch:>7.2f}")
    print(f"all records: {len(sizes)} drops of median {np.median(sizes):.1f} ms, median {np.median(gaps):.0f} s apart; "
          f"slope between drops median {np.median(slopes):.2f} ms/s (IQR {np.percentile(slopes, 25):.2f}-"
          f"{np.percentile(slopes, 75):.2f}); drops with a PLETH glitch {np.mean(hits):.2f} (chance {np.mean(chance):.2f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="BIDMC folder (default ../shared/data/bidmc)")
    ap.add_argument("--part", choices=("1", "2", "3", "all"), default="all")
    ap.add_argument("--split", choices=("val", "train"), default="val", help="records for part 2 (part 1: training)")
    args = ap.parse_args(argv)
    root = found_dataset("bidmc", args.data)
    if root is None:
        return 2
    train, val = split()
    if args.part in ("1", "all"):
        part1(root, train)
    if args.part in ("2", "all"):
        part2(root, val if args.split == "val" else train, "held-out" if args.split == "val" else "training")
    if args.part in ("3", "all"):
        part3(root, train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
