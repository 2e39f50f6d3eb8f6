"""``LinearFusionLoss``: ``FusionLoss`` straight from the LM head, never materialising the
``[B·T, V]`` logits or their gradient.

``loss = LinearFusionLoss(...)(hidden, weight, labels, teacher_ids, teacher_logits, source_ce, bias)``
equals ``FusionLoss(...)(hidden @ weight.T + bias, labels, ...)`` in value and in the gradients of
``hidden``, ``weight`` and ``bias``.

How (the fused-linear pattern of Liger's FLCE, with the fusion teacher): everything that needs all
rows — which rows count for CLM / fusion, the two counts and so the gradient coefficients
(:class:`~fusekern.ops.sparse_kl.RowPlan`) — is computed first, so chunking cannot change the
result. Only the rows that contribute are processed, ``chunk_size`` at a time: one GEMM gives the
chunk's logits, the row pass (the Triton kernel on CUDA, :func:`torch_row_chunk` on CPU) turns
them *in place* into the logit gradient G, and two more GEMMs give ``grad_hidden = G·W`` and
``grad_weight += Gᵀ·h`` (``grad_bias += Σ G``). The gradients are computed in forward; backward
only scales them. Extra memory: one ``chunk × V`` buffer (+ an fp32 copy for 16-bit logits on the
PyTorch path) and the gradients of hidden, weight and bias.

On the PyTorch path the row pass writes ``G / c`` (c = the row's CLM + fusion coefficient) and c
is applied to the ``[chunk, H]`` GEMM operands instead of to the ``[chunk, V]`` gradient: one
full-width pass less.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .loss import NAMES, check_options, flatten_batch, options_repr, set_options
from .ops import _validate as V_
from .ops._backend import resolve_backend
from .ops.merge_topk import merge_probs_torch
from .ops.sparse_kl import (
    PrecomputedGrad,
    RowPlan,
    _chunk_rows,
    _sparse_loss_kernel,
    _triton_rows,
    gather_columns,
    teacher_checks,
    teacher_entropy,
    torch_row_chunk,
)

# Memory budget of the logits chunk (bytes) when ``chunk_size`` is not given.
CHUNK_BUDGET = {"cuda": 256 << 20, "cpu": 128 << 20}


def default_chunk_size(V: int, H: int, bytes_per_elem: int, device: torch.device) -> int:
    """Rows per GEMM chunk: as many as fit the budget, at least 64 (GEMM efficiency: each chunk
    reads the whole weight, so fewer than ~64 rows make the matmuls memory-bound)."""
    budget = CHUNK_BUDGET.get(device.type, CHUNK_BUDGET["cuda"])
    return max(64, budget // max(1, V * bytes_per_elem)) // 8 * 8


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
        chunk_size: rows per chunk; default from a memory budget (``CHUNK_BUDGET``: 128 MiB of
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
        V = w.shape[0]
        nxt, ids, tlg, ce = flatten_batch(h, "hidden", labels, teacher_ids, teacher_logits, source_ce)
        dev_type = h.device.type
        if torch.is_autocast_enabled(dev_type):  # what nn.Linear would compute under autocast
            dt = torch.get_autocast_dtype(dev_type)
            h, w = h.to(dt), w.to(dt)
            b = b.to(dt) if b is not None else None
        with torch.autocast(dev_type, enabled=False):
            loss, extras = _fused(
                h.reshape(B * T, H),
                w,
                b,
                nxt,
                ids,
                tlg,
                ce,
                lm_weight=lam,
                method=self.method,
                temperature=temp,
                kl=self.loss_type == "kl",
                chunk_size=self.chunk_size,
                accum=self.grad_accum_dtype,
                backend=self.backend,
                vocab=V,
            )
        self.last_clm = extras["clm"]
        self.last_fusion = extras["distill"]
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


def _fused(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    nxt: torch.Tensor,
    ids: torch.Tensor,
    tlg: torch.Tensor,
    ce: torch.Tensor,
    *,
    lm_weight: float,
    method: str,
    temperature: float,
    kl: bool,
    chunk_size: int | None,
    accum: torch.dtype | None,
    backend: str,
    vocab: int,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    N, H = h.shape
    dev = h.device
    impl = resolve_backend(backend, h, _sparse_loss_kernel)
    checks = teacher_checks(ids, tlg, ce, nxt, vocab, method, NAMES)
    if impl == "torch":  # the row pass indexes with the ids: check them first
        V_.raise_failed(checks)
        checks = []
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    plan = RowPlan(ids, nxt != V_.IGNORE_INDEX, nxt, lm_weight, "mean", acc)
    grad_on = torch.is_grad_enabled()
    need = [grad_on and t is not None and t.requires_grad for t in (h, w, b)]
    extras: Dict[str, torch.Tensor] = {}
    lowp = h.dtype != acc

    def run() -> Tuple[torch.Tensor, tuple]:
        hd, wd = h.detach(), w.detach()
        bd = b.detach() if b is not None else None
        lab_ok = plan.lab >= 0
        active = plan.use | lab_ok
        rows_all = active.nonzero()[:, 0]
        fus = torch.zeros(N, dtype=acc, device=dev)
        lm = torch.zeros(N, dtype=acc, device=dev)
        bad = torch.zeros(N, dtype=torch.bool, device=dev)
        g_h = torch.zeros_like(hd) if need[0] else None
        adt = accum or wd.dtype
        g_w = torch.zeros(wd.shape, dtype=adt, device=dev) if need[1] else None
        g_b = torch.zeros(wd.shape[0], dtype=adt, device=dev) if need[2] else None
        if impl == "torch":
            P, _ = merge_probs_torch(ids, tlg, ce, method, temperature, acc)
            P = P.flatten(1)
            safe_ids = torch.where(ids >= 0, ids.long(), -1).flatten(1)
            ent = teacher_entropy(safe_ids, P) if kl else None
            safe = safe_ids.clamp_min(0)
            lab_col = plan.lab.clamp_min(0).long()[:, None]
            b_row = torch.where(plan.use, plan.coef[0], 0.0)
            a_row = torch.where(lab_ok, plan.coef[1], 0.0)
        per_elem = h.element_size() + (4 if (impl == "torch" and lowp) else 0)
        C = chunk_size or default_chunk_size(vocab, H, per_elem, dev)
        n_all = rows_all.numel()
        buf = None
        if n_all:
            z_all = torch.empty((min(C, n_all), vocab), dtype=hd.dtype, device=dev)
            if impl == "torch" and lowp:
                buf = torch.empty((min(C, n_all), vocab), dtype=acc, device=dev)
        for r0 in range(0, n_all, C):
            rows = rows_all[r0 : r0 + C]
            n = rows.numel()
            hc = hd.index_select(0, rows)
            z = z_all[:n]
            if bd is not None:
                torch.addmm(bd, hc, wd.t(), out=z)
            else:
                torch.mm(hc, wd.t(), out=z)
            if impl == "torch":
                # row pass in cache-sized sub-chunks, gradient / c written over the logits
                sub = max(1, _chunk_rows(vocab, dev))
                for s0 in range(0, n, sub):
                    s1 = min(n, s0 + sub)
                    r = rows[s0:s1]
                    zs = z[s0:s1]
                    ws = buf[s0:s1] if buf is not None else zs
                    hsub = hc[s0:s1]

                    def recompute(i: torch.Tensor, hsub=hsub) -> torch.Tensor:
                        out = hsub[i] @ wd.t()
                        return out + bd if bd is not None else out

                    x_ids, x_lab, ref, ref_col = gather_columns(zs, safe[r], lab_col[r], acc)
                    lse, bad_c = torch_row_chunk(
                        zs, ws, safe[r], P[r], lab_col[r], a_row[r], b_row[r], False, ref, ref_col, recompute
                    )
                    f = lse - (P[r] * x_ids).sum(1)
                    if kl:
                        f = f + ent[r]
                    fus[r] = torch.where(plan.use[r], f, 0.0)
                    lm[r] = torch.where(lab_ok[r], lse - x_lab, 0.0)
                    bad[r] = bad_c
                    if buf is not None:
                        zs.copy_(ws)
                c = (a_row[rows] + b_row[rows])[:, None]  # in acc: no bf16 rounding of the scale
            else:
                f_c, l_c, bad_c, _ = _triton_rows(
                    z, ids[rows], tlg[rows], ce[rows], plan.use[rows], plan.lab[rows],
                    plan.coef, method, temperature, kl, True, grad_out=z,
                )  # fmt: skip
                fus[rows] = f_c.to(acc)
                lm[rows] = l_c.to(acc)
                bad[rows] = bad_c
                c = None
            # z holds G (Triton) or G / c (PyTorch path): c goes on the [n, H] side
            if g_h is not None:
                gh = torch.mm(z, wd)
                g_h[rows] = (gh.to(acc) * c).to(gh.dtype) if c is not None else gh
            hs = (hc.to(acc) * c).to(hc.dtype) if c is not None else hc
            if g_w is not None:
                if g_w.dtype == z.dtype:
                    g_w.addmm_(z.t(), hs)
                else:
                    g_w.add_(torch.mm(z.t(), hs))
            if g_b is not None:
                gb = z.t().mv(c[:, 0].to(z.dtype)) if c is not None else z.sum(0)
                g_b.add_(gb)
        V_.raise_failed(checks, bad, "logits (hidden @ weight.T + bias)")  # the one sync
        loss = plan.finish(fus, lm, extras)
        grads = (
            g_h,
            g_w.to(wd.dtype) if g_w is not None else None,
            g_b.to(wd.dtype) if g_b is not None else None,
        )
        return loss, grads

    if not any(need):
        return run()[0], extras
    return PrecomputedGrad.apply(run, h, w, b), extras


__all__ = ["LinearFusionLoss", "linear_fusion_loss", "default_chunk_size"]
