"""`hf-coop score`: a text's log-probability under a model (canonical, over all tokenizations, over a
reduced vocabulary) or under a common-vocabulary ensemble, in nats and bits per byte."""

from __future__ import annotations

import argparse
import json
import sys

from hf_coop.commands.ensemble import add_bound_arguments, add_prompt_boundary_argument
from hf_coop.errors import InputError
from hf_coop.scoring import TextScore, canonical_logprob, check_text

DEFAULT_MODEL = "smollm2-135m-instruct"


def read_text_argument(text: str | None, file: str | None) -> str:
    """Text from the argument, from a file, or from stdin ('-' or no argument with piped input)."""
    if text is not None and file is not None:
        raise InputError("give the text either as an argument or with --file, not both")
    if file is not None:
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no such file: {file}") from e
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{file} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 4]!r})"
            ) from e
    if text is None or text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no text given: pass it as an argument, with --file, or on stdin")
        return sys.stdin.read()
    return text


def _run_score(args: argparse.Namespace) -> int:
    from hf_coop.models import load_model

    text = read_text_argument(args.text, args.file)
    check_text(text)
    if args.context is not None and not (args.ensemble or args.marginal or args.sub_vocab):
        raise SystemExit("--context needs --marginal or --ensemble (canonical scoring takes no context)")
    if args.ensemble:
        return _score_ensemble(args, text)
    model, tokenizer = load_model(args.model)
    progress = not args.json
    args.max_hypotheses = args.max_hypotheses or None
    result = {"model": args.model}
    result.update(
        _prefixed(
            canonical_logprob(model, tokenizer, text, window=args.window, progress=progress), "canonical_"
        )
    )
    result.update(nats=result["canonical_nats"], bits_per_byte=result["canonical_bits_per_byte"])
    if args.marginal or args.sub_vocab:
        from hf_coop.vocab.scoring import canonical_sub_sequence_logprob, prefix_logprob
        from hf_coop.vocab.sub_vocabulary import SubVocabulary

        marginal = prefix_logprob(
            model,
            tokenizer,
            text,
            args.max_hypotheses,
            args.prune_ratio,
            progress=progress,
            context=args.context,
            prompt_boundary=args.prompt_boundary,
        )
        result.update(_prefixed(marginal, "marginal_"))
        result.update(
            nats=marginal.nats, bits_per_byte=marginal.bits_per_byte, truncated_mass=marginal.truncated_mass
        )
        if args.sub_vocab:
            nested = SubVocabulary.parse(args.sub_vocab, tokenizer).nested_table(tokenizer)
            reduced = canonical_sub_sequence_logprob(
                model, tokenizer, text, nested, args.max_hypotheses, args.prune_ratio, progress
            )
            result.update(sub_vocab=args.sub_vocab, **_prefixed(reduced, "reduced_canonical_"))
    result["n_bytes"] = len(text.encode("utf-8"))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model}: {result['n_bytes']} bytes, {result['canonical_n_tokens']} tokens")
    lines = [("canonical tokenization", "canonical_")]
    if "marginal_nats" in result:
        lines.append(("all tokenizations (prefix)", "marginal_"))
    if "reduced_canonical_nats" in result:
        lines.append((f"canonical {args.sub_vocab} sequence", "reduced_canonical_"))
    for label, prefix in lines:
        print(
            f"  {label:<30} {result[prefix + 'nats']:12.3f} nats  {result[prefix + 'bits_per_byte']:.4f} bits/byte"
        )
    if "truncated_mass" in result:
        print(
            f"  pruned probability mass {result['truncated_mass']:.3e} (exact log-prob ≤ {result['marginal_upper_nats']:.3f})"
        )
    return 0


def _score_ensemble(args: argparse.Namespace, text: str) -> int:
    """`hf-coop score --ensemble A --ensemble B`: the ensemble's log-probability of the text's MCV tokens."""
    from hf_coop.vocab.ensemble import load_ensemble
    from hf_coop.vocab.scoring import ensemble_logprob

    ensemble = load_ensemble(
        args.ensemble,
        args.weights,
        args.mode,
        args.max_hypotheses or None,
        args.prune_ratio,
        prompt_boundary=args.prompt_boundary,
    )
    score = ensemble_logprob(
        ensemble, text, args.max_hypotheses or None, args.prune_ratio, context=args.context
    )
    result = {"ensemble": args.ensemble, "weights": ensemble.weights, "mode": args.mode, **score.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"ensemble of {', '.join(args.ensemble)} ({args.mode}): {score.n_bytes} bytes, {score.n_tokens} MCV "
            f"tokens, {score.nats:.3f} nats, {score.bits_per_byte:.4f} bits/byte (pruned mass ≤ {score.truncated_mass:.1e})"
        )
    return 0


def _prefixed(score: TextScore, prefix: str) -> dict:
    return {prefix + k: v for k, v in score.to_dict().items()}


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="log-probability of a text under a causal LM (nats, bits per byte)"
    )
    p.add_argument("text", nargs="?", help="the text ('-' or omitted: read stdin)")
    p.add_argument("--file", help="read the text from this UTF-8 file")
    p.add_argument("--model", default=DEFAULT_MODEL, help="demo model name, local folder or hub id")
    p.add_argument("--window", type=int, default=1024, help="tokens per scoring window for long texts")
    p.add_argument(
        "--marginal", action="store_true", help="also the prefix log-prob summed over all tokenizations"
    )
    p.add_argument(
        "--sub-vocab",
        help="'bytes' or 'max-bytes:N': also score over this reduced vocabulary (implies --marginal)",
    )
    add_bound_arguments(p)
    p.add_argument(
        "--ensemble",
        action="append",
        help="score under the common-vocabulary ensemble of these models (repeatable; uses --max-hypotheses, --prune-ratio)",
    )
    p.add_argument("--weights", type=float, nargs="+", help="ensemble member weights (default equal)")
    p.add_argument("--mode", choices=("mean", "product"), default="mean", help="ensemble combination")
    p.add_argument(
        "--context",
        help="score the text given this context (with --marginal or --ensemble): log P(text | context)",
    )
    add_prompt_boundary_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_run_score)
