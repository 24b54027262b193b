"""operators.processing.samples: the one NaN/inf repair, fit-to-length, timestamp grid, runs and median."""
from fractions import Fraction

import numpy as np
import pytest

from operators.processing.samples import fill_nonfinite, fit_length, grid_ns, median, period_ns, segment_index, true_runs


def test_fill_nonfinite_interpolates_and_counts():
    x = np.array([np.nan, 1.0, np.nan, 3.0, np.inf, -np.inf, 9.0, np.nan])
    y, n = fill_nonfinite(x)
    np.testing.assert_allclose(y, [1, 1, 2, 3, 5, 7, 9, 9])
    assert n == 5
    assert np.isnan(x[0])  # input untouched
    y, n = fill_nonfinite(np.array([0.0, np.nan, np.nan, np.nan, 4.0, np.nan, 6.0]), max_run=2)
    assert n == 1 and np.isnan(y[1:4]).all() and y[5] == 5.0
    y, n = fill_nonfinite(np.full(4, np.nan))
    assert n == 4 and np.all(y == 0)
    y, n = fill_nonfinite(np.arange(3.0))
    assert n == 0


def test_fill_nonfinite_keeps_float32_and_interpolates_in_float64():
    x = np.array([1.0, np.nan, 2.0], dtype=np.float32)
    y, n = fill_nonfinite(x)
    assert y.dtype == np.float32 and n == 1 and y[1] == np.float32(1.5)
    assert fill_nonfinite(np.array([1, 2, 3]))[0].dtype == np.float64  # integers come back as float


def test_true_runs():
    starts, ends = true_runs(np.array([True, True, False, True, False, False, True]))
    assert starts.tolist() == [0, 3, 6] and ends.tolist() == [2, 4, 7]
    assert [len(a) for a in true_runs(np.zeros(3, bool))] == [0, 0]


def test_true_runs_match_a_scan_of_random_masks():
    rng = np.random.default_rng(5)
    for n in [0, 1, 2, 3, 10, 257]:
        for p in (0.1, 0.5, 0.9):
            mask = rng.random(n) < p
            want, k = [], 0
            while k < n:
                if mask[k]:
                    e = k
                    while e < n and mask[e]:
                        e += 1
                    want.append((k, e))
                    k = e
                else:
                    k += 1
            starts, ends = true_runs(mask)
            assert list(zip(starts.tolist(), ends.tolist())) == want
            assert starts.dtype == ends.dtype == np.intp


def test_fit_length_cuts_or_holds_the_last_value():
    y = np.arange(5, dtype=np.float32)
    assert fit_length(y, 3).tolist() == [0, 1, 2]
    out = fit_length(y, 7)
    assert out.dtype == np.float32 and out.tolist() == [0, 1, 2, 3, 4, 4, 4]
    assert fit_length(np.zeros(0), 2).tolist() == [0.0, 0.0]
    assert len(fit_length(y, 0)) == 0


def test_grid_is_exact_and_rounds_ties_up():
    assert period_ns(360.0) == Fraction(25_000_000, 9)
    # 1024 Hz: a period of 976562.5 ns, so odd indices are ties
    np.testing.assert_array_equal(grid_ns(7, 1024.0, [0, 1, 2, 3]), [7, 7 + 976563, 7 + 1953125, 7 + 2929688])
    # no drift after a day at 360 Hz (float steps of 1e9/360 would)
    k = 360 * 86_400
    assert int(grid_ns(0, 360.0, k)) == 86_400 * 10**9
    assert grid_ns(0, 125.0, np.arange(3).reshape(1, 3)).shape == (1, 3)


def test_grid_survives_indices_beyond_int64_products():
    k = 2**40
    assert int(grid_ns(0, 360.0, [k])[0]) == (2 * k * 25_000_000 + 9) // 18


def test_grid_scalar_path_matches_the_array_path():
    rng = np.random.default_rng(3)
    for rate in (125.0, 360.0, 1024.0, 62.5, 33.3):
        for k in rng.integers(-10**9, 10**10, size=50).tolist() + [2**33]:  # 2**33: the exact Python-int branch
            origin = 1_700_000_000_000_000_000
            assert grid_ns(origin, rate, k) == grid_ns(origin, rate, [k])[0] == grid_ns(origin, rate, np.int64(k))


def test_segment_index_keeps_only_spans_wholly_inside():
    """A beat too near either end has no row: a row that wrapped to the other end or ran past it would mix a
    piece of another beat into a template."""
    idx = segment_index(np.array([0, 2, 5, 9, 7]), 2, 3, 10)
    assert idx.dtype == np.int64
    assert idx.tolist() == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [5, 6, 7, 8, 9]]
    assert segment_index(np.array([], dtype=np.int64), 2, 3, 10).shape == (0, 5)
    assert segment_index(np.array([1, 8]), 2, 3, 10).shape == (0, 5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf and NaN: numpy warns as the helper does
def test_median_is_numpys_bit_for_bit():
    """Odd and even lengths, ties, signed zeros, infinities, NaN anywhere, other dtypes and shapes (numpy's path)."""
    rng = np.random.default_rng(7)
    cases = [rng.standard_normal(n) for n in (1, 2, 3, 4, 7, 8, 999, 1000, 1001)]
    cases += [np.array([-0.0, -0.0]), np.array([0.0, -0.0]), np.array([-0.0]), np.array([1.0, np.inf]),
              np.array([-np.inf, np.inf]), np.array([3.0, 3.0, 1.0, 3.0]), np.array([1e308, 1e308]),
              rng.integers(0, 5, 40).astype(np.float64), rng.standard_normal(50)[::-3],
              np.array([1.0, np.nan, 2.0]), np.array([np.nan, 1.0]), np.arange(6, dtype=np.int64),
              rng.standard_normal(9).astype(np.float32), rng.standard_normal((3, 4))]
    for x in cases:
        got, want = median(x), float(np.median(x))
        assert (np.isnan(got) and np.isnan(want)) or (got == want and np.signbit(got) == np.signbit(want)), x
