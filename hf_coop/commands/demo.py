"""`hf-coop demo`: the README's main job. Two real models with different tokenizers (SmolLM2-135M-Instruct,
byte-level BPE; Gemma-3-270M, SentencePiece) each alone, then cooperating through their maximal common
vocabulary: greedy text, bits per byte on the bundled passage, and time per generated token."""

from __future__ import annotations

import argparse
import time

import torch

from hf_coop.commands.ensemble import add_bound_arguments
from hf_coop.models import DEMO_MODELS, bundled_passage, load_model
from hf_coop.scoring import canonical_logprob
from hf_coop.vocab.engine.settings import BOUNDED_MAX_HYPOTHESES, BOUNDED_PRUNE_RATIO

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


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_demo(
    models: list[str],
    prompt: str,
    max_new_tokens: int,
    weights: list[float] | None = None,
    mode: str = "mean",
    max_hypotheses: int | None = BOUNDED_MAX_HYPOTHESES,
    prune_ratio: float = BOUNDED_PRUNE_RATIO,
    score_bytes: int = 400,
) -> None:
    from hf_coop.vocab.ensemble import CommonVocabEnsemble
    from hf_coop.vocab.scoring import ensemble_logprob

    passage = bundled_passage().encode()[:score_bytes].decode("utf-8", "ignore")
    print(
        f"Passage: the first {len(passage.encode())} bytes of the bundled English prose. Prompt: {prompt!r}\n"
    )
    loaded = []
    for name in models:
        (model, tokenizer), load_s = _timed(lambda name=name: load_model(name))
        loaded.append((model, tokenizer))
        score = canonical_logprob(model, tokenizer, passage)
        text, gen_s = _timed(lambda m=model, t=tokenizer: greedy_continuation(m, t, prompt, max_new_tokens))
        n_new = len(tokenizer(prompt + text, add_special_tokens=False)["input_ids"]) - len(
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        print(
            f"{name} alone ({DEMO_MODELS[name].description if name in DEMO_MODELS else name}; loaded in {load_s:.1f}s)"
        )
        print(f"  passage: {score.bits_per_byte:.4f} bits/byte ({score.n_tokens} tokens)")
        print(f"  greedy:  {prompt}{text}")
        print(
            f"  {1000 * gen_s / max(n_new, 1):.0f} ms per token, {1000 * gen_s / max(len(text.encode()), 1):.0f} ms per byte\n"
        )

    ensemble, build_s = _timed(
        lambda: CommonVocabEnsemble.from_models(
            [m for m, _ in loaded],
            [t for _, t in loaded],
            weights,
            mode,
            max_hypotheses,
            prune_ratio,
            names=models,
        )
    )
    print(
        f"Ensemble ({mode}, weights {[round(w, 3) for w in ensemble.weights]}) over their maximal common vocabulary "
        f"({ensemble.config.mcv_size} strings; built in {build_s:.1f}s)"
    )
    score, score_s = _timed(lambda: ensemble_logprob(ensemble, passage, max_hypotheses, prune_ratio))
    print(
        f"  passage: {score.bits_per_byte:.4f} bits/byte ({score.n_tokens} MCV tokens, scored in {score_s:.1f}s)"
    )
    inputs = ensemble.tokenizer(prompt, return_tensors="pt")
    out, gen_s = _timed(lambda: ensemble.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False))
    new = out[0, inputs["input_ids"].shape[1] :]
    text = ensemble.tokenizer.decode(new, skip_special_tokens=True)
    print(f"  greedy:  {prompt}{text}")
    print(
        f"  {1000 * gen_s / max(len(new), 1):.0f} ms per MCV token, {1000 * gen_s / max(len(text.encode()), 1):.0f} ms per byte"
    )


def _run(args: argparse.Namespace) -> int:
    run_demo(
        args.model or list(DEMO_MODELS),
        args.prompt,
        args.max_new_tokens,
        args.weights,
        args.mode,
        args.max_hypotheses or None,
        args.prune_ratio,
        args.score_bytes,
    )
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="two real models with different tokenizers, alone and as an ensemble (no arguments needed)",
    )
    p.add_argument(
        "--model", action="append", help="model to include (repeatable; default: both demo models)"
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--weights", type=float, nargs="+", help="ensemble weights, one per model (default equal)")
    p.add_argument("--mode", choices=("mean", "product"), default="mean")
    add_bound_arguments(p)
    p.add_argument("--score-bytes", type=int, default=400, help="bytes of the bundled passage to score")
    p.set_defaults(func=_run)
