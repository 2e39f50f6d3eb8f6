"""Peak resident memory of one call, for the benchmarks (Linux /proc; CPU runs)."""

from __future__ import annotations

import gc
import time
from typing import Callable, Tuple


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def timed_peak(run: Callable[[], None]) -> Tuple[float, int]:
    """Wall time (s) of ``run()`` and the resident memory (bytes) it added at its peak: the
    high-water mark is reset first (``clear_refs`` 5), so earlier peaks do not count."""
    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    run()
    dt = time.perf_counter() - t0
    return dt, _status("VmHWM") - base
