"""Training the target: ``FusionTrainer`` (a ``transformers.Trainer``), its data collator and options,
and the training entry point on a packed dataset (:mod:`fusekern.trainer.run`)."""

from fusekern.trainer.args import FusionArguments
from fusekern.trainer.collator import FusionDataCollator
from fusekern.trainer.trainer import FusionTrainer, causal_lm_loss

__all__ = ["FusionArguments", "FusionDataCollator", "FusionTrainer", "causal_lm_loss"]
