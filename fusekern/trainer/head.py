"""When and how ``FusionTrainer`` computes the loss straight from the LM head (``LinearFusionLoss``).

The fused path needs the head to be exactly ``logits = hidden @ W.T (+ b)`` with nothing done to
the logits afterwards. :func:`fused_head_problem` says why a model does not qualify (or None);
:func:`fused_head_forward` runs the model *through its own forward* (so DDP's hooks, gradient
checkpointing, attention masks and position ids all work unchanged) with the head's forward
replaced for that one call by one that returns the fused loss instead of the logits.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

# config attributes that change the logits after the head (model family in brackets)
_LOGIT_TRANSFORMS = (
    ("final_logit_softcapping", None, "logit soft-capping"),  # Gemma-2/3
    ("logit_scale", 1.0, "logit scaling"),  # Cohere
    ("logits_scaling", 1.0, "logit scaling"),  # Granite
    ("output_multiplier_scale", 1.0, "logit scaling"),
    ("lm_head_multiplier", 1.0, "logit scaling"),
)


def output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def fused_head_problem(model: nn.Module, *, sharded: str | None = None) -> str | None:
    """Why the fused head path cannot be used for ``model`` (the unwrapped model), or None.

    ``sharded``: the name of a parameter-sharding scheme in use (DeepSpeed ZeRO-3, FSDP), under
    which the head weight is not a whole tensor outside the head's own forward.
    """
    if sharded:
        return f"{sharded} shards the output head's weight"
    head = output_head(model)
    if head is None:
        return "the model has no get_output_embeddings()"
    if type(head) is not nn.Linear:
        return f"the output head is a {type(head).__name__}, not a plain nn.Linear"
    if "forward" in vars(head) or head._forward_hooks or head._forward_pre_hooks:
        return "the output head has hooks or a patched forward"
    for cfg in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        for attr, neutral, what in _LOGIT_TRANSFORMS:
            val = getattr(cfg, attr, neutral) if cfg is not None else neutral
            if val is not None and val != neutral:
                return f"the model applies {what} to its logits ({attr}={val})"
    return _probe(model, head)


def _probe(model: nn.Module, head: nn.Linear) -> str | None:
    """Run the model once on two tokens (eval mode, no grad) and check that its forward returns
    the head's output object unchanged as ``logits`` — anything it does to them afterwards
    (scaling, soft-capping, casting) would be skipped by the fused path."""
    seen: list = []

    def probe_forward(h: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(h, head.weight, head.bias)
        seen.append(out)
        return out

    was_training = model.training
    device = head.weight.device
    try:
        model.eval()
        with torch.no_grad(), _patched(head, probe_forward):
            out = model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False)
    except Exception as e:  # any model we cannot probe is not fused
        return f"probing the model's forward failed ({type(e).__name__}: {e})"
    finally:
        model.train(was_training)
    logits = out["logits"] if isinstance(out, dict) or hasattr(out, "keys") else out[0]
    if len(seen) != 1 or logits is not seen[0]:
        return "the model's forward changes the head's output (scaling, soft-capping or casting)"
    return None


@contextlib.contextmanager
def _patched(head: nn.Module, forward: Callable[[torch.Tensor], Any]) -> Iterator[None]:
    head.forward = forward  # instance attribute, shadows nn.Linear.forward for this call only
    try:
        yield
    finally:
        del head.forward


def fused_head_forward(
    model: nn.Module,
    head: nn.Linear,
    inputs: dict,
    loss_fn: Callable[..., torch.Tensor],
    n_positions: int,
) -> tuple:
    """``model(**inputs)`` with the head computing ``loss_fn(hidden, weight, bias=bias)`` instead
    of the logits. Returns (loss or None, outputs): None when the model called the head on fewer
    positions than ``n_positions`` (then the head produced real logits and ``outputs`` holds them)."""
    box: list = []

    def forward(h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 3 or h.shape[1] != n_positions:
            return nn.functional.linear(h, head.weight, head.bias)
        loss = loss_fn(h, head.weight, bias=head.bias)
        box.append(loss)
        return loss  # stands in for the logits; the model returns it untouched (probed)

    with _patched(head, forward):
        outputs = model(**inputs)
    if not box:
        return None, outputs
    loss = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs[0]
    # a wrapper may hand back another tensor object (DDP passes outputs through its own autograd
    # node): use what the model returned, after checking that nothing changed its value
    if not (isinstance(loss, torch.Tensor) and loss.shape == box[0].shape and torch.equal(loss, box[0])):
        raise RuntimeError(
            "the model changed its head's output after the fused loss was computed; "
            "train with fused_linear=false (--fused_linear false)"
        )
    return loss, outputs


__all__ = ["fused_head_forward", "fused_head_problem", "output_head"]
