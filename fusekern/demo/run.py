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

Every stage caches its output under ``DIR`` (``cache.py``); a stage reruns only when its inputs,
settings or code changed, so a rerun with a new λ retrains only the fused target, and an upgraded
fusekern never reuses a stage its old code computed. The alignment rule (``positions``) names its
own align/pack/fused stages, so both rules can live side by side in one ``DIR`` sharing
everything upstream.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from fusekern.demo.cache import StageResult, Stages, package_dir, say
from fusekern.demo.config import DOMAINS, DemoConfig, ModelSpec, full
from fusekern.demo.results import RUNS, score_tables
from fusekern.demo.train import train_variant


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
        root = os.path.dirname(package_dir())
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


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo writes, under its output directory ``out``."""

    out: str
    corpus: str  # the corpus splits (JSON)
    pieces: str  # held-out pieces every model scores (JSON)
    validation: str  # validation pieces the two runs are also scored on (JSON)
    eval_set: str  # the held-out pieces tokenized for the target: the trainers' eval set
    split: str  # pipeline outputs ...
    align: str
    pack: str
    models: dict  # model name -> its directory (tokenizer + weights)
    runs: dict  # "fused" / "clm_baseline" -> its Trainer output directory (the trained target)

    @classmethod
    def under(cls, out_dir: str, cfg: DemoConfig) -> DemoPaths:
        out = os.path.abspath(out_dir)
        data = os.path.join(out, "data")
        names = [s.name for s in cfg.sources] + [cfg.target.name]
        return cls(
            out=out,
            corpus=os.path.join(out, "corpus.json"),
            pieces=os.path.join(out, "held_out_pieces.json"),
            validation=os.path.join(out, "validation_pieces.json"),
            eval_set=os.path.join(data, "held_out_target"),
            split=os.path.join(data, "split"),
            align=os.path.join(data, f"aligned_{cfg.positions}"),
            pack=os.path.join(data, f"packed_{cfg.positions}"),
            models={n: os.path.join(out, "models", n) for n in names},
            runs={
                "fused": os.path.join(out, "runs", f"fused_{cfg.positions}"),
                "clm_baseline": os.path.join(out, "runs", "clm_baseline"),
            },
        )

    def extract(self, model: str) -> str:
        return os.path.join(self.out, "data", "extract", model)

    def vocab_map(self, model: str) -> str:
        return os.path.join(self.out, "data", "vocab_maps", f"{model}.npz")


@dataclass(frozen=True)
class Corpus:
    key: str
    stats: dict  # split -> domain -> {"docs", "chars"}
    texts: dict  # split -> domain -> [text, ...] (``fusekern.demo.data.split_corpus``)


@dataclass(frozen=True)
class Models:
    keys: dict  # model name -> its stage key
    info: dict  # model name -> size, vocabulary, pretraining losses and spec


@dataclass(frozen=True)
class Teachers:
    extract_keys: dict  # teacher name -> stage key of its extract (in teacher order)
    vocab_keys: dict  # teacher name -> stage key of its vocabulary map to the target


@dataclass(frozen=True)
class FusionData:
    split_key: str  # the split documents (the blocks both runs train on)
    pack_key: str  # the packed fusion data of the configured rule (the fused run's teachers)


@dataclass(frozen=True)
class Scored:
    """A model the demo scores: its directory and the stage key of its weights."""

    name: str
    dir: str
    key: str


@dataclass(frozen=True)
class Scores:
    held_out: dict  # model -> domain -> {"nll", "tokens", "bytes"} (``fusekern.demo.lm.score``)
    validation: dict  # run ("fused" / "clm_baseline") -> the same on the validation pieces


# ----------------------------------------------------------------------------- stage bodies


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
    from fusekern.demo.toy.tokenizers import train_tokenizer

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


def _stage_held_out(cfg: DemoConfig, corpus: dict, tokenizer_dirs: list, paths: DemoPaths) -> dict:
    """Held-out pieces that fit a block under every tokenizer (so all models score the same
    text), and the target-tokenized eval set the trainers report their eval loss on."""
    import datasets
    from transformers import AutoTokenizer

    from fusekern.pipeline import split_texts

    pieces = {d: split_texts(corpus["held_out"][d], tokenizer_dirs, cfg.block_size) for d in DOMAINS}
    _write_json(paths.pieces, pieces)
    valid = {d: split_texts(corpus["validation"][d], tokenizer_dirs, cfg.block_size) for d in DOMAINS}
    _write_json(paths.validation, valid)
    tok = AutoTokenizer.from_pretrained(paths.models[cfg.target.name])
    rows = [
        [tok.eos_token_id, *ids]
        for d in DOMAINS
        for ids in tok(pieces[d], add_special_tokens=False)["input_ids"]
    ]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    ds.save_to_disk(paths.eval_set)
    return {d: {"pieces": len(p), "bytes": sum(len(t.encode()) for t in p)} for d, p in pieces.items()}


def _stage_score(cfg: DemoConfig, model_dir: str, pieces_path: str, name: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fusekern.demo.lm import score

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return score(model, tok, _read_json(pieces_path), block_size=cfg.block_size, desc=f"score {name}")


# ------------------------------------------------------------------------------------ steps


def _use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: :func:`default_threads`); returns the number."""
    import torch

    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    say(f"{threads} torch thread(s)")
    return threads


def _checked(cfg: DemoConfig) -> DemoConfig:
    if not cfg.sources or cfg.target is None:
        raise ValueError("cfg needs at least one source and a target")
    names = [s.name for s in cfg.sources] + [cfg.target.name]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return cfg


def _tokenizer_dirs(cfg: DemoConfig, paths: DemoPaths) -> list:
    """The target's tokenizer first, then the sources': what split/held-out pieces must fit."""
    return [paths.models[cfg.target.name]] + [paths.models[s.name] for s in cfg.sources]


def _teachers(cfg: DemoConfig) -> list:
    """The models whose top-k the fused run learns from: the sources (and the target itself)."""
    return [s.name for s in cfg.sources] + ([cfg.target.name] if cfg.target_as_source else [])


def _fusion_texts(corpus: Corpus) -> list:
    """The fusion documents, prose and code alternating, then the rest of the longer domain."""
    fusion = corpus.texts["fusion"]
    texts = [t for pair in zip(fusion["prose"], fusion["code"]) for t in pair]
    longer = max(DOMAINS, key=lambda d: len(fusion[d]))
    return texts + fusion[longer][len(texts) // 2 :]


def _build_corpus(st: Stages, cfg: DemoConfig, paths: DemoPaths) -> Corpus:
    """1. The stdlib corpus cut into its splits."""
    params = {
        k: getattr(cfg, k)
        for k in ("held_out_chars", "validation_chars", "fusion_chars", "max_doc_chars", "tokenizer_chars")
    }
    done = st.run("corpus", params, lambda: _stage_corpus(cfg, paths.corpus), (paths.corpus,))
    return Corpus(done.key, done.value, _read_json(paths.corpus))


def _build_models(st: Stages, cfg: DemoConfig, paths: DemoPaths, corpus: Corpus) -> Models:
    """2. Every source and the target: a tokenizer trained and a model pretrained from scratch."""
    shared = {k: getattr(cfg, k) for k in ("block_size", "vocab_size", "pretrain_batch", "pretrain_chars")}
    keys, info = {}, {}
    for spec in (*cfg.sources, cfg.target):
        out = paths.models[spec.name]
        done = st.run(
            f"model:{spec.name}",
            {"spec": asdict(spec), "corpus": corpus.key, "seed": cfg.seed, **shared},
            lambda spec=spec, out=out: _stage_model(cfg, spec, corpus.texts, out),
            (out,),
        )
        keys[spec.name], info[spec.name] = done.key, done.value
    return Models(keys, info)


def _build_held_out(
    st: Stages, cfg: DemoConfig, paths: DemoPaths, corpus: Corpus, models: Models
) -> StageResult:
    """The held-out and validation pieces every model scores, and the target's eval set."""
    return st.run(
        "held_out",
        {"corpus": corpus.key, "models": models.keys, "block": cfg.block_size},
        lambda: _stage_held_out(cfg, corpus.texts, _tokenizer_dirs(cfg, paths), paths),
        (paths.pieces, paths.validation, paths.eval_set),
    )


def _build_fusion_data(
    st: Stages, cfg: DemoConfig, paths: DemoPaths, corpus: Corpus, models: Models
) -> FusionData:
    """3. The pipeline on the fusion corpus: split -> extract and vocab map (each teacher) ->
    align -> pack, through the functions behind the ``fusekern`` subcommands."""
    from fusekern import pipeline

    texts = _fusion_texts(corpus)
    split = st.run(
        "split",
        {"corpus": corpus.key, "models": models.keys, "block": cfg.block_size},
        lambda: {"dir": pipeline.run_split(texts, paths.split, _tokenizer_dirs(cfg, paths), cfg.block_size)},
        (paths.split,),
    )
    teachers = _prepare_teachers(st, cfg, paths, models, split.key)
    align = _align(st, cfg, paths, split.key, teachers)
    pack = st.run(
        f"pack:{cfg.positions}",
        {"align": align.key, "block": cfg.block_size},
        lambda: {"dir": pipeline.run_pack(paths.align, paths.pack, block_size=cfg.block_size)},
        (paths.pack,),
    )
    return FusionData(split.key, pack.key)


def _prepare_teachers(
    st: Stages, cfg: DemoConfig, paths: DemoPaths, models: Models, split_key: str
) -> Teachers:
    """Each teacher's top-k on the split documents (extract) and its vocabulary map to the target."""
    from fusekern import pipeline

    tgt = paths.models[cfg.target.name]
    extract_keys, vocab_keys = {}, {}
    for name in _teachers(cfg):
        model_dir, ex_dir, vfile = paths.models[name], paths.extract(name), paths.vocab_map(name)
        extract_keys[name] = st.run(
            f"extract:{name}",
            {"split": split_key, "model": models.keys[name], "top_k": cfg.top_k, "bs": cfg.extract_batch},
            lambda model_dir=model_dir, ex_dir=ex_dir: {
                "dir": pipeline.run_extract(
                    model_dir,
                    paths.split,
                    ex_dir,
                    tokenizer=model_dir,
                    top_k=cfg.top_k,
                    batch_size=cfg.extract_batch,
                    num_shards=1,
                    device="cpu",
                )
            },
            (ex_dir,),
        ).key
        os.makedirs(os.path.dirname(vfile), exist_ok=True)
        vocab_keys[name] = st.run(
            f"vocab_map:{name}",
            {"src": models.keys[name], "tgt": models.keys[cfg.target.name]},
            lambda model_dir=model_dir, vfile=vfile: {"file": pipeline.run_vocab_map(model_dir, tgt, vfile)},
            (vfile,),
        ).key
    return Teachers(extract_keys, vocab_keys)


def _align(st: Stages, cfg: DemoConfig, paths: DemoPaths, split_key: str, teachers: Teachers) -> StageResult:
    """The teachers' top-k moved onto the target's tokens by the configured rule (``positions``)."""
    from fusekern import pipeline

    names = list(teachers.extract_keys)
    return st.run(
        f"align:{cfg.positions}",
        {
            "extract": teachers.extract_keys,
            "vocab": teachers.vocab_keys,
            "split": split_key,
            "mode": cfg.align_mode,
            "pos": cfg.positions,
        },
        lambda: {
            "dir": pipeline.run_align(
                paths.models[cfg.target.name],
                paths.split,
                [paths.extract(n) for n in names],
                paths.align,
                source_names=names,
                vocab_maps=[paths.vocab_map(n) for n in names],
                mode=cfg.align_mode,
                positions=cfg.positions,
            )
        },
        (paths.align,),
    )


def _train_target(
    st: Stages, cfg: DemoConfig, paths: DemoPaths, models: Models, held: StageResult, data: FusionData
) -> dict:
    """4. Continual training of the target, fused and CLM-only control (same data, steps, lr and
    seed); returns each run's stage key."""
    common = {
        "target": models.keys[cfg.target.name],
        "held": held.key,
        **{k: getattr(cfg, k) for k in ("train_steps", "train_batch", "train_lr", "eval_steps", "seed")},
    }
    recipe_fields = ("lm_weight", "teacher_temperature", "fusion_method", "ce_level", "loss_type")
    recipe = {k: getattr(cfg, k) for k in (*recipe_fields, "target_as_source")}
    # The control trains on the same blocks whatever the rule (only the teachers differ), so one
    # control serves both rules: it reads the split documents (the input ids of every rule's pack).
    params = {
        "clm_baseline": dict(common, blocks={"split": data.split_key, "block": cfg.block_size}),
        "fused": dict(common, pack=data.pack_key, **recipe),
    }
    stage = {"clm_baseline": "train:clm_baseline", "fused": f"train:fused:{cfg.positions}"}
    keys = {}
    for run in RUNS:
        keys[run] = st.run(
            stage[run],
            params[run],
            lambda run=run: train_variant(
                cfg, run, paths.models[cfg.target.name], paths.pack, paths.eval_set, paths.runs[run]
            ),
            (paths.runs[run],),
        ).key
    return keys


def _score_models(
    st: Stages, cfg: DemoConfig, paths: DemoPaths, models: Models, held: StageResult, run_keys: dict
) -> Scores:
    """5. Held-out scores of every model; validation scores of the two runs (for choosing recipes)."""
    tgt = cfg.target.name
    scored = [Scored(s.name, paths.models[s.name], models.keys[s.name]) for s in cfg.sources]
    scored.append(Scored("target_before", paths.models[tgt], models.keys[tgt]))
    scored += [Scored(run, paths.runs[run], run_keys[run]) for run in RUNS]
    held_out, validation = {}, {}
    for m in scored:
        # the fused run is per rule; the others are shared by both rules
        stage = f"{m.name}:{cfg.positions}" if m.name == "fused" else m.name
        params = {"model": m.key, "held": held.key}
        held_out[m.name] = st.run(
            f"score:{stage}", params, lambda m=m: _stage_score(cfg, m.dir, paths.pieces, m.name)
        ).value
        if m.name in RUNS:
            validation[m.name] = st.run(
                f"validate:{stage}", params, lambda m=m: _stage_score(cfg, m.dir, paths.validation, m.name)
            ).value
    return Scores(held_out, validation)


def _results(
    cfg: DemoConfig,
    scores: Scores,
    models: Models,
    corpus: Corpus,
    held: StageResult,
    st: Stages,
    paths: DemoPaths,
) -> dict:
    """What ``results.json`` holds, but for the invocation's own facts (time, threads, plot)."""
    tables = score_tables(scores.held_out, scores.validation, [s.name for s in cfg.sources])
    train_logs = {}
    for run, d in paths.runs.items():
        state = os.path.join(d, "trainer_state.json")
        train_logs[run] = _read_json(state)["log_history"] if os.path.isfile(state) else []
    return {
        "held_out_ppl": tables.ppl,
        "held_out_bpb": tables.bpb,
        "fused_vs_clm_baseline": tables.comparison,
        "notes": {
            "ppl": "per token of each model's own tokenizer: comparable among target variants only",
            "bpb": "bits per UTF-8 byte of the same held-out text: comparable across all models",
        },
        "held_out_counts": scores.held_out,
        "held_out": held.value,
        "corpus": corpus.stats,
        "models": models.info,
        "config": cfg.to_dict(),
        "stage_seconds": {k: round(v, 1) for k, v in st.seconds.items()},
        "cached_stages": st.cached,
        "train_log_history": train_logs,
        "out_dir": paths.out,
        "validation_bpb": tables.validation_bpb,
    }


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
    from fusekern.demo.report import plot, print_table

    t_start = time.time()
    threads = _use_threads(threads)
    env = environment()  # at the start: the code the stages computed now run with
    cfg = _checked(cfg if cfg is not None else full())
    paths = DemoPaths.under(out_dir, cfg)
    os.makedirs(paths.out, exist_ok=True)
    st = Stages(paths.out, fresh)

    corpus = _build_corpus(st, cfg, paths)
    models = _build_models(st, cfg, paths, corpus)
    held = _build_held_out(st, cfg, paths, corpus, models)
    data = _build_fusion_data(st, cfg, paths, corpus, models)
    run_keys = _train_target(st, cfg, paths, models, held, data)
    scores = _score_models(st, cfg, paths, models, held, run_keys)

    results = _results(cfg, scores, models, corpus, held, st, paths)
    results["environment"] = env
    results["threads"] = threads
    results["seconds"] = round(time.time() - t_start, 1)  # this invocation (cached stages cost ~0)
    results["seconds_all_stages"] = round(sum(st.seconds.values()), 1)  # every stage, as when computed
    results["plot"] = plot(results, paths.runs, os.path.join(paths.out, "demo.png"))
    _write_json(os.path.join(paths.out, "results.json"), results)
    print_table(results)
    say(f"finished in {results['seconds']:.0f}s; results in {os.path.join(paths.out, 'results.json')}")
    return results
