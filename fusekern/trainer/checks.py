"""Checks that the packed data was made for the model being trained."""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

from fusekern.pipeline.formats import load_fusion_meta
from fusekern.pipeline.pack import check_target_vocab


def check_data_fits_model(
    fusion_meta: Union[Mapping[str, Any], str, os.PathLike], processing_class: Any, model: Any
) -> None:
    """``ValueError`` when the packed data (its ``fusion_meta``) was made for another target:
    the target-vocabulary fingerprint recorded by ``fusekern pack`` differs from the model's
    tokenizer's, or the data holds token ids beyond the model's embedding rows (which would
    otherwise be an ``IndexError`` deep inside the forward pass, or silently wrong training)."""
    meta = dict(fusion_meta) if isinstance(fusion_meta, Mapping) else load_fusion_meta(fusion_meta)
    tok = processing_class
    if tok is not None and not hasattr(tok, "get_vocab"):
        tok = getattr(tok, "tokenizer", None)  # a multimodal processor wraps its tokenizer
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(emb, "num_embeddings", None)  # a module attribute: also right under ZeRO-3
    if size is None:
        size = getattr(getattr(model, "config", None), "vocab_size", None)
    check_target_vocab(meta, tok, size)
