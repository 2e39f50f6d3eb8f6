"""The autograd Functions of the loss engine and the two entry points that call them.

- :func:`row_loss` / :class:`RowLoss`: loss of given logits ``[N, V]`` (``sparse_kl_loss``,
  ``fusion_loss``, ``FusionLoss``);
- :func:`linear_row_loss` / :class:`LinearRowLoss`: the same loss from hidden states and a linear
  head, logits made a chunk at a time (``LinearFusionLoss``).

Both Functions take the tensors and the checked options and return the loss parts
``(loss, clm_mean, distill_mean)`` (the two means detached, for logging). Their forward computes
the gradients too (the row pass writes them); backward only scales them, see
:func:`_scaled_grads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch.autograd.function import once_differentiable

from .. import _validate as V_
from .._backend import resolve_backend
from .linear_rows import linear_rows
from .plan import RowPlan
from .torch_rows import torch_rows
from .torch_teacher import merge_probs
from .triton_rows import row_loss_kernel, triton_rows

LossParts = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LossOptions:
    """The checked, non-tensor options of one engine call."""

    impl: str  # "triton" | "torch" (resolved backend)
    method: str | None  # "min_ce" | "avg_ce" | None (a single teacher, no source CE)
    temperature: float
    kl: bool  # loss_type == "kl"
    lm_weight: float  # used only with labels
    reduction: str  # used only without labels
    names: Dict[str, str] = field(default_factory=dict)  # argument names for error messages


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _value_checks(opts: LossOptions, ids, logits, ce, labels, vocab: int) -> list:
    """The teacher/label value checks, still on the device. The PyTorch path indexes with the
    ids, so there they are raised at once; the Triton path masks them and reads them back with
    the row flags after the kernel (one sync)."""
    names = opts.names
    checks = V_.value_checks(
        ids=ids,
        logits=logits,
        ids_name=names["ids"],
        logits_name=names["logits"],
        vocab=vocab,
        ce=ce if opts.method is not None else None,
        ce_name=names.get("ce", "source_ce"),
        labels=labels,
        labels_name=names.get("labels", "labels"),
    )
    if opts.impl == "torch":
        V_.raise_failed(checks)
        return []
    return checks


# --------------------------------------------------------------------------------------------
# precomputed gradients: saved in forward, scaled in backward
# --------------------------------------------------------------------------------------------
def _save_grads(ctx, grads: Sequence[torch.Tensor | None], per_row: bool) -> None:
    """Keep the gradients with ``save_for_backward``: autograd frees them right after this
    node's backward, and a leaf's ``AccumulateGrad`` can adopt them without a copy."""
    ctx.present = [g is not None for g in grads]
    ctx.save_for_backward(*[g for g in grads if g is not None])
    ctx.per_row = per_row
    ctx.factor = None  # scale applied in place so far (None = untouched)


def _scaled_grads(ctx, grad_loss: torch.Tensor) -> List[torch.Tensor | None]:
    """The saved gradients times ``grad_loss``, one per saved slot (None where none was saved).

    Scalar losses: the first backward scales the stored gradients in place (no copy; the common
    ``loss.backward()`` with grad 1 returns them untouched); later backwards (retain_graph,
    gradcheck) scale out of place so tensors handed out earlier are never modified.
    ``reduction="none"`` (one input): always ``grad * grad_loss[:, None]`` out of place.
    """
    gs = ctx.saved_tensors
    if ctx.per_row:
        out = [g * grad_loss.to(g.dtype)[:, None] for g in gs]
    elif ctx.factor is None:
        if bool(grad_loss == 1):
            ctx.factor = torch.ones_like(grad_loss)
            out = list(gs)
        elif bool(grad_loss == 0):
            out = [torch.zeros_like(g) for g in gs]
        else:
            ctx.factor = grad_loss.detach().clone()
            # .data: scale in place without bumping the saved tensors' version counters, so a
            # retained graph can still unpack them (their scale is tracked in ctx.factor)
            for g in gs:
                g.data.mul_(grad_loss.to(g.dtype))
            out = list(gs)
    elif bool(grad_loss == ctx.factor):
        out = list(gs)
    else:
        out = [g * (grad_loss / ctx.factor).to(g.dtype) for g in gs]
    it = iter(out)
    return [next(it) if p else None for p in ctx.present]


# --------------------------------------------------------------------------------------------
# loss of given logits
# --------------------------------------------------------------------------------------------
class RowLoss(torch.autograd.Function):
    """``(loss, clm_mean, distill_mean)`` of logits ``x`` [N, V] against the teacher ids/logits
    [N, S, K] (ce [N, S] or None), with ``keep`` [N] bool (True = may contribute) or None and
    ``labels`` [N] int (−100 = none) or None. Differentiable w.r.t. ``x`` only."""

    @staticmethod
    def forward(ctx, x, ids, logits, ce, keep, labels, opts: LossOptions, want_grad: bool):  # type: ignore[override]
        checks = _value_checks(opts, ids, logits, ce, labels, x.shape[1])
        plan = RowPlan(ids, keep, labels, opts.lm_weight, opts.reduction, _acc(x))
        if opts.impl == "triton":
            distill, clm, nonfinite, grad = triton_rows(
                x, ids, logits, ce, plan.use, plan.lab, plan.coef, opts.method, opts.temperature, opts.kl,
                want_grad,
            )  # fmt: skip
        else:
            probs, _ = merge_probs(ids, logits, ce, opts.method, opts.temperature, plan.acc)
            distill, clm, nonfinite, grad = torch_rows(
                x,
                torch.where(ids >= 0, ids.long(), -1).flatten(1),
                probs.flatten(1),
                plan.use,
                plan.lab,
                plan.coef,
                opts.kl,
                want_grad,
            )
        V_.raise_failed(checks, nonfinite, opts.names.get("x", "student_logits"))  # the one sync
        loss, clm_mean, distill_mean = plan.finish(distill, clm)
        if want_grad:
            _save_grads(ctx, (grad,), loss.dim() == 1)
        ctx.mark_non_differentiable(clm_mean, distill_mean)
        return loss, clm_mean, distill_mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_clm, _grad_distill):  # type: ignore[override]
        return (*_scaled_grads(ctx, grad_loss), None, None, None, None, None, None, None)


def row_loss(
    x: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    *,
    method: str | None,
    temperature: float,
    kl: bool,
    keep: torch.Tensor | None,
    labels: torch.Tensor | None,
    lm_weight: float,
    reduction: str,
    backend: str,
    names: Dict[str, str],
) -> LossParts:
    """The loss of logits ``x`` [N, V] (shapes and options already checked by the caller):
    with ``labels`` ``lm_weight·mean(CLM) + (1−lm_weight)·mean(distill)`` (means over their own
    counted rows, 0 where none), otherwise ``reduction`` over the distillation rows.
    Returns ``(loss, clm_mean, distill_mean)``; the teacher is a constant."""
    impl = resolve_backend(backend, x, row_loss_kernel)
    opts = LossOptions(impl, method, temperature, kl, lm_weight, reduction, dict(names))
    ce = ce.detach() if ce is not None else None
    # whether to compute the gradient is decided here: forward itself runs without grad mode
    want_grad = torch.is_grad_enabled() and x.requires_grad
    return RowLoss.apply(x, ids, logits.detach(), ce, keep, labels, opts, want_grad)


# --------------------------------------------------------------------------------------------
# loss from hidden states and a linear head
# --------------------------------------------------------------------------------------------
class LinearRowLoss(torch.autograd.Function):
    """``(loss, clm_mean, distill_mean)`` of the logits ``h @ w.T (+ b)`` (h [N, H], w [V, H],
    b [V] or None) with labels [N] (−100 = none; a row's fusion term counts where its label
    does), never holding more than a chunk of logits. Differentiable w.r.t. h, w and b."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, h, w, b, labels, ids, logits, ce, opts: LossOptions, chunk_size: int | None, accum, need
    ):
        checks = _value_checks(opts, ids, logits, ce, labels, w.shape[0])
        plan = RowPlan(ids, labels != V_.IGNORE_INDEX, labels, opts.lm_weight, "mean", _acc(h))
        distill, clm, nonfinite, grads = linear_rows(
            h.detach(),
            w.detach(),
            b.detach() if b is not None else None,
            ids,
            logits,
            ce,
            plan,
            impl=opts.impl,
            method=opts.method,
            temperature=opts.temperature,
            kl=opts.kl,
            need=need,
            chunk_size=chunk_size,
            accum=accum,
        )
        V_.raise_failed(checks, nonfinite, opts.names.get("x", "logits"))  # the one sync
        loss, clm_mean, distill_mean = plan.finish(distill, clm)
        if any(need):
            _save_grads(ctx, grads, False)
        ctx.mark_non_differentiable(clm_mean, distill_mean)
        return loss, clm_mean, distill_mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_clm, _grad_distill):  # type: ignore[override]
        return (*_scaled_grads(ctx, grad_loss), None, None, None, None, None, None, None, None)


def linear_row_loss(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    labels: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor,
    *,
    method: str,
    temperature: float,
    kl: bool,
    lm_weight: float,
    chunk_size: int | None,
    accum: torch.dtype | None,
    backend: str,
    names: Dict[str, str],
) -> LossParts:
    """``lm_weight·mean(CLM) + (1−lm_weight)·mean(fusion)`` of ``h @ w.T (+ b)`` (shapes and
    options already checked). Returns ``(loss, clm_mean, distill_mean)``."""
    impl = resolve_backend(backend, h, row_loss_kernel)
    opts = LossOptions(impl, method, temperature, kl, lm_weight, "mean", dict(names))
    # needed gradients are decided here: forward itself runs without grad mode
    need = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (h, w, b))
    return LinearRowLoss.apply(
        h, w, b, labels, ids, logits.detach(), ce.detach(), opts, chunk_size, accum, need
    )
