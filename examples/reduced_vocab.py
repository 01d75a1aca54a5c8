"""Re-express a causal LM over a smaller vocabulary and check that nothing is lost.

    .venv/bin/python examples/reduced_vocab.py            # SmolLM2-135M-Instruct (offline demo model)
    .venv/bin/python examples/reduced_vocab.py --fast     # a tiny in-process model, in seconds

1. K=1 greedy generation over tokens of at most 3 bytes reproduces the model's own greedy text.
2. A text's probability summed over all its tokenizations is the same number under every vocabulary.
3. Saved, the reduction is a small config (no weights) that `AutoModelForCausalLM` reloads onto its base.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hf_coop import ReducedVocabLM, canonical_logprob, load_model, prefix_logprob
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--fast", action="store_true", help="use a tiny in-process model")
    args = parser.parse_args(argv)
    workdir = tempfile.TemporaryDirectory()
    if args.fast:  # a tiny model, saved so that the reduction can record where its base lives
        tokenizer = tiny_byte_level_tokenizer()
        tiny_causal_lm(tokenizer).save_pretrained(Path(workdir.name, "base"))
        tokenizer.save_pretrained(Path(workdir.name, "base"))
        args.model = str(Path(workdir.name, "base"))
    model, tokenizer = load_model(args.model)

    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", tokens_per_boundary=1)
    inputs = reduced.tokenizer(args.prompt, return_tensors="pt")
    out = reduced.generate(**inputs, max_new_tokens=30, do_sample=False)
    reduced_text = reduced.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    plain = model.generate(**tokenizer(args.prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False)
    plain_text = tokenizer.decode(
        plain[0, len(tokenizer(args.prompt)["input_ids"]) :], skip_special_tokens=True
    )
    print(f"plain greedy        : {args.prompt}{plain_text}")
    print(f"max-bytes:3, K=1    : {args.prompt}{reduced_text}  ({reduced.config.vocab_size} sub-tokens)")

    text = "It is a truth universally acknowledged"
    canonical = canonical_logprob(model, tokenizer, text)
    marginal = prefix_logprob(model, tokenizer, text, max_hypotheses=64, prune_ratio=1e-8)
    print(f"canonical tokens    : {canonical.bits_per_byte:.4f} bits/byte")
    print(
        f"all tokenizations   : {marginal.bits_per_byte:.4f} bits/byte (dropped mass {marginal.truncated_mass:.1e})"
    )

    folder = Path(workdir.name, "reduced")
    reduced.save_pretrained(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    reloaded = AutoModelForCausalLM.from_pretrained(folder, model=model, tokenizer=tokenizer)
    again = reloaded.generate(**inputs, max_new_tokens=30, do_sample=False)
    print(f"saved and reloaded  : {size / 1e3:.0f} kB, same text: {torch.equal(again, out)}")
    workdir.cleanup()
    return {
        "plain": plain_text,
        "reduced": reduced_text,
        "canonical": canonical.nats,
        "marginal": marginal.nats,
        "reloaded_equal": torch.equal(again, out),
    }


if __name__ == "__main__":
    main()
