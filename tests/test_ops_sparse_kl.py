"""sparse_kl_loss against the dense fp64 reference: padding, duplicates, empty rows, ignore masks,
odd shapes, both loss types, all reductions, temperature; gradcheck; backward scaling; the Triton
kernel under TRITON_INTERPRET=1 (in a subprocess, since the variable must be set before triton
is imported)."""

from __future__ import annotations

import pytest
import torch
from interp_cases import INTERP, run_interpreter_cases

import fusekern
from fusekern.testing.ops_reference import sparse_kl_loss_ref


def make_inputs(N, V, K, *, seed, dtype=torch.float64, scale=3.0):
    """Random student/teacher with padding entries, duplicate ids, an all-padding row and
    fp16 teacher logits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, V, generator=g, dtype=torch.float64).mul_(scale).to(dtype)
    ids = torch.randint(0, V, (N, K), generator=g)
    lg = (torch.randn(N, K, generator=g) * 2).half()
    pad = torch.rand(N, K, generator=g) < 0.25
    ids[pad] = -1
    lg[pad] = float("nan")  # padding entries may hold anything
    if N > 1:
        ids[1] = -1  # an empty (absent-teacher) row
    if N > 2 and K > 1:
        ids[2, 1] = ids[2, 0] = V - 1  # duplicate id, last column
        lg[2, :2] = torch.tensor([0.5, -1.0]).half()
    mask = torch.rand(N, generator=g) < 0.2
    return x, ids, lg, mask


def _check(x, ids, lg, mask, *, backend, loss_type, reduction, temp, rtol=1e-9, atol=1e-10):
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().double().requires_grad_()
    a = fusekern.sparse_kl_loss(
        xa,
        ids,
        lg,
        teacher_temperature=temp,
        loss_type=loss_type,
        ignore_mask=mask,
        reduction=reduction,
        backend=backend,
    )
    b = sparse_kl_loss_ref(
        xb, ids, lg, teacher_temperature=temp, loss_type=loss_type, ignore_mask=mask, reduction=reduction
    )
    assert a.shape == b.shape
    w = (
        torch.randn(a.shape, dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(1.7, dtype=torch.float64)
    )
    (a.double() * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(9, 301, 7), (5, 64, 1), (1, 17, 3)])
def test_torch_path_matches_dense_reference(loss_type, reduction, shape):
    N, V, K = shape
    x, ids, lg, mask = make_inputs(N, V, K, seed=N * V + K)
    _check(x, ids, lg, mask, backend="torch", loss_type=loss_type, reduction=reduction, temp=1.0)
    _check(x, ids, lg, None, backend="torch", loss_type=loss_type, reduction=reduction, temp=0.7)


def test_small_chunks_cover_every_row(monkeypatch):
    """The row loop must handle chunks that split N unevenly and chunks with no active row."""
    from fusekern.ops.engine import torch_rows

    monkeypatch.setattr(torch_rows, "chunk_rows", lambda V, dev: 2)
    x, ids, lg, mask = make_inputs(7, 50, 4, seed=3)
    ids[3:5] = -1
    _check(x, ids, lg, mask, backend="torch", loss_type="kl", reduction="none", temp=1.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    x, ids, lg, mask = make_inputs(6, 257, 5, seed=11, dtype=dtype, scale=2.0)
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    xa = x.clone().requires_grad_()
    loss = fusekern.sparse_kl_loss(xa, ids, lg, ignore_mask=mask, backend="torch")
    assert loss.dtype == torch.float32
    loss.backward()
    assert xa.grad.dtype == dtype
    xb = x.double().requires_grad_()
    ref = sparse_kl_loss_ref(xb, ids, lg, ignore_mask=mask)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=tol, atol=tol * 0.1)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_torch_path(reduction):
    x, ids, lg, mask = make_inputs(5, 23, 4, seed=5)
    x.requires_grad_()
    f = lambda t: fusekern.sparse_kl_loss(
        t, ids, lg, ignore_mask=mask, reduction=reduction, teacher_temperature=1.5, backend="torch"
    )
    assert torch.autograd.gradcheck(f, (x,))


def test_nothing_contributes_gives_zero_not_nan():
    x, ids, lg, _ = make_inputs(4, 30, 3, seed=2)
    x.requires_grad_()
    for ids_, mask in [(torch.full_like(ids, -1), None), (ids, torch.ones(4, dtype=torch.bool))]:
        loss = fusekern.sparse_kl_loss(x, ids_, lg, ignore_mask=mask, backend="torch")
        (g,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.count_nonzero(g) == 0
        rows = fusekern.sparse_kl_loss(x, ids_, lg, ignore_mask=mask, reduction="none", backend="torch")
        assert rows.shape == (4,) and torch.count_nonzero(rows) == 0


def test_backward_scaling_and_retained_graph():
    """The stored gradient is scaled in place on the first backward only; repeated backwards
    through a retained graph with different grad_outputs stay correct."""
    x, ids, lg, mask = make_inputs(6, 40, 4, seed=9)
    x.requires_grad_()
    loss = fusekern.sparse_kl_loss(x, ids, lg, ignore_mask=mask, backend="torch")
    (g1,) = torch.autograd.grad(loss, x, torch.tensor(1.0, dtype=loss.dtype), retain_graph=True)
    g1 = g1.clone()
    (g3,) = torch.autograd.grad(loss * 3, x, retain_graph=True)
    (g5,) = torch.autograd.grad(loss * -0.5, x, retain_graph=True)
    (g0,) = torch.autograd.grad(loss * 0, x, retain_graph=True)
    (g3b,) = torch.autograd.grad(loss * 3, x)
    torch.testing.assert_close(g3, 3 * g1)
    torch.testing.assert_close(g5, -0.5 * g1)
    torch.testing.assert_close(g3b, 3 * g1)
    assert torch.count_nonzero(g0) == 0


def test_no_grad_and_noncontiguous_inputs():
    x, ids, lg, mask = make_inputs(8, 33, 4, seed=4)
    xt = x.t().contiguous().t()  # column-major storage
    with torch.no_grad():
        a = fusekern.sparse_kl_loss(xt, ids, lg, ignore_mask=mask, backend="torch")
    b = sparse_kl_loss_ref(x, ids, lg, ignore_mask=mask)
    torch.testing.assert_close(a, b)
    # int32 ids and a strided teacher view
    ids2 = torch.stack([ids, ids], -1).flatten(1)[:, ::2].to(torch.int32)
    lg2 = torch.stack([lg, lg], -1).flatten(1)[:, ::2]
    c = fusekern.sparse_kl_loss(x, ids2, lg2, ignore_mask=mask, backend="torch")
    torch.testing.assert_close(c, b)


def test_auto_backend_on_cpu_uses_torch_path():
    x, ids, lg, mask = make_inputs(4, 20, 3, seed=8)
    a = fusekern.sparse_kl_loss(x, ids, lg, ignore_mask=mask)
    b = fusekern.sparse_kl_loss(x, ids, lg, ignore_mask=mask, backend="torch")
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Triton kernel under the interpreter (subprocess)
# ------------------------------------------------------------------------------------------
if not INTERP:

    def test_triton_interpreter_cases():
        run_interpreter_cases(__file__)

else:
    from fusekern.testing.ops_override import override_config

    @pytest.mark.parametrize("loss_type", ["kl", "ce"])
    @pytest.mark.parametrize("cfg", [{}, {"single": False, "block_v": 32}], ids=["single", "stream"])
    @pytest.mark.parametrize("shape", [(6, 203, 5), (3, 16, 1)])
    def test_interp_matches_reference(loss_type, cfg, shape):
        N, V, K = shape
        x, ids, lg, mask = make_inputs(N, V, K, seed=V + K, dtype=torch.float32)
        with override_config(**cfg):
            for red in ("mean", "none"):
                _check(
                    x,
                    ids,
                    lg,
                    mask,
                    backend="triton",
                    loss_type=loss_type,
                    reduction=red,
                    temp=1.3,
                    rtol=2e-5,
                    atol=2e-6,
                )

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_interp_half_logits_match_torch_path(dtype):
        x, ids, lg, mask = make_inputs(5, 100, 6, seed=1, dtype=dtype, scale=2.0)
        outs = []
        for backend in ("triton", "torch"):
            xa = x.clone().requires_grad_()
            loss = fusekern.sparse_kl_loss(xa, ids, lg, ignore_mask=mask, backend=backend)
            loss.backward()
            outs.append((loss, xa.grad))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0][1].float(), outs[1][1].float(), rtol=1e-2, atol=1e-4)

    def test_interp_no_grad_and_inactive_rows():
        x, ids, lg, _ = make_inputs(4, 40, 3, seed=6, dtype=torch.float32)
        mask = torch.tensor([True, False, True, False])
        x[0] = float("nan")  # ignored rows are not read
        with torch.no_grad():
            a = fusekern.sparse_kl_loss(x, ids, lg, ignore_mask=mask, reduction="none", backend="triton")
        b = sparse_kl_loss_ref(x.double().nan_to_num(0.0), ids, lg, ignore_mask=mask, reduction="none")
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
        xa = x.clone().requires_grad_()
        fusekern.sparse_kl_loss(xa, ids, lg, ignore_mask=mask, backend="triton").backward()
        assert torch.count_nonzero(xa.grad[0]) == 0 and torch.count_nonzero(xa.grad[2]) == 0
        assert torch.isfinite(xa.grad).all()
