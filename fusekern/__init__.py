"""fusekern: fast, memory-lean knowledge fusion of large language models (FuseLLM).

Public names (see shared API contract) are resolved lazily so that ``import fusekern``
stays cheap: the loss ops pull in torch/triton, the trainer pulls in transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "sparse_kl_loss": "fusekern.ops.sparse_kl",
    "merge_topk": "fusekern.ops.merge_topk",
    "fusion_loss": "fusekern.ops.fusion_loss",
    "FusionLoss": "fusekern.loss",
    "LinearFusionLoss": "fusekern.linear_loss",
    "linear_fusion_loss": "fusekern.linear_loss",
    "FusionTrainer": "fusekern.trainer",
    "FusionDataCollator": "fusekern.trainer",
    "FusionArguments": "fusekern.trainer",
}

__all__ = [*_LAZY, "align", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "align":
        return importlib.import_module("fusekern.align")
    raise AttributeError(f"module 'fusekern' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
