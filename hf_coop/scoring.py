"""Score a text under a causal LM: log-probability in nats and bits per byte (`hf-coop score`).

Convention (shared/DESIGN.md §5): the text is conditioned on the model's start token (BOS, or EOS where
the tokenizer has no BOS) and its first token is scored. The canonical score uses `tokenizer(text)`'s ids.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclasses.dataclass
class TextScore:
    """A text's log-probability; `bits_per_byte` divides by the text's UTF-8 length."""

    nats: float
    n_bytes: int
    n_tokens: int

    @property
    def bits_per_byte(self) -> float:
        return -self.nats / (math.log(2) * self.n_bytes)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "bits_per_byte": self.bits_per_byte}


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a text is conditioned on: BOS, else EOS (GPT-2's document separator)."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition the text on; set one")
    return token_id


def check_text(text: str) -> bytes:
    if not text:
        raise ValueError("the text is empty; there is nothing to score")
    return text.encode("utf-8")


def masked_log_softmax(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """float32 log-softmax over the tokenizer's ids only (output heads are often padded beyond it)."""
    logits = logits[..., :vocab_size]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if torch.isnan(logits).any():
        raise ValueError("the model produced NaN logits; check its dtype (fp16 overflow?) and weights")
    return torch.log_softmax(logits, dim=-1)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(target) per position, over the tokenizer's ids only, without materialising the log-softmax."""
    logits = logits[..., :vocab_size]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    normalizer = torch.logsumexp(logits, dim=-1)
    if torch.isnan(normalizer).any():
        raise ValueError("the model produced NaN logits; check its dtype (fp16 overflow?) and weights")
    return logits.gather(-1, targets[..., None])[..., 0] - normalizer


@torch.no_grad()
def canonical_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    window: int = 1024,
    stride: int | None = None,
    progress: bool = False,
) -> TextScore:
    """log p(canonical tokens of `text` | start token), scored in overlapping windows of `window` tokens.

    Each window after the first re-reads `window - stride` tokens of context and scores only new tokens,
    as the usual strided-perplexity recipe does.
    """
    n_bytes = len(check_text(text))
    ids = [start_token_id(tokenizer)] + tokenizer(text, add_special_tokens=False)["input_ids"]
    stride = stride or window // 2
    if not 0 < stride < window:
        raise ValueError(f"stride must be in (0, window); got stride={stride}, window={window}")
    device = model.device
    total = 0.0
    scored = 1  # ids[:scored] are context already scored (the start token itself is never scored)
    n_windows = 1 + math.ceil(max(len(ids) - window, 0) / stride)
    with tqdm(total=n_windows, desc="scoring", unit="window", disable=not progress) as bar:
        while scored < len(ids):
            end = min(window if scored == 1 else scored + stride, len(ids))
            begin = max(0, end - window)
            input_ids = torch.tensor([ids[begin:end]], device=device)
            logits = model(input_ids=input_ids).logits[0, scored - begin - 1 : -1]
            total += (
                target_logprobs(logits, input_ids[0, scored - begin :], len(tokenizer)).double().sum().item()
            )
            scored = end
            bar.update(1)
    return TextScore(nats=total, n_bytes=n_bytes, n_tokens=len(ids) - 1)


def read_text_argument(text: str | None, file: str | None) -> str:
    """Text from the argument, from a file, or from stdin ('-' or no argument with piped input)."""
    if text is not None and file is not None:
        raise ValueError("give the text either as an argument or with --file, not both")
    if file is not None:
        try:
            with open(file, "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no such file: {file}") from e
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{file} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 4]!r})"
            ) from e
    if text is None or text == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("no text given: pass it as an argument, with --file, or on stdin")
        return sys.stdin.read()
    return text


def _run_score(args: argparse.Namespace) -> int:
    from hf_coop.models import load_model

    text = read_text_argument(args.text, args.file)
    check_text(text)
    if args.ensemble:
        from hf_coop.vocab.ensemble import score_command

        return score_command(args, text)
    model, tokenizer = load_model(args.model)
    progress = not args.json
    args.top_k = args.top_k or None
    result = {"model": args.model}
    result.update(
        _prefixed(
            canonical_logprob(model, tokenizer, text, window=args.window, progress=progress), "canonical_"
        )
    )
    result.update(nats=result["canonical_nats"], bits_per_byte=result["canonical_bits_per_byte"])
    if args.marginal or args.sub_vocab:
        from hf_coop.vocab.marginal import canonical_sub_sequence_logprob, prefix_logprob
        from hf_coop.vocab.sub_vocabulary import SubVocabulary

        marginal = prefix_logprob(model, tokenizer, text, args.top_k, args.prune_ratio, progress=progress)
        result.update(_prefixed(marginal, "marginal_"))
        result.update(
            nats=marginal.nats, bits_per_byte=marginal.bits_per_byte, truncated_mass=marginal.truncated_mass
        )
        if args.sub_vocab:
            nested = SubVocabulary.parse(args.sub_vocab, tokenizer).nested_table(tokenizer)
            reduced = canonical_sub_sequence_logprob(
                model, tokenizer, text, nested, args.top_k, args.prune_ratio, progress
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
    p.add_argument(
        "--top-k",
        type=int,
        default=256,
        help="hypotheses carried per step by the marginal/reduced scorers (K-LVR); 0 = no cap (exact, can be slow)",
    )
    p.add_argument(
        "--prune-ratio",
        type=float,
        default=1e-8,
        help="drop hypotheses lighter than this fraction of the heaviest; the dropped mass is reported",
    )
    p.add_argument(
        "--ensemble",
        action="append",
        help="score under the common-vocabulary ensemble of these models (repeatable; uses --top-k, --prune-ratio)",
    )
    p.add_argument("--weights", type=float, nargs="+", help="ensemble member weights (default equal)")
    p.add_argument("--mode", choices=("mean", "product"), default="mean", help="ensemble combination")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_run_score)
