"""Stage 2, extract: run one source model over the documents and keep, per token, the top-k of
its next-token distribution, compactly and unpadded.

Tokenisation (as FuseLLM's ``forward_for_logits``): each document is tokenized with
``add_special_tokens=False`` (no BOS) and the tokenizer's ``eos_token_id`` is appended as the
last token. FuseLLM appends the EOS *string* to the text before tokenizing, which gives the
same ids whenever the tokenizer parses its special tokens out of text (all HF tokenizers do
by default); appending the id is the same thing without depending on that.

Output directory (see docs/DATA_FORMAT.md)::

    OUT/extract_meta.json           settings shared by every shard (checked on reruns)
    OUT/tokenizer/                  the tokenizer, saved, so later stages need only OUT
    OUT/shard-00000-of-00004/       one finished shard (renamed into place when complete)
        data.arrow                  Arrow stream, one row per document, in document order
        shard.json                  document range, token count, timing
    OUT/extract.log                 one line per shard computed (which process, when)

Rows: ``doc_id`` int64, ``text_hash`` int64, ``input_ids`` list<int32> [L],
``topk_ids`` list<fixed_size_list<int32>[K]> [L, K], ``topk_logits`` (same, float16),
``ce`` list<float32> [L] (CE of the gold next token at each position; the last position has
no next token and holds 0), ``doc_ce`` float32 (mean of ``ce`` over the L-1 predictions),
``logsumexp`` list<float32> [L] (log of the softmax normaliser at each position, computed with
the CE: with it, any id's raw logit is recoverable from its CE, as align's mid-token rule does
for the gold token). Extracts of format ``fusekern-extract/1`` lack ``logsumexp`` and still
load (:data:`EXTRACT_READ_FORMATS`).

The vocabulary size is the model's logits dimension (output embedding rows, else
``config.vocab_size``), never ``len(tokenizer)``: Qwen-style models pad their logits past the
tokenizer; a tokenizer with *more* ids than the logits is an error.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
import socket
import time
import uuid
from typing import Any, NamedTuple, Sequence, Union

import datasets
import numpy as np
import pyarrow as pa

from fusekern.pipeline.formats import (
    EXTRACT_FORMAT,
    EXTRACT_LOG_FILE,
    EXTRACT_META_FILE,
    EXTRACT_READ_FORMATS,
    EXTRACT_TOKENIZER_DIR,
    SHARD_DATA_FILE,
    SHARD_META_FILE,
)
from fusekern.pipeline.io import (
    DataLike,
    encode,
    load_causal_lm,
    load_texts,
    load_tokenizer,
    name_of,
    read_json,
    text_hashes,
    write_json_atomic,
)
from fusekern.pipeline.paths import check_no_overlap

DIR_LOCK = ".lock"  # held briefly while the meta and tokenizer are checked or written
# One lock file per shard (".lock-shard-00000-of-00004"), held while that shard is computed:
# a second process on the same shard gets an error instead of deleting the live temporary.

# Settings that must agree between runs writing into the same directory.
_CHECKED_KEYS = ("format", "num_docs", "num_shards", "top_k", "vocab_size", "tokenizer_size", "eos_token_id")


def extract_features(top_k: int, *, logsumexp: bool = True) -> datasets.Features:
    """The ``datasets`` features of an extract shard (also its Arrow schema); ``logsumexp=False``:
    the ``fusekern-extract/1`` columns."""
    seq = datasets.Sequence
    cols = {
        "doc_id": datasets.Value("int64"),
        "text_hash": datasets.Value("int64"),
        "input_ids": seq(datasets.Value("int32")),
        "topk_ids": seq(seq(datasets.Value("int32"), length=top_k)),
        "topk_logits": seq(seq(datasets.Value("float16"), length=top_k)),
        "ce": seq(datasets.Value("float32")),
        "doc_ce": datasets.Value("float32"),
    }
    if logsumexp:
        cols["logsumexp"] = seq(datasets.Value("float32"))
    return datasets.Features(cols)


class ExtractRow(NamedTuple):
    """One document of an extract shard (the columns of :func:`extract_features`)."""

    doc_id: int
    text_hash: int
    input_ids: np.ndarray  # [L] int32, text + EOS
    topk_ids: np.ndarray  # [L, K] int32
    topk_logits: np.ndarray  # [L, K] float16
    ce: np.ndarray  # [L] float32
    doc_ce: float
    logsumexp: np.ndarray | None = None  # [L] float32; None in a fusekern-extract/1 row


class _Forward(NamedTuple):
    """What one forward pass gives for one document."""

    topk_ids: np.ndarray
    topk_logits: np.ndarray
    ce: np.ndarray
    doc_ce: float
    logsumexp: np.ndarray


def shard_bounds(num_docs: int, num_shards: int, index: int) -> tuple[int, int]:
    """Contiguous document range of shard ``index`` (sizes differ by at most one)."""
    return index * num_docs // num_shards, (index + 1) * num_docs // num_shards


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}"


def logits_dim(model: Any) -> int:
    """Rows of the model's output projection: the real size of its next-token distribution."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not size:
        raise ValueError(
            "cannot tell the model's logits dimension (no output embeddings, no config.vocab_size)"
        )
    return int(size)


def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _resolve_dtype(dtype: Any, device: Any):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    if str(dtype) not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[str(dtype)]


def _resolve_device(device: Any):
    import torch

    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.type == "cuda" and (count == 0 or (dev.index is not None and dev.index >= count)):
            raise ValueError(f"device {device!r}: no such CUDA device here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def _assigned_shards(num_shards: int, shard_index: Union[int, Sequence[int], None]) -> list:
    if shard_index is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        return [i for i in range(num_shards) if i % world == rank]
    indices = [shard_index] if isinstance(shard_index, int) else list(shard_index)
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {i!r}")
    return indices


@contextlib.contextmanager
def _locked(path: str, *, wait: bool, busy: str):
    """An exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block. ``wait``:
    block until it is free, else raise ``ValueError(busy + holder)`` at once. The lock dies
    with its process, so a killed run never leaves a stale lock behind."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
            raise ValueError(f"{busy} ({holder or 'another process'} holds {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_out_dir(out_dir: str, inputs: list) -> None:
    """Extract writes into an existing directory only to resume its own extract (it never
    deletes one): a non-empty directory without ``extract_meta.json`` is refused, and so is an
    output that equals, holds or lies inside an input (:mod:`fusekern.pipeline.paths`)."""
    check_no_overlap(out_dir, inputs)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir {out_dir!r} exists and is not a directory")
        # Only lock files and temporaries: a run that stopped before writing its meta.
        own = [n for n in os.listdir(out_dir) if not n.startswith((DIR_LOCK, ".tmp-"))]
        if own and not os.path.isfile(os.path.join(out_dir, EXTRACT_META_FILE)):
            raise ValueError(
                f"out_dir {out_dir!r} is not empty and holds no extract ({EXTRACT_META_FILE}); "
                "refusing to write into it: choose a new or empty directory"
            )


def check_token_ids(ids: np.ndarray, size: int, what: str) -> None:
    """Token ids read back from an extract must lie in ``[0, size)``: a negative id would
    silently index from the end of a lookup table."""
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= size):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{what}: token id {bad} outside [0, {size}): the extract is damaged or foreign")


def _check_or_write_meta(out_dir: str, meta: dict) -> None:
    """Create the meta if absent (atomically: a hard link of a complete temporary file fails if
    another process created it first), else check that its settings are these."""
    path = os.path.join(out_dir, EXTRACT_META_FILE)
    if not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        write_json_atomic(tmp, meta)
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            pass  # another process was first: check against its settings
        finally:
            os.unlink(tmp)
    try:
        old = read_json(path)
    except ValueError as exc:
        raise ValueError(f"{path} is damaged ({exc}); use a new out_dir") from None
    diff = {k: (old.get(k), meta[k]) for k in _CHECKED_KEYS if old.get(k) != meta[k]}
    if diff:
        detail = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(
            f"out_dir {out_dir!r} holds an extract made with other settings ({detail}); use a new out_dir"
        )


def _save_tokenizer(tok: Any, out_dir: str) -> None:
    final = os.path.join(out_dir, EXTRACT_TOKENIZER_DIR)
    if os.path.isdir(final):
        # Sizes in the meta do not tell two tokenizers apart: resuming into another source's
        # directory would silently keep that source's shards.
        if load_tokenizer(final).get_vocab() != tok.get_vocab():
            raise ValueError(
                f"out_dir {out_dir!r} holds an extract made with another tokenizer (its vocabulary differs "
                "from this one's: another source model?); use a new out_dir"
            )
        return
    tmp = os.path.join(out_dir, f".tmp-tokenizer-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, final)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)


def _log(out_dir: str, line: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(os.path.join(out_dir, EXTRACT_LOG_FILE), "a", encoding="utf-8") as f:
        f.write(f"{stamp} pid={os.getpid()} host={socket.gethostname()} {line}\n")


def _finished_shard_ok(path: str, expected_hashes: np.ndarray) -> bool:
    """A finished shard is reused only if it was computed from exactly these documents."""
    if not (
        os.path.isfile(os.path.join(path, SHARD_META_FILE))
        and os.path.isfile(os.path.join(path, SHARD_DATA_FILE))
    ):
        return False
    table = _read_arrow(os.path.join(path, SHARD_DATA_FILE))
    if table.num_rows != expected_hashes.size:
        raise _damaged(path, f"{table.num_rows} rows, {expected_hashes.size} expected")
    got = table.column("text_hash").to_numpy()
    if got.shape != expected_hashes.shape or not np.array_equal(got, expected_hashes):
        raise ValueError(
            f"{path} was computed from different documents than the data given now; use a new out_dir"
        )
    return True


def _damaged(shard_dir: str, why: str) -> ValueError:
    return ValueError(
        f"extract shard {shard_dir!r} is damaged ({why}); delete that directory and rerun "
        "`fusekern extract` with the same arguments to recompute it"
    )


def _read_arrow(path: str) -> pa.Table:
    try:
        with pa.memory_map(path) as source:
            return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException) as exc:  # a truncated or overwritten file
        raise _damaged(os.path.dirname(path), str(exc)) from None


def _record_batch(schema: pa.Schema, top_k: int, rows: Sequence[ExtractRow]) -> pa.RecordBatch:
    """The rows as one Arrow batch of ``schema`` (with or without the ``logsumexp`` column)."""
    lengths = np.array([len(r.input_ids) for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    offsets_pa = pa.array(offsets, type=pa.int32())

    def lst(flat: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets_pa, pa.array(flat, type=typ))

    def lst_k(flat: np.ndarray, typ: pa.DataType) -> pa.Array:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=typ), top_k)
        return pa.ListArray.from_arrays(offsets_pa, inner)

    cols = [
        pa.array([r.doc_id for r in rows], type=pa.int64()),
        pa.array([r.text_hash for r in rows], type=pa.int64()),
        lst(np.concatenate([r.input_ids for r in rows]), pa.int32()),
        lst_k(np.concatenate([r.topk_ids for r in rows]), pa.int32()),
        lst_k(np.concatenate([r.topk_logits for r in rows]), pa.float16()),
        lst(np.concatenate([r.ce for r in rows]), pa.float32()),
        pa.array([r.doc_ce for r in rows], type=pa.float32()),
    ]
    if "logsumexp" in schema.names:
        cols.append(lst(np.concatenate([r.logsumexp for r in rows]), pa.float32()))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def _forward_batch(model, batch_ids: list, device, top_k: int, pad_id: int) -> list[_Forward]:
    """Top-k, gold-token CE and logsumexp for a batch of token-id lists (right-padded, causal:
    padding never influences real positions)."""
    import torch

    lmax = max(len(x) for x in batch_ids)
    inp = torch.full((len(batch_ids), lmax), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), lmax), dtype=torch.long)
    for b, ids in enumerate(batch_ids):
        inp[b, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[b, : len(ids)] = 1
    inp, mask = inp.to(device), mask.to(device)
    logits = model(input_ids=inp, attention_mask=mask).logits
    out = []
    for b, ids in enumerate(batch_ids):
        n = len(ids)
        lg = logits[b, :n].float()  # one document at a time keeps the fp32 copy small
        top_v, top_i = torch.topk(lg, top_k, dim=-1)
        lse = torch.logsumexp(lg, dim=-1)  # the CE's normaliser, kept for align
        ce = torch.zeros(n, dtype=torch.float32, device=lg.device)
        if n > 1:
            ce[:-1] = lse[:-1] - lg[:-1].gather(1, inp[b, 1:n, None]).squeeze(1)
        if not torch.isfinite(top_v).all():
            raise ValueError("the model produced non-finite logits (try dtype='float32')")
        out.append(
            _Forward(
                top_i.to(torch.int32).cpu().numpy(),
                top_v.to(torch.float16).cpu().numpy(),
                ce.cpu().numpy(),
                float(ce[:-1].mean()) if n > 1 else 0.0,
                lse.cpu().numpy(),
            )
        )
    return out


class _Run(NamedTuple):
    """What every shard of one extract call needs."""

    out_dir: str
    lm: Any
    tok: Any
    device: Any
    top_k: int
    batch_size: int
    vocab: int  # the logits dimension
    max_len: int | None
    pad_id: int
    num_shards: int
    text_column: str


class _Pending(NamedTuple):
    """A shard still to compute: its index, document range and the documents' text hashes."""

    index: int
    lo: int
    hi: int
    hashes: np.ndarray


def run_extract(
    model: Any,
    data: DataLike,
    out_dir: str,
    *,
    tokenizer: Any = None,
    top_k: int = 10,
    batch_size: int = 8,
    num_shards: int | None = None,
    shard_index: Union[int, Sequence[int], None] = None,
    device: Any = None,
    dtype: Any = None,
    text_column: str = "text",
    split: str | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> str:
    """Extract per-token top-``top_k`` (ids int32, logits fp16), gold-token CE and logsumexp of
    ``model`` over ``data`` into ``out_dir`` (layout in the module docstring). Returns ``out_dir``.

    ``model``/``tokenizer``: objects, local directories or Hub names (``tokenizer`` defaults to
    ``model`` when that is a path/name). Sharding: the documents are cut into ``num_shards``
    contiguous shards (default: ``$WORLD_SIZE`` or 1); this call computes ``shard_index`` (an
    int or a list), by default every shard ``i`` with ``i % $WORLD_SIZE == $RANK`` — all of them
    in a single process, its own share under ``accelerate launch``/``torchrun``. Each shard is
    written to a temporary directory and renamed when complete; finished shards are skipped on
    reruns. ``dtype``: bf16 on CUDA and fp32 on CPU by default.
    """
    import torch

    num_shards = _check_sizes(top_k, batch_size, num_shards)
    shards = _assigned_shards(num_shards, shard_index)
    _check_out_dir(out_dir, [("data", data), ("model", model), ("tokenizer", tokenizer)])
    ds = load_texts(data, text_column=text_column, split=split)
    if len(ds) == 0:
        raise ValueError("data has no documents")
    if num_shards > len(ds):
        raise ValueError(f"num_shards ({num_shards}) is larger than the number of documents ({len(ds)})")
    if tokenizer is None:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("tokenizer= is required when model is a model object")
        tokenizer = model
    run, torch_dtype = _prepare_model(
        model,
        tokenizer,
        out_dir,
        top_k,
        batch_size,
        num_shards,
        device,
        dtype,
        text_column,
        max_length,
        trust_remote_code,
    )
    os.makedirs(out_dir, exist_ok=True)
    meta = {
        "format": EXTRACT_FORMAT,
        "model": name_of(model),
        "tokenizer": name_of(tokenizer),
        "data": name_of(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        "text_column": text_column,
        "num_docs": len(ds),
        "num_shards": num_shards,
        "top_k": top_k,
        "vocab_size": run.vocab,
        "tokenizer_size": len(run.tok),
        "eos_token_id": int(run.tok.eos_token_id),
        "bos_added": False,
        "dtype": str(torch_dtype).replace("torch.", ""),
        "columns": list(extract_features(top_k)),  # logsumexp included (format /2)
    }
    busy = f"another process is writing the settings of {out_dir!r}"
    with _locked(os.path.join(out_dir, DIR_LOCK), wait=True, busy=busy):
        _check_or_write_meta(out_dir, meta)
        _save_tokenizer(run.tok, out_dir)

    todo = _pending_shards(ds, run, shards)
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(p.hi - p.lo for p in todo), unit="doc", desc="extract", disable=not progress)
    with torch.inference_mode():
        for pending in todo:
            _compute_shard(ds, run, pending, bar)
    bar.close()
    _report(out_dir, num_shards)
    return out_dir


def _check_sizes(top_k: Any, batch_size: Any, num_shards: Any) -> int:
    """Check the integer options; returns ``num_shards`` (default ``$WORLD_SIZE`` or 1)."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_shards is None:
        num_shards = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    return num_shards


def _prepare_model(
    model,
    tokenizer,
    out_dir,
    top_k,
    batch_size,
    num_shards,
    device,
    dtype,
    text_column,
    max_length,
    trust_remote_code,
) -> tuple[_Run, Any]:
    """Load the tokenizer and the model onto its device; check that they fit together."""
    tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    if tok.eos_token_id is None:
        raise ValueError(
            "tokenizer has no eos_token: extraction appends EOS to every document, as FuseLLM does"
        )
    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    from_path = isinstance(model, (str, os.PathLike))
    lm = load_causal_lm(model, dtype=torch_dtype if from_path else None, trust_remote_code=trust_remote_code)
    if from_path or dtype is not None:
        lm = lm.to(dtype=torch_dtype)
    try:
        lm = lm.to(dev).eval()
    except (RuntimeError, AssertionError) as exc:  # e.g. a device this torch build lacks
        raise ValueError(f"device {device!r}: cannot move the model there ({exc})") from None
    vocab = logits_dim(lm)
    if len(tok) > vocab:
        raise ValueError(
            f"tokenizer has {len(tok)} ids but the model's logits dimension is {vocab}: ids >= {vocab} "
            "would have no logit (is this the model's own tokenizer?)"
        )
    if top_k > vocab:
        raise ValueError(f"top_k ({top_k}) exceeds the model's vocabulary ({vocab})")
    max_len = max_length if max_length is not None else _max_positions(lm)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    run = _Run(out_dir, lm, tok, dev, top_k, batch_size, vocab, max_len, pad_id, num_shards, text_column)
    return run, torch_dtype


def _pending_shards(ds: datasets.Dataset, run: _Run, shards: list) -> list[_Pending]:
    """The assigned shards not finished yet (a finished one is checked against the data)."""
    todo = []
    for index in shards:
        lo, hi = shard_bounds(len(ds), run.num_shards, index)
        final = os.path.join(run.out_dir, shard_name(index, run.num_shards))
        hashes = text_hashes(ds[lo:hi][run.text_column])
        if os.path.isdir(final) and _finished_shard_ok(final, hashes):
            print(f"extract: {shard_name(index, run.num_shards)} already finished, skipped")
            continue
        todo.append(_Pending(index, lo, hi, hashes))
    return todo


def _compute_shard(ds: datasets.Dataset, run: _Run, pending: _Pending, bar) -> None:
    """Compute one shard into a temporary directory and rename it into place, holding the
    shard's lock (another process on the same shard is refused, never raced)."""
    index, lo, hi, hashes = pending
    name = shard_name(index, run.num_shards)
    final = os.path.join(run.out_dir, name)
    busy = f"{name} of {run.out_dir!r} is being computed by another extract process; wait for it"
    with _locked(os.path.join(run.out_dir, f".lock-{name}"), wait=False, busy=busy):
        if os.path.isdir(final) and _finished_shard_ok(final, hashes):
            print(f"extract: {name} was finished by another process meanwhile, skipped")
            bar.update(hi - lo)
            return
        t0 = time.time()
        # Leftovers of a killed run on this shard: safe to delete, we hold its lock.
        for stale in os.listdir(run.out_dir):
            if stale.startswith(f".tmp-{name}-"):
                shutil.rmtree(os.path.join(run.out_dir, stale), ignore_errors=True)
        tmp = os.path.join(run.out_dir, f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        n_tokens = _write_shard_data(ds, run, pending, os.path.join(tmp, SHARD_DATA_FILE), bar)
        seconds = time.time() - t0
        write_json_atomic(
            os.path.join(tmp, SHARD_META_FILE),
            {
                "shard": index,
                "num_shards": run.num_shards,
                "doc_start": lo,
                "doc_end": hi,
                "tokens": n_tokens,
                "seconds": round(seconds, 3),
            },
        )
        if os.path.isdir(final):  # a damaged leftover of this shard (no shard.json); we hold its lock
            shutil.rmtree(final)
        os.replace(tmp, final)
        _log(run.out_dir, f"computed {name} docs [{lo}, {hi}) tokens={n_tokens} seconds={seconds:.2f}")


def _write_shard_data(ds: datasets.Dataset, run: _Run, pending: _Pending, path: str, bar) -> int:
    """Stream the shard's rows to ``path``, one window of documents (≥ 256) at a time; returns
    the number of tokens written."""
    schema = extract_features(run.top_k).arrow_schema
    window = max(256, 32 * run.batch_size)
    n_tokens = 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for w0 in range(pending.lo, pending.hi, window):
            w1 = min(pending.hi, w0 + window)
            texts = ds[w0:w1][run.text_column]
            rows = _extract_window(run, texts, w0, pending.hashes[w0 - pending.lo : w1 - pending.lo])
            n_tokens += sum(len(r.input_ids) for r in rows)
            writer.write_batch(_record_batch(schema, run.top_k, rows))
            bar.update(w1 - w0)
    return n_tokens


def _report(out_dir: str, num_shards: int) -> None:
    missing = missing_shards(out_dir)
    if missing:
        print(
            f"extract: {num_shards - len(missing)}/{num_shards} shards finished in {out_dir} "
            f"(missing: {missing[:8]}{'...' if len(missing) > 8 else ''})"
        )
    else:
        print(f"extract: complete, {num_shards} shard(s) in {out_dir}")


def _window_ids(run: _Run, texts: list, first_doc: int) -> list[np.ndarray]:
    """Each document's token ids (text + EOS), checked against the model's sizes."""
    for j, t in enumerate(texts):
        if t is None or not t.strip():
            raise ValueError(
                f"document {first_doc + j} is empty (column text is empty or whitespace); "
                "drop empty documents first (`fusekern split` does)"
            )
    eos = int(run.tok.eos_token_id)
    seqs = []
    for j, x in enumerate(encode(run.tok, texts)):
        if not x:
            raise ValueError(f"document {first_doc + j} tokenizes to no tokens")
        seq = np.asarray(x + [eos], dtype=np.int64)
        if seq.max() >= run.vocab:
            raise ValueError(
                f"document {first_doc + j}: token id {int(seq.max())} >= the model's logits dimension "
                f"{run.vocab}"
            )
        if run.max_len is not None and len(seq) > run.max_len:
            raise ValueError(
                f"document {first_doc + j} has {len(seq)} tokens (EOS included), more than the model's "
                f"{run.max_len} positions; run `fusekern split` with a block size <= {run.max_len} first"
            )
        seqs.append(seq)
    return seqs


def _extract_window(run: _Run, texts: list, first_doc: int, hashes: np.ndarray) -> list[ExtractRow]:
    """The rows of one window of documents (forward passes in batches, longest first)."""
    seqs = _window_ids(run, texts, first_doc)
    order = sorted(range(len(seqs)), key=lambda j: (-len(seqs[j]), j))  # long first: little padding
    results: list = [None] * len(seqs)
    for b0 in range(0, len(order), run.batch_size):
        idx = order[b0 : b0 + run.batch_size]
        batch = _forward_batch(run.lm, [seqs[j] for j in idx], run.device, run.top_k, run.pad_id)
        for j, res in zip(idx, batch):
            results[j] = res
    return [
        ExtractRow(first_doc + j, int(hashes[j]), seqs[j].astype(np.int32), *r) for j, r in enumerate(results)
    ]


# ------------------------------------------------------------------------------------ reading


def missing_shards(out_dir: str) -> list:
    meta = read_json(os.path.join(out_dir, EXTRACT_META_FILE))
    n = meta["num_shards"]
    return [
        i for i in range(n) if not os.path.isfile(os.path.join(out_dir, shard_name(i, n), SHARD_META_FILE))
    ]


def load_extract(out_dir: str) -> tuple[datasets.Dataset, dict]:
    """The complete extract in ``out_dir`` as one memory-mapped ``datasets.Dataset`` (row i =
    document i) and its meta. Raises ``ValueError`` if a shard is missing."""
    path = os.path.join(out_dir, EXTRACT_META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out_dir!r} is not an extract directory (no {EXTRACT_META_FILE})")
    meta = read_json(path)
    if meta.get("format") not in EXTRACT_READ_FORMATS:
        raise ValueError(
            f"{out_dir!r}: unknown extract format {meta.get('format')!r} "
            f"(expected one of {EXTRACT_READ_FORMATS})"
        )
    missing = missing_shards(out_dir)
    if missing:
        raise ValueError(
            f"extract in {out_dir!r} is incomplete: shards {missing} of {meta['num_shards']} are missing "
            "(rerun `fusekern extract` with the same arguments to finish it)"
        )
    parts = []
    for i in range(meta["num_shards"]):
        shard_dir = os.path.join(out_dir, shard_name(i, meta["num_shards"]))
        try:
            part = datasets.Dataset.from_file(os.path.join(shard_dir, SHARD_DATA_FILE))
        except (OSError, pa.ArrowException) as exc:
            raise _damaged(shard_dir, str(exc)) from None
        lo, hi = shard_bounds(meta["num_docs"], meta["num_shards"], i)
        if len(part) != hi - lo:
            raise _damaged(shard_dir, f"{len(part)} rows, {hi - lo} expected")
        parts.append(part)
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if len(ds) != meta["num_docs"]:
        raise ValueError(f"extract in {out_dir!r} has {len(ds)} rows, its meta says {meta['num_docs']}")
    return ds, meta
