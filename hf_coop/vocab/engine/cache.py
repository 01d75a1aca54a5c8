"""The engine inside `generate`: a `transformers.Cache` that holds every row's relative-cover state, and the
generation plumbing shared by the models built on the engine.

`generate` threads the cache through its loop (`cache=`), so a row's state is the row itself, never found
again by content: beam search reorders it (`reorder_cache`), and each `generate` call makes a fresh one
(`_prepare_cache_for_generation`), so a model object keeps nothing from one call to the next.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_coop.errors import ConfigError, InputError
from hf_coop.vocab.engine.kv import UncompiledCache
from hf_coop.vocab.engine.scheduler import Scheduler


class EngineCache(UncompiledCache):
    """Every row's engine state for one generation (pass `cache=model.new_cache()` to keep it)."""

    def __init__(self, scheduler: Scheduler):
        super().__init__(layers=[])
        self.scheduler = scheduler
        self.seen = 0  # input columns consumed

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.scheduler.select_rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = torch.arange(self.scheduler.n_rows).repeat_interleave(repeats)
        self.scheduler.select_rows(rows)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.scheduler.select_rows(indices)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "the vocabulary engine cannot undo steps (crop), so assisted/speculative decoding is not supported; "
            "use greedy, sampling or beam search"
        )

    @property
    def is_initialized(self) -> bool:
        return self.scheduler.started


class EngineGenerationMixin(GenerationMixin):
    """`forward` and `generate` plumbing for a `PreTrainedModel` whose next-token distribution comes from the
    engine. Subclasses define `new_cache()`, `start_rows(cache, input_ids, attention_mask, **prompt_kwargs)`,
    `step_rows(cache, column)` and `row_logprobs(cache)`; `PROMPT_KWARGS` names the extra tokenizer outputs
    (each member's own prompt tokens) that the first forward reads."""

    PROMPT_KWARGS: tuple[str, ...] = ()

    def new_cache(self) -> EngineCache:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs) -> None:
        cache = model_kwargs.get("cache")
        if cache is None:
            model_kwargs["cache"] = self.new_cache()
        elif not isinstance(cache, EngineCache):
            raise ConfigError(
                f"{type(self).__name__} keeps its state in an EngineCache (model.new_cache()), got {type(cache).__name__}"
            )

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache}
        inputs.update({k: kwargs[k] for k in self.PROMPT_KWARGS if k in kwargs})
        return inputs

    def engine_forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: EngineCache | None,
        **prompt,
    ) -> CausalLMOutputWithPast:
        """Logits `(batch, 1, vocab)` of the next token after every row of `input_ids` (log-probabilities;
        finished rows: padding only). With a started `cache`, only the columns it has not seen are consumed."""
        cache = self.new_cache() if cache is None else cache
        if not cache.scheduler.started:
            if attention_mask is not None and not bool(attention_mask.bool().any(1).all()):
                rows = torch.nonzero(~attention_mask.bool().any(1))[:, 0].tolist()
                raise InputError(
                    f"rows {rows} of the attention mask are all zeros: empty prompts; give every row at least "
                    "one token (e.g. the BOS token)"
                )
            self.start_rows(cache, input_ids, attention_mask, **prompt)
        else:
            for column in input_ids[:, cache.seen :].unbind(1):
                self.step_rows(cache, column)
        cache.seen = input_ids.shape[1]
        logits = self.row_logprobs(cache)
        return CausalLMOutputWithPast(logits=logits[:, None, :].to(input_ids.device), cache=cache)


def left_padded(ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with every row's tokens moved to the right end, lengths) from a padded batch and its mask."""
    if mask is None:
        return ids, torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    mask = mask.bool()
    lengths = mask.sum(1)
    order = torch.argsort(mask.long(), dim=1, stable=True)  # padding first, tokens in their order after
    return ids.gather(1, order), lengths


def pad_logprobs(n_rows: int, vocab: int, pad_id: int, device) -> torch.Tensor:
    """Log-probs that put all mass on the padding id (what a finished row emits)."""
    out = torch.full((n_rows, vocab), float("-inf"), device=device)
    out[:, pad_id] = 0.0
    return out
