"""``FusionLoss``: the drop-in training loss of a fused causal LM.

``loss = lm_weight · CLM + (1 − lm_weight) · fusion`` where CLM is the usual shifted
cross-entropy (labels −100 ignored) and fusion is the merged-teacher KL/CE at positions t whose
next label ``labels[:, t+1]`` is not −100 (and where some source is present).

Both terms come out of ONE pass over the logits (the engine's row pass with labels,
:mod:`fusekern.ops.engine`): per row it computes a single logsumexp and writes the combined
gradient ``clm_coef·(softmax − onehot(label)) + distill_coef·(softmax − p)`` with
``clm_coef = λ/n_clm`` and ``distill_coef = (1−λ)/n_fusion``,
instead of two losses each reading the logits and each producing an N×V gradient. The logits
are used as ``[B·T, V]`` rows in place — the shift is applied to the small label/teacher-mask
tensors, so no shifted copy of the logits is made.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import _validate as V_
from .ops.engine.function import row_loss
from .ops.options import LOSS_TYPES, METHODS, check_choice, check_lm_weight, check_temperature


class FusionLoss(nn.Module):
    """``λ·CLM + (1−λ)·fusion`` for a causal LM, fused into one pass over the logits.

    Args:
        lm_weight: λ in [0, 1]. A plain attribute: a trainer may change it between steps.
        method: ``"min_ce"`` or ``"avg_ce"`` (see :func:`fusekern.merge_topk`).
        teacher_temperature: temperature of the teacher softmax.
        loss_type: ``"kl"`` or ``"ce"``.
        backend: ``"auto" | "triton" | "torch"``.

    After each forward, ``last_clm`` and ``last_fusion`` hold the two (detached) means for logging.
    Each mean is taken over its own counted positions and is 0 when none counts.
    """

    def __init__(
        self,
        lm_weight: float = 0.9,
        method: str = "min_ce",
        teacher_temperature: float = 1.0,
        loss_type: str = "kl",
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        set_options(self, lm_weight, method, teacher_temperature, loss_type, backend)

    def extra_repr(self) -> str:
        return options_repr(self)

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_ids: torch.Tensor,
        teacher_logits: torch.Tensor,
        source_ce: torch.Tensor,
    ) -> torch.Tensor:
        """logits ``[B, T, V]``, labels ``[B, T]``, teacher_ids/teacher_logits ``[B, T, S, K]``,
        source_ce ``[B, T, S]`` (per token) or ``[B, S]`` (per sequence). Returns a scalar."""
        lam, temp = check_options(self)
        x = V_.check_logits(logits, "logits", 3)
        B, T, V = x.shape
        nxt, ids, t_logits, ce = flatten_batch(x, "logits", labels, teacher_ids, teacher_logits, source_ce)
        loss, clm, fusion = row_loss(
            x.reshape(B * T, V),
            ids,
            t_logits,
            ce,
            method=self.method,
            temperature=temp,
            kl=self.loss_type == "kl",
            keep=nxt != V_.IGNORE_INDEX,
            labels=nxt,
            lm_weight=lam,
            reduction="mean",
            backend=self.backend,
            names={**NAMES, "x": "logits"},
        )
        self.last_clm, self.last_fusion = clm, fusion
        return loss


def set_options(
    mod: nn.Module, lm_weight: float, method: str, teacher_temperature: float, loss_type: str, backend: str
) -> None:
    """Check and set the options FusionLoss and LinearFusionLoss share, and clear their last parts."""
    mod.lm_weight = check_lm_weight(lm_weight)
    mod.method = check_choice(method, METHODS, "method")
    mod.teacher_temperature = check_temperature(teacher_temperature)
    mod.loss_type = check_choice(loss_type, LOSS_TYPES, "loss_type")
    mod.backend = backend
    mod.last_clm = None  # detached CLM / fusion means of the last forward
    mod.last_fusion = None


def options_repr(mod: nn.Module) -> str:
    return (
        f"lm_weight={mod.lm_weight}, method={mod.method!r}, "
        f"teacher_temperature={mod.teacher_temperature}, loss_type={mod.loss_type!r}"
    )


def check_options(mod: nn.Module) -> tuple:
    """(λ, temperature) of a FusionLoss-like module, re-checked at every call: its options are
    plain attributes a trainer may change."""
    lam = check_lm_weight(mod.lm_weight)
    check_choice(mod.method, METHODS, "method")
    check_choice(mod.loss_type, LOSS_TYPES, "loss_type")
    return lam, check_temperature(mod.teacher_temperature)


NAMES = {"ids": "teacher_ids", "logits": "teacher_logits", "ce": "source_ce", "labels": "labels"}


def flatten_batch(
    ref: torch.Tensor,
    ref_name: str,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
) -> tuple:
    """Check a causal-LM fusion batch against ``ref`` ([B, T, ...], named ``ref_name``) and
    flatten it to rows: (next labels [B·T] (−100 = none), ids/logits [B·T, S, K], CE [B·T, S]).

    Row (b, t) predicts ``labels[b, t+1]``; the last position of each sequence predicts nothing.
    The shift is applied to these small tensors, never to the logits."""
    B, T = ref.shape[:2]
    what = f" (matching {ref_name} [B, T, ...])"
    V_.check_int(labels, "labels", "-100 = ignored")
    V_.check_shape(labels, [B, T], "labels", what)
    V_.check_device(labels, ref, "labels", ref_name)
    source_ce = V_.check_teacher(
        teacher_ids, teacher_logits, source_ce, (B, T), ref, ref_name, lead_dims="B, T", ce_per_sequence=True
    )
    S, K = teacher_ids.shape[2:]
    nxt = torch.full_like(labels, V_.IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    return (
        nxt.reshape(B * T),
        teacher_ids.reshape(B * T, S, K),
        teacher_logits.reshape(B * T, S, K),
        source_ce.reshape(B * T, S),
    )


__all__ = ["FusionLoss", "flatten_batch"]
