"""Where a prompt stops being tokens and becomes bytes (`prompt_boundary`).

A prompt tokenized canonically ends on a token boundary the model rarely saw there: "The capital of Fr"
ends with the token " Fr", after which "ance" is unlikely, because " France" is one token. The engine can
instead condition on a prompt's *bytes* (every tokenization of them, and every token that runs past the
prompt's end), exactly. `prompt_boundary` says which part of a prompt is conditioned on as bytes:

- `"canonical"`: none (the prompt is its canonical tokens, as in plain `generate`);
- `"exact"`: everything after the last special token (BOS, chat markers), which stay atomic;
- `"tail"` (default): the bytes from a cut on: the latest canonical token start such that no vocabulary
  token that could cover the prompt's end starts before it. Tokens before the cut stay canonical (one
  ordinary prefill); the few bytes after it are walked exactly. For a prompt of a word or two the cut is
  the start of the text and `"tail"` is `"exact"`.

The bytes of a prompt are those its canonical tokens spell (a SentencePiece dummy prefix space included),
plus, for a prompt given as `bytes`, any trailing bytes that do not yet form a UTF-8 character. When no
token precedes the bytes, the tokenizer's BOS token is put before them (the model needs one token to
predict the first); a tokenizer without BOS keeps its first token canonical.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from functools import cached_property

from hf_coop.errors import ConfigError, InputError
from hf_coop.vocab.token_bytes import TokenBytes

PROMPT_BOUNDARIES = ("tail", "exact", "canonical")


class PromptError(InputError):
    """A prompt that cannot be turned into what the models condition on."""


def check_prompt_boundary(value: str) -> str:
    if value not in PROMPT_BOUNDARIES:
        raise ConfigError(
            f"prompt_boundary must be one of {', '.join(map(repr, PROMPT_BOUNDARIES))}; got {value!r}"
        )
    return value


def split_utf8(data: bytes) -> tuple[str, bytes]:
    """(the longest prefix of `data` that is complete UTF-8 text, the incomplete character after it).
    Bytes that are invalid UTF-8 before the last character are refused."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    raise PromptError("the prompt's bytes are not UTF-8 text followed by at most one incomplete character")


class PromptSplitter:
    """Splits a prompt's canonical tokens into (canonical tokens, tail bytes) for one tokenizer and mode."""

    def __init__(self, table: TokenBytes, bos_token_id: int | None, mode: str = "tail"):
        self.table = table
        self.bos_token_id = bos_token_id
        self.mode = check_prompt_boundary(mode)

    @cached_property
    def longest_token(self) -> int:
        return max(map(len, self.table.sorted_strings))

    def _prefix_of_a_token(self, data: bytes) -> bool:
        tokens = self.table.sorted_strings
        at = bisect.bisect_left(tokens, data)
        return at < len(tokens) and tokens[at].startswith(data)

    def split(self, ids: Sequence[int], extra: bytes = b"", atomic: int = 0) -> tuple[list[int], bytes]:
        """(canonical tokens, tail bytes) of a prompt of canonical token `ids` followed by `extra` bytes
        (an incomplete UTF-8 character, or text whose tokens are unknown). `ids[:atomic]` never become
        bytes (a chat template's tokens)."""
        ids = list(ids)
        if self.mode == "canonical":
            if extra:
                raise PromptError(
                    "this prompt ends inside a UTF-8 character (or in text without its tokens), which canonical "
                    "tokens cannot express; use prompt_boundary='tail' or 'exact'"
                )
            return ids, b""
        table = self.table
        start = atomic
        for i in range(len(ids) - 1, atomic - 1, -1):
            if table[ids[i]] is None:  # a special token stays atomic, and so does all before it
                start = i + 1
                break
        cut = start
        if self.mode == "tail" and start < len(ids):
            text = table.decode(ids[start:]) + extra
            covering = next(
                (
                    p
                    for p in range(max(0, len(text) - self.longest_token), len(text))
                    if self._prefix_of_a_token(text[p:])
                ),
                len(text),
            )
            offset = 0  # the latest token start at or before `covering`
            for i in range(start, len(ids)):
                if offset > covering:
                    break
                cut, offset = i, offset + len(table[ids[i]])
        if cut == 0:
            if self.bos_token_id is not None:
                return [self.bos_token_id], table.decode(ids) + extra
            if not ids:
                raise PromptError(
                    "the prompt is empty and the tokenizer has no BOS token to condition on; give some text"
                )
            cut = 1  # no token to predict the first byte from: the first token stays canonical
        return ids[:cut], table.decode(ids[cut:]) + extra
