"""``sparse_kl_loss``: student logits [N, V] against one teacher kept as top-k, never densified.

The public op only checks its arguments; the computation is the shared loss engine
(:mod:`fusekern.ops.engine`): the Triton row kernel on CUDA, the chunked PyTorch row pass
otherwise.
"""

from __future__ import annotations

import torch

from . import _validate as V_
from .engine.function import row_loss
from .options import LOSS_TYPES, REDUCTIONS, check_choice, check_temperature


def sparse_kl_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Distillation loss between student logits and a top-k teacher, never densifying the teacher.

    Args:
        student_logits: ``[N, V]`` float16/bfloat16/float32 (float64: PyTorch path). Must be
            finite on every row that contributes.
        teacher_ids: ``[N, K]`` signed integer ids in ``[0, V)``; negative = padding.
        teacher_logits: ``[N, K]`` raw teacher logits (finite at valid entries).
        teacher_temperature: ``p = softmax(teacher_logits / T)`` over the valid entries of a row.
        loss_type: ``"kl"`` = ``Σ p (log p − log q)``, ``"ce"`` = ``−Σ p log q`` (same gradient).
        ignore_mask: ``[N]`` bool, True = the row contributes nothing.
        reduction: ``"mean"`` over contributing rows (0, with zero gradient, when none
            contributes), ``"sum"``, or ``"none"`` (``[N]``, zeros where nothing contributes).
        backend: ``"auto" | "triton" | "torch"``.

    Returns float32 (float64 for float64 logits). Differentiable w.r.t. ``student_logits`` only;
    the teacher is a constant. Duplicate ids add their probabilities.
    """
    x = V_.check_logits(student_logits, "student_logits", 2)
    N = x.shape[0]
    V_.check_topk(teacher_ids, teacher_logits, (N,), x, "teacher_ids", "teacher_logits")
    return distill_loss(
        x,
        teacher_ids[:, None, :],
        teacher_logits[:, None, :],
        None,
        method=None,
        teacher_temperature=teacher_temperature,
        loss_type=loss_type,
        ignore_mask=ignore_mask,
        reduction=reduction,
        backend=backend,
        names={"ids": "teacher_ids", "logits": "teacher_logits"},
    )


def distill_loss(
    x: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    *,
    method: str | None,
    teacher_temperature: float,
    loss_type: str,
    ignore_mask: torch.Tensor | None,
    reduction: str,
    backend: str,
    names: dict,
) -> torch.Tensor:
    """The distillation-only loss (no CLM term) behind ``sparse_kl_loss`` and ``fusion_loss``:
    checks the options they share, then runs the engine. ``x`` [N, V] and the teacher
    ``[N, S, K]`` must already be checked by the caller."""
    check_choice(loss_type, LOSS_TYPES, "loss_type")
    check_choice(reduction, REDUCTIONS, "reduction")
    temp = check_temperature(teacher_temperature)
    keep = None if ignore_mask is None else ~V_.check_mask(ignore_mask, x.shape[0], x)
    loss, _clm, _distill = row_loss(
        x,
        ids,
        logits,
        ce,
        method=method,
        temperature=temp,
        kl=loss_type == "kl",
        keep=keep,
        labels=None,
        lm_weight=0.0,
        reduction=reduction,
        backend=backend,
        names=names,
    )
    return loss


__all__ = ["sparse_kl_loss"]
