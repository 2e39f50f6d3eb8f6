"""Quality-weighted merge of S source top-k teachers (FuseLLM MinCE / AvgCE).

Per position: ``p_s = softmax(logits_s / T)`` over the valid (id >= 0) entries of source s; a
source with no valid entry is absent. Weights over present sources:
- ``min_ce``: one-hot on the lowest ``source_ce`` (ties -> lowest source index);
- ``avg_ce``: ``softmax_s(exp(-ce_s))`` (FuseLLM's released formula; nearly uniform weights).
The merged teacher is ``Σ_s w_s p_s`` kept sparse as ``S·K`` (id, prob) entries, source-major.

The ``@triton.jit`` helper :func:`_merged_teacher` is shared with the fused loss kernel in
:mod:`fusekern.ops.sparse_kl`.
"""

from __future__ import annotations

from typing import Tuple

import torch

from . import _validate as V_
from ._backend import HAS_TRITON, next_pow2, resolve_backend

METHODS = ("min_ce", "avg_ce")
METHOD_CODE = {None: 0, "min_ce": 1, "avg_ce": 2}  # 0 = single teacher (sparse_kl_loss)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _source_weights(ce_ptr, row, S, present, METHOD: tl.constexpr, SB: tl.constexpr):
        """Per-source weights [SB] (0 for absent sources; all 0 when none is present)."""
        if METHOD == 0:
            w = present.to(tl.float32)
        else:
            s_idx = tl.arange(0, SB)
            ce = tl.load(ce_ptr + row.to(tl.int64) * S + s_idx, mask=s_idx < S, other=0.0)
            if METHOD == 1:
                # compare in fp64 (exact for every input dtype): fp64 CEs that differ by less
                # than fp32 resolution are not a tie
                cem = tl.where(present, ce.to(tl.float64), float("inf"))
                cmin = tl.min(cem, axis=0)
                pick = tl.min(tl.where(present & (cem == cmin), s_idx, SB), axis=0)
                w = tl.where(present & (s_idx == pick), 1.0, 0.0)
            else:
                ce = ce.to(tl.float32)
                eu = tl.where(present, tl.exp(tl.exp(-tl.where(present, ce, 0.0))), 0.0)
                tot = tl.sum(eu, axis=0)
                w = eu / tl.where(tot > 0, tot, 1.0)
        return w

    @triton.jit
    def _merged_teacher(
        ids_ptr, lg_ptr, ce_ptr, row, S, K, V, inv_temp,
        METHOD: tl.constexpr, SB: tl.constexpr, KB: tl.constexpr, BOUNDED: tl.constexpr,
    ):  # fmt: skip
        """One position's merged sparse teacher as an [SB, KB] tile (source s, entry k) of the
        contiguous [N, S, K] inputs; SB/KB = next_pow2(S/K). Returns (ids in their stored dtype,
        valid, P = w_s·softmax_s(logits / T) over valid entries (0 elsewhere), offsets, in-bounds).
        Ids must be in [0, V) to be valid (``BOUNDED``), else only >= 0 (merge_topk: any int64 id).

        The softmax subtracts the source's max logit *before* applying 1/T, and the max entries
        are 0 exactly, so a tiny temperature (1/T or logits/T overflowing) gives the T → 0 limit
        (mass on the max entries), never inf − inf = NaN."""
        s_idx = tl.arange(0, SB)[:, None]
        k_idx = tl.arange(0, KB)[None, :]
        inb = (s_idx < S) & (k_idx < K)
        off = row.to(tl.int64) * (S * K) + s_idx * K + k_idx
        ids = tl.load(ids_ptr + off, mask=inb, other=-1)
        valid = inb & (ids >= 0)
        if BOUNDED:
            valid = valid & (ids < V)
        z = tl.where(valid, tl.load(lg_ptr + off, mask=valid, other=0.0).to(tl.float32), float("-inf"))
        present = tl.sum(valid.to(tl.int32), axis=1) > 0  # [SB]
        zmax = tl.where(present, tl.max(z, axis=1), 0.0)
        d = z - zmax[:, None]
        e = tl.where(valid, tl.exp(tl.where(d == 0.0, 0.0, d * inv_temp)), 0.0)
        den = tl.sum(e, axis=1)
        w = _source_weights(ce_ptr, row, S, present, METHOD, SB)
        scale = w / tl.where(present, den, 1.0)
        P = e * scale[:, None]
        return ids, valid, P, off, inb

    @triton.jit
    def _seg_sum(a_s, a_id, b_s, b_id):
        # summary of a range of the sorted list = (sum over entries equal to its last id, last id);
        # associative on sorted input
        return b_s + tl.where(a_id == b_id, a_s, 0.0), b_id

    @triton.jit
    def _sorted_teacher(ids, valid, P, MB: tl.constexpr):
        """Flatten the [SB, KB] teacher tile to MB = SB·KB lanes sorted by id and give each lane
        the merged probability of its id (duplicates across sources add): a sort of packed
        (id, P) keys and two segmented scans, O(MB log² MB) work in registers instead of an
        MB×MB comparison tile. Padding lanes get id −1 and P 0."""
        idv = tl.where(valid, ids.to(tl.int64), -1)
        key = (idv << 32) | (P.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)
        key = tl.sort(tl.reshape(key, [MB]))
        ids_s = (key >> 32).to(tl.int32)
        P_s = (key & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
        pre, _i0 = tl.associative_scan((P_s, ids_s), 0, _seg_sum)
        suf, _i1 = tl.associative_scan((P_s, ids_s), 0, _seg_sum, reverse=True)
        return ids_s, P_s, pre + suf - P_s

    @triton.jit
    def _merge_topk_kernel(
        ids_ptr, lg_ptr, ce_ptr, out_ids_ptr, out_p_ptr, S, K, inv_temp,
        METHOD: tl.constexpr, SB: tl.constexpr, KB: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        ids, valid, P, off, inb = _merged_teacher(
            ids_ptr, lg_ptr, ce_ptr, row, S, K, 0, inv_temp, METHOD, SB, KB, False
        )
        keep = valid & (P > 0)
        tl.store(out_ids_ptr + off, tl.where(keep, ids, -1), mask=inb)
        tl.store(out_p_ptr + off, tl.where(keep, P, 0.0), mask=inb)

else:  # pragma: no cover
    _merge_topk_kernel = None


def merge_probs_torch(
    ids: torch.Tensor,
    logits: torch.Tensor,
    ce: torch.Tensor | None,
    method: str | None,
    temperature: float,
    acc: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """PyTorch merge on ``[..., S, K]`` tensors -> (P [..., S, K] in ``acc``, valid [..., S, K]).

    ``method=None`` means a single teacher (S = 1, weight 1 where present).
    Vectorised over all positions: the teacher is small (N·S·K), so no chunking is needed.
    """
    valid = ids >= 0
    present = valid.any(-1)
    z = logits.to(acc).masked_fill(~valid, float("-inf"))
    zmax = z.amax(-1, keepdim=True).masked_fill(~present[..., None], 0.0)
    # shift before scaling by 1/T, max entries exactly 0: a tiny T gives the T -> 0 limit, not NaN
    d = z - zmax
    d = torch.where(d == 0, d, d * (1.0 / temperature))
    e = torch.exp(d).masked_fill(~valid, 0.0)
    p = e / e.sum(-1, keepdim=True).masked_fill(~present[..., None], 1.0)
    if method is None:
        w = present.to(acc)
    elif method == "min_ce":
        # in CE's own dtype, not acc: fp64 CEs closer than fp32 resolution are not a tie
        cem = ce.masked_fill(~present, float("inf"))
        cand = present & (cem == cem.amin(-1, keepdim=True))
        pick = torch.argmax(cand.to(torch.int8), dim=-1)  # first True = lowest source index
        w = torch.nn.functional.one_hot(pick, ids.shape[-2]).to(acc) * present.any(-1, keepdim=True)
    else:
        eu = torch.exp(torch.exp(-ce.to(acc).masked_fill(~present, 0.0))).masked_fill(~present, 0.0)
        tot = eu.sum(-1, keepdim=True)
        w = eu / tot.masked_fill(tot == 0, 1.0)
    return p * w[..., None], valid


def merge_topk(
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    source_ce: torch.Tensor,
    *,
    method: str = "min_ce",
    teacher_temperature: float = 1.0,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quality-weighted merge of S top-k teachers into one sparse teacher per position.

    Args:
        teacher_ids: ``[N, S, K]`` signed integer ids (negative = padding).
        teacher_logits: ``[N, S, K]`` float raw logits at those ids.
        source_ce: ``[N, S]`` float, each source's CE on the gold text (lower = better). Must be
            >= 0 and not NaN where the source is present (+inf = worst); ignored where absent.
        method: ``"min_ce"`` or ``"avg_ce"``.
        teacher_temperature: softmax temperature of the teacher logits.
        backend: ``"auto" | "triton" | "torch"``.

    Returns:
        ``(ids, probs)``, both ``[N, S·K]`` (source-major). ``ids`` keeps ``teacher_ids``' dtype;
        ``probs`` is float32 (float64 for float64 logits). Entries with zero merged probability
        are padding (id -1, prob 0). Each row sums to 1 where any source is present, else all
        padding. Ids may repeat (across sources); a consumer must add their probabilities.
    """
    V_.check_int(teacher_ids, "teacher_ids")
    if teacher_ids.dim() != 3:
        raise ValueError(f"teacher_ids must have shape [N, S, K], got {list(teacher_ids.shape)}")
    N, S, K = teacher_ids.shape
    V_.check_sources(teacher_ids)
    V_.check_topk(teacher_ids, teacher_logits, (N, S), teacher_ids, "teacher_ids", "teacher_logits")
    V_.check_float(source_ce, "source_ce")
    V_.check_shape(source_ce, [N, S], "source_ce", " (matching teacher_ids [N, S, K])")
    V_.check_device(source_ce, teacher_ids, "source_ce")
    V_.check_choice(method, METHODS, "method")
    temp = V_.check_temperature(teacher_temperature)
    V_.check_values(
        ids=teacher_ids,
        logits=teacher_logits,
        ids_name="teacher_ids",
        logits_name="teacher_logits",
        ce=source_ce,
    )
    out_dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    impl = resolve_backend(backend, teacher_logits, _merge_topk_kernel)
    if impl == "torch" or N == 0:
        P, valid = merge_probs_torch(teacher_ids, teacher_logits, source_ce, method, temp, out_dtype)
        keep = valid & (P > 0)
        ids = torch.where(keep, teacher_ids, torch.full_like(teacher_ids, -1))
        return ids.reshape(N, S * K), P.masked_fill(~keep, 0.0).reshape(N, S * K)
    ids_c, lg_c, ce_c = teacher_ids.contiguous(), teacher_logits.contiguous(), source_ce.contiguous()
    out_ids = torch.empty((N, S * K), dtype=teacher_ids.dtype, device=teacher_ids.device)
    out_p = torch.empty((N, S * K), dtype=torch.float32, device=teacher_ids.device)
    _merge_topk_kernel[(N,)](
        ids_c,
        lg_c,
        ce_c,
        out_ids,
        out_p,
        S,
        K,
        1.0 / temp,
        METHOD=METHOD_CODE[method],
        SB=next_pow2(S),
        KB=next_pow2(K),
        num_warps=1,
    )
    return out_ids, out_p
