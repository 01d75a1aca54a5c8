"""The PRT rule and its baselines as tensor functions, shared by the trainer, the processors and the models.

All combinations run in float32 over the first `vocab_size` entries (the tokenizer's length: checkpoints often
carry extra, never-trained head rows) and return normalised log-probabilities; callers that need the head's
full width pad with `pad_vocab`, which gives the extra rows probability zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..vocab.ensemble import normalise_on_common_support


def shared_vocab_size(*logits: torch.Tensor, vocab_size: int | None = None) -> int:
    """The number of entries to combine over: `vocab_size` if given (and covered by every head), else the
    smallest head."""
    smallest = min(t.shape[-1] for t in logits)
    if vocab_size is None:
        return smallest
    if vocab_size > smallest:
        raise ConfigError(
            f"a model's output head has {smallest} entries but the vocabulary has {vocab_size} tokens; "
            "the models do not share this tokenizer"
        )
    return vocab_size


def pad_vocab(log_probs: torch.Tensor, width: int) -> torch.Tensor:
    """Extend the last dimension to `width` with -inf: head rows beyond the tokenizer get probability 0."""
    extra = width - log_probs.shape[-1]
    if extra <= 0:
        return log_probs
    return F.pad(log_probs, (0, extra), value=float("-inf"))


def prt_log_probs(
    base_logits: torch.Tensor,
    reward_logits: torch.Tensor,
    reward_scale: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """PRT (arXiv 2502.12776): `log_softmax(log_softmax(f_base(x)) + r(x) / λ)` over the shared vocabulary.

    Training uses it through the frozen source base; inference through any new base with the same outputs.
    """
    size = shared_vocab_size(base_logits, reward_logits, vocab_size=vocab_size)
    base = F.log_softmax(base_logits[..., :size].float(), dim=-1)
    return F.log_softmax(base + reward_logits[..., :size].float() / reward_scale, dim=-1)


def eft_log_probs(
    new_logits: torch.Tensor,
    finetuned_logits: torch.Tensor,
    base_logits: torch.Tensor,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Emulated fine-tuning baseline: `log π_new + (log π_ft − log π_base)`, renormalised."""
    size = shared_vocab_size(new_logits, finetuned_logits, base_logits, vocab_size=vocab_size)
    new, ft, base = (
        F.log_softmax(t[..., :size].float(), dim=-1) for t in (new_logits, finetuned_logits, base_logits)
    )
    return F.log_softmax(new + ft - base, dim=-1)


def proxy_tuning_log_probs(
    new_logits: torch.Tensor,
    finetuned_logits: torch.Tensor,
    base_logits: torch.Tensor,
    alpha: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Proxy-tuning baseline (Liu et al. 2024): raw scores `s_new + α (s_ft − s_base)`, renormalised."""
    size = shared_vocab_size(new_logits, finetuned_logits, base_logits, vocab_size=vocab_size)
    new, ft, base = (t[..., :size].float() for t in (new_logits, finetuned_logits, base_logits))
    return F.log_softmax(new + alpha * (ft - base), dim=-1)


def transfer_log_probs(
    new_logprobs: torch.Tensor,
    tuned_logprobs: torch.Tensor,
    base_logprobs: torch.Tensor,
    scale: float = 1.0,
) -> torch.Tensor:
    """Steer a new model by a tuned/base pair speaking the same vocabulary (across tokenizers: their
    distributions reduced to the common vocabulary): `log p_new + s (log p_tuned − log p_base)`, renormalised
    over the tokens all three give a positive probability.

    With p_tuned PRT's training view `softmax(log p_base + r/λ)` and s = 1 this is PRT's rule (the normalisers
    cancel); with p_tuned a fine-tuned model it is EFT's. Inputs are normalised log-probabilities."""
    dtype = torch.promote_types(new_logprobs.dtype, torch.float32)  # float64 oracles keep their precision
    stacked = torch.stack([t.to(dtype) for t in (new_logprobs, tuned_logprobs, base_logprobs)])
    safe = stacked.clamp(min=torch.finfo(stacked.dtype).min)
    combined = safe[0] + scale * (safe[1] - safe[2])
    shape = combined.shape  # any leading dimensions, like the other rules
    rows = normalise_on_common_support(combined.reshape(-1, shape[-1]), stacked.reshape(3, -1, shape[-1]))
    return rows.reshape(shape)


def reward_entropy(reward_logits: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """Entropy of `softmax(r)` per position (the paper's optional regulariser), in nats, float32."""
    size = reward_logits.shape[-1] if vocab_size is None else vocab_size
    log_p = F.log_softmax(reward_logits[..., :size].float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)
