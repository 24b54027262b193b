"""Metrics: one-to-one peak matching, F1 aggregation, HR error, windowed Pearson/RMSE."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.metrics import (PeakScore, hr_mae, match_peak_pairs, match_peaks, peak_f1, pool_windows,
                               summarize_scores, sum_scores, windowed_aligned_pearson_rmse, windowed_hr,
                               windowed_pearson_rmse)


def test_one_to_one_matching_nearest_first():
    # two test peaks near one reference: only one may count
    assert match_peaks([100], [98, 101], tol_samples=5) == (1, 1, 0)
    # the nearest pair wins even though an earlier reference is also within tolerance
    r, t = match_peak_pairs([10, 16], [14], tol_samples=5)
    assert (r.tolist(), t.tolist()) == ([1], [0])
    r, t = match_peak_pairs([10, 16], [14, 19], tol_samples=4)  # 16-14 (2) first; 10-19 too far
    assert (r.tolist(), t.tolist()) == ([1], [0])
    assert match_peaks([], [1, 2], 3) == (0, 2, 0)
    assert match_peaks([1, 2], [], 3) == (0, 0, 2)
    assert match_peaks([0, 100], [5, 95], tol_samples=4) == (0, 2, 2)  # outside tolerance


def test_matching_random_against_bruteforce():
    rng = np.random.default_rng(3)
    for _ in range(50):
        ref = np.sort(rng.choice(1000, 30, replace=False))
        test = np.sort(rng.choice(1000, 25, replace=False))
        mr, mt = match_peak_pairs(ref, test, 7)
        assert len(set(mr)) == len(mr) and len(set(mt)) == len(mt)
        assert np.all(np.abs(ref[mr] - test[mt]) <= 7)
        # maximality: no unmatched pair left within tolerance
        um_r = np.setdiff1d(np.arange(len(ref)), mr)
        um_t = np.setdiff1d(np.arange(len(test)), mt)
        if len(um_r) and len(um_t):
            assert np.min(np.abs(ref[um_r][:, None] - test[um_t][None, :])) > 7


def test_peak_f1_and_aggregation():
    s = peak_f1([100, 200, 300, 400], [101, 205, 330], rate_hz=100, tol_s=0.05)
    assert (s.tp, s.fp, s.fn) == (2, 1, 2)
    assert s.precision == pytest.approx(2 / 3) and s.recall == 0.5 and s.f1 == pytest.approx(4 / 7)
    empty = peak_f1([], [], 100, 0.05)
    assert empty.f1 == 1.0
    a, b = PeakScore.from_counts(9, 1, 0), PeakScore.from_counts(0, 0, 10)
    overall = sum_scores([a, b])
    # micro average (from counts), not the mean of per-record F1s (0.947 and 0)
    assert overall.f1 == pytest.approx(18 / 29) and (a + b) == overall
    summary = summarize_scores({"r1": a, "r2": b})
    assert summary["overall"] == overall and summary["r1"] is a


def test_hr_windows_and_mae():
    rate = 100.0
    ref = np.arange(0, 3200, 75)  # 80 bpm
    test = np.arange(0, 3200, 100)  # 60 bpm
    hr = windowed_hr(ref, rate, 3200, 8.0)
    assert len(hr) == 4 and np.allclose(hr, 80.0)
    assert hr_mae(ref, test, rate, 8.0, n_samples=3200) == pytest.approx(20.0)
    assert hr_mae(ref, ref, rate) == 0.0
    assert np.isnan(hr_mae([], [], rate))


def test_windowed_pearson_rmse_skips_a_bad_reference_and_scores_a_bad_prediction_as_zero():
    """A prediction that gives up on a window (flat, NaN) scores r = 0 there: skipping it raised that method's mean
    and compared methods over different windows. Only a flat or non-finite reference leaves a window out."""
    rate = 50.0
    t = np.arange(int(rate * 40)) / rate
    ref = np.sin(2 * np.pi * 1.25 * t)  # whole cycles per 8 s window
    test = 2 * ref + 1.0
    test[400:800] = 0.0  # window 1: flat prediction
    test[850] = np.nan  # window 2: non-finite prediction
    ref = ref.copy()
    ref[1600:2000] = 0.25  # window 4: flat reference
    s = windowed_pearson_rmse(ref, test, rate, 8.0)
    assert s.n_windows == 5 and s.n_skipped == 1
    assert list(s.starts) == [0, 400, 800, 1200]
    np.testing.assert_allclose(s.pearson, [1.0, 0.0, 0.0, 1.0])
    assert np.isnan(s.rmse[2]) and np.all(s.rmse[[0, 1, 3]] > 0.5) and np.isfinite(s.mean_rmse)
    inv = windowed_pearson_rmse(ref[:1600], -ref[:1600], rate, 8.0)
    np.testing.assert_allclose(inv.pearson, -1.0)
    np.testing.assert_allclose(inv.rmse, np.sqrt(np.mean((2 * ref[:400]) ** 2)), rtol=1e-6)
    pooled = pool_windows([s, inv])
    assert pooled.n_windows == 9 and pooled.n_skipped == 1 and len(pooled.pearson) == 8
    with pytest.raises(ValueError):
        windowed_pearson_rmse(ref, ref[:-1], rate)
    short = windowed_pearson_rmse(ref[:100], ref[:100], rate, 8.0)  # shorter than one window
    assert short.n_windows == 1 and short.pearson[0] == pytest.approx(1.0)


def test_aligned_pearson_finds_a_shift_within_the_limit_only():
    rate = 100.0
    t = np.arange(3200) / rate
    rng = np.random.default_rng(0)
    ref = np.sin(2 * np.pi * 1.3 * t) ** 9 + 0.05 * rng.standard_normal(len(t))
    late = np.roll(ref, 10)  # 100 ms late
    raw, al = windowed_pearson_rmse(ref, late, rate), windowed_aligned_pearson_rmse(ref, late, rate, 0.15)
    assert raw.mean_pearson < 0.5 and al.mean_pearson > 0.99 and al.mean_rmse < raw.mean_rmse
    assert np.array_equal(al.starts, raw.starts)  # the same windows, shifted test only
    # a shift beyond the limit is not found, and never scores below the unshifted window
    far = windowed_aligned_pearson_rmse(ref, np.roll(ref, 30), rate, 0.15)
    assert far.mean_pearson < 0.9 and np.all(far.pearson >= windowed_pearson_rmse(ref, np.roll(ref, 30), rate).pearson)
    bad = ref.copy()
    bad[50] = np.nan  # a bad reference window is skipped alike
    assert windowed_aligned_pearson_rmse(bad, late, rate).n_skipped == 1
