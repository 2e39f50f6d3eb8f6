"""Constants and helper functions shared by the pipeline tests (fixtures: pipeline_fixtures)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import torch

BLOCK = 96
TOP_K = 6
# name -> (architecture, tokenizer family). The target of the align/pack tests is "llama_sp".
MODELS = {
    "llama_sp": ("llama", "sp_bpe"),
    "neox_bbpe": ("gpt_neox", "byte_bpe"),
    "gpt2_uni": ("gpt2", "unigram"),
}
TARGET = "llama_sp"


@dataclasses.dataclass
class TinyLM:
    name: str
    path: str  # save_pretrained directory holding both the model and the tokenizer
    tokenizer: object
    model: torch.nn.Module


# ---------------------------------------------------------------------------------- helpers


def direct_forward(lm: TinyLM, text: str):
    """Reference: ids (text + EOS, no special tokens), logits [L, V] fp32 of one unbatched pass."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].float()
    return ids, logits


def assert_valid_topk(
    ids: np.ndarray, logits: np.ndarray, ref_logits: torch.Tensor, tol: float = 2e-3
) -> None:
    """``ids``/``logits`` [L, K] are a top-k of ``ref_logits`` [L, V]: the stored logits are the
    reference logits at those ids (to fp16 precision), in descending order, and no id outside the
    list beats the list's last entry. Where the reference has no near-tie at the k-th place the
    ids are exactly ``torch.topk``'s."""
    ref = ref_logits.numpy()
    k = ids.shape[1]
    gathered = np.take_along_axis(ref, ids.astype(np.int64), axis=1)
    np.testing.assert_allclose(logits.astype(np.float32), gathered, rtol=1e-3, atol=1e-3)
    top_v, top_i = torch.topk(ref_logits, k + 1, dim=-1)
    top_v, top_i = top_v.numpy(), top_i.numpy()
    assert (gathered[:, -1] >= top_v[:, k - 1] - tol).all()
    gaps = np.diff(-top_v, axis=1)  # >= 0
    clear = (gaps > tol).all(axis=1)
    assert clear.mean() > 0.5, "too many near-ties to compare ids"
    np.testing.assert_array_equal(ids[clear], top_i[clear, :k])


# A `fusekern` process whose extract sleeps after computing each window of documents, so that a
# test can act (kill it, start a second process) while a shard is half-written.
_PAUSED_CLI = """
import sys, time
from fusekern.cli import main
from fusekern.pipeline import extract

pause, compute = float(sys.argv[1]), extract._extract_window

def slow_window(*args, **kwargs):
    rows = compute(*args, **kwargs)
    time.sleep(pause)
    return rows

extract._extract_window = slow_window
sys.exit(main(sys.argv[2:]))
"""


def run_cli(
    args: list, env_extra: dict | None = None, *, extract_pause: float = 0.0, **kwargs
) -> subprocess.Popen:
    """Start ``python -m fusekern ARGS`` from the repository root; ``extract_pause``: seconds
    its extract sleeps after each window of documents (a test hook living here, not in the
    product)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = ["-c", _PAUSED_CLI, str(extract_pause)] if extract_pause else ["-m", "fusekern"]
    return subprocess.Popen(
        [sys.executable, *cmd, *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# ------------------------------------------------- plain-Python reference of the mid-token rule


def ref_mid_token_positions(a: list, b: list) -> list:
    """For each position t of tokenisation ``b`` of one document (token byte strings, dummy
    prefix already stripped): ``(u, seen)`` when t's context ends strictly inside token u+1 of
    ``a`` (u >= 0; ``seen``: how many of that token's bytes lie before the end), else None
    (a shared boundary, inside a's first token, or b's last position)."""
    starts, pos = [], 0
    for tok in a:
        starts.append(pos)
        pos += len(tok)
    out = []
    for t in range(len(b) - 1):
        o = len(b"".join(b[: t + 1]))
        hit = None
        for j in range(1, len(a)):
            if starts[j] < o < starts[j] + len(a[j]):
                hit = (j - 1, o - starts[j])
        out.append(hit)
    return out + [None]


def ref_target_prefix(target_bytes: list, canon) -> object:
    """bytes -> the target's canonical id of its longest token that is a byte prefix (-1 if
    none), by brute force over the target tokens with the same first byte."""
    by_first: dict = {}
    for t, tb in enumerate(target_bytes):
        if tb:
            by_first.setdefault(tb[0], []).append(t)
    cache: dict = {}

    def project(rem: bytes) -> int:
        if rem not in cache:
            best = -1
            for t in by_first.get(rem[0], []):
                tb = target_bytes[t]
                if rem.startswith(tb) and (best < 0 or len(tb) > len(target_bytes[best])):
                    best = t
            cache[rem] = -1 if best < 0 else int(canon[best])
        return cache[rem]

    return project


def ref_mid_token_teacher(seen: bytes, gold, cand_ids, cand_logits, gold_logit, src_bytes, project, k_out):
    """(ids, float16 logits, source ids kept) of the mid-token teacher: the gold source token
    first (only where ``gold_logit`` is given and the top-k lacks it), then the top-k in order; a
    candidate is kept when its bytes extend ``seen``; it counts for the target token its
    remainder starts with."""
    entries = []
    if gold_logit is not None and gold not in list(cand_ids):
        entries.append((gold, np.float16(gold_logit)))
    entries += [(int(c), np.float16(v)) for c, v in zip(cand_ids, cand_logits)]
    ids, logits, kept = [], [], []
    for c, v in entries:
        cb = src_bytes[c] if 0 <= c < len(src_bytes) else b""
        if len(cb) > len(seen) and cb.startswith(seen):
            t = project(cb[len(seen) :])
            if t >= 0 and len(ids) < k_out:
                ids.append(t)
                logits.append(v)
                kept.append(c)
    return ids, logits, kept
