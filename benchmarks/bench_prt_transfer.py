"""Portable Reward Tuning across tokenizers on a task small models learn in minutes: reasoning-gym's
basic_arithmetic (two terms of one or two digits; the old base alone scores 0 %, LoRA learns it).

Old base SmolLM2-135M-Instruct (byte-level BPE, 49,152 tokens); new base Gemma-3-270M (SentencePiece,
262,144 tokens). All systems read the same plain prompt `Q: <question>\\nA:` and answer up to a newline.

| system | how |
|---|---|
| old / new base alone | greedy `generate` |
| old fine-tuned, new fine-tuned (the oracle) | LoRA (r=16, attention projections), answer tokens only |
| old + PRT reward (the training view) | `PRTLogitsProcessor` on the old base (same tokenizer) |
| **new + PRT reward across tokenizers** | `PRTModel(gemma, reward, tokenizer=gemma_tok)` over the MCV |
| new + EFT across tokenizers | the same rule with the old fine-tuned model (merged, a separate network) |

The PRT reward is a LoRA adapter trained by `PRTTrainer` through the frozen old base on the same data and
steps as the old fine-tune. s (the transfer scale) is chosen on a validation split for PRT and EFT alike.
Decoding speed: steps per second at batch 8 against the new base alone, with the network calls and query
tokens per step (forward hooks). The same test set gives the MCV ensemble of the two bases its accuracy row
(few-shot prompts, mean and product, against each member alone), and a same-tokenizer table: SmolLM2 as the
new base, its first half of layers (continued-pretrained) as the old one, PRT and EFT as logits processors.

Run (`pip install -e ".[bench]"`): `OMP_NUM_THREADS=2 python -m benchmarks.bench_prt_transfer`
(`--test-items`, `--steps` scale it; `--fast` is a smoke run that writes nothing). Partial results are kept in
`$HF_COOP_BENCH_DIR/prt_transfer/<items>x<steps>/results.json` (default ~/.cache/hf_coop/bench) so an interrupted run resumes; trained adapters are kept there too.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    Trainer,
    TrainingArguments,
)

from benchmarks.results import write_section
from hf_coop.models import load_model
from hf_coop.prt import (
    EFTLogitsProcessor,
    PRTConfig,
    PRTLogitsProcessor,
    PRTModel,
    PRTRewardModel,
    PRTTrainer,
    PRTTrainingArguments,
)
from hf_coop.prt.cross_tokenizer import CrossTokenizerPRTModel
from hf_coop.vocab.ensemble import CommonVocabEnsemble

OLD, NEW = "smollm2-135m-instruct", "gemma-3-270m"
TASK = ("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})
LORA = {
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "lora_dropout": 0.0,
}
SCALES = (0.5, 1.0, 2.0)
FEW_SHOT = 4


def items(split: str, count: int) -> tuple[list[dict], object]:
    import reasoning_gym

    seed = {"train": 1, "validation": 2, "test": 3, "shots": 4}[split]
    dataset = reasoning_gym.create_dataset(TASK[0], size=count, seed=seed, **TASK[1])
    return list(dataset), dataset


def prompt(item: dict, shots: list[dict] = ()) -> str:
    return "".join(f"Q: {s['question']}\nA: {s['answer']}\n\n" for s in shots) + f"Q: {item['question']}\nA:"


def answer_of(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def accuracy(texts: list[str], chunk: list[dict], scorer) -> list[bool]:
    return [scorer.score_answer(answer_of(t), it) >= 1.0 for t, it in zip(texts, chunk, strict=True)]


def train_dataset(tokenizer, train: list[dict]) -> Dataset:
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for item in train:
        prompt_ids = tokenizer(prompt(item)).input_ids  # with the tokenizer's BOS, as at inference
        answer = tokenizer(f" {item['answer']}\n", add_special_tokens=False).input_ids
        rows["input_ids"].append(prompt_ids + answer)
        rows["attention_mask"].append([1] * (len(prompt_ids) + len(answer)))
        rows["labels"].append([-100] * len(prompt_ids) + answer)
    return Dataset.from_dict(rows)


def collate(tokenizer):
    def pad(batch):
        width = max(len(r["input_ids"]) for r in batch)
        return {
            key: torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in batch])
            for key, fill in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("labels", -100))
        }

    return pad


def arguments(cls, folder: str, steps: int):
    return cls(
        output_dir=folder,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        report_to=[],
        save_strategy="no",
        logging_steps=25,
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
    )


def lora_finetune(model, tokenizer, train, steps, folder):
    """The base fine-tuned directly with LoRA on the answers; returns the merged model (kept in
    `folder/merged`, reused by a later run)."""
    merged = Path(folder, "merged")
    if (merged / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(merged, dtype=model.dtype).eval()
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**LORA))
    Trainer(
        model=peft_model,
        args=arguments(TrainingArguments, folder, steps),
        train_dataset=train_dataset(tokenizer, train),
        data_collator=collate(tokenizer),
    ).train()
    result = peft_model.merge_and_unload().eval()
    result.save_pretrained(merged)
    return result


def train_reward(old, tokenizer, train, steps, folder) -> PRTRewardModel:
    """A LoRA PRT reward trained through `old` (kept in `folder`, reused by a later run)."""
    if not Path(folder, "prt_config.json").is_file():
        train_reward_into(old, tokenizer, train, steps, folder)
    return PRTRewardModel.from_pretrained(folder, base_model=copy.deepcopy(old))


def train_reward_into(old, tokenizer, train, steps, folder) -> None:
    trainer = PRTTrainer(
        base_model=old,
        args=arguments(PRTTrainingArguments, folder, steps),
        train_dataset=train_dataset(tokenizer, train),
        data_collator=collate(tokenizer),
        processing_class=tokenizer,
        prt_config=PRTConfig(reward_scale=1.0),
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    trainer.save_model(folder)


class StopAtNewline(StoppingCriteria):
    """Stop a row once its new text holds a newline after some answer text."""

    def __init__(self, decode, width: int):
        self.decode, self.width = decode, width

    def __call__(self, input_ids, scores, **kwargs):
        texts = [self.decode(row[self.width :]) for row in input_ids]
        return torch.tensor([bool(t.strip()) and "\n" in t.lstrip() for t in texts], device=input_ids.device)


def run_plain(model, tokenizer, batch_items, scorer, shots=(), processors=None, max_new_tokens=8):
    tokenizer.padding_side = "left"
    inputs = tokenizer([prompt(it, shots) for it in batch_items], return_tensors="pt", padding=True)
    width = inputs["input_ids"].shape[1]
    stop = StoppingCriteriaList(
        [StopAtNewline(lambda r: tokenizer.decode(r, skip_special_tokens=True), width)]
    )
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=stop,
        logits_processor=processors(inputs["attention_mask"]) if processors else None,
    )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return accuracy(texts, batch_items, scorer)


def run_engine(model, batch_items, scorer, shots=(), max_new_tokens=8):
    inputs = model.tokenizer([prompt(it, shots) for it in batch_items], return_tensors="pt")
    width = inputs["input_ids"].shape[1]
    stop = StoppingCriteriaList([StopAtNewline(lambda r: model.tokenizer.decode(r), width)])
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, stopping_criteria=stop)
    return accuracy(model.tokenizer.batch_decode(out[:, width:]), batch_items, scorer)


def evaluate(run, test, batch: int, label: str) -> dict:
    correct, began = [], time.perf_counter()
    for start in range(0, len(test), batch):
        correct += run(test[start : start + batch])
        print(f"  {label}: {start + batch}/{len(test)} acc {sum(correct) / len(correct):.3f}", flush=True)
    n = len(correct)
    p = sum(correct) / n
    return {
        "accuracy": p,
        "n": n,
        "seconds": time.perf_counter() - began,
    }


def fixed_steps(model, tokenizer, processors=None):
    """A function decoding exactly `n` greedy steps for a batch of items and returning `n` (for timing):
    `model` with `tokenizer` (a plain model, optionally with logits processors, or an engine model)."""

    def go(batch_items, n):
        inputs = tokenizer([prompt(it) for it in batch_items], return_tensors="pt", padding=True)
        plain = isinstance(tokenizer, PreTrainedTokenizerBase)  # engine models carry their own pad id
        options = {"pad_token_id": tokenizer.pad_token_id} if plain else {}
        if processors is not None:
            options["logits_processor"] = processors(inputs["attention_mask"])
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, **options)
        return out.shape[1] - inputs["input_ids"].shape[1]

    return go


def decoding_speed(makers: dict, prompts_items, new_tokens: int = 8, repeats: int = 2) -> dict:
    """Decoding steps per second at one batch, best of `repeats` interleaved runs."""
    best = dict.fromkeys(makers, 0.0)
    for _ in range(repeats):
        for name, generate in makers.items():
            began = time.perf_counter()
            steps = generate(prompts_items, new_tokens)
            best[name] = max(best[name], steps / (time.perf_counter() - began))
    return best


def forward_work(generate, networks: list, prompts_items, new_tokens: int = 8) -> dict:
    """Sequential network calls and query tokens (rows x positions fed) per decoding step, counted with
    forward hooks on `networks` over one run: what a GPU pays for (one call per network and step, whatever
    its rows), where a CPU pays for the tokens."""
    calls, tokens = 0, 0

    def hook(module, args, kwargs):
        nonlocal calls, tokens
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls += 1
        tokens += ids.numel()

    handles = [net.register_forward_pre_hook(hook, with_kwargs=True) for net in networks]
    try:
        steps = generate(prompts_items, new_tokens)
    finally:
        for handle in handles:
            handle.remove()
    return {"calls per step": calls / steps, "query tokens per step": tokens / steps}


def old_side(model: CrossTokenizerPRTModel) -> list:
    """The old-side networks a cross-tokenizer model calls (one peft model when base and tuning are fused)."""
    pair = model.pair
    return [pair.tuned] if pair.fused else [pair.base, pair.tuned]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-items", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--validation-items", type=int, default=64)
    parser.add_argument("--test-items", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--pretrain-steps", type=int, default=150, help="continued pretraining, same-tokenizer old base"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], help="sections to leave out: ensemble, same-tokenizer"
    )
    parser.add_argument("--fast", action="store_true", help="a smoke run that writes nothing")
    args = parser.parse_args(argv)
    if args.fast:
        args.train_items, args.steps, args.validation_items, args.test_items, args.pretrain_steps = (
            32,
            2,
            4,
            4,
            2,
        )
    cache = Path(os.environ.get("HF_COOP_BENCH_DIR", Path.home() / ".cache/hf_coop/bench"))
    cache = cache / "prt_transfer" / ("fast" if args.fast else f"{args.train_items}x{args.steps}")
    cache.mkdir(parents=True, exist_ok=True)
    state_file = cache / "results.json"
    state = json.loads(state_file.read_text()) if state_file.exists() and not args.fast else {}
    state.setdefault("rows", {})

    def record(key, value):
        state["rows"][key] = value
        state_file.write_text(json.dumps(state, indent=1))
        print(key, value, flush=True)

    old, old_tok = load_model(OLD)
    new, new_tok = load_model(NEW)
    for tok in (old_tok, new_tok):
        tok.padding_side = "left"
    train, _ = items("train", args.train_items)
    validation, _ = items("validation", args.validation_items)
    test, scorer = items("test", args.test_items)
    shots, _ = items("shots", FEW_SHOT)

    rows = state["rows"]
    main_rows = (
        "old base alone",
        "old fine-tuned (LoRA)",
        "old + PRT reward (training view)",
        "new base alone",
        "new + PRT reward across tokenizers",
        "new + EFT across tokenizers",
    )
    if not (all(n in state["rows"] for n in main_rows) and "speed" in state):
        began = time.perf_counter()
        reward = train_reward(old, old_tok, train, args.steps, str(cache / "reward"))
        state["reward_training_seconds"] = time.perf_counter() - began
        began = time.perf_counter()
        old_ft = lora_finetune(old, old_tok, train, args.steps, str(cache / "old_ft"))
        state["old_ft_seconds"] = time.perf_counter() - began
        plain = {
            "old base alone": (old, old_tok, None),
            "old fine-tuned (LoRA)": (old_ft, old_tok, None),
            "old + PRT reward (training view)": (
                old,
                old_tok,
                lambda mask: [PRTLogitsProcessor(reward, mask, tokenizer=old_tok)],
            ),
            "new base alone": (new, new_tok, None),
        }
        for name, (model, tok, processors) in plain.items():
            if name not in rows:
                record(
                    name,
                    evaluate(
                        lambda b, m=model, t=tok, p=processors: run_plain(m, t, b, scorer, processors=p),
                        test,
                        args.batch,
                        name,
                    ),
                )

        def cross(method: str, scale: float) -> CrossTokenizerPRTModel:
            if method == "prt":
                return PRTModel(
                    new, reward, tokenizer=new_tok, reward_tokenizer=old_tok, transfer_scale=scale
                )
            return CrossTokenizerPRTModel.from_models(
                new, new_tok, old, old_tok, old_ft, method="eft", transfer_scale=scale
            )

        for method, label in (
            ("prt", "new + PRT reward across tokenizers"),
            ("eft", "new + EFT across tokenizers"),
        ):
            if label in rows:
                continue
            model = cross(method, 1.0)
            validation_scores = {}
            for scale in SCALES:
                model.transfer_scale = scale
                validation_scores[scale] = evaluate(
                    lambda b, m=model: run_engine(m, b, scorer),
                    validation,
                    args.batch,
                    f"{label} validation s={scale}",
                )["accuracy"]
            best = max(SCALES, key=lambda s: (validation_scores[s], -abs(s - 1)))
            model.transfer_scale = best
            result = evaluate(lambda b, m=model: run_engine(m, b, scorer), test, args.batch, label)
            record(label, {**result, "s": best, "validation": validation_scores})

        if "speed" not in state:
            prt_model, eft_model = (
                cross("prt", rows["new + PRT reward across tokenizers"]["s"]),
                cross("eft", 1.0),
            )

            makers = {
                "new base alone": (fixed_steps(new, new_tok), [new]),
                "new + PRT (MCV)": (fixed_steps(prt_model, prt_model.tokenizer), [new, *old_side(prt_model)]),
                "new + EFT (MCV)": (fixed_steps(eft_model, eft_model.tokenizer), [new, *old_side(eft_model)]),
            }
            state["speed"] = decoding_speed({k: go for k, (go, _) in makers.items()}, test[:8])
            state["work"] = {k: forward_work(go, nets, test[:8]) for k, (go, nets) in makers.items()}
            state_file.write_text(json.dumps(state, indent=1))

    if "ensemble" not in args.skip:
        few = {
            "SmolLM2 alone (few-shot)": lambda b: run_plain(old, old_tok, b, scorer, shots),
            "Gemma-3 alone (few-shot)": lambda b: run_plain(new, new_tok, b, scorer, shots),
        }
        for mode in ("mean", "product"):
            ensemble = CommonVocabEnsemble.from_models(
                [old, new], [old_tok, new_tok], mode=mode, max_hypotheses=8, prune_ratio=1e-8
            )
            few[f"MCV ensemble ({mode}, few-shot)"] = lambda b, e=ensemble: run_engine(e, b, scorer, shots)
        for name, run in few.items():
            if name not in rows:
                record(name, evaluate(run, test, args.batch, name))

    if "new fine-tuned (LoRA, oracle)" not in rows:
        new_ft = lora_finetune(new, new_tok, train, args.steps, str(cache / "new_ft"))
        record(
            "new fine-tuned (LoRA, oracle)",
            evaluate(lambda b: run_plain(new_ft, new_tok, b, scorer), test, args.batch, "new fine-tuned"),
        )
        del new_ft

    if "same-tokenizer" not in args.skip:
        same_tokenizer_rows(state, record, old, old_tok, train, test, scorer, args, cache)

    markdown = render(state, args)
    if not args.fast:
        state_file.write_text(json.dumps(state, indent=1))
        write_section("prt_transfer", markdown)
    print(markdown)
    return markdown


def same_tokenizer_rows(state, record, new, tokenizer, train, test, scorer, args, cache) -> None:
    """The same-tokenizer table: SmolLM2-135M-Instruct as the new base, its first half of layers (continued-
    pretrained for `--pretrain-steps` on offline prose) as the old base; PRT and EFT as logits processors."""
    rows = state["rows"]
    names = [
        f"same tokenizer: {n}"
        for n in ("half-depth old alone", "half-depth old fine-tuned (LoRA)", "new + PRT reward", "new + EFT")
    ]
    if all(n in rows for n in names) and "same_tokenizer_speed" in state:
        return
    half = pretrained_half_depth(new, tokenizer, args.pretrain_steps, cache / "half_base", state)
    reward = train_reward(half, tokenizer, train, args.steps, str(cache / "half_reward"))
    half_ft = lora_finetune(half, tokenizer, train, args.steps, str(cache / "half_ft"))
    systems = {
        names[0]: (half, None),
        names[1]: (half_ft, None),
        names[2]: (new, lambda mask: [PRTLogitsProcessor(reward, mask, tokenizer=tokenizer)]),
        names[3]: (new, lambda mask: [EFTLogitsProcessor(half_ft, half, mask, vocab_size=len(tokenizer))]),
    }
    for name, (model, processors) in systems.items():
        if name not in rows:
            record(
                name,
                evaluate(
                    lambda b, m=model, p=processors: run_plain(m, tokenizer, b, scorer, processors=p),
                    test,
                    args.batch,
                    name,
                ),
            )

    makers = {
        "new base alone": (fixed_steps(new, tokenizer), [new]),
        "new + PRT": (fixed_steps(new, tokenizer, systems[names[2]][1]), [new, reward.model]),
        "new + EFT": (fixed_steps(new, tokenizer, systems[names[3]][1]), [new, half_ft, half]),
    }
    state["same_tokenizer_speed"] = decoding_speed({k: go for k, (go, _) in makers.items()}, test[:8])
    state["same_tokenizer_work"] = {k: forward_work(go, nets, test[:8]) for k, (go, nets) in makers.items()}


def pretrained_half_depth(model, tokenizer, steps: int, folder: Path, state: dict):
    """The first half of `model`'s layers, continued-pretrained for `steps` on offline prose (kept in
    `folder`, reused by a later run)."""
    from benchmarks.bench_prt_language import half_depth, pretraining_ids, train_on_prose

    if (folder / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval().requires_grad_(False)
    torch.manual_seed(0)
    half = half_depth(model).requires_grad_(True)  # PRTTrainer froze `model` (the old base) in place
    optimizer = torch.optim.AdamW(half.parameters(), lr=3e-4)
    began = time.perf_counter()
    train_on_prose(
        half,
        pretraining_ids(tokenizer),
        steps,
        optimizer,
        label="continued pretraining of the half-depth old base",
    )
    state["same_tokenizer_pretrain_seconds"] = time.perf_counter() - began
    half.requires_grad_(False).save_pretrained(folder)
    return half


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound at 0 % and 100 %, where the normal one collapses)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def render(state: dict, args) -> str:
    rows = state["rows"]

    def cell(name):
        row = rows.get(name)
        if row is None:
            return "| " + name + " | not run | | |"
        extra = f"s = {row['s']} (validation accuracy by s: {row['validation']})" if "s" in row else ""
        low, high = wilson(row["accuracy"], row["n"])
        return f"| {name} | {100 * row['accuracy']:.1f} ({100 * low:.1f}–{100 * high:.1f}) | {row['n']} | {extra} |"

    table = ["| system | accuracy % (95 % CI) | test items | notes |", "|---|---|---|---|"]
    order = [
        "old base alone",
        "new base alone",
        "old fine-tuned (LoRA)",
        "old + PRT reward (training view)",
        "new + PRT reward across tokenizers",
        "new + EFT across tokenizers",
        "new fine-tuned (LoRA, oracle)",
    ]
    table += [cell(n) for n in order]
    ensemble = [n for n in rows if "few-shot" in n]
    out = [
        "## PRT across tokenizers (SmolLM2-135M-Instruct reward → Gemma-3-270M), basic_arithmetic",
        "",
        f"Command: `OMP_NUM_THREADS=2 python -m benchmarks.bench_prt_transfer --test-items {args.test_items} "
        f"--steps {args.steps}`. Task: reasoning-gym {TASK[0]} {TASK[1]}, zero-shot prompt `Q: ...\\nA:`, "
        f"greedy, answer up to the first newline. {args.train_items} training items, LoRA r=16 for {args.steps} "
        f"steps of 16 (reward and fine-tunes alike), {args.validation_items} validation items for s.",
        "",
        *table,
    ]
    if "speed" in state:
        speed = state["speed"]
        out += [
            "",
            "Decoding speed, batch 8, 8 new tokens (steps per second, best of 2; network calls and query tokens",
            "per step counted with forward hooks):",
            "",
            *speed_table("system", speed, state.get("work", {})),
        ]
        prt, eft = speed["new + PRT (MCV)"], speed["new + EFT (MCV)"]
        out += ["", f"PRT vs EFT across tokenizers: {prt / eft:.2f}x."]
    if ensemble:
        out += [
            "",
            f"MCV ensemble on the same test set ({FEW_SHOT}-shot prompts):",
            "",
            "| system | accuracy % (95 % CI) | test items | |",
            "|---|---|---|---|",
        ]
        out += [cell(n) for n in ensemble]
    same = [n for n in rows if n.startswith("same tokenizer: ")]
    if same:
        out += [
            "",
            "Same tokenizer (SmolLM2-135M-Instruct new base; its first 15 of 30 layers, continued-pretrained for "
            f"{args.pretrain_steps} steps of 8x256 tokens, as the old base; PRT and EFT as logits processors):",
            "",
            "| system | accuracy % (95 % CI) | test items | |",
            "|---|---|---|---|",
        ]
        out += [cell("old base alone").replace("old base alone", "new base alone (SmolLM2)")]
        out += [cell(n) for n in same]
        out += [
            cell("old fine-tuned (LoRA)").replace("old fine-tuned (LoRA)", "new fine-tuned (LoRA, oracle)")
        ]
    if "same_tokenizer_speed" in state:
        speed = state["same_tokenizer_speed"]
        out += ["", *speed_table("same tokenizer, batch 8", speed, state.get("same_tokenizer_work", {}))]
        out += ["", f"PRT vs EFT with a shared tokenizer: {speed['new + PRT'] / speed['new + EFT']:.2f}x."]
    out += ["", *targets(state)]
    restored = [n for n, row in rows.items() if "restored_from" in row]
    if restored:
        out += [
            "",
            f"Carried over from an earlier run of the same command (its cache was lost; figures read back from "
            f"this file): {', '.join(restored)}.",
        ]
    return "\n".join(out)


def speed_table(title: str, speed: dict, work: dict) -> list[str]:
    base = speed["new base alone"]
    head = f"| {title} | steps/s | vs new base alone |"
    if not work:
        return [head, "|---|---|---|", *(f"| {k} | {v:.2f} | {v / base:.3f}x |" for k, v in speed.items())]
    lines = [head + " network calls / step | query tokens / step |", "|---|---|---|---|---|"]
    for name, value in speed.items():
        done = work[name]
        lines.append(
            f"| {name} | {value:.2f} | {value / base:.3f}x | {done['calls per step']:.2f} | "
            f"{done['query tokens per step']:.1f} |"
        )
    return lines


def targets(state: dict) -> list[str]:
    """The issue's targets, each stated as met or missed from the measured rows (with the reason for a miss)."""
    rows = state["rows"]

    def acc(name):
        return rows[name]["accuracy"] if name in rows else None

    def interval(name):
        return wilson(rows[name]["accuracy"], rows[name]["n"])

    def pct(x):
        return f"{100 * x:.1f} %"

    out = []
    old, old_ft = acc("old base alone"), acc("old fine-tuned (LoRA)")
    if old is not None and old_ft is not None:
        gain = old_ft - old
        out.append(
            f"- Task choice: the old base's LoRA fine-tune gains {100 * gain:.1f} points over the old base alone "
            f"({'qualifies' if gain >= 0.3 else 'does not qualify'}: at least 30 asked)."
        )
    new, oracle = acc("new base alone"), acc("new fine-tuned (LoRA, oracle)")
    prt, eft = acc("new + PRT reward across tokenizers"), acc("new + EFT across tokenizers")
    if None not in (new, oracle, prt, eft):
        recovered = (prt - new) / (oracle - new) if oracle > new else float("nan")
        low, high = interval("new + PRT reward across tokenizers")
        out.append(
            f"- Across tokenizers, new + PRT ({pct(prt)}) recovers {100 * recovered:.0f} % of the gap between the "
            f"new base alone ({pct(new)}) and its LoRA oracle ({pct(oracle)}): "
            f"{'met' if recovered >= 0.5 else 'missed'} (at least half asked). Against new + EFT ({pct(eft)}): "
            f"{'met' if eft <= high else 'missed'} (EFT {'within or below' if eft <= high else 'above'} PRT's "
            f"interval {pct(low)}–{pct(high)})."
        )
    if "speed" in state:
        ratio = state["speed"]["new + PRT (MCV)"] / state["speed"]["new + EFT (MCV)"]
        line = f"- Decoding speed across tokenizers, PRT vs EFT: {ratio:.2f}x: {'met' if ratio >= 1.3 else 'missed'} (1.3x asked)."
        work = state.get("work")
        if ratio < 1.3 and work:
            prt_work, eft_work = work["new + PRT (MCV)"], work["new + EFT (MCV)"]
            line += (
                " Across tokenizers the normalisers do not cancel, so PRT needs pi_old explicitly, reduced with its"
                " own hypotheses. PRT makes fewer sequential network calls per step than EFT"
                f" ({prt_work['calls per step']:.2f} against {eft_work['calls per step']:.2f}: the old base and its"
                " adapter share one mixed-adapter forward), what a GPU pays for at this batch; but it feeds more"
                f" query tokens ({prt_work['query tokens per step']:.0f} against"
                f" {eft_work['query tokens per step']:.0f} per step: the base on pi_old's and pi_theta's histories"
                " and the adapter on pi_theta's, against the base and the fine-tune once each), what a CPU pays"
                " for. One hypothesis set shared by pi_old and pi_theta would bring PRT's tokens down to EFT's."
            )
        out.append(line)
    members = [n for n in rows if "few-shot" in n and "alone" in n]
    ensembles = [n for n in rows if "few-shot" in n and "ensemble" in n]
    if members and ensembles:
        best = max(members, key=acc)
        top = max(ensembles, key=acc)
        beats = interval(top)[0] > interval(best)[1]
        out.append(
            f"- MCV ensemble: its best mode ({top}, {pct(acc(top))}) against its best member ({best}, "
            f"{pct(acc(best))}): {'met' if beats else 'missed'} (outside the interval asked)."
            + (
                ""
                if beats
                else " A member far weaker than the other drags the combination below the stronger one."
            )
        )
    same = "same tokenizer: "
    same_prt, same_eft = acc(same + "new + PRT reward"), acc(same + "new + EFT")
    half_ft = acc(same + "half-depth old fine-tuned (LoRA)")
    if None not in (same_prt, same_eft, half_ft, old, old_ft):
        low, high = interval(same + "new + PRT reward")
        recovered = (same_prt - old) / (old_ft - old) if old_ft > old else float("nan")
        out.append(
            f"- Same tokenizer: new + PRT {pct(same_prt)} (interval {pct(low)}–{pct(high)}) against new + EFT "
            f"{pct(same_eft)}: {'tied within the interval' if low <= same_eft <= high else 'apart'}. The "
            f"half-depth old base learns the task only to {pct(half_ft)} with its own LoRA, so both transfers "
            f"carry little: PRT recovers {100 * recovered:.0f} % of the gap between SmolLM2 alone and its LoRA "
            "fine-tune."
        )
    if "same_tokenizer_speed" in state:
        speed = state["same_tokenizer_speed"]
        ratio = speed["new + PRT"] / speed["new + EFT"]
        out.append(
            f"- Decoding speed with a shared tokenizer, PRT vs EFT: {ratio:.2f}x: "
            f"{'met' if ratio >= 1.3 else 'missed'} (1.3x asked)."
        )
    return ["Targets:", "", *out] if out else []


if __name__ == "__main__":
    main()
