"""The demo's numbers: per-model score counts → the tables and the comparison in ``results.json``.

Perplexity is per token of a model's own tokenizer (comparable among the target variants only);
bits per byte are per UTF-8 byte of the same text (comparable across all models). Both pool a
model's counts over the domains for ``overall``. The verdict compares the fused run with its
CLM-only control on overall held-out bits per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fusekern.demo.config import DOMAINS

VARIANTS = ("target_before", "clm_baseline", "fused")  # the target before and after continual training
RUNS = ("clm_baseline", "fused")  # the two continual-training runs of the target
COLUMNS = (*DOMAINS, "overall")


@dataclass(frozen=True)
class ScoreTables:
    ppl: dict  # "held_out_ppl" of results.json (:func:`metric_table`)
    bpb: dict  # "held_out_bpb"
    comparison: dict  # "fused_vs_clm_baseline" (:func:`fused_vs_control`)
    validation_bpb: dict  # run -> column -> bits per byte on the validation pieces


def summarize(scores: dict) -> dict:
    """Per domain and ``overall``: ``ppl`` (per token) and ``bpb`` (bits per UTF-8 byte)."""
    res = {}
    total = {"nll": 0.0, "tokens": 0, "bytes": 0}
    for domain, s in scores.items():
        res[domain] = {"ppl": math.exp(s["nll"] / s["tokens"]), "bpb": s["nll"] / math.log(2) / s["bytes"]}
        for k in total:
            total[k] += s[k]
    res["overall"] = {
        "ppl": math.exp(total["nll"] / total["tokens"]),
        "bpb": total["nll"] / math.log(2) / total["bytes"],
    }
    return res


def metric_table(summary: dict, metric: str, sources: list) -> dict:
    """``metric`` ("ppl" or "bpb") of every model: overall per target variant, overall per source,
    and per column for all (``summary``: model -> :func:`summarize`)."""
    table = {v: summary[v]["overall"][metric] for v in VARIANTS}
    table["sources"] = {s: summary[s]["overall"][metric] for s in sources}
    table["by_domain"] = {name: {c: summary[name][c][metric] for c in COLUMNS} for name in summary}
    return table


def change_percent(new: float, old: float) -> float:
    """Relative change of ``new`` against ``old`` in percent (negative: ``new`` is lower)."""
    return 100.0 * (new - old) / old


def fused_vs_control(bpb: dict, ppl: dict, validation_bpb: dict) -> dict:
    """The fused run against the CLM-only control: held-out bits per byte and perplexity change
    (``bpb``/``ppl``: :func:`metric_table`), whether fusion lowered held-out bits per byte, and the
    change on the validation split (``validation_bpb``: run -> column -> bpb)."""
    fused, base = bpb["fused"], bpb["clm_baseline"]
    return {
        "bpb_change_percent": change_percent(fused, base),
        "ppl_change_percent": change_percent(ppl["fused"], ppl["clm_baseline"]),
        "fused_better": bool(fused < base),
        "by_domain_bpb": {
            c: {run: bpb["by_domain"][run][c] for run in ("fused", "clm_baseline")} for c in COLUMNS
        },
        "validation_bpb_change_percent": change_percent(
            validation_bpb["fused"]["overall"], validation_bpb["clm_baseline"]["overall"]
        ),
    }


def score_tables(held_out: dict, validation: dict, sources: list) -> ScoreTables:
    """The tables from the score counts (model -> domain -> ``{"nll", "tokens", "bytes"}``, as
    :func:`fusekern.demo.lm.score` gives them): ``held_out`` of every model, ``validation`` of the
    two runs."""
    summary = {name: summarize(s) for name, s in held_out.items()}
    ppl, bpb = metric_table(summary, "ppl", sources), metric_table(summary, "bpb", sources)
    checked = {run: summarize(s) for run, s in validation.items()}
    validation_bpb = {run: {c: v[c]["bpb"] for c in COLUMNS} for run, v in checked.items()}
    return ScoreTables(ppl, bpb, fused_vs_control(bpb, ppl, validation_bpb), validation_bpb)
