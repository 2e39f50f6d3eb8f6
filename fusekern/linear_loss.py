"""``LinearFusionLoss``: ``FusionLoss`` straight from the LM head, never materialising the
``[B·T, V]`` logits or their gradient.

``loss = LinearFusionLoss(...)(hidden, weight, labels, teacher_ids, teacher_logits, source_ce, bias)``
equals ``FusionLoss(...)(hidden @ weight.T + bias, labels, ...)`` in value and in the gradients of
``hidden``, ``weight`` and ``bias``.

How (the fused-linear pattern of Liger's FLCE, with the fusion teacher): everything that needs all
rows — which rows count for CLM / fusion, the two counts and so the gradient coefficients
(:class:`~fusekern.ops.engine.plan.RowPlan`) — is computed first, so chunking cannot change the
result; then the rows are processed a chunk of logits at a time and the gradients of hidden,
weight and bias are computed in forward (:mod:`fusekern.ops.engine.linear_rows`); backward only
scales them.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .loss import NAMES, check_options, flatten_batch, options_repr, set_options
from .ops import _validate as V_
from .ops.engine.function import linear_row_loss


def linear_fusion_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    lm_weight: float = 0.9,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    chunk_size: int | None = None,
    grad_accum_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Functional :class:`LinearFusionLoss` (same arguments); returns the scalar loss."""
    return LinearFusionLoss(
        lm_weight,
        method,
        teacher_temperature,
        loss_type,
        chunk_size=chunk_size,
        grad_accum_dtype=grad_accum_dtype,
        backend=backend,
    )(hidden, weight, labels, teacher_ids, teacher_logits, source_ce, bias)


class LinearFusionLoss(nn.Module):
    """``λ·CLM + (1−λ)·fusion`` of a causal LM computed from its final hidden states and its
    linear output head, in row chunks (see the module docstring).

    Args:
        lm_weight, method, teacher_temperature, loss_type: as :class:`fusekern.FusionLoss`.
        chunk_size: rows per chunk; default from a memory budget
            (:data:`fusekern.ops.engine.linear_rows.CHUNK_BUDGET`: 128 MiB of
            logits on CPU, 256 MiB on CUDA). Any value gives the same result up to float rounding.
        grad_accum_dtype: dtype in which ``grad_weight``/``grad_bias`` are accumulated over the
            chunks; default the weight's dtype. ``torch.float32`` for 16-bit weights adds one
            rounding per chunk instead of letting them pile up (costs a V×H fp32 buffer).
        backend: ``"auto" | "triton" | "torch"`` for the row pass (the GEMMs are torch's).

    Under ``torch.autocast`` hidden/weight/bias are cast to the autocast dtype first, as
    ``nn.Linear`` would be; otherwise they must share one dtype. ``last_clm`` / ``last_fusion``
    hold the two detached means after each forward. The output head must be exactly
    ``hidden @ weight.T + bias``: a model that soft-caps or scales its logits (Gemma-2, Cohere)
    needs :class:`fusekern.FusionLoss` on its real logits (``FusionTrainer`` checks this).
    """

    def __init__(
        self,
        lm_weight: float = 0.9,
        method: str = "min_ce",
        teacher_temperature: float = 1.0,
        loss_type: str = "kl",
        *,
        chunk_size: int | None = None,
        grad_accum_dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        set_options(self, lm_weight, method, teacher_temperature, loss_type, backend)
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
            raise TypeError(f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if grad_accum_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(
                f"grad_accum_dtype must be None, torch.float32 or torch.float64, got {grad_accum_dtype}"
            )
        self.chunk_size = chunk_size
        self.grad_accum_dtype = grad_accum_dtype

    def extra_repr(self) -> str:
        return f"{options_repr(self)}, chunk_size={self.chunk_size}"

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        teacher_ids: torch.Tensor,
        teacher_logits: torch.Tensor,
        source_ce: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden ``[B, T, H]``, weight ``[V, H]``, bias ``[V]`` or None; the rest as
        :meth:`fusekern.FusionLoss.forward`. Returns a scalar."""
        lam, temp = check_options(self)
        h, w, b = _check_head(hidden, weight, bias)
        B, T, H = h.shape
        nxt, ids, t_logits, ce = flatten_batch(h, "hidden", labels, teacher_ids, teacher_logits, source_ce)
        dev_type = h.device.type
        if torch.is_autocast_enabled(dev_type):  # what nn.Linear would compute under autocast
            dt = torch.get_autocast_dtype(dev_type)
            h, w = h.to(dt), w.to(dt)
            b = b.to(dt) if b is not None else None
        with torch.autocast(dev_type, enabled=False):
            loss, clm, fusion = linear_row_loss(
                h.reshape(B * T, H),
                w,
                b,
                nxt,
                ids,
                t_logits,
                ce,
                method=self.method,
                temperature=temp,
                kl=self.loss_type == "kl",
                lm_weight=lam,
                chunk_size=self.chunk_size,
                accum=self.grad_accum_dtype,
                backend=self.backend,
                names={**NAMES, "x": "logits (hidden @ weight.T + bias)"},
            )
        self.last_clm, self.last_fusion = clm, fusion
        return loss


def _check_head(
    hidden: object, weight: object, bias: object
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    h = V_.check_float(hidden, "hidden")
    if h.dim() != 3 or h.shape[-1] < 1:
        raise ValueError(f"hidden must have shape [B, T, H], got {list(h.shape)}")
    w = V_.check_float(weight, "weight")
    if w.dim() != 2 or w.shape[1] != h.shape[-1] or w.shape[0] < 1:
        raise ValueError(
            f"weight must have shape [V, H] with H = hidden.shape[-1] = {h.shape[-1]}, got {list(w.shape)}"
        )
    V_.check_device(w, h, "weight", "hidden")
    b = None
    if bias is not None:
        b = V_.check_float(bias, "bias")
        V_.check_shape(b, [w.shape[0]], "bias", " (V = weight.shape[0])")
        V_.check_device(b, h, "bias", "hidden")
    if not torch.is_autocast_enabled(h.device.type):
        for t, name in ((w, "weight"), (b, "bias")):
            if t is not None and t.dtype != h.dtype:
                raise TypeError(
                    f"{name} dtype {t.dtype} must match hidden dtype {h.dtype} (or run under torch.autocast)"
                )
    return h, w, b


__all__ = ["LinearFusionLoss", "linear_fusion_loss"]
