"""``FusionTrainer``: a ``transformers.Trainer`` whose loss is ``FusionLoss`` on the model's logits.

Only the Trainer's own extension points are used (``compute_loss``, ``log``, the signature-column
hook), so whatever ``TrainingArguments`` drives — accelerate multi-process, DeepSpeed ZeRO-2/3,
FSDP, gradient accumulation, mixed precision — works unchanged: the wrapped model is called as
usual and the loss is a plain scalar tensor.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Union

import torch
from transformers import Trainer

from fusekern.pipeline.formats import TEACHER_COLUMNS
from fusekern.trainer.args import FusionArguments
from fusekern.trainer.collator import TEACHER_INPUTS, FusionDataCollator
from fusekern.trainer.head import fused_head_forward, fused_head_problem, output_head

logger = logging.getLogger("fusekern")

_KEEP_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids", *TEACHER_COLUMNS)

# Slots of the logged-parts accumulator: one float32 tensor (so that ranks can sum it in one reduce)
# holding the CLM and fusion loss sums and the number of batches that contributed each.
_CLM_SUM, _FUSION_SUM, _CLM_BATCHES, _FUSION_BATCHES, _NUM_PARTS = range(5)  # _NUM_PARTS: the size


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
    Logs ``clm_loss``, ``fusion_loss`` and ``lm_weight`` next to ``loss`` (and ``eval_clm_loss`` /
    ``eval_fusion_loss`` next to ``eval_loss``).

    Training batches use :class:`~fusekern.LinearFusionLoss` straight from the output head (no
    ``[B·T, V]`` logits) when ``fusion_args.fused_linear`` allows it and the head is a plain linear
    layer whose output the model returns untouched (see :mod:`fusekern.trainer.head`); otherwise,
    and for evaluation, ``FusionLoss`` on the model's logits. Both give the same loss.

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

        from fusekern.linear_loss import LinearFusionLoss
        from fusekern.loss import FusionLoss

        opts = dict(
            lm_weight=fusion_args.lm_weight,
            method=fusion_args.fusion_method,
            teacher_temperature=fusion_args.teacher_temperature,
            loss_type=fusion_args.loss_type,
        )
        self.fusion_loss = FusionLoss(**opts)
        self.linear_fusion_loss = LinearFusionLoss(**opts)
        self.fused_head: bool | None = None  # decided at the first training batch
        # the logged-parts accumulators (slots _CLM_SUM ... _FUSION_BATCHES), training and evaluation
        self._parts: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
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
        has_teacher = all(t is not None for t in teacher)
        loss_mod: torch.nn.Module = self.fusion_loss
        loss = None
        if has_teacher and model.training and self._use_fused_head(model):
            loss_mod = self.linear_fusion_loss
            lm_weight = self.current_lm_weight()
            loss_mod.lm_weight = lm_weight
            loss, outputs = fused_head_forward(
                model,
                output_head(self.accelerator.unwrap_model(model)),
                inputs,
                lambda h, w, bias: loss_mod(h, w, labels, *teacher, bias=bias),
                labels.shape[1],
            )
        else:
            outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]

        if loss is not None:  # fused path: computed inside the model's forward, from the head
            pass
        elif has_teacher:
            lm_weight = self.current_lm_weight()
            loss_mod = self.fusion_loss
            loss_mod.lm_weight = lm_weight
            loss = loss_mod(logits, labels, *teacher)
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

        self._track_parts(
            "train" if model.training else "eval", loss.detach(), lm_weight, loss_mod if has_teacher else None
        )
        return (loss, outputs) if return_outputs else loss

    def _use_fused_head(self, model: torch.nn.Module) -> bool:
        """Decide once (at the first training batch) whether the loss comes from the head."""
        if self.fused_head is None:
            mode = self.fusion_args.fused_linear
            problem = "fused_linear=false" if mode == "false" else None
            if problem is None:
                sharded = None
                if getattr(self, "is_fsdp_enabled", False):
                    sharded = "FSDP"
                elif getattr(self, "is_deepspeed_enabled", False) and _zero_stage(self) == 3:
                    sharded = "DeepSpeed ZeRO-3"
                problem = fused_head_problem(self.accelerator.unwrap_model(model), sharded=sharded)
                if problem is not None and mode == "true":
                    raise ValueError(f"fused_linear=true, but {problem}")
            self.fused_head = problem is None
            if problem is None:
                logger.info("fusekern: loss computed from the LM head (LinearFusionLoss, no logits tensor)")
            elif mode != "false":
                logger.warning("fusekern: LM-head fused loss not used (%s); loss from the logits", problem)
        return self.fused_head

    def _track_parts(
        self, mode: str, loss: torch.Tensor, lm_weight: float, loss_mod: torch.nn.Module | None
    ) -> None:
        """Accumulate the CLM and fusion parts for logging (the loss modules keep both from their
        single pass over the logits), on device: no host sync per step."""
        clm = getattr(loss_mod, "last_clm", None) if loss_mod is not None else loss
        fusion = getattr(loss_mod, "last_fusion", None) if loss_mod is not None else None
        parts = torch.zeros(_NUM_PARTS, device=loss.device, dtype=torch.float32)
        if clm is not None:
            parts[_CLM_SUM] = clm.detach().float()
            parts[_CLM_BATCHES] = 1.0
        if fusion is not None:
            parts[_FUSION_SUM] = fusion.detach().float()
            parts[_FUSION_BATCHES] = 1.0
        old = self._parts[mode]
        self._parts[mode] = parts if old is None else old + parts
        if mode == "train":
            self._last_lm_weight = lm_weight

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # "loss" (training) and "<prefix>_loss" (evaluate(), metric_key_prefix "eval" by default)
        # are logged by every rank at the same point, so a collective reduce here is safe; other
        # log calls (final metrics) are left alone.
        if "loss" in logs and self._parts["train"] is not None:
            self._add_parts(logs, "train", "")
            logs["lm_weight"] = self._last_lm_weight
        eval_keys = [k for k in logs if k.endswith("_loss") and k not in ("train_loss",)]
        if eval_keys and self._parts["eval"] is not None:
            self._add_parts(logs, "eval", eval_keys[0][: -len("loss")])
        super().log(logs, *args, **kwargs)

    def _add_parts(self, logs: dict, mode: str, prefix: str) -> None:
        parts = self._parts[mode]
        self._parts[mode] = None
        if self.accelerator.num_processes > 1:
            parts = self.accelerator.reduce(parts, reduction="sum")
        parts = parts.tolist()
        if parts[_CLM_BATCHES] > 0:
            logs[f"{prefix}clm_loss"] = parts[_CLM_SUM] / parts[_CLM_BATCHES]
        if parts[_FUSION_BATCHES] > 0:
            logs[f"{prefix}fusion_loss"] = parts[_FUSION_SUM] / parts[_FUSION_BATCHES]


def _zero_stage(trainer: Trainer) -> int | None:
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None)
