"""The fusion data pipeline: split -> extract -> vocab map -> align -> pack.

Each stage is a function here and a ``fusekern`` subcommand (``split``, ``extract``,
``vocab-map``, ``align``, ``pack``); on-disk formats are described in docs/DATA_FORMAT.md.
Arguments naming a model, tokenizer or dataset accept a local path, a Hub name or an object.
"""

from fusekern.pipeline.align import run_align
from fusekern.pipeline.extract import load_extract, run_extract
from fusekern.pipeline.pack import load_packed, run_pack
from fusekern.pipeline.split import run_split, split_texts
from fusekern.pipeline.vocab import build_vocab_map, run_vocab_map

__all__ = [
    "build_vocab_map",
    "load_extract",
    "load_packed",
    "run_align",
    "run_extract",
    "run_pack",
    "run_split",
    "run_vocab_map",
    "split_texts",
]
