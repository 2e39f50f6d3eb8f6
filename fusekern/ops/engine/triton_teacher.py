"""Triton: one position's merged sparse teacher, built in registers, and the ``merge_topk`` kernel.

Per position: ``p_s = softmax(logits_s / T)`` over the valid entries of source s, weighted by
MinCE / AvgCE (or 1 for a single teacher) — see :mod:`fusekern.ops.merge_topk` for the contract.
:func:`merged_teacher` and :func:`sorted_teacher` are ``@triton.jit`` helpers that the row loss
kernel (:mod:`.triton_rows`) inlines; :func:`merge_topk_triton` launches the merge on its own.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .._backend import HAS_TRITON, next_pow2

# METHOD constexpr of the kernels: 0 = a single teacher (sparse_kl_loss), else the merge rule
METHOD_CODE = {None: 0, "min_ce": 1, "avg_ce": 2}

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def source_weights(
        ce_ptr,  # [N, S] float source CE (lower = better); read only for METHOD 1/2
        row,  # position whose weights are computed
        S,  # number of sources
        present,  # [BLOCK_S] bool: the source has a valid entry at this position
        METHOD: tl.constexpr,  # 0 single teacher, 1 min_ce, 2 avg_ce
        BLOCK_S: tl.constexpr,  # next_pow2(S)
    ):
        """Per-source weights [BLOCK_S] (0 for absent sources; all 0 when none is present)."""
        if METHOD == 0:
            weight = present.to(tl.float32)
        else:
            s_idx = tl.arange(0, BLOCK_S)
            ce = tl.load(ce_ptr + row.to(tl.int64) * S + s_idx, mask=s_idx < S, other=0.0)
            if METHOD == 1:
                # compare in fp64 (exact for every input dtype): fp64 CEs that differ by less
                # than fp32 resolution are not a tie
                ce_present = tl.where(present, ce.to(tl.float64), float("inf"))
                ce_min = tl.min(ce_present, axis=0)
                pick = tl.min(tl.where(present & (ce_present == ce_min), s_idx, BLOCK_S), axis=0)
                weight = tl.where(present & (s_idx == pick), 1.0, 0.0)
            else:  # softmax_s(exp(-ce_s)) over present sources
                ce = ce.to(tl.float32)
                score = tl.where(present, tl.exp(tl.exp(-tl.where(present, ce, 0.0))), 0.0)
                total = tl.sum(score, axis=0)
                weight = score / tl.where(total > 0, total, 1.0)
        return weight

    @triton.jit
    def merged_teacher(
        ids_ptr,  # [N, S, K] int teacher ids (contiguous), negative = padding
        logits_ptr,  # [N, S, K] float raw teacher logits at those ids
        ce_ptr,  # [N, S] float source CE (METHOD 1/2 only)
        row,  # position (first dim of the inputs)
        S,  # sources
        K,  # top-k entries per source
        V,  # vocabulary size: ids >= V are invalid when BOUNDED
        inv_temp,  # 1 / teacher temperature
        METHOD: tl.constexpr,  # 0 single teacher, 1 min_ce, 2 avg_ce
        BLOCK_S: tl.constexpr,  # next_pow2(S)
        BLOCK_K: tl.constexpr,  # next_pow2(K)
        BOUNDED: tl.constexpr,  # True: valid ids are in [0, V) (loss kernel); False: any id >= 0
    ):
        """One position's merged sparse teacher as a [BLOCK_S, BLOCK_K] tile (source s, entry k).

        Returns (ids in their stored dtype, valid, probs = w_s·softmax_s(logits / T) over the
        valid entries (0 elsewhere), offsets of the entries in the inputs, in-bounds mask).

        The softmax subtracts the source's max logit *before* applying 1/T, and the max entries
        are 0 exactly, so a tiny temperature (1/T or logits/T overflowing) gives the T → 0 limit
        (mass on the max entries), never inf − inf = NaN."""
        s_idx = tl.arange(0, BLOCK_S)[:, None]
        k_idx = tl.arange(0, BLOCK_K)[None, :]
        in_bounds = (s_idx < S) & (k_idx < K)
        offsets = row.to(tl.int64) * (S * K) + s_idx * K + k_idx
        ids = tl.load(ids_ptr + offsets, mask=in_bounds, other=-1)
        valid = in_bounds & (ids >= 0)
        if BOUNDED:
            valid = valid & (ids < V)
        z = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        z = tl.where(valid, z, float("-inf"))
        present = tl.sum(valid.to(tl.int32), axis=1) > 0  # [BLOCK_S]
        z_max = tl.where(present, tl.max(z, axis=1), 0.0)
        shifted = z - z_max[:, None]
        expz = tl.where(valid, tl.exp(tl.where(shifted == 0.0, 0.0, shifted * inv_temp)), 0.0)
        denom = tl.sum(expz, axis=1)
        weight = source_weights(ce_ptr, row, S, present, METHOD, BLOCK_S)
        scale = weight / tl.where(present, denom, 1.0)
        probs = expz * scale[:, None]
        return ids, valid, probs, offsets, in_bounds

    @triton.jit
    def segment_sum(sum_a, id_a, sum_b, id_b):
        # summary of a range of the sorted list = (sum over entries equal to its last id, last id);
        # associative on sorted input
        return sum_b + tl.where(id_a == id_b, sum_a, 0.0), id_b

    @triton.jit
    def sorted_teacher(
        ids,  # [BLOCK_S, BLOCK_K] teacher ids of one position
        valid,  # [BLOCK_S, BLOCK_K] bool: entry counts
        probs,  # [BLOCK_S, BLOCK_K] fp32 merged probability of each entry (0 where not valid)
        LANES: tl.constexpr,  # BLOCK_S · BLOCK_K
    ):
        """Flatten the teacher tile to LANES lanes sorted by id. Returns (ids [LANES] int32,
        p_entry = the lane's own probability, p_id = the merged probability of the lane's id,
        duplicates across sources added). A sort of packed (id, prob) keys and two segmented
        scans, O(LANES log² LANES) work in registers instead of a LANES×LANES comparison tile.
        Padding lanes get id −1 and probability 0."""
        id64 = tl.where(valid, ids.to(tl.int64), -1)
        key = (id64 << 32) | (probs.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)
        key = tl.sort(tl.reshape(key, [LANES]))
        ids_sorted = (key >> 32).to(tl.int32)
        p_entry = (key & 0xFFFFFFFF).to(tl.int32).to(tl.float32, bitcast=True)
        prefix, _id0 = tl.associative_scan((p_entry, ids_sorted), 0, segment_sum)
        suffix, _id1 = tl.associative_scan((p_entry, ids_sorted), 0, segment_sum, reverse=True)
        return ids_sorted, p_entry, prefix + suffix - p_entry

    @triton.jit
    def merge_topk_kernel(
        ids_ptr,  # [N, S, K] int teacher ids, negative = padding (any id >= 0 is valid)
        logits_ptr,  # [N, S, K] float raw teacher logits
        ce_ptr,  # [N, S] float source CE (lower = better)
        out_ids_ptr,  # [N, S·K] out: ids (teacher_ids' dtype), -1 where the merged prob is 0
        out_probs_ptr,  # [N, S·K] out: fp32 merged probabilities, 0 at padding
        S,  # sources
        K,  # top-k entries per source
        inv_temp,  # 1 / teacher temperature
        METHOD: tl.constexpr,  # 1 min_ce, 2 avg_ce
        BLOCK_S: tl.constexpr,  # next_pow2(S)
        BLOCK_K: tl.constexpr,  # next_pow2(K)
    ):
        row = tl.program_id(0)
        ids, valid, probs, offsets, in_bounds = merged_teacher(
            ids_ptr, logits_ptr, ce_ptr, row, S, K, 0, inv_temp, METHOD, BLOCK_S, BLOCK_K, False
        )
        keep = valid & (probs > 0)
        tl.store(out_ids_ptr + offsets, tl.where(keep, ids, -1), mask=in_bounds)
        tl.store(out_probs_ptr + offsets, tl.where(keep, probs, 0.0), mask=in_bounds)

else:  # pragma: no cover
    merge_topk_kernel = None


def merge_topk_triton(
    ids: torch.Tensor, logits: torch.Tensor, ce: torch.Tensor, method: str, temperature: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`merge_topk_kernel` on checked ``[N, S, K]`` inputs (N >= 1) ->
    (ids [N, S·K], fp32 probs [N, S·K])."""
    N, S, K = ids.shape
    out_ids = torch.empty((N, S * K), dtype=ids.dtype, device=ids.device)
    out_probs = torch.empty((N, S * K), dtype=torch.float32, device=ids.device)
    merge_topk_kernel[(N,)](
        ids.contiguous(),
        logits.contiguous(),
        ce.contiguous(),
        out_ids,
        out_probs,
        S,
        K,
        1.0 / temperature,
        METHOD=METHOD_CODE[method],
        BLOCK_S=next_pow2(S),
        BLOCK_K=next_pow2(K),
        num_warps=1,
    )
    return out_ids, out_probs
