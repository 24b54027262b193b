"""glibc malloc kept from handing a CPU forward pass's memory back to the kernel between layers.

Why it exists: a CLMT forward pass on the CPU allocates and frees, layer after layer, arrays of a few MB (rows x 64
channels x 800 samples of float32, RVQ distance matrices). With glibc's defaults each one is served by pages the
kernel has to map and zero again on first touch: large blocks come from mmap and are unmapped when freed, and the
heap they would otherwise come from is trimmed as soon as its free top exceeds a threshold that glibc sizes after
the last block freed. The page faults cost about a sixth of the worker's CPU with `clmt` (16 beds of bidmc01,
process CPU per bed-second, glibc defaults -> these settings: 125 Hz 7.45/8.02 -> 6.66/6.75 ms, 25 Hz
25.7/26.5 -> 19.7/20.9 ms; peak RSS 535 -> 549 MB). Allocations up to `MMAP_THRESHOLD_BYTES` then come from the
heap, and up to `TRIM_THRESHOLD_BYTES` of its free top stays mapped for the next pass. Values and numerics are
untouched: only where the memory comes from changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 256 << 20
# the process's own malloc settings win: these set the same parameters at start-up (GLIBC_TUNABLES when it names
# a glibc.malloc tunable)
ENV_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for the whole process (module doc), once.

    Returns
    -------
    bool
        Whether the settings are in force: False without glibc (macOS, musl), or when the environment already
        sets malloc parameters (`ENV_SETTINGS`), which are then left as they are.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    own = [v for v in ENV_SETTINGS if v in os.environ and (v != "GLIBC_TUNABLES" or "glibc.malloc." in os.environ[v])]
    if not sys.platform.startswith("linux") or own:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library with glibc's mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; musl has no mallopt, other libcs may refuse a value
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
