"""`fusekern train`: HfArgumentParser over (model/data, FusionArguments, TrainingArguments)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from trainer_helpers import save_packed, tiny_lm
from transformers import TrainingArguments

from fusekern.cli import main
from fusekern.cli.train import build_arg_parser, parse_train_args

VOCAB = 300


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    from fusekern.demo.toy.corpus import stdlib_prose
    from fusekern.demo.toy.tokenizers import train_tokenizer

    path = str(tmp_path_factory.mktemp("target"))
    tok = train_tokenizer("byte_bpe", stdlib_prose(max_docs=100), vocab_size=VOCAB)
    tok.save_pretrained(path)
    tiny_lm(vocab=len(tok)).save_pretrained(path)
    return path


def test_every_training_argument_passes_through():
    options = {s for action in build_arg_parser()._actions for s in action.option_strings}
    fields = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    assert len(fields) > 50
    assert [f for f in fields if f"--{f}" not in options] == []
    model, fusion, train = parse_train_args(
        [
            "--model_name_or_path",
            "m",
            "--data_path",
            "d",
            "--output_dir",
            "o",
            "--lm_weight",
            "0.8",
            "--gradient_accumulation_steps",
            "4",
            "--use_cpu",
            "--bf16",
            "--optim",
            "adafactor",
            "--fusion_sources",
            "a",
            "b",
            "--target_as_source",
            "false",
            "--ce_level",
            "sequence",
            "--fused_linear",
            "false",
        ]
    )
    assert (model.model_name_or_path, fusion.lm_weight, fusion.fusion_sources) == ("m", 0.8, ["a", "b"])
    assert fusion.target_as_source is False and fusion.ce_level == "sequence"
    assert fusion.fused_linear == "false"
    assert (
        parse_train_args(["--model_name_or_path", "m", "--data_path", "d", "--output_dir", "o"])[
            1
        ].fused_linear
        == "auto"
    )
    with pytest.raises(SystemExit):
        parse_train_args(["--model_name_or_path", "m", "--data_path", "d", "--output_dir", "o",
                          "--fused_linear", "maybe"])  # fmt: skip
    assert train.gradient_accumulation_steps == 4 and train.bf16 and train.optim == "adafactor"


def test_train_command_end_to_end(tmp_path, target_dir, capsys):
    data = save_packed(str(tmp_path / "packed"), 12, vocab=VOCAB, names=("src_a", "src_b"), seed=2)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--model_name_or_path",
            target_dir,
            "--data_path",
            data,
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--logging_steps",
            "1",
            "--learning_rate",
            "1e-2",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--use_cpu",
            "--disable_tqdm",
            "true",
            "--seed",
            "3",
            "--lm_weight",
            "0.6",
            "--weight_schedule",
            "linear_decay",
            "--fusion_sources",
            "src_b",
        ]
    )
    assert rc == 0
    assert os.path.isfile(out / "model.safetensors") and os.path.isfile(out / "tokenizer.json")
    saved = json.loads((out / "fusion_args.json").read_text())
    assert saved["fusion"]["fusion_sources"] == ["src_b"] and saved["fusion_meta"]["sources"] == [
        "src_a",
        "src_b",
    ]
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2, 3, 4]
    # linear_decay from λ = 0.6 over 4 steps: the fusion weight 0.4 falls by 0.1 per finished step
    assert [h["lm_weight"] for h in logs] == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert state["train_batch_size"] == 2 and state["max_steps"] == 4


def test_json_config(tmp_path, target_dir):
    data = save_packed(str(tmp_path / "packed"), 4, vocab=VOCAB, seed=3)
    cfg = tmp_path / "train.json"
    cfg.write_text(
        json.dumps(
            {
                "model_name_or_path": target_dir,
                "data_path": data,
                "output_dir": str(tmp_path / "run"),
                "max_steps": 1,
                "per_device_train_batch_size": 2,
                "report_to": "none",
                "save_strategy": "no",
                "use_cpu": True,
                "lm_weight": 0.5,
                "fusion_method": "avg_ce",
            }
        )
    )
    assert main(["train", str(cfg)]) == 0
    assert (
        json.loads((tmp_path / "run" / "fusion_args.json").read_text())["fusion"]["fusion_method"] == "avg_ce"
    )


def test_bad_input(tmp_path, target_dir, capsys):
    assert main(["train"]) == 2
    missing = str(tmp_path / "nope")
    rc = main(
        ["train", "--model_name_or_path", target_dir, "--data_path", missing, "--output_dir", str(tmp_path)]
    )
    assert rc == 2 and f"--data_path: no such file or directory: {missing!r}" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--model_name_or_path",
            target_dir,
            "--data_path",
            target_dir,
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "fusion_meta.json" in capsys.readouterr().err
    data = save_packed(str(tmp_path / "packed"), 2, vocab=VOCAB, seed=4)
    rc = main(
        [
            "train",
            "--model_name_or_path",
            target_dir,
            "--data_path",
            data,
            "--output_dir",
            str(tmp_path),
            "--fusion_sources",
            "zzz",
            "--use_cpu",
        ]
    )
    assert rc == 2 and "zzz" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--model_name_or_path",
            target_dir,
            "--data_path",
            data,
            "--output_dir",
            "o",
            "--bogus",
            "1",
        ]
    )
    assert rc == 2 and "--bogus" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, target_dir, capsys):
    # a mistyped local path must not reach the Hub lookup (raw OSError traceback, rc 1)
    data = save_packed(str(tmp_path / "packed"), 2, vocab=VOCAB, seed=5)
    missing = str(tmp_path / "no_such_model")
    common = ["--data_path", data, "--output_dir", str(tmp_path / "run"), "--use_cpu", "--report_to", "none"]
    rc = main(["train", "--model_name_or_path", missing, "--tokenizer_name_or_path", target_dir, *common])
    err = capsys.readouterr().err
    flag_msg = f"--model_name_or_path: no such file or directory: {missing!r}"
    assert rc == 2 and flag_msg in err and "Traceback" not in err
    rc = main(["train", "--model_name_or_path", missing, *common])  # not blamed on the tokenizer
    err = capsys.readouterr().err
    assert rc == 2 and flag_msg in err
