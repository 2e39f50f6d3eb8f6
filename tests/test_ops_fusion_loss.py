"""fusion_loss (merge + distillation fused) against the dense FuseLLM recipe in fp64, its identity
with sparse_kl_loss ∘ merge_topk, gradcheck, and the Triton kernel under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from interp_cases import INTERP, run_interpreter_cases

import fusekern
from fusekern.testing.ops_reference import fusion_loss_ref


def make_inputs(N, V, S, K, *, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    ids = torch.randint(0, V, (N, S, K), generator=g)
    lg = (torch.randn(N, S, K, generator=g) * 2).half()
    ids[torch.rand(N, S, K, generator=g) < 0.2] = -1
    ids[torch.rand(N, S, generator=g) < 0.25] = -1  # absent sources
    if N > 1:
        ids[1] = -1  # no source at all
    if N > 2 and S > 1:
        ids[2, 1, 0] = ids[2, 0, 0] = V - 1  # same id from two sources
        lg[2, :2, 0] = 1.0
    ce = torch.rand(N, S, generator=g) * 3
    if N > 3 and S > 1:
        ce[3] = 1.0  # MinCE tie
    mask = torch.rand(N, generator=g) < 0.2
    return x, ids, lg, ce, mask


def _check(x, ids, lg, ce, mask, *, backend, method, loss_type, reduction, temp, rtol=1e-9, atol=1e-10):
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().double().requires_grad_()
    kw = dict(
        method=method, teacher_temperature=temp, loss_type=loss_type, ignore_mask=mask, reduction=reduction
    )
    a = fusekern.fusion_loss(xa, ids, lg, ce, backend=backend, **kw)
    b = fusion_loss_ref(xb, ids, lg, ce, **kw)
    w = (
        torch.randn(a.shape, dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(0.8, dtype=torch.float64)
    )
    (a.double() * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_path_matches_dense_reference(method, loss_type, reduction):
    x, ids, lg, ce, mask = make_inputs(11, 157, 3, 5, seed=7)
    _check(
        x,
        ids,
        lg,
        ce,
        mask,
        backend="torch",
        method=method,
        loss_type=loss_type,
        reduction=reduction,
        temp=1.0,
    )
    _check(
        x,
        ids,
        lg,
        ce,
        None,
        backend="torch",
        method=method,
        loss_type=loss_type,
        reduction=reduction,
        temp=2.0,
    )


@pytest.mark.parametrize("shape", [(6, 33, 1, 4), (5, 20, 2, 1), (3, 1000, 4, 2)])
def test_odd_shapes(shape):
    N, V, S, K = shape
    x, ids, lg, ce, mask = make_inputs(N, V, S, K, seed=V)
    for method in ("min_ce", "avg_ce"):
        _check(
            x, ids, lg, ce, mask, backend="torch", method=method, loss_type="kl", reduction="mean", temp=0.8
        )


@pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
def test_equals_sparse_kl_of_merged_teacher(method):
    x, ids, lg, ce, mask = make_inputs(9, 64, 3, 4, seed=21)
    fused = fusekern.fusion_loss(
        x,
        ids,
        lg,
        ce,
        method=method,
        teacher_temperature=1.3,
        ignore_mask=mask,
        reduction="none",
        backend="torch",
    )
    m_ids, m_p = fusekern.merge_topk(
        ids, lg.double(), ce, method=method, teacher_temperature=1.3, backend="torch"
    )
    two_step = fusekern.sparse_kl_loss(
        x, m_ids, m_p.log(), ignore_mask=mask, reduction="none", backend="torch"
    )
    torch.testing.assert_close(fused, two_step, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_torch_path(reduction):
    x, ids, lg, ce, mask = make_inputs(5, 19, 3, 3, seed=13)
    x.requires_grad_()
    f = lambda t: fusekern.fusion_loss(
        t,
        ids,
        lg,
        ce,
        method="avg_ce",
        ignore_mask=mask,
        reduction=reduction,
        teacher_temperature=0.9,
        backend="torch",
    )
    assert torch.autograd.gradcheck(f, (x,))


def test_bf16_logits_fp16_teacher():
    x, ids, lg, ce, mask = make_inputs(8, 300, 3, 10, seed=3, dtype=torch.bfloat16)
    xa = x.clone().requires_grad_()
    loss = fusekern.fusion_loss(xa, ids, lg, ce, ignore_mask=mask, backend="torch")
    loss.backward()
    xb = x.double().requires_grad_()
    ref = fusion_loss_ref(xb, ids, lg, ce, ignore_mask=mask)
    ref.backward()
    assert loss.dtype == torch.float32 and xa.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=2e-2, atol=2e-4)


if not INTERP:

    def test_triton_interpreter_cases():
        run_interpreter_cases(__file__)

else:
    from fusekern.testing.ops_override import override_config

    @pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
    @pytest.mark.parametrize("cfg", [{}, {"single": False, "block_v": 64}], ids=["single", "stream"])
    def test_interp_matches_reference(method, cfg):
        x, ids, lg, ce, mask = make_inputs(7, 201, 3, 5, seed=17, dtype=torch.float32)
        with override_config(**cfg):
            for loss_type, red, temp in (("kl", "mean", 1.0), ("ce", "none", 1.7), ("kl", "sum", 0.6)):
                _check(
                    x,
                    ids,
                    lg,
                    ce,
                    mask,
                    backend="triton",
                    method=method,
                    loss_type=loss_type,
                    reduction=red,
                    temp=temp,
                    rtol=2e-5,
                    atol=2e-6,
                )

    def test_interp_s1_k1():
        x, ids, lg, ce, mask = make_inputs(4, 16, 1, 1, seed=2, dtype=torch.float32)
        _check(
            x,
            ids,
            lg,
            ce,
            mask,
            backend="triton",
            method="min_ce",
            loss_type="kl",
            reduction="mean",
            temp=1.0,
            rtol=2e-5,
            atol=2e-6,
        )

    def test_interp_nonfinite_student_row_raises():
        x, ids, lg, ce, _ = make_inputs(4, 40, 2, 3, seed=5, dtype=torch.float32)
        ids[0, 0, 0] = 1
        lg[0, 0, 0] = 0.0
        for bad in (float("nan"), float("inf"), float("-inf")):
            x2 = x.clone()
            x2[0, 7] = bad
            with pytest.raises(ValueError, match="student_logits"):
                fusekern.fusion_loss(x2, ids, lg, ce, backend="triton")
            # the same row ignored: fine
            mask = torch.tensor([True, False, False, False])
            assert torch.isfinite(fusekern.fusion_loss(x2, ids, lg, ce, ignore_mask=mask, backend="triton"))

    def test_interp_out_of_vocab_ids_raise_after_masked_kernel():
        x, ids, lg, ce, _ = make_inputs(3, 40, 2, 3, seed=5, dtype=torch.float32)
        ids[1, 0, 0] = 40
        lg[1, 0, 0] = 1.0
        with pytest.raises(ValueError, match="teacher_ids"):
            fusekern.fusion_loss(x.requires_grad_(), ids, lg, ce, backend="triton")
