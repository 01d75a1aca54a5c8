"""Logits processors that steer `generate` with extra causal LMs: PRT (one reward model) and the EFT and
proxy-tuning baselines (a fine-tuned/base pair). Each extra model follows generate's sequences with its own
KV cache (`FollowerLM`), one new token per step."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from ..errors import ArtifactError, InputError, check_finite
from .config import RewardScaleAlias, resolve_reward_scale
from .core import eft_log_probs, pad_vocab, proxy_tuning_log_probs, prt_log_probs
from .reward_model import PRTRewardModel

REORDER_ERROR = (
    "the sequences changed between steps other than by appending one token per row. Beam search (and other "
    "decoders that reorder rows) cannot be followed by a logits processor, whose extra model keeps its own "
    "cache: use PRTModel(new_base, reward).generate(num_beams=...) instead. If you reuse a processor for a "
    "new generate call, build a new one (or call .reset())"
)


class FollowerLM:
    """A causal LM that follows `generate`'s sequences with its own KV cache and returns next-token logits.

    The first call runs the whole prompt with `attention_mask` (left padding gets position ids counted from
    the first real token); each later call must see the previous sequences plus one token per row, and
    feeds only that token. Rows that were expanded by `num_return_sequences` are followed too; rows that
    were reordered (beam search) are refused, because this cache could not follow them.
    """

    def __init__(
        self, model: torch.nn.Module, attention_mask: torch.Tensor | None = None, use_cache: bool = True
    ):
        self.model = model
        self.prompt_attention_mask = attention_mask
        self.use_cache = use_cache
        self.reset()

    def reset(self) -> None:
        """Forget the followed sequences (start of a new generate call)."""
        self._seen: torch.Tensor | None = None
        self._attention_mask: torch.Tensor | None = None
        self._position_ids: torch.Tensor | None = None
        self._cache = None

    def _start(self, input_ids: torch.Tensor) -> None:
        mask = self.prompt_attention_mask
        if mask is None:
            mask = torch.ones_like(input_ids)
        mask = mask.to(input_ids.device)
        if mask.shape[1] != input_ids.shape[1]:
            raise InputError(
                f"the attention mask has {mask.shape[1]} columns but the prompt has {input_ids.shape[1]} "
                "tokens: pass the attention mask of the prompt given to generate"
            )
        rows, mask_rows = input_ids.shape[0], mask.shape[0]
        if rows != mask_rows:
            if rows % mask_rows:
                raise InputError(f"generate runs {rows} rows but the attention mask has {mask_rows}")
            mask = mask.repeat_interleave(rows // mask_rows, dim=0)  # num_return_sequences copies each prompt
        self._attention_mask = mask
        self._position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._seen is None:
            self._start(input_ids)
            new_ids, positions = input_ids, self._position_ids
        else:
            steps_ok = (
                input_ids.shape[1] == self._seen.shape[1] + 1 and input_ids.shape[0] == self._seen.shape[0]
            )
            if not steps_ok or not torch.equal(input_ids[:, :-1], self._seen):
                raise InputError(REORDER_ERROR)
            new_position = self._position_ids[:, -1:] + 1
            self._attention_mask = torch.cat([self._attention_mask, torch.ones_like(new_position)], dim=1)
            self._position_ids = torch.cat([self._position_ids, new_position], dim=1)
            new_ids, positions = (
                (input_ids[:, -1:], new_position) if self.use_cache else (input_ids, self._position_ids)
            )
        outputs = self.model(
            input_ids=new_ids,
            attention_mask=self._attention_mask,
            position_ids=positions,
            cache=self._cache if self.use_cache else None,
            use_cache=self.use_cache,
        )
        if self.use_cache:
            self._cache = outputs.cache
        self._seen = input_ids
        return outputs.logits[:, -1]


class FollowerLogitsProcessor(LogitsProcessor):
    """Base for processors that combine generate's scores with extra models' next-token logits.

    Subclasses implement `combine(scores, *extra_logits)` returning log-probs over `vocab_size` entries;
    head rows beyond it (padding rows of a larger head) get probability zero.
    """

    def __init__(
        self,
        models: list[torch.nn.Module],
        attention_mask: torch.Tensor | None = None,
        vocab_size: int | None = None,
        use_cache: bool = True,
    ):
        self.followers = [FollowerLM(model, attention_mask, use_cache) for model in models]
        self.vocab_size = vocab_size

    def reset(self) -> None:
        for follower in self.followers:
            follower.reset()

    def combine(self, scores: torch.Tensor, *extra_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_finite(scores, "the new base model", allow_neg_inf=True)
        extra_logits = [follower(input_ids) for follower in self.followers]
        for follower, logits in zip(self.followers, extra_logits, strict=True):
            check_finite(logits, f"the steering model {type(follower.model).__name__}")
        return pad_vocab(self.combine(scores, *extra_logits), scores.shape[-1]).to(scores.dtype)


def _unwrap_reward(reward_model, reward_scale: float | None, vocab_size: int | None, tokenizer):
    """Reward network, λ and vocabulary size from a `PRTRewardModel` (checked against `tokenizer`) or a
    bare model (λ defaults to 1)."""
    if isinstance(reward_model, PRTRewardModel):
        reward_model.check_compatible(tokenizer=tokenizer, who="new base")
        config = reward_model.prt_config
        return (
            reward_model.model,
            config.reward_scale if reward_scale is None else reward_scale,
            config.vocab_size if vocab_size is None else vocab_size,
        )
    if tokenizer is not None and vocab_size is None:
        vocab_size = len(tokenizer)
        head = reward_model.get_output_embeddings().weight.shape[0]
        if head < vocab_size:
            raise ArtifactError(
                f"the reward is a plain model whose head has {head} rows, fewer than the {vocab_size} tokens of the "
                "new base's tokenizer: it speaks another vocabulary, and a plain model records neither its base nor "
                "its tokenizer. Make it a reward: PRTRewardModel(model, reward_config_from_models(PRTConfig(), "
                "old_base, old_tokenizer)) (hf_coop.prt.reward_model; PRTTrainer saves rewards that way), then "
                "PRTModel(new_base, reward, tokenizer=new_tokenizer) applies it across tokenizers"
            )
    return reward_model, 1.0 if reward_scale is None else reward_scale, vocab_size


class PRTLogitsProcessor(RewardScaleAlias, FollowerLogitsProcessor):
    """PRT at inference for `new_base.generate(..., logits_processor=[...])`:
    `log_softmax(log_softmax(s_new) + r(x)/λ)` (arXiv 2502.12776), one reward forward per step.

    Pass the prompt's `attention_mask` for left-padded batches and the new base's `tokenizer` to check the
    vocabulary. Greedy decoding and sampling are supported; with sampling, generate's own temperature/top-k/
    top-p warpers run *before* this processor (on the base's scores), so use `PRTModel` to warp the combined
    distribution, and for beam search (which reorders rows this processor's cache cannot follow).
    """

    def __init__(
        self,
        reward_model: PRTRewardModel | torch.nn.Module,
        attention_mask: torch.Tensor | None = None,
        reward_scale: float | None = None,
        vocab_size: int | None = None,
        tokenizer=None,
        use_cache: bool = True,
        temperature: float | None = None,
    ):
        reward, self.reward_scale, vocab_size = _unwrap_reward(
            reward_model,
            resolve_reward_scale(reward_scale, temperature, "PRTLogitsProcessor"),
            vocab_size,
            tokenizer,
        )
        super().__init__([reward], attention_mask, vocab_size, use_cache)

    def combine(self, scores: torch.Tensor, reward_logits: torch.Tensor) -> torch.Tensor:
        return prt_log_probs(scores, reward_logits, self.reward_scale, self.vocab_size)


class EFTLogitsProcessor(FollowerLogitsProcessor):
    """Emulated fine-tuning baseline: `log π_new + log π_ft − log π_base` (two extra forwards per step)."""

    def __init__(
        self,
        finetuned_model: torch.nn.Module,
        base_model: torch.nn.Module,
        attention_mask: torch.Tensor | None = None,
        vocab_size: int | None = None,
        use_cache: bool = True,
    ):
        super().__init__([finetuned_model, base_model], attention_mask, vocab_size, use_cache)

    def combine(self, scores, finetuned_logits, base_logits):
        return eft_log_probs(scores, finetuned_logits, base_logits, self.vocab_size)


class ProxyTuningLogitsProcessor(FollowerLogitsProcessor):
    """Proxy-tuning baseline: `s_new + α (s_ft − s_base)` on raw scores (two extra forwards per step)."""

    def __init__(
        self,
        finetuned_model: torch.nn.Module,
        base_model: torch.nn.Module,
        alpha: float = 1.0,
        attention_mask: torch.Tensor | None = None,
        vocab_size: int | None = None,
        use_cache: bool = True,
    ):
        super().__init__([finetuned_model, base_model], attention_mask, vocab_size, use_cache)
        self.alpha = alpha

    def combine(self, scores, finetuned_logits, base_logits):
        return proxy_tuning_log_probs(scores, finetuned_logits, base_logits, self.alpha, self.vocab_size)
