"""``merge_topk``: quality-weighted merge of S source top-k teachers (FuseLLM MinCE / AvgCE).

Per position: ``p_s = softmax(logits_s / T)`` over the valid (id >= 0) entries of source s; a
source with no valid entry is absent. Weights over present sources:
- ``min_ce``: one-hot on the lowest ``source_ce`` (ties -> lowest source index);
- ``avg_ce``: ``softmax_s(exp(-ce_s))`` (FuseLLM's released formula; nearly uniform weights).
The merged teacher is ``Σ_s w_s p_s`` kept sparse as ``S·K`` (id, prob) entries, source-major.

The computation is the loss engine's teacher: :mod:`fusekern.ops.engine.triton_teacher` (whose
helpers the fused loss kernel inlines) and :mod:`fusekern.ops.engine.torch_teacher`.
"""

from __future__ import annotations

from typing import Tuple

import torch

from . import _validate as V_
from ._backend import resolve_backend
from .engine.torch_teacher import merge_probs
from .engine.triton_teacher import merge_topk_kernel, merge_topk_triton
from .options import METHODS, check_choice, check_temperature


def merge_topk(
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    *,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quality-weighted merge of S top-k teachers into one sparse teacher per position.

    Args:
        teacher_ids: ``[N, S, K]`` signed integer ids (negative = padding).
        teacher_logits: ``[N, S, K]`` float raw logits at those ids.
        source_ce: ``[N, S]`` float, each source's CE on the gold text (lower = better). Must be
            >= 0 and not NaN where the source is present (+inf = worst); ignored where absent.
        method: ``"min_ce"`` or ``"avg_ce"``.
        teacher_temperature: softmax temperature of the teacher logits.
        backend: ``"auto" | "triton" | "torch"``.

    Returns:
        ``(ids, probs)``, both ``[N, S·K]`` (source-major). ``ids`` keeps ``teacher_ids``' dtype;
        ``probs`` is float32 (float64 for float64 logits). Entries with zero merged probability
        are padding (id -1, prob 0). Each row sums to 1 where any source is present, else all
        padding. Ids may repeat (across sources); a consumer must add their probabilities.
    """
    V_.check_int(teacher_ids, "teacher_ids")
    lead = tuple(teacher_ids.shape[:1])
    V_.check_teacher(teacher_ids, teacher_logits, source_ce, lead, teacher_ids, "teacher_ids")
    check_choice(method, METHODS, "method")
    temp = check_temperature(teacher_temperature)
    V_.check_values(
        ids=teacher_ids,
        logits=teacher_logits,
        ids_name="teacher_ids",
        logits_name="teacher_logits",
        ce=source_ce,
    )
    N, S, K = teacher_ids.shape
    out_dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    impl = resolve_backend(backend, teacher_logits, merge_topk_kernel)
    if impl == "torch" or N == 0:
        probs, valid = merge_probs(teacher_ids, teacher_logits, source_ce, method, temp, out_dtype)
        keep = valid & (probs > 0)
        ids = torch.where(keep, teacher_ids, torch.full_like(teacher_ids, -1))
        return ids.reshape(N, S * K), probs.masked_fill(~keep, 0.0).reshape(N, S * K)
    return merge_topk_triton(teacher_ids, teacher_logits, source_ce, method, temp)


__all__ = ["merge_topk"]
