"""PRT as models: a new base and a reward combined into one `GenerationMixin` causal LM (every decoding
strategy, beam search included) or one classifier."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from ..artefacts import (
    atomic_save,
    local_folder,
    push_folder_to_hub,
    render_model_card,
    verify_folder,
    write_manifest,
)
from ..config_utils import ArtifactError, model_fingerprint
from ..errors import ConfigError, check_finite
from ..vocab.engine.settings import EngineSettings
from .config import PRTConfig, PRTModelConfig, RewardScaleAlias, resolve_reward_scale
from .core import pad_vocab, prt_log_probs
from .processors import _unwrap_reward
from .reward_model import PRTRewardModel

REWARD_FOLDER = "reward"


def save_prt_folder(
    save_directory: str | os.PathLike,
    new_base: nn.Module,
    reward: PRTRewardModel,
    rule: str,
    **config_fields: Any,
) -> None:
    """The saved form of every PRT model: `prt_model.json` (the new base's id and fingerprint, plus
    `config_fields`), the reward in `reward/` and a model card whose `rule` says how the reward is applied;
    atomically, with a manifest, never the new base's weights."""
    if not new_base.name_or_path:
        raise ConfigError(
            "the new base has no name or path to record; save it first (new_base.save_pretrained(folder)) and "
            "build the PRT model on the reloaded model, or set new_base.name_or_path"
        )
    config = PRTModelConfig(
        new_base_name_or_path=new_base.name_or_path,
        new_base_fingerprint=model_fingerprint(new_base),
        **config_fields,
    )
    with atomic_save(save_directory, PRTModel.__name__) as staging:
        config.save_pretrained(staging)
        reward._save_pretrained(staging / REWARD_FOLDER)
        write_manifest(staging / REWARD_FOLDER, PRTRewardModel.__name__)
        card = render_model_card(
            "prt_model.md",
            new_base=config.new_base_name_or_path,
            rule=rule,
            fingerprint=config.new_base_fingerprint,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")


class PRTCache(Cache):
    """The KV caches of both members seen as one `Cache`: generate's reorder (beam search), crop and batch
    selection run over every layer of both, so the members always follow the same sequences."""

    def __init__(self, base_cache: DynamicCache, reward_cache: DynamicCache):
        super().__init__(layers=[*base_cache.layers, *reward_cache.layers])
        self.base_cache = base_cache
        self.reward_cache = reward_cache


class PRTModel(RewardScaleAlias, PreTrainedModel, GenerationMixin):
    """`p = softmax(log_softmax(f_new(x)) + r(x)/λ)` (arXiv 2502.12776) as a causal LM.

    Its logits are the combined log-probabilities (head rows beyond the tokenizer get -inf), so `generate`'s
    warpers and beam search act on the PRT distribution. Both members run with their own KV cache, held
    together in a `PRTCache`.

    A reward trained over **another tokenizer** (its `PRTConfig` fingerprint differs from `tokenizer`'s) gives a
    `CrossTokenizerPRTModel` instead, which runs over the maximal common vocabulary of both tokenizers:
    `log π_new + s (log π_θ − log π_old)` with the reward's base π_old and `π_θ = softmax(log π_old + r/λ)`
    (see `hf_coop.prt.cross_tokenizer`); its `.tokenizer` encodes prompts and decodes outputs.

    Args:
        new_base: any causal LM (its head may be larger than its tokenizer).
        reward_model: a `PRTRewardModel` (λ and vocabulary from its config) or a bare causal LM with the new
            base's tokenizer.
        reward_scale / vocab_size: override λ / the number of token ids combined.
        tokenizer: the new base's tokenizer, compared with the reward's vocabulary fingerprint.
        cross_tokenizer: across tokenizers only: `transfer_scale` (s), `reward_base` / `reward_tokenizer` (else
            the ones the reward records), `max_hypotheses`, `prune_ratio`, `prompt_boundary` and engine
            options (`dtype`, `max_batch`).
    """

    def __new__(cls, new_base=None, reward_model=None, *args: Any, tokenizer=None, **kwargs: Any):
        from .cross_tokenizer import cross_tokenizer_prt, crosses_tokenizers

        if tokenizer is None and len(args) >= 3:  # (reward_scale, vocab_size, tokenizer) given by position
            tokenizer = args[2]
        if crosses_tokenizers(reward_model, tokenizer):
            if args:
                raise ConfigError(
                    "pass reward_scale and the other options of a cross-tokenizer PRT by keyword"
                )
            kwargs.pop("vocab_size", None)
            reward_scale = resolve_reward_scale(
                kwargs.pop("reward_scale", None), kwargs.pop("temperature", None), "PRTModel"
            )
            return cross_tokenizer_prt(new_base, reward_model, tokenizer, reward_scale, **kwargs)
        return super().__new__(cls)

    base_model_prefix = "prt"
    main_input_name = "input_ids"
    # attention runs inside the members, each with its own implementation
    _supports_attention_backend = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(
        self,
        new_base: PreTrainedModel,
        reward_model: PRTRewardModel | nn.Module,
        reward_scale: float | None = None,
        vocab_size: int | None = None,
        tokenizer=None,
        temperature: float | None = None,
        **cross_tokenizer: Any,
    ):
        if cross_tokenizer:
            raise ConfigError(
                f"{sorted(cross_tokenizer)} apply only to a reward trained over another tokenizer; this reward "
                "shares the new base's tokenizer (or no tokenizer was given to compare)"
            )
        if tokenizer is None and isinstance(reward_model, PRTRewardModel):
            _check_same_vocabulary_size(new_base, reward_model)
        super().__init__(copy.deepcopy(new_base.config))
        reward, self.reward_scale, self.vocab_size = _unwrap_reward(
            reward_model, resolve_reward_scale(reward_scale, temperature, "PRTModel"), vocab_size, tokenizer
        )
        self.reward_config = reward_model.prt_config if isinstance(reward_model, PRTRewardModel) else None
        self.new_base = new_base
        self.reward = reward
        self.generation_config = copy.deepcopy(new_base.generation_config)
        heads = {
            who: m.get_output_embeddings().weight.shape[0]
            for who, m in (("new base", new_base), ("reward", reward))
        }
        if self.vocab_size is not None and min(heads.values()) < self.vocab_size:
            raise ArtifactError(
                f"output heads {heads} do not cover the reward's {self.vocab_size}-token vocabulary"
            )

    # -- saving ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write `prt_model.json` (the new base's id and fingerprint, λ, vocabulary size) and the reward in
        `reward/`, atomically with a manifest; never the new base's weights."""
        reward_config = self.reward_config or PRTConfig(
            reward_scale=self.reward_scale, vocab_size=self.vocab_size
        )
        save_prt_folder(
            save_directory,
            self.new_base,
            PRTRewardModel(self.reward, reward_config),
            f"At every step the reward's output, divided by λ = {self.reward_scale}, is added to the base's "
            f"log-probabilities: `p = softmax(log_softmax(f_base(x)) + r(x) / λ)` over {self.vocab_size} "
            "token ids.",
            reward_scale=self.reward_scale,
            vocab_size=self.vocab_size,
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload the saved folder as one commit (`push_folder_to_hub` arguments)."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        new_base: PreTrainedModel | None = None,
        tokenizer=None,
        revision: str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> PRTModel:
        """Rebuild a saved PRT model: the new base from its recorded id (or `new_base`, already loaded, checked
        against the saved fingerprint) and the reward from `reward/`, loaded in `dtype` (default float32).
        `kwargs` go to the cross-tokenizer model (e.g. `reward_tokenizer`, `reward_base`)."""
        model_kwargs = {} if dtype is None else {"dtype": dtype}
        folder = local_folder(pretrained_model_name_or_path, revision, must_hold=PRTModelConfig.config_name)
        verify_folder(folder, cls.__name__)
        config = PRTModelConfig.from_pretrained(folder)
        if new_base is None:
            from ..models import load_model

            new_base, loaded_tokenizer = load_model(config.new_base_name_or_path, **model_kwargs)
            tokenizer = loaded_tokenizer if tokenizer is None else tokenizer
        if (
            config.new_base_fingerprint is not None
            and model_fingerprint(new_base) != config.new_base_fingerprint
        ):
            raise ArtifactError(
                f"the new base has fingerprint {model_fingerprint(new_base)}, but {folder} was saved with "
                f"{config.new_base_fingerprint} ({config.new_base_name_or_path}): pass the base it was built on"
            )
        if config.transfer_scale is None:
            reward = PRTRewardModel.from_pretrained(
                os.path.join(folder, REWARD_FOLDER), tokenizer=tokenizer, **model_kwargs
            )
            return cls(new_base, reward, config.reward_scale, config.vocab_size, tokenizer=tokenizer)
        if tokenizer is None:
            raise ConfigError(
                "a cross-tokenizer PRT model needs the new base's tokenizer: pass tokenizer=..."
            )
        reward = PRTRewardModel.from_pretrained(os.path.join(folder, REWARD_FOLDER), **model_kwargs)
        model = cls(
            new_base,
            reward,
            tokenizer=tokenizer,
            reward_scale=config.reward_scale,
            transfer_scale=config.transfer_scale,
            prompt_boundary=config.prompt_boundary,
            settings=EngineSettings.from_dict(config.cross_tokenizer_engine),
            **kwargs,
        )
        if model.config.mcv_fingerprint != config.mcv_fingerprint:
            raise ArtifactError(
                f"the common vocabulary of these tokenizers ({model.config.mcv_fingerprint}) is not the saved one "
                f"({config.mcv_fingerprint}): load the new base's tokenizer it was saved with"
            )
        return model

    def new_cache(self) -> PRTCache:
        return PRTCache(DynamicCache(config=self.new_base.config), DynamicCache(config=self.reward.config))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: PRTCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if use_cache and cache is None:
            cache = self.new_cache()
        if cache is not None and not isinstance(cache, PRTCache):
            raise ConfigError(f"PRTModel needs a PRTCache (model.new_cache()), got {type(cache).__name__}")
        shared = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": use_cache,
            "logits_to_keep": logits_to_keep,
        }
        base_logits = self.new_base(**shared, cache=cache.base_cache if cache else None).logits
        reward_logits = self.reward(**shared, cache=cache.reward_cache if cache else None).logits
        check_finite(base_logits, "the new base model")
        check_finite(reward_logits, "the reward model")
        log_probs = prt_log_probs(base_logits, reward_logits, self.reward_scale, self.vocab_size)
        return CausalLMOutputWithPast(logits=pad_vocab(log_probs, base_logits.shape[-1]), cache=cache)

    def generate(self, *args: Any, **kwargs: Any):
        """`GenerationMixin.generate` with a fresh `PRTCache` unless one is passed or caching is off."""
        if kwargs.get("cache") is None and kwargs.get("use_cache", True):
            kwargs["cache"] = self.new_cache()
        return super().generate(*args, **kwargs)


def _check_same_vocabulary_size(new_base: nn.Module, reward: PRTRewardModel) -> None:
    """Without a tokenizer to compare, refuse a new base whose head is more than 10 % larger than the reward's
    vocabulary (padding rows are fewer): a reward trained over another tokenizer would add its scores to
    unrelated token ids."""
    vocab = reward.prt_config.vocab_size or reward.model.get_output_embeddings().weight.shape[0]
    head = new_base.get_output_embeddings().weight.shape[0]
    if head > 1.1 * vocab:
        raise ConfigError(
            f"the new base's head has {head} rows but the reward's vocabulary {vocab} tokens: pass "
            "tokenizer=<the new base's tokenizer> so the vocabularies can be compared (a reward over another "
            "tokenizer runs over the common vocabulary)"
        )


class PRTModelForClassification(RewardScaleAlias, nn.Module):
    """PRT for classifiers (sequence or image): `log_softmax(log_softmax(f_new(x)) + r(x)/λ)` over labels.

    Labels are matched by name: the same names in another order are permuted to the new base's order; a
    different label set is refused. `reward_inputs` lets the reward read other inputs (e.g. its own
    tokenization); by default both members read the same ones.
    """

    def __init__(
        self,
        new_base: nn.Module,
        reward_model: PRTRewardModel | nn.Module,
        reward_scale: float | None = None,
        temperature: float | None = None,
    ):
        super().__init__()
        reward_scale = resolve_reward_scale(reward_scale, temperature, "PRTModelForClassification")
        if isinstance(reward_model, PRTRewardModel):
            reward_model.check_compatible(id2label=new_base.config.id2label, who="new base")
            reward, config = reward_model.model, reward_model.prt_config
            reward_labels = config.label_names
            self.reward_scale = config.reward_scale if reward_scale is None else reward_scale
        else:
            reward = reward_model
            reward_labels = [reward.config.id2label[i] for i in range(len(reward.config.id2label))]
            self.reward_scale = 1.0 if reward_scale is None else reward_scale
        new_labels = [new_base.config.id2label[i] for i in range(len(new_base.config.id2label))]
        if sorted(new_labels) != sorted(reward_labels):
            raise ArtifactError(
                f"the new base's labels {new_labels} are not the reward's {reward_labels}: "
                "PRT needs the same set"
            )
        self.new_base = new_base
        self.reward = reward
        self.register_buffer(
            "reward_order", torch.tensor([reward_labels.index(name) for name in new_labels]), persistent=False
        )

    def forward(self, reward_inputs: dict[str, Any] | None = None, **inputs: Any) -> SequenceClassifierOutput:
        base_logits = self.new_base(**inputs).logits
        reward_logits = self.reward(**(inputs if reward_inputs is None else reward_inputs)).logits
        check_finite(base_logits, "the new base model")
        check_finite(reward_logits, "the reward model")
        log_probs = prt_log_probs(base_logits, reward_logits[..., self.reward_order], self.reward_scale)
        return SequenceClassifierOutput(logits=log_probs)
