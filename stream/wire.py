"""Wire format of waveform chunks (see docs/wire-format.md).

TODO(helper: wire): JSON + compact binary encode/decode, validation with reasons.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """A run of consecutive samples of one signal of one bed."""

    bed_id: str
    signal: str  # e.g. "PLETH", "II" (lead II ECG), "II_SYNTH"
    rate_hz: float
    start_ns: int  # timestamp of samples[0], ns since the Unix epoch
    seq: int  # per (bed, signal) sequence number, +1 per chunk
    samples: np.ndarray  # float32
    units: str = ""
    age: float | None = None
    sex: str | None = None  # "M" / "F"

    def end_ns(self) -> int:
        """Timestamp one sample period after the last sample."""
        return self.start_ns + int(round(len(self.samples) * 1e9 / self.rate_hz))
