"""`ReducedVocabLM`: a causal LM re-expressed over a sub-vocabulary, generating through Hugging Face `generate`.

    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", tokens_per_boundary=1)
    inputs = reduced.tokenizer(["The capital of France is", "It is"], return_tensors="pt")
    out = reduced.generate(**inputs, max_new_tokens=40, do_sample=False)
    print(reduced.tokenizer.batch_decode(out))

Its vocabulary is the sub-vocabulary (plus one atomic id per special token of the original tokenizer), and
its next-token distribution is the original model's pushed through the nested tokenization (exact when
`tokens_per_boundary` is None; the paper's K-LVR otherwise). Prompts are tokenized canonically by the original tokenizer
(with its special tokens and chat template), split into sub-tokens, and the original tokens travel with them.
Every row's relative-cover state lives in the `EngineCache` that `generate` threads through its loop, and
every step runs one batched forward of the original model for all rows and hypotheses.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_coop.artefacts import atomic_save, local_folder, push_folder_to_hub, render_model_card, verify_folder
from hf_coop.config_utils import model_fingerprint
from hf_coop.errors import ArtifactError, ConfigError, InputError
from hf_coop.scoring import check_tokenizer_fits
from hf_coop.vocab.engine.cache import EngineCache, EngineGenerationMixin, left_padded, pad_logprobs
from hf_coop.vocab.engine.scheduler import EngineMember, Scheduler
from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.prompt_boundary import check_prompt_boundary
from hf_coop.vocab.sub_vocabulary import NestedTable, SubVocabulary
from hf_coop.vocab.table_cache import tokenizer_fingerprint
from hf_coop.vocab.tokenizers import PromptError, ReducedVocabTokenizer

SUB_VOCABULARY_FILE = "sub_vocabulary.json"


class ReducedVocabConfig(PretrainedConfig):
    """The base model by id or folder, the sub-vocabulary, the engine settings, the prompt boundary and the
    fingerprints of the base model, its tokenizer and the nested table (checked when reloaded)."""

    model_type = "hf_coop_reduced_vocab"

    def __init__(
        self,
        vocab_size: int = 256,
        sub_vocab: str = "bytes",
        split: str = "merges",
        engine: dict | None = None,
        nested_fingerprint: str | None = None,
        prompt_boundary: str = "tail",
        base_model_name_or_path: str | None = None,
        base_model_fingerprint: str | None = None,
        tokenizer_fingerprint: str | None = None,
        **kwargs,
    ):
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_fingerprint = base_model_fingerprint
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.vocab_size = vocab_size
        self.sub_vocab = sub_vocab
        self.split = split
        self.prompt_boundary = check_prompt_boundary(prompt_boundary)
        self.engine = EngineSettings.from_dict(engine).to_dict()
        self.nested_fingerprint = nested_fingerprint
        super().__init__(**kwargs)


def engine_settings(
    settings: EngineSettings | None,
    tokens_per_boundary: int | None,
    max_hypotheses: int | None,
    prune_ratio: float,
    **options,
) -> EngineSettings:
    """`settings` as given, or built from the keyword knobs."""
    if settings is not None:
        return settings
    return EngineSettings(
        tokens_per_boundary=tokens_per_boundary,
        max_hypotheses=max_hypotheses,
        prune_ratio=prune_ratio,
        **options,
    )


def eos_sub_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, nested: NestedTable) -> list[int]:
    """The sub-tokens that end a sequence: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    control = nested.control_sub_id
    return sorted({control[i] for i in [tokenizer.eos_token_id, *ids] if i in control})


class MaxNewBytesCriteria(StoppingCriteria):
    """Stop each row once its generated sub-tokens spell `max_new_bytes` bytes (a budget in text, not tokens,
    so generators over different vocabularies can be compared on the same amount of text), or once they
    contain `stop_bytes` (e.g. b"\\n\\n" after a few-shot answer)."""

    def __init__(
        self, nested: NestedTable, prompt_length: int, max_new_bytes: int, stop_bytes: bytes | None = None
    ):
        self.nested = nested
        self.prompt_length = prompt_length
        self.max_new_bytes = max_new_bytes
        self.stop_bytes = stop_bytes

    def _done(self, new: bytes) -> bool:
        return len(new) >= self.max_new_bytes or bool(self.stop_bytes and self.stop_bytes in new)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = [self._done(self.nested.decode(row[self.prompt_length :].tolist())) for row in input_ids]
        return torch.tensor(done, device=input_ids.device)


class ReducedVocabLM(PreTrainedModel, EngineGenerationMixin):
    """A causal LM over a sub-vocabulary with the same text distribution as the original (see module doc)."""

    config_class = ReducedVocabConfig
    base_model_prefix = "original"
    main_input_name = "input_ids"
    PROMPT_KWARGS = ("original_input_ids", "original_attention_mask", "tail_bytes")

    def __init__(self, config: ReducedVocabConfig, model: PreTrainedModel, tokenizer: ReducedVocabTokenizer):
        super().__init__(config)
        self.original = model  # registered submodule: device, dtype and parameters follow the original
        self.tokenizer = tokenizer
        self.nested = tokenizer.nested
        self.settings = EngineSettings.from_dict(config.engine)
        self.eos_sub_ids = eos_sub_ids(model, tokenizer.original, self.nested)
        self.generation_config = GenerationConfig(
            eos_token_id=self.eos_sub_ids or None,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sub_vocab: SubVocabulary | str = "bytes",
        tokens_per_boundary: int | None = None,
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        split: str = "merges",
        settings: EngineSettings | None = None,
        prompt_boundary: str = "tail",
        **engine_options,
    ) -> ReducedVocabLM:
        """Reduce `model` to `sub_vocab` (a SubVocabulary, 'bytes', 'max-bytes:N' or 'original'). `tokens_per_boundary`
        (the paper's K: the K most likely next original tokens kept per boundary; `top_k` is its old name),
        `max_hypotheses`, `prune_ratio` and `engine_options` (max_batch, dtype, backtrack, prefetch) set the
        `EngineSettings`, or pass `settings` whole. `prompt_boundary` ("tail", "exact" or "canonical") says
        which part of a prompt is conditioned on as bytes over all its tokenizations (see
        `hf_coop.vocab.prompt_boundary`); "canonical" conditions on the canonical tokens as plain `generate`
        does."""
        check_prompt_boundary(prompt_boundary)
        if "top_k" in engine_options:
            warnings.warn(
                "from_model(top_k=...) is deprecated: the K of K-LVR is `tokens_per_boundary`",
                FutureWarning,
                stacklevel=2,
            )
            tokens_per_boundary = engine_options.pop("top_k")
        settings = engine_settings(
            settings, tokens_per_boundary, max_hypotheses, prune_ratio, **engine_options
        )
        if isinstance(sub_vocab, str):
            sub_vocab = SubVocabulary.parse(sub_vocab, tokenizer)
        check_tokenizer_fits(model, tokenizer)
        nested = sub_vocab.nested_table(tokenizer, split=split)
        config = ReducedVocabConfig(
            vocab_size=nested.num_sub_tokens,
            sub_vocab=sub_vocab.name,
            split=split if isinstance(split, str) else "custom",
            engine=settings.to_dict(),
            nested_fingerprint=nested.fingerprint(),
            prompt_boundary=prompt_boundary,
            base_model_name_or_path=model.name_or_path or None,
            base_model_fingerprint=model_fingerprint(model),
            tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        )
        return cls(config, model, ReducedVocabTokenizer(tokenizer, nested, prompt_boundary))

    # -- saving ------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the config (with the base model's id and fingerprints), the sub-vocabulary's strings and a
        model card, atomically with a manifest; never the base model's weights."""
        if self.config.split == "custom":
            raise ConfigError(
                "a reduction with a custom split function cannot be saved; use split='merges' or 'longest'"
            )
        if not self.config.base_model_name_or_path:
            raise ConfigError(
                "the base model has no name or path to record; save it first (model.save_pretrained(folder)) and "
                "reduce the reloaded model, or set model.name_or_path"
            )
        with atomic_save(save_directory, type(self).__name__) as staging:
            self.config.save_pretrained(staging)
            strings = sorted(s.hex() for s in self.nested.sub_strings)
            (staging / SUB_VOCABULARY_FILE).write_text(
                json.dumps({"name": self.config.sub_vocab, "strings": strings}), encoding="utf-8"
            )
            (staging / "README.md").write_text(self._model_card(), encoding="utf-8")

    def _model_card(self) -> str:
        return render_model_card(
            "reduced_vocab.md",
            base_model=self.config.base_model_name_or_path,
            sub_vocab=self.config.sub_vocab,
            sub_tokens=self.config.vocab_size,
            split=self.config.split,
            prompt_boundary=self.config.prompt_boundary,
            engine=json.dumps(self.config.engine),
            fingerprint=self.config.nested_fingerprint,
        )

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the saved folder (config, sub-vocabulary, card, manifest) as one commit (`push_folder_to_hub`
        arguments); the base model stays where its recorded id points."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        revision: str | None = None,
        **kwargs,  # what `AutoModelForCausalLM.from_pretrained` passes on (config, hub arguments): unused
    ) -> ReducedVocabLM:
        """Rebuild a saved reduction: the base from its recorded id (or `model` / `tokenizer`, already loaded),
        checked against the saved fingerprints, reduced to the saved sub-vocabulary with the saved settings.
        `AutoModelForCausalLM.from_pretrained(folder)` comes here too."""
        folder = local_folder(pretrained_model_name_or_path, revision, must_hold=SUB_VOCABULARY_FILE)
        verify_folder(folder, cls.__name__)
        config = ReducedVocabConfig.from_pretrained(folder)
        from hf_coop.models import load_model, load_tokenizer

        if model is None:
            model, loaded_tokenizer = load_model(config.base_model_name_or_path)
            tokenizer = loaded_tokenizer if tokenizer is None else tokenizer
        elif tokenizer is None:
            tokenizer = load_tokenizer(config.base_model_name_or_path)
        for what, saved, got in (
            ("base model", config.base_model_fingerprint, model_fingerprint(model)),
            ("tokenizer", config.tokenizer_fingerprint, tokenizer_fingerprint(tokenizer)),
        ):
            if saved is not None and saved != got:
                raise ArtifactError(
                    f"the {what} has fingerprint {got}, but {folder} was saved with {saved} "
                    f"({config.base_model_name_or_path}): pass the {what} it was reduced from"
                )
        data = json.loads(Path(folder, SUB_VOCABULARY_FILE).read_text(encoding="utf-8"))
        sub_vocab = SubVocabulary(frozenset(bytes.fromhex(s) for s in data["strings"]), data["name"])
        reduced = cls.from_model(
            model,
            tokenizer,
            sub_vocab,
            split=config.split,
            settings=EngineSettings.from_dict(config.engine),
            prompt_boundary=config.prompt_boundary,
        )
        if reduced.config.nested_fingerprint != config.nested_fingerprint:
            raise ArtifactError(
                f"{folder}: the rebuilt nested table ({reduced.config.nested_fingerprint}) is not the saved one "
                f"({config.nested_fingerprint}); the tokenizer or hf_coop's split changed since it was saved"
            )
        reduced.config.base_model_name_or_path = config.base_model_name_or_path
        return reduced

    # -- the engine --------------------------------------------------------------------------------------
    def new_cache(self) -> EngineCache:
        return EngineCache(
            Scheduler([EngineMember(self.original, self.nested, self.settings, self.eos_sub_ids)])
        )

    def start_rows(
        self,
        cache,
        input_ids,
        attention_mask,
        original_input_ids=None,
        original_attention_mask=None,
        tail_bytes=None,
    ):
        if original_input_ids is None:
            rows = (
                input_ids
                if attention_mask is None
                else [i[m.bool()] for i, m in zip(input_ids, attention_mask)]
            )
            prompts = [self.tokenizer.prompt_for(row.tolist()) for row in rows]
            encoded = self.tokenizer.encode_prompts(prompts, return_tensors="pt")
            original_input_ids = encoded["original_input_ids"]
            original_attention_mask = encoded["original_attention_mask"]
            tail_bytes = encoded.get("tail_bytes")
        ids, lengths = left_padded(original_input_ids, original_attention_mask)
        if bool((lengths < 1).any()):
            raise PromptError("a prompt is empty; give at least one token (e.g. the BOS token)")
        cache.scheduler.start([(ids, lengths)], [tail_bytes])

    def _language_modelling_loss(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None, labels: torch.LongTensor
    ) -> CausalLMOutputWithPast:
        if labels.shape != input_ids.shape:
            raise InputError(
                f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}: pass labels "
                "aligned with input_ids (the shift happens inside), -100 where no loss is wanted"
            )
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        if not bool(mask.any(1).all()):
            raise InputError("a row of the attention mask is all zeros: an empty text has no loss")
        rows = [ids[m] for ids, m in zip(input_ids, mask)]
        targets = torch.nn.utils.rnn.pad_sequence(
            [lab[m] for lab, m in zip(labels, mask)], batch_first=True, padding_value=-100
        )
        lengths = torch.tensor([len(r) for r in rows])
        columns = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        cache = self.new_cache()
        self.start_rows(cache, columns[:, :1], None)
        steps = [self.row_logprobs(cache)]
        for t in range(1, columns.shape[1] - 1):
            cache.scheduler.step([columns[:, t]], active=lengths > t + 1)
            steps.append(self.row_logprobs(cache))
        logprobs = torch.stack(steps, dim=1)  # position t: the distribution of sub-token t + 1
        scored = targets[:, 1 : logprobs.shape[1] + 1].to(logprobs.device)
        keep = scored != -100
        if bool((scored[keep] >= logprobs.shape[-1]).any()):
            raise InputError(f"a label id is >= {logprobs.shape[-1]}, the reduced vocabulary's size")
        nll = -logprobs.gather(-1, scored.clamp(min=0)[..., None])[..., 0]
        loss = nll[keep].mean() if bool(keep.any()) else nll.sum() * 0.0
        logits = torch.zeros(
            *input_ids.shape, logprobs.shape[-1], dtype=logprobs.dtype, device=logprobs.device
        )
        for row, m in enumerate(mask):
            at = torch.nonzero(m)[:, 0][: logprobs.shape[1]]
            logits[row, at] = logprobs[row, : len(at)]
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def step_rows(self, cache: EngineCache, column: torch.Tensor) -> None:
        cache.scheduler.step([column])

    def row_logprobs(self, cache: EngineCache) -> torch.Tensor:
        logprobs = cache.scheduler.next_logprobs()[0]
        finished = cache.scheduler.members[0].cover.finished
        pad = pad_logprobs(
            len(logprobs), logprobs.shape[1], self.generation_config.pad_token_id or 0, logprobs.device
        )
        return torch.where(finished[:, None], pad.to(logprobs.dtype), logprobs)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: EngineCache | None = None,
        original_input_ids: torch.LongTensor | None = None,
        original_attention_mask: torch.Tensor | None = None,
        tail_bytes: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Next sub-token log-probabilities `(batch, 1, vocab)` after each row (see `engine_forward`).

        With `labels` (aligned with `input_ids`, -100 where no loss is wanted, as for any causal LM), the
        usual language-modelling loss instead: every row is read sub-token by sub-token from its first one,
        `logits` holds the log-probabilities after each position `(batch, length, vocab)` (zeros at padding)
        and `loss` is the mean negative log-likelihood of `labels[:, 1:]`: the model's own distribution over
        sub-token sequences, so `exp(loss)` is its sub-token perplexity."""
        if labels is not None:
            return self._language_modelling_loss(input_ids, attention_mask, labels)
        return self.engine_forward(
            input_ids,
            attention_mask,
            cache,
            original_input_ids=original_input_ids,
            original_attention_mask=original_attention_mask,
            tail_bytes=tail_bytes,
        )


AutoConfig.register(ReducedVocabConfig.model_type, ReducedVocabConfig, exist_ok=True)
AutoModelForCausalLM.register(ReducedVocabConfig, ReducedVocabLM, exist_ok=True)
