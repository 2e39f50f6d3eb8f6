"""What is known before any logits row is read: which rows count, the counts and the gradient
coefficients. Computed over ALL rows up front, so processing the rows in chunks cannot change the
result."""

from __future__ import annotations

from typing import Tuple

import torch

from .._validate import IGNORE_INDEX


class RowPlan:
    """Rows and coefficients of one loss call.

    ``use`` [N] bool: the distillation term counts (a source is present and ``keep`` allows it);
    ``lab`` [N] int32 labels, −1 = none (None without labels); ``n_f`` / ``n_lm`` the distillation
    / CLM counts; ``coef`` [2] = (distill_coef, clm_coef), the gradient coefficients with the
    reductions' 1/count folded in.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        keep: torch.Tensor | None,
        labels: torch.Tensor | None,
        lm_weight: float,
        reduction: str,
        acc: torch.dtype,
    ) -> None:
        N = ids.shape[0]
        dev = ids.device
        use = (ids >= 0).flatten(1).any(1) if ids.numel() else torch.zeros(N, dtype=torch.bool, device=dev)
        self.use = use if keep is None else use & keep
        self.n_f = self.use.sum().to(acc)
        self.labels_given = labels is not None
        self.lm_weight, self.reduction, self.acc = lm_weight, reduction, acc
        if labels is not None:
            self.lab = torch.where(labels == IGNORE_INDEX, -1, labels).to(torch.int32)
            self.n_lm = (self.lab >= 0).sum().to(acc)
            self.coef = torch.stack(
                [(1.0 - lm_weight) / self.n_f.clamp_min(1), lm_weight / self.n_lm.clamp_min(1)]
            )
        else:
            self.lab = None
            one = torch.ones((), dtype=acc, device=dev)
            distill_coef = 1.0 / self.n_f.clamp_min(1) if reduction == "mean" else one
            self.coef = torch.stack([distill_coef, torch.zeros_like(one)])

    def finish(
        self, distill: torch.Tensor, clm: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, CLM mean, distillation mean) from the per-row terms; the two means are
        detached, each over its own counted rows (0 when none counts; CLM 0 without labels).

        With labels the loss is ``lm_weight·CLM + (1−lm_weight)·distill``; otherwise the
        reduction applies to the distillation rows."""
        distill = distill.to(self.acc)
        total = distill.sum()
        distill_mean = (total / self.n_f.clamp_min(1)).detach()
        if self.labels_given:
            clm_mean = (clm.to(self.acc).sum() / self.n_lm.clamp_min(1)).detach()
            return self.lm_weight * clm_mean + (1.0 - self.lm_weight) * distill_mean, clm_mean, distill_mean
        clm_mean = torch.zeros_like(distill_mean)
        if self.reduction == "none":
            return distill, clm_mean, distill_mean
        if self.reduction == "sum":
            return total, clm_mean, distill_mean
        return distill_mean.clone(), clm_mean, distill_mean
