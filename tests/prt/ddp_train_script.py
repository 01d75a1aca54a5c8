"""Train a tiny PRT reward for one SGD step and save the parameter update; run it under torchrun.

`torchrun --standalone --nproc_per_node 2 ddp_train_script.py OUT` starts two gloo CPU processes; `Trainer`
drives accelerate, which sees the torchrun environment, wraps the reward in DDP and shards the data. The
test compares the update with a single process on the whole batch (see test_distributed.py).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hf_coop.prt import PRTConfig, PRTTrainer, PRTTrainingArguments
from hf_coop.testing import TINY_TRAINING_TEXTS as TEXTS
from hf_coop.testing import end_process_group, tiny_byte_level_tokenizer, tiny_causal_lm


def padded_dataset(tokenizer):
    from datasets import Dataset

    enc = tokenizer(TEXTS)
    width = max(len(ids) for ids in enc["input_ids"])
    pad = tokenizer.pad_token_id
    return Dataset.from_dict(
        {
            "input_ids": [ids + [pad] * (width - len(ids)) for ids in enc["input_ids"]],
            "attention_mask": [[1] * len(ids) + [0] * (width - len(ids)) for ids in enc["input_ids"]],
            "labels": [ids + [-100] * (width - len(ids)) for ids in enc["input_ids"]],
        }
    )


def one_step_update(
    output_dir: str, per_device_batch: int
) -> tuple[dict[str, torch.Tensor], PRTTrainer, dict]:
    """Parameter change of one SGD step (lr 1, no clipping), the trainer, and the base before training."""
    torch.manual_seed(0)
    tokenizer = tiny_byte_level_tokenizer()
    base = tiny_causal_lm(tokenizer, seed=0)
    base_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    args = PRTTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        weight_decay=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = PRTTrainer(
        base,
        args=args,
        train_dataset=padded_dataset(tokenizer),
        processing_class=tokenizer,
        prt_config=PRTConfig(entropy_weight=0.1),
    )
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    update = {
        n: (start[n] - p.detach()).contiguous()
        for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
    }
    return update, trainer, base_before


def main(out: Path) -> None:
    update, trainer, base_before = one_step_update(str(out / "run"), per_device_batch=4)
    if trainer.is_world_process_zero():
        base_unchanged = all(torch.equal(p, base_before[n]) for n, p in trainer.base_model.named_parameters())
        save_file(update, str(out / "update.safetensors"))
        (out / "report.json").write_text(
            json.dumps(
                {
                    "world_size": trainer.args.world_size,
                    "distributed_type": str(trainer.accelerator.distributed_type),
                    "base_unchanged": base_unchanged,
                }
            )
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    end_process_group()
