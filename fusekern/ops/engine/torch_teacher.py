"""PyTorch: the merged sparse teacher of every position at once, and its entropy.

The teacher is small (N·S·K entries), so it is built for all rows together, never chunked.
"""

from __future__ import annotations

from typing import Tuple

import torch


def merge_probs(
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    method: str | None,
    temperature: float,
    acc: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merged teacher probabilities of ``[..., S, K]`` ids/logits -> (probs [..., S, K] in
    ``acc``, valid [..., S, K]).

    ``ce`` [..., S] source CE (read for ``min_ce``/``avg_ce``); ``method=None`` means a single
    teacher (S = 1, weight 1 where present).
    """
    valid = ids >= 0
    present = valid.any(-1)
    z = logits.to(acc).masked_fill(~valid, float("-inf"))
    z_max = z.amax(-1, keepdim=True).masked_fill(~present[..., None], 0.0)
    # shift before scaling by 1/T, max entries exactly 0: a tiny T gives the T -> 0 limit, not NaN
    shifted = z - z_max
    shifted = torch.where(shifted == 0, shifted, shifted * (1.0 / temperature))
    expz = torch.exp(shifted).masked_fill(~valid, 0.0)
    p = expz / expz.sum(-1, keepdim=True).masked_fill(~present[..., None], 1.0)
    if method is None:
        weight = present.to(acc)
    elif method == "min_ce":
        # in CE's own dtype, not acc: fp64 CEs closer than fp32 resolution are not a tie
        ce_present = ce.masked_fill(~present, float("inf"))
        best = present & (ce_present == ce_present.amin(-1, keepdim=True))
        pick = torch.argmax(best.to(torch.int8), dim=-1)  # first True = lowest source index
        weight = torch.nn.functional.one_hot(pick, ids.shape[-2]).to(acc) * present.any(-1, keepdim=True)
    else:  # avg_ce: softmax_s(exp(-ce_s)) over present sources
        score = torch.exp(torch.exp(-ce.to(acc).masked_fill(~present, 0.0))).masked_fill(~present, 0.0)
        total = score.sum(-1, keepdim=True)
        weight = score / total.masked_fill(total == 0, 1.0)
    return p * weight[..., None], valid


def teacher_entropy(ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``Σ_v p_v log p_v`` per row of a sparse teacher whose ids may repeat (their probabilities
    add): sort each row, sum the segments of equal ids, ``xlogy`` the totals. ids/probs ``[N, M]``
    (padding: any negative id with probability 0). O(N·M log M), instead of an M×M comparison
    per row."""
    if ids.shape[1] == 0:
        return probs.new_zeros(probs.shape[0])
    ids_sorted, order = ids.sort(1)
    p_sorted = probs.gather(1, order)
    starts = torch.ones_like(ids_sorted, dtype=torch.bool)
    starts[:, 1:] = ids_sorted[:, 1:] != ids_sorted[:, :-1]
    segment = starts.cumsum(1) - 1
    totals = torch.zeros_like(p_sorted).scatter_add_(1, segment, p_sorted)
    return torch.xlogy(totals, totals).sum(1)
