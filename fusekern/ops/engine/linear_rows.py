"""The row pass straight from the LM head (LinearFusionLoss): logits made a chunk at a time.

Only the rows that contribute are processed, ``chunk_size`` at a time: one GEMM gives the
chunk's logits, the row pass (:func:`.triton_rows.triton_rows` on CUDA, :func:`.torch_rows.row_chunk`
on CPU) turns them *in place* into the logit gradient G, and two more GEMMs give
``grad_hidden = G·W`` and ``grad_weight += Gᵀ·h`` (``grad_bias += Σ G``). Extra memory: one
``chunk × V`` buffer (+ an fp32 copy for 16-bit logits on the PyTorch path) and the gradients of
hidden, weight and bias.

On the PyTorch path the row pass writes ``G / grad_scale`` (grad_scale = the row's CLM + fusion
coefficient) and grad_scale is applied to the ``[chunk, H]`` GEMM operands instead of to the
``[chunk, V]`` gradient: one full-width pass less.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from .plan import RowPlan
from .torch_rows import chunk_rows, gather_columns, row_chunk
from .torch_teacher import merge_probs, teacher_entropy
from .triton_rows import triton_rows

# Memory budget of the logits chunk (bytes) when ``chunk_size`` is not given.
CHUNK_BUDGET = {"cuda": 256 << 20, "cpu": 128 << 20}

Grads = Tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def default_chunk_size(V: int, H: int, bytes_per_elem: int, device: torch.device) -> int:
    """Rows per GEMM chunk: as many as fit the budget, at least 64 (GEMM efficiency: each chunk
    reads the whole weight, so fewer than ~64 rows make the matmuls memory-bound)."""
    budget = CHUNK_BUDGET.get(device.type, CHUNK_BUDGET["cuda"])
    return max(64, budget // max(1, V * bytes_per_elem)) // 8 * 8


def linear_rows(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor,
    plan: RowPlan,
    *,
    impl: str,
    method: str,
    temperature: float,
    kl: bool,
    need: Sequence[bool],
    chunk_size: int | None,
    accum: torch.dtype | None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Grads]:
    """Per-row losses of the logits ``h @ w.T (+ b)`` and the gradients of h [N, H], w [V, H], b [V].

    ids/logits [N, S, K] and ce [N, S] the teacher (already checked), ``plan`` with labels,
    ``need`` which of (h, w, b) want a gradient, ``accum`` the dtype grad_weight/grad_bias are
    summed in (default w's). Returns (distill [N], clm [N], nonfinite [N], (grad_h, grad_w,
    grad_b)), the losses in the plan's accumulation dtype.
    """
    N, H = h.shape
    vocab = w.shape[0]
    dev = h.device
    acc = plan.acc
    lowp = h.dtype != acc
    has_label = plan.lab >= 0
    rows_all = (plan.use | has_label).nonzero()[:, 0]
    distill = torch.zeros(N, dtype=acc, device=dev)
    clm = torch.zeros(N, dtype=acc, device=dev)
    nonfinite = torch.zeros(N, dtype=torch.bool, device=dev)
    g_h = torch.zeros_like(h) if need[0] else None
    adt = accum or w.dtype
    g_w = torch.zeros(w.shape, dtype=adt, device=dev) if need[1] else None
    g_b = torch.zeros(w.shape[0], dtype=adt, device=dev) if need[2] else None
    if impl == "torch":
        probs, _ = merge_probs(ids, logits, ce, method, temperature, acc)
        probs = probs.flatten(1)
        safe_ids = torch.where(ids >= 0, ids.long(), -1).flatten(1)
        entropy = teacher_entropy(safe_ids, probs) if kl else None
        cols = safe_ids.clamp_min(0)
        label_col = plan.lab.clamp_min(0).long()[:, None]
        distill_coef = torch.where(plan.use, plan.coef[0], 0.0)
        clm_coef = torch.where(has_label, plan.coef[1], 0.0)
    per_elem = h.element_size() + (4 if (impl == "torch" and lowp) else 0)
    C = chunk_size or default_chunk_size(vocab, H, per_elem, dev)
    n_all = rows_all.numel()
    buf = None
    if n_all:
        z_all = torch.empty((min(C, n_all), vocab), dtype=h.dtype, device=dev)
        if impl == "torch" and lowp:
            buf = torch.empty((min(C, n_all), vocab), dtype=acc, device=dev)
    for r0 in range(0, n_all, C):
        rows = rows_all[r0 : r0 + C]
        n = rows.numel()
        hc = h.index_select(0, rows)
        z = z_all[:n]
        if b is not None:
            torch.addmm(b, hc, w.t(), out=z)
        else:
            torch.mm(hc, w.t(), out=z)
        if impl == "torch":
            # row pass in cache-sized sub-chunks, gradient / grad_scale written over the logits
            sub = max(1, chunk_rows(vocab, dev))
            for s0 in range(0, n, sub):
                s1 = min(n, s0 + sub)
                r = rows[s0:s1]
                zs = z[s0:s1]
                out = buf[s0:s1] if buf is not None else zs
                hsub = hc[s0:s1]

                def recompute(i: torch.Tensor, hsub=hsub) -> torch.Tensor:
                    z_i = hsub[i] @ w.t()
                    return z_i + b if b is not None else z_i

                x_teacher, x_label, ref, ref_col = gather_columns(zs, cols[r], label_col[r], acc)
                lse, nonfinite_c = row_chunk(
                    zs, out, cols[r], probs[r], label_col[r], clm_coef[r], distill_coef[r], False,
                    ref, ref_col, recompute,
                )  # fmt: skip
                d = lse - (probs[r] * x_teacher).sum(1)
                if kl:
                    d = d + entropy[r]
                distill[r] = torch.where(plan.use[r], d, 0.0)
                clm[r] = torch.where(has_label[r], lse - x_label, 0.0)
                nonfinite[r] = nonfinite_c
                if buf is not None:
                    zs.copy_(out)
            grad_scale = (clm_coef[rows] + distill_coef[rows])[:, None]  # in acc: no bf16 rounding
        else:
            d_c, clm_c, nonfinite_c, _ = triton_rows(
                z, ids[rows], logits[rows], ce[rows], plan.use[rows], plan.lab[rows],
                plan.coef, method, temperature, kl, True, grad_out=z,
            )  # fmt: skip
            distill[rows] = d_c.to(acc)
            clm[rows] = clm_c.to(acc)
            nonfinite[rows] = nonfinite_c
            grad_scale = None
        # z holds G (Triton) or G / grad_scale (PyTorch path): grad_scale goes on the [n, H] side
        if g_h is not None:
            gh = torch.mm(z, w)
            g_h[rows] = (gh.to(acc) * grad_scale).to(gh.dtype) if grad_scale is not None else gh
        hs = (hc.to(acc) * grad_scale).to(hc.dtype) if grad_scale is not None else hc
        if g_w is not None:
            if g_w.dtype == z.dtype:
                g_w.addmm_(z.t(), hs)
            else:
                g_w.add_(torch.mm(z.t(), hs))
        if g_b is not None:
            gb = z.t().mv(grad_scale[:, 0].to(z.dtype)) if grad_scale is not None else z.sum(0)
            g_b.add_(gb)
    grads = (
        g_h,
        g_w.to(w.dtype) if g_w is not None else None,
        g_b.to(w.dtype) if g_b is not None else None,
    )
    return distill, clm, nonfinite, grads
