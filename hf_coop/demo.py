"""`hf-coop demo`: the README's main job, on the two real offline models."""

from __future__ import annotations

import argparse
import time

import torch

from hf_coop.models import DEMO_MODELS, load_model
from hf_coop.scoring import canonical_logprob
from hf_coop.testing import bundled_passage

DEFAULT_PROMPT = "The capital of France is"


@torch.no_grad()
def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def run_demo(models: list[str], prompt: str, max_new_tokens: int) -> None:
    passage = bundled_passage()
    print(f"Passage: {len(passage.encode())} bytes of English prose (bundled). Prompt: {prompt!r}\n")
    for name in models:
        start = time.perf_counter()
        model, tokenizer = load_model(name)
        loaded = time.perf_counter() - start
        score = canonical_logprob(model, tokenizer, passage)
        start = time.perf_counter()
        text = greedy_continuation(model, tokenizer, prompt, max_new_tokens)
        elapsed = time.perf_counter() - start
        print(
            f"{name} ({DEMO_MODELS[name].description if name in DEMO_MODELS else name}; loaded in {loaded:.1f}s)"
        )
        print(f"  passage: {score.bits_per_byte:.4f} bits/byte ({score.n_tokens} tokens)")
        print(f"  greedy:  {prompt}{text!s}  [{elapsed:.2f}s]\n")


def _run(args: argparse.Namespace) -> int:
    run_demo(args.model or list(DEMO_MODELS), args.prompt, args.max_new_tokens)
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the two real demo models side by side (no arguments needed)")
    p.add_argument(
        "--model", action="append", help="model to include (repeatable; default: both demo models)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.set_defaults(func=_run)
