"""Training the target: ``FusionTrainer`` (a ``transformers.Trainer``), its data collator and options."""

from fusekern.trainer.args import FusionArguments
from fusekern.trainer.collator import FusionDataCollator, load_fusion_meta
from fusekern.trainer.trainer import FusionTrainer, causal_lm_loss

__all__ = ["FusionArguments", "FusionDataCollator", "FusionTrainer", "causal_lm_loss", "load_fusion_meta"]
