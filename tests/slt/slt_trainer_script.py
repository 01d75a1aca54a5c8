"""A tiny Trainer run of a frozen-SLT GPT-2, launched by tests/slt/test_slt_trainer.py.

Run directly for one process or with `torchrun --nproc_per_node 2` for two CPU ranks over gloo; torchrun
sets the distributed environment and Trainer drives accelerate with it. Each rank writes
`rank<k>.json` (world size, checksums of weights and scores, the Trainer's log history) to the output folder.
"""

import hashlib
import json
import os
import sys

import torch
from transformers import Trainer, TrainingArguments

from hf_coop.slt import FrozenSLTConfig, apply_frozen_slt
from hf_coop.slt.callback import FrozenSLTCallback
from hf_coop.testing import bundled_passage, end_process_group, tiny_byte_level_tokenizer, tiny_causal_lm


def checksum(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    tokenizer = tiny_byte_level_tokenizer()
    slt = apply_frozen_slt(
        tiny_causal_lm(tokenizer, arch="gpt2"),
        FrozenSLTConfig(
            sparsity=0.5,
            pruned_ratio=0.2,
            locked_ratio=0.1,
            threshold="global",
            target_modules=r".*\.(c_attn|c_proj|c_fc)",
            seed=3,
        ),
    )
    ids = tokenizer(bundled_passage())["input_ids"]
    examples = [torch.tensor(ids[i : i + 32]) for i in range(0, len(ids) - 32, 32)][:16]
    dataset = [{"input_ids": x, "labels": x} for x in examples]
    weights_before = checksum(layer.weight for layer in slt.slt_layers().values())
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=0.1,
        logging_steps=2,
        save_steps=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
    )
    trainer = Trainer(
        model=slt.base_model, args=args, train_dataset=dataset, callbacks=[FrozenSLTCallback(slt)]
    )
    trainer.train()
    result = {
        "world_size": args.world_size,
        "weights_unchanged": checksum(layer.weight for layer in slt.slt_layers().values()) == weights_before,
        "scores": checksum(layer.scores for layer in slt.slt_layers().values()),
        "masks": checksum(layer.mask() for layer in slt.slt_layers().values()),
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(output_dir, f"rank{args.process_index}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
    end_process_group()
