"""A recording as a monitor that samples some signals at another rate (e.g. PLETH at 25 Hz, for super-resolution)."""
from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction
from typing import Mapping

import numpy as np

from operators.io.records import Recording, canonical_name
from operators.processing.samples import fill_nonfinite


def resample_recording(rec: Recording, targets: Mapping[str, float]) -> Recording:
    """Polyphase-resample the named signals so a 125 Hz record acts as, say, a 25 Hz monitor.

    NaN runs are bridged for filtering, then output samples that fall inside a run are NaN again.

    Parameters
    ----------
    rec : Recording
        The recording; not changed.
    targets : mapping of str to float
        Signal name (any spelling `canonical_name` knows) -> new rate in Hz, e.g. {"PLETH": 25}.

    Returns
    -------
    Recording
        `rec` itself when `targets` is empty, else a copy with the named signals (float32) and rates replaced.

    Raises
    ------
    ValueError
        A named signal is missing or all NaN, or a rate is not a positive finite number.
    """
    from scipy.signal import resample_poly

    if not targets:
        return rec
    signals, rates = dict(rec.signals), dict(rec.rates)
    for name, target in targets.items():
        name = canonical_name(name)
        if name not in signals:
            raise ValueError(f"cannot resample {name}: record {rec.name} has {', '.join(signals)}")
        src_rate = rates[name]
        if not (target > 0 and math.isfinite(target)):
            raise ValueError(f"resample target for {name} must be > 0 Hz, got {target}")
        if math.isclose(src_rate, target):
            continue
        ratio = Fraction(float(target) / float(src_rate)).limit_denominator(1000)
        x = signals[name].astype(np.float64)
        bad = ~np.isfinite(x)
        if bad.all():
            raise ValueError(f"{rec.name}/{name} has no finite samples to resample")
        x, _ = fill_nonfinite(x)
        y = resample_poly(x, ratio.numerator, ratio.denominator)
        n_out = int(round(x.size * target / src_rate))
        y = y[:n_out]
        if bad.any():
            # An output sample is invalid when the source samples around its time are.
            src_pos = np.arange(y.size) * (src_rate / target)
            lo = np.clip(np.floor(src_pos).astype(int), 0, x.size - 1)
            hi = np.clip(np.ceil(src_pos).astype(int), 0, x.size - 1)
            y[bad[lo] | bad[hi]] = np.nan
        signals[name] = y.astype(np.float32)
        rates[name] = float(target)
    return replace(rec, signals=signals, rates=rates)
