"""Portable Reward Tuning across tokenizers: a reward trained through SmolLM2-135M-Instruct steers
Gemma-3-270M, whose tokenizer is another (a few minutes on a CPU; `--fast`, or HF_COOP_FAST=1: seconds,
with tiny models and tokenizers built in-process).

1. A LoRA reward is trained through the frozen old base (SmolLM2) with `PRTTrainer` on additions
   ("Q: What is 23 + 58?\\nA: 81").
2. It is saved and reloaded; `PRTModel(gemma, reward, tokenizer=gemma_tokenizer)` sees that the reward's
   tokenizer is not Gemma's and builds the cross-tokenizer model: log p_gemma + s (log p_tuned - log p_old)
   over the maximal common vocabulary of the two tokenizers, generated with the usual `generate`.
3. We print the accuracy of Gemma alone and of Gemma with the reward on held-out questions, and a sample
   (on 2 CPU cores, in 6.5 minutes: 0.00 alone, 0.96 with the reward, on 48 questions).

Run: python examples/prt_across_tokenizers.py [--fast] [--steps N] [--output DIR]
(the real models are the offline demo models that `bash scripts/setup.sh` installs).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig

from hf_coop.prt import PRTConfig, PRTModel, PRTRewardModel, PRTTrainer, PRTTrainingArguments


def questions(count: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: sums of two numbers below 100."""
    rng = random.Random(seed)
    pairs = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(count)]
    return [(f"Q: What is {a} + {b}?\nA:", str(a + b)) for a, b in pairs]


def training_data(tokenizer, items: list[tuple[str, str]]) -> Dataset:
    """Prompt and answer token ids; the loss is on the answer (and the newline that ends it) only."""
    rows = {"input_ids": [], "labels": []}
    for prompt, answer in items:
        prompt_ids = tokenizer(prompt).input_ids
        answer_ids = tokenizer(f" {answer}\n", add_special_tokens=False).input_ids
        rows["input_ids"].append(prompt_ids + answer_ids)
        rows["labels"].append([-100] * len(prompt_ids) + answer_ids)
    return Dataset.from_dict(rows)


def pad_batch(tokenizer):
    def pad(batch):
        width = max(len(row["input_ids"]) for row in batch)
        ids = [row["input_ids"] + [tokenizer.pad_token_id] * (width - len(row["input_ids"])) for row in batch]
        labels = [row["labels"] + [-100] * (width - len(row["labels"])) for row in batch]
        mask = [[1] * len(row["input_ids"]) + [0] * (width - len(row["input_ids"])) for row in batch]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }

    return pad


@torch.no_grad()
def answers(model, tokenizer, prompts: list[str], batch: int = 8) -> list[str]:
    """Greedy answers, up to the first newline; `tokenizer` is the model's own (the cross-tokenizer model's
    encodes and decodes over the common vocabulary)."""
    tokenizer.padding_side = "left"
    texts = []
    for start in range(0, len(prompts), batch):
        inputs = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True)
        pad = {"pad_token_id": tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else {}
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, **pad)
        width = inputs["input_ids"].shape[1]
        texts += [
            t.strip().split("\n")[0].strip()
            for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        ]
    return texts


def load_bases(fast: bool):
    """(old, old tokenizer, new, new tokenizer): the real demo models, or tiny ones with different tokenizers."""
    if fast:
        from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm, tiny_sentencepiece_tokenizer

        old_tokenizer, new_tokenizer = tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()
        return (
            tiny_causal_lm(old_tokenizer, seed=0),
            old_tokenizer,
            tiny_causal_lm(new_tokenizer, arch="gemma3", seed=1),
            new_tokenizer,
        )
    from hf_coop.models import load_model

    return (*load_model("smollm2-135m-instruct"), *load_model("gemma-3-270m"))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fast", action="store_true", default=os.environ.get("HF_COOP_FAST") == "1")
    parser.add_argument(
        "--steps", type=int, default=None, help="reward training steps (default 150; fast: 4)"
    )
    parser.add_argument(
        "--output", default=None, help="where to save the reward (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (4 if args.fast else 150)
    test = questions(8 if args.fast else 48, seed=1)
    torch.manual_seed(0)
    old, old_tokenizer, new, new_tokenizer = load_bases(args.fast)
    if old_tokenizer.pad_token_id is None:
        old_tokenizer.pad_token = old_tokenizer.eos_token

    output = args.output or tempfile.mkdtemp(prefix="prt-cross-")
    trainer = PRTTrainer(
        base_model=old,
        args=PRTTrainingArguments(
            output_dir=output,
            max_steps=steps,
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            lr_scheduler_type="cosine",
            report_to=[],
            save_strategy="no",
            logging_steps=max(steps // 5, 1),
            use_cpu=True,
            disable_tqdm=args.fast,
            remove_unused_columns=False,
        ),
        train_dataset=training_data(old_tokenizer, questions(16 * steps, seed=0)),
        data_collator=pad_batch(old_tokenizer),
        processing_class=old_tokenizer,
        prt_config=PRTConfig(reward_scale=1.0),
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    trainer.train()
    trainer.save_model(output)

    # the saved LoRA adapter goes back onto the old base (its adapter-free path serves as pi_old)
    reward = PRTRewardModel.from_pretrained(output, base_model=old, tokenizer=old_tokenizer)
    steered = PRTModel(
        new, reward, tokenizer=new_tokenizer
    )  # a CrossTokenizerPRTModel: the tokenizers differ
    prompts, expected = zip(*test, strict=True)
    results = {}
    for name, model, tokenizer in (
        ("new base alone", new, new_tokenizer),
        ("new base + PRT reward (across tokenizers)", steered, steered.tokenizer),
    ):
        got = answers(model, tokenizer, list(prompts))
        results[name] = sum(g == e for g, e in zip(got, expected, strict=True)) / len(expected)
        print(
            f"{name:45s} accuracy {results[name]:.2f} on {len(expected)} questions; e.g. {prompts[0]!r} -> {got[0]!r}"
        )
    print(f"reward saved in {output}")
    return results


if __name__ == "__main__":
    main()
