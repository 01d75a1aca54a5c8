"""Portable Reward Tuning end to end, offline, in about a minute (`--fast`, or HF_COOP_FAST=1: seconds).

1. Two small "foundation models" of different architectures (Llama and GPT-2) share one tokenizer; each is
   pretrained here on the bundled English passage: the *old* base and the *new* base.
2. A reward model is trained through the frozen old base on a task the bases never saw (additions written
   as "12+7=19;"), with `PRTTrainer`.
3. The reward is saved, reloaded and added to the *new* base at inference (`PRTModel`): the new base solves
   the task's format without ever being fine-tuned. We print the task loss (nats per answer token) of the
   new base alone and with the reward, and a greedy sample.

Run: python examples/prt_reward_tuning.py [--fast] [--output DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

import torch
from datasets import Dataset

from hf_coop.prt import PRTConfig, PRTModel, PRTRewardModel, PRTTrainer, PRTTrainingArguments
from hf_coop.testing import bundled_passage, tiny_byte_level_tokenizer, tiny_causal_lm


def pretrain(model, tokenizer, steps: int, seed: int) -> None:
    """Plain next-token training on the bundled passage (stands in for a foundation model's pretraining)."""
    ids = tokenizer(bundled_passage(), return_tensors="pt").input_ids[0]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
        batch = torch.stack([ids[s : s + 64] for s in starts.tolist()])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def addition_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pairs = [(rng.randint(0, 20), rng.randint(0, 20)) for _ in range(4)]
        texts.append("".join(f"{a}+{b}={a + b};" for a, b in pairs))
    return texts


def task_dataset(tokenizer, texts: list[str]) -> Dataset:
    enc = tokenizer(texts, padding=True)
    labels = [
        [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True)
    ]
    return Dataset.from_dict({**enc, "labels": labels})


@torch.no_grad()
def task_loss(model, dataset: Dataset) -> float:
    """Mean negative log-likelihood (nats) per label token; `model` returns logits or log-probabilities."""
    batch = dataset[:]
    ids, mask, labels = (torch.tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels"))
    log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return float(nll[keep].mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fast", action="store_true", default=os.environ.get("HF_COOP_FAST") == "1")
    parser.add_argument(
        "--output", default=None, help="where to save the reward (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    pretrain_steps, reward_steps = (6, 6) if args.fast else (300, 300)
    torch.manual_seed(0)

    tokenizer = tiny_byte_level_tokenizer()
    tokenizer.padding_side = "right"
    old_base = tiny_causal_lm(tokenizer, arch="llama", seed=0, hidden_size=64)
    new_base = tiny_causal_lm(tokenizer, arch="gpt2", seed=1, hidden_size=64, extra_head_rows=8)
    pretrain(old_base, tokenizer, pretrain_steps, seed=0)
    pretrain(new_base, tokenizer, pretrain_steps, seed=1)

    train, test = (
        task_dataset(tokenizer, addition_texts(256, 0)),
        task_dataset(tokenizer, addition_texts(64, 1)),
    )
    output = args.output or tempfile.mkdtemp(prefix="prt-reward-")
    trainer = PRTTrainer(
        old_base,
        args=PRTTrainingArguments(
            output_dir=output,
            max_steps=reward_steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            report_to=[],
            save_strategy="no",
            logging_steps=max(reward_steps // 5, 1),
            use_cpu=True,
            disable_tqdm=args.fast,
        ),
        prt_config=PRTConfig(reward_scale=1.0, base_model_name_or_path="tiny-llama-old"),
        processing_class=tokenizer,
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model(output)

    reward = PRTRewardModel.from_pretrained(output, tokenizer=tokenizer)
    steered = PRTModel(new_base, reward, tokenizer=tokenizer)
    results = {
        "new base alone": task_loss(new_base, test),
        "new base + PRT reward": task_loss(steered, test),
        "old base + PRT reward (training view)": task_loss(PRTModel(old_base, reward), test),
    }
    for name, value in results.items():
        print(f"{name:40s} {value:.3f} nats/token")
    prompt = tokenizer("3+4=7;10+2=", return_tensors="pt")
    sample = steered.generate(
        **prompt, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    print("new base + PRT, greedy:", repr(tokenizer.decode(sample[0], skip_special_tokens=True)))
    print(f"reward model saved in {output}")
    return results


if __name__ == "__main__":
    main()
