"""Injected artifacts for testing and measuring signal-quality detectors (`operators.processing.quality`).

Each function returns a corrupted copy of `x` over the sample span `[a, b)`; the rest is untouched. They model
what bedside monitors deliver when something goes wrong:

- `flat`: the lead or probe is off and the monitor holds its last value (lead-off / probe-off);
- `noise`: broadband noise `level` times the span's clean standard deviation is added (electrode or
  electrical noise);
- `clipping`: the signal saturates at its `level` quantile (ADC or display rails): pulse tops are cut;
- `motion`: band-limited 0.5-3 Hz random swings of `level` times the span's clean peak-to-peak, inside the
  cardiac band (a moving hand or patient);
- `nan_run`: samples are invalid (NaN), as a monitor marks a dropout;
- `probe_noise`: the probe is off but the sensor still reports: the value at `a` plus white noise of `level` times
  the span's clean peak-to-peak (no pulse; not an exact constant, so the flat check alone does not see it).

Amplitudes come from the span itself, so artifacts injected one after another into a record do not compound.
Plain numpy; seeded by the caller's `numpy.random.Generator`.
"""
from __future__ import annotations

import numpy as np

from operators.processing.filters import butter_sos, sosfiltfilt

__all__ = ["ARTIFACTS", "inject", "flat", "noise", "clipping", "motion", "nan_run", "probe_noise", "pink_noise"]


def _copy(x: np.ndarray) -> np.ndarray:
    return np.array(x, dtype=np.float64, copy=True)


def flat(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator, level: float = 0.0) -> np.ndarray:
    """Hold the value at `a` over `[a, b)` (`level` unused)."""
    y = _copy(x)
    y[a:b] = y[a] if a < len(y) else 0.0
    return y


def noise(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator, level: float = 2.0) -> np.ndarray:
    """Add white Gaussian noise of `level` x the span's standard deviation over `[a, b)`."""
    y = _copy(x)
    y[a:b] += level * float(np.nanstd(x[a:b])) * rng.standard_normal(max(0, min(b, len(y)) - a))
    return y


def clipping(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator, level: float = 0.6) -> np.ndarray:
    """Saturate `[a, b)` at the clean signal's `level` quantile (above it every sample reads the rail)."""
    y = _copy(x)
    rail = float(np.nanquantile(x[a:b], level))
    y[a:b] = np.minimum(y[a:b], rail)
    return y


def motion(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator, level: float = 2.0) -> np.ndarray:
    """Add 0.5-3 Hz band-limited random swings, `level` x the span's peak-to-peak at their largest, over `[a, b)`."""
    y = _copy(x)
    n = max(0, min(b, len(y)) - a)
    if n < 8:
        return y
    w = rng.standard_normal(n + int(2 * fs_hz))
    hi = min(3.0, 0.45 * fs_hz)
    w = sosfiltfilt(butter_sos(2, (0.5, hi), "band", fs_hz), w)[int(fs_hz): int(fs_hz) + n]
    w *= level * float(np.nanmax(x[a:b]) - np.nanmin(x[a:b])) / max(float(np.max(np.abs(w))), 1e-12)
    y[a:a + n] += w * np.hanning(n) ** 0.25  # soft edges: a motion starts and ends, it does not step
    return y


def nan_run(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator, level: float = 0.0) -> np.ndarray:
    """Mark `[a, b)` invalid (NaN)."""
    y = _copy(x)
    y[a:b] = np.nan
    return y


def probe_noise(x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator,
                level: float = 0.01) -> np.ndarray:
    """Hold the value at `a` over `[a, b)` plus white noise of `level` x the span's clean peak-to-peak."""
    y = flat(x, a, b, fs_hz, rng)
    n = max(0, min(b, len(y)) - a)
    y[a:a + n] += level * float(np.nanmax(x[a:b]) - np.nanmin(x[a:b])) * rng.standard_normal(n) if n else 0.0
    return y


ARTIFACTS = {"flat": flat, "noise": noise, "clipping": clipping, "motion": motion, "nan": nan_run,
             "probe_noise": probe_noise}


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of zero-mean pink (1/f power) Gaussian noise: a signal-free window with more slow power than
    white noise, as electrode and baseline noise have.

    Parameters
    ----------
    n : number of samples.
    rng : random generator.
    """
    f = np.fft.rfftfreq(n)
    spec = rng.standard_normal(len(f)) + 1j * rng.standard_normal(len(f))
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def inject(kind: str, x: np.ndarray, a: int, b: int, fs_hz: float, rng: np.random.Generator,
           level: float | None = None) -> np.ndarray:
    """Corrupted copy of `x` over `[a, b)` with artifact `kind` (a key of `ARTIFACTS`).

    Every artifact function takes the same arguments as this one, minus `kind`.

    Parameters
    ----------
    kind : "flat", "noise", "clipping", "motion" or "nan".
    x : clean samples (not changed).
    a, b : the corrupted span (sample indices, `b` exclusive).
    fs_hz : sample rate (Hz).
    rng : random generator (noise, motion).
    level : the artifact's strength (its function's default if None; meaning per function).

    Returns
    -------
    float64 copy of `x`.
    """
    try:
        fn = ARTIFACTS[kind]
    except KeyError:
        raise ValueError(f"unknown artifact {kind!r} (one of {', '.join(ARTIFACTS)})") from None
    return fn(x, a, b, fs_hz, rng) if level is None else fn(x, a, b, fs_hz, rng, level)
