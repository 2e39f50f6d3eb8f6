"""Argument checks shared by the aligner's Python face (the C++ side checks the tokens)."""

from __future__ import annotations

import numbers

from fusekern.align._native import MAX_THREADS  # the C++ side checks it too


def threads_arg(threads: int | None) -> int:
    """``None`` -> 0 (the C++ side reads it as "all hardware threads", at most MAX_THREADS);
    else an int in [1, MAX_THREADS]: more threads than that is a mistake, not a speed-up."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for all cores), got {threads}")
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be <= {MAX_THREADS}, got {threads}")
    return int(threads)


def band_arg(band: int | None) -> int:
    """``None`` -> -1 (full DTW); else an int >= 0 (tokens on each side of the guide)."""
    if band is None:
        return -1
    if isinstance(band, bool) or not isinstance(band, numbers.Integral):
        raise TypeError(f"band must be an int or None, got {type(band).__name__}")
    if band < 0:
        raise ValueError(f"band must be >= 0 (or None for the full DTW), got {band}")
    # wider than any sequence is the whole grid (still subject to the DTW memory limit)
    return min(int(band), 2**62)


def on_mismatch_arg(on_mismatch: str) -> bool:
    """Returns True when mismatched pairs should raise."""
    if on_mismatch not in ("raise", "none"):
        raise ValueError(f"on_mismatch must be 'raise' or 'none', got {on_mismatch!r}")
    return on_mismatch == "raise"
