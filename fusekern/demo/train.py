"""The demo's continual training of the target: the fused run and its CLM-only control share
every setting but the loss weights (its own module so the stage cache can key on its code)."""

from __future__ import annotations

from dataclasses import asdict

from fusekern.demo.config import DemoConfig


def train_variant(
    cfg: DemoConfig, variant: str, target_dir: str, pack_dir: str, eval_dir: str, out: str
) -> dict:
    """Continue the target in ``target_dir`` on ``pack_dir`` as ``variant`` ('fused' or
    'clm_baseline': λ = 1) with ``fusekern train``'s code; the run goes to ``out``."""
    from transformers import TrainingArguments

    from fusekern.trainer import FusionArguments
    from fusekern.trainer.run import TrainModelArguments, run_train

    fusion = FusionArguments(
        lm_weight=cfg.lm_weight if variant == "fused" else 1.0,
        fusion_method=cfg.fusion_method,
        ce_level=cfg.ce_level,
        teacher_temperature=cfg.teacher_temperature,
        loss_type=cfg.loss_type,
        target_as_source=cfg.target_as_source,
    )
    args = TrainingArguments(
        output_dir=out,
        max_steps=cfg.train_steps,
        per_device_train_batch_size=cfg.train_batch,
        per_device_eval_batch_size=16,
        learning_rate=cfg.train_lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.train_steps // 10),
        weight_decay=0.1,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=max(1, cfg.eval_steps // 2),
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=True,
        prediction_loss_only=True,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
        log_level="warning",
    )
    metrics = run_train(
        TrainModelArguments(model_name_or_path=target_dir, data_path=pack_dir, eval_data_path=eval_dir),
        fusion,
        args,
    )
    return {"metrics": metrics, "fusion": asdict(fusion)}
