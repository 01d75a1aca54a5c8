"""Lossless vocabulary reduction on the real models: bits per byte and greedy generation speed.

    .venv/bin/python -m benchmarks.bench_vocab [--bytes 20000] [--gen-bytes 256] [--models smollm2-135m-instruct gemma-3-270m]

Scoring, on held-out Wikipedia prose cut into passages of at most 1 kB, each conditioned on the start token:
  - canonical: log p(canonical tokens), what every perplexity tool reports;
  - prefix, all tokenizations, at K: the prefix probability summed over every tokenization, carrying at
    most K boundary histories and in-token hypotheses per byte (each history with its full next-token
    distribution). By the lossless theorem it is also every reduced model's prefix probability (the
    recursion over bytes *is* the byte-reduced model's chain rule); the largest K is the reference;
  - canonical max-bytes:3 sequence at K: the reduced model's log-probability of T(canonical tokens).
Generation: greedy text of the original model (plain `generate`) vs the reduced model (max-bytes:3, K=1,
and K=300), timed on the same prompts in the same run, with model calls per byte and per original token.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList

from benchmarks.corpus import held_out_passages
from benchmarks.results import write_section
from hf_coop.models import load_model
from hf_coop.scoring import canonical_logprob
from hf_coop.vocab.reduced_lm import MaxNewBytesCriteria, ReducedVocabLM
from hf_coop.vocab.scoring import canonical_sub_sequence_logprob, prefix_logprob
from hf_coop.vocab.sub_vocabulary import SubVocabulary
from hf_coop.vocab.token_bytes import token_bytes

PROMPTS = ["The history of the printing press", "def quicksort(items):", "Photosynthesis is the process"]


class Totals:
    """Sums of a scorer's results over passages."""

    def __init__(self):
        self.nats = self.bytes = self.calls = self.histories = self.back_ups = self.seconds = 0.0
        self.dropped = 0.0  # largest dropped mass of a passage

    def add(self, score, seconds: float) -> None:
        self.nats += score.nats
        self.bytes += score.n_bytes
        self.calls += getattr(score, "forward_calls", 0)
        self.histories += getattr(score, "histories_evaluated", 0)
        self.back_ups += getattr(score, "back_ups", 0)
        self.dropped = max(self.dropped, getattr(score, "truncated_mass", 0.0))
        self.seconds += seconds

    @property
    def bits_per_byte(self) -> float:
        return -self.nats / (math.log(2) * self.bytes)


def scoring_rows(name, model, tokenizer, passages, ks, sub_ks, prune_ratio) -> list[str]:
    """One row per scorer; every scorer sees every passage."""
    three = SubVocabulary.max_bytes(tokenizer, 3).nested_table(tokenizer)
    scorers = {("canonical tokens", None): lambda text: canonical_logprob(model, tokenizer, text)}
    for k in ks:
        scorers[("prefix, all tokenizations (= any reduced model)", k)] = lambda text, k=k: prefix_logprob(
            model, tokenizer, text, k, prune_ratio
        )
    for k in sub_ks:
        scorers[("canonical max-bytes:3 sequence", k)] = lambda text, k=k: canonical_sub_sequence_logprob(
            model, tokenizer, text, three, k, prune_ratio
        )
    totals = {key: Totals() for key in scorers}
    for text in tqdm(passages, desc=f"{name}: passages", unit="passage"):
        for key, scorer in scorers.items():
            start = time.perf_counter()
            score = scorer(text)
            totals[key].add(score, time.perf_counter() - start)
    reference = totals[("prefix, all tokenizations (= any reduced model)", max(ks))]
    rows = []
    for (label, k), t in totals.items():
        delta = f" (Δ {t.bits_per_byte - reference.bits_per_byte:+.1e})" if label.startswith("prefix") else ""
        cost = (
            f"{t.calls / t.bytes:.2f} | {t.histories / t.bytes:.2f} | {int(t.back_ups)} | {t.dropped:.1e}"
            if k
            else "– | – | – | –"
        )
        rows.append(
            f"| {name} | {label} | {k or '–'} | {t.bits_per_byte:.4f}{delta} | {cost} | {t.seconds / 60:.1f} |"
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
                model, tokenizer, "max-bytes:3", tokens_per_boundary=k, max_hypotheses=None if k == 1 else 16
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
    parser.add_argument("--bytes", type=int, default=20_000)
    parser.add_argument("--passage-bytes", type=int, default=1000)
    parser.add_argument("--gen-bytes", type=int, default=256)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 300])
    parser.add_argument("--sub-ks", type=int, nargs="*", default=[10], help="K of the max-bytes:3 rows")
    parser.add_argument("--section", default="vocab", help="RESULTS.md section (one per model set)")
    parser.add_argument("--prune-ratio", type=float, default=1e-4, help="relative pruning inside the K cap")
    args = parser.parse_args()
    passages = held_out_passages(args.bytes, args.passage_bytes)
    n_bytes = sum(len(p.encode()) for p in passages)
    score_rows, gen_rows = [], []
    for name in args.models:
        model, tokenizer = load_model(name)
        gen_rows += generation_rows(name, model, tokenizer, args.gen_bytes)
        score_rows += scoring_rows(name, model, tokenizer, passages, args.ks, args.sub_ks, args.prune_ratio)
    body = [
        f"## Lossless vocabulary reduction (`hf_coop.vocab`): {', '.join(args.models)}",
        "",
        f"`.venv/bin/python -m benchmarks.bench_vocab --models {' '.join(args.models)} --bytes {args.bytes} "
        f"--passage-bytes {args.passage_bytes} --gen-bytes {args.gen_bytes} --ks {' '.join(map(str, args.ks))} "
        f"--sub-ks {' '.join(map(str, args.sub_ks))} --prune-ratio {args.prune_ratio} --section {args.section}` "
        f"({n_bytes} bytes of held-out Wikipedia prose in {len(passages)} passages, each scored from the start "
        f"token; fp32, CPU, torch threads {torch.get_num_threads()})",
        "",
        "Bits per byte (lower is better). Prefix rows carry at most K hypotheses per byte, each also dropped "
        f"below {args.prune_ratio:g} × the heaviest; they are lower bounds of the exact prefix probability. "
        "Histories pruned in the last 16 bytes are held back unevaluated, and evaluated when the text leaves "
        "every kept hypothesis (*back-ups*). Δ is the difference to the largest K. *Dropped* is the largest "
        "probability mass pruning dropped in one passage.",
        "",
        "| model | score | K | bits/byte | model calls/byte | histories/byte | back-ups | dropped | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
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
