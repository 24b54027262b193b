"""Decoded chunks and events as Arrow tables, and a run's collection as Parquet files (`wavebridge demo`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from operators.processing.samples import grid_ns
from stream.tools.collector import Collected

# Role of a collected topic -> its Parquet file.
FILES = {"input": "input.parquet", "synth": "ecg_synth.parquet", "sr": "sr.parquet", "events": "events.parquet"}


def chunks_to_table(chunks: Sequence):
    """One row per sample with its true timestamp; sorted by bed, signal, time, de-duplicated
    (a worker restart may re-send outputs; equal timestamps carry equal values). Output chunks add their quality
    metadata per sample: `quality`, `quality_flag`, `confidence`, `synthetic` (null for inputs)."""
    import pyarrow as pa

    cols = {"bed": [], "signal": [], "time": [], "value": [], "rate_hz": [], "quality": [], "quality_flag": [],
            "confidence": [], "synthetic": []}
    for c in chunks:
        n = len(c.samples)
        meta = getattr(c, "meta", {}) or {}
        cols["bed"].append(np.full(n, c.bed_id, dtype=object))
        cols["signal"].append(np.full(n, c.signal, dtype=object))
        cols["time"].append(grid_ns(c.start_ns, c.rate_hz, np.arange(n)))
        cols["value"].append(np.asarray(c.samples, dtype=np.float32))
        cols["rate_hz"].append(np.full(n, c.rate_hz, dtype=np.float32))
        cols["quality"].append(np.full(n, np.nan if meta.get("quality") is None else meta["quality"], np.float32))
        cols["quality_flag"].append(np.full(n, meta.get("quality_flag"), dtype=object))
        cols["confidence"].append(np.full(n, np.nan if meta.get("confidence") is None else meta["confidence"], np.float32))
        cols["synthetic"].append(np.full(n, meta.get("synthetic"), dtype=object))
    dtypes = {"bed": object, "signal": object, "time": np.int64, "value": np.float32, "rate_hz": np.float32,
              "quality": np.float32, "quality_flag": object, "confidence": np.float32, "synthetic": object}
    if not chunks:
        arrays = {k: np.zeros(0, dtype=dt) for k, dt in dtypes.items()}
    else:
        arrays = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.lexsort((arrays["time"], arrays["signal"].astype(str), arrays["bed"].astype(str)))
    arrays = {k: v[order] for k, v in arrays.items()}
    if len(order):
        key_change = np.ones(len(order), dtype=bool)
        key_change[1:] = ((arrays["bed"][1:] != arrays["bed"][:-1]) | (arrays["signal"][1:] != arrays["signal"][:-1])
                          | (arrays["time"][1:] != arrays["time"][:-1]))
        arrays = {k: v[key_change] for k, v in arrays.items()}
    return pa.table({
        "bed": pa.array(arrays["bed"].astype(str), pa.string()),
        "signal": pa.array(arrays["signal"].astype(str), pa.string()),
        "time": pa.array(arrays["time"], pa.timestamp("ns", tz="UTC")),
        "value": pa.array(arrays["value"], pa.float32()),
        "rate_hz": pa.array(arrays["rate_hz"], pa.float32()),
        "quality": pa.array(arrays["quality"], pa.float32(), from_pandas=True),
        "quality_flag": pa.array(list(arrays["quality_flag"]), pa.string()),
        "confidence": pa.array(arrays["confidence"], pa.float32(), from_pandas=True),
        "synthetic": pa.array(list(arrays["synthetic"]), pa.bool_()),
    })


def events_table(events: Sequence[dict]):
    """One row per event of the events topic: what the outputs' quality and R-peaks were, span by span."""
    import pyarrow as pa

    def col(key, typ):
        return pa.array([e.get(key) for e in events], typ)

    return pa.table({
        "bed": col("bed", pa.string()), "type": col("type", pa.string()), "signal": col("signal", pa.string()),
        "time": pa.array([e.get("time_ns") for e in events], pa.timestamp("ns", tz="UTC")),
        "end": pa.array([e.get("end_ns", e.get("until_ns")) for e in events], pa.timestamp("ns", tz="UTC")),
        "reason": col("reason", pa.string()), "quality": col("quality", pa.float64()),
        "quality_flag": col("quality_flag", pa.string()), "confidence": col("confidence", pa.float64()),
        "hr_bpm": col("hr_bpm", pa.float64()), "n_peaks": pa.array([len(e.get("peaks_ns") or []) for e in events], pa.int32()),
        "json": pa.array([json.dumps(e, separators=(",", ":")) for e in events], pa.string()),
    })


def write_parquet(data: Collected, out: Path) -> dict[str, Path]:
    """One Parquet file per role under `out` (names in `FILES`); returns role -> path."""
    import pyarrow.parquet as pq

    paths = {role: out / name for role, name in FILES.items()}
    for role in ("input", "synth", "sr"):
        pq.write_table(chunks_to_table(data.chunks[role]), paths[role])
    pq.write_table(events_table(data.events), paths["events"])
    return paths
