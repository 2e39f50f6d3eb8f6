"""``FusionTrainer``: a ``transformers.Trainer`` whose loss is ``FusionLoss`` on the model's logits.

Only the Trainer's own extension points are used (``compute_loss``, ``log``, the signature-column
hook), so whatever ``TrainingArguments`` drives — accelerate multi-process, DeepSpeed ZeRO-2/3,
FSDP, gradient accumulation, mixed precision — works unchanged: the wrapped model is called as
usual and the loss is a plain scalar tensor.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

import torch
from transformers import Trainer

from fusekern.trainer.args import FusionArguments
from fusekern.trainer.collator import TEACHER_COLUMNS, TEACHER_INPUTS, FusionDataCollator

_KEEP_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids", *TEACHER_COLUMNS)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean shifted next-token cross-entropy (labels −100 ignored), computed in fp32."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(shift_logits, labels[:, 1:].reshape(-1), ignore_index=-100)


def _default_pad_id(processing_class: Any, model: Any) -> int:
    for obj in (processing_class, getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(obj, name, None) if obj is not None else None
            if isinstance(value, int):
                return value
    return 0


class FusionTrainer(Trainer):
    """Trains a causal LM with ``λ·CLM + (1 − λ)·fusion`` (FuseLLM) on a packed fusion dataset.

    Args beyond ``transformers.Trainer``'s:
        fusion_args: :class:`FusionArguments` (λ, fusion method, CE level, temperature, loss type,
            weight schedule, sources).
        fusion_meta: the packed dataset's ``fusion_meta.json`` (dict, or the dataset directory); needed
            to select sources by name. Without it every source in the data is fused.

    Without a ``data_collator`` a :class:`FusionDataCollator` is built from ``fusion_args`` and
    ``fusion_meta``. Batches without teacher columns (e.g. an eval set of plain text) get the CLM
    loss only; a *training* batch without them is an error (it would silently skip fusion).
    Logs ``clm_loss``, ``fusion_loss`` and ``lm_weight`` next to ``loss``.

    The loss is a per-batch mean (as FuseLLM's), so the Trainer divides it by the gradient
    accumulation steps; ``num_items_in_batch`` is accepted and not used.
    """

    # compute_loss returns a per-micro-batch mean: let the Trainer scale it for gradient accumulation
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        fusion_args: FusionArguments | None = None,
        fusion_meta: Union[Mapping[str, Any], str, os.PathLike, None] = None,
        **kwargs: Any,
    ) -> None:
        if fusion_args is None:
            fusion_args = FusionArguments()
        if not isinstance(fusion_args, FusionArguments):
            raise TypeError(f"fusion_args must be a FusionArguments, got {type(fusion_args).__name__}")
        self.fusion_args = fusion_args
        if len(args) < 3 and kwargs.get("data_collator") is None:
            model = args[0] if args else kwargs.get("model")
            pad_id = _default_pad_id(kwargs.get("processing_class"), model)
            if fusion_meta is not None:
                collator = FusionDataCollator.from_meta(fusion_meta, fusion_args, pad_token_id=pad_id)
            elif fusion_args.fusion_sources is not None or fusion_args.target_as_source:
                raise ValueError(
                    "fusion_args selects sources by name: pass fusion_meta (the packed dataset's "
                    "fusion_meta.json or its directory) or your own data_collator"
                )
            else:
                collator = FusionDataCollator(pad_id, ce_level=fusion_args.ce_level)
            kwargs["data_collator"] = collator
        super().__init__(*args, **kwargs)
        if fusion_meta is not None:  # data packed for another target: an error, not wrong training
            from fusekern.trainer.checks import check_data_fits_model

            check_data_fits_model(fusion_meta, self.processing_class, self.model)
        # Older transformers decide loss scaling (and pass num_items_in_batch to the model) from this
        # flag; our loss never goes through the model, so it is False there as well.
        self.model_accepts_loss_kwargs = False

        from fusekern.loss import FusionLoss

        self.fusion_loss = FusionLoss(
            lm_weight=fusion_args.lm_weight,
            method=fusion_args.fusion_method,
            teacher_temperature=fusion_args.teacher_temperature,
            loss_type=fusion_args.loss_type,
        )
        self._parts: torch.Tensor | None = None  # [clm sum, fusion sum, #batches, #fusion batches]
        self._last_lm_weight = fusion_args.lm_weight_at(0.0)

    # --- data: keep the teacher columns that the model's forward() does not know about ----------
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *_KEEP_COLUMNS]))

    # --- loss -------------------------------------------------------------------------------------
    def current_lm_weight(self) -> float:
        """λ for the current optimizer step under ``fusion_args.weight_schedule``."""
        max_steps = getattr(self.state, "max_steps", 0) or 0
        progress = self.state.global_step / max_steps if max_steps > 0 else 0.0
        return self.fusion_args.lm_weight_at(progress)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError(
                "the batch has no 'labels'; use FusionDataCollator (labels default to input_ids)"
            )
        teacher = [inputs.pop(key, None) for key in TEACHER_INPUTS]
        inputs.pop("source_ce_doc", None)
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]

        if all(t is not None for t in teacher):
            lm_weight = self.current_lm_weight()
            self.fusion_loss.lm_weight = lm_weight
            loss = self.fusion_loss(logits, labels, *teacher)
        elif any(t is not None for t in teacher):
            missing = [k for k, t in zip(TEACHER_INPUTS, teacher) if t is None]
            raise ValueError(f"the batch has some teacher inputs but not {missing}")
        else:
            if model.training and self.fusion_args.lm_weight < 1.0:
                raise ValueError(
                    "training batch has no teacher columns (teacher_ids, teacher_logits, source_ce); "
                    "train on a dataset written by `fusekern pack`, with FusionDataCollator"
                )
            lm_weight = 1.0
            loss = causal_lm_loss(logits, labels)

        if model.training:
            self._track_parts(loss.detach(), lm_weight, teacher_used=teacher[0] is not None)
        return (loss, outputs) if return_outputs else loss

    def _track_parts(self, loss: torch.Tensor, lm_weight: float, teacher_used: bool) -> None:
        """Accumulate the CLM and fusion parts for logging (FusionLoss keeps both from its single
        pass over the logits), on device: no host sync per step."""
        clm = getattr(self.fusion_loss, "last_clm", None) if teacher_used else loss
        fusion = getattr(self.fusion_loss, "last_fusion", None) if teacher_used else None
        parts = torch.zeros(4, device=loss.device, dtype=torch.float32)
        if clm is not None:
            parts[0] = clm.detach().float()
            parts[2] = 1.0
        if fusion is not None:
            parts[1] = fusion.detach().float()
            parts[3] = 1.0
        self._parts = parts if self._parts is None else self._parts + parts
        self._last_lm_weight = lm_weight

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # "loss" is logged by every rank at the same step (the Trainer all-gathers it there), so a
        # collective reduce here is safe; other log calls (eval, final metrics) are left alone.
        if "loss" in logs and self._parts is not None:
            parts = self._parts
            if self.accelerator.num_processes > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            parts = parts.tolist()
            if parts[2] > 0:
                logs["clm_loss"] = parts[0] / parts[2]
            if parts[3] > 0:
                logs["fusion_loss"] = parts[1] / parts[3]
            logs["lm_weight"] = self._last_lm_weight
            self._parts = None
        super().log(logs, *args, **kwargs)
