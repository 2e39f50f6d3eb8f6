"""PyTorch: the row pass of the loss engine, chunked over rows.

The same computation as the Triton row kernel (:mod:`.triton_rows`): per row one logsumexp, the
distillation and CLM terms, and the gradient
``grad_scale·softmax − distill_coef·p − clm_coef·onehot(label)``. Chunked so that the only
O(N·V) memory is the gradient itself (plus an fp32 chunk buffer for 16-bit logits).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from .torch_teacher import teacher_entropy

CPU_CHUNK_ELEMS = 1 << 20
CPU_CHUNK_ELEMS_THREADED = 1 << 26


def chunk_rows(V: int, device: torch.device) -> int:
    """Rows per chunk of the PyTorch row pass (extra memory is O(chunk × V)).

    CPU, one thread: ~1M elements (4 MB fp32), so that after the first read every pass over the
    chunk hits the cache (2.2x faster than 16M-element chunks on a quiet 2-core machine).
    CPU, several threads: every full-width op is a parallel region ending in a barrier, and on a
    busy machine a barrier waits for a descheduled thread, so few large chunks (~64M elements;
    FusionLoss at N=4096, V=32000, 2 threads, loaded 2-core machine: 1M-element chunks 6.7 s,
    16M 1.4–2.1 s, 64M 1.2–1.3 s). Only 16-bit logits pay for it in memory (an fp32 chunk).
    CUDA: large chunks amortise kernel launches.
    """
    if device.type != "cpu":
        target = 1 << 25
    elif torch.get_num_threads() > 1:
        target = CPU_CHUNK_ELEMS_THREADED
    else:
        target = CPU_CHUNK_ELEMS
    return max(1, target // max(V, 1))


def gather_columns(
    x: torch.Tensor, cols: torch.Tensor, label_col: torch.Tensor | None, acc: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The logits at the teacher columns ``cols`` [R, M] and the label column ``label_col``
    [R, 1] (or None) of rows ``x`` [R, V], in ``acc``, and the largest of them per row with its
    column: (x_teacher [R, M], x_label [R] or None, ref [R], ref_col [R, 1]). Every gathered
    column is a real column (padding entries read column 0)."""
    x_teacher = x.gather(1, cols).to(acc)
    cand, cand_cols = x_teacher, cols
    x_label = None
    if label_col is not None:
        x_label = x.gather(1, label_col).to(acc)
        cand, cand_cols = torch.cat([cand, x_label], 1), torch.cat([cols, label_col], 1)
        x_label = x_label[:, 0]
    ref, j = cand.max(1)
    return x_teacher, x_label, ref, cand_cols.gather(1, j[:, None])


def row_chunk(
    x: torch.Tensor,
    out: torch.Tensor,
    cols: torch.Tensor,
    probs: torch.Tensor,
    label_col: torch.Tensor | None,
    clm_coef: torch.Tensor,
    distill_coef: torch.Tensor,
    scale: bool,
    ref: torch.Tensor,
    ref_col: torch.Tensor,
    recompute: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The row pass over one chunk: logits ``x`` [C, V] → gradient in ``out`` [C, V] (``out``
    may be ``x`` itself: then ``recompute(rows)`` must give those rows' logits again).

    cols [C, M] teacher ids (≥ 0, padding entries have probability 0), probs [C, M] merged
    probabilities, label_col [C, 1] label column or None, clm_coef/distill_coef [C] the
    coefficients of the two terms (0 where a term does not count), ref/ref_col from
    :func:`gather_columns`. ``scale=True`` writes ``grad_scale·softmax − distill_coef·p −
    clm_coef·onehot`` (grad_scale = clm_coef + distill_coef); ``scale=False`` writes it divided
    by grad_scale (rows with grad_scale = 0 must not be passed), so the caller can apply it to a
    much smaller tensor (LinearFusionLoss scales the [C, H] matmul operands instead).
    Returns (lse [C], nonfinite [C] = row holds NaN/±inf).

    Full-width work: a row sum (NaN/±inf make it non-finite; suspects are re-checked exactly, so
    a finite row that overflows the sum is not flagged) and the fused row-wise ``softmax``, plus
    the scale when asked; no separate max pass. The logsumexp comes from the softmax at the
    largest gathered logit: ``lse = x_j − log softmax_j``, exact while softmax_j ≥ 1e-30 (a
    normal float); other rows (rare) get ``logsumexp`` of their logits (re-read or recomputed).
    """
    acc = out.dtype
    nonfinite = ~torch.isfinite(x.sum(1, dtype=acc))
    if bool(nonfinite.any()):  # rare: exact check of the suspects, before x may be overwritten
        r = nonfinite.nonzero()[:, 0]
        nonfinite[r] = ~torch.isfinite(x[r]).all(1)
    torch.softmax(x, 1, dtype=acc if x.dtype != acc else None, out=out)
    soft_ref = out.gather(1, ref_col)[:, 0]
    lse = ref - soft_ref.log()
    far = ~(soft_ref >= 1e-30)
    if bool(far.any()):
        r = far.nonzero()[:, 0]
        src = recompute(r) if out.data_ptr() == x.data_ptr() and recompute is not None else x[r]
        lse[r] = torch.logsumexp(src.to(acc), 1)
    if scale:
        out.mul_((clm_coef + distill_coef)[:, None])
        out.scatter_add_(1, cols, -(distill_coef[:, None] * probs))
        if label_col is not None:
            out.scatter_add_(1, label_col, -clm_coef[:, None])
    else:
        inv = 1.0 / (clm_coef + distill_coef)
        out.scatter_add_(1, cols, -((distill_coef * inv)[:, None] * probs))
        if label_col is not None:
            out.scatter_add_(1, label_col, -(clm_coef * inv)[:, None])
    return lse, nonfinite


def torch_rows(
    x: torch.Tensor,
    ids: torch.Tensor,
    probs: torch.Tensor,
    use: torch.Tensor,
    labels: torch.Tensor | None,
    coef: torch.Tensor,
    kl: bool,
    want_grad: bool,
    rows_per_chunk: int | None = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row losses and the gradient of ``x`` [N, V], chunked over rows (:func:`row_chunk`).

    ids [N, M] (negative = padding), probs [N, M] merged probabilities (0 at padding), use [N]
    rows whose distillation term counts, labels [N] (negative = none), coef [2] =
    (distill_coef, clm_coef). Returns (distill [N], clm [N], nonfinite [N], grad [N, V] or None).
    Rows that contribute nothing get a zero gradient row and are never flagged.
    """
    N, V = x.shape
    acc = probs.dtype
    dev = x.device
    clm = torch.zeros(N, dtype=acc, device=dev)
    nonfinite = torch.zeros(N, dtype=torch.bool, device=dev)
    grad = torch.empty((N, V), dtype=x.dtype, device=dev) if want_grad else None
    has_label = labels >= 0 if labels is not None else torch.zeros(N, dtype=torch.bool, device=dev)
    active = use | has_label
    distill_coef = torch.where(use, coef[0].to(acc), 0.0)
    clm_coef = torch.where(has_label, coef[1].to(acc), 0.0)
    cols = ids.clamp_min(0).long()
    entropy = teacher_entropy(ids, probs) if kl else None
    label_col = labels.clamp_min(0).long()[:, None] if labels is not None else None
    C = rows_per_chunk or chunk_rows(V, dev)
    lowp = x.dtype != acc
    buf = torch.empty((min(C, N), V), dtype=acc, device=dev) if (lowp or not want_grad) and N else None
    on_cpu = dev.type == "cpu"
    # the few columns each row needs, for all rows at once (few small ops on a busy machine)
    x_teacher, x_label, ref, ref_col = gather_columns(x, cols, label_col, acc)
    lse = torch.zeros(N, dtype=acc, device=dev)
    for r0 in range(0, N, C):
        r1 = min(N, r0 + C)
        act = active[r0:r1]
        if on_cpu and not bool(act.any()):  # a chunk with nothing to do: zero gradient only
            if want_grad:
                grad[r0:r1].zero_()
            continue
        out = buf[: r1 - r0] if buf is not None else grad[r0:r1]
        lse[r0:r1], nonfinite[r0:r1] = row_chunk(
            x[r0:r1], out, cols[r0:r1], probs[r0:r1], label_col[r0:r1] if labels is not None else None,
            clm_coef[r0:r1], distill_coef[r0:r1], True, ref[r0:r1], ref_col[r0:r1],
        )  # fmt: skip
        if want_grad:
            # rows that contribute nothing: zero (their coefficient is 0, but their logits may
            # hold NaN/inf); only those rows are written
            idle = (~act).nonzero()[:, 0] if not on_cpu or not bool(act.all()) else None
            if idle is not None and idle.numel():
                out.index_fill_(0, idle, 0)
            if buf is not None:
                grad[r0:r1].copy_(out)
    nonfinite &= active
    distill = lse - (probs * x_teacher).sum(1)
    if kl:
        distill = distill + entropy
    distill = torch.where(use, distill, 0.0)
    if labels is not None:
        clm = torch.where(has_label, lse - x_label, 0.0)
    return distill, clm, nonfinite, grad
