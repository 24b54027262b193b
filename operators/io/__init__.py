"""Recordings in and out: one `Recording` type for archives (WFDB, Parquet, CSV) and synthetic data.

Imports are lazy (wfdb and pyarrow load only when a file of that kind is read or written).
"""
from operators._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "operators.io.records": ["MissingChannel", "Recording", "canonical_name", "read_recording"],
    "operators.io.synthetic": ["SyntheticRecording", "synthesize", "write_wfdb"],
})
