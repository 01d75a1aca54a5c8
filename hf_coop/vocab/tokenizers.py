"""Tokenizers of reduced models and ensembles: they tokenize like the original tokenizer(s), split into
sub-tokens, and hand the models each member's own original tokens alongside (`original_input_ids`,
`member_input_ids`), so a prompt means the same to every model and nothing is ever looked up by content."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from hf_coop.vocab.prompt_boundary import PromptError, PromptSplitter, split_utf8
from hf_coop.vocab.sub_vocabulary import NestedTable

Prompt = tuple[list[int], bytes, int]  # canonical token ids, trailing bytes, how many ids stay atomic


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
    if kwargs.pop("return_attention_mask", True) is False:
        raise PromptError(
            "return_attention_mask=False is not supported: the models need the mask to tell padding from text"
        )
    if kwargs:
        raise PromptError(
            f"unsupported tokenizer arguments {sorted(kwargs)} (this tokenizer takes return_tensors, "
            "add_special_tokens, padding=True and return_attention_mask=True)"
        )


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(r) for r in rows)
    ids = [[pad] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def pad_tails(tails: Sequence[bytes], pad: int = -1) -> list[list[int]]:
    """Tail bytes right-padded with -1 to one width (at least 1)."""
    width = max(1, max((len(t) for t in tails), default=0))
    return [list(t) + [pad] * (width - len(t)) for t in tails]


def _conversations(conversation) -> list:
    return [conversation] if conversation and isinstance(conversation[0], dict) else list(conversation)


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, conversation, add_generation_prompt: bool, **kwargs
) -> list[int]:
    ids = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
    )
    return list(ids["input_ids"] if isinstance(ids, dict | BatchEncoding) else ids)


def _chat_prompt(
    member: ReducedVocabTokenizer, conversation, add_generation_prompt: bool, **kwargs
) -> Prompt:
    """A rendered chat as a prompt: the template's tokens stay atomic; with `continue_final_message=True`
    (and a prompt boundary other than "canonical") the final, partial message's own text may become bytes (its canonical tokens, or its bytes alone when
    those tokens would spell something else, e.g. a SentencePiece dummy prefix space)."""
    tokenizer, table = member.original, member.nested.table
    partial = kwargs.get("continue_final_message") and member.prompt_boundary != "canonical"
    content = conversation[-1].get("content") if partial else None
    if isinstance(content, str) and content:
        rendered = tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
        if rendered.endswith(content):
            head = list(tokenizer(rendered[: -len(content)], add_special_tokens=False)["input_ids"])
            own = list(tokenizer(content, add_special_tokens=False)["input_ids"])
            if table.decode(own) != content.encode("utf-8"):
                return head, content.encode("utf-8"), len(head)
            return head + own, b"", len(head)
    ids = _chat_ids(tokenizer, conversation, add_generation_prompt, **kwargs)
    return ids, b"", len(ids)


class SubTokenizerBase:
    """Shared shape of the reduced and the common-vocabulary tokenizers: left padding, batching, decoding."""

    padding_side = "left"
    pad_token_id: int | None = None

    def _encoding(
        self, rows: list[list[int]], extra: dict[str, Any], return_tensors: str | None
    ) -> BatchEncoding:
        if any(not r for r in rows):
            raise PromptError("the prompt has no token; give at least one character or a BOS token")
        ids, mask = pad_left(rows, self.pad_token_id if self.pad_token_id is not None else 0)
        data = {"input_ids": ids, "attention_mask": mask, **extra}
        if return_tensors is None and len(rows) == 1:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_texts(
        self, texts: list[str | bytes], add_special_tokens: bool, return_tensors
    ) -> BatchEncoding:
        raise NotImplementedError  # pragma: no cover - abstract

    def __call__(
        self,
        text: str | bytes | list[str | bytes],
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenize like the original tokenizer(s); the options a sub-token tokenizer cannot honour are refused."""
        _check_call_options(kwargs)
        texts = [text] if isinstance(text, str | bytes) else list(text)
        return self._encode_texts(texts, add_special_tokens, return_tensors)

    def decode(self, ids, skip_special_tokens: bool = False, **_) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return b"".join(self._bytes_of(i, skip_special_tokens) for i in ids).decode("utf-8", errors="replace")

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]


class ReducedVocabTokenizer(SubTokenizerBase):
    """Tokenizes like the original tokenizer (special tokens, chat template), then splits each token into
    sub-tokens; the original ids travel along as `original_input_ids` / `original_attention_mask`. Under a
    `prompt_boundary` other than "canonical", the prompt's last bytes travel as `tail_bytes` (right-padded
    with -1) instead of tokens, and appear among the sub-tokens as single bytes."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, nested: NestedTable, prompt_boundary: str = "tail"
    ):
        self.original = tokenizer
        self.nested = nested
        control = nested.control_sub_id
        self.eos_token_id = control.get(tokenizer.eos_token_id)
        self.bos_token_id = control.get(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = control.get(pad)
        self.original_pad_id = pad if pad is not None else 0
        self.splitter = PromptSplitter(nested.table, tokenizer.bos_token_id, prompt_boundary)

    @property
    def prompt_boundary(self) -> str:
        return self.splitter.mode

    def __len__(self) -> int:
        return self.nested.num_sub_tokens

    def original_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.original(text, add_special_tokens=add_special_tokens)["input_ids"])

    def prompt(self, text: str | bytes, add_special_tokens: bool = True) -> Prompt:
        """A text prompt as canonical ids; a `bytes` prompt may end inside a UTF-8 character."""
        text, extra = split_utf8(text) if isinstance(text, bytes) else (text, b"")
        return self.original_ids(text, add_special_tokens), extra, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.nested.encode_tokens(self.original_ids(text, add_special_tokens))

    def bounded(self, prompt: Prompt) -> tuple[list[int], bytes]:
        """(canonical original ids, tail bytes) of a prompt under this tokenizer's `prompt_boundary`."""
        ids, extra, atomic = prompt
        return self.splitter.split(ids, extra, atomic)

    def encode_prompts(self, prompts: Sequence[Prompt], return_tensors: str | None = None) -> BatchEncoding:
        """Model inputs for prompts, each split at this tokenizer's prompt boundary."""
        return self.from_bounded([self.bounded(p) for p in prompts], return_tensors)

    def from_bounded(
        self, rows: Sequence[tuple[Sequence[int], bytes]], return_tensors: str | None = None
    ) -> BatchEncoding:
        """Inputs for (canonical original ids, tail bytes) per row."""
        rows = [(list(ids), tail) for ids, tail in rows]
        if any(not ids for ids, _ in rows):
            raise PromptError("the prompt is empty; give at least one token (e.g. the BOS token)")
        original, original_mask = pad_left([ids for ids, _ in rows], self.original_pad_id)
        extra = {"original_input_ids": original, "original_attention_mask": original_mask}
        if self.prompt_boundary != "canonical":
            extra["tail_bytes"] = pad_tails([tail for _, tail in rows])
        subs = [self.nested.encode_tokens(ids) + list(tail) for ids, tail in rows]
        return self._encoding(subs, extra, return_tensors)

    def from_original_ids(
        self, rows: Sequence[Sequence[int]], return_tensors: str | None = None
    ) -> BatchEncoding:
        """Sub-token inputs for prompts given as original token ids (one list per row), conditioned on as
        those very tokens."""
        return self.from_bounded([(r, b"") for r in rows], return_tensors)

    def _encode_texts(
        self, texts: list[str | bytes], add_special_tokens: bool, return_tensors
    ) -> BatchEncoding:
        return self.encode_prompts([self.prompt(t, add_special_tokens) for t in texts], return_tensors)

    def apply_chat_template(
        self, conversation, add_generation_prompt: bool = True, return_tensors=None, **kwargs
    ):
        """The original chat template, tokenized by the original tokenizer, then split into sub-tokens."""
        if not self.original.chat_template:
            raise PromptError(
                "the original tokenizer has no chat template; pass plain prompts or set tokenizer.chat_template"
            )
        prompts = [
            _chat_prompt(self, c, add_generation_prompt, **kwargs) for c in _conversations(conversation)
        ]
        return self.encode_prompts(prompts, return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:
        piece = self.nested.sub_token_bytes(token_id)
        if piece is None and not skip_special_tokens:
            original = self.nested.control_token_ids[token_id - len(self.nested.sub_strings)]
            return str(self.original.convert_ids_to_tokens(original)).encode()
        return piece or b""

    def prompt_for(self, sub_ids: Sequence[int]) -> Prompt:
        """The prompt spelled by sub-token ids that came without their original tokens: control sub-tokens
        are their tokens, and each run of text is tokenized canonically (under the "canonical" boundary it
        must split back into the same sub-tokens; otherwise the last run may end inside a character)."""
        out: list[int] = []
        run: list[int] = []
        control = self.nested.control_token_ids
        n_text = len(self.nested.sub_strings)
        extra = b""
        for sub in [*sub_ids, None]:
            if sub is not None and sub < n_text:
                run.append(sub)
                continue
            if run:
                ids, extra = self._text_run(run, last=sub is None)
                out.extend(ids)
                run = []
            if sub is not None:
                out.append(control[sub - n_text])
        return out, extra, 0

    def _text_run(self, run: list[int], last: bool) -> tuple[list[int], bytes]:
        data = self.nested.decode(run)
        if last and self.prompt_boundary != "canonical":
            text, extra = split_utf8(data)
            return self.original_ids(text, add_special_tokens=False), extra
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(
                f"the prompt's bytes are not UTF-8 text ({e}); encode prompts with the model's tokenizer"
            ) from e
        original = self.original_ids(text, add_special_tokens=False)
        if self.prompt_boundary == "canonical" and self.nested.encode_tokens(original) != run:
            raise PromptError(
                f"the original tokenizer does not round-trip this prompt ({text[:40]!r}...): its tokens split "
                "into other sub-tokens; encode prompts with the model's tokenizer(...) so that the original "
                "tokens travel with them"
            )
        return original, b""


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

    def _rows(self, member_rows: list[list[Prompt]], return_tensors: str | None) -> BatchEncoding:
        """`member_rows[row][member]`: each member's prompt, split at its own prompt boundary. Ensemble ids
        are the first member's MCV split of its canonical part, then its tail bytes."""
        bounded = [[m.bounded(p) for m, p in zip(self.members, row)] for row in member_rows]
        first = self.members[0].nested
        keys = [
            [s for s in first.encode_tokens(row[0][0]) if s < self.num_text] + list(row[0][1])
            for row in bounded
        ]
        if any(not k for k in keys):
            raise PromptError("the prompt has no text; give at least one character")
        width = max(len(ids) for row in bounded for ids, _ in row)
        ids = [
            [[m.original_pad_id] * (width - len(x)) + x for m, (x, _) in zip(self.members, row)]
            for row in bounded
        ]
        mask = [[[0] * (width - len(x)) + [1] * len(x) for x, _ in row] for row in bounded]
        extra = {"member_input_ids": ids, "member_attention_mask": mask}
        if self.members[0].prompt_boundary != "canonical":
            tails = pad_tails([tail for row in bounded for _, tail in row])
            n = len(self.members)
            extra["member_tail_bytes"] = [tails[r * n : (r + 1) * n] for r in range(len(bounded))]
        return self._encoding(keys, extra, return_tensors)

    def _encode_texts(
        self, texts: list[str | bytes], add_special_tokens: bool, return_tensors
    ) -> BatchEncoding:
        return self._rows(
            [[m.prompt(t, add_special_tokens) for m in self.members] for t in texts], return_tensors
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode_bytes(self, ids) -> bytes:
        """The bytes that ensemble ids spell (the EOS/padding id spells nothing)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return b"".join(self._bytes_of(i, skip_special_tokens=True) for i in ids)

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
            [_chat_prompt(m, c, add_generation_prompt, **kwargs) for m in self.members]
            for c in _conversations(conversation)
        ]
        return self._rows(rows, return_tensors)

    def _bytes_of(self, token_id: int, skip_special_tokens: bool) -> bytes:
        if token_id < self.num_text:
            return self.members[0].nested.sub_strings[token_id]
        return b"" if skip_special_tokens else str(self.members[0].original.eos_token or "").encode()
