"""Signal processing on sample arrays: stateless functions, numpy/scipy only.

- `samples`: NaN/inf repair, fit to length, the exact ns timestamp grid (shared by every layer);
- `resample`: rate conversion with sample 0 kept at its instant (`resample.resample`, `decimate_to`);
- `rpeaks`: R peaks in ECG, pulse peaks and feet in PPG, heart rate;
- `quality`: per-window signal quality (class, score, reason) and confidence;
- `beatsr`: ECG super-resolution from a context beat's QRS;
- `metrics`: peak F1, heart-rate error, windowed Pearson/RMSE;
- `artifacts`: artifacts injected into clean signals (tests, benchmarks);
- `alarms`: bedside-alarm verification from every channel's evidence.

The function `resample` is not re-exported here (it would shadow its module): use
`operators.processing.resample.resample` or `operators.resample`. Imports are lazy.
"""
from operators._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "operators.processing.samples": ["fill_nonfinite", "fit_length", "grid_ns", "period_ns", "true_runs"],
    "operators.processing.resample": ["decimate_to", "merge_bands"],
    "operators.processing.rpeaks": ["detect_ppg_peaks", "detect_rpeaks", "heart_rate_bpm", "ppg_foot_times",
                                    "refine_peak_times"],
    "operators.processing.quality": ["DEGRADED", "GOOD", "UNUSABLE", "SignalQuality", "assess", "confidence"],
    "operators.processing.beatsr": ["paste_high_band", "qrs_template", "sr_cutoff_hz"],
    "operators.processing.metrics": ["hr_mae", "peak_f1", "windowed_pearson_rmse"],
    "operators.processing.artifacts": ["ARTIFACTS", "inject"],
    "operators.processing.alarms": ["AlarmVerdict", "verify_alarm"],
})
