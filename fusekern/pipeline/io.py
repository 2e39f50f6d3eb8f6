"""Loading what the pipeline stages consume (text datasets, tokenizers, models) from a local
path, a Hub name or an in-memory object, plus small helpers for atomic on-disk output.

Every stage accepts the same kinds of arguments, so the CLI, the demo and the tests share
one code path: a ``datasets.Dataset`` / ``DatasetDict`` / list of strings, a directory made
with ``save_to_disk``, a local ``.json``/``.jsonl``/``.parquet``/``.txt``/``.csv`` file (or a
directory of them), or a Hub dataset name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from typing import Any, Sequence, Union

import datasets
import numpy as np

from fusekern.align.tokenizer import load_tokenizer  # noqa: F401  (the one loader, re-exported for the stages)
from fusekern.pipeline.paths import OutputDir, check_name_or_path, replace_output_dir

DataLike = Union[str, os.PathLike, datasets.Dataset, datasets.DatasetDict, Sequence[str]]

_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
}


def _pick_split(dd: datasets.DatasetDict, split: str | None, what: str) -> datasets.Dataset:
    if split is not None:
        if split not in dd:
            raise ValueError(f"{what}: no split {split!r} (splits: {sorted(dd)})")
        return dd[split]
    if "train" in dd:
        return dd["train"]
    if len(dd) == 1:
        return next(iter(dd.values()))
    raise ValueError(f"{what}: several splits {sorted(dd)}; pass split=... to choose one")


def load_texts(data: DataLike, *, text_column: str = "text", split: str | None = None) -> datasets.Dataset:
    """A ``datasets.Dataset`` with a string column ``text_column``, from any supported source.

    Local text files give one row per line (the ``datasets`` "text" builder's convention).
    Raises ``ValueError`` naming the column when it is missing or not a string column.
    """
    what = f"data {data!r}" if isinstance(data, (str, os.PathLike)) else "data"
    if isinstance(data, datasets.DatasetDict):
        ds = _pick_split(data, split, what)
    elif isinstance(data, datasets.Dataset):
        ds = data
    elif isinstance(data, (str, os.PathLike)):
        ds = _load_path(os.fspath(data), split, what)
    elif isinstance(data, Sequence) and all(isinstance(t, str) for t in data):
        features = datasets.Features({text_column: datasets.Value("string")})
        ds = datasets.Dataset.from_dict({text_column: list(data)}, features=features)
    else:
        raise TypeError(
            f"data must be a path, a Hub name, a datasets.Dataset/DatasetDict or a list of str, "
            f"got {type(data).__name__}"
        )
    if text_column not in ds.column_names:
        raise ValueError(
            f"{what} has no text column {text_column!r} (columns: {ds.column_names}); "
            "pass text_column=... (--text-column) to name it"
        )
    feature = ds.features[text_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"{what}: column {text_column!r} must hold strings, has {feature}")
    return ds


def _load_path(path: str, split: str | None, what: str) -> datasets.Dataset:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "dataset_dict.json")):
            return _pick_split(datasets.load_from_disk(path), split, what)
        if os.path.exists(os.path.join(path, "state.json")):
            return datasets.load_from_disk(path)
        # A directory of data files: let `datasets` infer the builder from the extensions.
        return _as_dataset(datasets.load_dataset(path, split=split), split, what)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise ValueError(f"{what}: unsupported file type {ext!r}; use one of {sorted(_FILE_BUILDERS)}")
        loaded = datasets.load_dataset(_FILE_BUILDERS[ext], data_files=path, split=split or "train")
        return _as_dataset(loaded, split, what)
    check_name_or_path(path, "data")  # a mistyped local path is an error, never a Hub lookup
    return _as_dataset(datasets.load_dataset(path, split=split), split, what)  # a Hub name


def _as_dataset(obj: Any, split: str | None, what: str) -> datasets.Dataset:
    if isinstance(obj, datasets.DatasetDict):
        return _pick_split(obj, split, what)
    return obj


def text_hash(text: str) -> int:
    """A signed 64-bit digest of the text's UTF-8 bytes: lets later stages check that two stages
    saw exactly the same document without storing the text twice."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter((text_hash(t) for t in texts), dtype=np.int64, count=len(texts))


# ---------------------------------------------------------------------------------------- models


def load_causal_lm(
    model: Any,
    *,
    dtype=None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    name: str = "model",
):
    """A causal LM (``AutoModelForCausalLM``) from an object, a local directory or a Hub name.
    A path that cannot be loaded raises ``FileNotFoundError`` naming it (and ``name``)."""
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(model, torch.nn.Module):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        check_name_or_path(path, name)
        if os.path.exists(os.path.expanduser(path)) and not os.path.isdir(os.path.expanduser(path)):
            raise FileNotFoundError(f"{name}: no model directory at {path!r}")
        kwargs = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            return AutoModelForCausalLM.from_pretrained(os.path.expanduser(path), **kwargs)
        except OSError as exc:  # no config/weights there, or a Hub name that cannot be reached
            raise FileNotFoundError(f"{name}: cannot load a causal LM from {path!r}: {exc}") from None
    raise TypeError(f"model must be a path, a Hub name or a torch.nn.Module, got {type(model).__name__}")


def name_of(obj: Any) -> str:
    """A printable name for a model/tokenizer/dataset argument (its path or Hub name if known)."""
    if isinstance(obj, (str, os.PathLike)):
        return os.fspath(obj)
    for attr in ("name_or_path",):
        value = getattr(obj, attr, None)
        if value:
            return str(value)
    cfg = getattr(obj, "config", None)
    if cfg is not None and getattr(cfg, "_name_or_path", None):
        return str(cfg._name_or_path)
    return type(obj).__name__


def check_unique_names(names: list, what: str) -> None:
    """Source names key the teacher columns (``--fusion_sources``): they must be distinct."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what}: source names must be unique, {dup} appear more than once (name them)")


def vocab_fingerprint(tok: Any) -> str:
    """SHA-256 of a tokenizer's vocabulary (every ``(id, token string)``, added tokens included):
    equal for the same tokenizer however it was saved or loaded, different for another one.
    Recorded by vocab-map and pack, checked by align and train."""
    items = sorted((int(i), str(t)) for t, i in tok.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ disk helpers


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_dataset_atomic(
    ds: datasets.Dataset,
    out_dir: str,
    extra_files: dict | None = None,
    *,
    kind: OutputDir,
    overwrite: bool = False,
    link_from: str | None = None,
) -> None:
    """``save_to_disk`` into a sibling temporary directory, add ``extra_files`` (name -> JSON
    object), then rename: a crashed run never leaves something that looks finished. An existing
    ``out_dir`` is replaced only under :mod:`fusekern.pipeline.paths`' rules (``kind``).

    ``link_from``: a scratch directory of the caller's own (e.g. the ``cache_file_name`` folder
    of the ``map`` that made ``ds``). Where ``ds`` is exactly whole Arrow files inside it, the
    output's data files become hard links to them instead of copies (:func:`_save_linked`): the
    aligned/packed data is written once, not twice, and needs no second copy's disk space."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(out_dir)}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if link_from is None or not _save_linked(ds, tmp, link_from):
            ds.save_to_disk(tmp)
        for name, obj in (extra_files or {}).items():
            write_json_atomic(os.path.join(tmp, name), obj)
        replace_output_dir(tmp, out_dir, kind, overwrite=overwrite)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _whole_files(ds: datasets.Dataset, inside: str) -> list | None:
    """The Arrow files under ``inside`` that hold ``ds`` exactly, in order, with their row
    counts: each file whole (no slice or other transform but schema metadata, which ``map``
    outputs carry), no indices mapping. None where that is not so."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    table = ds.data
    if getattr(ds, "_indices", "unknown") is not None or ds.num_rows == 0:
        return None
    if isinstance(table, ConcatenationTable):
        if any(len(row) != 1 for row in table.blocks):  # columns from several tables
            return None
        blocks = [row[0] for row in table.blocks]
    else:
        blocks = [table]
    root = os.path.join(os.path.abspath(inside), "")
    files = []
    for b in blocks:
        if not isinstance(b, MemoryMappedTable) or not os.path.abspath(b.path).startswith(root):
            return None
        if any(r[0] != "replace_schema_metadata" for r in (getattr(b, "replays", None) or [])):
            return None
        files.append((b.path, b.num_rows))
    return files if all(n > 0 for _, n in files) else None  # one row per file stands for it


def _save_linked(ds: datasets.Dataset, tmp: str, inside: str) -> bool:
    """Write ``ds`` to ``tmp`` as ``save_to_disk`` does, without copying its rows, where it is
    whole Arrow files under ``inside`` (:func:`_whole_files`): ``save_to_disk`` of one row per
    file, one shard per file, writes the directory's metadata and its data files; each data file
    is then replaced by a hard link to the file it stands for, and the result is read back and
    compared (rows, features, the first row of every file). False (``tmp`` removed) where any
    of that does not hold: the caller copies instead."""
    files = _whole_files(ds, inside)
    if not files:
        return False
    starts = np.cumsum([0] + [n for _, n in files])[:-1].tolist()
    try:
        ds.select(starts).save_to_disk(tmp, num_shards=len(files))
        shards = sorted(f for f in os.listdir(tmp) if f.endswith(".arrow"))
        if len(shards) != len(files):
            raise OSError("unexpected save_to_disk layout")
        for shard, (path, _) in zip(shards, files):
            os.remove(os.path.join(tmp, shard))
            os.link(path, os.path.join(tmp, shard))
        back = datasets.load_from_disk(tmp)
        same = back.num_rows == ds.num_rows and back.features == ds.features
        same = same and all(back.data.table.slice(i, 1).equals(ds.data.table.slice(i, 1)) for i in starts)
        del back
        if same:
            return True
    except Exception:  # noqa: BLE001 - e.g. no hard links on this file system, or another datasets
        pass  # layout: the copy below is always right, this path only saves the second write
    shutil.rmtree(tmp, ignore_errors=True)
    return False


# ------------------------------------------------------------------------------------ tokenizing


def _backend(tok: Any):
    return getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None


def encode(tok: Any, texts: Sequence[str]) -> list:
    """Token ids of each text, no special tokens added: the one tokenisation every stage uses
    (split measures with it, extract and align feed it to the models). Fast tokenizers go
    straight to their Rust backend, which is what their ``__call__`` runs, minus overhead
    (``encode_batch_fast``: the same ids without character offsets, ~17% less CPU)."""
    backend = _backend(tok)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return [list(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def count_tokens(tok: Any, text: str) -> int:
    backend = _backend(tok)
    if backend is not None:
        return len(backend.encode(text, add_special_tokens=False).ids)
    return len(tok(text, add_special_tokens=False)["input_ids"])
