"""Evaluation metrics: beat detection F1, heart-rate error, per-window waveform agreement.

Aggregation rule for "per record and overall": overall F1 comes from summed tp/fp/fn
(`sum_scores`), never from averaging per-record F1s; per-window Pearson/RMSE are pooled over all
windows of all records (`pool_windows`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

__all__ = [
    "match_peak_pairs", "match_peaks", "PeakScore", "peak_f1", "sum_scores", "summarize_scores",
    "windowed_hr", "hr_mae", "WindowScores", "windowed_pearson_rmse", "windowed_aligned_pearson_rmse", "pool_windows",
]


def match_peak_pairs(ref, test, tol_samples: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching: index pairs (into ref, into test) with |ref - test| <= tol.

    Candidate pairs are taken nearest first (ties: earlier reference first); each reference and
    each test peak is used at most once.
    """
    r = np.asarray(ref, dtype=np.float64).ravel()
    t = np.asarray(test, dtype=np.float64).ravel()
    if len(r) == 0 or len(t) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order_t = np.argsort(t, kind="stable")
    ts = t[order_t]
    lo = np.searchsorted(ts, r - tol_samples, side="left")
    hi = np.searchsorted(ts, r + tol_samples, side="right")
    counts = hi - lo
    ri = np.repeat(np.arange(len(r)), counts)
    if len(ri) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    offs = np.arange(len(ri)) - np.repeat(np.cumsum(counts) - counts, counts)
    tj = order_t[np.repeat(lo, counts) + offs]
    dist = np.abs(r[ri] - t[tj])
    order = np.lexsort((tj, ri, dist))
    used_r = np.zeros(len(r), bool)
    used_t = np.zeros(len(t), bool)
    out_r, out_t = [], []
    for k in order:
        a, b = ri[k], tj[k]
        if not used_r[a] and not used_t[b]:
            used_r[a] = used_t[b] = True
            out_r.append(a)
            out_t.append(b)
    return np.asarray(out_r, np.int64), np.asarray(out_t, np.int64)


def match_peaks(ref, test, tol_samples: float) -> tuple[int, int, int]:
    """(tp, fp, fn) under one-to-one nearest-first matching within `tol_samples`.

    Parameters
    ----------
    ref, test : reference and detected peak positions (samples, any order).
    tol_samples : largest |ref - test| that counts as a match (samples).
    """
    mr, _ = match_peak_pairs(ref, test, tol_samples)
    tp = len(mr)
    return tp, len(np.ravel(test)) - tp, len(np.ravel(ref)) - tp


@dataclass(frozen=True)
class PeakScore:
    """Beat-detection counts and the precision, recall and F1 they give (add two to pool their counts)."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int) -> "PeakScore":
        """Score from true positive, false positive and false negative counts."""
        # Empty reference and empty prediction agree perfectly; otherwise missing terms score 0.
        precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
        recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
        return cls(precision, recall, f1, int(tp), int(fp), int(fn))

    def __add__(self, other: "PeakScore") -> "PeakScore":
        return PeakScore.from_counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def peak_f1(ref, test, rate_hz: float, tol_s: float) -> PeakScore:
    """Beat-detection precision/recall/F1 with a tolerance of `tol_s` seconds (e.g. 0.05, 0.15).

    Parameters
    ----------
    ref, test : reference and detected peak sample indices.
    rate_hz : their sample rate (Hz).
    tol_s : match tolerance (s).
    """
    return PeakScore.from_counts(*match_peaks(ref, test, tol_s * float(rate_hz)))


def sum_scores(scores: Iterable[PeakScore]) -> PeakScore:
    """Overall score from summed counts (micro-average)."""
    tp = fp = fn = 0
    for s in scores:
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    return PeakScore.from_counts(tp, fp, fn)


def summarize_scores(per_record: Mapping[str, PeakScore]) -> dict[str, PeakScore]:
    """Per-record scores plus an "overall" entry from summed tp/fp/fn."""
    out = dict(per_record)
    out["overall"] = sum_scores(per_record.values())
    return out


def windowed_hr(peaks, rate_hz: float, n_samples: int, window_s: float = 8.0) -> np.ndarray:
    """HR (bpm) per consecutive non-overlapping window: 60 / mean RR of the beats inside; NaN
    where a window holds fewer than 2 beats."""
    p = np.sort(np.asarray(peaks, dtype=np.float64))
    w = max(1, int(round(window_s * rate_hz)))
    n_win = max(1, int(n_samples // w))
    out = np.full(n_win, np.nan)
    for k in range(n_win):
        inside = p[(p >= k * w) & (p < (k + 1) * w)]
        if len(inside) >= 2:
            out[k] = 60.0 * float(rate_hz) * (len(inside) - 1) / (inside[-1] - inside[0])
    return out


def hr_mae(ref_peaks, test_peaks, rate_hz: float, window_s: float = 8.0, n_samples: int | None = None) -> float:
    """Mean absolute HR difference (bpm) over `window_s` windows where both sides have >= 2 beats.

    Parameters
    ----------
    ref_peaks, test_peaks : beat sample indices.
    rate_hz : their sample rate (Hz).
    window_s : window length (s).
    n_samples : signal length (samples); defaults to just past the last peak of either side.

    Returns
    -------
    Mean |HR difference| in beats per minute; NaN when no window qualifies.
    """
    if n_samples is None:
        last = [np.max(a) for a in (np.ravel(ref_peaks), np.ravel(test_peaks)) if len(a)]
        n_samples = int(max(last)) + 1 if last else 0
    if n_samples <= 0:
        return float("nan")
    a = windowed_hr(ref_peaks, rate_hz, n_samples, window_s)
    b = windowed_hr(test_peaks, rate_hz, n_samples, window_s)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.mean(np.abs(a[ok] - b[ok]))) if ok.any() else float("nan")


@dataclass(frozen=True)
class WindowScores:
    """Per-window waveform agreement (`windowed_pearson_rmse`); windows that could not be scored are only counted."""

    pearson: np.ndarray  # per scored window
    rmse: np.ndarray  # per scored window, in the signals' units (NaN where the prediction was not finite)
    starts: np.ndarray  # start sample index of each scored window
    n_windows: int  # windows considered
    n_skipped: int  # windows left out: the reference flat or non-finite

    @property
    def mean_pearson(self) -> float:
        """Mean Pearson r over the scored windows (NaN if none)."""
        return float(np.mean(self.pearson)) if len(self.pearson) else float("nan")

    @property
    def mean_rmse(self) -> float:
        """Mean RMSE over the scored windows with a finite prediction (NaN if none)."""
        ok = np.isfinite(self.rmse)
        return float(np.mean(self.rmse[ok])) if ok.any() else float("nan")


def _flat(w: np.ndarray) -> bool:
    return float(np.ptp(w)) <= 1e-9 * max(1.0, float(np.max(np.abs(w))))


def windowed_pearson_rmse(ref, test, rate_hz: float, window_s: float = 8.0) -> WindowScores:
    """Pearson r and RMSE per consecutive non-overlapping `window_s` window.

    A trailing partial window is ignored unless the whole signal is shorter than one window (then
    it is the only window). Windows where the reference is flat or has a non-finite sample are
    skipped and counted in `n_skipped`. A flat or non-finite prediction is scored, as r = 0 (and its
    RMSE, where finite): skipping it would let a method that gives up on hard windows raise its mean
    and compare methods over different windows.

    Parameters
    ----------
    ref, test : reference and predicted signals, same length, same rate.
    rate_hz : their sample rate (Hz).
    window_s : window length (s).

    Raises
    ------
    ValueError : the lengths differ.
    """
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"ref and test lengths differ ({len(a)} vs {len(b)}); resample first")
    w = max(2, int(round(window_s * rate_hz)))
    starts = list(range(0, len(a) - w + 1, w)) if len(a) >= w else ([0] if len(a) >= 2 else [])
    pr, rm, st = [], [], []
    skipped = 0
    for s in starts:
        x, y = a[s:s + w], b[s:s + w]
        if not np.all(np.isfinite(x)) or _flat(x):
            skipped += 1
            continue
        if not np.all(np.isfinite(y)):
            pr.append(0.0)
            rm.append(float("nan"))
        elif _flat(y):
            pr.append(0.0)
            rm.append(float(np.sqrt(np.mean((x - y) ** 2))))
        else:
            xc, yc = x - x.mean(), y - y.mean()
            pr.append(float(np.dot(xc, yc) / np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))))
            rm.append(float(np.sqrt(np.mean((x - y) ** 2))))
        st.append(s)
    return WindowScores(np.asarray(pr), np.asarray(rm), np.asarray(st, np.int64), len(starts), skipped)


def windowed_aligned_pearson_rmse(ref, test, rate_hz: float, max_shift_s: float = 0.15,
                                  window_s: float = 8.0) -> WindowScores:
    """`windowed_pearson_rmse` after the best shift of `test` within +-`max_shift_s` per window.

    The windows scored and skipped are the same as `windowed_pearson_rmse`'s; in each, `test` is read from
    `shift` samples later for every shift, on the part of the window where that stays inside the signal (a
    window at a record's edge loses at most `max_shift_s` of its length), and the Pearson r of the best shift
    (with the RMSE there) is kept. This is the figure comparable with PPG->ECG results published on windows
    aligned beforehand; the unshifted one is what a bed gets.
    """
    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    base = windowed_pearson_rmse(a, b, rate_hz, window_s)
    k = int(round(max_shift_s * float(rate_hz)))
    w = min(len(a), max(2, int(round(window_s * rate_hz))))
    pr, rm = base.pearson.copy(), base.rmse.copy()
    for i, s in enumerate(base.starts):
        if not np.all(np.isfinite(b[s:s + w])):
            continue  # a non-finite prediction keeps its unshifted score (r = 0)
        for shift in range(-k, k + 1):
            lo, hi = max(s, -shift), min(s + w, len(b) - shift)  # ref samples whose shifted test exists
            if hi - lo < w - k or shift == 0:
                continue
            x, y = a[lo:hi], b[lo + shift:hi + shift]
            if not np.all(np.isfinite(y)):
                continue
            xc, yc = x - x.mean(), y - y.mean()
            den = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
            r = float(np.dot(xc, yc) / den) if den > 0 else 0.0
            if r > pr[i]:
                pr[i], rm[i] = r, float(np.sqrt(np.mean((x - y) ** 2)))
    return WindowScores(pr, rm, base.starts, base.n_windows, base.n_skipped)


def pool_windows(scores: Iterable[WindowScores]) -> WindowScores:
    """All records' windows pooled (for overall mean/median); `starts` are per-record indices."""
    scores = list(scores)
    if not scores:
        return WindowScores(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), 0, 0)
    return WindowScores(
        np.concatenate([s.pearson for s in scores]),
        np.concatenate([s.rmse for s in scores]),
        np.concatenate([s.starts for s in scores]),
        sum(s.n_windows for s in scores),
        sum(s.n_skipped for s in scores),
    )
