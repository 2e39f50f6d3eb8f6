"""FusionTrainer: its loss is FusionLoss on the model's logits, teacher columns survive the
Trainer's column filtering, the weight schedule, gradient accumulation, logging, eval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from trainer_helpers import packed_dataset, packed_rows, tiny_lm
from transformers import TrainingArguments

from fusekern import FusionArguments, FusionDataCollator, FusionLoss, FusionTrainer


def _args(tmp_path, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        learning_rate=1e-2,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def test_loss_is_fusion_loss_on_selected_sources(tmp_path):
    meta = {"sources": ["a", "tgt", "c"], "target": "tgt"}
    fa = FusionArguments(
        lm_weight=0.7,
        fusion_method="avg_ce",
        teacher_temperature=2.0,
        loss_type="ce",
        ce_level="sequence",
        target_as_source=False,
    )
    model = tiny_lm()
    trainer = FusionTrainer(model=model, args=_args(tmp_path), fusion_args=fa, fusion_meta=meta)
    rows = packed_rows(3, sources=3, ragged=True, seed=7)
    batch = trainer.data_collator(rows)
    model.train()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(123))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ids = torch.from_numpy(
        np.stack(
            [
                np.pad(
                    r["teacher_ids"][:, [0, 2]],
                    ((0, 16 - len(r["teacher_ids"])), (0, 0), (0, 0)),
                    constant_values=-1,
                )
                for r in rows
            ]
        )
    ).long()
    assert torch.equal(ids, batch["teacher_ids"])
    ce_doc = torch.from_numpy(
        np.stack(
            [np.pad(r["source_ce_doc"][:, [0, 2]], ((0, 16 - len(r["source_ce_doc"])), (0, 0))) for r in rows]
        )
    )
    ref = FusionLoss(0.7, method="avg_ce", teacher_temperature=2.0, loss_type="ce")(
        logits, batch["labels"], batch["teacher_ids"], batch["teacher_logits"], ce_doc
    )
    torch.testing.assert_close(loss, ref)
    # both parts are really there: λ = 1 or 0 give the pure terms, which differ
    trainer.fusion_args = FusionArguments(lm_weight=1.0)
    clm = trainer.compute_loss(model, dict(batch))
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 64), batch["labels"][:, 1:].reshape(-1)
    )
    torch.testing.assert_close(clm, manual)
    trainer.fusion_args = FusionArguments(lm_weight=0.0)
    assert not torch.allclose(trainer.compute_loss(model, dict(batch)), clm)


def test_trains_with_default_column_filtering_and_logs_parts(tmp_path):
    ds = packed_dataset(24, ragged=True, seed=1).with_format("numpy")
    args = _args(tmp_path, max_steps=6)
    assert args.remove_unused_columns  # the Trainer would drop unknown columns: ours must survive
    trainer = FusionTrainer(
        model=tiny_lm(), args=args, train_dataset=ds, fusion_args=FusionArguments(lm_weight=0.6)
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert h["lm_weight"] == 0.6
        assert math.isfinite(h["clm_loss"]) and math.isfinite(h["fusion_loss"])
        # the logged total is the logged mix of the logged parts
        assert h["loss"] == pytest.approx(0.6 * h["clm_loss"] + 0.4 * h["fusion_loss"], rel=1e-4)


def test_linear_decay_schedule(tmp_path):
    ds = packed_dataset(40, seed=2).with_format("numpy")
    fa = FusionArguments(lm_weight=0.5, weight_schedule="linear_decay")
    trainer = FusionTrainer(
        model=tiny_lm(), args=_args(tmp_path, max_steps=8, logging_steps=1), train_dataset=ds, fusion_args=fa
    )
    trainer.train()
    got = [h["lm_weight"] for h in trainer.state.log_history if "lm_weight" in h]
    # the step computed after k finished optimizer steps uses λ = 1 - 0.5 (1 - k/8)
    assert got == pytest.approx([0.5, 0.5625, 0.625, 0.6875, 0.75, 0.8125, 0.875, 0.9375])


def test_gradient_accumulation_equals_big_batch(tmp_path):
    ds = packed_dataset(8, seed=3).with_format("numpy")  # full blocks: equal token counts per micro-batch

    def one_step(bs, ga):
        model = tiny_lm(seed=1)
        args = _args(
            tmp_path,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
        )
        FusionTrainer(
            model=model, args=args, train_dataset=ds, fusion_args=FusionArguments(lm_weight=0.5)
        ).train()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = torch.cat([p.detach().flatten() for p in tiny_lm(seed=1).parameters()])
    big, accum = one_step(4, 1), one_step(2, 2)
    assert not torch.allclose(big, start)
    torch.testing.assert_close(accum, big, rtol=1e-5, atol=1e-6)


def _confident_teacher(n, token, vocab=64, block=16):
    """Rows whose teacher puts (almost) all its mass on ``token`` at every position."""
    rows = packed_rows(n, vocab=vocab, block=block, sources=1, top_k=2, seed=4)
    for r in rows:
        r["teacher_ids"][:] = np.array([token, (token + 1) % vocab], dtype=np.int32)
        r["teacher_logits"][:] = np.array([10.0, 0.0], dtype=np.float16)
    return rows


@pytest.mark.parametrize("lm_weight", [0.0, 1.0])
def test_teacher_signal_is_what_is_learned(tmp_path, lm_weight):
    """λ = 0 must pull the student to the teacher's token; λ = 1 (CLM only) must not."""
    import datasets

    token = 3
    rows = _confident_teacher(16, token)
    ds = datasets.Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in rows]).with_format(
        "numpy"
    )
    model = tiny_lm(seed=2)
    probe = torch.randint(5, 64, (2, 16), generator=torch.Generator().manual_seed(0))

    def p_token():
        model.eval()
        with torch.no_grad():
            return torch.softmax(model(input_ids=probe).logits, -1)[..., token].mean().item()

    before = p_token()
    args = _args(tmp_path, max_steps=15, learning_rate=3e-2)
    FusionTrainer(
        model=model, args=args, train_dataset=ds, fusion_args=FusionArguments(lm_weight=lm_weight)
    ).train()
    after = p_token()
    if lm_weight == 0.0:
        assert after > 0.5 > before
    else:
        assert after < 0.2


def test_eval_on_plain_text_and_missing_teacher_in_training(tmp_path):
    import datasets

    plain = datasets.Dataset.from_dict({"input_ids": [list(range(1, 17)), list(range(20, 30))]})
    model = tiny_lm(seed=3)
    trainer = FusionTrainer(
        model=model,
        args=_args(tmp_path, per_device_eval_batch_size=2),
        train_dataset=plain,
        eval_dataset=plain,
    )
    metrics = trainer.evaluate()
    batch = FusionDataCollator(pad_token_id=0)([plain[0], plain[1]])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 64), batch["labels"][:, 1:].reshape(-1)
    )
    assert metrics["eval_loss"] == pytest.approx(manual.item(), rel=1e-5)
    with pytest.raises(ValueError, match="no teacher columns"):
        trainer.train()


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="fusion_args"):
        FusionTrainer(model=tiny_lm(), args=_args(tmp_path), fusion_args={"lm_weight": 0.5})
    with pytest.raises(ValueError, match="fusion_meta"):
        FusionTrainer(
            model=tiny_lm(), args=_args(tmp_path), fusion_args=FusionArguments(fusion_sources=["a"])
        )
