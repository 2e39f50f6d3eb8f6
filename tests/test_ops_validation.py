"""Bad input to the loss ops raises ValueError/TypeError naming the argument; edge inputs that are
valid (padding with NaN logits, NaN CE of an absent source, empty batch) work."""

from __future__ import annotations

import pytest
import torch

import fusekern

N, V, S, K = 4, 20, 2, 3


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, V, generator=g)
    ids = torch.randint(0, V, (N, S, K), generator=g)
    lg = torch.randn(N, S, K, generator=g)
    ce = torch.rand(N, S, generator=g)
    return x, ids, lg, ce


def _sk(x, ids, lg, **kw):
    return fusekern.sparse_kl_loss(x, ids, lg, backend=kw.pop("backend", "torch"), **kw)


def _fl(x, ids, lg, ce, **kw):
    return fusekern.fusion_loss(x, ids, lg, ce, backend=kw.pop("backend", "torch"), **kw)


@pytest.mark.parametrize(
    "mutate,exc,name",
    [
        (lambda x, i, lg: (x.tolist(), i, lg), TypeError, "student_logits"),
        (lambda x, i, lg: (x.long(), i, lg), TypeError, "student_logits"),
        (lambda x, i, lg: (x[0], i, lg), ValueError, "student_logits"),
        (lambda x, i, lg: (x, i.float(), lg), TypeError, "teacher_ids"),
        (lambda x, i, lg: (x, i.to(torch.uint8), lg), TypeError, "teacher_ids"),
        (lambda x, i, lg: (x, i[:-1], lg[:-1]), ValueError, "teacher_ids"),
        (lambda x, i, lg: (x, i[:, :0], lg[:, :0]), ValueError, "teacher_ids"),
        (lambda x, i, lg: (x, i, lg[:, :-1]), ValueError, "teacher_logits"),
        (lambda x, i, lg: (x, i, lg.long()), TypeError, "teacher_logits"),
        (lambda x, i, lg: (x, torch.where(i == i[0, 0], V, i), lg), ValueError, "teacher_ids"),
        (lambda x, i, lg: (x, i, torch.where(i == i[0, 0], float("inf"), lg)), ValueError, "teacher_logits"),
    ],
)
def test_sparse_kl_bad_tensors(mutate, exc, name):
    x, ids, lg, _ = _inputs()
    a, b, c = mutate(x, ids[:, 0], lg[:, 0])
    with pytest.raises(exc, match=name):
        _sk(a, b, c)


@pytest.mark.parametrize(
    "kw,exc,name",
    [
        ({"teacher_temperature": 0.0}, ValueError, "teacher_temperature"),
        ({"teacher_temperature": float("nan")}, ValueError, "teacher_temperature"),
        ({"teacher_temperature": "1"}, TypeError, "teacher_temperature"),
        ({"loss_type": "js"}, ValueError, "loss_type"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"ignore_mask": torch.zeros(N)}, TypeError, "ignore_mask"),
        ({"ignore_mask": torch.zeros(N + 1, dtype=torch.bool)}, ValueError, "ignore_mask"),
    ],
)
def test_sparse_kl_bad_options(kw, exc, name):
    x, ids, lg, _ = _inputs()
    with pytest.raises(exc, match=name):
        _sk(x, ids[:, 0], lg[:, 0], **kw)


def test_nonfinite_student_logits():
    x, ids, lg, ce = _inputs()
    for bad in (float("nan"), float("inf"), float("-inf")):
        x2 = x.clone()
        x2[2, 5] = bad
        with pytest.raises(ValueError, match="student_logits"):
            _sk(x2, ids[:, 0], lg[:, 0])
        with pytest.raises(ValueError, match="student_logits"):
            _fl(x2, ids, lg, ce, method="avg_ce")
        # a row that contributes nothing is not checked (and does not poison the result)
        mask = torch.zeros(N, dtype=torch.bool)
        mask[2] = True
        x3 = x2.clone().requires_grad_()
        loss = _sk(x3, ids[:, 0], lg[:, 0], ignore_mask=mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x3.grad).all()


def test_padding_may_hold_anything_and_absent_ce_is_ignored():
    x, ids, lg, ce = _inputs()
    ids[0, 0] = -1
    lg[0, 0] = float("nan")
    ce[0, 0] = float("nan")
    ids[1, 1, 0] = -5  # any negative id is padding
    lg[1, 1, 0] = float("inf")
    for method in ("min_ce", "avg_ce"):
        assert torch.isfinite(_fl(x, ids, lg, ce, method=method))
        m_ids, m_p = fusekern.merge_topk(ids, lg, ce, method=method, backend="torch")
        assert torch.isfinite(m_p).all()


@pytest.mark.parametrize(
    "mutate,exc,name",
    [
        (lambda i, lg, c: (i[:, 0], lg[:, 0], c), ValueError, "teacher_ids"),
        (lambda i, lg, c: (i, lg, c[:, :1]), ValueError, "source_ce"),
        (lambda i, lg, c: (i, lg, c.long()), TypeError, "source_ce"),
        (lambda i, lg, c: (i, lg, torch.full_like(c, float("nan"))), ValueError, "source_ce"),
        (lambda i, lg, c: (i, lg, -c), ValueError, "source_ce"),
        (lambda i, lg, c: (i, lg.half()[:, :, :2], c), ValueError, "teacher_logits"),
    ],
)
def test_merge_and_fusion_bad_tensors(mutate, exc, name):
    x, ids, lg, ce = _inputs()
    a, b, c = mutate(ids, lg, ce)
    with pytest.raises(exc, match=name):
        fusekern.merge_topk(a, b, c, backend="torch")
    with pytest.raises(exc, match=name):
        _fl(x, a, b, c)


def test_fusion_ids_out_of_vocab_and_bad_method():
    x, ids, lg, ce = _inputs()
    ids[3, 1, 2] = V
    with pytest.raises(ValueError, match="teacher_ids"):
        _fl(x, ids, lg, ce)
    x, ids, lg, ce = _inputs()
    with pytest.raises(ValueError, match="method"):
        _fl(x, ids, lg, ce, method="max")
    with pytest.raises(ValueError, match="method"):
        fusekern.merge_topk(ids, lg, ce, method="max")
    with pytest.raises(ValueError, match="teacher_ids"):
        _fl(x[:3], ids, lg, ce)


def test_triton_backend_requests():
    x, ids, lg, _ = _inputs()
    # CPU tensors without the interpreter: a clear error, not a crash
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _sk(x, ids[:, 0], lg[:, 0], backend="triton")
    with pytest.raises(TypeError, match="float64"):
        _sk(x.double(), ids[:, 0], lg[:, 0], backend="triton")


def test_empty_batch():
    x, ids, lg, ce = _inputs()
    e = x[:0].clone().requires_grad_()
    loss = _fl(e, ids[:0], lg[:0], ce[:0])
    loss.backward()
    assert loss.item() == 0.0 and e.grad.shape == (0, V)
    assert _sk(x[:0], ids[:0, 0], lg[:0, 0], reduction="none").shape == (0,)


def test_huge_finite_logits_are_not_flagged():
    """The torch path's cheap non-finite screen (an fp32 row sum) overflows on |logits| ~ 1e38;
    such rows are re-checked exactly and accepted."""
    x, ids, lg, _ = _inputs()
    x[1, :4] = 3e38
    x[1, 4:8] = -3e38
    loss = _sk(x.requires_grad_(), ids[:, 0], lg[:, 0], reduction="none")
    assert torch.isfinite(loss[0]) and loss.shape == (N,)


@pytest.mark.parametrize(
    "option,value,exc",
    [
        ("teacher_temperature", float("inf"), ValueError),
        ("teacher_temperature", 0.0, ValueError),
        ("lm_weight", float("nan"), ValueError),
        ("lm_weight", 1.5, ValueError),
        ("lm_weight", "0.9", TypeError),
        ("method", "max_ce", ValueError),
        ("loss_type", "mse", ValueError),
    ],
)
def test_one_option_contract(option, value, exc, capsys, tmp_path):
    """FusionLoss, FusionArguments and the demo CLI reject the same option values (one definition
    in fusekern.ops.options), each naming the option in its own spelling."""
    from fusekern.cli import main
    from fusekern.trainer.args import FusionArguments

    with pytest.raises(exc, match=option):
        fusekern.FusionLoss(**{option: value})
    args_name = {"method": "fusion_method"}.get(option, option)
    with pytest.raises(exc, match=args_name):
        FusionArguments(**{args_name: value})
    if exc is ValueError and option in ("teacher_temperature", "lm_weight"):  # numbers the demo CLI takes
        flag = "--" + args_name.replace("_", "-")
        # nothing runs: the bad value is refused before the demo starts
        assert main(["demo", "--size", "tiny", "--out", str(tmp_path / "demo"), flag, str(value)]) == 2
        assert not (tmp_path / "demo").exists()
        assert flag in capsys.readouterr().err
