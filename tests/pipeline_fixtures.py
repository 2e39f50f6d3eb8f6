"""Shared, session-cached fixtures for the pipeline tests: tiny causal LMs of three
architectures, each with its own tokenizer (trained locally on standard-library text) saved to
a temporary directory, a split corpus, their extracts and alignments. A test module loads them
with ``pytest_plugins = ["pipeline_fixtures"]``; constants and helpers are in pipeline_helpers.
"""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import BLOCK, MODELS, TARGET, TOP_K, TinyLM

from fusekern.demo.toy.corpus import EXOTIC_TEXT, stdlib_code, stdlib_prose
from fusekern.demo.toy.models import tiny_causal_lm
from fusekern.demo.toy.tokenizers import train_tokenizer

# Loaded as a plugin, these fixtures are built once per session. A module that imported them
# directly would get its own instances (pytest keys fixtures by defining module), so the
# expensive artifacts are memoised here as well: one build whatever the route.
_CACHE: dict = {}


def _cached(key: str, build):
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def training_texts() -> list:
    return stdlib_prose(40)[:40] + [EXOTIC_TEXT] + stdlib_code(1)


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory) -> dict:
    return _cached("tiny_lms", lambda: _build_tiny_lms(tmp_path_factory))


def _build_tiny_lms(tmp_path_factory) -> dict:
    texts = training_texts()
    root = tmp_path_factory.mktemp("tiny_lms")
    out = {}
    for i, (name, (arch, kind)) in enumerate(MODELS.items()):
        # Unigram training is the slow one: give it less text.
        tok = train_tokenizer(
            kind, texts if kind != "unigram" else texts[:12] + [EXOTIC_TEXT], vocab_size=400
        )
        model = tiny_causal_lm(arch, len(tok), hidden=32, layers=2, heads=2, max_positions=256, seed=i)
        with torch.no_grad():  # spread the logits of a fresh init: top-k without near-ties
            model.get_output_embeddings().weight.mul_(40.0)
        path = str(root / name)
        tok.save_pretrained(path)
        model.save_pretrained(path)
        out[name] = TinyLM(name, path, tok, model)
    return out


@pytest.fixture(scope="session")
def docs(tiny_lms) -> list:
    """Pieces that fit BLOCK under all three tokenizers: prose, code and the exotic text."""
    from fusekern.pipeline import split_texts

    def build():
        raw = stdlib_prose(60)[44:50] + [EXOTIC_TEXT, stdlib_code(1)[0][:1500]]
        return split_texts(raw, [lm.tokenizer for lm in tiny_lms.values()], BLOCK)[:28]

    return _cached("docs", build)


@pytest.fixture(scope="session")
def extracts(tiny_lms, docs, tmp_path_factory) -> dict:
    from fusekern.pipeline import run_extract

    def build():
        root = tmp_path_factory.mktemp("extracts")
        return {
            name: run_extract(
                lm.path, docs, str(root / name), top_k=TOP_K, batch_size=4, num_shards=2, progress=False
            )
            for name, lm in tiny_lms.items()
        }

    return _cached("extracts", build)


@pytest.fixture(scope="session")
def aligned(extracts, docs, tiny_lms, tmp_path_factory) -> tuple:
    """(source names, {rule: aligned dir}) for the target TARGET and all three sources; rules:
    "bytes" (span positions), "fusellm", "boundary" and "all" (bytes mode, those positions)."""
    from fusekern.pipeline import run_align

    def build():
        root = tmp_path_factory.mktemp("aligned")
        names = list(extracts)
        paths = [extracts[n] for n in names]
        target = tiny_lms[TARGET].path
        dirs = {
            mode: run_align(target, docs, paths, str(root / mode), mode=mode, source_names=names)
            for mode in ("bytes", "fusellm")
        }
        for positions in ("boundary", "all"):
            dirs[positions] = run_align(
                target, docs, paths, str(root / positions), positions=positions, source_names=names
            )
        return names, dirs

    return _cached("aligned", build)
