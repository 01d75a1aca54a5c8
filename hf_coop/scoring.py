"""Score a text under a causal LM: log-probability in nats and bits per byte.

Convention: the text is conditioned on the model's start token (BOS, or EOS where the tokenizer has no BOS)
and its first token is scored. The canonical score uses `tokenizer(text)`'s ids. A scored text is text: a
special-token string inside it ("<|endoftext|>", "<s>") is read as its characters, never as the control token.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_coop.errors import ConfigError, InputError, log_normalizer

logger = logging.getLogger(__name__)


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


def max_positions(config) -> int | None:
    """The positions a model was built for (None where its config does not say)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer with more ids than the model's output head; warn when it has far fewer (heads are
    padded by a few rows, not by a tenth: the tokenizer may belong to another model)."""
    head = model.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else None
    if rows is None:
        return
    if rows < len(tokenizer):
        raise ConfigError(
            f"the model's output head has {rows} rows but the tokenizer has {len(tokenizer)} tokens: this "
            "tokenizer does not belong to this model"
        )
    if len(tokenizer) < 0.9 * rows:
        logger.warning(
            "the tokenizer has %d tokens but the model's output head %d rows: it may belong to another model "
            "(pass the model's own tokenizer)",
            len(tokenizer),
            rows,
        )


def check_text(text: str) -> bytes:
    if not text:
        raise InputError("the text is empty; there is nothing to score")
    return text.encode("utf-8")


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str, who: str = "the tokenizer") -> list[int]:
    """`text`'s canonical token ids, read as text: special-token strings inside it are split into ordinary
    tokens (`split_special_tokens=True`), and characters the tokenizer cannot spell (its unknown token, where it
    has no byte fallback) are refused by name, since no score of such a text is the model's."""
    encoding = tokenizer(
        text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=tokenizer.is_fast
    )
    ids = list(encoding["input_ids"])
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        where = [i for i, t in enumerate(ids) if t == unk]
        if "offset_mapping" in encoding:
            chars = sorted({text[a:b] for a, b in (encoding["offset_mapping"][i] for i in where)})
            what = f"the characters {chars}"
        else:
            what = f"{len(where)} characters"
        raise InputError(
            f"{who} cannot spell {what} of the text (it maps them to {tokenizer.unk_token!r} and has no "
            "byte fallback), so the model gives the text probability zero; remove or replace them"
        )
    return ids


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
    window: int | None = None,
    stride: int | None = None,
    progress: bool = False,
) -> TextScore:
    """log p(canonical tokens of `text` | start token), scored in overlapping windows of `window` tokens.

    Each window after the first re-reads `window - stride` tokens of context and scores only new tokens,
    as the usual strided-perplexity recipe does. `window` defaults to 1024, or the model's positions if fewer.
    """
    n_bytes = len(check_text(text))
    check_tokenizer_fits(model, tokenizer)
    ids = [start_token_id(tokenizer)] + text_token_ids(tokenizer, text)
    limit = max_positions(model.config.get_text_config(decoder=True))
    window = window or min(1024, limit or 1024)
    if limit is not None and window > limit:
        raise ConfigError(
            f"window={window} is longer than the model's {limit} positions; use window <= {limit}"
        )
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
