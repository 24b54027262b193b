"""benchmarks/rebalance_soak.py: what a run is counted against the reference (no services needed)."""
from __future__ import annotations

from tests.conftest import benchmark


def test_compare_counts_each_difference_once_and_says_where_each_series_departs():
    soak = benchmark("rebalance_soak")
    t = [soak.T0 + i * 1_000_000_000 for i in range(6)]
    wave, rpeak = ("waveform", "b1", "II_SYNTH", "synth"), ("rpeak", "b1", "II")
    ref = {wave: {t[0]: 1.0, t[1]: 2.0, t[2]: 3.0, t[3]: 4.0}, rpeak: {t[1]: 1.0, t[4]: 1.0}}
    run = {wave: {t[0]: 1.0, t[1]: 2.0 + 1e-9, t[2]: 3.5, t[5]: 6.0}, rpeak: {t[1]: 1.0, t[3]: 1.0}}
    c = soak.compare(ref, run)
    # wave: t[3] lost, t[5] duplicated, t[2]'s value differs (1e-9 is within the tolerance); rpeak: t[4] and t[3]
    assert {k: c[k] for k in ("lost", "duplicated", "waveform_values", "rpeak", "hr", "derived_mismatch")} == \
        {"lost": 1, "duplicated": 1, "waveform_values": 1, "rpeak": 2, "hr": 0, "derived_mismatch": 3}
    assert c["first_mismatches"] == [[*wave, 2.0, "value", 5.0], [*rpeak, None, 3.0, "extra", 4.0]]
    assert soak.compare(ref, run, limit=1)["first_mismatches"] == c["first_mismatches"][:1]
    assert soak.compare(ref, ref)["first_mismatches"] == [] and soak.compare(ref, ref)["derived_mismatch"] == 0


def test_compare_verdicts_counts_missing_repeated_and_differing_verdicts():
    soak = benchmark("rebalance_soak")
    ref = [("b1-a1", "realtime", "false"), ("b1-a1", "retrospective", "false"), ("b2-a1", "realtime", "false")]
    run = [("b1-a1", "realtime", "false"), ("b1-a1", "realtime", "false"),  # judged again after a kill
           ("b1-a1", "retrospective", "uncertain")]  # b2's is missing
    assert soak.compare_verdicts(ref, run) == {"expected": 3, "missing": 1, "repeated": 1, "differing": 1}
    assert soak.compare_verdicts(ref, ref) == {"expected": 3, "missing": 0, "repeated": 0, "differing": 0}
