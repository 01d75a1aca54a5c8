"""`hf-coop ensemble`: generate with models of different tokenizers through their common vocabulary."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from hf_coop.vocab.engine.settings import BOUNDED_MAX_HYPOTHESES, BOUNDED_PRUNE_RATIO
from hf_coop.vocab.ensemble import MODES, CommonVocabEnsemble, load_ensemble
from hf_coop.vocab.mcv import SPLITS
from hf_coop.vocab.prompt_boundary import PROMPT_BOUNDARIES


def add_ensemble_arguments(p: argparse.ArgumentParser, flag: str = "--model") -> None:
    """Members, weights, mode and pruning (shared by `hf-coop ensemble` and `hf-coop score --ensemble`)."""
    p.add_argument(flag, action="append", dest="members", help="member model (repeatable)")
    p.add_argument(
        "--weights", type=float, nargs="+", help="one non-negative weight per member (default equal)"
    )
    p.add_argument(
        "--mode", choices=MODES, default="mean", help="mean of probabilities or product of experts"
    )
    add_bound_arguments(p)
    p.add_argument("--split", choices=SPLITS, default="common", help="how members split tokens into the MCV")
    add_prompt_boundary_argument(p)


def add_bound_arguments(p: argparse.ArgumentParser) -> None:
    """`--max-hypotheses` and `--prune-ratio`, named and defaulted as in the library (`EngineSettings`)."""
    p.add_argument(
        "--max-hypotheses",
        "--k",
        "--top-k",
        dest="max_hypotheses",
        type=int,
        default=BOUNDED_MAX_HYPOTHESES,
        help="live hypotheses kept per model and row (0: no cap, exact and possibly slow; --k and --top-k are "
        "old names)",
    )
    p.add_argument(
        "--prune-ratio",
        type=float,
        default=BOUNDED_PRUNE_RATIO,
        help="drop hypotheses lighter than this fraction of the heaviest; the dropped mass is reported",
    )


def add_prompt_boundary_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompt-boundary",
        choices=PROMPT_BOUNDARIES,
        default="tail",
        help="condition on the prompt's last bytes over all their tokenizations (tail), on all its text "
        "(exact), or on its canonical tokens (canonical)",
    )


def ensemble_from_args(args: argparse.Namespace, default: Sequence[str]) -> CommonVocabEnsemble:
    return load_ensemble(
        args.members or list(default),
        args.weights,
        args.mode,
        args.max_hypotheses or None,
        args.prune_ratio,
        args.split,
        prompt_boundary=args.prompt_boundary,
    )


def _run_ensemble(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from hf_coop.models import DEMO_MODELS

    ensemble = ensemble_from_args(args, DEMO_MODELS)
    if args.chat:
        inputs = ensemble.tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], return_tensors="pt"
        )
    else:
        inputs = ensemble.tokenizer(args.prompt, return_tensors="pt")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    print(args.prompt, end="", flush=True)
    ensemble.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature if args.sample else None,
        top_p=args.top_p if args.sample else None,
        streamer=TextStreamer(ensemble.tokenizer, skip_prompt=True, skip_special_tokens=True),
    )
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble", help="generate with models of different tokenizers through their common vocabulary"
    )
    p.add_argument("prompt")
    add_ensemble_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=40, help="in common-vocabulary tokens")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in every member's chat template")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_run_ensemble)
