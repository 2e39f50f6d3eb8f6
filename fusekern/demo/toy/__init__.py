"""Tiny, offline stand-ins for the real thing: a corpus from Python's standard library,
tokenizers of each family trained with ``tokenizers``, and small causal LMs built from
``transformers`` configs. Used by the tests and by ``fusekern demo``; nothing is downloaded."""
