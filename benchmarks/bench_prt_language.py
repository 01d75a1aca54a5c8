"""Portable Reward Tuning on language, reduced to fit a shared CPU: GSM-symbolic worked answers.

Old base: a small Llama (4 layers, width 128, tied embeddings) trained here from scratch with SmolLM2's
tokenizer on the King James Bible (`apt-get install bible-kjv`). New base: SmolLM2-135M-Instruct (offline,
`hf_coop.models.load_model`). A PRT reward (a copy of the old base) is trained through the frozen old base on
GSM-symbolic problems with worked answers (reasoning-gym); EFT and proxy-tuning use the old base fine-tuned
directly on the same data. All prompts use SmolLM2's chat template (the old models learn it as plain text).

Reported on held-out problems: mean NLL per reference-answer token (teacher forcing), exact-answer accuracy
with greedy decoding, and decoding speed relative to the new base alone (logits-processor forms of PRT, EFT
and proxy-tuning, batch of left-padded prompts, KV caches everywhere).

Run (about 15 minutes on one CPU thread):
    OMP_NUM_THREADS=1 python benchmarks/bench_prt_language.py
`--fast` runs a tiny smoke version and writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gsm import is_correct, problems  # noqa: E402
from results import write_section  # noqa: E402

from hf_coop.models import load_model  # noqa: E402
from hf_coop.prt import (  # noqa: E402
    EFTLogitsProcessor,
    ProxyTuningLogitsProcessor,
    PRTConfig,
    PRTLogitsProcessor,
    PRTTrainer,
    PRTTrainingArguments,
)
from hf_coop.prt.core import eft_log_probs, proxy_tuning_log_probs, prt_log_probs  # noqa: E402

NEW_BASE = "smollm2-135m-instruct"


def bible_text() -> str:
    """The KJV Bible without verse references."""
    raw = subprocess.run(
        ["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    return "\n".join(re.sub(r"^\S+\s", "", line) for line in raw.splitlines() if line.strip())


def pretrain_old_base(tokenizer, steps: int, seq_len: int = 128, batch: int = 8) -> LlamaForCausalLM:
    """A small Llama trained from scratch (stands in for an older, weaker foundation model)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    ids = torch.tensor(tokenizer(bible_text()).input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=generator).tolist()
        chunk = torch.stack([ids[s : s + seq_len] for s in starts])
        model(input_ids=chunk, labels=chunk).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return model.eval()


def prompt_of(tokenizer, item: dict) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": item["question"]}], tokenize=False, add_generation_prompt=True
    )


def task_dataset(tokenizer, items: list[dict], max_len: int = 384) -> Dataset:
    """Chat prompt + worked answer; only answer tokens are trained on (-100 on the prompt)."""
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for item in items:
        prompt = tokenizer(prompt_of(tokenizer, item), add_special_tokens=False).input_ids
        answer = tokenizer(item["metadata"]["answer_cot"] + "<|im_end|>", add_special_tokens=False).input_ids
        ids = (prompt + answer)[:max_len]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(([-100] * len(prompt) + answer)[:max_len])
    return Dataset.from_dict(rows)


def collate(tokenizer):
    def pad(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in batch)
        out = {}
        for key, fill in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("labels", -100)):
            out[key] = torch.tensor([row[key] + [fill] * (width - len(row[key])) for row in batch])
        return out

    return pad


def train_args(output_dir: str, steps: int, cls=PRTTrainingArguments):
    return cls(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        report_to=[],
        save_strategy="no",
        logging_steps=20,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        remove_unused_columns=False,
    )


@torch.no_grad()
def answer_nll(methods: dict, dataset: Dataset, tokenizer, batch: int = 8) -> dict[str, float]:
    """Mean NLL (nats) per reference-answer token for every method; each model runs once per batch."""
    totals, count = dict.fromkeys(methods, 0.0), 0
    pad = collate(tokenizer)
    for start in range(0, len(dataset), batch):
        rows = pad([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
        logits = {}
        for models, _, _ in methods.values():
            for m in models:
                if id(m) not in logits:
                    logits[id(m)] = m(
                        input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]
                    ).logits
        targets = rows["labels"][:, 1:]
        keep = targets != -100
        count += int(keep.sum())
        for name, (models, combine, _) in methods.items():
            log_probs = combine(*(logits[id(m)] for m in models))[:, :-1]
            nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            totals[name] += float(nll[keep].sum())
    return {name: total / count for name, total in totals.items()}


def generate_all(new_base, tokenizer, items, make_processors, max_new_tokens: int, batch: int):
    """Greedy answers for `items`; returns (texts, seconds, decoding steps)."""
    tokenizer.padding_side = "left"
    texts, seconds, steps = [], 0.0, 0
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        inputs = tokenizer(
            [prompt_of(tokenizer, it) for it in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        began = time.perf_counter()
        out = new_base.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=make_processors(inputs.attention_mask),
        )
        seconds += time.perf_counter() - began
        steps += out.shape[1] - inputs.input_ids.shape[1]
        texts += tokenizer.batch_decode(out[:, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    return texts, seconds, steps


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fast", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--workdir", default="/tmp/bench_prt_language")
    parser.add_argument("--eval-problems", type=int, default=32, help="held-out problems for accuracy")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    pretrain_steps, tune_steps, n_train, n_nll, n_gen, max_new = 150, 60, 480, 48, args.eval_problems, 128
    if args.fast:
        pretrain_steps, tune_steps, n_train, n_nll, n_gen, max_new = 3, 2, 16, 8, 4, 8

    new_base, tokenizer = load_model(NEW_BASE)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_base = pretrain_old_base(tokenizer, pretrain_steps)
    train_items, test_items = problems(n_train, seed=1), problems(max(n_nll, n_gen), seed=2)
    train_set = task_dataset(tokenizer, train_items)
    tokenizer.padding_side = "right"

    reward_trainer = PRTTrainer(
        old_base,
        args=train_args(args.workdir, tune_steps),
        prt_config=PRTConfig(base_model_name_or_path="old"),
        processing_class=tokenizer,
        train_dataset=train_set,
        data_collator=collate(tokenizer),
    )
    reward_trainer.train()
    reward = reward_trainer.model.eval()
    old_finetuned = copy.deepcopy(old_base).requires_grad_(True)
    Trainer(
        model=old_finetuned,
        args=train_args(args.workdir, tune_steps, cls=PRTTrainingArguments),
        train_dataset=train_set,
        data_collator=collate(tokenizer),
    ).train()
    old_finetuned.eval()
    train_minutes = (time.time() - started) / 60

    vocab = len(tokenizer)
    nll_set = task_dataset(tokenizer, test_items[:n_nll])
    methods = {
        "new base alone": ([new_base], lambda s: torch.log_softmax(s[..., :vocab].float(), -1), lambda m: []),
        "old base alone": ([old_base], lambda s: torch.log_softmax(s[..., :vocab].float(), -1), None),
        "old base fine-tuned": (
            [old_finetuned],
            lambda s: torch.log_softmax(s[..., :vocab].float(), -1),
            None,
        ),
        "old base + PRT reward (training view)": (
            [old_base, reward],
            lambda s, r: prt_log_probs(s, r, 1.0, vocab),
            None,
        ),
        "**new base + PRT reward**": (
            [new_base, reward],
            lambda s, r: prt_log_probs(s, r, 1.0, vocab),
            lambda m: [PRTLogitsProcessor(reward, attention_mask=m, vocab_size=vocab)],
        ),
        "new base + PRT reward, inference λ = 4": (
            [new_base, reward],
            lambda s, r: prt_log_probs(s, r, 4.0, vocab),
            None,
        ),
        "new base + PRT reward, inference λ = 16": (
            [new_base, reward],
            lambda s, r: prt_log_probs(s, r, 16.0, vocab),
            None,
        ),
        "new base + EFT": (
            [new_base, old_finetuned, old_base],
            lambda s, f, b: eft_log_probs(s, f, b, vocab),
            lambda m: [EFTLogitsProcessor(old_finetuned, old_base, attention_mask=m, vocab_size=vocab)],
        ),
        "new base + proxy-tuning (α = 1)": (
            [new_base, old_finetuned, old_base],
            lambda s, f, b: proxy_tuning_log_probs(s, f, b, 1.0, vocab),
            lambda m: [
                ProxyTuningLogitsProcessor(old_finetuned, old_base, attention_mask=m, vocab_size=vocab)
            ],
        ),
        "new base + proxy-tuning (α = 0.25)": (
            [new_base, old_finetuned, old_base],
            lambda s, f, b: proxy_tuning_log_probs(s, f, b, 0.25, vocab),
            None,
        ),
    }
    rows = []
    speed_of_new = None
    tokenizer.padding_side = "right"
    nlls = answer_nll(methods, nll_set, tokenizer)
    for name, (_, _, make_processors) in methods.items():
        nll = nlls[name]
        if make_processors is None:
            rows.append((name, nll, None, None))
            continue
        texts, seconds, steps = generate_all(
            new_base, tokenizer, test_items[:n_gen], make_processors, max_new, 16
        )
        correct = sum(is_correct(t, it) for t, it in zip(texts, test_items, strict=False))
        per_step = seconds / max(steps, 1)
        speed_of_new = speed_of_new or per_step
        rows.append((name, nll, correct / len(texts), speed_of_new / per_step))
        print(name, nll, correct, per_step, repr(texts[0][:200]))
    minutes = (time.time() - started) / 60

    lines = [
        "## PRT on GSM-symbolic (language, reduced)",
        "",
        "Command: `OMP_NUM_THREADS=1 python benchmarks/bench_prt_language.py` "
        f"({minutes:.1f} min on 1 CPU thread, shared machine; training {train_minutes:.1f} min).",
        "",
        "Reduced from the issue's plan to fit a shared 2-core CPU: the old base is a 4-layer, width-128 Llama "
        f"(SmolLM2 tokenizer, tied embeddings) trained from scratch for {pretrain_steps} steps of 8×128 tokens "
        "on the KJV Bible only; the reward (PRT, λ = 1, α = 0) and the directly fine-tuned old model (for EFT "
        f"and proxy-tuning) each get {tune_steps} steps of 8 problems from {n_train} GSM-symbolic problems "
        "with worked answers (reasoning-gym 0.1.25, seed 1); the new base is SmolLM2-135M-Instruct. NLL is "
        f"per reference-answer token over {n_nll} held-out problems (seed 2); accuracy is greedy decoding "
        f"(≤ {max_new} new tokens, chat template) on the first {n_gen} of them, scored by reasoning-gym; speed "
        "is decoding steps per second relative to the new base alone in the same run (batches of 16, "
        "left-padded, KV caches; PRT/EFT/proxy as logits processors). Rows with '–' were scored by NLL only "
        "(the λ rows reuse the reward trained at λ = 1 with a larger λ at inference). EFT and proxy-tuning with "
        "α = 1 are the same distribution after renormalisation (log-softmax shifts cancel), hence equal NLL.",
        "",
        "| model | answer NLL (nats/token) | accuracy | speed vs new base |",
        "|---|---|---|---|",
        *[
            f"| {name} | {nll:.3f} | "
            + ("–" if acc is None else f"{acc:.3f}")
            + " | "
            + ("–" if speed is None else f"×{speed:.2f}")
            + " |"
            for name, nll, acc, speed in rows
        ],
    ]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.fast:
        write_section("prt_language", markdown)
    return markdown


if __name__ == "__main__":
    main()
