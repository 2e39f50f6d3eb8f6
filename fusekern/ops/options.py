"""The loss options — their names, valid values and checks — defined once.

Used by the ops, ``FusionLoss``/``LinearFusionLoss``, ``FusionArguments`` and the CLI. Pure
Python (no torch): the CLI reads the choices while it builds its parser, before anything heavy
is imported. Every check names the argument it rejects (``name``), so a caller passes its own
spelling (``"fusion_method"``, ``"--lm-weight"``).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

METHODS = ("min_ce", "avg_ce")  # FuseLLM MinCE / AvgCE (see fusekern.merge_topk)
LOSS_TYPES = ("kl", "ce")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "triton", "torch")


def check_choice(value: object, options: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``options``, else ValueError naming ``name``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_temperature(t: object, name: str = "teacher_temperature") -> float:
    """A finite temperature > 0, as a float (bools and non-numbers are a TypeError)."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name} must be a positive float, got {type(t).__name__}")
    t = float(t)
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"{name} must be a finite positive number, got {t}")
    return t


def check_lm_weight(lm_weight: object, name: str = "lm_weight") -> float:
    """λ, the weight of the causal-LM term, in [0, 1], as a float."""
    if isinstance(lm_weight, bool) or not isinstance(lm_weight, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(lm_weight).__name__}")
    lam = float(lm_weight)
    if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {lam}")
    return lam


__all__ = [
    "BACKENDS",
    "LOSS_TYPES",
    "METHODS",
    "REDUCTIONS",
    "check_choice",
    "check_lm_weight",
    "check_temperature",
]
