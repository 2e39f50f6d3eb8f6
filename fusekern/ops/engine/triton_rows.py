"""Triton: the row loss kernel shared by every loss entry point, and its launcher.

One program per row. It builds the row's sparse teacher (per-source renormalised softmax,
optional MinCE/AvgCE merge: :mod:`.triton_teacher`), computes the logsumexp of the student row in
fp32 and, in the same kernel, writes the gradient
``grad_scale·softmax − distill_coef·p − clm_coef·onehot(label)`` with
``grad_scale = clm_coef + distill_coef`` (both coefficients already include the reduction's
1/count; ``clm_coef = 0`` outside FusionLoss). Rows that fit in registers (V ≤ 32768) are read
from memory once — the load is issued before the teacher is built so the two overlap; wider
rows stream BLOCK_V blocks with an online logsumexp and are read a second time to write the
gradient (``evict_last`` on the first read so the second hits L2). Backward only scales this
gradient.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .._backend import HAS_TRITON, launch_config, next_pow2
from .triton_teacher import METHOD_CODE

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_teacher import merged_teacher, sorted_teacher

    @triton.jit
    def _nonfinite(x):
        # exponent bits all ones <=> inf/NaN; a bit test cannot be folded away by fast-math
        return (x.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000

    @triton.jit
    def _flag_nonfinite(x, mask):
        # map NaN/±inf in valid lanes to +inf: the row max becomes +inf and the logsumexp comes
        # out non-finite whatever else the row holds, so one scalar test on lse finds bad rows
        # (no per-lane flag vector to carry through the loop)
        return tl.where(_nonfinite(x) & mask, float("inf"), x)

    @triton.jit
    def row_loss_kernel(
        logits_ptr,  # [N, V] fp16/bf16/fp32 student logits, row stride logits_stride, unit column stride
        grad_ptr,  # [N, V] out: d loss / d logits (logits' dtype); may alias logits_ptr
        ids_ptr,  # [N, S, K] int teacher ids (contiguous), negative or >= V = padding
        teacher_logits_ptr,  # [N, S, K] float raw teacher logits at those ids
        ce_ptr,  # [N, S] float source CE (lower = better); read only when METHOD != 0
        use_ptr,  # [N] bool: the distillation term counts at this row (a source present, not ignored)
        label_ptr,  # [N] int32 next-token label, -1 = none; read only when HAS_LABELS
        coef_ptr,  # [2] fp32 (distill_coef, clm_coef): term weights with the 1/count folded in
        distill_ptr,  # [N] out: fp32 distillation loss of the row (0 where use is False)
        clm_ptr,  # [N] out: fp32 CLM loss of the row (0 without a label); written when HAS_LABELS
        nonfinite_ptr,  # [N] out: int32 1 = the row's logits hold NaN/±inf (active rows only)
        logits_stride,  # elements between rows of logits
        grad_stride,  # elements between rows of grad
        V,  # vocabulary size (columns)
        S,  # sources
        K,  # top-k entries per source
        inv_temp,  # 1 / teacher temperature
        METHOD: tl.constexpr,  # 0 single teacher (sparse_kl_loss), 1 min_ce, 2 avg_ce
        KL: tl.constexpr,  # True: KL (adds the teacher entropy term); False: soft cross-entropy
        HAS_LABELS: tl.constexpr,  # True: also the CLM term (FusionLoss)
        WANT_GRAD: tl.constexpr,  # True: write grad
        BLOCK_S: tl.constexpr,  # next_pow2(S)
        BLOCK_K: tl.constexpr,  # next_pow2(K)
        BLOCK_V: tl.constexpr,  # columns per step (the whole padded row when SINGLE)
        SINGLE: tl.constexpr,  # True: the row is held in registers and read once
    ):
        row = tl.program_id(0)
        # row flags first (two scalar loads), so the big logits load does not wait for the teacher
        use = tl.load(use_ptr + row) != 0
        distill_coef = tl.where(use, tl.load(coef_ptr), 0.0)
        if HAS_LABELS:
            label = tl.load(label_ptr + row).to(tl.int32)
            has_label = (label >= 0) & (label < V)
            label_col = tl.where(has_label, label, 0)
            clm_coef = tl.where(has_label, tl.load(coef_ptr + 1), 0.0)
            active = use | has_label
        else:
            label = -1
            has_label = False
            label_col = 0
            clm_coef = 0.0
            active = use
        grad_scale = clm_coef + distill_coef  # coefficient of the softmax in the gradient
        x_row = logits_ptr + row.to(tl.int64) * logits_stride
        g_row = grad_ptr + row.to(tl.int64) * grad_stride
        offs = tl.arange(0, BLOCK_V)
        if active:
            if SINGLE:  # whole row into registers; in flight while the teacher is built
                x_all = tl.load(x_row + offs, mask=offs < V, other=float("-inf"))
            # ---- merged sparse teacher of this row, sorted by id ---------------------------
            ids_tile, valid_tile, probs_tile, _offsets, _in_bounds = merged_teacher(
                ids_ptr, teacher_logits_ptr, ce_ptr, row, S, K, V, inv_temp, METHOD, BLOCK_S, BLOCK_K, True
            )
            # lanes sorted by id: p_entry = the lane's own probability, p_id = the merged
            # probability of the lane's id (duplicates add)
            ids, p_entry, p_id = sorted_teacher(ids_tile, valid_tile, probs_tile, BLOCK_S * BLOCK_K)
            valid = ids >= 0
            cols = tl.where(valid, ids, 0)
            x_teacher = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
            x_label = tl.load(x_row + label_col, mask=has_label, other=0.0).to(tl.float32)
            # ---- logsumexp (fp32) ------------------------------------------------------------
            if SINGLE:
                x = _flag_nonfinite(x_all.to(tl.float32), offs < V)
                row_max = tl.max(x, axis=0)
                exp_x = tl.exp(x - row_max)
                row_sum = tl.sum(exp_x, axis=0)
                lse = row_max + tl.log(row_sum)
            else:  # online logsumexp over BLOCK_V blocks
                row_max = float("-inf")
                row_sum = 0.0
                for start in range(0, V, BLOCK_V):
                    cols_v = start + offs
                    mask = cols_v < V
                    x = tl.load(x_row + cols_v, mask=mask, other=float("-inf"), eviction_policy="evict_last")
                    x = _flag_nonfinite(x.to(tl.float32), mask)
                    new_max = tl.maximum(row_max, tl.max(x, axis=0))
                    row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
                    row_max = new_max
                lse = row_max + tl.log(row_sum)
            nonfinite = _nonfinite(lse).to(tl.int32)
            distill = lse - tl.sum(p_entry * x_teacher, axis=0)
            if KL:
                distill += tl.sum(p_entry * tl.log(tl.where(p_entry > 0, p_id, 1.0)), axis=0)
            clm = lse - x_label
            if WANT_GRAD:
                # grad_ptr may alias logits_ptr (LinearFusionLoss writes the gradient over its
                # logits chunk): every read of the row's teacher/label columns above is complete
                # before any thread of the program stores
                tl.debug_barrier()
                if SINGLE:
                    g = exp_x * (grad_scale / row_sum)
                    tl.store(g_row + offs, g.to(g_row.dtype.element_ty), mask=offs < V)
                else:  # second read, L2-hot; in place each lane reads its element before writing it
                    for start in range(0, V, BLOCK_V):
                        cols_v = start + offs
                        mask = cols_v < V
                        x = tl.load(x_row + cols_v, mask=mask, other=0.0, eviction_policy="evict_first")
                        g = tl.exp(x.to(tl.float32) - lse) * grad_scale
                        tl.store(g_row + cols_v, g.to(g_row.dtype.element_ty), mask=mask)
                # fix the teacher / label columns; the barrier orders them after the dense stores
                # of other threads. Every store to one address carries the same value (duplicate
                # ids share p_id); the label column is written only by the label store.
                tl.debug_barrier()
                g_teacher = grad_scale * tl.exp(x_teacher - lse) - distill_coef * p_id
                tl.store(g_row + cols, g_teacher.to(g_row.dtype.element_ty), mask=valid & (ids != label))
                if HAS_LABELS:
                    p_label = tl.sum(tl.where(ids == label, p_entry, 0.0), axis=0)
                    g_label = grad_scale * tl.exp(x_label - lse) - distill_coef * p_label - clm_coef
                    tl.store(g_row + label_col, g_label.to(g_row.dtype.element_ty), mask=has_label)
        else:
            distill = 0.0
            clm = 0.0
            nonfinite = 0
            if WANT_GRAD:
                zero = tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty)
                for start in range(0, V, BLOCK_V):
                    tl.store(g_row + start + offs, zero, mask=start + offs < V)
        tl.store(distill_ptr + row, tl.where(use, distill, 0.0))
        if HAS_LABELS:
            tl.store(clm_ptr + row, tl.where(has_label, clm, 0.0))
        tl.store(nonfinite_ptr + row, nonfinite)

else:  # pragma: no cover
    row_loss_kernel = None


def triton_rows(
    x: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    use: torch.Tensor,
    labels: torch.Tensor | None,
    coef: torch.Tensor,
    method: str | None,
    temperature: float,
    kl: bool,
    want_grad: bool,
    grad_out: torch.Tensor | None = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch :func:`row_loss_kernel` over the rows of ``x`` [N, V].

    ids/logits [N, S, K] teacher, ce [N, S] or None (single teacher), ``use`` [N] bool (a source is
    present and the row is not ignored), ``labels`` [N] int32 (-1 = none) or None, ``coef`` [2] =
    (distill, CLM) gradient coefficients. ``grad_out``: where to write the gradient (may be ``x``
    itself); default a new [N, V] tensor. Returns (distill [N], clm [N], nonfinite [N] bool,
    grad or None); the per-row losses are fp32.
    """
    N, V = x.shape
    S, K = ids.shape[1], ids.shape[2]
    dev = x.device
    if x.stride(1) != 1:
        x = x.contiguous()
    ids, logits = ids.contiguous(), logits.contiguous()
    distill = torch.empty(N, dtype=torch.float32, device=dev)
    clm = torch.zeros(N, dtype=torch.float32, device=dev) if labels is None else torch.empty_like(distill)
    nonfinite = torch.empty(N, dtype=torch.int32, device=dev)
    grad = None
    if want_grad:
        grad = grad_out if grad_out is not None else torch.empty((N, V), dtype=x.dtype, device=dev)
    if N:
        cfg = launch_config(V, x.element_size())
        g = grad if grad is not None else x  # never written when WANT_GRAD=False
        row_loss_kernel[(N,)](
            x,
            g,
            ids,
            logits,
            ce.contiguous() if ce is not None else logits,
            use,
            labels if labels is not None else nonfinite,
            coef.to(torch.float32),
            distill,
            clm,
            nonfinite,
            x.stride(0),
            g.stride(0),
            V,
            S,
            K,
            1.0 / temperature,
            METHOD=METHOD_CODE[method],
            KL=kl,
            HAS_LABELS=labels is not None,
            WANT_GRAD=want_grad,
            BLOCK_S=next_pow2(S),
            BLOCK_K=next_pow2(K),
            BLOCK_V=cfg["BLOCK_V"],
            SINGLE=cfg["SINGLE"],
            num_warps=cfg["num_warps"],
        )
    return distill, clm, nonfinite.bool(), grad
