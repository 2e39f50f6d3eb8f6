"""2-process DDP on CPU (torchrun, gloo): FusionTrainer needs nothing special to scale out.

The ranks train with the LM-head fused loss (LinearFusionLoss, the default for a plain linear
head). They must end with identical weights and logs, must have trained on different blocks, and
must match one process training on the same global batches with the logits path (FusionLoss).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from trainer_helpers import save_packed, tiny_lm
from transformers import TrainingArguments

from fusekern import FusionArguments, FusionTrainer

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch
    from datasets import load_from_disk
    from trainer_helpers import tiny_lm
    from transformers import TrainingArguments
    from fusekern import FusionArguments, FusionDataCollator, FusionTrainer

    data, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    seen = []

    class Recording(FusionDataCollator):
        def __call__(self, features):
            batch = super().__call__(features)
            seen.append(batch["input_ids"][:, :4].tolist())
            return batch

    args = TrainingArguments(**json.loads(sys.argv[3]), output_dir=out, ddp_backend="gloo")
    model = tiny_lm(seed=5)
    trainer = FusionTrainer(model=model, args=args, train_dataset=load_from_disk(data).with_format("numpy"),
                            data_collator=Recording(0), fusion_args=FusionArguments(lm_weight=0.5))
    trainer.train()
    assert trainer.fused_head is True, "the fused head path was not used"
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"world": int(os.environ["WORLD_SIZE"]), "params": params.tolist(), "seen": seen,
                   "fused": trainer.fused_head,
                   "logs": [h for h in trainer.state.log_history if "loss" in h]}}, f)
    """
)

TRAIN = dict(
    per_device_train_batch_size=2,
    max_steps=3,
    logging_steps=1,
    learning_rate=0.05,
    optim="sgd",
    lr_scheduler_type="constant",
    max_grad_norm=0.0,
    seed=0,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
    dataloader_num_workers=0,
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_process_ddp_ranks_agree(tmp_path):
    torchrun = shutil.which("torchrun")
    cmd = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    data = save_packed(str(tmp_path / "packed"), 16, seed=11)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=TESTS_DIR))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [*cmd, "--standalone", "--nproc_per_node", "2", str(script), data, str(out), json.dumps(TRAIN)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["fused"] is True and r1["fused"] is True
    # data parallel: each rank got its own blocks (the loader may prefetch one batch more)
    assert len(r0["seen"]) >= 3 and len(r1["seen"]) >= 3
    flat0 = {tuple(x) for step in r0["seen"][:3] for x in step}
    flat1 = {tuple(x) for step in r1["seen"][:3] for x in step}
    assert not flat0 & flat1
    # gradients were all-reduced: identical weights and identical (gathered) logged losses
    assert r0["params"] == r1["params"]
    assert [h["loss"] for h in r0["logs"]] == [h["loss"] for h in r1["logs"]]
    assert {"clm_loss", "fusion_loss"} <= set(r0["logs"][0])

    # one process on the same global batches (2 ranks x 2 = 4), logits path: the same weights
    from datasets import load_from_disk

    model = tiny_lm(seed=5)
    args = TrainingArguments(
        **dict(TRAIN, per_device_train_batch_size=4), output_dir=str(tmp_path / "single")
    )
    FusionTrainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(data).with_format("numpy"),
        fusion_args=FusionArguments(lm_weight=0.5, fused_linear="false"),
    ).train()
    single = torch.cat([p.detach().flatten() for p in model.parameters()])
    start = torch.cat([p.detach().flatten() for p in tiny_lm(seed=5).parameters()])
    ddp = torch.tensor(r0["params"])
    assert not torch.allclose(ddp, start)
    torch.testing.assert_close(ddp, single, rtol=1e-4, atol=1e-5)
