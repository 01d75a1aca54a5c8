"""Ensembles of causal LMs with different tokenizers, through their maximal common vocabulary (MCV).

    ensemble = CommonVocabEnsemble.from_models([smol, gemma], [smol_tok, gemma_tok], max_hypotheses=8)
    inputs = ensemble.tokenizer(["The capital of France is", "It is"], return_tensors="pt")
    out = ensemble.generate(**inputs, max_new_tokens=20, do_sample=False)
    print(ensemble.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:]))

Every member is reduced losslessly to the MCV; the ensemble's vocabulary is the MCV's text sub-tokens plus
one end-of-sequence id. At each step each member gives p_m(next MCV token | text so far) (its own special
tokens, BOS, chat template and KV tree stay inside its engine state); the mass of a member's EOS tokens
becomes the ensemble's EOS, and the mass of its other control tokens (chat markers a text cannot contain)
is dropped and the rest renormalised. The members' distributions are combined as the weighted mean of
probabilities (`mode="mean"`, the paper's) or the normalised weighted product (`mode="product"`); the chosen
token advances every member. Each step runs one batched forward per member for all rows and hypotheses.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hf_coop.artefacts import atomic_save, local_folder, push_folder_to_hub, render_model_card, verify_folder
from hf_coop.config_utils import ArtifactError, fingerprint, model_fingerprint
from hf_coop.errors import ConfigError, InputError
from hf_coop.vocab.engine.cache import EngineCache, EngineGenerationMixin, left_padded, pad_logprobs
from hf_coop.vocab.engine.scheduler import EngineMember, Scheduler
from hf_coop.vocab.engine.settings import BOUNDED_MAX_HYPOTHESES, BOUNDED_PRUNE_RATIO, EngineSettings
from hf_coop.vocab.mcv import SPLITS, common_vocabulary, resolve_split, unspellable_bytes
from hf_coop.vocab.prompt_boundary import check_prompt_boundary
from hf_coop.vocab.reduced_lm import ReducedVocabLM, engine_settings, eos_sub_ids
from hf_coop.vocab.sub_vocabulary import SubVocabulary
from hf_coop.vocab.table_cache import tokenizer_fingerprint
from hf_coop.vocab.tokenizers import CommonVocabTokenizer, PromptError

logger = logging.getLogger(__name__)

MODES = ("mean", "product")
NEG_INF = float("-inf")


def check_weights(weights: Sequence[float] | None, n_members: int) -> list[float]:
    """Weights normalised to sum 1 (default: equal); negative weights or a non-positive sum are refused."""
    weights = [1.0] * n_members if weights is None else [float(w) for w in weights]
    if len(weights) != n_members:
        raise ConfigError(f"got {len(weights)} weights for {n_members} members; give one weight per member")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"weights must be finite, non-negative and sum to a positive number, got {weights}; "
            "e.g. --weights 0.5 0.5"
        )
    return [w / sum(weights) for w in weights]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def combine(member_logprobs: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Combine members' log-probabilities `(members, rows, vocab)` into one normalised log-distribution per
    row, over the tokens every member can follow (a token some member gives probability zero would leave that
    member with no distribution afterwards: a byte outside its alphabet, with no byte fallback). mean:
    log Σ_m w_m p_m; product: Σ_m w_m log p_m; both renormalised over that common support. A row whose
    members share no token is refused."""
    weights = weights.to(member_logprobs)
    if mode == "mean":
        combined = torch.logsumexp(member_logprobs + weights.log()[:, None, None], dim=0)
    else:
        combined = (
            weights[:, None, None] * member_logprobs.clamp(min=torch.finfo(member_logprobs.dtype).min)
        ).sum(0)
    return normalise_on_common_support(combined, member_logprobs)


def normalise_on_common_support(combined: torch.Tensor, member_logprobs: torch.Tensor) -> torch.Tensor:
    """`combined` `(rows, vocab)` renormalised over the tokens every member of `member_logprobs`
    `(members, rows, vocab)` gives a positive probability; rows where the members share no such token are
    refused (rows whose members are all finished, every entry -inf, stay as they are)."""
    combined = torch.where(torch.isfinite(member_logprobs).all(0), combined, NEG_INF)
    total = torch.logsumexp(combined, dim=1, keepdim=True)
    stuck = torch.isfinite(member_logprobs).any(-1).all(0) & ~torch.isfinite(total[:, 0])
    if bool(stuck.any()):
        rows = torch.nonzero(stuck)[:, 0].tolist()
        raise InputError(
            f"rows {rows}: the members give no next token a positive probability in common (their texts "
            "diverged onto bytes one member cannot spell); ensemble members whose tokenizers share an alphabet"
        )
    return torch.where(torch.isfinite(total), combined - total, combined)


def to_ensemble_vocab(logprobs: torch.Tensor, num_text: int, eos: Sequence[int]) -> torch.Tensor:
    """A member's `[rows, sub-tokens]` log-probs over the ensemble vocabulary (MCV text ids, then EOS): its
    EOS sub-tokens' mass becomes EOS, its other control sub-tokens are dropped and the rest renormalised."""
    end = (
        torch.logsumexp(logprobs[:, list(eos)], dim=1, keepdim=True) if eos else logprobs[:, :1] * 0 + NEG_INF
    )
    out = torch.cat([logprobs[:, :num_text], end], dim=1)
    norm = torch.logsumexp(out, dim=1, keepdim=True)
    return torch.where(torch.isfinite(norm), out - norm, out)


class CommonVocabEnsembleConfig(PretrainedConfig):
    """Members by path or hub id, weights, combination mode, engine settings, the prompt boundary and the
    MCV's fingerprint."""

    model_type = "hf_coop_common_vocab_ensemble"

    def __init__(
        self,
        members: list[str] | None = None,
        weights: list[float] | None = None,
        mode: str = "mean",
        engine: dict | None = None,
        split: str = "common",
        sub_vocab: str = "mcv",
        mcv_fingerprint: str | None = None,
        mcv_size: int | None = None,
        vocab_size: int = 257,
        tokenizer_fingerprints: list[str] | None = None,
        model_fingerprints: list[str] | None = None,
        prompt_boundary: str = "tail",
        **kwargs,
    ):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        self.members = list(members or [])
        self.weights = weights
        self.mode = check_mode(mode)
        self.engine = EngineSettings.from_dict(engine).to_dict()
        self.split = split
        self.sub_vocab = sub_vocab
        self.mcv_fingerprint = mcv_fingerprint
        self.mcv_size = mcv_size
        self.vocab_size = vocab_size
        self.tokenizer_fingerprints = list(tokenizer_fingerprints or [])  # member order
        self.model_fingerprints = list(model_fingerprints or [])
        self.prompt_boundary = check_prompt_boundary(prompt_boundary)
        super().__init__(**kwargs)


def check_members(
    config: CommonVocabEnsembleConfig, members: Sequence[tuple[PreTrainedModel, PreTrainedTokenizerBase]]
) -> None:
    """Refuse members that are not the saved ones in the saved order (weights and names follow the order):
    each member's model and tokenizer fingerprints must equal the saved ones, position by position."""
    for what, saved, got in (
        ("tokenizer", config.tokenizer_fingerprints, [tokenizer_fingerprint(t) for _, t in members]),
        ("model", config.model_fingerprints, [model_fingerprint(m) for m, _ in members]),
    ):
        if not saved or got == saved:
            continue
        if len(got) != len(saved):
            raise ArtifactError(f"the ensemble was saved with {len(saved)} members, got {len(got)}")
        if sorted(got) == sorted(saved):
            raise ArtifactError(
                f"the members are in another order than saved ({what} fingerprints {got}, saved {saved}); "
                f"pass them in the saved order: {config.members}"
            )
        wrong = next(i for i, (a, b) in enumerate(zip(got, saved)) if a != b)
        raise ArtifactError(
            f"member {wrong}'s {what} has fingerprint {got[wrong]}, but the ensemble was saved with "
            f"{saved[wrong]} ({config.members[wrong]}): load the {what} it was saved with"
        )


# bytes no UTF-8 text contains: a vocabulary without them loses nothing
_NEVER_IN_UTF8 = {f"{b:02x}" for b in (0xC0, 0xC1, *range(0xF5, 0x100))}


def _warn_unspellable_bytes(members: Sequence[ReducedVocabLM]) -> None:
    """Say which bytes of UTF-8 text some member has no token for (a vocabulary without byte fallback, or one
    that dropped rare control bytes): the ensemble never produces them, and texts holding them are refused."""
    if len(members) < 2:
        return
    for index, member in enumerate(members):
        missing = [b for b in unspellable_bytes(member.nested.table) if b not in _NEVER_IN_UTF8]
        if missing:
            logger.warning(
                "member %d's tokenizer has no token holding %d bytes that UTF-8 text may contain (e.g. %s): the "
                "ensemble never produces them, and texts holding them cannot be scored",
                index,
                len(missing),
                ", ".join(missing[:8]),
            )


def _check_device(index: int, model: PreTrainedModel) -> None:
    devices = {p.device for p in model.parameters()}
    if any(d.type == "meta" for d in devices):
        raise ConfigError(
            f"member {index} has weights on the meta device (not loaded, or offloaded without an execution "
            "device); load it onto a real device, e.g. from_pretrained(..., device_map='cuda:1') or .to('cpu')"
        )


class CommonVocabEnsemble(PreTrainedModel, EngineGenerationMixin):
    """A `GenerationMixin` model over the MCV of its members (see the module docstring)."""

    config_class = CommonVocabEnsembleConfig
    main_input_name = "input_ids"
    PROMPT_KWARGS = ("member_input_ids", "member_attention_mask", "member_tail_bytes")

    def __init__(self, config: CommonVocabEnsembleConfig, members: list[ReducedVocabLM]):
        super().__init__(config)
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        for index, member in enumerate(members):
            _check_device(index, member.original)
            if member.nested.sub_strings != members[0].nested.sub_strings:
                raise ConfigError(
                    f"member {index} is reduced to another sub-vocabulary than member 0; build the ensemble "
                    "with CommonVocabEnsemble.from_models so every member uses the same MCV"
                )
        _warn_unspellable_bytes(members)
        self.members = torch.nn.ModuleList(members)
        self.tokenizer = CommonVocabTokenizer([m.tokenizer for m in members])
        self.num_text = self.tokenizer.num_text
        self.settings = EngineSettings.from_dict(config.engine)
        self.member_eos = [eos_sub_ids(m.original, m.tokenizer.original, m.nested) for m in members]
        self.set_weights(config.weights)
        self.generation_config = GenerationConfig(eos_token_id=[self.num_text], pad_token_id=self.num_text)

    def set_weights(self, weights: Sequence[float] | None) -> None:
        """Change the member weights (validated, normalised to sum 1)."""
        self._weights = check_weights(weights, len(self.members))
        self.config.weights = self._weights

    @property
    def weights(self) -> list[float]:
        return list(self._weights)

    @weights.setter
    def weights(self, value: Sequence[float]) -> None:
        self.set_weights(value)

    @classmethod
    def from_models(
        cls,
        models: Sequence[PreTrainedModel],
        tokenizers: Sequence[PreTrainedTokenizerBase],
        weights: Sequence[float] | None = None,
        mode: str = "mean",
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        split: str = "common",
        names: Sequence[str] | None = None,
        sub_vocab: str = "mcv",
        settings: EngineSettings | None = None,
        prompt_boundary: str = "tail",
        **engine_options,
    ) -> CommonVocabEnsemble:
        """Reduce every model to the MCV of all tokenizers and ensemble them; `names` (paths or hub ids,
        default each model's `name_or_path`) are what `save_pretrained` records.

        Members keep every next token of each boundary history (a member must be able to follow a token
        that another member chose, and the token spelling one MCV string always can be); their cost is
        bounded by `max_hypotheses` (the K of the CLI) and `prune_ratio`, and what pruning drops is reported
        by the scoring functions. `sub_vocab="bytes"` ensembles over single bytes instead of the MCV (the
        byte-level baseline). `engine_options` (max_batch, dtype, backtrack, prefetch) or `settings` set the
        rest of the `EngineSettings`. `prompt_boundary` ("tail", "exact", "canonical"): how much of a prompt
        every member conditions on as bytes, each at its own cut (see `hf_coop.vocab.prompt_boundary`)."""
        check_prompt_boundary(prompt_boundary)
        if len(models) != len(tokenizers) or not models:
            raise ConfigError(f"give one tokenizer per model (got {len(models)} models, {len(tokenizers)})")
        if sub_vocab not in ("mcv", "bytes"):
            raise ConfigError(f"sub_vocab must be 'mcv' or 'bytes', got {sub_vocab!r}")
        check_mode(mode)
        for index, model in enumerate(models):
            _check_device(index, model)
        weights = check_weights(weights, len(models))
        settings = engine_settings(settings, None, max_hypotheses, prune_ratio, **engine_options)
        if settings.tokens_per_boundary is not None:
            raise ConfigError(
                "ensemble members keep every next token (tokens_per_boundary=None): a member must be able to "
                "follow whatever token another member chose; bound the cost with max_hypotheses / prune_ratio"
            )
        mcv = SubVocabulary.bytes_only() if sub_vocab == "bytes" else common_vocabulary(*tokenizers)[0]
        splitter = resolve_split(split, mcv, tokenizers)
        members = [
            ReducedVocabLM.from_model(
                m, t, mcv, split=splitter, settings=settings, prompt_boundary=prompt_boundary
            )
            for m, t in zip(models, tokenizers)
        ]
        config = CommonVocabEnsembleConfig(
            members=list(names or [m.name_or_path for m in models]),
            weights=weights,
            mode=mode,
            engine=settings.to_dict(),
            split=split,
            sub_vocab=sub_vocab,
            mcv_fingerprint=fingerprint({"mcv": [s.hex() for s in mcv.ordered()], "split": split}),
            mcv_size=len(mcv.strings),
            vocab_size=len(mcv.strings) + 1,
            tokenizer_fingerprints=[tokenizer_fingerprint(t) for t in tokenizers],
            model_fingerprints=[model_fingerprint(m) for m in models],
            prompt_boundary=prompt_boundary,
        )
        return cls(config, members)

    # -- the engine --------------------------------------------------------------------------------------
    def active_members(self) -> list[int]:
        """Members with a positive weight (the others are never run)."""
        return [m for m, w in enumerate(self._weights) if w > 0]

    def new_cache(self, settings: EngineSettings | None = None) -> EngineCache:
        settings = settings or self.settings
        members = [
            EngineMember(self.members[m].original, self.members[m].nested, settings)
            for m in self.active_members()
        ]
        return EngineCache(Scheduler(members))

    def member_prompts(
        self,
        input_ids,
        attention_mask,
        member_input_ids=None,
        member_attention_mask=None,
        member_tail_bytes=None,
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor | None]]:
        """Each active member's (left-padded ids, lengths) and tail bytes, from the tokenizer's
        `member_input_ids` / `member_tail_bytes` or, for ensemble ids given alone, from each member's
        tokenization of their bytes."""
        if member_input_ids is None:
            prompts = [
                self.tokenizer.decode_bytes(ids[mask.bool()] if attention_mask is not None else ids)
                for ids, mask in zip(input_ids, attention_mask if attention_mask is not None else input_ids)
            ]
            encoded = self.tokenizer(prompts, return_tensors="pt")
            member_input_ids, member_attention_mask = (
                encoded["member_input_ids"],
                encoded["member_attention_mask"],
            )
            member_tail_bytes = encoded.get("member_tail_bytes")
        prompts, tails = [], []
        for m in self.active_members():
            ids, lengths = left_padded(member_input_ids[:, m], member_attention_mask[:, m])
            if bool((lengths < 1).any()):
                raise PromptError(f"a prompt is empty for member {m}; give at least one token")
            prompts.append((ids, lengths))
            tails.append(None if member_tail_bytes is None else member_tail_bytes[:, m])
        return prompts, tails

    def start_rows(
        self,
        cache,
        input_ids,
        attention_mask,
        member_input_ids=None,
        member_attention_mask=None,
        member_tail_bytes=None,
    ):
        cache.scheduler.start(
            *self.member_prompts(
                input_ids, attention_mask, member_input_ids, member_attention_mask, member_tail_bytes
            )
        )

    def step_rows(self, cache: EngineCache, column: torch.Tensor) -> None:
        ended = column == self.num_text
        for member in cache.scheduler.members:
            member.finish_rows(ended)
        sub = column.clamp(max=self.num_text - 1)
        cache.scheduler.step([sub] * len(cache.scheduler.members), active=~ended)

    def member_logprobs(self, scheduler: Scheduler, members: Sequence[int]) -> list[torch.Tensor]:
        """`[rows, ensemble vocab]` log-probs of the `members` that `scheduler` runs (in its order), on the
        first one's device."""
        device = scheduler.members[0].cover.device
        return [
            to_ensemble_vocab(lp, self.num_text, self.member_eos[m]).to(device)
            for m, lp in zip(members, scheduler.next_logprobs())
        ]

    def combined_logprobs(self, scheduler: Scheduler) -> torch.Tensor:
        """`[rows, ensemble vocab]`: the active members' distributions combined by the ensemble's rule."""
        active = self.active_members()
        weights = torch.tensor([self._weights[m] for m in active], dtype=torch.float64)
        return combine(torch.stack(self.member_logprobs(scheduler, active)), weights, self.config.mode)

    def row_logprobs(self, cache: EngineCache) -> torch.Tensor:
        combined = self.combined_logprobs(cache.scheduler)
        finished = cache.scheduler.members[0].cover.finished
        pad = pad_logprobs(len(combined), combined.shape[1], self.num_text, combined.device).to(
            combined.dtype
        )
        return torch.where(finished[:, None], pad, combined)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: EngineCache | None = None,
        member_input_ids: torch.LongTensor | None = None,
        member_attention_mask: torch.Tensor | None = None,
        member_tail_bytes: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Next-token log-probabilities over the ensemble vocabulary, shape `(batch, 1, vocab)`."""
        return self.engine_forward(
            input_ids,
            attention_mask,
            cache,
            member_input_ids=member_input_ids,
            member_attention_mask=member_attention_mask,
            member_tail_bytes=member_tail_bytes,
        )

    # -- saving ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the small config (members by path, weights, mode, K, MCV fingerprint) and a model card;
        never the members' weights, which stay where their paths point. Saved atomically, with a manifest."""
        with atomic_save(save_directory, type(self).__name__) as staging:
            self.config.save_pretrained(staging)
            (staging / "README.md").write_text(self._model_card(), encoding="utf-8")

    def _model_card(self) -> str:
        return render_model_card(
            "ensemble.md",
            members="\n".join(
                f"| {i} | `{n}` | {w:.3f} |"
                for i, (n, w) in enumerate(zip(self.config.members, self.weights))
            ),
            mode=self.config.mode,
            max_hypotheses=self.settings.max_hypotheses,
            split=self.config.split,
            mcv_size=self.config.mcv_size,
            fingerprint=self.config.mcv_fingerprint,
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the config and the rendered card (`push_folder_to_hub` arguments: commit_message, private,
        token, revision, create_pr); the members stay where their recorded paths point."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        members: Sequence[tuple[PreTrainedModel, PreTrainedTokenizerBase]] | None = None,
        *,
        revision: str | None = None,
        weights: Sequence[float] | None = None,
        mode: str | None = None,
        prompt_boundary: str | None = None,
        **auto_kwargs,  # what `AutoModelForCausalLM.from_pretrained` passes on (config, hub arguments): unused
    ) -> CommonVocabEnsemble:
        """Reload a saved ensemble: members from their recorded paths (or given as (model, tokenizer)
        pairs); the rebuilt MCV must match the saved fingerprint. `weights`, `mode` and `prompt_boundary`
        override the saved values. `AutoModelForCausalLM.from_pretrained(folder)` comes here too."""
        overrides = {"weights": weights, "mode": mode, "prompt_boundary": prompt_boundary}
        folder = local_folder(path, revision, must_hold="config.json")
        verify_folder(folder, cls.__name__)
        config = CommonVocabEnsembleConfig.from_pretrained(folder)
        if config.model_type != CommonVocabEnsembleConfig.model_type or not config.members:
            raise ArtifactError(
                f"{path}/config.json is not a saved CommonVocabEnsemble (model_type {config.model_type!r}, "
                f"members {config.members}); save one with ensemble.save_pretrained"
            )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        if members is None:
            from hf_coop.models import load_model

            members = [load_model(name) for name in config.members]
        check_members(config, members)
        ensemble = cls.from_models(
            [m for m, _ in members],
            [t for _, t in members],
            config.weights,
            config.mode,
            split=config.split,
            names=config.members,
            sub_vocab=config.sub_vocab,
            settings=EngineSettings.from_dict(config.engine),
            prompt_boundary=config.prompt_boundary,
        )
        if ensemble.config.mcv_fingerprint != config.mcv_fingerprint:
            raise ArtifactError(
                f"the members' common vocabulary ({ensemble.config.mcv_fingerprint}) is not the saved one "
                f"({config.mcv_fingerprint}): a member's tokenizer changed; load the tokenizers it was saved with"
            )
        return ensemble


def load_ensemble(
    names: Sequence[str],
    weights: Sequence[float] | None = None,
    mode: str = "mean",
    max_hypotheses: int | None = BOUNDED_MAX_HYPOTHESES,
    prune_ratio: float = BOUNDED_PRUNE_RATIO,
    split: str = "common",
    prompt_boundary: str = "tail",
) -> CommonVocabEnsemble:
    """An ensemble of demo model names, local folders or hub ids (the CLI's and demo's entry point)."""
    check_prompt_boundary(prompt_boundary)
    from hf_coop.models import load_model

    check_weights(weights, len(names))  # fail before loading anything
    loaded = [load_model(name) for name in names]
    return CommonVocabEnsemble.from_models(
        [m for m, _ in loaded],
        [t for _, t in loaded],
        weights,
        mode,
        max_hypotheses,
        prune_ratio,
        split,
        names,
        prompt_boundary=prompt_boundary,
    )


AutoConfig.register(CommonVocabEnsembleConfig.model_type, CommonVocabEnsembleConfig, exist_ok=True)
AutoModelForCausalLM.register(CommonVocabEnsembleConfig, CommonVocabEnsemble, exist_ok=True)
