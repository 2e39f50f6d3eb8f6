"""FusionTrainer's LM-head fused path (LinearFusionLoss): chosen for plain linear heads (tied or
not, with or without bias), same loss and gradients as the logits path, and a logged fallback for
heads that are more than a linear layer (Gemma-2 soft-capping, Cohere scaling, a custom head, a
forward that changes the logits); eval logs its parts with the eval_ prefix."""

from __future__ import annotations

import logging

import pytest
import torch
from test_trainer import _args
from trainer_helpers import packed_dataset, packed_rows, tiny_lm
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaForCausalLM,
)

from fusekern import FusionArguments, FusionTrainer
from fusekern.demo.toy.models import tiny_causal_lm


def _grads_of_one_batch(tmp_path, model, fused_linear):
    fa = FusionArguments(lm_weight=0.6, fusion_method="avg_ce", fused_linear=fused_linear)
    trainer = FusionTrainer(model=model, args=_args(tmp_path), fusion_args=fa)
    batch = trainer.data_collator(packed_rows(3, ragged=True, seed=7))
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return trainer, loss.detach(), grads


def _biased_head(model):
    old = model.lm_head
    model.lm_head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(old.weight)
        model.lm_head.bias.copy_(torch.randn(old.out_features, generator=torch.Generator().manual_seed(0)))
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: tiny_lm(seed=1),  # llama, untied
        lambda: tiny_causal_lm("gpt2", 64, hidden=16, layers=1, heads=2, max_positions=64, seed=1),  # tied
        lambda: _biased_head(tiny_lm(seed=1)),  # head with bias
    ],
    ids=["llama", "gpt2_tied", "bias"],
)
def test_fused_head_equals_logits_path(tmp_path, make, caplog):
    with caplog.at_level(logging.INFO, logger="fusekern"):
        tr_f, loss_f, g_f = _grads_of_one_batch(tmp_path, make(), "auto")
    assert tr_f.fused_head is True
    assert "loss computed from the LM head" in caplog.text
    tr_l, loss_l, g_l = _grads_of_one_batch(tmp_path, make(), "false")
    assert tr_l.fused_head is False
    torch.testing.assert_close(loss_f, loss_l, rtol=1e-5, atol=1e-6)
    assert g_f.keys() == g_l.keys()
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_l[name], rtol=1e-4, atol=1e-6, msg=name)


class _ScaledLlama(LlamaForCausalLM):
    """A forward that does something to the logits that no config attribute announces."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out["logits"] = out["logits"] * 0.5
        return out


def _gemma2():
    cfg = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=0,
    )  # fmt: skip
    return Gemma2ForCausalLM(cfg)


def _cohere():
    cfg = CohereConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return CohereForCausalLM(cfg)


def _custom_head():
    m = tiny_lm(seed=1)
    m.lm_head = torch.nn.Sequential(m.lm_head)
    m.get_output_embeddings = lambda: m.lm_head
    return m


def _scaled():
    return _ScaledLlama(tiny_lm(seed=1).config)


@pytest.mark.parametrize(
    "make,reason",
    [
        (_gemma2, "soft-capping"),
        (_cohere, "logit scaling"),
        (_custom_head, "not a plain nn.Linear"),
        (_scaled, "changes the head's output"),
    ],
    ids=["gemma2", "cohere", "custom_head", "scaled_forward"],
)
def test_heads_that_are_more_than_linear_fall_back(tmp_path, make, reason, caplog):
    with caplog.at_level(logging.INFO, logger="fusekern"):
        trainer, loss, _ = _grads_of_one_batch(tmp_path, make(), "auto")
    assert trainer.fused_head is False
    lines = [r.getMessage() for r in caplog.records if "fused loss not used" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0]
    # the loss is the logits path's: FusionLoss on the model's (transformed) logits
    model = trainer.model
    batch = trainer.data_collator(packed_rows(3, ragged=True, seed=7))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = trainer.fusion_loss(logits, batch["labels"], batch["teacher_ids"], batch["teacher_logits"],
                              batch["source_ce"])  # fmt: skip
    torch.testing.assert_close(loss, ref.detach())
    with pytest.raises(ValueError, match=f"fused_linear=true, but .*{reason}"):
        _grads_of_one_batch(tmp_path, make(), "true")


def test_fused_linear_option_values():
    assert FusionArguments(fused_linear=True).fused_linear == "true"
    with pytest.raises(ValueError, match="fused_linear"):
        FusionArguments(fused_linear="maybe")


def test_fused_training_with_gradient_accumulation_and_eval_parts(tmp_path):
    ds = packed_dataset(8, seed=3).with_format("numpy")

    def one_step(bs, ga, fused):
        model = tiny_lm(seed=1)
        args = _args(
            tmp_path, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1,
            optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
            per_device_eval_batch_size=4,
        )  # fmt: skip
        tr = FusionTrainer(
            model=model, args=args, train_dataset=ds, eval_dataset=ds,
            fusion_args=FusionArguments(lm_weight=0.5, fused_linear=fused),
        )  # fmt: skip
        tr.train()
        assert tr.fused_head is (fused == "true")
        return tr, torch.cat([p.detach().flatten() for p in model.parameters()])

    _, logits_big = one_step(4, 1, "false")
    _, fused_big = one_step(4, 1, "true")
    tr, fused_accum = one_step(2, 2, "true")
    torch.testing.assert_close(fused_big, logits_big, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_accum, logits_big, rtol=1e-5, atol=1e-6)

    metrics = tr.evaluate()
    assert {"eval_loss", "eval_clm_loss", "eval_fusion_loss"} <= set(metrics)
    assert metrics["eval_loss"] == pytest.approx(
        0.5 * metrics["eval_clm_loss"] + 0.5 * metrics["eval_fusion_loss"], rel=1e-4
    )
    assert not any(k in metrics for k in ("clm_loss", "fusion_loss"))


@pytest.mark.parametrize("scheme", ["FSDP", "DeepSpeed ZeRO-3"])
def test_sharded_head_weight_falls_back(tmp_path, scheme, caplog, monkeypatch):
    """Under FSDP / ZeRO-3 the head weight is sharded: auto falls back (one logged line), true
    is an error. (No FSDP/DeepSpeed run here: the decision is what is tested.)"""
    from fusekern.trainer import trainer as trainer_mod

    for mode in ("auto", "true"):
        model = tiny_lm(seed=1)
        fa = FusionArguments(lm_weight=0.6, fused_linear=mode)
        tr = FusionTrainer(model=model, args=_args(tmp_path), fusion_args=fa)
        if scheme == "FSDP":
            monkeypatch.setattr(tr, "is_fsdp_enabled", True, raising=False)
        else:
            monkeypatch.setattr(tr, "is_deepspeed_enabled", True, raising=False)
            monkeypatch.setattr(trainer_mod, "_zero_stage", lambda t: 3)
        batch = tr.data_collator(packed_rows(2, seed=1))
        model.train()
        if mode == "true":
            with pytest.raises(ValueError, match=f"{scheme} shards"):
                tr.compute_loss(model, dict(batch))
            continue
        with caplog.at_level(logging.INFO, logger="fusekern"):
            tr.compute_loss(model, dict(batch))
        assert tr.fused_head is False
        assert f"{scheme} shards the output head's weight" in caplog.text
