"""``fusion_loss``: merge S source teachers (MinCE / AvgCE) and distil into the student in one
pass — the merged teacher never leaves registers and the student logits are streamed once.

The engine's row kernel (:mod:`fusekern.ops.engine.triton_rows`) specialised with ``METHOD`` =
1 (min_ce) or 2 (avg_ce); the PyTorch path merges with
:func:`~fusekern.ops.engine.torch_teacher.merge_probs` (small, all rows at once) and then runs
the same chunked row pass as ``sparse_kl_loss``.
"""

from __future__ import annotations

import torch

from . import _validate as V_
from .options import METHODS, check_choice
from .sparse_kl import distill_loss


def fusion_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    *,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Merge S top-k teachers by quality and compute the distillation loss, fused.

    Equals ``sparse_kl_loss(student_logits, ids, probs.log(), ...)`` with
    ``(ids, probs) = merge_topk(teacher_ids, teacher_logits, source_ce, method=...)``.

    Args:
        student_logits: ``[N, V]`` float (must be finite on contributing rows).
        teacher_ids: ``[N, S, K]`` signed integer ids in ``[0, V)``; negative = padding.
        teacher_logits: ``[N, S, K]`` raw source logits (finite at valid entries; fp16 is fine).
        source_ce: ``[N, S]`` per-source CE on the gold text (lower = better); must be >= 0 and
            not NaN where the source is present (+inf = worst), ignored where absent.
        method: ``"min_ce"`` (lowest CE, ties -> lowest source index) or ``"avg_ce"``
            (weights ``softmax_s(exp(-ce_s))`` over present sources).
        teacher_temperature, loss_type, ignore_mask, reduction, backend: as in
            :func:`~fusekern.ops.sparse_kl.sparse_kl_loss`. A position with no present source
            contributes nothing.
    """
    x = V_.check_logits(student_logits, "student_logits", 2)
    V_.check_teacher(teacher_ids, teacher_logits, source_ce, (x.shape[0],), x)
    check_choice(method, METHODS, "method")
    return distill_loss(
        x,
        teacher_ids,
        teacher_logits,
        source_ce,
        method=method,
        teacher_temperature=teacher_temperature,
        loss_type=loss_type,
        ignore_mask=ignore_mask,
        reduction=reduction,
        backend=backend,
        names={"ids": "teacher_ids", "logits": "teacher_logits", "ce": "source_ce"},
    )


__all__ = ["fusion_loss"]
