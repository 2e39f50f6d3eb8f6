"""merge_topk against the dense FuseLLM-style merge: MinCE (ties -> lowest source index),
AvgCE (softmax over exp(-ce)), absent sources, padding, duplicates, temperature; the Triton
kernel under TRITON_INTERPRET=1 in a subprocess."""

from __future__ import annotations

import math

import pytest
import torch
from interp_cases import INTERP, run_interpreter_cases

import fusekern
from fusekern.testing.ops_reference import merge_topk_ref


def make_teacher(N, S, K, V, *, seed, logit_dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (N, S, K), generator=g)
    lg = (torch.randn(N, S, K, generator=g) * 2).to(logit_dtype)
    ids[torch.rand(N, S, K, generator=g) < 0.2] = -1
    ids[torch.rand(N, S, generator=g) < 0.2] = -1  # absent sources
    if N > 0:
        ids[0] = -1  # nothing present at position 0
    if N > 1 and K > 1:
        ids[1, 0, 1] = ids[1, 0, 0] = 3  # duplicate within a source
        lg[1, 0, :2] = torch.tensor([1.0, 0.25]).to(logit_dtype)
    ce = torch.rand(N, S, generator=g) * 3
    ce[(ids < 0).all(-1)] = float("nan")  # CE of an absent source is never read
    if N > 2 and S > 1:
        ce[2, :] = 0.5  # tie between all sources
    return ids, lg, ce


def _dense(ids, probs, V):
    out = torch.zeros(ids.shape[0], V, dtype=torch.float64)
    return out.scatter_add_(1, ids.clamp_min(0).long(), probs.double() * (ids >= 0))


def _check_structure(ids, probs, present_row):
    assert torch.all((ids < 0) == (probs == 0))
    sums = probs.double().sum(1)
    torch.testing.assert_close(sums[present_row], torch.ones_like(sums[present_row]), rtol=1e-6, atol=1e-6)
    assert torch.all(ids[~present_row] < 0)


@pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
@pytest.mark.parametrize("shape", [(12, 3, 5, 50), (6, 1, 1, 9), (7, 4, 2, 1000)])
@pytest.mark.parametrize("temp", [1.0, 0.5])
def test_torch_path_matches_dense_merge(method, shape, temp):
    N, S, K, V = shape
    ids, lg, ce = make_teacher(N, S, K, V, seed=N + S + K)
    out_ids, probs = fusekern.merge_topk(
        ids, lg.double(), ce, method=method, teacher_temperature=temp, backend="torch"
    )
    assert out_ids.shape == probs.shape == (N, S * K) and probs.dtype == torch.float64
    ref = merge_topk_ref(ids, lg, ce, V, method=method, teacher_temperature=temp)
    torch.testing.assert_close(_dense(out_ids, probs, V), ref, rtol=1e-12, atol=1e-12)
    _check_structure(out_ids, probs, (ids >= 0).flatten(1).any(1))


def test_min_ce_ties_and_absent_sources():
    ids = torch.tensor([[[5, 6], [7, -1], [8, 9]]] * 4)
    lg = torch.zeros(4, 3, 2)
    ce = torch.tensor([[1.0, 1.0, 0.5], [0.5, 2.0, 0.5], [float("nan"), 0.7, 0.7], [float("inf")] * 3])
    ids[2, 0] = -1  # source 0 absent at row 2 (its NaN CE is ignored)
    out_ids, probs = fusekern.merge_topk(ids, lg, ce, method="min_ce", backend="torch")
    picked = [set(r[r >= 0].tolist()) for r in out_ids]
    assert picked == [{8, 9}, {5, 6}, {7}, {5, 6}]  # lowest CE; ties -> lowest present index; all +inf
    assert probs.dtype == torch.float32 and out_ids.dtype == ids.dtype


def test_avg_ce_weights_formula():
    ids = torch.tensor([[[1], [2], [3]]])
    lg = torch.zeros(1, 3, 1)
    ce = torch.tensor([[0.2, 1.5, float("inf")]])
    _, probs = fusekern.merge_topk(ids, lg, ce, method="avg_ce", backend="torch")
    u = [math.exp(math.exp(-c)) for c in (0.2, 1.5, float("inf"))]  # exp(-inf) = 0 -> weight e^0
    want = torch.tensor([v / sum(u) for v in u])
    torch.testing.assert_close(probs[0].double(), want.double(), rtol=1e-6, atol=1e-7)


def test_int32_ids_and_empty_batch():
    ids, lg, ce = make_teacher(5, 2, 3, 40, seed=1)
    a = fusekern.merge_topk(ids.to(torch.int32), lg, ce, backend="torch")
    b = fusekern.merge_topk(ids, lg, ce, backend="torch")
    assert a[0].dtype == torch.int32 and torch.equal(a[0].long(), b[0]) and torch.equal(a[1], b[1])
    e_ids, e_p = fusekern.merge_topk(ids[:0], lg[:0], ce[:0], backend="torch")
    assert e_ids.shape == (0, 6) and e_p.shape == (0, 6)


def _check_min_ce_exact_fp64(backend):
    """fp64 CEs closer than fp32 resolution are not a tie: the lower one wins (fp32 logits)."""
    ids = torch.tensor([[[1, -1], [2, -1]]] * 2)
    lg = torch.zeros(2, 2, 2)
    ce = torch.tensor([[1.0 + 1e-12, 1.0], [1.0, 1.0 + 1e-12]], dtype=torch.float64)
    out_ids, probs = fusekern.merge_topk(ids, lg, ce, method="min_ce", backend=backend)
    assert [r[p > 0].tolist() for r, p in zip(out_ids, probs)] == [[2], [1]]
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 2)
    loss = fusekern.fusion_loss(x, ids, lg, ce, method="min_ce", reduction="none", backend=backend)
    logq = torch.log_softmax(x, -1)
    torch.testing.assert_close(loss, -torch.stack([logq[0, 2], logq[1, 1]]))


def test_min_ce_compares_fp64_ce_exactly():
    _check_min_ce_exact_fp64("torch")


def _check_tiny_temperature(backend):
    """1/T or logits/T overflowing (T = 1e-38; 1e-30 with logits ~1e4) gives the T -> 0 limit
    (all mass on each source's max entry, ties split), never NaN — in the merge, the loss and
    its gradient."""
    ids = torch.tensor([[[4, 7, 2], [5, 6, -1]], [[1, 2, 3], [3, 3, 0]]])
    for temp, scale in ((1e-38, 1.0), (1e-30, 1e4), (1e-320, 1.0)):
        lg = torch.tensor([[[1.0, 3.0, 2.0], [0.5, 0.5, 9.0]], [[2.0, 2.0, -1.0], [0.0, -2.0, 5.0]]]) * scale
        ce = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
        out_ids, probs = fusekern.merge_topk(ids, lg, ce, method="avg_ce", teacher_temperature=temp,
                                             backend=backend)  # fmt: skip
        assert torch.isfinite(probs).all()
        dense = _dense(out_ids, probs, 10)
        w = torch.softmax(torch.exp(-ce.double()), 1)
        want = torch.zeros(2, 10, dtype=torch.float64)
        want[0, 7] = w[0, 0]  # row 0, source 0: max logit at id 7
        want[0, 5] = want[0, 6] = w[0, 1] / 2  # source 1: ids 5 and 6 tie (9.0 is padding)
        want[1, 1] = want[1, 2] = w[1, 0] / 2  # row 1, source 0: ids 1 and 2 tie
        want[1, 0] = w[1, 1]  # source 1: max at id 0
        torch.testing.assert_close(dense, want, rtol=1e-6, atol=1e-7)
        x = torch.randn(2, 10, dtype=torch.float32, requires_grad=True)
        loss = fusekern.fusion_loss(
            x, ids, lg, ce, method="min_ce", teacher_temperature=temp, backend=backend
        )
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_tiny_temperature_is_stable():
    _check_tiny_temperature("torch")
    # the trainer option goes through the same check: accepted, and the loss stays finite
    assert fusekern.FusionArguments(teacher_temperature=1e-38).teacher_temperature == 1e-38
    with pytest.raises(ValueError, match="teacher_temperature"):
        fusekern.FusionArguments(teacher_temperature=float("inf"))


def _check_big_int64_ids(backend):
    ids = torch.tensor([[[2**31 + 5, 2**40, -1], [7, 2**31 + 5, 1]]])
    lg = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.25, 2.0]]])
    ce = torch.tensor([[0.3, 0.2]])
    return fusekern.merge_topk(ids, lg, ce, method="avg_ce", backend=backend)


def test_int64_ids_beyond_int32_are_kept():
    out_ids, probs = _check_big_int64_ids("torch")
    assert out_ids.dtype == torch.int64 and out_ids[0].tolist() == [2**31 + 5, 2**40, -1, 7, 2**31 + 5, 1]
    torch.testing.assert_close(probs.sum(1), torch.ones(1))


def test_zero_sources_is_a_clear_error():
    ids, lg, ce = make_teacher(4, 2, 3, 20, seed=0)
    for fn in (
        lambda: fusekern.merge_topk(ids[:, :0], lg[:, :0], ce[:, :0], backend="torch"),
        lambda: fusekern.fusion_loss(torch.randn(4, 20), ids[:, :0], lg[:, :0], ce[:, :0]),
    ):
        with pytest.raises(ValueError, match="at least one source"):
            fn()


if not INTERP:

    def test_triton_interpreter_cases():
        run_interpreter_cases(__file__)

else:

    @pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
    @pytest.mark.parametrize("shape", [(9, 3, 5, 60), (4, 1, 1, 7), (5, 3, 10, 500)])
    def test_interp_kernel_matches_torch_path(method, shape):
        N, S, K, V = shape
        ids, lg, ce = make_teacher(N, S, K, V, seed=S * K)
        for temp in (1.0, 2.5):
            a = fusekern.merge_topk(
                ids.to(torch.int32), lg, ce, method=method, teacher_temperature=temp, backend="triton"
            )
            b = fusekern.merge_topk(
                ids.to(torch.int32), lg, ce, method=method, teacher_temperature=temp, backend="torch"
            )
            assert a[0].dtype == torch.int32 and torch.equal(a[0], b[0])
            torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=1e-7)
            ref = merge_topk_ref(ids, lg, ce, V, method=method, teacher_temperature=temp)
            torch.testing.assert_close(_dense(a[0], a[1], V), ref, rtol=1e-6, atol=1e-7)

    def test_interp_min_ce_compares_fp64_ce_exactly():
        _check_min_ce_exact_fp64("triton")

    def test_interp_tiny_temperature_is_stable():
        _check_tiny_temperature("triton")

    def test_interp_int64_ids_agree_with_torch_path():
        a, b = _check_big_int64_ids("triton"), _check_big_int64_ids("torch")
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
        with pytest.raises(ValueError, match="at least one source"):
            fusekern.merge_topk(*(t[:, :0] for t in make_teacher(3, 2, 2, 9, seed=1)), backend="triton")
