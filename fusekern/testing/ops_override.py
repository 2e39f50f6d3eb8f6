"""Pin the launch configuration of the Triton loss kernels (tests and ``benchmarks/gpu_check.py``).

E.g. exercise the streaming loop with tiny blocks under the interpreter, or compare variants on a
GPU. Sets :data:`fusekern.ops._backend.PINNED_CONFIG`, which :func:`~fusekern.ops._backend.launch_config`
reads.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from fusekern.ops._backend import PINNED_CONFIG


@contextlib.contextmanager
def override_config(
    *, single: bool | None = None, block_v: int | None = None, num_warps: int | None = None
) -> Iterator[None]:
    """Pin ``single`` (row held in registers), ``block_v`` (streaming block, a power of two >= 16)
    and/or ``num_warps`` for kernel launches of this thread, inside the ``with`` block."""
    if block_v is not None and (block_v < 16 or block_v & (block_v - 1)):
        raise ValueError(f"block_v must be a power of two >= 16, got {block_v}")
    old = getattr(PINNED_CONFIG, "cfg", None)
    new = dict(old or {})
    for key, val in (("single", single), ("block_v", block_v), ("num_warps", num_warps)):
        if val is not None:
            new[key] = val
    PINNED_CONFIG.cfg = new
    try:
        yield
    finally:
        PINNED_CONFIG.cfg = old


__all__ = ["override_config"]
