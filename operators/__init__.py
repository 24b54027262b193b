"""wavebridge's signal layer: numpy/scipy only (no Kafka, no torch; wfdb/pyarrow only to read archives).

Subpackages by job:
- `operators.io`: recordings in and out (WFDB/Parquet/CSV reader, deterministic synthetic ECG + PPG);
- `operators.processing`: functions on sample arrays (NaN repair and timestamp grid, resampling, R-peak and
  pulse detection, signal quality, beat-based ECG super-resolution, metrics, injected artifacts, alarm
  verification);
- `operators.state`: per-bed streaming state (sliding windows, patient context);
- `operators.translator`: the seam between the stream and any translator (Protocol, request, spec loader);
- `operators.classic`: the classic, non-learned translators;
- `operators.vocab`: the vocabulary every layer shares (signal names, tasks, rates, topic defaults).

The names below are what the other layers use most; each is also importable from its module. Imports are
lazy: `import operators` loads no submodule until a name is used.
"""
from operators._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "operators.vocab": ["ECG", "PPG", "SYNTH_ECG", "PPG2ECG", "SR", "TASKS", "is_ecg_signal"],
    "operators.translator": ["PairedContext", "TaskRouter", "TranslationRequest",
                             "Translator", "load_translator", "output_length"],
    "operators.classic": ["ClassicTranslator"],
    "operators.io.records": ["Recording", "read_recording"],
    "operators.state.windowing": ["SlidingWindower"],
    "operators.state.context": ["ContextStore"],
    "operators.processing.quality": ["SignalQuality", "assess"],
    "operators.processing.resample": ["resample"],
    "operators.processing.samples": ["fill_nonfinite", "fit_length", "grid_ns"],
})
