"""FusionLoss (λ·CLM + (1−λ)·fusion, one pass over the logits) against the FuseLLM-style dense
two-loss reference in fp64; shifted masking, per-token and per-sequence CE, a mutable lm_weight,
gradcheck, and the fused Triton kernel under TRITON_INTERPRET=1."""

from __future__ import annotations

import pytest
import torch
from interp_cases import INTERP, run_interpreter_cases

import fusekern
from fusekern.testing.ops_reference import fusion_module_ref


def make_batch(B, T, V, S, K, *, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < 0.25] = -100
    ids = torch.randint(0, V, (B, T, S, K), generator=g).to(torch.int32)
    ids[torch.rand(B, T, S, K, generator=g) < 0.2] = -1
    ids[torch.rand(B, T, S, generator=g) < 0.2] = -1
    # the gold next token among the teacher ids at some positions (shares a gradient column)
    for b in range(B):
        for t in range(0, T - 1, 2):
            if labels[b, t + 1] >= 0:
                ids[b, t, 0, 0] = labels[b, t + 1]
    tlg = (torch.randn(B, T, S, K, generator=g) * 2).half()
    ce_tok = torch.rand(B, T, S, generator=g) * 2
    ce_seq = torch.rand(B, S, generator=g) * 2
    return logits, labels.to(torch.int32), ids, tlg, ce_tok, ce_seq


def _check(batch, *, lm_weight, method, loss_type, temp, backend, per_seq=False, rtol=1e-9, atol=1e-10):
    logits, labels, ids, tlg, ce_tok, ce_seq = batch
    ce = ce_seq if per_seq else ce_tok
    mod = fusekern.FusionLoss(lm_weight, method, temp, loss_type, backend=backend)
    xa = logits.detach().clone().requires_grad_()
    xb = logits.detach().double().requires_grad_()
    a = mod(xa, labels, ids, tlg, ce)
    b = fusion_module_ref(
        xb,
        labels,
        ids,
        tlg,
        ce,
        lm_weight=lm_weight,
        method=method,
        teacher_temperature=temp,
        loss_type=loss_type,
    )
    a.backward()
    b.backward()
    assert a.dim() == 0
    torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=rtol, atol=atol)
    return mod


@pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("per_seq", [False, True], ids=["ce_tok", "ce_seq"])
def test_matches_two_loss_reference(method, loss_type, per_seq):
    batch = make_batch(3, 9, 101, 3, 4, seed=5)
    _check(
        batch, lm_weight=0.9, method=method, loss_type=loss_type, temp=1.0, backend="torch", per_seq=per_seq
    )
    _check(
        batch, lm_weight=0.35, method=method, loss_type=loss_type, temp=2.0, backend="torch", per_seq=per_seq
    )


def test_lm_weight_is_mutable_and_extremes():
    batch = make_batch(2, 7, 50, 2, 3, seed=8)
    mod = fusekern.FusionLoss(0.9, backend="torch")
    logits, labels, ids, tlg, ce, _ = batch
    clm = fusion_module_ref(logits, labels, ids, tlg, ce, lm_weight=1.0)
    fus = fusion_module_ref(logits, labels, ids, tlg, ce, lm_weight=0.0)
    for lam in (0.9, 0.0, 1.0, 0.5):
        mod.lm_weight = lam
        out = mod(logits, labels, ids, tlg, ce)
        torch.testing.assert_close(out, lam * clm + (1 - lam) * fus)
        torch.testing.assert_close(mod.last_clm, clm)
        torch.testing.assert_close(mod.last_fusion, fus)
    mod.lm_weight = 1.5
    with pytest.raises(ValueError, match="lm_weight"):
        mod(logits, labels, ids, tlg, ce)


def test_no_counted_position_gives_zero_and_zero_grad():
    logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 30, 2, 2, seed=1)
    x = logits.clone().requires_grad_()
    loss = fusekern.FusionLoss(0.7, backend="torch")(x, torch.full_like(labels, -100), ids, tlg, ce)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0
    # labels only at t=0: nothing is predicted (t=0 is never a target), fusion needs labels[t+1]
    lab = torch.full_like(labels, -100)
    lab[:, 0] = 3
    x.grad = None
    loss = fusekern.FusionLoss(0.7, backend="torch")(x, lab, ids, tlg, ce)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0


def test_fusion_counts_only_where_next_label_is_kept():
    logits, labels, ids, tlg, ce, _ = make_batch(1, 6, 40, 2, 3, seed=4)
    labels[0] = torch.tensor([5, 6, -100, 7, -100, 8], dtype=torch.int32)
    x = logits.clone().requires_grad_()
    fusekern.FusionLoss(0.0, backend="torch")(x, labels, ids, tlg, ce).backward()
    rows_with_grad = (x.grad[0] != 0).any(-1)
    # t counts iff labels[t+1] != -100 (and a source is present): t = 0, 2, 4
    present = (ids[0] >= 0).flatten(1).any(1)
    assert rows_with_grad.tolist() == [bool(present[t]) and t in (0, 2, 4) for t in range(6)]


def test_one_pass_over_the_logits(monkeypatch):
    """CLM and fusion come out of a single row pass, not two losses."""
    from fusekern.ops.engine import function

    calls = []
    real = function.torch_rows
    monkeypatch.setattr(function, "torch_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 30, 2, 2, seed=2)
    fusekern.FusionLoss(0.5, backend="torch")(logits.requires_grad_(), labels, ids, tlg, ce).backward()
    assert len(calls) == 1


def test_no_gradient_written_when_none_is_wanted(monkeypatch):
    """Under ``torch.no_grad`` (evaluation) the row pass computes the loss only, even for logits
    that require grad; with grad mode on it writes the gradient."""
    from fusekern.ops.engine import function

    wanted = []
    real = function.torch_rows
    monkeypatch.setattr(function, "torch_rows", lambda *a, **k: wanted.append(a[7]) or real(*a, **k))
    logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 30, 2, 2, seed=2)
    x = logits.requires_grad_()
    mod = fusekern.FusionLoss(0.5, backend="torch")
    with torch.no_grad():
        a = mod(x, labels, ids, tlg, ce)
    b = mod(x, labels, ids, tlg, ce)
    assert wanted == [False, True] and not a.requires_grad and b.requires_grad
    torch.testing.assert_close(a, b.detach())


def test_gradcheck():
    logits, labels, ids, tlg, ce, _ = make_batch(2, 4, 13, 2, 3, seed=3)
    mod = fusekern.FusionLoss(0.6, "avg_ce", 1.4, backend="torch")
    assert torch.autograd.gradcheck(lambda t: mod(t, labels, ids, tlg, ce), (logits.requires_grad_(),))


def test_bf16_logits():
    batch = make_batch(2, 8, 200, 3, 5, seed=6, dtype=torch.bfloat16)
    logits, labels, ids, tlg, ce, _ = batch
    x = logits.clone().requires_grad_()
    loss = fusekern.FusionLoss(0.9, backend="torch")(x, labels, ids, tlg, ce)
    loss.backward()
    xb = logits.double().requires_grad_()
    ref = fusion_module_ref(xb, labels, ids, tlg, ce, lm_weight=0.9)
    ref.backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xb.grad, rtol=2e-2, atol=1e-4)


def test_bad_inputs():
    logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 30, 2, 2, seed=1)
    mod = fusekern.FusionLoss(backend="torch")
    with pytest.raises(ValueError, match="labels"):
        mod(logits, labels[:, :4], ids, tlg, ce)
    bad = labels.clone()
    bad[0, 1] = 30
    with pytest.raises(ValueError, match="labels"):
        mod(logits, bad, ids, tlg, ce)
    with pytest.raises(TypeError, match="labels"):
        mod(logits, labels.float(), ids, tlg, ce)
    with pytest.raises(ValueError, match="source_ce"):
        mod(logits, labels, ids, tlg, ce[:, :3])
    with pytest.raises(ValueError, match="teacher_ids"):
        mod(logits, labels, ids[:, :, 0], tlg[:, :, 0], ce)
    with pytest.raises(ValueError, match="logits"):
        mod(logits[0], labels, ids, tlg, ce)
    with pytest.raises(ValueError, match="method"):
        fusekern.FusionLoss(method="max_ce")
    with pytest.raises(TypeError, match="lm_weight"):
        fusekern.FusionLoss(lm_weight="0.9")


if not INTERP:

    def test_triton_interpreter_cases():
        run_interpreter_cases(__file__)

else:
    from fusekern.testing.ops_override import override_config

    @pytest.mark.parametrize("cfg", [{}, {"single": False, "block_v": 32}], ids=["single", "stream"])
    @pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
    def test_interp_matches_reference(cfg, method):
        batch = make_batch(2, 6, 77, 3, 4, seed=9, dtype=torch.float32)
        with override_config(**cfg):
            _check(
                batch,
                lm_weight=0.6,
                method=method,
                loss_type="kl",
                temp=1.0,
                backend="triton",
                rtol=2e-5,
                atol=2e-6,
            )
            _check(
                batch,
                lm_weight=0.0,
                method=method,
                loss_type="ce",
                temp=1.5,
                backend="triton",
                per_seq=True,
                rtol=2e-5,
                atol=2e-6,
            )

    def test_interp_bf16_matches_torch_path():
        logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 64, 2, 3, seed=4, dtype=torch.bfloat16)
        outs = []
        for backend in ("triton", "torch"):
            x = logits.clone().requires_grad_()
            loss = fusekern.FusionLoss(0.9, backend=backend)(x, labels, ids, tlg, ce)
            loss.backward()
            outs.append((loss, x.grad))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0][1].float(), outs[1][1].float(), rtol=1e-2, atol=1e-4)

    def test_interp_bad_label_raises():
        logits, labels, ids, tlg, ce, _ = make_batch(2, 5, 64, 2, 3, seed=4, dtype=torch.float32)
        labels[1, 3] = 64
        with pytest.raises(ValueError, match="labels"):
            fusekern.FusionLoss(0.9, backend="triton")(logits, labels, ids, tlg, ce)
