"""``fusekern demo``: the FuseLLM recipe end to end on the standard library, on CPU.

1. corpus      stdlib prose (docstrings, pydoc topics) and code (source files): pretraining
               pool, fusion corpus and held-out split per domain (``data.py``)
2. models      each source and the target: its own tokenizer family, architecture and
               pretraining mixture (a prose source, a code source, a target on the mixture)
3. pipeline    split → extract (each source) → vocab map → align → pack: the same functions
               as ``fusekern split/extract/vocab-map/align/pack``
4. train       the target, continued on the packed fusion corpus twice with identical data
               order, steps, lr and seed: ``fused`` (λ·CLM + (1−λ)·fusion, ``FusionTrainer``
               via ``fusekern train``'s code) and ``clm_baseline`` (λ = 1: CLM only)
5. report      held-out perplexity and bits per byte per domain → ``results.json``, ``demo.png``

Every stage caches its output under ``DIR``; a stage reruns only when its inputs, settings or
code changed (its key hashes the settings, the keys of the stages it reads, the source of the
fusekern modules it runs — ``_CODE`` — and the package/torch/transformers versions), so a rerun
with a new λ retrains only the fused target, and an upgraded fusekern never reuses a stage its
old code computed. The alignment rule (``positions``) names its own align/pack/fused stages, so
both rules can live side by side in one ``DIR`` sharing everything upstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any, Callable

from fusekern.demo.config import DOMAINS, DemoConfig, ModelSpec, full
from fusekern.demo.train import train_variant

VARIANTS = ("target_before", "clm_baseline", "fused")

# The fusekern sources each stage runs (relative to the package; "_C" = the native extension in align/).
_CODE = {
    "corpus": ("demo/data.py", "toy/corpus.py"),
    "model": ("demo/data.py", "demo/lm.py", "toy/models.py", "toy/tokenizers.py"),
    "held_out": ("pipeline/split.py", "pipeline/io.py"),
    "split": ("pipeline/split.py", "pipeline/io.py"),
    "extract": ("pipeline/extract.py", "pipeline/io.py"),
    "vocab_map": ("align/", "pipeline/vocab.py", "pipeline/io.py", "_C"),
    "align": (
        "align/",
        "pipeline/align.py",
        "pipeline/vocab.py",
        "pipeline/io.py",
        "pipeline/extract.py",
        "_C",
    ),
    "pack": ("pipeline/pack.py", "pipeline/io.py"),
    "train": ("demo/train.py", "cli/train.py", "trainer/", "loss.py", "ops/"),
    "score": ("demo/lm.py",),
    "validate": ("demo/lm.py",),
}


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_files(entry: str) -> list:
    root = _package_dir()
    if entry == "_C":
        native = os.path.join(root, "align")
        return sorted(
            os.path.join(native, f) for f in os.listdir(native) if f.startswith("_C.") or f.startswith("_C-")
        )
    path = os.path.join(root, entry)
    if entry.endswith("/"):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))
    return [path]


def code_digest(stage: str) -> str:
    """Hash of the fusekern sources (and native extension) that stage ``stage`` runs, and of the
    versions of fusekern, torch and transformers: part of every stage's cache key."""
    from importlib.metadata import PackageNotFoundError, version

    import fusekern

    h = hashlib.sha256()
    for entry in _CODE[stage]:
        for path in _code_files(entry):
            h.update(os.path.relpath(path, _package_dir()).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    h.update(fusekern.__version__.encode())
    for dist in ("torch", "transformers"):
        try:
            h.update(f"{dist}={version(dist)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def environment() -> dict:
    """fusekern/torch/transformers versions and the git commit of the package source (if any)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    import fusekern

    env = {"fusekern": fusekern.__version__, "python": sys.version.split()[0]}
    for dist in ("torch", "transformers", "tokenizers", "datasets"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = None
    try:
        root = os.path.dirname(_package_dir())
        git = ["git", "-C", root]
        env["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "fusekern", "csrc"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None  # not a git checkout (an installed wheel)
    return env


def default_threads() -> int:
    """torch threads for a machine that may be busy: the cores this process may use minus the
    current load (1-minute average), at least 1. Oversubscribed torch threads make the demo
    several times slower than one thread on a shared box."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _say(msg: str) -> None:
    print(f"[fusekern demo] {msg}", file=sys.stderr, flush=True)


class _Stages:
    """Runs named stages once: a stage's result is stored with a key hashing its settings and
    the keys of the stages it reads; a matching stored result is reused."""

    def __init__(self, root: str, fresh: bool) -> None:
        self.dir = os.path.join(root, "stages")
        os.makedirs(self.dir, exist_ok=True)
        self.fresh = fresh
        self.seconds: dict = {}
        self.cached: list = []
        self.t0 = time.time()

    def run(self, name: str, params: dict, fn: Callable[[], Any], outputs: tuple = ()) -> tuple:
        params = dict(params, code=code_digest(name.split(":")[0]))
        key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
        marker = os.path.join(self.dir, name.replace(":", "__") + ".json")
        if not self.fresh and os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                rec = json.load(f)
            if rec.get("key") == key and all(os.path.exists(p) for p in outputs):
                self.cached.append(name)
                self.seconds[name] = rec["seconds"]
                _say(f"{name}: cached ({rec['seconds']:.1f}s when computed)")
                return key, rec["result"]
        for path in outputs:  # stale output of other settings: never resume from it
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        _say(f"{name} ... (t = {time.time() - self.t0:.0f}s)")
        start = time.time()
        result = fn()
        seconds = time.time() - start
        self.seconds[name] = seconds
        tmp = marker + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "seconds": seconds, "result": result}, f)
        os.replace(tmp, marker)
        _say(f"{name}: done in {seconds:.1f}s")
        return key, result


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------- stages


def _stage_corpus(cfg: DemoConfig, path: str) -> dict:
    from fusekern.demo.data import split_corpus

    splits = split_corpus(cfg)
    _write_json(path, splits)
    return {
        s: {d: {"docs": len(v), "chars": sum(map(len, v))} for d, v in doms.items()}
        for s, doms in splits.items()
    }


def _stage_model(cfg: DemoConfig, spec: ModelSpec, corpus: dict, model_dir: str) -> dict:
    """Train the model's tokenizer, pretrain it from scratch, save both to ``model_dir``."""
    from fusekern.demo.data import cap
    from fusekern.demo.lm import build_model, pretrain, token_stream
    from fusekern.toy.tokenizers import train_tokenizer

    texts = [t for d in DOMAINS for t in corpus["tokenizer"][d]]
    tok = train_tokenizer(spec.tokenizer, texts, vocab_size=cfg.vocab_size)
    streams = {d: token_stream(tok, cap(corpus["pretrain"][d], cfg.pretrain_chars)) for d in DOMAINS}
    model = build_model(spec, tok, cfg.block_size, cfg.seed)
    losses = pretrain(
        model,
        streams,
        spec.prose_fraction,
        steps=spec.steps,
        batch_size=cfg.pretrain_batch,
        block_size=cfg.block_size,
        lr=spec.lr,
        seed=cfg.seed,
        desc=f"pretrain {spec.name}",
    )
    tok.save_pretrained(model_dir)
    model.save_pretrained(model_dir)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "stream_tokens": {d: int(len(s)) for d, s in streams.items()},
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "spec": asdict(spec),
    }


def _stage_held_out(
    cfg: DemoConfig, corpus: dict, tokenizer_dirs: list, target_dir: str, paths: dict
) -> dict:
    """Held-out pieces that fit a block under every tokenizer (so all models score the same
    text), and the target-tokenized eval set the trainers report their eval loss on."""
    import datasets
    from transformers import AutoTokenizer

    from fusekern.pipeline import split_texts

    pieces = {d: split_texts(corpus["held_out"][d], tokenizer_dirs, cfg.block_size) for d in DOMAINS}
    _write_json(paths["pieces"], pieces)
    valid = {d: split_texts(corpus["validation"][d], tokenizer_dirs, cfg.block_size) for d in DOMAINS}
    _write_json(paths["validation"], valid)
    tok = AutoTokenizer.from_pretrained(target_dir)
    rows = [
        [tok.eos_token_id, *ids]
        for d in DOMAINS
        for ids in tok(pieces[d], add_special_tokens=False)["input_ids"]
    ]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    ds.save_to_disk(paths["eval_set"])
    return {d: {"pieces": len(p), "bytes": sum(len(t.encode()) for t in p)} for d, p in pieces.items()}


def _stage_score(cfg: DemoConfig, model_dir: str, pieces_path: str, name: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusekern.demo.lm import score

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return score(model, tok, _read_json(pieces_path), block_size=cfg.block_size, desc=f"score {name}")


# ----------------------------------------------------------------------------------------- main


def run_demo(
    out_dir: str = "fusekern_demo",
    cfg: DemoConfig | None = None,
    *,
    fresh: bool = False,
    threads: int | None = None,
) -> dict:
    """Run (or resume) the demo in ``out_dir``; returns what ``results.json`` holds.
    ``threads``: torch intra-op threads (default: :func:`default_threads`, the free cores)."""
    import torch

    from fusekern import pipeline
    from fusekern.demo.lm import summarize
    from fusekern.demo.report import plot, print_table

    t_start = time.time()
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    _say(f"{threads} torch thread(s)")
    env = environment()  # at the start: the code the stages computed now run with
    cfg = cfg if cfg is not None else full()
    if not cfg.sources or cfg.target is None:
        raise ValueError("cfg needs at least one source and a target")
    names = [s.name for s in cfg.sources] + [cfg.target.name]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    st = _Stages(out_dir, fresh)
    p = {
        "corpus": os.path.join(out_dir, "corpus.json"),
        "pieces": os.path.join(out_dir, "held_out_pieces.json"),
        "validation": os.path.join(out_dir, "validation_pieces.json"),
        "eval_set": os.path.join(out_dir, "data", "held_out_target"),
        "split": os.path.join(out_dir, "data", "split"),
        "align": os.path.join(out_dir, "data", f"aligned_{cfg.positions}"),
        "pack": os.path.join(out_dir, "data", f"packed_{cfg.positions}"),
    }
    model_dir = {n: os.path.join(out_dir, "models", n) for n in names}
    run_dir = {
        "fused": os.path.join(out_dir, "runs", f"fused_{cfg.positions}"),
        "clm_baseline": os.path.join(out_dir, "runs", "clm_baseline"),
    }

    # 1. corpus
    corpus_params = {
        k: getattr(cfg, k)
        for k in ("held_out_chars", "validation_chars", "fusion_chars", "max_doc_chars", "tokenizer_chars")
    }
    k_corpus, corpus_stats = st.run(
        "corpus", corpus_params, lambda: _stage_corpus(cfg, p["corpus"]), (p["corpus"],)
    )
    corpus = _read_json(p["corpus"])

    # 2. models (tokenizer + pretraining from scratch)
    k_model, model_info = {}, {}
    for spec in (*cfg.sources, cfg.target):
        params = {
            "spec": asdict(spec),
            "corpus": k_corpus,
            "seed": cfg.seed,
            **{k: getattr(cfg, k) for k in ("block_size", "vocab_size", "pretrain_batch", "pretrain_chars")},
        }
        k_model[spec.name], model_info[spec.name] = st.run(
            f"model:{spec.name}",
            params,
            lambda spec=spec: _stage_model(cfg, spec, corpus, model_dir[spec.name]),
            (model_dir[spec.name],),
        )
    tgt = cfg.target.name
    tok_dirs = [model_dir[tgt]] + [model_dir[s.name] for s in cfg.sources]

    # held-out pieces + the target's eval set
    k_held, held_stats = st.run(
        "held_out",
        {"corpus": k_corpus, "models": k_model, "block": cfg.block_size},
        lambda: _stage_held_out(cfg, corpus, tok_dirs, model_dir[tgt], p),
        (p["pieces"], p["validation"], p["eval_set"]),
    )

    # 3. pipeline: split -> extract -> vocab map -> align -> pack
    fusion_texts = [t for pair in zip(corpus["fusion"]["prose"], corpus["fusion"]["code"]) for t in pair]
    longer = max(DOMAINS, key=lambda d: len(corpus["fusion"][d]))
    fusion_texts += corpus["fusion"][longer][len(fusion_texts) // 2 :]
    k_split, _ = st.run(
        "split",
        {"corpus": k_corpus, "models": k_model, "block": cfg.block_size},
        lambda: {"dir": pipeline.run_split(fusion_texts, p["split"], tok_dirs, cfg.block_size)},
        (p["split"],),
    )
    teachers = [s.name for s in cfg.sources] + ([tgt] if cfg.target_as_source else [])
    k_extract, k_vocab, extract_dirs, vocab_files = {}, {}, [], []
    for name in teachers:
        ex_dir = os.path.join(out_dir, "data", "extract", name)
        k_extract[name], _ = st.run(
            f"extract:{name}",
            {"split": k_split, "model": k_model[name], "top_k": cfg.top_k, "bs": cfg.extract_batch},
            lambda name=name, ex_dir=ex_dir: {
                "dir": pipeline.run_extract(
                    model_dir[name],
                    p["split"],
                    ex_dir,
                    tokenizer=model_dir[name],
                    top_k=cfg.top_k,
                    batch_size=cfg.extract_batch,
                    num_shards=1,
                    device="cpu",
                )
            },
            (ex_dir,),
        )
        extract_dirs.append(ex_dir)
        vfile = os.path.join(out_dir, "data", "vocab_maps", f"{name}.npz")
        os.makedirs(os.path.dirname(vfile), exist_ok=True)
        k_vocab[name], _ = st.run(
            f"vocab_map:{name}",
            {"src": k_model[name], "tgt": k_model[tgt]},
            lambda name=name, vfile=vfile: {
                "file": pipeline.run_vocab_map(model_dir[name], model_dir[tgt], vfile)
            },
            (vfile,),
        )
        vocab_files.append(vfile)
    k_align, _ = st.run(
        f"align:{cfg.positions}",
        {
            "extract": k_extract,
            "vocab": k_vocab,
            "split": k_split,
            "mode": cfg.align_mode,
            "pos": cfg.positions,
        },
        lambda: {
            "dir": pipeline.run_align(
                model_dir[tgt],
                p["split"],
                extract_dirs,
                p["align"],
                source_names=teachers,
                vocab_maps=vocab_files,
                mode=cfg.align_mode,
                positions=cfg.positions,
            )
        },
        (p["align"],),
    )
    k_pack, _ = st.run(
        f"pack:{cfg.positions}",
        {"align": k_align, "block": cfg.block_size},
        lambda: {"dir": pipeline.run_pack(p["align"], p["pack"], block_size=cfg.block_size)},
        (p["pack"],),
    )

    # 4. continual training of the target: fused vs CLM-only control (same data, steps, lr, seed)
    train_common = {
        "target": k_model[tgt],
        "held": k_held,
        **{k: getattr(cfg, k) for k in ("train_steps", "train_batch", "train_lr", "eval_steps", "seed")},
    }
    fusion_params = {
        k: getattr(cfg, k)
        for k in (
            "lm_weight",
            "teacher_temperature",
            "fusion_method",
            "ce_level",
            "loss_type",
            "target_as_source",
        )
    }
    # The control trains on the same blocks whatever the rule (only the teachers differ), so
    # one control serves both rules.
    k_run = {}
    stage_of = {"clm_baseline": "train:clm_baseline", "fused": f"train:fused:{cfg.positions}"}
    for variant in ("clm_baseline", "fused"):
        if variant == "fused":
            params = dict(train_common, pack=k_pack, **fusion_params)
        else:  # the blocks (input ids) of every rule's pack: target tokens of the split documents
            params = dict(train_common, blocks={"split": k_split, "block": cfg.block_size})
        k_run[variant], _ = st.run(
            stage_of[variant],
            params,
            lambda variant=variant: train_variant(
                cfg, variant, model_dir[tgt], p["pack"], p["eval_set"], run_dir[variant]
            ),
            (run_dir[variant],),
        )

    # 5. held-out scores (every model), validation scores (the two runs: for choosing recipes)
    scored = {s.name: (model_dir[s.name], k_model[s.name]) for s in cfg.sources}
    scored.update(target_before=(model_dir[tgt], k_model[tgt]))
    scored.update({v: (run_dir[v], k_run[v]) for v in ("clm_baseline", "fused")})
    suffix = {"fused": f":{cfg.positions}"}
    scores, val_scores = {}, {}
    for name, (path, key) in scored.items():
        _, scores[name] = st.run(
            f"score:{name}{suffix.get(name, '')}",
            {"model": key, "held": k_held},
            lambda path=path, name=name: _stage_score(cfg, path, p["pieces"], name),
        )
        if name in ("clm_baseline", "fused"):
            _, val_scores[name] = st.run(
                f"validate:{name}{suffix.get(name, '')}",
                {"model": key, "held": k_held},
                lambda path=path, name=name: _stage_score(cfg, path, p["validation"], name),
            )
    summary = {name: summarize(s) for name, s in scores.items()}

    results = _results(cfg, summary, scores, model_info, corpus_stats, held_stats, st, run_dir, out_dir)
    val = {name: summarize(s) for name, s in val_scores.items()}
    vf, vb = val["fused"]["overall"]["bpb"], val["clm_baseline"]["overall"]["bpb"]
    results["validation_bpb"] = {
        name: {d: v[d]["bpb"] for d in (*DOMAINS, "overall")} for name, v in val.items()
    }
    results["fused_vs_clm_baseline"]["validation_bpb_change_percent"] = 100.0 * (vf - vb) / vb
    results["environment"] = env
    results["threads"] = threads
    results["seconds"] = round(time.time() - t_start, 1)  # this invocation (cached stages cost ~0)
    results["seconds_all_stages"] = round(sum(st.seconds.values()), 1)  # every stage, as when computed
    results["plot"] = plot(results, run_dir, os.path.join(out_dir, "demo.png"))
    _write_json(os.path.join(out_dir, "results.json"), results)
    print_table(results)
    _say(f"finished in {results['seconds']:.0f}s; results in {os.path.join(out_dir, 'results.json')}")
    return results


def _results(cfg, summary, scores, model_info, corpus_stats, held_stats, st, run_dir, out_dir) -> dict:
    src = [s.name for s in cfg.sources]

    def table(metric: str) -> dict:
        t = {v: summary[v]["overall"][metric] for v in VARIANTS}
        t["sources"] = {s: summary[s]["overall"][metric] for s in src}
        t["by_domain"] = {
            name: {d: summary[name][d][metric] for d in (*DOMAINS, "overall")} for name in summary
        }
        return t

    ppl, bpb = table("ppl"), table("bpb")
    fused, base = bpb["fused"], bpb["clm_baseline"]
    train_logs = {}
    for v, d in run_dir.items():
        state = os.path.join(d, "trainer_state.json")
        train_logs[v] = _read_json(state)["log_history"] if os.path.isfile(state) else []
    return {
        "held_out_ppl": ppl,
        "held_out_bpb": bpb,
        "fused_vs_clm_baseline": {
            "bpb_change_percent": 100.0 * (fused - base) / base,
            "ppl_change_percent": 100.0 * (ppl["fused"] - ppl["clm_baseline"]) / ppl["clm_baseline"],
            "fused_better": bool(fused < base),
            "by_domain_bpb": {
                d: {
                    "fused": bpb["by_domain"]["fused"][d],
                    "clm_baseline": bpb["by_domain"]["clm_baseline"][d],
                }
                for d in (*DOMAINS, "overall")
            },
        },
        "notes": {
            "ppl": "per token of each model's own tokenizer: comparable among target variants only",
            "bpb": "bits per UTF-8 byte of the same held-out text: comparable across all models",
        },
        "held_out_counts": scores,
        "held_out": held_stats,
        "corpus": corpus_stats,
        "models": model_info,
        "config": cfg.to_dict(),
        "stage_seconds": {k: round(v, 1) for k, v in st.seconds.items()},
        "cached_stages": st.cached,
        "train_log_history": train_logs,
        "out_dir": out_dir,
    }
