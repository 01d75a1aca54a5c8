"""Lossless vocabulary reduction on the real models: bits per byte and greedy generation speed.

    .venv/bin/python -m benchmarks.bench_vocab [--bytes 2000] [--gen-bytes 256] [--models smollm2-135m-instruct gemma-3-270m]

Scoring (held-out Wikipedia prose, conditioned on the start token):
  - canonical: log p(canonical tokens) — what every perplexity tool reports;
  - prefix (all tokenizations) at K: the prefix probability summed over every tokenization, carrying at
    most K hypotheses per byte (each with its full next-token distribution) — by the lossless theorem this
    is also every reduced model's prefix probability; K = 64 is the reference;
  - canonical max-bytes:3 sequence at K: the reduced model's log-probability of T(canonical tokens).
Generation: greedy text of the original model (plain `generate`) vs the reduced model (max-bytes:3, K=1,
and K=300), timed on the same prompts in the same run, with model calls per byte and per original token.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import StoppingCriteriaList

from benchmarks.results import write_section
from hf_coop.assets import wikipedia_prose
from hf_coop.models import load_model
from hf_coop.scoring import canonical_logprob
from hf_coop.vocab.marginal import canonical_sub_sequence_logprob, prefix_logprob
from hf_coop.vocab.reduced_lm import MaxNewBytesCriteria, ReducedVocabLM
from hf_coop.vocab.sub_vocabulary import SubVocabulary
from hf_coop.vocab.token_bytes import token_bytes

PROMPTS = ["The history of the printing press", "def quicksort(items):", "Photosynthesis is the process"]


def bpb(nats: float, n_bytes: int) -> float:
    return -nats / (math.log(2) * n_bytes)


def scoring_rows(name, model, tokenizer, text, ks, prune_ratio) -> list[str]:
    n = len(text.encode())
    canonical = canonical_logprob(model, tokenizer, text)
    rows = [f"| {name} | canonical tokens | – | {canonical.bits_per_byte:.4f} | – | – |"]
    reference = prefix_logprob(model, tokenizer, text, 64, prune_ratio)
    rows.append(
        f"| {name} | prefix, all tokenizations (reference) | 64 | {reference.bits_per_byte:.4f} "
        f"| {reference.histories_evaluated / n:.2f} | {reference.truncated_mass:.1e} |"
    )
    three = SubVocabulary.max_bytes(tokenizer, 3).nested_table(tokenizer)
    for k in ks:
        start = time.perf_counter()
        pref = prefix_logprob(model, tokenizer, text, k, prune_ratio)
        elapsed = time.perf_counter() - start
        rows.append(
            f"| {name} | prefix, all tokenizations (= any reduced model) | {k} | {pref.bits_per_byte:.4f} "
            f"(Δ {pref.bits_per_byte - reference.bits_per_byte:+.1e}) | {pref.histories_evaluated / n:.2f} "
            f"| {pref.truncated_mass:.1e} ({elapsed:.0f}s) |"
        )
        sub = canonical_sub_sequence_logprob(model, tokenizer, text, three, k, prune_ratio)
        rows.append(
            f"| {name} | canonical max-bytes:3 sequence | {k} | {sub.bits_per_byte:.4f} "
            f"| {sub.histories_evaluated / n:.2f} | {sub.truncated_mass:.1e} |"
        )
    return rows


REDUCED_GENERATORS = {"reduced max-bytes:3, K=1": 1, "reduced max-bytes:3, K=300 (≤16 hypotheses)": 300}


def generation_rows(name, model, tokenizer, gen_bytes) -> list[str]:
    """Per generator: [seconds, bytes, model calls, original tokens of the plain text] over all prompts."""
    totals = {label: [0.0, 0, 0, 0] for label in ["plain", *REDUCED_GENERATORS]}
    table = token_bytes(tokenizer)
    identical = True
    for prompt in PROMPTS:
        enc = tokenizer(prompt, return_tensors="pt")
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=gen_bytes // 3, do_sample=False)
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        plain_bytes = table.decode(new)
        _accumulate(totals["plain"], time.perf_counter() - start, len(plain_bytes), len(new), len(new))
        for label, k in REDUCED_GENERATORS.items():
            reduced = ReducedVocabLM.from_model(
                model, tokenizer, "max-bytes:3", top_k=k, max_hypotheses=None if k == 1 else 16
            )
            renc = reduced.tokenizer(prompt, return_tensors="pt")
            width = renc["input_ids"].shape[1]
            budget = StoppingCriteriaList([MaxNewBytesCriteria(reduced.nested, width, len(plain_bytes))])
            start = time.perf_counter()
            gen = reduced.generate(
                **renc, max_new_tokens=len(plain_bytes), do_sample=False, stopping_criteria=budget
            )
            elapsed = time.perf_counter() - start
            got = reduced.nested.decode(gen[0, width:].tolist())[: len(plain_bytes)]
            identical &= k != 1 or got == plain_bytes
            _accumulate(totals[label], elapsed, len(got), reduced.forward_calls, len(new))
    per_byte_plain = totals["plain"][0] / totals["plain"][1]
    rows = [
        f"| {name} | {label} | {1000 * seconds / n_bytes:.1f} | {seconds / n_bytes / per_byte_plain:.2f}× "
        f"| {calls / n_bytes:.3f} | {calls / tokens:.2f} |"
        for label, (seconds, n_bytes, calls, tokens) in totals.items()
    ]
    rows.append(f"| {name} | K=1 text identical to plain greedy | {identical} | | | |")
    return rows


def _accumulate(total: list, seconds: float, n_bytes: int, calls: int, tokens: int) -> None:
    for i, value in enumerate((seconds, n_bytes, calls, tokens)):
        total[i] += value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--bytes", type=int, default=2000)
    parser.add_argument("--gen-bytes", type=int, default=256)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 300])
    parser.add_argument("--section", default="vocab", help="RESULTS.md section (one per model set)")
    parser.add_argument("--prune-ratio", type=float, default=1e-6, help="relative pruning inside the K cap")
    args = parser.parse_args()
    text = wikipedia_prose(args.bytes, skip_bytes=100_000)
    score_rows, gen_rows = [], []
    for name in args.models:
        model, tokenizer = load_model(name)
        gen_rows += generation_rows(name, model, tokenizer, args.gen_bytes)
        score_rows += scoring_rows(name, model, tokenizer, text, args.ks, args.prune_ratio)
    body = [
        f"## Lossless vocabulary reduction (`hf_coop.vocab`): {', '.join(args.models)}",
        "",
        f"`.venv/bin/python -m benchmarks.bench_vocab --models {' '.join(args.models)} --bytes {args.bytes} "
        f"--gen-bytes {args.gen_bytes} --ks {' '.join(map(str, args.ks))} --prune-ratio {args.prune_ratio} "
        f"--section {args.section}` "
        f"({len(text.encode())} bytes of held-out Wikipedia prose; fp32, CPU, torch threads {torch.get_num_threads()})",
        "",
        "Bits per byte (lower is better). Prefix rows carry at most K hypotheses per byte, each also dropped "
        "below `prune_ratio` × the heaviest; they are lower bounds, and the dropped mass bounds the gap:",
        "",
        "| model | score | K (hypotheses) | bits/byte | model calls/byte | dropped mass |",
        "|---|---|---|---|---|---|",
        *score_rows,
        "",
        f"Greedy generation of ~{args.gen_bytes} bytes on {len(PROMPTS)} prompts (same text for plain and K=1):",
        "",
        "| model | generator | ms/byte | time vs plain | model calls/byte | model calls/original token |",
        "|---|---|---|---|---|---|",
        *gen_rows,
    ]
    write_section(args.section, "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
