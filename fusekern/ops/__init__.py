"""Loss ops: sparse top-k distillation, quality-weighted merge and the fused fusion loss.

- ``sparse_kl.py``, ``merge_topk.py``, ``fusion_loss.py``: the public ops (argument checks only);
- ``engine/``: the computation they share with ``FusionLoss`` / ``LinearFusionLoss`` — Triton
  kernels, the chunked PyTorch row pass and the autograd Functions;
- ``options.py``: option names and checks (pure Python), ``_validate.py``: tensor checks,
  ``_backend.py``: backend choice and kernel launch configuration.

The ops are resolved lazily, so ``fusekern.ops.options`` can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "fusion_loss": "fusekern.ops.fusion_loss",
    "merge_topk": "fusekern.ops.merge_topk",
    "sparse_kl_loss": "fusekern.ops.sparse_kl",
}

__all__ = ["fusion_loss", "merge_topk", "sparse_kl_loss"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fusekern.ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
