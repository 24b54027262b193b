"""Signal quality indices and NaN repair."""
from __future__ import annotations

import numpy as np
import pytest

from operators.processing.quality import ecg_quality, ppg_quality, signal_quality


def _synthetic(rate=125.0, dur=10.0):
    """Clean lead-II-like ECG and PPG built here, independent of other modules."""
    t = np.arange(int(rate * dur)) / rate
    beats = np.arange(0.3, dur, 0.8)
    ecg = np.zeros_like(t)
    ppg = np.zeros_like(t)
    for b in beats:
        ecg += 1.0 * np.exp(-0.5 * ((t - b) / 0.012) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.28) / 0.05) ** 2)
        ppg += np.exp(-0.5 * ((t - b - 0.25) / 0.08) ** 2) + 0.3 * np.exp(-0.5 * ((t - b - 0.5) / 0.08) ** 2)
    return t, ecg, ppg


def test_clean_signals_are_ok():
    _, ecg, ppg = _synthetic()
    qe, qp = ecg_quality(ecg, 125.0), ppg_quality(ppg, 125.0)
    assert qe.ok and qe.sqi > 5 and qe.sqi_name == "kurtosis"
    assert qp.ok and qp.sqi > 0.8 and qp.sqi_name == "periodicity"
    assert qe.nonfinite_frac == qe.flat_frac == qe.clip_frac == 0.0
    assert signal_quality(ecg, 125.0, "II") == qe
    assert signal_quality(ppg, 125.0, "PLETH") == qp


def test_noise_fails_sqi():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(1250)
    assert not ecg_quality(np.sin(np.arange(1250) / 20.0), 125.0).ok  # kurtosis 1.5
    qp = ppg_quality(noise, 125.0)
    assert not qp.ok and "periodicity" in qp.reason


def test_flatline_clipping_nonfinite():
    _, ecg, ppg = _synthetic()
    flat = ecg.copy()
    flat[200:700] = 0.25
    q = ecg_quality(flat, 125.0)
    assert q.flat_frac == pytest.approx(0.4, abs=0.01) and not q.ok and "flatline" in q.reason
    clipped = np.minimum(ppg, 0.6)
    q = ppg_quality(clipped, 125.0)
    assert q.clip_frac > 0.1 and "clipping" in q.reason
    holes = ecg.copy()
    holes[::10] = np.nan
    q = ecg_quality(holes, 125.0)
    assert q.nonfinite_frac == pytest.approx(0.1) and not q.ok


def test_ppg_periodicity_sees_the_pulse_on_a_drifting_baseline():
    """Baseline wander (a ramp, a slow swing) twice the pulse's height kept the autocorrelation positive at every
    lag, and the score fell to 0."""
    t, _, ppg = _synthetic()
    for drift in (2 * np.ptp(ppg) * t / t[-1], 2 * np.ptp(ppg) * np.sin(2 * np.pi * 0.1 * t)):
        q = ppg_quality(ppg + drift, 125.0)
        assert q.ok and q.sqi > 0.9, q


# ---------------------------------------------------------------- graded quality: assess()
from operators.processing.artifacts import inject, pink_noise  # noqa: E402
from operators.processing.quality import (DEGRADED, GOOD, GOOD_MIN, UNUSABLE, USABLE_MIN, SignalQuality, assess,  # noqa: E402
                               kind_of, ppg_periodicity)
from operators.io.synthetic import synthesize  # noqa: E402


@pytest.fixture(scope="module")
def rec():
    return synthesize(seconds=40.0, seed=3)


def _window(rec, signal, start_s=10.0, dur_s=8.0):
    fs = rec.rate_hz
    return rec.signals[signal][int(start_s * fs): int((start_s + dur_s) * fs)].astype(np.float64), fs


@pytest.mark.parametrize("signal,kind", [("II", "ecg"), ("PLETH", "ppg")])
def test_clean_windows_are_good(rec, signal, kind):
    for start in (0.0, 8.0, 16.0, 24.0, 32.0):
        x, fs = _window(rec, signal, start)
        q = assess(x, fs, kind)
        assert isinstance(q, SignalQuality)
        assert (q.cls, q.reason) == (GOOD, "ok") and q.score >= GOOD_MIN and q.usable, q


@pytest.mark.parametrize("artifact,signal,kind,reason", [
    ("flat", "PLETH", "ppg", "probe_off"),
    ("flat", "II", "ecg", "flat"),
    ("noise", "PLETH", "ppg", "noise"),
    ("noise", "II", "ecg", "noise"),
    ("clipping", "PLETH", "ppg", "clipping"),
    ("clipping", "II", "ecg", "clipping"),
    ("nan", "PLETH", "ppg", "nonfinite"),
    ("nan", "II", "ecg", "nonfinite"),
])
def test_artifacts_make_a_window_unusable_with_their_reason(rec, artifact, signal, kind, reason):
    x, fs = _window(rec, signal)
    y = inject(artifact, x, 0, len(x), fs, np.random.default_rng(0))
    q = assess(y, fs, kind)
    assert (q.cls, q.reason) == (UNUSABLE, reason) and q.score < USABLE_MIN and not q.usable, q


@pytest.mark.parametrize("signal,kind", [("PLETH", "ppg"), ("II", "ecg")])
def test_motion_is_not_good_and_named_motion_or_irregular(rec, signal, kind):
    x, fs = _window(rec, signal)
    rng = np.random.default_rng(1)
    qs = [assess(inject("motion", x, 0, len(x), fs, rng, level=3.0), fs, kind) for _ in range(10)]
    assert all(q.cls != GOOD and q.reason in ("motion", "irregular") for q in qs), qs
    assert sum(q.cls == UNUSABLE for q in qs) >= 3, qs


def test_partial_artifacts_grade_with_their_share(rec):
    """A short NaN run or flat stretch degrades a window; a long one makes it unusable."""
    x, fs = _window(rec, "PLETH")
    n = len(x)
    rng = np.random.default_rng(0)
    short = assess(inject("nan", x, 100, 100 + int(0.04 * n), fs, rng), fs, "ppg")
    long = assess(inject("nan", x, 100, 100 + int(0.3 * n), fs, rng), fs, "ppg")
    assert short.cls == DEGRADED and short.reason == "nonfinite", short
    assert long.cls == UNUSABLE and long.reason == "nonfinite", long
    assert long.score < short.score
    flat = assess(inject("flat", x, 100, 100 + int(0.5 * n), fs, rng), fs, "ppg")
    assert flat.cls == UNUSABLE and flat.reason == "probe_off"


@pytest.mark.parametrize("level", [0.005, 0.01, 0.05])
def test_a_probe_off_that_still_reports_sensor_noise_is_probe_off(rec, level):
    """A probe off the finger seldom reads an exact constant: 2.5 s of its noise floor in a 4 s window beside live
    pulses is unusable (the pulses found around it pass the shape and rhythm checks); 1.5 s is not good."""
    x, fs = _window(rec, "PLETH", dur_s=4.0)
    rng = np.random.default_rng(2)
    for start_s in (0.0, 0.75, 1.5):
        a = int(start_s * fs)
        long = assess(inject("probe_noise", x, a, a + int(2.5 * fs), fs, rng, level=level), fs, "ppg")
        assert (long.cls, long.reason) == (UNUSABLE, "probe_off"), long
        short = assess(inject("probe_noise", x, a, a + int(1.5 * fs), fs, rng, level=level), fs, "ppg")
        assert short.cls != GOOD, short
    # an arterial line that stops pulsing is flat, not a probe
    abp = assess(inject("probe_noise", x, 0, int(2.5 * fs), fs, rng, level=level), fs, "abp")
    assert (abp.cls, abp.reason) == (UNUSABLE, "flat"), abp


def test_slow_pulses_are_not_a_dead_probe():
    """At 30 bpm a pulse's diastole still spans a good part of its amplitude within a second: not dead."""
    fs, dur = 125.0, 8.0
    t = np.arange(int(fs * dur)) / fs
    u = t % 2.0  # one pulse every 2 s: a 0.2 s upstroke, then an exponential run-off
    x = np.where(u < 0.2, np.sin(np.pi / 2 * u / 0.2) ** 2, np.exp(-(u - 0.2) / 0.7))
    x += 1e-4 * np.random.default_rng(0).standard_normal(len(x))  # a drawn pulse repeats exactly: frozen
    q = assess(x, fs, "ppg")
    assert q.metrics["dead_frac"] <= CHECKS["dead"].good and q.cls == GOOD, q


def test_lead_off_on_one_of_two_leads(rec):
    """Lead II off (flat at 0 mV) while a second lead keeps recording: only lead II is unusable."""
    ii, fs = _window(rec, "II")
    v = -0.6 * ii + 0.02 * np.random.default_rng(2).standard_normal(len(ii))  # another projection of the same heart
    ii_off = ii.copy()
    ii_off[200:] = 0.0
    q_ii, q_v = assess(ii_off, fs, kind_of("II")), assess(v, fs, kind_of("V"))
    assert (q_ii.cls, q_ii.reason) == (UNUSABLE, "flat")
    assert q_v.cls == GOOD, q_v


def test_interpolated_dropout_is_flagged(rec):
    """A NaN run a decoder bridged with a straight line (wire repair) is not a signal."""
    x, fs = _window(rec, "PLETH")
    y = x.copy()
    a, b = 300, 300 + int(2.0 * fs)
    y[a:b] = np.linspace(y[a - 1], y[b], b - a + 2)[1:-1]
    q = assess(y.astype(np.float32), fs, "ppg")
    assert q.cls == UNUSABLE and q.reason == "interpolated", q


def _frozen(x, fs, chunk_s, from_s=0.0):
    """`x` from `from_s` on made of one `chunk_s` chunk sent again and again (a frozen monitor)."""
    y, a, n = x.copy(), int(round(from_s * fs)), int(round(chunk_s * fs))
    for k in range(a + n, len(y), n):
        y[k:k + n] = y[a:a + min(n, len(y) - k)]
    return y


@pytest.mark.parametrize("rate", [25.0, 125.0, 500.0])
@pytest.mark.parametrize("signal,kind", [("PLETH", "ppg"), ("II", "ecg"), ("PLETH", "abp")])
@pytest.mark.parametrize("chunk_s", [0.5, 0.8, 1.0, 2.0])
def test_a_frozen_monitor_resending_one_chunk_is_unusable(signal, kind, rate, chunk_s):
    """A monitor that froze and re-sends its last chunk: live-looking beats at a steady rate, which every shape and
    rhythm check passes, but no new data. Each repeat is found value for value (`frozen`), at any chunk length a 4 s
    window holds twice; the clean window (float32, as the wire carries it) repeats nothing."""
    from scipy.signal import resample_poly

    x, fs = _window(synthesize(seconds=40.0, seed=3, rate_hz=125.0), signal, dur_s=4.0)
    if rate != fs:
        x = resample_poly(x, int(rate), int(fs)) if rate > fs else resample_poly(x, 1, int(fs / rate))
    x = x.astype(np.float32).astype(np.float64)
    clean = assess(x, rate, kind)
    assert clean.metrics["repeat_frac"] == 0.0 and clean.cls == GOOD, clean
    q = assess(_frozen(x, rate, chunk_s), rate, kind)
    assert (q.cls, q.reason) == (UNUSABLE, "frozen") and q.metrics["repeat_frac"] >= 0.45, q


def test_frozen_needs_an_exact_repeat_of_half_a_second(rec):
    """Quantised samples repeat short patterns and a flat line repeats itself: neither is frozen. A repeat shorter
    than REPEAT_MIN_S, or one that differs by a code, is not either."""
    x, fs = _window(rec, "PLETH", dur_s=4.0)
    coarse = np.round(x * 30) / 30  # 30 codes over the pulse
    assert assess(coarse, fs, "ppg").metrics["repeat_frac"] == 0.0
    flat = x.copy()
    flat[100:300] = flat[100]
    assert assess(flat, fs, "ppg").metrics["repeat_frac"] == 0.0
    short = x.copy()
    short[300:300 + int(0.4 * fs)] = short[100:100 + int(0.4 * fs)]
    assert assess(short, fs, "ppg").metrics["repeat_frac"] == 0.0
    nudged = _frozen(x, fs, 1.0)
    nudged[::7] += 1e-3  # every 7th sample is one code off: no copy is the same data as another
    assert assess(nudged, fs, "ppg").metrics["repeat_frac"] == 0.0


@pytest.mark.parametrize("rate", [25.0, 125.0, 500.0])
def test_an_upside_down_ppg_is_unusable_as_inverted(rate):
    """A PPG sent upside down (transmitted light, or raw ADC counts that fall as blood volume rises) passes every
    shape and rhythm check, but its pulses rise slowly and fall steeply: a translator times the beats off the wrong
    edge (BIDMC bidmc03: synthesized R-peaks 280 ms late, published good with confidence 0.92). Upright, the same
    windows stay good."""
    from scipy.signal import resample_poly

    rec = synthesize(seconds=40.0, seed=3, rate_hz=125.0)
    for start in (0.0, 12.0, 24.0):
        x, fs = _window(rec, "PLETH", start, dur_s=4.0)
        if rate != fs:
            x = resample_poly(x, int(rate), int(fs)) if rate > fs else resample_poly(x, 1, int(fs / rate))
        counts = np.round(30000 + 20000 * x)  # raw ADC counts with an offset
        for upright in (x, counts):
            q = assess(upright, rate, "ppg")
            assert q.cls == GOOD and q.metrics["polarity"] == 0.0, q
        for inverted in (-x, 65535 - counts):
            q = assess(inverted, rate, "ppg")
            assert (q.cls, q.reason) == (UNUSABLE, "inverted") and q.metrics["rise_frac"] > 0.5, q


def test_too_short_and_all_nan():
    assert assess(np.ones(10), 125.0, "ppg").reason == "too_short"
    q = assess(np.full(1000, np.nan), 125.0, "ecg")
    assert (q.cls, q.reason) == (UNUSABLE, "nonfinite")
    with pytest.raises(ValueError, match="unknown quality kind"):
        assess(np.zeros(1000), 125.0, "eeg")


def test_25hz_signals_are_judged_too(rec):
    """Super-resolution sources arrive at 25 Hz: clean ones are good, a flat one unusable."""
    from scipy.signal import resample_poly

    for signal, kind in (("PLETH", "ppg"), ("II", "ecg")):
        x, _ = _window(rec, signal)
        x25 = resample_poly(x, 1, 5)
        assert assess(x25, 25.0, kind).cls == GOOD, (signal, assess(x25, 25.0, kind))
        assert assess(inject("flat", x25, 0, len(x25), 25.0, np.random.default_rng(0)), 25.0, kind).cls == UNUSABLE


def test_kind_of_channel_names():
    assert [kind_of(s) for s in ("II", "V", "aVR", "II_SYNTH", "II_SR", "MCL")] == ["ecg"] * 6
    assert [kind_of(s) for s in ("PLETH", "PLETH_SR", "ABP", "RESP")] == ["ppg", "ppg", "abp", "other"]


def test_score_and_class_agree():
    """cls follows from score alone: good >= GOOD_MIN > degraded >= USABLE_MIN > unusable."""
    rng = np.random.default_rng(5)
    rec = synthesize(seconds=30.0, seed=5)
    x = rec.signals["PLETH"].astype(np.float64)
    for level in np.linspace(0.0, 3.0, 13):
        q = assess(inject("noise", x[:1000], 0, 1000, rec.rate_hz, rng, level=float(level)), rec.rate_hz, "ppg")
        assert 0.0 <= q.score <= 1.0
        assert q.cls == (GOOD if q.score >= GOOD_MIN else DEGRADED if q.score >= USABLE_MIN else UNUSABLE)


# ---------------------------------------------------------------- ECG at 25 Hz (super-resolution input)
from operators.processing.resample import decimate_to  # noqa: E402


def _ecg_beats(beats_s, fs=125.0, dur_s=40.0, ectopic=()):
    """Lead-II-like ECG with a broad QRS and a tall T wave (what BIDMC lead II looks like: kurtosis ~3 once
    low-passed for 25 Hz); beats in `ectopic` are wide, inverted ventricular ones. A trace of noise (0.1 uV): beats
    drawn at a steady rate repeat value for value, which no recorded lead does (that is a frozen monitor)."""
    t = np.arange(int(fs * dur_s)) / fs
    x = np.zeros_like(t)

    def g(mu, s):
        return np.exp(-0.5 * ((t - mu) / s) ** 2)

    for i, b in enumerate(beats_s):
        if i in ectopic:
            x += -0.9 * g(b, 0.05) + 0.5 * g(b + 0.12, 0.06) - 0.4 * g(b + 0.35, 0.08)
        else:
            x += 0.12 * g(b - 0.16, 0.025) + g(b, 0.018) - 0.25 * g(b + 0.04, 0.015) + 0.45 * g(b + 0.28, 0.06)
    return x + 1e-4 * np.random.default_rng(len(t)).standard_normal(len(t))


def _af_beats(mean_hr, seed, dur_s=40.0, cv=0.25):
    """Beat times of an irregularly irregular rhythm (atrial fibrillation): log-normal RR, CV about `cv`."""
    rr = np.clip(60.0 / mean_hr * np.exp(np.random.default_rng(seed).normal(0.0, cv, 400)), 0.3, 2.0)
    b = 0.3 + np.concatenate([[0.0], np.cumsum(rr)])
    return b[b < dur_s]


def _windows_25(x, fs=125.0, lowres="iir", win_s=4.0, hop_s=2.0):
    """4 s windows (the pipeline's judged span) of a 25 Hz copy of `x`: anti-aliased ("iir") or every 5th sample."""
    lo = decimate_to(x, fs, 25.0) if lowres == "iir" else x[:: int(round(fs / 25.0))]
    n, h = int(win_s * 25), int(hop_s * 25)
    return [lo[i:i + n] for i in range(0, len(lo) - n + 1, h)]


@pytest.mark.parametrize("lowres", ["iir", "plain"])
def test_clean_25hz_ecg_with_a_low_passed_qrs_is_kept(lowres):
    """Anti-aliasing for 25 Hz flattens the QRS: kurtosis falls under 3 (Gaussian noise) although every beat is
    there. The low-rate shape check compares beats with each other instead."""
    x = _ecg_beats(np.arange(0.3, 40.0, 0.75))
    qs = [assess(w, 25.0, "ecg") for w in _windows_25(x, lowres=lowres)]
    if lowres == "iir":
        assert np.median([q.metrics["kurtosis"] for q in qs]) < 3.4  # what the 125 Hz rule would call not good
    assert all(q.cls == GOOD for q in qs), [(q.cls, q.reason, q.metrics) for q in qs if q.cls != GOOD]
    assert all(q.metrics["beat_match"] > 0.9 for q in qs)


@pytest.mark.parametrize("mean_hr", [60, 90, 120, 150])
def test_irregular_rhythm_at_25hz_is_not_unusable(mean_hr):
    """Atrial fibrillation has no beat-to-beat periodicity, but each beat still has a twin in the window. A fast one
    loses a few windows (measured over 20 seeds, RR CV 0.25: 3.4% withheld at 120 bpm, 1.8% at 150 bpm; none at
    60 bpm): beats 0.3 s apart reach into each other's span."""
    ws = [w for seed in range(4) for w in _windows_25(_ecg_beats(_af_beats(mean_hr, seed)))]
    qs = [assess(w, 25.0, "ecg") for w in ws]
    assert sum(q.usable for q in qs) >= 0.95 * len(qs), [(q.cls, q.metrics) for q in qs if not q.usable]
    assert sum(q.cls == GOOD for q in qs) >= 0.8 * len(qs)
    # the rhythm is irregular indeed: the pulse-style periodicity is low in most windows
    assert np.median([ppg_periodicity(w, 25.0) for w in ws]) < 0.7


@pytest.mark.parametrize("ectopic", ["bigeminy", "single"])
def test_ectopic_beats_at_25hz_keep_the_window(ectopic):
    """Wide inverted ectopic beats every other beat (bigeminy: ectopics match ectopics) or one in a window."""
    if ectopic == "bigeminy":
        beats = 0.3 + np.concatenate([[0.0], np.cumsum(np.tile([0.5, 0.9], 40))])
        which = set(range(1, len(beats), 2))
    else:
        beats = np.arange(0.3, 40.0, 0.8)
        which = set(range(2, len(beats), 5))
    x = _ecg_beats(beats[beats < 40.0], ectopic=which)
    qs = [assess(w, 25.0, "ecg") for w in _windows_25(x)]
    assert all(q.usable for q in qs), [(q.cls, q.reason, q.metrics) for q in qs if not q.usable]


def test_25hz_noise_is_unusable():
    """White or pink noise at 25 Hz has kurtosis about 3 (at 25 Hz the 125 Hz rule let 4 s of it pass as
    degraded about half the time); beats of noise do not match each other."""
    rng = np.random.default_rng(0)
    for make in (lambda: rng.standard_normal(100), lambda: pink_noise(100, rng)):
        qs = [assess(make(), 25.0, "ecg") for _ in range(300)]
        assert sum(q.usable for q in qs) <= 3, [q.metrics for q in qs if q.usable]
        assert all(q.reason == "noise" for q in qs if not q.usable)


@pytest.mark.parametrize("f_hz", [1.5, 3.0, 5.0, 6.0, 8.0, 10.0, 12.0])
def test_25hz_tone_is_not_ecg(f_hz):
    """Every "beat" of a sinusoid matches every other, so beat_match alone would call it a clean lead (it did for
    3.5-10 Hz). A tone at 25 Hz is, e.g., 60 Hz mains aliased to 10 Hz on a detached lead: noise, not beats."""
    rng = np.random.default_rng(int(f_hz * 10))
    t = np.arange(100) / 25.0
    for _ in range(10):
        x = np.sin(2 * np.pi * f_hz * t + rng.uniform(0, 2 * np.pi)) + 0.3 * rng.standard_normal(len(t))
        q = assess(x, 25.0, "ecg")
        assert not q.usable, q
        assert q.metrics["tonal_frac"] > 0.7


def test_25hz_mains_on_a_detached_lead_is_unusable():
    """60 Hz hum sampled every 5th sample at 125 Hz (no anti-aliasing) lands at 10 Hz; with a little drift and no
    heart it must be withheld, while the same hum at a tenth of the amplitude on a real ECG leaves it usable."""
    fs = 125.0
    t = np.arange(int(40 * fs)) / fs
    hum = np.sin(2 * np.pi * 60.0 * t) + 0.2 * np.sin(2 * np.pi * 0.2 * t)
    lead_off = [assess(w, 25.0, "ecg") for w in _windows_25(hum, lowres="plain")]
    assert not any(q.usable for q in lead_off), [q.metrics for q in lead_off if q.usable]
    ecg = _ecg_beats(np.arange(0.3, 40.0, 0.75))
    noisy = ecg + 0.1 * np.ptp(ecg) * np.sin(2 * np.pi * 60.0 * np.arange(len(ecg)) / fs)
    assert all(assess(w, 25.0, "ecg").usable for w in _windows_25(noisy, lowres="plain"))


@pytest.mark.parametrize("artifact,reason", [("flat", "flat"), ("noise", "noise"), ("clipping", "clipping"),
                                             ("nan", "nonfinite")])
def test_25hz_ecg_artifacts_stay_unusable(artifact, reason):
    x = _ecg_beats(np.arange(0.3, 40.0, 0.75))
    rng = np.random.default_rng(4)
    for w in _windows_25(x)[:8]:
        q = assess(inject(artifact, w, 0, len(w), 25.0, rng), 25.0, "ecg")
        assert (q.cls, q.reason) == (UNUSABLE, reason), q


def test_the_low_rate_check_leaves_125hz_alone(rec):
    """Above 2.2x the ECG band the kurtosis rule judges the shape, as before; beat_match is not even computed."""
    x, fs = _window(rec, "II")
    q = assess(x, fs, "ecg")
    assert "beat_match" not in q.metrics and q.cls == GOOD
    assert "beat_match" in assess(decimate_to(x, fs, 25.0), 25.0, "ecg").metrics


def test_bidmc_25hz_lead_ii_is_kept(bidmc_record):
    """Held-out bidmc16 lost 49 of its 57 clean 8 s windows at 25 Hz (anti-aliased) to the kurtosis rule."""
    from operators.io.records import read_recording
    from operators.processing.samples import fill_nonfinite

    rec = read_recording(bidmc_record(16), ["II"])
    fs = float(rec.rates["II"])
    x = fill_nonfinite(rec.signals["II"].astype(np.float64))[0]
    lo = decimate_to(x, fs, 25.0)
    rng = np.random.default_rng(0)
    kept = clean = noisy = clipped = 0
    for s in range(0, int(len(x) / fs) - 4, 4):
        if assess(x[int(s * fs): int((s + 4) * fs)], fs, "ecg").cls != GOOD:
            continue
        w = lo[s * 25: (s + 4) * 25]
        clean += 1
        kept += assess(w, 25.0, "ecg").usable
        noisy += assess(inject("noise", w, 0, len(w), 25.0, rng), 25.0, "ecg").usable
        clipped += assess(inject("clipping", w, 0, len(w), 25.0, rng), 25.0, "ecg").usable
    assert clean > 100 and kept >= 0.95 * clean, (clean, kept)
    # at 25 Hz a clipped R-peak is a 2-sample plateau; clipped beats still match each other
    assert noisy <= 0.02 * clean and clipped <= 0.05 * clean, (clean, noisy, clipped)


# ---------------------------------------------------------------- soft saturation (rail dwells)
def _soft_limit(x, rail_mv=5.0, lsb_mv=0.005, jitter_codes=3, seed=0):
    """`x` through a tanh-like amplifier limit at +-rail_mv, plus a few ADC codes of jitter: the rails are never
    exactly equal values, so no exact plateau exists."""
    rng = np.random.default_rng(seed)
    y = rail_mv * np.tanh(x / rail_mv) + jitter_codes * lsb_mv * rng.uniform(-1.0, 1.0, len(x))
    return np.round(y / lsb_mv) * lsb_mv


def _rail_bursts(n, fs, every_s=0.9, seed=0):
    """Flat-topped +-8 mV artifact bursts (~0.1 s) about every `every_s`: what drives Challenge v475l into its rails."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    art = np.zeros(n)
    for c in np.arange(0.5, n / fs, every_s):
        art += rng.choice([-1.0, 1.0]) * 8.0 * np.exp(-0.5 * ((t - c - rng.uniform(-0.2, 0.2)) / 0.05) ** 4)
    return art


def test_soft_saturated_bursts_on_an_ecg_are_clipping():
    """A 250 Hz ECG whose artifact bursts ride a soft +-5 mV limit: no exact plateau (clip_frac 0), so before the
    rail-dwell check 7 of these 10 windows were graded good; now none is, and the reason is clipping."""
    fs = 250.0
    x = _ecg_beats(np.arange(0.3, 40.0, 0.8), fs=fs)
    y = _soft_limit(x + _rail_bursts(len(x), fs))
    n = int(4 * fs)
    qs = [assess(y[i:i + n], fs, "ecg") for i in range(0, len(y) - n + 1, n)]
    assert all(q.metrics["clip_frac"] == 0.0 for q in qs), [q.metrics["clip_frac"] for q in qs]
    assert all(q.cls != GOOD and q.reason == "clipping" and q.metrics["rail_dwell_frac"] >= 0.04 for q in qs), qs


def test_a_clean_ecg_through_the_soft_limit_stays_good():
    """The same lead without the bursts never reaches the limit: good, no rail dwell; and the check is not run at the
    25 Hz SR input (its own RAIL_MIN_RUN_LOW_RATE handles rails there)."""
    fs = 250.0
    y = _soft_limit(_ecg_beats(np.arange(0.3, 40.0, 0.8), fs=fs))
    n = int(4 * fs)
    for i in range(0, len(y) - n + 1, n):
        q = assess(y[i:i + n], fs, "ecg")
        assert (q.cls, q.metrics["rail_dwell_frac"]) == (GOOD, 0.0), q
    assert "rail_dwell_frac" not in assess(decimate_to(y, fs, 25.0)[:100], 25.0, "ecg").metrics


@pytest.mark.parametrize("hold_s,expect", [(0.04, 0.0), (0.1, 0.1)])
def test_only_long_flat_topped_rail_holds_count(hold_s, expect, monkeypatch):
    """A lead-II S wave cut at a rail for 40 ms each beat (BIDMC lead II) is no dwell; held 100 ms it is. A wide,
    rounded complex reaching the window's extreme (a ventricular beat) is no dwell either: its top widens with the
    tolerance band, a rail's does not."""
    from operators.processing.quality import _rail_dwell_frac

    fs, n = 250.0, 1000
    x = 0.02 * np.sin(np.arange(n) / fs * 2 * np.pi * 0.3)
    beats = np.arange(100, n - 100, 200)
    for b in beats:  # a fast down-stroke to the -1 mV rail, held, and a fast return
        x[b - 3:b] -= np.linspace(0.3, 0.9, 3)
        x[b:b + int(hold_s * fs)] = -1.0 + 0.004 * np.random.default_rng(b).uniform(-1, 1, int(hold_s * fs))
    x[beats[0] + 60: beats[0] + 63] += 1.0  # a spike so the rail is not the baseline's side
    frac = _rail_dwell_frac(x, fs)
    assert frac == pytest.approx(expect * len(beats) * fs / n, abs=0.02) if expect else frac == 0.0, frac
    t = np.arange(n) / fs
    wide = sum(np.exp(-0.5 * ((t - c) / 0.2) ** 2) for c in (0.6, 1.6, 2.6, 3.6))  # tops within 2% for 80 ms
    assert _rail_dwell_frac(wide, fs) == 0.0
    monkeypatch.setattr("operators.processing.quality.RAIL_FLAT_TOP", 0.0)  # the flat-top rule is what spares them
    assert _rail_dwell_frac(wide, fs) > 0.05


def test_challenge_v475l_saturated_lead_ii_is_not_good(shared_data):
    """Challenge v475l lead II from 284 s: +-5 mV artifact that sits at +-5.09 mV (values within ~0.09 mV, never
    equal) for 70-90 ms at a time; the windows at 288 s and 296 s were graded good."""
    from operators.io.records import read_recording

    path = shared_data / "challenge2015" / "v475l"
    if not path.with_suffix(".hea").exists():
        pytest.skip("Challenge record v475l not found")
    rec = read_recording(path, ["II"])
    fs = float(rec.rates["II"])
    x = rec.signals["II"].astype(np.float64)
    for t0 in (288, 296):
        q = assess(x[int(t0 * fs): int((t0 + 4) * fs)], fs, "ecg")
        assert q.cls != GOOD and q.reason == "clipping" and q.metrics["clip_frac"] == 0.0, (t0, q)
    clean = assess(x[int(260 * fs): int(264 * fs)], fs, "ecg")  # the same lead's clean beats before the artifact
    assert clean.cls == GOOD and clean.metrics["rail_dwell_frac"] == 0.0, clean


# ---------------------------------------------------------------- confidence
from operators.processing.quality import CHECKS, confidence, confidence_features, ecg_shape_grade  # noqa: E402

SHAPE = 1  # index of "shape" in CONFIDENCE_FEATURES


@pytest.mark.parametrize("lowres", ["iir", "plain"])
def test_confidence_sees_the_shape_grade_assess_gated_on(lowres):
    """At 25 Hz (anti-aliased) a clean lead's kurtosis falls under the 125 Hz rule's degraded point; `assess` keeps
    it by beat_match, and the confidence's shape feature is that same grade, not the kurtosis one."""
    x = _ecg_beats(np.arange(0.3, 40.0, 0.75))
    for w in _windows_25(x, lowres=lowres)[:6]:
        q = assess(w, 25.0, "ecg")
        shape = confidence_features(q, False)[SHAPE]
        assert q.cls == GOOD and shape == ecg_shape_grade(q.metrics) >= GOOD_MIN, (q, shape)
        assert shape == max(CHECKS["beat_match"].grade(q.metrics["beat_match"]),
                            CHECKS["kurtosis_low_rate"].grade(q.metrics["kurtosis"]))
    kurt_grades = [CHECKS["kurtosis"].grade(assess(w, 25.0, "ecg").metrics["kurtosis"]) for w in _windows_25(x)]
    assert np.median(kurt_grades) < GOOD_MIN  # what the confidence used to see (iir)


def test_confidence_shape_at_125hz_is_the_kurtosis_grade(rec):
    x, fs = _window(rec, "II")
    q = assess(x, fs, "ecg")
    assert confidence_features(q, False)[SHAPE] == CHECKS["kurtosis"].grade(q.metrics["kurtosis"])


def test_sr_confidence_of_a_25hz_ecg_falls_with_its_shape():
    """A clean 25 Hz lead gets a higher SR confidence than the same lead with noise over part of it (a usable window
    of lower shape grade), and an unusable one gets 0."""
    x = _ecg_beats(np.arange(0.3, 40.0, 0.75))
    rng = np.random.default_rng(2)
    clean, worse, unusable = [], [], 0
    for w in _windows_25(x):
        q = assess(w, 25.0, "ecg")
        for frac in (0.2, 0.35, 0.5):
            qn = assess(inject("noise", w, 10, 10 + int(frac * len(w)), 25.0, rng), 25.0, "ecg")
            if not qn.usable:
                unusable += 1
                assert confidence("sr", qn) == 0.0
            elif ecg_shape_grade(qn.metrics) < ecg_shape_grade(q.metrics) - 0.05:
                clean.append(confidence("sr", q))
                worse.append(confidence("sr", qn))
    assert unusable and len(worse) >= 5, (unusable, len(worse))
    assert all(c > 2 * n for c, n in zip(clean, worse)), list(zip(clean, worse))


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy warns about the large offset; its value is compared
def test_moments_are_scipys_skew_and_kurtosis_bit_for_bit():
    """The quality checks' own skewness and kurtosis equal scipy.stats' (==), on the arrays they see: filtered
    windows (reversed views), plain slices, heavy tails, a constant (NaN) and an offset so large the spread
    vanishes under it (scipy's zero-variance rule)."""
    from scipy import stats

    from operators.processing.filters import butter_sos, sosfiltfilt
    from operators.processing.quality import _moments

    rng = np.random.default_rng(3)
    _, ecg, ppg = _synthetic()
    arrays = [ecg, ppg, ecg[::-1], ppg[5:900], np.full(100, 2.5), 1e12 + rng.standard_normal(50) * 1e-6,
              rng.standard_t(3, 4001), rng.standard_normal(7) * 1e-300]
    sos = butter_sos(2, 0.5, "high", 125.0)
    for n in (31, 250, 1000, 1001, 2500):
        x = rng.standard_normal(n).cumsum() + np.sin(np.arange(n) / 7.0) * 5
        arrays += [x, sosfiltfilt(sos, x)]
    for y in arrays:
        skew, kurt = _moments(y)
        want_skew, want_kurt = float(stats.skew(y)), float(stats.kurtosis(y, fisher=False))
        assert (skew == want_skew or (np.isnan(skew) and np.isnan(want_skew))), (len(y), skew, want_skew)
        assert (kurt == want_kurt or (np.isnan(kurt) and np.isnan(want_kurt))), (len(y), kurt, want_kurt)
    assert np.isnan(_moments(np.full(100, 2.5))[1])


def test_a_noisy_probe_off_span_publishes_no_synthetic_ecg_and_no_rpeaks():
    """Gating end to end (offline, the worker's pipeline): 3 s of a probe's noise floor between live pulses give no
    usable II_SYNTH sample, no R-peak and a `source_unusable` event naming the probe, where the classic translator
    drew beats at a made-up rate before."""
    from operators.io.records import Recording
    from stream.tools.offline import translate_recording

    rec = synthesize(seconds=60.0, seed=4)
    fs = rec.rate_hz
    off = (30.5, 33.5)
    ppg = inject("probe_noise", rec.signals["PLETH"], int(off[0] * fs), int(off[1] * fs), fs,
                 np.random.default_rng(5))
    rec = Recording("probe", {"II": rec.signals["II"], "PLETH": ppg.astype(np.float32)}, {"II": fs, "PLETH": fs},
                    {"II": "mV", "PLETH": "NU"})
    res = translate_recording(rec, "ppg2ecg", translator="classic", context_s=10.0)
    inside = (res.times_s >= off[0]) & (res.times_s < off[1])
    assert inside.sum() == int(3.0 * fs) and not res.usable[inside].any()
    assert np.isnan(res.columns["ecg_ii"][inside]).all()
    peaks_s = np.array([p / 1e9 for e in res.events if e.kind == "rpeaks" for p in e.fields["peaks_ns"]])
    assert len(peaks_s) > 30 and not np.any((peaks_s >= off[0]) & (peaks_s < off[1]))
    reasons = {e.fields["reason"] for e in res.events if e.kind == "source_unusable"}
    assert reasons == {"probe_off"}, reasons
