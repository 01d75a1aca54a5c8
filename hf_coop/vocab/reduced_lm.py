"""`ReducedVocabLM`: a causal LM re-expressed over a sub-vocabulary, generating through Hugging Face `generate`.

    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", top_k=1)
    inputs = reduced.tokenizer("The capital of France is", return_tensors="pt")
    out = reduced.generate(**inputs, max_new_tokens=40, do_sample=False)
    print(reduced.tokenizer.decode(out[0]))

Its vocabulary is the sub-vocabulary (plus one atomic id per special token of the original tokenizer), and
its next-token distribution is the original model's pushed through the nested tokenization (exact when
`top_k` is None; the paper's K-LVR otherwise). Prompts are tokenized canonically by the original tokenizer
(with its special tokens and chat template) and then split into sub-tokens, so a prompt means the same to
both models. Each generated row keeps its own relative-cover state (histories with their own KV caches),
found again by content at every step, so greedy, sampling, beam search, stopping criteria, streamers and
user logits processors all work unchanged.
"""

from __future__ import annotations

import torch
from transformers import (
    BatchEncoding,
    GenerationConfig,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)
from transformers.modeling_outputs import CausalLMOutput

from hf_coop.vocab.relative_cover import CoverSettings, CoverState, ModelRunner
from hf_coop.vocab.sub_vocabulary import NestedTable, SubVocabulary


class ReducedVocabConfig(PretrainedConfig):
    model_type = "hf_coop_reduced_vocab"

    def __init__(
        self,
        vocab_size: int = 256,
        sub_vocab: str = "bytes",
        lvr_top_k: int | None = None,
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        nested_fingerprint: str | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.sub_vocab = sub_vocab
        self.lvr_top_k = lvr_top_k  # not `top_k`: generate would read that as its own sampling knob
        self.max_hypotheses = max_hypotheses
        self.prune_ratio = prune_ratio
        self.nested_fingerprint = nested_fingerprint
        super().__init__(**kwargs)


class PromptError(ValueError):
    """A prompt that the original tokenizer cannot turn back into the same sub-tokens."""


class ReducedVocabTokenizer:
    """Tokenizes like the original tokenizer, then splits each token into sub-tokens; decodes sub-tokens.

    Every encoded prompt is remembered (sub-token ids -> original ids), so the model can recover the exact
    original tokens of a prompt, special and chat-template tokens included.
    """

    padding_side = "left"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, nested: NestedTable):
        self.original = tokenizer
        self.nested = nested
        self.prompts: dict[tuple[int, ...], list[int]] = {}
        control = nested.control_sub_id
        self.eos_token_id = control.get(tokenizer.eos_token_id)
        self.bos_token_id = control.get(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = control.get(pad)

    def __len__(self) -> int:
        return self.nested.num_sub_tokens

    def from_original_ids(self, original_ids: list[int]) -> list[int]:
        """Split original token ids into sub-token ids and remember them as a prompt."""
        if not original_ids:
            raise PromptError("the prompt is empty; give at least one token (e.g. the BOS token)")
        sub_ids = self.nested.encode_tokens(original_ids)
        self.prompts[tuple(sub_ids)] = list(original_ids)
        return sub_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.from_original_ids(self.original(text, add_special_tokens=add_special_tokens)["input_ids"])

    def __call__(
        self, text: str | list[str], return_tensors: str | None = None, add_special_tokens: bool = True, **_
    ):
        texts = [text] if isinstance(text, str) else list(text)
        return self._batch([self.encode(t, add_special_tokens) for t in texts], return_tensors)

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = True, return_tensors=None, **kwargs
    ):
        """The original chat template, tokenized by the original tokenizer, then split into sub-tokens."""
        if not self.original.chat_template:
            raise PromptError(
                "the original tokenizer has no chat template; pass plain prompts or set tokenizer.chat_template"
            )
        conversations = [conversation] if conversation and isinstance(conversation[0], dict) else conversation
        rows = []
        for conv in conversations:
            ids = self.original.apply_chat_template(
                conv, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
            )
            ids = ids["input_ids"] if isinstance(ids, dict | BatchEncoding) else ids
            rows.append(self.from_original_ids(list(ids)))
        return self._batch(rows, return_tensors)

    def _batch(self, rows: list[list[int]], return_tensors: str | None) -> BatchEncoding:
        width = max(len(r) for r in rows)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = [[pad] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        if return_tensors is None and len(rows) == 1:
            ids, mask = ids[0], mask[0]
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type=return_tensors)

    def decode(self, sub_ids, skip_special_tokens: bool = False, **_) -> str:
        """Text of sub-token ids; special sub-tokens print as the original token unless skipped."""
        sub_ids = sub_ids.tolist() if isinstance(sub_ids, torch.Tensor) else list(sub_ids)
        control = self.nested.control_token_ids
        parts: list[bytes] = []
        for i in sub_ids:
            piece = self.nested.sub_token_bytes(i)
            if piece is None and not skip_special_tokens:
                piece = self.original.convert_ids_to_tokens(
                    control[i - len(self.nested.sub_strings)]
                ).encode()
            parts.append(piece or b"")
        return b"".join(parts).decode("utf-8", errors="replace")

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]

    def original_ids_for(self, sub_ids: tuple[int, ...]) -> list[int]:
        """The original tokens of an encoded prompt (or of text the original tokenizer spells the same way)."""
        if sub_ids in self.prompts:
            return self.prompts[sub_ids]
        data = self.nested.decode(sub_ids)
        if any(self.nested.sub_token_bytes(i) is None for i in sub_ids):
            raise PromptError(
                "this prompt holds special tokens but was not encoded by ReducedVocabLM.tokenizer; encode prompts "
                "with reduced.tokenizer(...) or reduced.tokenizer.apply_chat_template(...)"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(
                f"the prompt's bytes are not UTF-8 text ({e}); encode prompts with reduced.tokenizer"
            ) from e
        original = self.original(text, add_special_tokens=False)["input_ids"]
        if self.nested.encode_tokens(original) != list(sub_ids):
            raise PromptError(
                f"the original tokenizer does not round-trip this prompt ({text[:40]!r}...): its tokens split into "
                "other sub-tokens; encode prompts with reduced.tokenizer(...) so both models see the same tokens"
            )
        self.prompts[tuple(sub_ids)] = original
        return original


class MaxNewBytesCriteria(StoppingCriteria):
    """Stop each row once its generated sub-tokens spell `max_new_bytes` bytes (a budget in text, not tokens,
    so generators over different vocabularies can be compared on the same amount of text), or once they
    contain `stop_bytes` (e.g. b"\n\n" after a few-shot answer)."""

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


def unpadded_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[tuple[int, ...]]:
    """Each row's ids without its (left) padding."""
    rows = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b] if attention_mask is None else input_ids[b][attention_mask[b].bool()]
        rows.append(tuple(ids.tolist()))
    return rows


class ReducedVocabLM(PreTrainedModel, GenerationMixin):
    """A causal LM over a sub-vocabulary with the same text distribution as the original (see module doc)."""

    config_class = ReducedVocabConfig
    base_model_prefix = "original"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: ReducedVocabConfig, model: PreTrainedModel, tokenizer: ReducedVocabTokenizer):
        super().__init__(config)
        self.original = model  # registered submodule: device, dtype and parameters follow the original
        self.tokenizer = tokenizer
        self.nested = tokenizer.nested
        self.runner = ModelRunner(model, self.nested)
        self.settings = CoverSettings(config.lvr_top_k, config.max_hypotheses, config.prune_ratio)
        self._states: dict[tuple[int, ...], CoverState] = {}
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.generation_config = GenerationConfig(
            eos_token_id=eos or None,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            use_cache=False,  # each row's relative-cover state is its cache
        )

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sub_vocab: SubVocabulary | str = "bytes",
        top_k: int | None = None,
        max_hypotheses: int | None = None,
        prune_ratio: float = 0.0,
        split: str = "merges",
    ) -> ReducedVocabLM:
        """Reduce `model` to `sub_vocab` (a SubVocabulary, 'bytes' or 'max-bytes:N')."""
        if isinstance(sub_vocab, str):
            sub_vocab = SubVocabulary.parse(sub_vocab, tokenizer)
        nested = sub_vocab.nested_table(tokenizer, split=split)
        head = model.get_output_embeddings()
        if head is not None and head.weight.shape[0] < len(tokenizer):
            raise ValueError(
                f"the model's output head has {head.weight.shape[0]} rows but the tokenizer has {len(tokenizer)} "
                "tokens: this tokenizer does not belong to this model"
            )
        config = ReducedVocabConfig(
            vocab_size=nested.num_sub_tokens,
            sub_vocab=sub_vocab.name,
            lvr_top_k=top_k,
            max_hypotheses=max_hypotheses,
            prune_ratio=prune_ratio,
            nested_fingerprint=nested.fingerprint(),
        )
        return cls(config, model, ReducedVocabTokenizer(tokenizer, nested))

    # -- generation plumbing -----------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def reset(self) -> None:
        """Forget the per-row states (they are also dropped as soon as no row continues them)."""
        self._states = {}

    @property
    def forward_calls(self) -> int:
        return self.runner.forward_calls

    def state_for(
        self, sub_ids: tuple[int, ...], shared_parents: set[tuple[int, ...]] | None = None
    ) -> CoverState:
        """The relative-cover state after `sub_ids`: reused, advanced by one sub-token, or rebuilt."""
        if sub_ids in self._states:
            return self._states[sub_ids]
        parent_key = sub_ids[:-1]
        parent = self._states.get(parent_key)
        if parent is None:
            return self._rebuild(sub_ids)
        if shared_parents and parent_key in shared_parents:
            parent = parent.fork()
        if not parent.finished:
            parent.advance_or_finish(sub_ids[-1])
        return parent

    def _rebuild(self, sub_ids: tuple[int, ...]) -> CoverState:
        prompt = next(
            (sub_ids[:n] for n in range(len(sub_ids), 0, -1) if sub_ids[:n] in self.tokenizer.prompts),
            sub_ids,
        )
        state = CoverState(
            self.runner,
            self.tokenizer.original_ids_for(prompt),
            self.settings,
            self.generation_config.eos_token_id,
        )
        for sub_id in sub_ids[len(prompt) :]:
            if state.finished:
                break
            state.advance_or_finish(sub_id)
        return state

    def forward(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> CausalLMOutput:
        """Next sub-token log-probabilities for each row (shape `(batch, 1, vocab)`); the rows' states are
        found by their content, so reordered (beam search) or repeated rows work."""
        logits = [
            self._finished_logits() if state.finished else state.next_logprobs().float()
            for state in self.row_states(unpadded_rows(input_ids, attention_mask))
        ]
        return CausalLMOutput(logits=torch.stack(logits)[:, None, :].to(self.original.device))

    def row_states(self, rows: list[tuple[int, ...]]) -> list[CoverState]:
        """The state of every row (sub-token ids); states no row continues are dropped. Shared with
        `CommonVocabEnsemble`, which keeps one such state per member and row."""
        parents = [r[:-1] for r in rows if r not in self._states]
        shared = {p for p in parents if parents.count(p) > 1}
        states: dict[tuple[int, ...], CoverState] = {}
        for row in rows:
            states[row] = states.get(row) or self.state_for(row, shared)
        self._states = states
        return [states[row] for row in rows]

    def _finished_logits(self) -> torch.Tensor:
        logits = torch.full((self.nested.num_sub_tokens,), float("-inf"))
        logits[self.generation_config.pad_token_id] = 0.0
        return logits
