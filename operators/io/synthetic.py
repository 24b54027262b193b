"""Deterministic synthetic lead-II ECG + PLETH, for demos and tests without PhysioNet data.

Beat times follow an RR series with respiratory sinus arrhythmia, a Mayer wave and seeded
jitter; each beat draws a PQRST complex (sum of Gaussians whose widths scale mildly with RR)
and, one pulse-arrival time (PAT, ~220 ms, breathing-modulated) later, a PPG pulse (systolic
peak + dicrotic wave). Plain numpy: no torch, no Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from operators.io.records import Recording

__all__ = ["SyntheticRecording", "synthesize", "write_wfdb", "RATE_HZ"]

RATE_HZ = 125.0

# PQRST waves: (offset from R in s, amplitude in mV, width in s) at RR = 1 s.
_ECG_WAVES = (
    (-0.20, 0.12, 0.025),  # P
    (-0.035, -0.10, 0.010),  # Q
    (0.0, 1.10, 0.011),  # R
    (0.035, -0.22, 0.011),  # S
    (0.28, 0.30, 0.055),  # T
)


@dataclass
class SyntheticRecording(Recording):
    """A `Recording` whose signals share one rate, plus its ground truth: the R peaks it drew."""

    r_peaks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sample indices

    @property
    def rate_hz(self) -> float:
        """The one sample rate (Hz) of every signal."""
        return _one_rate(self)


def _one_rate(rec: Recording) -> float:
    rates = set(rec.rates.values())
    if len(rates) != 1:
        raise ValueError(f"{rec.name}: signals at several rates {sorted(rates)}; one rate expected")
    return float(rates.pop())


def _beat_times(duration_s: float, rng: np.random.Generator, mean_hr: float) -> np.ndarray:
    """R-peak times (s) with HR variability: RSA (0.25 Hz), Mayer wave (0.1 Hz), jitter."""
    times = []
    t = 0.3
    mean_rr = 60.0 / mean_hr
    while t < duration_s + 1.0:
        rr = mean_rr * (1.0 + 0.04 * np.sin(2 * np.pi * 0.25 * t) + 0.03 * np.sin(2 * np.pi * 0.1 * t + 1.0))
        rr += rng.normal(0.0, 0.012)
        times.append(t)
        t += float(np.clip(rr, 0.4, 1.6))
    return np.asarray(times)


def _gauss(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def synthesize(
    seconds: float = 180.0,
    rate_hz: float = RATE_HZ,
    seed: int = 7,
    mean_hr: float = 72.0,
    age: float = 64.0,
    sex: str = "F",
    noise: float = 0.01,
) -> SyntheticRecording:
    """Build a reproducible recording: the same arguments always give the same samples.

    Parameters
    ----------
    seconds : duration (s).
    rate_hz : sample rate of both signals (Hz).
    seed : random seed (beat jitter, noise); also names the recording `synthetic-<seed>`.
    mean_hr : mean heart rate (beats per minute).
    age, sex : demographics carried like a monitor's (years; "M" / "F").
    noise : SD of the white noise added to each signal (mV for II, before PLETH's 0..1 scaling).

    Returns
    -------
    SyntheticRecording with "II" (mV) and "PLETH" (normalised units, 0..1) as float32 and the drawn R peaks.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate_hz))
    t = np.arange(n) / rate_hz
    beats = _beat_times(seconds, rng, mean_hr)
    rr = np.diff(beats, append=beats[-1] + 60.0 / mean_hr)

    ecg = np.zeros(n)
    ppg = np.zeros(n)
    for tb, rr_b in zip(beats, rr):
        # Only touch samples near the beat: keeps this O(n) instead of O(n * beats).
        lo, hi = np.searchsorted(t, [tb - 0.5, tb + 1.5])
        if hi <= lo:
            continue
        tt = t[lo:hi]
        scale = np.sqrt(rr_b)  # QT-like intervals shorten at faster rates (Bazett)
        for off, amp, width in _ECG_WAVES:
            ecg[lo:hi] += amp * _gauss(tt, tb + off * scale, width * (scale if abs(off) > 0.1 else 1.0))
        # Pulse arrival time shortens on inspiration (intrathoracic pressure swings).
        pat = 0.22 + 0.015 * np.sin(2 * np.pi * 0.25 * tb) + rng.normal(0.0, 0.004)
        onset = tb + pat
        ppg[lo:hi] += 1.0 * _gauss(tt, onset + 0.12, 0.07)  # systolic upstroke/peak
        ppg[lo:hi] += 0.35 * _gauss(tt, onset + 0.36 * scale, 0.09)  # dicrotic/diastolic wave

    resp = np.sin(2 * np.pi * 0.25 * t)
    ecg += 0.05 * np.sin(2 * np.pi * 0.15 * t + 0.3) + noise * rng.standard_normal(n)  # baseline wander
    ppg = ppg * (1.0 + 0.06 * resp) + 0.05 * resp + noise * rng.standard_normal(n)
    # Scale PLETH like a monitor's normalised 0..1 pleth trace.
    ppg = (ppg - ppg.min()) / (ppg.max() - ppg.min())

    return SyntheticRecording(
        name=f"synthetic-{seed}",
        signals={"II": ecg.astype(np.float32), "PLETH": ppg.astype(np.float32)},
        rates={"II": float(rate_hz), "PLETH": float(rate_hz)},
        units={"II": "mV", "PLETH": "NU"},
        age=float(age),
        sex=sex,
        r_peaks=np.round(beats[beats < seconds] * rate_hz).astype(np.int64),
    )


def write_wfdb(rec: SyntheticRecording, directory: str | Path, name: str = "synthetic") -> Path:
    """Write `rec` as a WFDB record (BIDMC-style header comment), so every record reader and the replay tool
    treat the synthetic recording like a PhysioNet one.

    Parameters
    ----------
    rec : the recording (signals at one rate, age and sex set).
    directory : where to write (created if missing).
    name : record name (the `.hea` / `.dat` file stem).

    Returns
    -------
    The record path without suffix, as `operators.io.records.read_recording` takes it.
    """
    import wfdb  # archive I/O is allowed in operators/; imported lazily so synthesize() stays numpy-only

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(rec.signals)
    sig = np.column_stack([rec.signals[k].astype(np.float64) for k in names])
    wfdb.wrsamp(
        name,
        fs=_one_rate(rec),
        units=[rec.units[k] for k in names],
        sig_name=names,
        p_signal=sig,
        fmt=["16"] * len(names),
        comments=[f"<age>: {rec.age:g} <sex>: {rec.sex} <synthetic>: seed {rec.name}"],
        write_dir=str(directory),
    )
    return directory / name
