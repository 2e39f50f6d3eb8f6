"""Fusion options, parsed next to ``TrainingArguments`` (``HfArgumentParser``) or built directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

from fusekern.ops.options import LOSS_TYPES, METHODS, check_choice, check_lm_weight, check_temperature

CE_LEVELS = ("token", "sequence")
WEIGHT_SCHEDULES = ("constant", "linear_decay")
FUSED_LINEAR = ("auto", "true", "false")


@dataclass
class FusionArguments:
    """How the target is trained: ``lm_weight · CLM + (1 − lm_weight) · fusion``.

    Field names avoid every ``TrainingArguments`` name, so both dataclasses share one parser.
    """

    lm_weight: float = field(
        default=0.9,
        metadata={"help": "Weight λ of the causal-LM loss; the fusion loss gets 1 − λ (FuseLLM: 0.9)."},
    )
    fusion_method: Literal[METHODS] = field(
        default="min_ce",
        metadata={
            "help": "How the sources' distributions are fused: min_ce (FuseLLM MinCE) or avg_ce (AvgCE)."
        },
    )
    ce_level: Literal["token", "sequence"] = field(
        default="token",
        metadata={
            "help": "Quality signal for fusion: 'token' = each source's CE on the gold next token "
            "(column source_ce); 'sequence' = its mean CE over the document (source_ce_doc, as FuseLLM)."
        },
    )
    teacher_temperature: float = field(
        default=1.0, metadata={"help": "Temperature applied to the sources' top-k logits before softmax."}
    )
    loss_type: Literal[LOSS_TYPES] = field(
        default="kl",
        metadata={"help": "Fusion loss: 'kl' (KL(fused ‖ student)) or 'ce' (soft cross-entropy)."},
    )
    weight_schedule: Literal["constant", "linear_decay"] = field(
        default="constant",
        metadata={
            "help": "'constant', or 'linear_decay': the fusion weight 1 − λ decays linearly to 0 over "
            "training (λ rises to 1), so training ends on plain CLM."
        },
    )
    fusion_sources: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the sources to fuse (fusion_meta.json 'sources'); default: all of them."},
    )
    target_as_source: bool | None = field(
        default=None,
        metadata={
            "help": "Use the target's own extracted distribution (a source named like fusion_meta.json "
            "'target') as a reference source, as FuseLLM does. Default: use it when the data has it; "
            "True: require it; False: leave it out."
        },
    )

    fused_linear: Literal["auto", "true", "false"] = field(
        default="auto",
        metadata={
            "help": "Compute the loss straight from the LM head (LinearFusionLoss: no [B·T, V] logits). "
            "auto: when the head is a plain linear layer with nothing applied to its logits (else the "
            "logits path, with one logged line saying why); true: require it; false: logits path."
        },
    )

    def __post_init__(self) -> None:
        self.lm_weight = check_lm_weight(self.lm_weight)
        if isinstance(self.fused_linear, bool):
            self.fused_linear = "true" if self.fused_linear else "false"
        for name, value, allowed in (
            ("fused_linear", self.fused_linear, FUSED_LINEAR),
            ("fusion_method", self.fusion_method, METHODS),
            ("ce_level", self.ce_level, CE_LEVELS),
            ("loss_type", self.loss_type, LOSS_TYPES),
            ("weight_schedule", self.weight_schedule, WEIGHT_SCHEDULES),
        ):
            check_choice(value, allowed, name)
        self.teacher_temperature = check_temperature(self.teacher_temperature)
        if self.fusion_sources is not None:
            if isinstance(self.fusion_sources, str):
                # a single comma-separated string is accepted for convenience
                self.fusion_sources = [s for s in self.fusion_sources.split(",") if s]
            self.fusion_sources = list(self.fusion_sources)
            if not self.fusion_sources:
                raise ValueError("fusion_sources must name at least one source (or be None for all)")
            if len(set(self.fusion_sources)) != len(self.fusion_sources):
                raise ValueError(f"fusion_sources has duplicates: {self.fusion_sources}")

    def lm_weight_at(self, progress: float) -> float:
        """λ at training progress ``progress`` ∈ [0, 1] (fraction of optimizer steps done)."""
        if self.weight_schedule == "constant":
            return self.lm_weight
        progress = min(max(float(progress), 0.0), 1.0)
        return 1.0 - (1.0 - self.lm_weight) * (1.0 - progress)

    def select_sources(self, source_names: Sequence[str], target_name: str | None = None) -> list[int]:
        """Indices (into the data's source axis, in data order) of the sources to fuse.

        ``source_names`` are the data's sources in S order (fusion_meta.json 'sources'); ``target_name``
        is its 'target' (the target tokenizer's path or Hub name). The source named like the target —
        that string or its last path component, e.g. ``Llama-2-7b-hf`` for ``meta-llama/Llama-2-7b-hf``
        (the default name of an extract directory of that name) — is the target's own reference
        distribution.
        """
        names = list(source_names)
        if len(set(names)) != len(names):
            raise ValueError(f"source names in the data must be unique, got {names}")
        wanted = names if self.fusion_sources is None else list(self.fusion_sources)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"fusion_sources {missing} not in the data's sources {names}")
        target_src = _target_source(names, target_name)
        if self.target_as_source is True:
            if target_src is None:
                raise ValueError(
                    f"target_as_source=True but the data has no source named like the target "
                    f"({target_name!r}); its sources are {names}. Extract and align the target model as a "
                    "source too."
                )
            if target_src not in wanted:
                wanted.append(target_src)
        elif self.target_as_source is False and target_src is not None:
            wanted = [n for n in wanted if n != target_src]
        keep = [i for i, n in enumerate(names) if n in set(wanted)]
        if not keep:
            raise ValueError(f"no source left to fuse (sources {names}, target {target_name!r})")
        return keep


def _target_source(names: list, target_name: str | None) -> str | None:
    """The source that is the target itself: named exactly like it, else like its last path part."""
    if not target_name:
        return None
    if target_name in names:
        return target_name
    short = target_name.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return short if short in names else None
