"""Backend dispatch for the loss ops: ``"auto" | "triton" | "torch"``.

``auto`` picks Triton for CUDA tensors of a dtype the kernels handle (fp16/bf16/fp32) and the
chunked PyTorch path otherwise. ``triton`` on CPU tensors runs only under ``TRITON_INTERPRET=1``
set before ``triton`` is first imported (the variable is read when ``@triton.jit`` decorates a
kernel, so a late ``os.environ`` change has no effect — we check the kernel objects themselves).

Launch configuration (block size over V, warps, single-read vs two-read row pass) comes from
:func:`launch_config`. Tests and ``benchmarks/gpu_check.py`` pin it with
``fusekern.testing.ops_override.override_config``, which sets :data:`PINNED_CONFIG` (the library
itself never pins it).
"""

from __future__ import annotations

import threading
from typing import Any, Dict

import torch

from .options import BACKENDS

try:  # triton is optional: without it every op runs the PyTorch path
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    HAS_TRITON = False

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Rows whose padded width fits in this many elements are processed with the whole row held in
# registers (one read of the logits); wider rows stream over V twice (the second read is meant
# to hit L2). 32768 covers 32k vocabularies (Llama-2, Mistral) with 64 fp32 values per thread at
# 16 warps, which compiles without spills (tests/test_triton_compile.py).
SINGLE_PASS_MAX = 32768
STREAM_BLOCK_V = {2: 8192, 4: 4096}  # elements per loop step for 2- and 4-byte logits
STREAM_WARPS = 8

# per thread: ``PINNED_CONFIG.cfg`` = {"single", "block_v", "num_warps"} (any subset) or unset
PINNED_CONFIG = threading.local()


def kernel_is_interpreted(kernel: Any) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def resolve_backend(backend: str, tensor: torch.Tensor, kernel: Any = None) -> str:
    """Return ``"triton"`` or ``"torch"`` for an op whose main input is ``tensor`` (its device
    and dtype decide; float64 always takes the PyTorch path).

    ``kernel`` is one of the op's Triton kernels (used to tell whether interpreter mode is on).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dev = tensor.device.type
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if HAS_TRITON and dev == "cuda" and tensor.dtype in TRITON_DTYPES:
            return "triton"
        return "torch"
    # explicit triton
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' requested but triton is not installed; use backend='torch'")
    if tensor.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"backend='triton' supports float16/bfloat16/float32 logits, got {tensor.dtype}; "
            "use backend='torch' (e.g. for float64)"
        )
    interpreted = kernel is not None and kernel_is_interpreted(kernel)
    if dev == "cuda":
        if interpreted:
            raise RuntimeError(
                "triton kernels were built in interpreter mode (TRITON_INTERPRET=1) and cannot run "
                "on CUDA tensors; unset TRITON_INTERPRET or move the tensors to the CPU"
            )
        return "triton"
    if dev == "cpu":
        if not interpreted:
            raise RuntimeError(
                "backend='triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
                "in the environment before triton (and fusekern.ops) is imported, or use "
                "backend='torch' / move the tensors to a CUDA device"
            )
        return "triton"
    raise RuntimeError(f"backend='triton' does not support {dev} tensors; use backend='torch'")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def launch_config(V: int, itemsize: int) -> Dict[str, Any]:
    """Kernel configuration for rows of ``V`` logits of ``itemsize`` bytes.

    Returns ``{"BLOCK_V", "SINGLE", "num_warps"}``. ``SINGLE`` rows are loaded once into
    registers; otherwise the kernel streams BLOCK_V-wide blocks twice.
    """
    cfg = dict(getattr(PINNED_CONFIG, "cfg", None) or {})
    vp = next_pow2(V)
    single = cfg.get("single", vp <= SINGLE_PASS_MAX)
    if single:
        block = max(vp, 16)
        warps = cfg.get("num_warps", max(4, min(16, block // 2048)))
    else:
        block = cfg.get("block_v", STREAM_BLOCK_V.get(itemsize, 4096))
        warps = cfg.get("num_warps", STREAM_WARPS)
    return {"BLOCK_V": int(block), "SINGLE": bool(single), "num_warps": int(warps)}
