"""The fusion data pipeline: split -> extract -> vocab map -> align -> pack.

Each stage is a function here and a ``fusekern`` subcommand (``split``, ``extract``,
``vocab-map``, ``align``, ``pack``); on-disk formats are defined in
:mod:`fusekern.pipeline.formats` and described in docs/DATA_FORMAT.md.
Arguments naming a model, tokenizer or dataset accept a local path, a Hub name or an object.

Names are resolved lazily, so that importing a light module of this package (``formats``,
``paths``: what the CLI needs to parse) does not pull in ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "build_vocab_map": "fusekern.pipeline.vocab",
    "load_extract": "fusekern.pipeline.extract",
    "load_packed": "fusekern.pipeline.formats",
    "run_align": "fusekern.pipeline.align",
    "run_extract": "fusekern.pipeline.extract",
    "run_pack": "fusekern.pipeline.pack",
    "run_split": "fusekern.pipeline.split",
    "run_vocab_map": "fusekern.pipeline.vocab",
    "split_texts": "fusekern.pipeline.split",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fusekern.pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
