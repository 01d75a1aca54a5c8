"""Ensemble two language models with different tokenizers through their maximal common vocabulary.

    .venv/bin/python examples/ensemble_generate.py           # SmolLM2-135M-Instruct + Gemma-3-270M (offline)
    .venv/bin/python examples/ensemble_generate.py --fast    # two tiny in-process models, in seconds

1. The maximal common vocabulary (MCV) of the two tokenizers, with its report.
2. Greedy text from each model alone and from the ensemble (`generate`, the model form).
3. The same ensemble as a logits processor on the first model's own `generate`: the same greedy text.
4. Bits per byte of a passage under the ensemble.
"""

from __future__ import annotations

import argparse

import torch

from hf_coop import (
    CommonVocabEnsemble,
    CommonVocabLogitsProcessor,
    ensemble_logprob,
    load_model,
    maximal_common_vocabulary,
)
from hf_coop.testing import (
    bundled_passage,
    tiny_byte_level_tokenizer,
    tiny_causal_lm,
    tiny_sentencepiece_tokenizer,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="member (repeatable; default: the two demo models)")
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--fast", action="store_true", help="use two tiny in-process models")
    args = parser.parse_args(argv)
    if args.fast:
        tokenizers = [tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()]
        models = [tiny_causal_lm(tokenizers[0]), tiny_causal_lm(tokenizers[1], arch="gpt2", seed=1)]
    else:
        loaded = [load_model(name) for name in args.model or ["smollm2-135m-instruct", "gemma-3-270m"]]
        models, tokenizers = [m for m, _ in loaded], [t for _, t in loaded]

    passage = bundled_passage()[: 160 if args.fast else 800]
    _, report = maximal_common_vocabulary(*tokenizers, split="common", text=passage)
    print(
        f"MCV: {report.size} strings ({report.dropped_by_closure} dropped by merge closure); members' splits "
        f"agree on {report.boundary_agreement:.1%} of token boundaries"
    )
    for model, tokenizer in zip(models, tokenizers):
        inputs = tokenizer(args.prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        alone = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print(f"{model.name_or_path or type(model).__name__} alone: {args.prompt}{alone}")

    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, prune_ratio=1e-4)
    inputs = ensemble.tokenizer(args.prompt, return_tensors="pt")
    out = ensemble.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    text = ensemble.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"ensemble (mean)      : {args.prompt}{text}")

    processor = CommonVocabLogitsProcessor(ensemble, driver=0)
    driver_inputs = processor.encode(args.prompt)
    with torch.no_grad():
        out = models[0].generate(
            **driver_inputs, logits_processor=[processor], max_new_tokens=args.max_new_tokens, do_sample=False
        )
    processed = processor.decode(out[0, driver_inputs["input_ids"].shape[1] :])
    print(f"as logits processor  : {args.prompt}{processed}")

    score = ensemble_logprob(ensemble, passage, max_hypotheses=4, prune_ratio=1e-4)
    print(f"passage under the ensemble: {score.bits_per_byte:.4f} bits/byte over {score.n_tokens} MCV tokens")
    return {
        "ensemble": text,
        "processor": processed,
        "bits_per_byte": score.bits_per_byte,
        "mcv_size": report.size,
    }


if __name__ == "__main__":
    main()
