"""Sparse top-k distillation loss: student logits [N, V] against a teacher kept as top-k.

This module is the engine shared by all three loss entry points (``sparse_kl_loss``,
``fusion_loss`` and ``FusionLoss``):

- ``_sparse_loss_kernel`` (Triton): one program per row. It builds the row's sparse teacher
  (per-source renormalised softmax, optional MinCE/AvgCE merge; helper in merge_topk.py), computes
  the logsumexp of the student row in fp32 and, in the same kernel, writes the gradient
  ``(a+b)·softmax − b·P − a·onehot(label)`` (``a``/``b`` = CLM / distillation coefficients that
  already include the reduction's 1/count; ``a = 0`` outside FusionLoss). Rows that fit in
  registers (V ≤ 32768) are read from memory once — the load is issued before the teacher is built
  so the two overlap; wider rows stream BLOCK_V blocks with an online logsumexp and are read a
  second time to write the gradient (``evict_last`` on the first read so the second hits L2).
  Backward only scales this gradient.
- ``_torch_rows`` (PyTorch): the same computation chunked over rows, so the only O(N·V) memory is
  the gradient itself (plus an fp32 chunk buffer for 16-bit logits).
- ``PrecomputedGrad``: the autograd.Function that returns the stored gradient(s) in backward.

Gradient storage: a separate ``[N, V]`` buffer in the logits' dtype, not written over the
logits: overwriting a tensor the caller (or the HF model output) still holds would be silently
wrong, and autograd needs an N×V gradient for the logits anyway, so the buffer is the gradient
that flows on to ``lm_head`` — nothing beyond it is allocated.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _validate as V_
from ._backend import HAS_TRITON, launch_config, next_pow2, resolve_backend
from .merge_topk import METHOD_CODE, merge_probs_torch

LOSS_TYPES = ("kl", "ce")
REDUCTIONS = ("mean", "sum", "none")

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .merge_topk import _merged_teacher, _sorted_teacher

    @triton.jit
    def _nonfinite(x):
        # exponent bits all ones <=> inf/NaN; a bit test cannot be folded away by fast-math
        return (x.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000

    @triton.jit
    def _flag_nonfinite(x, msk):
        # map NaN/±inf in valid lanes to +inf: the row max becomes +inf and the logsumexp comes
        # out non-finite whatever else the row holds, so one scalar test on lse finds bad rows
        # (no per-lane flag vector to carry through the loop)
        return tl.where(_nonfinite(x) & msk, float("inf"), x)

    @triton.jit
    def _sparse_loss_kernel(
        x_ptr, g_ptr, ids_ptr, tlg_ptr, ce_ptr, use_ptr, label_ptr, coef_ptr,
        loss_ptr, lm_ptr, bad_ptr,
        x_stride, g_stride, V, S, K, inv_temp,
        METHOD: tl.constexpr, KL: tl.constexpr, HAS_LABELS: tl.constexpr, WANT_GRAD: tl.constexpr,
        SB: tl.constexpr, KB: tl.constexpr, BLOCK_V: tl.constexpr, SINGLE: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        # row flags first (two scalar loads), so the big logits load does not wait for the
        # teacher: use = a source is present and the row is not ignored (computed on the host)
        use = tl.load(use_ptr + row) != 0
        b = tl.where(use, tl.load(coef_ptr), 0.0)
        if HAS_LABELS:
            label = tl.load(label_ptr + row).to(tl.int32)
            lab_ok = (label >= 0) & (label < V)
            lab_safe = tl.where(lab_ok, label, 0)
            a = tl.where(lab_ok, tl.load(coef_ptr + 1), 0.0)
            active = use | lab_ok
        else:
            label = -1
            lab_ok = False
            lab_safe = 0
            a = 0.0
            active = use
        c = a + b
        x_row = x_ptr + row.to(tl.int64) * x_stride
        g_row = g_ptr + row.to(tl.int64) * g_stride
        offs = tl.arange(0, BLOCK_V)
        if active:
            if SINGLE:  # whole row into registers; in flight while the teacher is built
                xs = tl.load(x_row + offs, mask=offs < V, other=float("-inf"))
            # ---- merged sparse teacher of this row, sorted by id ---------------------------
            ids2, valid2, P2, _off, _inb = _merged_teacher(
                ids_ptr, tlg_ptr, ce_ptr, row, S, K, V, inv_temp, METHOD, SB, KB, True
            )
            # lanes sorted by id; Pm = merged probability of the lane's id (duplicates add)
            ids, P, Pm = _sorted_teacher(ids2, valid2, P2, SB * KB)
            ok = ids >= 0
            safe = tl.where(ok, ids, 0)
            x_ids = tl.load(x_row + safe, mask=ok, other=0.0).to(tl.float32)
            x_lab = tl.load(x_row + lab_safe, mask=lab_ok, other=0.0).to(tl.float32)
            # ---- logsumexp (fp32) ------------------------------------------------------------
            if SINGLE:
                x = _flag_nonfinite(xs.to(tl.float32), offs < V)
                mx = tl.max(x, axis=0)
                e = tl.exp(x - mx)
                ssum = tl.sum(e, axis=0)
                lse = mx + tl.log(ssum)
            else:  # online logsumexp over BLOCK_V blocks
                mx = float("-inf")
                ssum = 0.0
                for start in range(0, V, BLOCK_V):
                    cols = start + offs
                    msk = cols < V
                    x = tl.load(x_row + cols, mask=msk, other=float("-inf"), eviction_policy="evict_last")
                    x = _flag_nonfinite(x.to(tl.float32), msk)
                    m_new = tl.maximum(mx, tl.max(x, axis=0))
                    ssum = ssum * tl.exp(mx - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
                    mx = m_new
                lse = mx + tl.log(ssum)
            bad = _nonfinite(lse).to(tl.int32)
            fus = lse - tl.sum(P * x_ids, axis=0)
            if KL:
                fus += tl.sum(P * tl.log(tl.where(P > 0, Pm, 1.0)), axis=0)
            lm = lse - x_lab
            if WANT_GRAD:
                # g_ptr may alias x_ptr (LinearFusionLoss writes the gradient over its logits
                # chunk): every read of the row's teacher/label columns above is complete before
                # any thread of the program stores
                tl.debug_barrier()
                if SINGLE:
                    tl.store(g_row + offs, (e * (c / ssum)).to(g_row.dtype.element_ty), mask=offs < V)
                else:  # second read, L2-hot; in place each lane reads its element before writing it
                    for start in range(0, V, BLOCK_V):
                        cols = start + offs
                        msk = cols < V
                        x = tl.load(x_row + cols, mask=msk, other=0.0, eviction_policy="evict_first")
                        g = tl.exp(x.to(tl.float32) - lse) * c
                        tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=msk)
                # fix the teacher / label columns; the barrier orders them after the dense stores
                # of other threads. Every store to one address carries the same value (duplicate
                # ids share Pm); the label column is written only by the label store.
                tl.debug_barrier()
                g_ids = c * tl.exp(x_ids - lse) - b * Pm
                tl.store(g_row + safe, g_ids.to(g_row.dtype.element_ty), mask=ok & (ids != label))
                if HAS_LABELS:
                    p_lab = tl.sum(tl.where(ids == label, P, 0.0), axis=0)
                    g_lab = c * tl.exp(x_lab - lse) - b * p_lab - a
                    tl.store(g_row + lab_safe, g_lab.to(g_row.dtype.element_ty), mask=lab_ok)
        else:
            fus = 0.0
            lm = 0.0
            bad = 0
            if WANT_GRAD:
                zero = tl.zeros([BLOCK_V], dtype=g_row.dtype.element_ty)
                for start in range(0, V, BLOCK_V):
                    tl.store(g_row + start + offs, zero, mask=start + offs < V)
        tl.store(loss_ptr + row, tl.where(use, fus, 0.0))
        if HAS_LABELS:
            tl.store(lm_ptr + row, tl.where(lab_ok, lm, 0.0))
        tl.store(bad_ptr + row, bad)

else:  # pragma: no cover
    _sparse_loss_kernel = None


# --------------------------------------------------------------------------------------------
# PyTorch path
# --------------------------------------------------------------------------------------------
def _chunk_rows(V: int, device: torch.device) -> int:
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


CPU_CHUNK_ELEMS = 1 << 20
CPU_CHUNK_ELEMS_THREADED = 1 << 26


def teacher_entropy(ids: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``Σ_v p_v log p_v`` per row of a sparse teacher whose ids may repeat (their probabilities
    add): sort each row, sum the segments of equal ids, ``xlogy`` the totals. ids/P ``[N, M]``
    (padding: any negative id with P 0). O(N·M log M), instead of an M×M comparison per row."""
    if ids.shape[1] == 0:
        return P.new_zeros(P.shape[0])
    srt, order = ids.sort(1)
    Ps = P.gather(1, order)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    seg = new.cumsum(1) - 1
    tot = torch.zeros_like(Ps).scatter_add_(1, seg, Ps)
    return torch.xlogy(tot, tot).sum(1)


def gather_columns(
    x: torch.Tensor, sc: torch.Tensor, lab: torch.Tensor | None, acc: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The logits at the teacher columns sc [R, M] and label column lab [R, 1] (or None) of rows
    ``x`` [R, V], in ``acc``, and the largest of them per row with its column: (x_ids [R, M],
    x_lab [R] or None, ref [R], ref_col [R, 1]). Every gathered column is a real column
    (padding entries read column 0)."""
    x_ids = x.gather(1, sc).to(acc)
    cand, cols = x_ids, sc
    x_lab = None
    if lab is not None:
        x_lab = x.gather(1, lab).to(acc)
        cand, cols = torch.cat([cand, x_lab], 1), torch.cat([sc, lab], 1)
        x_lab = x_lab[:, 0]
    ref, j = cand.max(1)
    return x_ids, x_lab, ref, cols.gather(1, j[:, None])


def torch_row_chunk(
    xc: torch.Tensor,
    w: torch.Tensor,
    sc: torch.Tensor,
    Pc: torch.Tensor,
    lab: torch.Tensor | None,
    ac: torch.Tensor,
    bc: torch.Tensor,
    scale: bool,
    ref: torch.Tensor,
    ref_col: torch.Tensor,
    recompute: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The row pass over one chunk: logits ``xc`` [C, V] → gradient in ``w`` [C, V] (``w`` may
    be ``xc`` itself: then ``recompute(rows)`` must give those rows' logits again).

    sc [C, M] teacher ids (≥ 0, padding entries have P 0), Pc [C, M] merged probabilities, lab
    [C, 1] label column or None, ac/bc [C] CLM / distillation coefficients (0 where a term does
    not count), ref/ref_col from :func:`gather_columns`. ``scale=True`` writes
    ``c·softmax − b·P − a·onehot`` (c = a + b); ``scale=False`` writes it divided by c (rows with
    c = 0 must not be passed), so the caller can apply c to a much smaller tensor
    (LinearFusionLoss scales the [C, H] matmul operands instead).
    Returns (lse [C], bad [C] = row holds NaN/±inf).

    Full-width work: a row sum (NaN/±inf make it non-finite; suspects are re-checked exactly, so
    a finite row that overflows the sum is not flagged) and the fused row-wise ``softmax``, plus
    the scale when asked; no separate max pass. The logsumexp comes from the softmax at the
    largest gathered logit: ``lse = x_j − log softmax_j``, exact while softmax_j ≥ 1e-30 (a
    normal float); other rows (rare) get ``logsumexp`` of their logits (re-read or recomputed).
    """
    acc = w.dtype
    bad = ~torch.isfinite(xc.sum(1, dtype=acc))
    if bool(bad.any()):  # rare: exact check of the suspects, before xc may be overwritten
        r = bad.nonzero()[:, 0]
        bad[r] = ~torch.isfinite(xc[r]).all(1)
    torch.softmax(xc, 1, dtype=acc if xc.dtype != acc else None, out=w)
    w_ref = w.gather(1, ref_col)[:, 0]
    lse = ref - w_ref.log()
    far = ~(w_ref >= 1e-30)
    if bool(far.any()):
        r = far.nonzero()[:, 0]
        src = recompute(r) if w.data_ptr() == xc.data_ptr() and recompute is not None else xc[r]
        lse[r] = torch.logsumexp(src.to(acc), 1)
    if scale:
        w.mul_((ac + bc)[:, None])
        w.scatter_add_(1, sc, -(bc[:, None] * Pc))
        if lab is not None:
            w.scatter_add_(1, lab, -ac[:, None])
    else:
        inv = 1.0 / (ac + bc)
        w.scatter_add_(1, sc, -((bc * inv)[:, None] * Pc))
        if lab is not None:
            w.scatter_add_(1, lab, -(ac * inv)[:, None])
    return lse, bad


def _torch_rows(
    x: torch.Tensor,
    ids: torch.Tensor,
    P: torch.Tensor,
    use: torch.Tensor,
    labels: torch.Tensor | None,
    coef: torch.Tensor,
    kl: bool,
    want_grad: bool,
    chunk_rows: int | None = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-row losses and the gradient of ``x`` [N, V], chunked over rows (:func:`torch_row_chunk`).

    ids [N, M] (negative = padding), P [N, M] merged probabilities (0 at padding), use [N] rows
    whose distillation term counts, labels [N] (negative = none), coef [2] = (b, a).
    Returns (fus [N], lm [N], bad [N], grad [N, V] or None). Rows that contribute nothing get a
    zero gradient row and are never flagged.
    """
    N, V = x.shape
    acc = P.dtype
    dev = x.device
    lm = torch.zeros(N, dtype=acc, device=dev)
    bad = torch.zeros(N, dtype=torch.bool, device=dev)
    grad = torch.empty((N, V), dtype=x.dtype, device=dev) if want_grad else None
    lab_ok = labels >= 0 if labels is not None else torch.zeros(N, dtype=torch.bool, device=dev)
    active = use | lab_ok
    b_row = torch.where(use, coef[0].to(acc), 0.0)
    a_row = torch.where(lab_ok, coef[1].to(acc), 0.0)
    safe = ids.clamp_min(0).long()
    ent = teacher_entropy(ids, P) if kl else None
    lab_safe = labels.clamp_min(0).long()[:, None] if labels is not None else None
    C = chunk_rows or _chunk_rows(V, dev)
    lowp = x.dtype != acc
    buf = torch.empty((min(C, N), V), dtype=acc, device=dev) if (lowp or not want_grad) and N else None
    on_cpu = dev.type == "cpu"
    # the few columns each row needs, for all rows at once (few small ops on a busy machine)
    x_ids, x_lab, ref, ref_col = gather_columns(x, safe, lab_safe, acc)
    lse = torch.zeros(N, dtype=acc, device=dev)
    for r0 in range(0, N, C):
        r1 = min(N, r0 + C)
        act = active[r0:r1]
        if on_cpu and not bool(act.any()):  # a chunk with nothing to do: zero gradient only
            if want_grad:
                grad[r0:r1].zero_()
            continue
        w = buf[: r1 - r0] if buf is not None else grad[r0:r1]
        lse[r0:r1], bad[r0:r1] = torch_row_chunk(
            x[r0:r1], w, safe[r0:r1], P[r0:r1], lab_safe[r0:r1] if labels is not None else None,
            a_row[r0:r1], b_row[r0:r1], True, ref[r0:r1], ref_col[r0:r1],
        )  # fmt: skip
        if want_grad:
            # rows that contribute nothing: zero (their coefficient is 0, but their logits may
            # hold NaN/inf); only those rows are written
            idle = (~act).nonzero()[:, 0] if not on_cpu or not bool(act.all()) else None
            if idle is not None and idle.numel():
                w.index_fill_(0, idle, 0)
            if buf is not None:
                grad[r0:r1].copy_(w)
    bad &= active
    f = lse - (P * x_ids).sum(1)
    if kl:
        f = f + ent
    fus = torch.where(use, f, 0.0)
    if labels is not None:
        lm = torch.where(lab_ok, lse - x_lab, 0.0)
    return fus, lm, bad, grad


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------
class PrecomputedGrad(torch.autograd.Function):
    """Loss whose gradients w.r.t. its inputs were computed in forward; backward scales them.

    ``PrecomputedGrad.apply(run, *inputs)``: ``run()`` returns ``(loss, grads)`` with one
    gradient (or None) per input. The gradients are kept with ``save_for_backward`` so autograd
    frees them right after this node's backward, and a leaf's ``AccumulateGrad`` can adopt them
    without a copy.
    Scalar losses: the first backward scales the stored gradients in place (no copy; the common
    ``loss.backward()`` with grad 1 returns them untouched); later backwards (retain_graph,
    gradcheck) scale out of place so tensors handed out earlier are never modified.
    ``reduction="none"`` (one input): always ``grad * grad_output[:, None]`` out of place.
    """

    @staticmethod
    def forward(ctx, run, *inputs):  # type: ignore[override]
        loss, grads = run()
        ctx.present = [g is not None for g in grads]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        ctx.per_row = loss.dim() == 1
        ctx.factor = None  # scale applied in place so far (None = untouched)
        return loss

    @staticmethod
    def _out(ctx, gs):
        it = iter(gs)
        return (None, *[next(it) if p else None for p in ctx.present])

    @staticmethod
    @once_differentiable
    def backward(ctx, go):  # type: ignore[override]
        gs = ctx.saved_tensors
        if ctx.per_row:
            return PrecomputedGrad._out(ctx, [g * go.to(g.dtype)[:, None] for g in gs])
        if ctx.factor is None:
            if bool(go == 1):
                ctx.factor = torch.ones_like(go)
                return PrecomputedGrad._out(ctx, gs)
            if bool(go == 0):
                return PrecomputedGrad._out(ctx, [torch.zeros_like(g) for g in gs])
            ctx.factor = go.detach().clone()
            # .data: scale in place without bumping the saved tensors' version counters, so a
            # retained graph can still unpack them (their scale is tracked in ctx.factor)
            for g in gs:
                g.data.mul_(go.to(g.dtype))
            return PrecomputedGrad._out(ctx, gs)
        if bool(go == ctx.factor):
            return PrecomputedGrad._out(ctx, gs)
        return PrecomputedGrad._out(ctx, [g * (go / ctx.factor).to(g.dtype) for g in gs])


# --------------------------------------------------------------------------------------------
# driver shared by sparse_kl_loss / fusion_loss / FusionLoss
# --------------------------------------------------------------------------------------------
def sparse_loss(
    x: torch.Tensor,
    ids: torch.Tensor,
    tlg: torch.Tensor,
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
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Shapes already checked by the caller: x [N, V], ids/tlg [N, S, K], ce [N, S] or None,
    keep [N] bool (True = may contribute) or None, labels [N] int (-100 = none) or None.

    With labels the loss is ``lm_weight·mean(CLM) + (1−lm_weight)·mean(distill)`` (means over
    their own counted rows, 0 where none); otherwise ``reduction`` applies to the distill rows.
    Returns (loss, extras) where extras holds detached ``clm`` / ``distill`` means.
    """
    N, Vn = x.shape
    impl = resolve_backend(backend, x, _sparse_loss_kernel)
    checks = teacher_checks(ids, tlg, ce, labels, Vn, method, names)
    if impl == "torch":  # it indexes with the ids: check them first
        V_.raise_failed(checks)
        checks = []
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    plan = RowPlan(ids, keep, labels, lm_weight, reduction, acc)
    want_grad = torch.is_grad_enabled() and x.requires_grad
    extras: Dict[str, torch.Tensor] = {}

    def run() -> Tuple[torch.Tensor, torch.Tensor | None]:
        xd = x.detach()
        if impl == "triton":
            fus, lm, bad, grad = _triton_rows(
                xd, ids, tlg, ce, plan.use, plan.lab, plan.coef, method, temperature, kl, want_grad
            )
        else:
            P, _ = merge_probs_torch(ids, tlg, ce, method, temperature, acc)
            fus, lm, bad, grad = _torch_rows(
                xd,
                torch.where(ids >= 0, ids.long(), -1).flatten(1),
                P.flatten(1),
                plan.use,
                plan.lab,
                plan.coef,
                kl,
                want_grad,
            )
        V_.raise_failed(checks, bad, names.get("x", "student_logits"))  # the one sync
        return plan.finish(fus, lm, extras), (grad,)

    if not want_grad:
        return run()[0], extras
    return PrecomputedGrad.apply(run, x), extras


def teacher_checks(
    ids: torch.Tensor,
    tlg: torch.Tensor,
    ce: torch.Tensor | None,
    labels: torch.Tensor | None,
    vocab: int,
    method: str | None,
    names: Dict[str, str],
) -> list:
    """The value checks of the teacher and labels (still on the device, see ``_validate``)."""
    return V_.value_checks(
        ids=ids,
        logits=tlg,
        ids_name=names["ids"],
        logits_name=names["logits"],
        vocab=vocab,
        ce=ce if method is not None else None,
        ce_name=names.get("ce", "source_ce"),
        labels=labels,
        labels_name=names.get("labels", "labels"),
    )


class RowPlan:
    """What is known before any logits row is read: which rows count for the distillation term
    (``use``), the labels (``lab``, −1 = none), the two counts and the gradient coefficients
    ``coef = (b, a)`` (the reductions' 1/count folded in). Computed over ALL rows up front, so
    processing the rows in chunks cannot change the result."""

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
            self.lab = torch.where(labels == V_.IGNORE_INDEX, -1, labels).to(torch.int32)
            self.n_lm = (self.lab >= 0).sum().to(acc)
            self.coef = torch.stack(
                [(1.0 - lm_weight) / self.n_f.clamp_min(1), lm_weight / self.n_lm.clamp_min(1)]
            )
        else:
            self.lab = None
            one = torch.ones((), dtype=acc, device=dev)
            b = 1.0 / self.n_f.clamp_min(1) if reduction == "mean" else one
            self.coef = torch.stack([b, torch.zeros_like(one)])

    def finish(self, fus: torch.Tensor, lm: torch.Tensor, extras: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss from the per-row terms; fills ``extras`` with the detached means."""
        fus = fus.to(self.acc)
        fsum = fus.sum()
        extras["distill"] = (fsum / self.n_f.clamp_min(1)).detach()
        if self.labels_given:
            extras["clm"] = (lm.to(self.acc).sum() / self.n_lm.clamp_min(1)).detach()
            return self.lm_weight * extras["clm"] + (1.0 - self.lm_weight) * extras["distill"]
        if self.reduction == "none":
            return fus
        if self.reduction == "sum":
            return fsum
        return extras["distill"].clone()


def _triton_rows(
    x: torch.Tensor,
    ids: torch.Tensor,
    tlg: torch.Tensor,
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
    """Launch the fused kernel. ``use`` [N] bool: a source is present and the row is not ignored;
    ``labels`` [N] int32 (-1 = none); ``coef`` [2] = (distill, CLM) gradient coefficients.
    ``grad_out``: where to write the gradient (may be ``x`` itself); default a new [N, V] tensor."""
    N, V = x.shape
    S, K = ids.shape[1], ids.shape[2]
    dev = x.device
    if x.stride(1) != 1:
        x = x.contiguous()
    ids, tlg = ids.contiguous(), tlg.contiguous()
    fus = torch.empty(N, dtype=torch.float32, device=dev)
    lm = torch.zeros(N, dtype=torch.float32, device=dev) if labels is None else torch.empty_like(fus)
    bad = torch.empty(N, dtype=torch.int32, device=dev)
    grad = None
    if want_grad:
        grad = grad_out if grad_out is not None else torch.empty((N, V), dtype=x.dtype, device=dev)
    if N:
        cfg = launch_config(V, x.element_size())
        g = grad if grad is not None else x  # never written when WANT_GRAD=False
        _sparse_loss_kernel[(N,)](
            x,
            g,
            ids,
            tlg,
            ce.contiguous() if ce is not None else tlg,
            use,
            labels if labels is not None else bad,
            coef.to(torch.float32),
            fus,
            lm,
            bad,
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
            SB=next_pow2(S),
            KB=next_pow2(K),
            BLOCK_V=cfg["BLOCK_V"],
            SINGLE=cfg["SINGLE"],
            num_warps=cfg["num_warps"],
        )
    return fus, lm, bad.bool(), grad


def sparse_kl_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    teacher_temperature: float = 1.0,
    loss_type: str = "kl",
    ignore_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Distillation loss between student logits and a top-k teacher, never densifying the teacher.

    Args:
        student_logits: ``[N, V]`` float16/bfloat16/float32 (float64: PyTorch path). Must be
            finite on every row that contributes.
        teacher_ids: ``[N, K]`` signed integer ids in ``[0, V)``; negative = padding.
        teacher_logits: ``[N, K]`` raw teacher logits (finite at valid entries).
        teacher_temperature: ``p = softmax(teacher_logits / T)`` over the valid entries of a row.
        loss_type: ``"kl"`` = ``Σ p (log p − log q)``, ``"ce"`` = ``−Σ p log q`` (same gradient).
        ignore_mask: ``[N]`` bool, True = the row contributes nothing.
        reduction: ``"mean"`` over contributing rows (0, with zero gradient, when none
            contributes), ``"sum"``, or ``"none"`` (``[N]``, zeros where nothing contributes).
        backend: ``"auto" | "triton" | "torch"``.

    Returns float32 (float64 for float64 logits). Differentiable w.r.t. ``student_logits`` only;
    the teacher is a constant. Duplicate ids add their probabilities.
    """
    x = V_.check_logits(student_logits, "student_logits", 2)
    N = x.shape[0]
    V_.check_topk(teacher_ids, teacher_logits, (N,), x, "teacher_ids", "teacher_logits")
    return distill_loss(
        x,
        teacher_ids[:, None, :],
        teacher_logits[:, None, :],
        None,
        method=None,
        teacher_temperature=teacher_temperature,
        loss_type=loss_type,
        ignore_mask=ignore_mask,
        reduction=reduction,
        backend=backend,
        names={"ids": "teacher_ids", "logits": "teacher_logits"},
    )


def distill_loss(
    x: torch.Tensor,
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    *,
    method: str | None,
    teacher_temperature: float,
    loss_type: str,
    ignore_mask: torch.Tensor | None,
    reduction: str,
    backend: str,
    names: dict,
) -> torch.Tensor:
    """The distillation-only loss (no CLM term) behind ``sparse_kl_loss`` and ``fusion_loss``:
    checks the options they share, then runs :func:`sparse_loss`. ``x`` and the teacher
    tensors must already be validated by the caller."""
    V_.check_choice(loss_type, LOSS_TYPES, "loss_type")
    V_.check_choice(reduction, REDUCTIONS, "reduction")
    temp = V_.check_temperature(teacher_temperature)
    keep = None if ignore_mask is None else ~V_.check_mask(ignore_mask, x.shape[0], x)
    loss, _ = sparse_loss(
        x,
        ids,
        logits,
        ce,
        method=method,
        temperature=temp,
        kl=loss_type == "kl",
        keep=keep,
        labels=None,
        lm_weight=0.0,
        reduction=reduction,
        backend=backend,
        names=names,
    )
    return loss


__all__ = ["sparse_kl_loss"]
