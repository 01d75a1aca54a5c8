"""PRT (and the EFT baseline) across tokenizers, through the maximal common vocabulary (MCV).

A PRT reward trained through an old base defines the reward-tuned old model
`π_θ = softmax(log π_old + r/λ)`, a language model over the old tokenizer, and so is `π_old`. Reduced to the
MCV of the old and the new tokenizer (losslessly, by the vocabulary engine) together with the new base, they
steer it by

    log p(m) = log π_new(m) + s · (log π_θ(m) − log π_old(m)),  renormalised over the MCV tokens m,

with s = 1 by default. With a shared tokenizer and s = 1 this is PRT's own rule (the normalisers cancel).
EFT's baseline is the same rule with a fine-tuned old model as π_θ.

    model = PRTModel(gemma, PRTRewardModel.from_pretrained("smollm2-reward"), tokenizer=gemma_tokenizer)
    inputs = model.tokenizer(["Q: Calculate 3 + 4.\\nA:"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(model.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:]))

Generation runs over the MCV through the ensemble machinery (batching, sampling, beam search, streamers,
`prompt_boundary`). π_old and π_θ are the two copies of each row of one engine member (`TunedPairLM`): a
LoRA reward runs both in one batched forward of the old base (peft's mixed-adapter batches), so a step costs
one forward of the new base and one of the old; its rows are the base on the histories of both π_old and π_θ
and the adapter on π_θ's (each distribution keeps its own hypotheses).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError, check_real
from ..vocab.engine.cache import EngineCache
from ..vocab.engine.paired import TunedPairLM
from ..vocab.engine.scheduler import EngineMember, Scheduler
from ..vocab.engine.settings import BOUNDED_MAX_HYPOTHESES, BOUNDED_PRUNE_RATIO
from ..vocab.ensemble import CommonVocabEnsemble
from .config import PRTConfig
from .core import transfer_log_probs

METHODS = ("prt", "eft")


class CrossTokenizerPRTModel(CommonVocabEnsemble):
    """A new base steered over the MCV by an old base and its tuned version (see the module docstring).

    Build it with `PRTModel(new_base, reward, tokenizer=new_tokenizer)` (a reward over another tokenizer), or
    `CrossTokenizerPRTModel.from_models(...)`; `method="eft"` with a fine-tuned old model is EFT's baseline.
    `transfer_scale` is s; `.tokenizer` encodes prompts and decodes outputs over the MCV.
    """

    def attach(self, pair: TunedPairLM, method: str, transfer_scale: float, reward=None) -> None:
        """What `from_models` adds to the ensemble it built: the old side's paired model and the rule."""
        self.pair = pair
        self.method = method
        self.transfer_scale = transfer_scale
        self.reward = reward  # the PRTRewardModel, kept for save_pretrained

    @property
    def transfer_scale(self) -> float:
        return self._transfer_scale

    @transfer_scale.setter
    def transfer_scale(self, value: float) -> None:
        check_real("transfer_scale (s)", value)
        self._transfer_scale = float(value)

    @classmethod
    def from_models(
        cls,
        new_base: PreTrainedModel,
        new_tokenizer: PreTrainedTokenizerBase,
        old_base: PreTrainedModel | None,
        old_tokenizer: PreTrainedTokenizerBase,
        tuned: torch.nn.Module,
        method: str = "prt",
        reward_scale: float = 1.0,
        transfer_scale: float = 1.0,
        max_hypotheses: int | None = BOUNDED_MAX_HYPOTHESES,
        prune_ratio: float = BOUNDED_PRUNE_RATIO,
        prompt_boundary: str = "tail",
        reward=None,
        **engine_options: Any,
    ) -> CrossTokenizerPRTModel:
        """`tuned` is the PRT reward network (`method="prt"`, with λ = `reward_scale`) or the fine-tuned old
        model (`method="eft"`); `old_base` may be None when `tuned` is a peft adapter on it. The engine keeps
        `max_hypotheses` per row and model (None with `prune_ratio=0`: exact)."""
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        pair = TunedPairLM(
            old_base, tuned, reward_scale if method == "prt" else None, vocab_size=len(old_tokenizer)
        )
        model = super().from_models(
            [new_base, pair.base],
            [new_tokenizer, old_tokenizer],
            mode="product",  # unused: the transfer rule combines the members
            max_hypotheses=max_hypotheses,
            prune_ratio=prune_ratio,
            names=[new_base.name_or_path, pair.name_or_path],
            prompt_boundary=prompt_boundary,
            **engine_options,
        )
        model.attach(pair, method, transfer_scale, reward)
        return model

    def new_cache(self, settings=None) -> EngineCache:
        settings = settings or self.settings
        new, old = self.members
        return EngineCache(
            Scheduler(
                [
                    EngineMember(new.original, new.nested, settings),
                    EngineMember(self.pair, old.nested, settings, copies=2),
                ]
            )
        )

    def combined_logprobs(self, scheduler: Scheduler) -> torch.Tensor:
        new, pair = self.member_logprobs(scheduler, [0, 1])
        return transfer_log_probs(new, pair[1::2], pair[0::2], self.transfer_scale)

    # -- saving ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write `prt_model.json` (the new base's id and fingerprint, λ, s, the engine settings) and the reward
        in `reward/`, atomically with a manifest; `PRTModel.from_pretrained` rebuilds it."""
        from .modeling import save_prt_folder

        if self.method != "prt" or self.reward is None:
            raise ConfigError(
                "only a PRT model built from a PRTRewardModel can be saved; the EFT baseline is rebuilt from its "
                "models (save the fine-tuned model itself)"
            )
        save_prt_folder(
            save_directory,
            self.members[0].original,
            self.reward,
            f"The reward was trained through `{self.reward.prt_config.base_model_name_or_path}`, whose tokenizer "
            "differs from the new base's, so the model runs over the maximal common vocabulary of both "
            f"({self.config.mcv_size} strings): `log p = log π_new + s (log π_θ − log π_old)`, renormalised, with "
            f"s = {self.transfer_scale}, π_old the reward's base and π_θ = softmax(log π_old + r / λ), "
            f"λ = {self.pair.reward_scale}, each reduced losslessly to the common vocabulary. Load it with the new "
            "base's tokenizer and use `model.tokenizer` for prompts and outputs.",
            reward_scale=self.pair.reward_scale,
            transfer_scale=self.transfer_scale,
            cross_tokenizer_engine=self.settings.to_dict(),
            prompt_boundary=self.config.prompt_boundary,
            mcv_fingerprint=self.config.mcv_fingerprint,
        )


def cross_tokenizer_prt(
    new_base: PreTrainedModel,
    reward,
    tokenizer: PreTrainedTokenizerBase,
    reward_scale: float | None = None,
    transfer_scale: float = 1.0,
    reward_base: PreTrainedModel | None = None,
    reward_tokenizer: PreTrainedTokenizerBase | None = None,
    **engine_options: Any,
) -> CrossTokenizerPRTModel:
    """What `PRTModel(new_base, reward, tokenizer=...)` builds when the reward speaks another tokenizer: the
    reward's base and tokenizer come from its saved config (or `reward_base` / `reward_tokenizer`)."""
    old_base, old_tokenizer = reward.load_base(reward_base, reward_tokenizer)
    return CrossTokenizerPRTModel.from_models(
        new_base,
        tokenizer,
        old_base,
        old_tokenizer,
        reward.model,
        "prt",
        reward.prt_config.reward_scale if reward_scale is None else reward_scale,
        transfer_scale,
        reward=reward,
        **engine_options,
    )


def crosses_tokenizers(reward, tokenizer) -> bool:
    """True when `reward` (a causal-LM `PRTRewardModel`) was trained over another vocabulary than `tokenizer`."""
    from ..config_utils import vocab_fingerprint

    config: PRTConfig | None = getattr(reward, "prt_config", None)
    return (
        tokenizer is not None
        and config is not None
        and config.task_type == "causal_lm"
        and config.vocab_fingerprint is not None
        and vocab_fingerprint(tokenizer) != config.vocab_fingerprint
    )
