"""The vocabulary engine against plain `generate` and against its own unbatched use, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_engine                 # CPU, the full table
    .venv/bin/python -m benchmarks.bench_engine --device cuda --section engine_cuda   # a GPU, in minutes

Rows (each ratio is ours / the baseline on the same work in the same run):
1. `ReducedVocabLM` max-bytes:3, K=1 greedy vs plain greedy `generate`, 64 new bytes per prompt, batch 1/8/32.
2. Original-model forwards per generation step at batch 8 (from row 1).
3. KV memory: 8 hypotheses per row, batch 8, 512-token prompts, vs plain batch-8 `generate`'s cache.
4. The SmolLM2 + Gemma-3 MCV ensemble, greedy at batch 8, vs both members' plain batch-8 `generate`.
5. Exact marginal scoring (max 300 hypotheses, prune ratio 1e-4) of held-out prose, all passages in one batch
   vs one passage at a time.
6. Tiny in-process models (model cost near zero): ensemble time per step vs both members' plain `generate`.
7. Building a saved two-model ensemble beyond loading its models: empty vs warm table cache.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from benchmarks.corpus import held_out_passages
from benchmarks.results import write_section
from hf_coop.models import load_model
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm, tiny_sentencepiece_tokenizer
from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.reduced_lm import MaxNewBytesCriteria, ReducedVocabLM
from hf_coop.vocab.scoring import prefix_logprob
from hf_coop.vocab.token_bytes import token_bytes

PROMPTS = [
    "The history of the printing press",
    "def quicksort(items):",
    "Photosynthesis is the process",
    "The capital of France is",
    "Once upon a time, there was",
    "import numpy as np\n",
    "The largest planet in the solar system",
    "In 1969, Neil Armstrong",
]


class NewBytes(StoppingCriteria):
    """Plain `generate`'s byte budget: stop each row once its new tokens spell `n` bytes."""

    def __init__(self, tokenizer, width: int, n: int):
        self.table, self.width, self.n = token_bytes(tokenizer), width, n

    def __call__(self, input_ids, scores, **kwargs):
        done = [len(self.table.decode(row[self.width :].tolist())) >= self.n for row in input_ids]
        return torch.tensor(done, device=input_ids.device)


class Forwards:
    """Counts a module's forward calls."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, *args):
        self.calls += 1


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def plain_greedy(model, tokenizer, prompts, n_bytes, suppress_eos=False, **kwargs):
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    width = enc["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        return timed(
            lambda: model.generate(
                **enc,
                max_new_tokens=4 * n_bytes,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([NewBytes(tokenizer, width, n_bytes)]),
                suppress_tokens=([eos] if isinstance(eos, int) else list(eos or []))
                if suppress_eos
                else None,
                **kwargs,
            )
        ), width


def engine_greedy(model, prompts, n_bytes, suppress_eos=False, **kwargs):
    enc = model.tokenizer(prompts, return_tensors="pt").to(model.device)
    width = enc["input_ids"].shape[1]
    nested = model.nested if hasattr(model, "nested") else model.members[0].nested
    with torch.no_grad():
        return timed(
            lambda: model.generate(
                **enc,
                max_new_tokens=4 * n_bytes,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([MaxNewBytesCriteria(nested, width, n_bytes)]),
                suppress_tokens=list(model.generation_config.eos_token_id or []) if suppress_eos else None,
                **kwargs,
            )
        ), width


def reduced_rows(model, tokenizer, batches, n_bytes) -> tuple[list[str], dict]:
    reduced = ReducedVocabLM.from_model(
        model, tokenizer, "max-bytes:3", tokens_per_boundary=1, prompt_boundary="canonical"
    )
    table = token_bytes(tokenizer)
    counter = Forwards(model)
    rows, facts = [], {}
    for batch in batches:
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
        counter.calls = 0
        (plain, plain_s), plain_width = plain_greedy(model, tokenizer, prompts, n_bytes)
        plain_calls, counter.calls = counter.calls, 0
        (ours, ours_s), width = engine_greedy(reduced, prompts, n_bytes)
        steps = ours.shape[1] - width
        same = all(
            reduced.nested.decode(o[width:].tolist())[:n_bytes]
            == table.decode(p[plain_width:].tolist())[:n_bytes]
            for o, p in zip(ours, plain)
        )
        rows.append(
            f"| {batch} | {1000 * plain_s:.0f} | {1000 * ours_s:.0f} | **{ours_s / plain_s:.2f}×** | "
            f"{plain_calls} | {counter.calls} | {steps} | {counter.calls / steps:.2f} | {same} |"
        )
        facts[batch] = (ours_s / plain_s, counter.calls / steps)
    return rows, facts


def kv_row(model, tokenizer, prompt_tokens, batch, n_bytes) -> str:
    """Peak bytes of the engine's key/value store against plain `generate`'s cache, same prompts."""
    text = " ".join(held_out_passages(8 * prompt_tokens * batch, 1000))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompts = [tokenizer.decode(ids[i * prompt_tokens : (i + 1) * prompt_tokens]) for i in range(batch)]
    (out, _), _ = plain_greedy(model, tokenizer, prompts, n_bytes, return_dict_in_generate=True)
    cache = out.cache
    plain_bytes = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    reduced = ReducedVocabLM.from_model(
        model, tokenizer, "max-bytes:3", max_hypotheses=8, prune_ratio=1e-4, prompt_boundary="canonical"
    )
    engine_cache = reduced.new_cache()
    (_, seconds), _ = engine_greedy(reduced, prompts, n_bytes, cache=engine_cache)
    member = engine_cache.scheduler.members[0]
    store = member.runner.store
    hypotheses = len(member.cover.hyps) / batch
    return (
        f"| {batch} × {prompt_tokens} tokens, {n_bytes} new bytes | {plain_bytes / 2**20:.1f} | "
        f"{store.peak_bytes / 2**20:.1f} | **{store.peak_bytes / plain_bytes:.2f}×** | {hypotheses:.1f} | "
        f"{store.cached_positions() / batch:.0f} |"
    )


def ensemble_row(models, tokenizers, batch, n_bytes) -> str:
    ensemble = CommonVocabEnsemble.from_models(
        models, tokenizers, max_hypotheses=8, prune_ratio=1e-4, prompt_boundary="canonical"
    )
    prompts = (PROMPTS * 4)[:batch]
    plain_seconds, plain_bytes = 0.0, 0
    for model, tokenizer in zip(models, tokenizers):
        (out, seconds), width = plain_greedy(model, tokenizer, prompts, n_bytes, suppress_eos=True)
        plain_seconds += seconds
        plain_bytes += sum(len(token_bytes(tokenizer).decode(r[width:].tolist())) for r in out) / len(models)
    counters = [Forwards(m) for m in models]
    (out, seconds), width = engine_greedy(ensemble, prompts, n_bytes, suppress_eos=True)
    nested = ensemble.members[0].nested
    ours_bytes = sum(len(nested.decode(r[width:].tolist())) for r in out)
    ratio = (seconds / ours_bytes) / (plain_seconds / plain_bytes)
    steps = out.shape[1] - width
    calls = " + ".join(str(c.calls) for c in counters)
    return (
        f"| SmolLM2-135M-Instruct + Gemma-3-270M, batch {batch}, {n_bytes} bytes per row | "
        f"{1000 * plain_seconds / plain_bytes:.1f} | {1000 * seconds / ours_bytes:.1f} | **{ratio:.2f}×** | "
        f"{steps} | {calls} |"
    )


def scoring_rows(model, tokenizer, passages, alone_passages) -> list[str]:
    settings = EngineSettings(max_hypotheses=300, prune_ratio=1e-4)
    n_bytes = sum(len(p.encode()) for p in passages)
    scores, seconds = timed(
        lambda: prefix_logprob(model, tokenizer, passages, settings=settings, progress=True)
    )
    nats = sum(s.nats for s in scores)
    subset = passages[:alone_passages]
    sub_bytes = sum(len(p.encode()) for p in subset)
    batched_subset, batched_s = timed(lambda: prefix_logprob(model, tokenizer, subset, settings=settings))
    alone, alone_s = timed(lambda: [prefix_logprob(model, tokenizer, p, settings=settings) for p in subset])
    gap = abs(sum(s.nats for s in batched_subset) - sum(s.nats for s in alone)) / (sub_bytes / 1000)
    return [
        f"| all {len(passages)} passages in one batch | {n_bytes} | {seconds / 60:.1f} | "
        f"{-nats / (math.log(2) * n_bytes):.4f} | {scores[0].forward_calls} | – |",
        f"| first {len(subset)} passages, one batch | {sub_bytes} | {batched_s / 60:.2f} | "
        f"{-sum(s.nats for s in batched_subset) / (math.log(2) * sub_bytes):.4f} | "
        f"{batched_subset[0].forward_calls} | **{alone_s / batched_s:.2f}×** faster |",
        f"| the same, one passage at a time | {sub_bytes} | {alone_s / 60:.2f} | "
        f"{-sum(s.nats for s in alone) / (math.log(2) * sub_bytes):.4f} | {sum(s.forward_calls for s in alone)} | "
        f"Δ {gap:.1e} nats/kB |",
    ]


def tiny_row(batch: int, steps: int, device: str) -> str:
    tokenizers = [tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()]
    models = [
        tiny_causal_lm(tokenizers[0]).to(device),
        tiny_causal_lm(tokenizers[1], arch="gpt2", seed=1).to(device),
    ]
    prompts = (PROMPTS * 4)[:batch]
    plain = 0.0
    for model, tokenizer in zip(models, tokenizers):
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
        _, seconds = timed(
            lambda m=model, e=enc, t=tokenizer: m.generate(
                **e, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=t.pad_token_id
            )
        )
        plain += seconds / steps
    ensemble = CommonVocabEnsemble.from_models(
        models, tokenizers, max_hypotheses=8, prune_ratio=1e-4, prompt_boundary="canonical"
    )
    enc = ensemble.tokenizer(prompts, return_tensors="pt")
    _, seconds = timed(
        lambda: ensemble.generate(**enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    )
    ours = seconds / steps
    return f"| tiny byte-level BPE + SentencePiece, batch {batch} | {1000 * plain:.1f} | {1000 * ours:.1f} | **{ours / plain:.2f}×** |"


def load_rows(names: list[str]) -> list[str]:
    """Build time of a saved ensemble beyond loading its models, with an empty and a warm table cache."""
    from hf_coop.vocab import table_cache

    loaded = [load_model(n) for n in names]  # on the CPU: building the tables does not touch the weights
    models, tokenizers = [m for m, _ in loaded], [t for _, t in loaded]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        saved = os.environ.get("HF_COOP_TABLES")
        os.environ["HF_COOP_TABLES"] = folder
        try:
            for label in ("empty table cache (first time)", "warm table cache"):
                table_cache._memory.clear()
                fresh = [
                    t.__class__.from_pretrained(t.name_or_path) for t in tokenizers
                ]  # no in-memory caches
                _, seconds = timed(lambda f=fresh: CommonVocabEnsemble.from_models(models, f, names=names))
                rows.append(f"| {label} | {seconds:.1f} |")
        finally:
            if saved is None:
                os.environ.pop("HF_COOP_TABLES")
            else:
                os.environ["HF_COOP_TABLES"] = saved
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-bytes", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--score-bytes", type=int, default=20_000)
    parser.add_argument("--alone-passages", type=int, default=6, help="passages also scored one at a time")
    parser.add_argument("--section", default="engine")
    args = parser.parse_args()
    started = time.time()
    names = ["smollm2-135m-instruct", "gemma-3-270m"]
    smol, smol_tok = load_model(names[0], device=args.device)
    gemma, gemma_tok = load_model(names[1], device=args.device)
    passages = held_out_passages(args.score_bytes, 1000)

    generation, facts = reduced_rows(smol, smol_tok, args.batches, args.new_bytes)
    kv = kv_row(smol, smol_tok, args.prompt_tokens, 8, args.new_bytes)
    ensemble = ensemble_row([smol, gemma], [smol_tok, gemma_tok], 8, args.new_bytes)
    scoring = scoring_rows(smol, smol_tok, passages, args.alone_passages)
    tiny = tiny_row(8, 40, args.device)
    loading = load_rows(names)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, torch threads {torch.get_num_threads()}"
    )
    body = [
        "## The vocabulary engine (`hf_coop.vocab.engine`): batched, shared KV, one forward per model per step",
        "",
        f"`{'OMP_NUM_THREADS=1 ' if args.device == 'cpu' else ''}.venv/bin/python -m benchmarks.bench_engine "
        f"--device {args.device} --batches {' '.join(map(str, args.batches))} --new-bytes {args.new_bytes} "
        f"--prompt-tokens {args.prompt_tokens} --score-bytes {args.score_bytes} --alone-passages "
        f"{args.alone_passages} --section {args.section}` ({device}, fp32, {(time.time() - started) / 60:.0f} min)",
        "",
        f"**Reduced generation**: SmolLM2-135M-Instruct over max-bytes:3 at K=1, greedy, {args.new_bytes} new bytes "
        "per prompt (every row runs until the slowest has its bytes), against plain greedy `generate` on the "
        "same prompts with the same byte budget. *Forwards/step*: original-model calls per generation step.",
        "",
        "| batch | plain ms | reduced ms | time vs plain | plain forwards | reduced forwards | steps | forwards/step | same text |",
        "|---|---|---|---|---|---|---|---|---|",
        *generation,
        "",
        "**KV memory**: peak bytes of the engine's key/value buffers (max-bytes:3, exact next tokens, at most 8 "
        "hypotheses per row, prune ratio 1e-4) against plain batch `generate`'s cache at its end, same prompts.",
        "",
        "| rows × prompt | plain MiB | engine peak MiB | ratio | live hypotheses/row | cached tokens/row |",
        "|---|---|---|---|---|---|",
        kv,
        "",
        "**Ensemble**: MCV ensemble (mean, at most 8 hypotheses per member, prune ratio 1e-4), greedy, against "
        "running both members' plain `generate` on the same prompts (EOS suppressed in both, so every row "
        "writes its budget); time per generated byte.",
        "",
        "| members | both plain ms/byte | ensemble ms/byte | ratio | steps | forwards per member |",
        "|---|---|---|---|---|---|",
        ensemble,
        "",
        "**Exact marginal scoring** (`prefix_logprob`, all tokenizations, at most 300 hypotheses, prune ratio "
        "1e-4) of held-out Wikipedia passages (≤ 1 kB each), SmolLM2-135M-Instruct.",
        "",
        "| scored | bytes | minutes | bits/byte | forwards | batch vs alone |",
        "|---|---|---|---|---|---|",
        *scoring,
        "",
        "**Tiny models** (a GPU-like regime: the models cost almost nothing, so the engine's bookkeeping shows).",
        "",
        "| members | both plain ms/step | ensemble ms/step | ratio |",
        "|---|---|---|---|",
        tiny,
        "",
        "**Building a saved ensemble** (MCV, common split, nested tables and tries of both members) beyond "
        "loading the two models:",
        "",
        "| table cache | seconds |",
        "|---|---|",
        *loading,
    ]
    write_section(args.section, "\n".join(body))
    print("\n".join(body))
    print(facts)


if __name__ == "__main__":
    main()
