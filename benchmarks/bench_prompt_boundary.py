"""Prompts that end inside a word: plain `generate`, transformers' token healing and the three
`prompt_boundary` modes, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_prompt_boundary

1. "The capital of Fr" / "The capital of France is " with SmolLM2 and Gemma-3 (reduced to their own
   vocabulary, K=1 greedy) and with their MCV ensemble: the greedy continuation under each mode.
2. Boundary prompts cut from held-out prose (inside a word, after a space, inside a number) and from Python
   source (inside an identifier): how often the greedy continuation completes the original text's word.
3. Cost of "tail" and "exact" against a canonical prefill, 512-token prompts at batch 8 (time to the first
   next-token distribution).
"""

from __future__ import annotations

import argparse
import inspect
import json as json_module
import random
import re
import time

import torch

from benchmarks.corpus import held_out_passages
from benchmarks.results import write_section
from hf_coop.models import load_model
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.reduced_lm import ReducedVocabLM

MODES = ("canonical", "tail", "exact")
KINDS = ("inside a word", "after a space", "inside a number", "inside an identifier")
PRUNED = {"max_hypotheses": 8, "prune_ratio": 1e-4}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cut_points(text: str, kind: str) -> list[int]:
    """Character offsets at which a prompt of this kind may end."""
    patterns = {
        "inside a word": r"(?<=[A-Za-z]{2})(?=[a-z]{2})",
        "after a space": r"(?<= )(?=[A-Za-z]{3})",
        "inside a number": r"(?<=\d)(?=\d)",
        "inside an identifier": r"(?<=[a-z]_)(?=[a-z]{2})|(?<=[a-z]{3})(?=[a-z]+_)",
    }
    return [m.start() for m in re.finditer(patterns[kind], text) if m.start() >= 120]


def boundary_prompts(n_per_kind: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(kind, prompt, the rest of the word the prompt cuts) from held-out prose and Python source."""
    rng = random.Random(seed)
    prose = held_out_passages(60_000, passage_bytes=600)
    code = [inspect.getsource(json_module.decoder), inspect.getsource(json_module.encoder)]
    out = []
    for kind in KINDS:
        sources = code if kind == "inside an identifier" else prose
        found = [(text, at) for text in sources for at in cut_points(text, kind)]
        for text, at in rng.sample(found, min(n_per_kind, len(found))):
            rest = re.match(r"[A-Za-z0-9_]+", text[at:]).group(0)
            out.append((kind, text[max(0, at - 300) : at], rest))
    return out


def continuations(model, prompts: list[str], new_tokens: int) -> list[str]:
    enc = model.tokenizer(prompts, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    return model.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def plain_continuations(model, tokenizer, prompts: list[str], new_tokens: int, healing: bool) -> list[str]:
    texts = []
    for prompt in prompts:  # one at a time: token healing does not batch
        enc = tokenizer(prompt, return_tensors="pt")
        try:
            out = model.generate(
                **enc,
                max_new_tokens=new_tokens,
                do_sample=False,
                token_healing=healing,
                tokenizer=tokenizer if healing else None,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        except Exception as e:  # noqa: BLE001 - token healing crashes on some tokenizers; count it as a miss
            texts.append(f"<error: {type(e).__name__}>")
            continue
        full = tokenizer.decode(out[0], skip_special_tokens=True)
        prompt_text = tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True)
        # healing rewrites the prompt's last token; the continuation is what follows the prompt's text
        texts.append(full[len(prompt_text) :] if full.startswith(prompt_text) else "<prompt rewritten>")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--section", default="prompt_boundary")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    models = {name: load_model(name) for name in ("smollm2-135m-instruct", "gemma-3-270m")}
    lines = ["## Prompt boundary: prompts that end inside a word (`prompt_boundary`)", ""]
    command = (
        "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_prompt_boundary "
        f"--per-kind {args.per_kind} --new-tokens {args.new_tokens} --section {args.section}"
    )
    lines += [f"`{command}` (CPU, torch threads {torch.get_num_threads()}, fp32)", ""]

    # 1. the two probe prompts
    probes = ["The capital of Fr", "The capital of France is "]
    lines += [
        '**Probe prompts**, greedy, each model reduced to its own vocabulary (`sub_vocab="original"`, K=1):',
        "",
    ]
    lines += ["| model | prompt | " + " | ".join(MODES) + " |", "|---|---|" + "---|" * len(MODES)]
    for name, (model, tokenizer) in models.items():
        outs = {
            mode: continuations(
                ReducedVocabLM.from_model(
                    model, tokenizer, "original", tokens_per_boundary=1, prompt_boundary=mode, **PRUNED
                ),
                probes,
                6,
            )
            for mode in MODES
        }
        for i, probe in enumerate(probes):
            cells = " | ".join(f"`{outs[mode][i]!r}`" for mode in MODES)
            lines.append(f"| {name} | `{probe!r}` | {cells} |")
    ensembles = {
        mode: CommonVocabEnsemble.from_models(
            [m for m, _ in models.values()], [t for _, t in models.values()], prompt_boundary=mode, **PRUNED
        )
        for mode in MODES
    }
    for probe in probes:
        cells = " | ".join(f"`{continuations(ensembles[mode], [probe], 6)[0]!r}`" for mode in MODES)
        lines.append(f"| MCV ensemble (mean) | `{probe!r}` | {cells} |")
    lines.append("")

    # 2. completion rates over boundary prompts
    prompts = boundary_prompts(args.per_kind)
    texts = [p for _, p, _ in prompts]
    model, tokenizer = models["smollm2-135m-instruct"]
    systems = {
        "plain `generate`": lambda: plain_continuations(model, tokenizer, texts, args.new_tokens, False),
        "`generate(token_healing=True)`": lambda: plain_continuations(
            model, tokenizer, texts, args.new_tokens, True
        ),
    }
    for mode in MODES:
        reduced = ReducedVocabLM.from_model(
            model, tokenizer, "original", tokens_per_boundary=1, prompt_boundary=mode, **PRUNED
        )
        systems[f'`prompt_boundary="{mode}"`'] = lambda r=reduced: continuations(r, texts, args.new_tokens)
    rows = []
    for label, run in systems.items():
        outs, seconds = timed(run)
        hits = [out.startswith(rest) for out, (_, _, rest) in zip(outs, prompts)]
        by_kind = [
            sum(h for h, (k, _, _) in zip(hits, prompts) if k == kind)
            / max(1, sum(1 for k, _, _ in prompts if k == kind))
            for kind in KINDS
        ]
        rows.append((label, sum(hits) / len(hits), by_kind, seconds))
        print(label, sum(hits), "/", len(hits), flush=True)
    lines += [
        f"**Completion of the cut word**: {len(prompts)} prompts ({args.per_kind} per kind; prose from held-out "
        "Wikipedia, identifiers from Python's `json` sources; each prompt is the 300 characters before the cut), "
        f"SmolLM2-135M-Instruct, greedy, {args.new_tokens} new tokens; a hit is a continuation that starts "
        "with the rest of the original word. Reduced rows: the model's own vocabulary, K=1.",
        "",
        "| system | all | " + " | ".join(KINDS) + " | seconds |",
        "|---|---|" + "---|" * len(KINDS) + "---|",
    ]
    for label, total, by_kind, seconds in rows:
        cells = " | ".join(f"{x:.0%}" for x in by_kind)
        lines.append(f"| {label} | **{total:.0%}** | {cells} | {seconds:.1f} |")
    lines.append("")

    # 3. cost at 512-token prompts, batch 8
    passages = held_out_passages(40_000, passage_bytes=4000)
    long_prompts = []
    for text in passages[:8]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:512]
        cut = tokenizer.decode(ids)
        long_prompts.append(cut[: len(cut) - 3])  # end inside the last word
    costs = {}
    for mode in MODES:
        reduced = ReducedVocabLM.from_model(
            model, tokenizer, "original", tokens_per_boundary=1, prompt_boundary=mode, **PRUNED
        )
        enc = reduced.tokenizer(long_prompts, return_tensors="pt")
        cache = reduced.new_cache()
        _, seconds = timed(lambda r=reduced, e=enc, c=cache: r(**e, cache=c))
        costs[mode] = (seconds, cache.scheduler.forward_calls[0])
    base = costs["canonical"][0]
    lines += [
        "**Cost** of conditioning 8 prompts of 512 tokens each (ending inside a word) up to the first next-token "
        "distribution, SmolLM2, at most 8 hypotheses per row:",
        "",
        "| prompt_boundary | seconds | vs canonical | model forwards |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        seconds, forwards = costs[mode]
        lines.append(f"| {mode} | {seconds:.2f} | **{seconds / base:.2f}×** | {forwards} |")
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
