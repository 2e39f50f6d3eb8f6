"""Dense FuseLLM-style reference implementations (tests and benchmarks only).

This is the recipe of FuseLLM's released collator + trainer, written from its description: every
source's ``softmax(top-k / T)`` is scattered into a dense ``[N, V]`` target, the S dense targets
are combined with MinCE / AvgCE weights, and the loss is a soft-target cross-entropy (or KL)
against ``log_softmax(student)`` with autograd. It allocates several N×V buffers — exactly the
cost the fused ops avoid — but it is simple enough to trust. Computes in the student's dtype
(tests pass float64); semantics follow the API contract (mean over contributing positions, 0
when none contributes).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def dense_source_probs(
    ids: torch.Tensor, logits: torch.Tensor, vocab_size: int, temperature: float, dtype: torch.dtype
) -> torch.Tensor:
    """One source: ids/logits ``[N, K]`` -> dense ``[N, V]`` renormalised top-k (rows of an absent
    source are all zero; duplicate ids add)."""
    valid = ids >= 0
    z = (logits.to(dtype) / temperature).masked_fill(~valid, float("-inf"))
    present = valid.any(-1, keepdim=True)
    p = torch.softmax(z.masked_fill(~present, 0.0), dim=-1) * valid
    dense = torch.zeros(ids.shape[0], vocab_size, dtype=dtype, device=ids.device)
    return dense.scatter_add_(1, ids.clamp_min(0).long(), p)


def dense_merge(
    ids: torch.Tensor,
    logits: torch.Tensor,
    source_ce: torch.Tensor,
    vocab_size: int,
    *,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """ids/logits ``[N, S, K]``, source_ce ``[N, S]`` -> (dense fused target ``[N, V]``, present ``[N]``)."""
    S = ids.shape[1]
    dense = [
        dense_source_probs(ids[:, s], logits[:, s], vocab_size, teacher_temperature, dtype) for s in range(S)
    ]
    present = (ids >= 0).any(-1)  # [N, S]
    ce = source_ce.to(dtype)
    if method == "min_ce":
        pick = torch.argmin(ce.masked_fill(~present, float("inf")), dim=1)  # first minimum
        w = F.one_hot(pick, S).to(dtype) * present.any(1, keepdim=True)
    elif method == "avg_ce":
        scores = torch.exp(-ce.masked_fill(~present, 0.0)).masked_fill(~present, float("-inf"))
        w = torch.softmax(scores, dim=1).nan_to_num(0.0)
    else:
        raise ValueError(f"method must be 'min_ce' or 'avg_ce', got {method!r}")
    target = sum(w[:, s : s + 1] * dense[s] for s in range(S))
    return target, present.any(1)


def dense_loss(
    student_logits: torch.Tensor,
    target: torch.Tensor,
    contrib: torch.Tensor,
    *,
    loss_type: str = "kl",
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft-target CE / KL of ``target`` [N, V] against ``softmax(student_logits)`` on rows where
    ``contrib`` is True."""
    x = student_logits.to(target.dtype)
    logq = torch.log_softmax(x, dim=-1)
    rows = -(target * logq).sum(-1)
    if loss_type == "kl":
        rows = rows + torch.xlogy(target, target).sum(-1)
    rows = torch.where(contrib, rows, torch.zeros_like(rows))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / contrib.sum().clamp_min(1)


def sparse_kl_loss_ref(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    dtype = dtype or student_logits.dtype
    V = student_logits.shape[-1]
    target = dense_source_probs(teacher_ids, teacher_logits, V, teacher_temperature, dtype)
    contrib = (teacher_ids >= 0).any(-1)
    if ignore_mask is not None:
        contrib = contrib & ~ignore_mask
    return dense_loss(student_logits, target, contrib, loss_type=loss_type, reduction=reduction)


def merge_topk_ref(
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    vocab_size: int,
    *,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense ``[N, V]`` fused teacher (compare with ``merge_topk`` output scattered densely)."""
    return dense_merge(
        teacher_ids,
        teacher_logits,
        source_ce,
        vocab_size,
        method=method,
        teacher_temperature=teacher_temperature,
        dtype=dtype,
    )[0]


def fusion_loss_ref(
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
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    dtype = dtype or student_logits.dtype
    target, contrib = dense_merge(
        teacher_ids,
        teacher_logits,
        source_ce,
        student_logits.shape[-1],
        method=method,
        teacher_temperature=teacher_temperature,
        dtype=dtype,
    )
    if ignore_mask is not None:
        contrib = contrib & ~ignore_mask
    return dense_loss(student_logits, target, contrib, loss_type=loss_type, reduction=reduction)


def fusion_module_ref(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    *,
    lm_weight: float = 0.9,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``FusionLoss`` the FuseLLM way: shifted CLM cross-entropy plus the dense fusion term on
    positions t < T−1 whose next label is not −100 (two separate losses, dense targets)."""
    dtype = dtype or logits.dtype
    B, T, V = logits.shape
    S, K = teacher_ids.shape[-2:]
    if source_ce.dim() == 2:
        source_ce = source_ce[:, None, :].expand(B, T, S)
    x = logits[:, :-1].reshape(-1, V).to(dtype)
    nxt = labels[:, 1:].reshape(-1).long()
    n_lm = (nxt != -100).sum()
    clm = F.cross_entropy(x, nxt, ignore_index=-100, reduction="sum") / n_lm.clamp_min(1)
    fus = fusion_loss_ref(
        x,
        teacher_ids[:, :-1].reshape(-1, S, K),
        teacher_logits[:, :-1].reshape(-1, S, K),
        source_ce[:, :-1].reshape(-1, S),
        method=method,
        teacher_temperature=teacher_temperature,
        loss_type=loss_type,
        ignore_mask=nxt == -100,
        reduction="mean",
        dtype=dtype,
    )
    return lm_weight * clm + (1.0 - lm_weight) * fus
