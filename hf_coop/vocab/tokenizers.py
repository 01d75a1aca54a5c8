"""Tokenizers of reduced models and ensembles: they tokenize like the original tokenizer(s), split into
sub-tokens, and hand the models each member's own original tokens alongside (`original_input_ids`,
`member_input_ids`), so a prompt means the same to every model and nothing is ever looked up by content."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from hf_coop.vocab.sub_vocabulary import NestedTable


class PromptError(ValueError):
    """A prompt that cannot be turned into the tokens the models condition on."""


_SUPPORTED_PADDING = (True, "longest")


def _check_call_options(kwargs: dict[str, Any]) -> None:
    """Refuse tokenizer options that a sub-token tokenizer does not honour, instead of swallowing them."""
    padding = kwargs.pop("padding", True)
    if padding not in _SUPPORTED_PADDING:
        raise PromptError(
            f"padding={padding!r} is not supported: prompts are always left-padded to the longest"
        )
    if kwargs.pop("truncation", False):
        raise PromptError(
            "truncation is not supported: a cut prompt would change what the models condition on"
        )
    kwargs.pop("return_attention_mask", None)
    if kwargs:
        raise PromptError(f"unsupported tokenizer arguments {sorted(kwargs)}")


def _pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def _conversations(conversation) -> list:
    return [conversation] if conversation and isinstance(conversation[0], dict) else list(conversation)


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, conversation, add_generation_prompt: bool, **kwargs
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
    )
    return list(ids["input_ids"] if isinstance(ids, dict | BatchEncoding) else ids)


class SubTokenizerBase:
    """Shared shape of the reduced and the common-vocabulary tokenizers: left padding, batching, decoding."""

    padding_side = "left"
    pad_token_id: int | None = None

    def _encoding(
        self, rows: list[list[int]], extra: dict[str, Any], return_tensors: str | None
    ) -> BatchEncoding:
        if any(not r for r in rows):
            raise PromptError("the prompt has no token; give at least one character or a BOS token")
        ids, mask = _pad_left(rows, self.pad_token_id if self.pad_token_id is not None else 0)
        data = {"input_ids": ids, "attention_mask": mask, **extra}
        if return_tensors is None and len(rows) == 1:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return b"".join(self._bytes_of(i, skip_special_tokens) for i in ids).decode("utf-8", errors="replace")

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]


class ReducedVocabTokenizer(SubTokenizerBase):
    """Tokenizes like the original tokenizer (special tokens, chat template), then splits each token into
    sub-tokens; the original ids travel along as `original_input_ids` / `original_attention_mask`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, nested: NestedTable):
        self.original = tokenizer
        self.nested = nested
        control = nested.control_sub_id
        self.eos_token_id = control.get(tokenizer.eos_token_id)
        self.bos_token_id = control.get(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = control.get(pad)
        self.original_pad_id = pad if pad is not None else 0

    def __len__(self) -> int:
        return self.nested.num_sub_tokens

    def original_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.original(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.nested.encode_tokens(self.original_ids(text, add_special_tokens))

    def from_original_ids(
        self, rows: Sequence[Sequence[int]], return_tensors: str | None = None
    ) -> BatchEncoding:
        """Sub-token inputs for prompts given as original token ids (one list per row)."""
        rows = [list(r) for r in rows]
        if any(not r for r in rows):
            raise PromptError("the prompt is empty; give at least one token (e.g. the BOS token)")
        original, original_mask = _pad_left(rows, self.original_pad_id)
        extra = {"original_input_ids": original, "original_attention_mask": original_mask}
        return self._encoding([self.nested.encode_tokens(r) for r in rows], extra, return_tensors)

    def __call__(
        self,
        text: str | list[str],
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        _check_call_options(kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        return self.from_original_ids(
            [self.original_ids(t, add_special_tokens) for t in texts], return_tensors
        )

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = True, return_tensors=None, **kwargs
    ):
        """The original chat template, tokenized by the original tokenizer, then split into sub-tokens."""
        if not self.original.chat_template:
            raise PromptError(
                "the original tokenizer has no chat template; pass plain prompts or set tokenizer.chat_template"
            )
        rows = [
            _chat_ids(self.original, c, add_generation_prompt, **kwargs) for c in _conversations(conversation)
        ]
        return self.from_original_ids(rows, return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:
        piece = self.nested.sub_token_bytes(token_id)
        if piece is None and not skip_special_tokens:
            original = self.nested.control_token_ids[token_id - len(self.nested.sub_strings)]
            return str(self.original.convert_ids_to_tokens(original)).encode()
        return piece or b""

    def original_ids_for(self, sub_ids: Sequence[int]) -> list[int]:
        """The original tokens of sub-token ids that came without them: control sub-tokens are their tokens,
        and each run of text is tokenized canonically, which must split back into the same sub-tokens."""
        out: list[int] = []
        run: list[int] = []
        control = self.nested.control_token_ids
        n_text = len(self.nested.sub_strings)
        for sub in [*sub_ids, None]:
            if sub is not None and sub < n_text:
                run.append(sub)
                continue
            if run:
                out.extend(self._text_run(run))
                run = []
            if sub is not None:
                out.append(control[sub - n_text])
        return out

    def _text_run(self, run: list[int]) -> list[int]:
        data = self.nested.decode(run)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(
                f"the prompt's bytes are not UTF-8 text ({e}); encode prompts with the model's tokenizer"
            ) from e
        original = self.original_ids(text, add_special_tokens=False)
        if self.nested.encode_tokens(original) != run:
            raise PromptError(
                f"the original tokenizer does not round-trip this prompt ({text[:40]!r}...): its tokens split "
                "into other sub-tokens; encode prompts with the model's tokenizer(...) so that the original "
                "tokens travel with them"
            )
        return original


class CommonVocabTokenizer(SubTokenizerBase):
    """Encodes a prompt once per member (its own tokenizer, special tokens and chat template). The ensemble
    ids are the first member's MCV split without control tokens; every member's own tokens travel along as
    `member_input_ids` / `member_attention_mask` ([batch, members, length], left-padded)."""

    def __init__(self, members: Sequence[ReducedVocabTokenizer]):
        self.members = list(members)
        self.num_text = len(members[0].nested.sub_strings)
        self.eos_token_id = self.pad_token_id = self.num_text
        self.bos_token_id = None

    def __len__(self) -> int:
        return self.num_text + 1

    def _rows(self, member_rows: list[list[list[int]]], return_tensors: str | None) -> BatchEncoding:
        """`member_rows[row][member]`: original ids. Ensemble ids from the first member's split."""
        first = self.members[0].nested
        keys = [[s for s in first.encode_tokens(r[0]) if s < self.num_text] for r in member_rows]
        if any(not k for k in keys):
            raise PromptError("the prompt has no text; give at least one character")
        width = max(len(ids) for row in member_rows for ids in row)
        ids = [
            [[m.original_pad_id] * (width - len(x)) + x for m, x in zip(self.members, row)]
            for row in member_rows
        ]
        mask = [[[0] * (width - len(x)) + [1] * len(x) for x in row] for row in member_rows]
        return self._encoding(keys, {"member_input_ids": ids, "member_attention_mask": mask}, return_tensors)

    def __call__(
        self,
        text: str | list[str],
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        _check_call_options(kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        return self._rows(
            [[m.original_ids(t, add_special_tokens) for m in self.members] for t in texts], return_tensors
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = True, return_tensors=None, **kwargs
    ):
        """Each member's own chat template; a member without one is named in the error."""
        for index, member in enumerate(self.members):
            if not member.original.chat_template:
                raise PromptError(
                    f"member {index} ({member.original.name_or_path or type(member.original).__name__}) has no "
                    "chat template, so a chat prompt means nothing to it; use plain prompts, or set that "
                    "tokenizer's chat_template"
                )
        rows = [
            [_chat_ids(m.original, c, add_generation_prompt, **kwargs) for m in self.members]
            for c in _conversations(conversation)
        ]
        return self._rows(rows, return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:
        if token_id < self.num_text:
            return self.members[0].nested.sub_strings[token_id]
        return b"" if skip_special_tokens else str(self.members[0].original.eos_token or "").encode()
