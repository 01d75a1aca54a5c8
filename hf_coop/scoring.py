"""Score a text under a causal LM: log-probability in nats and bits per byte.

Convention: the text is conditioned on the model's start token (BOS, or EOS where the tokenizer has no BOS)
and its first token is scored. The canonical score uses `tokenizer(text)`'s ids.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_coop.errors import ConfigError, InputError, log_normalizer


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
        raise ConfigError(
            "the tokenizer has neither a BOS nor an EOS token to condition the text on; set one"
        )
    return token_id


def check_text(text: str) -> bytes:
    if not text:
        raise InputError("the text is empty; there is nothing to score")
    return text.encode("utf-8")


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(target) per position, over the tokenizer's ids only, without materialising the log-softmax."""
    logits = logits[..., :vocab_size]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    normalizer = log_normalizer(logits, "the model")[..., 0]
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
        raise ConfigError(f"stride must be in (0, window); got stride={stride}, window={window}")
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
