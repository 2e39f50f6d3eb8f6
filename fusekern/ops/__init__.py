"""Loss ops: sparse top-k distillation, quality-weighted merge and the fused fusion loss.

Each module holds its Triton kernel(s), the autograd glue and a chunked PyTorch path;
``reference.py`` is the dense FuseLLM-style implementation used by tests and benchmarks.
"""

from .fusion_loss import fusion_loss
from .merge_topk import merge_topk
from .sparse_kl import sparse_kl_loss

__all__ = ["fusion_loss", "merge_topk", "sparse_kl_loss"]
