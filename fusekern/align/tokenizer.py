"""The one tokenizer loader (every stage, the CLI and the vocabulary map use it), and the
name-or-path rule for model/tokenizer/dataset arguments that it applies first.

Name or path. Such an argument is a local path or a Hub name. A value that *looks local* and
does not exist is an immediate ``FileNotFoundError`` naming the argument, never a Hub lookup
(which retries for a minute before failing). It looks local when it starts with ``.``, ``/`` or
``~``, holds a backslash or more than one ``/`` (Hub names are ``name`` or ``org/name``), ends
with a data-file suffix, or its parent directory exists (``W/nosplit`` where ``W/`` is here).
:mod:`fusekern.pipeline.paths` re-exports the rule for the pipeline's other inputs.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["check_name_or_path", "load_tokenizer", "looks_local"]

_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".txt", ".text", ".csv", ".npz", ".arrow", ".yaml", ".yml")


def looks_local(value: str | os.PathLike) -> bool:
    """Whether a name-or-path argument can only mean a local path (module doc)."""
    path = os.fspath(value)
    if path.startswith((".", "/", "~")) or os.path.isabs(path) or "\\" in path or path.count("/") > 1:
        return True
    if os.path.splitext(path)[1].lower() in _LOCAL_SUFFIXES:
        return True
    parent = os.path.dirname(path)
    return bool(parent) and os.path.isdir(os.path.expanduser(parent))


def check_name_or_path(value: Any, what: str, *, local_only: bool = False) -> None:
    """Raise ``FileNotFoundError`` naming ``what`` when ``value`` is a string that is not an
    existing path but looks like one (or must be one: ``local_only``). Objects pass."""
    if not isinstance(value, (str, os.PathLike)):
        return
    path = os.fspath(value)
    if os.path.exists(os.path.expanduser(path)):
        return
    if local_only or looks_local(path):
        raise FileNotFoundError(f"{what}: no such file or directory: {path!r}")


def load_tokenizer(tokenizer: Any, *, name: str = "tokenizer", trust_remote_code: bool = False) -> Any:
    """A Hugging Face tokenizer from a tokenizer object (returned as is), a local directory, a
    ``tokenizer.json`` file, or a Hub name where one is reachable; ``name`` is the argument
    named in errors.

    Raises ``TypeError`` for another type, ``FileNotFoundError`` naming ``name`` and the path
    for a path that does not exist (:func:`check_name_or_path`), is a file but not a
    ``.json``, cannot be loaded, or holds no vocabulary, and ``ValueError`` for a ``.json``
    file that is not a ``tokenizers`` tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if not isinstance(tokenizer, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, a Hub name or a tokenizer, got {type(tokenizer).__name__}")
    path = os.fspath(tokenizer)
    check_name_or_path(path, name)  # from here on a path that does not exist is a Hub name
    local = os.path.expanduser(path)
    if os.path.isfile(local) and local.endswith(".json"):
        tok = _tokenizer_from_json(local, name, trust_remote_code)
    elif os.path.exists(local) and not os.path.isdir(local):
        raise FileNotFoundError(f"{name}: {path!r} is a file; pass a tokenizer directory or a tokenizer.json")
    else:
        try:
            tok = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        except Exception as exc:  # OSError, ValueError, or the Rust parser's error on a damaged file
            raise FileNotFoundError(f"{name}: cannot load a tokenizer from {path!r}: {exc}") from None
    if len(tok) <= len(set(tok.all_special_ids)):  # len: no vocabulary dict (0.2 s for 150k tokens)
        # transformers builds an empty tokenizer from a model directory without tokenizer files
        raise FileNotFoundError(
            f"{name}: {path!r} holds no tokenizer vocabulary (only special tokens); "
            "save the tokenizer there or pass the tokenizer's directory"
        )
    return tok


# Special-token roles of a bare tokenizer.json (no tokenizer_config.json to name them): the
# usual spellings, first match wins. Without them e.g. MPT's <|endoftext|> would have no eos role.
_ROLE_SPELLINGS = {
    "eos_token": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "<|im_end|>"),
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
    "pad_token": ("<pad>", "<|padding|>", "[PAD]", "<|pad|>"),
    "sep_token": ("[SEP]",),
    "cls_token": ("[CLS]",),
    "mask_token": ("[MASK]", "<mask>"),
}


def _tokenizer_from_json(path: str, name: str, trust_remote_code: bool) -> Any:
    """A ``tokenizer.json`` file with its special-token roles: from a ``tokenizer_config.json``
    beside it when there is one (read directly: its ``tokenizer_class`` may need another
    transformers release), else from the file's special added tokens by their usual spellings
    (``_ROLE_SPELLINGS``)."""
    from transformers import PreTrainedTokenizerFast

    try:
        tok = PreTrainedTokenizerFast(tokenizer_file=path)
        with open(path, encoding="utf-8") as f:
            added = json.load(f).get("added_tokens") or []
    except Exception as exc:  # the Rust parser raises a bare Exception on a non-tokenizer file
        raise ValueError(f"{name}: {path!r} is not a tokenizers tokenizer.json file ({exc})") from None
    specials = {a.get("content") for a in added if isinstance(a, dict) and a.get("special")}
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    config: dict = {}
    if os.path.basename(path) == "tokenizer.json" and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    vocab = tok.get_vocab() if config else {}  # built once: a 150k-token dict costs ~0.3 s
    roles = {}
    for role, spellings in _ROLE_SPELLINGS.items():
        value = config.get(role)
        value = value.get("content") if isinstance(value, dict) else value
        if config:  # the config names the roles; a role it leaves out has no token
            if isinstance(value, str) and value in vocab:
                roles[role] = value
            continue
        found = next((s for s in spellings if s in specials), None)
        if found is not None:
            roles[role] = found
    if roles:
        tok.add_special_tokens(roles)  # tokens already in the vocabulary: only the roles change
    return tok
