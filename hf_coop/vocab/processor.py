"""`CommonVocabLogitsProcessor`: a common-vocabulary ensemble steering one member's own `generate`."""

from __future__ import annotations

import torch
from transformers import BatchEncoding, LogitsProcessor

from hf_coop.errors import ConfigError
from hf_coop.vocab.engine.cache import EngineCache
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.tokenizers import PromptError, pad_left

NEG_INF = float("-inf")


class CommonVocabLogitsProcessor(LogitsProcessor):
    """The ensemble as a logits processor for one member's own `generate` (the *driver*).

        processor = CommonVocabLogitsProcessor(ensemble, driver=0)
        inputs = processor.encode(["The capital of France is", "It is"])
        out = driver_model.generate(**inputs, logits_processor=[processor], do_sample=False)

    It restricts the driver to tokens that are exactly one MCV token (or EOS) and replaces their scores by
    the ensemble's log-probabilities, so one generated driver token is one ensemble token and the greedy
    text equals `CommonVocabEnsemble.generate`'s. Cost: everything the ensemble computes, plus one forward
    of the driver per step whose logits are thrown away; the model form avoids that extra forward.

    Each `generate` call starts a fresh ensemble state for the rows last encoded (repeated as `generate`
    repeats them for `num_return_sequences` / beams); beam search's reordering is followed by matching each
    row to the row it extends in the previous step.
    """

    def __init__(self, ensemble: CommonVocabEnsemble, driver: int = 0):
        if isinstance(driver, bool) or not isinstance(driver, int) or not 0 <= driver < len(ensemble.members):
            raise ConfigError(
                f"driver must be a member index in [0, {len(ensemble.members)}), got {driver!r}"
            )
        if driver not in ensemble.active_members():
            raise ConfigError(f"member {driver} has weight 0, so it is not run and cannot drive generation")
        self.ensemble = ensemble
        self.driver = driver
        member = ensemble.members[driver]
        table = member.nested.table
        index = {s: i for i, s in enumerate(member.nested.sub_strings)}
        token_of_sub: dict[int, int] = {}
        for token_id, data in enumerate(table.byte_strings):
            if data in index:
                token_of_sub.setdefault(index[data], token_id)  # lowest id stands for the string
        missing = [s for s in range(ensemble.num_text) if s not in token_of_sub]
        if missing:
            raise ConfigError(
                f"the driver's vocabulary lacks {len(missing)} MCV strings (e.g. "
                f"{member.nested.sub_strings[missing[0]]!r}); pick a byte-level or byte-fallback member as driver"
            )
        original = member.tokenizer.original
        self.eos_token_id = original.eos_token_id
        self.pad_token_id = (
            original.pad_token_id if original.pad_token_id is not None else original.eos_token_id
        )
        self.token_of_sub = torch.tensor([token_of_sub[s] for s in range(ensemble.num_text)])
        sub_of_token = torch.full((len(table),), -1, dtype=torch.long)
        sub_of_token[self.token_of_sub] = torch.arange(ensemble.num_text)
        if self.eos_token_id is not None:
            sub_of_token[self.eos_token_id] = ensemble.num_text
        self.sub_of_token = sub_of_token
        self._encoded: BatchEncoding | None = None
        self._driver_prompt: torch.Tensor | None = None
        self._cache: EngineCache | None = None
        self._previous: torch.Tensor | None = None

    def _driver_inputs(self, encoded: BatchEncoding) -> BatchEncoding:
        """The driver's own tokens for the prompts: its canonical part, then its tail bytes as the driver's
        single-byte tokens (the ensemble conditions on those bytes over all tokenizations)."""
        self._cache = None
        ids = encoded["member_input_ids"][:, self.driver]
        mask = encoded["member_attention_mask"][:, self.driver]
        if "member_tail_bytes" in encoded:
            tails = encoded["member_tail_bytes"][:, self.driver]
            rows = [
                row[keep.bool()].tolist() + self.token_of_sub[tail[tail >= 0]].tolist()
                for row, keep, tail in zip(ids, mask, tails)
            ]
            padded, padding_mask = pad_left(rows, self.pad_token_id if self.pad_token_id is not None else 0)
            ids, mask = torch.tensor(padded), torch.tensor(padding_mask)
        self._encoded = encoded
        self._driver_prompt = ids
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    def encode(self, text: str | list[str], add_special_tokens: bool = True) -> BatchEncoding:
        """The driver's inputs for `text`; every member's own tokens are kept for the generation."""
        return self._driver_inputs(
            self.ensemble.tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)
        )

    def apply_chat_template(self, conversation, add_generation_prompt: bool = True) -> BatchEncoding:
        return self._driver_inputs(
            self.ensemble.tokenizer.apply_chat_template(
                conversation, add_generation_prompt, return_tensors="pt"
            )
        )

    def decode(self, token_ids) -> str:
        """Text of the driver's generated token ids."""
        table = self.ensemble.members[self.driver].nested.table
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return table.decode(ids).decode("utf-8", errors="replace")

    def _start(self, input_ids: torch.Tensor) -> None:
        encoded = self._encoded
        if encoded is None:
            raise PromptError(
                "encode the prompts with processor.encode(...) / apply_chat_template(...) first"
            )
        prompt = self._driver_prompt
        rows, width = input_ids.shape
        if width != prompt.shape[1] or rows % len(prompt):
            raise PromptError(
                "generate's inputs are not the prompts last encoded by processor.encode(...); encode them again"
            )
        repeat = rows // len(prompt)
        if not torch.equal(input_ids.cpu(), prompt.repeat_interleave(repeat, dim=0)):
            raise PromptError("generate's inputs are not the prompts last encoded by processor.encode(...)")
        self._cache = self.ensemble.new_cache()
        member_ids = encoded["member_input_ids"].repeat_interleave(repeat, dim=0)
        member_mask = encoded["member_attention_mask"].repeat_interleave(repeat, dim=0)
        tails = encoded.get("member_tail_bytes")
        tails = None if tails is None else tails.repeat_interleave(repeat, dim=0)
        self.ensemble.start_rows(self._cache, None, None, member_ids, member_mask, tails)

    def _follow_reordering(self, input_ids: torch.Tensor) -> None:
        """Beam search reorders rows between calls: each row extends one row of the previous call."""
        previous = self._previous
        if torch.equal(input_ids[:, :-1], previous):
            return
        same = (input_ids[:, None, :-1] == previous[None, :, :]).all(-1)
        if not bool(same.any(1).all()):
            raise PromptError("a row does not extend any row of the previous step; was generate restarted?")
        self._cache.scheduler.select_rows(same.float().argmax(1))

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._cache is None or self._previous is None or input_ids.shape[1] != self._previous.shape[1] + 1:
            self._start(input_ids)
        else:
            self._follow_reordering(input_ids)
            finished = self._cache.scheduler.members[0].cover.finished.cpu()
            column = self.sub_of_token.to(input_ids.device)[input_ids[:, -1]]
            if bool(((column < 0) & ~finished.to(column.device)).any()):
                raise PromptError(
                    "the driver produced a token outside the common vocabulary (another logits processor?)"
                )
            column = torch.where(finished.to(column.device), self.ensemble.num_text, column)
            self.ensemble.step_rows(self._cache, column)
        self._previous = input_ids.clone()
        logprobs = self.ensemble.row_logprobs(self._cache).to(scores.device, scores.dtype)
        out = torch.full_like(scores, NEG_INF)
        out[:, self.token_of_sub.to(scores.device)] = logprobs[:, : self.ensemble.num_text]
        if self.eos_token_id is not None:
            out[:, self.eos_token_id] = logprobs[:, self.ensemble.num_text]
        return out
