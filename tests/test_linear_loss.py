"""LinearFusionLoss (fused LM head + FusionLoss, logits never materialised) against FusionLoss on
the materialised logits ``hidden @ weight.T + bias``, and against the dense FuseLLM-style
reference: value and the gradients of hidden, weight and bias, fp64, both backends (Triton under
TRITON_INTERPRET=1), chunk boundaries inside sequences, all-ignored chunks, per-sequence CE,
duplicates across sources, λ = 0 and 1, bad input."""

from __future__ import annotations

import pytest
import torch
from interp_cases import INTERP, run_interpreter_cases
from test_loss_module import make_batch

import fusekern
from fusekern.testing.ops_reference import fusion_module_ref


def head_batch(B, T, H, V, S, K, *, seed, dtype=torch.float64, bias=True, dup=True):
    _, labels, ids, tlg, ce_tok, ce_seq = make_batch(B, T, V, S, K, seed=seed)
    if dup and S > 1:  # the same ids in two sources (their probabilities add)
        ids[:, :, 1, : K // 2] = ids[:, :, 0, : K // 2]
    g = torch.Generator().manual_seed(seed + 1)
    h = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.7).to(dtype)
    b = (torch.randn(V, generator=g, dtype=torch.float64) * 0.5).to(dtype) if bias else None
    return h, w, b, labels, ids, tlg, ce_tok, ce_seq


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def _compare(batch, *, lm_weight=0.8, method="min_ce", loss_type="kl", temp=1.0, per_seq=False,
             chunk_size=None, backend="torch", ref_backend="torch", rtol=1e-9, atol=1e-11):  # fmt: skip
    h, w, b, labels, ids, tlg, ce_tok, ce_seq = batch
    ce = ce_seq if per_seq else ce_tok
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (h, w, b)]
    logits = leaves[0] @ leaves[1].T + (leaves[2] if leaves[2] is not None else 0)
    ref_mod = fusekern.FusionLoss(lm_weight, method, temp, loss_type, backend=ref_backend)
    ref = ref_mod(logits, labels, ids, tlg, ce)
    g_ref = _grads(ref, leaves)
    mod = fusekern.LinearFusionLoss(
        lm_weight, method, temp, loss_type, chunk_size=chunk_size, backend=backend
    )
    leaves2 = [t.detach().clone().requires_grad_() if t is not None else None for t in (h, w, b)]
    out = mod(leaves2[0], leaves2[1], labels, ids, tlg, ce, leaves2[2])
    g_out = _grads(out, leaves2)
    assert out.dim() == 0
    torch.testing.assert_close(out.double(), ref.double(), rtol=rtol, atol=atol)
    for a, r in zip(g_out, g_ref):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a.double(), r.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(mod.last_clm.double(), ref_mod.last_clm.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(mod.last_fusion.double(), ref_mod.last_fusion.double(), rtol=rtol, atol=atol)
    return out


@pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("per_seq", [False, True], ids=["ce_tok", "ce_seq"])
def test_matches_fusion_loss_on_logits(method, loss_type, per_seq):
    batch = head_batch(3, 9, 7, 101, 3, 4, seed=5)
    # chunks of 4 rows: boundaries fall inside sequences (T = 9)
    for chunk in (None, 4):
        _compare(batch, method=method, loss_type=loss_type, per_seq=per_seq, chunk_size=chunk)
    _compare(batch, method=method, loss_type=loss_type, per_seq=per_seq, temp=1.7, lm_weight=0.3)


@pytest.mark.parametrize("lm_weight", [0.0, 1.0])
@pytest.mark.parametrize("bias", [False, True])
def test_extremes_of_lm_weight_and_no_bias(lm_weight, bias):
    batch = head_batch(2, 8, 5, 60, 2, 3, seed=2, bias=bias)
    _compare(batch, lm_weight=lm_weight, chunk_size=3)


def test_equals_dense_fusellm_reference():
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 7, 6, 50, 3, 5, seed=8)
    hl, wl, bl = (t.clone().requires_grad_() for t in (h, w, b))
    ref = fusion_module_ref(h @ w.T + b, labels, ids, tlg, ce, lm_weight=0.6, method="avg_ce")
    out = fusekern.linear_fusion_loss(
        hl, wl, labels, ids, tlg, ce, bl, lm_weight=0.6, method="avg_ce", chunk_size=5, backend="torch"
    )
    torch.testing.assert_close(out, ref)
    out.backward()
    hr, wr, br = (t.clone().requires_grad_() for t in (h, w, b))
    fusion_module_ref(hr @ wr.T + br, labels, ids, tlg, ce, lm_weight=0.6, method="avg_ce").backward()
    for a, r in ((hl, hr), (wl, wr), (bl, br)):
        torch.testing.assert_close(a.grad, r.grad)


def test_all_ignored_chunks_and_nothing_counted():
    batch = list(head_batch(4, 6, 5, 40, 2, 3, seed=3))
    labels = batch[3].clone()
    labels[1:3] = -100  # two whole sequences ignored: with chunk 4 some chunks have no active row
    batch[3] = labels
    _compare(tuple(batch), chunk_size=4)
    # no counted position at all: zero loss, zero gradients
    h, w, b = (t.clone().requires_grad_() for t in batch[:3])
    loss = fusekern.LinearFusionLoss(0.5, chunk_size=2, backend="torch")(
        h, w, torch.full_like(labels, -100), *batch[4:7], b
    )
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(t.grad) == 0 for t in (h, w, b))


def test_many_duplicates_large_sk():
    """S·K = 8·64: every id repeated across sources; the sort/segment sum stays exact."""
    h, w, b, labels, ids, tlg, ce, ce_seq = head_batch(1, 6, 4, 97, 8, 64, seed=4, dup=False)
    ids[:, :, :, :] = ids[:, :, :1, :]  # all 8 sources list the same ids
    _compare((h, w, b, labels, ids, tlg, ce, ce_seq), chunk_size=4, method="avg_ce")


def test_gradient_accumulation_scaling_and_frozen_weight():
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 5, 4, 30, 2, 3, seed=6)
    mod = fusekern.LinearFusionLoss(0.9, chunk_size=3, backend="torch")
    hl = h.clone().requires_grad_()
    (mod(hl, w, labels, ids, tlg, ce, b) * 0.25).backward()  # weight/bias frozen: no grads
    hr = h.clone().requires_grad_()
    (fusekern.FusionLoss(0.9, backend="torch")(hr @ w.T + b, labels, ids, tlg, ce) * 0.25).backward()
    torch.testing.assert_close(hl.grad, hr.grad)
    with torch.no_grad():
        v = mod(h, w, labels, ids, tlg, ce, b)
    torch.testing.assert_close(v, fusekern.FusionLoss(0.9)(h @ w.T + b, labels, ids, tlg, ce))


def test_fp32_and_bf16_against_logits_path():
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 8, 16, 300, 3, 4, seed=7, dtype=torch.float32)
    _compare((h, w, b, labels, ids, tlg, ce, ce), chunk_size=5, rtol=1e-5, atol=1e-6)
    hb, wb, bb = (t.bfloat16().requires_grad_() for t in (h, w, b))
    out = fusekern.LinearFusionLoss(0.9, chunk_size=5)(hb, wb, labels, ids, tlg, ce, bb)
    out.backward()
    assert hb.grad.dtype == wb.grad.dtype == torch.bfloat16
    hr, wr, br = (t.bfloat16().double().requires_grad_() for t in (h, w, b))
    ref = fusion_module_ref(hr @ wr.T + br, labels, ids, tlg, ce, lm_weight=0.9)
    ref.backward()
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(wb.grad.double(), wr.grad, rtol=5e-2, atol=2e-3)


def test_autocast_casts_like_linear():
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 6, 8, 64, 2, 3, seed=9, dtype=torch.float32)
    wl = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusekern.LinearFusionLoss(0.9)(h, wl, labels, ids, tlg, ce, b)
        ref = fusekern.FusionLoss(0.9)(torch.nn.functional.linear(h, w, b), labels, ids, tlg, ce)
    out.backward()
    assert wl.grad.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 5, 4, 30, 2, 3, seed=1, dtype=torch.float32)
    mod = fusekern.LinearFusionLoss(backend="torch")
    cases = [
        ((h[0], w, labels, ids, tlg, ce, b), ValueError, "hidden"),
        ((h, w[:, :3], labels, ids, tlg, ce, b), ValueError, "weight"),
        ((h, w, labels, ids, tlg, ce, b[:-1]), ValueError, "bias"),
        ((h, w.double(), labels, ids, tlg, ce, b), TypeError, "weight dtype"),
        ((h, w, labels, ids, tlg, ce, b.half()), TypeError, "bias dtype"),
        ((h, w, labels, ids, tlg, ce, b.long()), TypeError, "bias"),
        ((h, w[:20], labels, ids, tlg, ce, b[:20]), ValueError, "teacher_ids holds ids >= the vocabulary"),
        ((h, w, labels[:, :4], ids, tlg, ce, b), ValueError, "labels"),
        ((h, w, labels, ids[:, :, :0], tlg[:, :, :0], ce[:, :, :0], b), ValueError, "at least one source"),
        ((h, w, labels, ids, tlg, ce[:, :, :1], b), ValueError, "source_ce"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            mod(*args)
    bad = labels.clone()
    bad[0, 2] = 30
    with pytest.raises(ValueError, match="labels"):
        mod(h, w, bad, ids, tlg, ce, b)
    hn = h.clone()
    t = int((labels[1, 1:] != -100).nonzero()[0, 0])  # a position that counts
    hn[1, t, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        mod(hn, w, labels, ids, tlg, ce, b)
    with pytest.raises(ValueError, match="chunk_size"):
        fusekern.LinearFusionLoss(chunk_size=0)


if not INTERP:

    def test_triton_interpreter_cases():
        run_interpreter_cases(__file__)

else:

    @pytest.mark.parametrize("method", ["min_ce", "avg_ce"])
    def test_interp_triton_row_pass(method):
        h, w, b, labels, ids, tlg, ce, ce_seq = head_batch(2, 6, 8, 77, 3, 4, seed=9, dtype=torch.float32)
        batch = (h, w, b, labels, ids, tlg, ce, ce_seq)
        for chunk, per_seq in ((4, False), (None, True)):
            _compare(batch, method=method, chunk_size=chunk, per_seq=per_seq, backend="triton",
                     rtol=2e-5, atol=2e-6)  # fmt: skip
        labels = labels.clone()
        labels[0] = -100  # a whole ignored sequence, λ = 0
        _compare((h, w, None, labels, *batch[4:]), lm_weight=0.0, chunk_size=3, backend="triton",
                 rtol=2e-5, atol=2e-6)  # fmt: skip

    def test_interp_streaming_row_pass_in_place():
        """The streaming kernel variant (two reads per row) writing the gradient over its logits."""
        from fusekern.testing.ops_override import override_config

        batch = head_batch(2, 5, 8, 70, 2, 3, seed=11, dtype=torch.float32)
        with override_config(single=False, block_v=32):
            _compare(batch, lm_weight=0.5, chunk_size=4, backend="triton", rtol=2e-5, atol=2e-6)


def test_row_max_far_above_label_and_teacher_columns():
    """A column far above every label/teacher column (bias +200): the row pass cannot take the
    logsumexp from those columns' softmax and falls back to the exact one (logits re-read on the
    logits path, recomputed from hidden/weight on the fused path)."""
    h, w, b, labels, ids, tlg, ce, _ = head_batch(2, 6, 5, 40, 2, 3, seed=12)
    ids = torch.where(ids == 5, 6, ids)
    labels = torch.where(labels == 5, 6, labels)
    b = b.clone()
    b[5] = 200.0
    hl, wl, bl = (t.clone().requires_grad_() for t in (h, w, b))
    out = fusekern.LinearFusionLoss(0.7, chunk_size=4, backend="torch")(hl, wl, labels, ids, tlg, ce, bl)
    out.backward()
    hr, wr, br = (t.clone().requires_grad_() for t in (h, w, b))
    ref = fusion_module_ref(hr @ wr.T + br, labels, ids, tlg, ce, lm_weight=0.7)
    ref.backward()
    assert ref.item() > 100  # the far column really dominates
    torch.testing.assert_close(out, ref)
    for a, r in ((hl, hr), (wl, wr), (bl, br)):
        torch.testing.assert_close(a.grad, r.grad)
    x = (h @ w.T + b).requires_grad_()
    logits_path = fusekern.FusionLoss(0.7, backend="torch")(x, labels, ids, tlg, ce)
    torch.testing.assert_close(logits_path, ref)
