"""`hf-coop prt train` (reward-tune through a frozen base) and `hf-coop prt generate` (steer a new base)."""

from __future__ import annotations

import argparse
import os
import sys

from hf_coop.errors import InputError

TEXT_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def add_subcommands(subparsers) -> None:
    prt = subparsers.add_parser(
        "prt", help="Portable Reward Tuning: train a reward once, reuse it on new bases"
    )
    commands = prt.add_subparsers(dest="prt_command", required=True)

    train = commands.add_parser("train", help="train a reward model through a frozen causal LM")
    train.add_argument("--base", required=True, help="source base: demo model name, local folder or hub id")
    train.add_argument("--data", required=True, help="a .txt/.json/.jsonl/.csv file or a `datasets` name")
    train.add_argument("--text-column", default="text", help="column holding the training text")
    train.add_argument("--split", default="train", help="dataset split to train on")
    train.add_argument("--output", required=True, help="folder for checkpoints and the final reward model")
    train.add_argument(
        "--reward-scale",
        "--lambda",
        dest="reward_scale",
        type=float,
        default=1.0,
        help="PRT's λ (the reward is divided by it)",
    )
    train.add_argument("--entropy-weight", type=float, default=0.0, help="α of the entropy regulariser")
    train.add_argument("--lora-r", type=int, default=0, help="train a LoRA adapter of this rank (0: full)")
    train.add_argument("--max-length", type=int, default=256, help="truncate examples to this many tokens")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (overrides epochs)"
    )
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.set_defaults(func=run_train)

    generate = commands.add_parser("generate", help="generate with a new base steered by a PRT reward")
    generate.add_argument("prompt", help="the prompt text")
    generate.add_argument(
        "--model",
        "--base",
        dest="base",
        required=True,
        help="new base: demo model name, local folder or hub id",
    )
    generate.add_argument(
        "--reward",
        required=True,
        help="folder (or hub id) of a saved PRT reward model; one trained over another tokenizer runs over the "
        "common vocabulary of both",
    )
    generate.add_argument(
        "--transfer-scale", type=float, default=1.0, help="s of the cross-tokenizer rule (default 1)"
    )
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--num-beams", type=int, default=1)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template"
    )
    generate.set_defaults(func=run_generate)


def load_text_dataset(data: str, split: str):
    """A local text/JSON/CSV file or a `datasets` name, as one split."""
    from datasets import load_dataset

    if os.path.isfile(data):
        builder = TEXT_FILE_BUILDERS.get(os.path.splitext(data)[1].lower())
        if builder is None:
            raise InputError(f"{data}: unknown file type; use one of {sorted(TEXT_FILE_BUILDERS)}")
        return load_dataset(builder, data_files={split: data}, split=split)
    return load_dataset(data, split=split)


def run_train(args: argparse.Namespace) -> int:
    from transformers import DataCollatorForLanguageModeling

    from hf_coop.models import load_model
    from hf_coop.prt import PRTConfig, PRTTrainer, PRTTrainingArguments

    base, tokenizer = load_model(args.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = load_text_dataset(args.data, args.split)
    if args.text_column not in dataset.column_names:
        raise InputError(f"{args.data} has no column {args.text_column!r} (columns: {dataset.column_names})")
    dataset = dataset.map(
        lambda batch: tokenizer(batch[args.text_column], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=dataset.column_names,
    )
    peft_config = None
    if args.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear")
    training_args = PRTTrainingArguments(
        output_dir=args.output,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
    )
    trainer = PRTTrainer(
        base,
        args=training_args,
        prt_config=PRTConfig(
            reward_scale=args.reward_scale,
            entropy_weight=args.entropy_weight,
            base_model_name_or_path=args.base,
        ),
        peft_config=peft_config,
        processing_class=tokenizer,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    trainer.save_model(args.output)
    print(f"saved the PRT reward model to {args.output}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from hf_coop.models import load_model
    from hf_coop.prt import PRTModel, PRTRewardModel
    from hf_coop.prt.cross_tokenizer import crosses_tokenizers

    new_base, tokenizer = load_model(args.base)
    reward = PRTRewardModel.from_pretrained(args.reward)
    if crosses_tokenizers(reward, tokenizer):
        model = PRTModel(new_base, reward, tokenizer=tokenizer, transfer_scale=args.transfer_scale)
        print(
            f"the reward was trained over another tokenizer (base {reward.prt_config.base_model_name_or_path}): "
            f"generating over the common vocabulary of both ({model.config.mcv_size} strings)",
            file=sys.stderr,
        )
        generate_text(model, model.tokenizer, args, pad_token_id=None)
        return 0
    model = PRTModel(new_base, reward, tokenizer=tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_text(model, tokenizer, args, pad_token_id=pad)
    return 0


def generate_text(model, tokenizer, args: argparse.Namespace, pad_token_id: int | None) -> None:
    """Generate from the prompt (in the chat template with `--chat`) and print the new text."""
    conversation = [{"role": "user", "content": args.prompt}]
    if args.chat and hasattr(tokenizer, "encode_prompts"):  # the common vocabulary's tokenizer
        inputs = tokenizer.apply_chat_template(conversation, return_tensors="pt")
    elif args.chat:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt")
    else:
        inputs = tokenizer(args.prompt, return_tensors="pt")
    options = {} if pad_token_id is None else {"pad_token_id": pad_token_id}
    output = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.sample,
        **options,
    )
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
