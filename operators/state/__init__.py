"""Per-bed streaming state, shared by the stream worker and offline mode: sliding windows with exact
timestamps, gaps and look-ahead (`windowing`), and the patient's paired ECG + PPG context (`context`).

Imports are lazy.
"""
from operators._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "operators.state.windowing": ["PushResult", "SlidingWindower", "StreamEvent", "Window"],
    "operators.state.context": ["ContextCache", "ContextStore", "select_context"],
})
