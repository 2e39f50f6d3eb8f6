"""Small-LM helpers of the demo: build, pretrain from scratch, and score held-out text.

Pretraining is a plain loop (random blocks from each domain's token stream, mixed by
``prose_fraction``); it is the demo's stand-in for the sources' and target's own pretraining,
not part of fusekern's pipeline. Scoring gives, per domain, the summed next-token NLL, the
number of tokens and the number of UTF-8 bytes, from which perplexity (per token, only
comparable within one tokenizer) and bits per byte (comparable across tokenizers) follow
(``results.py``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fusekern.demo.config import ModelSpec
from fusekern.demo.toy.models import tiny_causal_lm


def build_model(spec: ModelSpec, tokenizer: Any, block_size: int, seed: int) -> torch.nn.Module:
    return tiny_causal_lm(
        spec.arch,
        len(tokenizer),
        hidden=spec.hidden,
        layers=spec.layers,
        heads=spec.heads,
        max_positions=block_size,
        seed=seed,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def token_stream(tokenizer: Any, docs: list) -> np.ndarray:
    """Documents tokenized as the pipeline does (no BOS, EOS after each), concatenated."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    return np.fromiter((t for seq in ids for t in (*seq, eos)), dtype=np.int64)


def pretrain(
    model: torch.nn.Module,
    streams: dict,
    prose_fraction: float,
    *,
    steps: int,
    batch_size: int,
    block_size: int,
    lr: float,
    seed: int,
    desc: str,
) -> list:
    """Train on random ``block_size`` windows, each from prose with probability ``prose_fraction``
    (else code). AdamW, 10% linear warmup, cosine decay to 10%. Returns the per-step losses."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for name, s in streams.items():
        if len(s) <= block_size:
            raise ValueError(
                f"the {name} pretraining stream has {len(s)} tokens, need > block_size={block_size}"
            )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step", leave=True)
    for _ in bar:
        rows = []
        for _ in range(batch_size):
            s = streams["prose"] if rng.random() < prose_fraction else streams["code"]
            start = int(rng.integers(0, len(s) - block_size))
            rows.append(s[start : start + block_size])
        x = torch.from_numpy(np.stack(rows))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def score(
    model: torch.nn.Module,
    tokenizer: Any,
    pieces: dict,
    *,
    block_size: int,
    batch_size: int = 16,
    desc: str | None = None,
) -> dict:
    """Per domain: ``{"nll": nats, "tokens": n, "bytes": b}`` over held-out ``pieces``.

    Each piece is scored as ``[EOS] + tokens`` (EOS = document start, as in pretraining), every
    text token predicted from its left context; the EOS itself is not scored.
    """
    model.eval()
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = {}
    for domain, texts in pieces.items():
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        seqs = [[eos, *x] for x in ids if x]
        too_long = [len(s) for s in seqs if len(s) > block_size]
        if too_long:
            raise ValueError(f"{len(too_long)} {domain} pieces exceed block_size={block_size} tokens")
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        nll = 0.0
        count = 0
        for start in tqdm(range(0, len(order), batch_size), desc=desc and f"{desc} [{domain}]", leave=False):
            batch = [seqs[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in batch)
            x = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, s in enumerate(batch):
                x[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            logits = model(input_ids=x, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = x[:, 1:]
            valid = mask[:, 1:].bool()
            tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            nll += float(tok_nll[valid].sum())
            count += int(valid.sum())
        out[domain] = {
            "nll": nll,
            "tokens": count,
            "bytes": sum(len(t.encode("utf-8")) for t, x in zip(texts, ids) if x),
        }
    return out
