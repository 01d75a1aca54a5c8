"""Map every token id of a tokenizer to the raw bytes it stands for.

Byte-level BPE tokens (GPT-2, Llama-3, SmolLM2) are spelled in the GPT-2 byte-to-unicode alphabet
(`Ġ` is a space); SentencePiece-style tokens (Llama-2, Gemma) use `▁` for a space and `<0xNN>` for one raw
byte. Special tokens (and any token with no text, such as unused slots) have no bytes: they are control
symbols, never part of a text. The mapping is exact: for any text, the bytes of its token ids concatenate
to the UTF-8 bytes of the text, up to the normalizer and prefix space, which are reported, not hidden.
"""

from __future__ import annotations

import dataclasses
import json
import re
import weakref
from functools import cached_property, lru_cache

from transformers import PreTrainedTokenizerBase

from hf_coop.errors import ConfigError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Normalizers the byte mapping undoes exactly (SentencePiece writes spaces as `▁`).
_REVERSIBLE_NORMALIZERS = {"Replace", "Prepend", "Sequence"}


@lru_cache(maxsize=1)
def gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's `bytes_to_unicode`: printable characters standing for the 256 bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shift)] = b
            shift += 1
    return mapping


class TokenBytesError(ConfigError):
    """The tokenizer's tokens cannot be mapped to bytes."""


@dataclasses.dataclass(frozen=True)
class TokenBytes:
    """Raw bytes of every token id; `None` for special and empty (control) tokens."""

    byte_strings: tuple[bytes | None, ...]
    special_ids: frozenset[int]
    scheme: str  # "byte_level" or "sentencepiece"
    adds_prefix_space: bool  # tokenizer(text) spells " " + text
    lossy_normalizers: tuple[str, ...]  # normalizers that may change the text (e.g. NFC, Lowercase)

    def __len__(self) -> int:
        return len(self.byte_strings)

    def __getitem__(self, token_id: int) -> bytes | None:
        return self.byte_strings[token_id]

    def decode(self, token_ids) -> bytes:
        """Concatenate the bytes of `token_ids`, skipping control tokens."""
        return b"".join(self.byte_strings[i] or b"" for i in token_ids)

    @cached_property
    def sorted_strings(self) -> list[bytes]:
        """Every token's bytes, sorted and deduplicated (a prefix test is one binary search)."""
        return sorted({b for b in self.byte_strings if b})

    @cached_property
    def spellable_bytes(self) -> frozenset[int]:
        """Byte values that occur in some token: the only bytes a sequence of these tokens can spell."""
        return frozenset(b for s in self.byte_strings if s for b in s)


def spelled_bytes(tokenizer: PreTrainedTokenizerBase, text: str) -> bytes:
    """The bytes that `tokenizer(text)`'s tokens spell: the text after the tokenizer's normalizer and
    prefix space. Equal to `text.encode()` unless `TokenBytes.lossy_normalizers` or
    `adds_prefix_space` say otherwise."""
    backend = tokenizer.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    pieces = (
        backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer else [(normalized, None)]
    )
    spelled = "".join(piece for piece, _ in pieces)
    if _byte_scheme(tokenizer)[1] == "byte_level":
        table = gpt2_unicode_to_byte()
        return bytes(table[ch] for ch in spelled)
    return spelled.replace("▁", " ").encode("utf-8")


def _decoder_and_pretok_types(spec: dict) -> set[str]:
    types: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "type" in node:
                types.add(node["type"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec.get("decoder"))
    walk(spec.get("pre_tokenizer"))
    return types


def _normalizer_types(spec: dict) -> list[str]:
    node = spec.get("normalizer")
    if not node:
        return []
    nodes = node.get("normalizers", [node]) if node.get("type") == "Sequence" else [node]
    return [n["type"] for n in nodes]


def _byte_scheme(tokenizer: PreTrainedTokenizerBase) -> tuple[dict, str]:
    """The tokenizer's JSON spec and how its token strings spell bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenBytesError(
            f"{type(tokenizer).__name__} is a slow tokenizer; load the fast one "
            "(AutoTokenizer.from_pretrained(..., use_fast=True)) so its tokens can be mapped to bytes"
        )
    spec = json.loads(backend.to_str())
    types = _decoder_and_pretok_types(spec)
    if "ByteLevel" in types:
        scheme = "byte_level"
    elif spec["model"].get("byte_fallback") or {"ByteFallback", "Metaspace"} & types:
        scheme = "sentencepiece"
    else:
        raise TokenBytesError(
            f"cannot derive the bytes of {type(tokenizer).__name__}'s tokens: it is neither byte-level BPE nor "
            f"SentencePiece with `▁` (its model is {spec['model'].get('type')}, decoder/pre-tokenizer types "
            f"{sorted(types)}); WordPiece-style tokenizers drop spaces and cannot be reduced losslessly"
        )
    return spec, scheme


_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> TokenBytes:
    """Derive the byte string of every token id of a fast tokenizer (see module docstring); computed once
    per tokenizer object (and again if tokens are added to it)."""
    known = _known.get(tokenizer)
    if known is not None and len(known) == len(tokenizer):
        return known
    table = _derive_token_bytes(tokenizer)
    _known[tokenizer] = table
    return table


def _derive_token_bytes(tokenizer: PreTrainedTokenizerBase) -> TokenBytes:
    spec, scheme = _byte_scheme(tokenizer)

    added = tokenizer.added_tokens_decoder
    special_ids = {i for i, tok in added.items() if tok.special} | set(tokenizer.all_special_ids)
    unicode_to_byte = gpt2_unicode_to_byte()
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    out: list[bytes | None] = []
    for token_id, token in enumerate(strings):
        if token_id in special_ids or token is None:
            out.append(None)
        elif token_id in added:
            out.append(added[token_id].content.encode("utf-8") or None)
        elif scheme == "byte_level":
            try:
                out.append(bytes(unicode_to_byte[ch] for ch in token) or None)
            except KeyError as e:
                raise TokenBytesError(
                    f"token {token_id} {token!r} has a character outside the GPT-2 byte alphabet; "
                    "this byte-level tokenizer uses an unknown byte encoding"
                ) from e
        else:
            m = _BYTE_FALLBACK.match(token)
            out.append(bytes([int(m.group(1), 16)]) if m else token.replace("▁", " ").encode("utf-8") or None)
    special_ids |= {i for i, b in enumerate(out) if b is None}

    mapped = TokenBytes(tuple(out), frozenset(special_ids), scheme, False, ())
    probe = tokenizer("a", add_special_tokens=False)["input_ids"]
    adds_prefix_space = mapped.decode(probe) == b" a"
    lossy = tuple(t for t in _normalizer_types(spec) if t not in _REVERSIBLE_NORMALIZERS)
    if scheme == "sentencepiece":
        lossy += ("a literal '▁' in the text is read as a space",)
    return dataclasses.replace(mapped, adds_prefix_space=adds_prefix_space, lossy_normalizers=lossy)
