"""Sub-vocabularies and the nested table that splits each original token into sub-vocabulary tokens.

A `SubVocabulary` is a set of byte strings that holds all 256 single bytes. For a given tokenizer it builds
a `NestedTable`: the split `τ_sub(v)` of every original token into sub-token ids (deterministic and
byte-preserving), arranged as a trie so that the tokens whose split starts with a given sub-token prefix
form one contiguous range (the tokens sorted by their split). Control tokens (special tokens and tokens
without text) become atomic sub-tokens of their own, so EOS and chat markers survive the reduction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from functools import cached_property

import torch
from transformers import PreTrainedTokenizerBase

from hf_coop.config_utils import fingerprint
from hf_coop.errors import ConfigError
from hf_coop.vocab.token_bytes import TokenBytes, gpt2_unicode_to_byte, token_bytes

ALL_BYTES = frozenset(bytes([b]) for b in range(256))
TRIE_ARRAYS = ("first_sub", "node_depth", "node_end_lo", "node_lo", "node_hi", "child_key", "child_node")


class SubVocabularyError(ConfigError):
    """A sub-vocabulary that cannot hold a lossless reduction."""


def _piece_bytes(piece: str, scheme: str) -> bytes | None:
    """Bytes of a merge operand, in the tokenizer's own spelling (None if it spells no plain bytes)."""
    if scheme == "byte_level":
        table = gpt2_unicode_to_byte()
        return bytes(table[c] for c in piece) if all(c in table for c in piece) else None
    return piece.replace("▁", " ").encode("utf-8")


def bpe_merges(tokenizer: PreTrainedTokenizerBase, table: TokenBytes) -> dict[bytes, tuple[bytes, bytes]]:
    """For every token built by a BPE merge, its highest-priority producing merge, as byte strings."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges: dict[bytes, tuple[bytes, bytes]] = {}
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        a, b = _piece_bytes(left, table.scheme), _piece_bytes(right, table.scheme)
        if a and b:
            merges.setdefault(a + b, (a, b))
    return merges


@dataclasses.dataclass(frozen=True)
class SubVocabulary:
    """A set of byte strings containing every single byte; `name` says how it was built."""

    strings: frozenset[bytes]
    name: str = "custom"

    def __post_init__(self):
        missing = ALL_BYTES - self.strings
        if missing:
            examples = ", ".join(repr(b) for b in sorted(missing)[:5])
            raise SubVocabularyError(
                f"a sub-vocabulary must hold all 256 single bytes so every text stays reachable; "
                f"{len(missing)} are missing (e.g. {examples}); add them, e.g. SubVocabulary.from_strings(...)"
            )
        if b"" in self.strings:
            raise SubVocabularyError("the empty byte string cannot be a sub-vocabulary token")

    @classmethod
    def bytes_only(cls) -> SubVocabulary:
        return cls(ALL_BYTES, "bytes")

    @classmethod
    def from_strings(cls, strings: Iterable[bytes | str], name: str = "custom") -> SubVocabulary:
        """An explicit list of byte strings (str is UTF-8 encoded); all single bytes are added."""
        encoded = {s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in strings}
        return cls(frozenset(encoded - {b""}) | ALL_BYTES, name)

    @classmethod
    def max_bytes(cls, tokenizer: PreTrainedTokenizerBase, n: int) -> SubVocabulary:
        """The tokenizer's tokens of at most `n` bytes, plus all single bytes."""
        if n < 1:
            raise SubVocabularyError(f"max-bytes needs n >= 1, got {n}")
        table = token_bytes(tokenizer)
        return cls(
            frozenset(b for b in table.byte_strings if b and len(b) <= n) | ALL_BYTES, f"max-bytes:{n}"
        )

    @classmethod
    def original(cls, tokenizer: PreTrainedTokenizerBase) -> SubVocabulary:
        """Every text token of the tokenizer (plus all single bytes): the identity reduction, under which each
        token is one sub-token. Its use is the prompt boundary: a plain model conditioned on a prompt's bytes
        (exact token healing) through `generate`."""
        table = token_bytes(tokenizer)
        return cls(frozenset(b for b in table.byte_strings if b) | ALL_BYTES, "original")

    @classmethod
    def parse(cls, spec: str, tokenizer: PreTrainedTokenizerBase) -> SubVocabulary:
        """`bytes`, `max-bytes:N` or `original` (the CLI's spelling)."""
        if spec == "bytes":
            return cls.bytes_only()
        if spec == "original":
            return cls.original(tokenizer)
        if spec.startswith("max-bytes:") and spec.split(":", 1)[1].isdigit():
            return cls.max_bytes(tokenizer, int(spec.split(":", 1)[1]))
        raise SubVocabularyError(f"unknown sub-vocabulary {spec!r}; use 'bytes', 'max-bytes:N' or 'original'")

    def ordered(self) -> list[bytes]:
        """Sub-token ids: the 256 bytes first (id = byte value), then longer strings by (length, bytes)."""
        longer = sorted((s for s in self.strings if len(s) > 1), key=lambda s: (len(s), s))
        return [bytes([b]) for b in range(256)] + longer

    def fingerprint(self) -> str:
        return fingerprint({"strings": [s.hex() for s in self.ordered()]})

    def nested_table(
        self, tokenizer: PreTrainedTokenizerBase, split: str | Callable[[bytes], list[bytes]] = "merges"
    ) -> NestedTable:
        """The nested table of `tokenizer` over this sub-vocabulary, from the table cache when the split is
        named (a string, or a callable with a `key`, as the common split has); built otherwise."""
        split_key = split if isinstance(split, str) else getattr(split, "key", None)
        if split_key is None:
            return NestedTable.build(tokenizer, self, split=split)
        from hf_coop.vocab.table_cache import cached, tokenizer_fingerprint

        key = {"tokenizer": tokenizer_fingerprint(tokenizer), "sub": self.fingerprint(), "split": split_key}
        return cached(
            "nested",
            key,
            lambda: NestedTable.build(tokenizer, self, split=split),
            NestedTable.to_arrays,
            NestedTable.from_arrays,
        )


def _longest_match_split(data: bytes, index: dict[bytes, int], max_len: int) -> list[int]:
    out, i = [], 0
    while i < len(data):
        for size in range(min(max_len, len(data) - i), 0, -1):
            sub_id = index.get(data[i : i + size])
            if sub_id is not None:
                out.append(sub_id)
                i += size
                break
    return out


@dataclasses.dataclass
class NestedTable:
    """`τ_sub` for every token of one tokenizer, as a trie in sorted-split order.

    `order[p]` is the token at trie position p (tokens sorted by their split, shorter prefixes first);
    `position[token]` inverts it. `tau_flat[tau_offset[p] : tau_offset[p] + tau_len[p]]` is the split of the
    token at position p. Sub-token ids are `sub_strings` (bytes first), then one atomic id per control token.
    """

    sub_strings: list[bytes]
    control_token_ids: list[int]  # original id of each atomic control sub-token, in sub-id order
    vocab_size: int  # the tokenizer's length; output-head rows beyond it are masked
    order: torch.Tensor
    position: torch.Tensor
    tau_flat: torch.Tensor
    tau_offset: torch.Tensor
    tau_len: torch.Tensor
    table: TokenBytes
    sub_name: str
    _tries: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        sub_vocab: SubVocabulary,
        split: str | Callable[[bytes], list[bytes]] = "merges",
    ) -> NestedTable:
        """`split="merges"` undoes the tokenizer's own BPE merges until every piece is a sub-token (falling
        back to longest match); `split="longest"` splits by greedy longest match from the left; a callable
        maps a token's bytes to sub-vocabulary pieces (one function shared by several tokenizers, as the
        common vocabulary's `split="common"` is)."""
        if not callable(split) and split not in ("merges", "longest"):
            raise SubVocabularyError(f"split must be 'merges', 'longest' or a callable, got {split!r}")
        table = token_bytes(tokenizer)
        sub_strings = sub_vocab.ordered()
        index = {s: i for i, s in enumerate(sub_strings)}
        max_len = max(len(s) for s in sub_strings)
        merges = bpe_merges(tokenizer, table) if split == "merges" else {}
        control = [i for i, b in enumerate(table.byte_strings) if b is None]
        control_sub = {tok: len(sub_strings) + k for k, tok in enumerate(control)}
        memo: dict[bytes, list[int]] = {}

        def split_bytes(data: bytes) -> list[int]:
            if data in memo:
                return memo[data]
            if data in index:
                result = [index[data]]
            elif callable(split):
                result = [index[piece] for piece in split(data)]
            elif data in merges:
                left, right = merges[data]
                result = split_bytes(left) + split_bytes(right)
            else:
                result = _longest_match_split(data, index, max_len)
            memo[data] = result
            return result

        taus = [[control_sub[i]] if b is None else split_bytes(b) for i, b in enumerate(table.byte_strings)]
        return cls._from_splits(taus, sub_strings, control, len(tokenizer), table, sub_vocab.name)

    @classmethod
    def _from_splits(
        cls,
        taus: list[list[int]],
        sub_strings: list[bytes],
        control: list[int],
        vocab_size: int,
        table: TokenBytes,
        sub_name: str,
    ) -> NestedTable:
        order = sorted(range(len(taus)), key=lambda i: taus[i])
        lengths = [len(taus[i]) for i in order]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        order_t = torch.tensor(order, dtype=torch.long)
        position = torch.empty_like(order_t)
        position[order_t] = torch.arange(len(order))
        return cls(
            sub_strings=sub_strings,
            control_token_ids=control,
            vocab_size=vocab_size,
            order=order_t,
            position=position,
            tau_flat=torch.tensor([s for i in order for s in taus[i]], dtype=torch.long),
            tau_offset=torch.tensor(offsets[:-1], dtype=torch.long),
            tau_len=torch.tensor(lengths, dtype=torch.long),
            table=table,
            sub_name=sub_name,
        )

    @cached_property
    def byte_level(self) -> NestedTable:
        """The same tokenizer's nested table over single bytes (prompts are conditioned on byte by byte)."""
        if self.sub_name == "bytes":
            return self
        control = list(self.control_token_ids)
        control_sub = {tok: 256 + k for k, tok in enumerate(control)}
        taus = [[control_sub[i]] if b is None else list(b) for i, b in enumerate(self.table.byte_strings)]
        sub_strings = [bytes([b]) for b in range(256)]
        return NestedTable._from_splits(taus, sub_strings, control, self.vocab_size, self.table, "bytes")

    def trie(self, device: torch.device | str = "cpu"):
        """The table as a `SplitTrie` of tensors on `device` (built once per device)."""
        from hf_coop.vocab.engine.trie import SplitTrie

        key = str(torch.device(device))
        if key not in self._tries:
            base = next(iter(self._tries.values()), None)
            self._tries[key] = base.to(device) if base is not None else SplitTrie.from_nested(self, device)
        return self._tries[key]

    def to_arrays(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON metadata for the table cache (the trie's arrays included)."""
        from hf_coop.vocab.table_cache import pack_bytes

        trie = self.trie("cpu")
        arrays = {
            "order": self.order,
            "position": self.position,
            "tau_flat": self.tau_flat,
            "tau_offset": self.tau_offset,
            "tau_len": self.tau_len,
            "control_token_ids": torch.tensor(self.control_token_ids, dtype=torch.long),
            "special_ids": torch.tensor(sorted(self.table.special_ids), dtype=torch.long),
            **{f"trie.{f}": getattr(trie, f) for f in TRIE_ARRAYS},
            **{f"sub.{k}": v for k, v in pack_bytes(self.sub_strings).items()},
            **{f"table.{k}": v for k, v in pack_bytes(list(self.table.byte_strings)).items()},
        }
        meta = {
            "vocab_size": self.vocab_size,
            "sub_name": self.sub_name,
            "scheme": self.table.scheme,
            "adds_prefix_space": self.table.adds_prefix_space,
            "lossy_normalizers": list(self.table.lossy_normalizers),
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], meta: dict) -> NestedTable:
        from hf_coop.vocab.engine.trie import SplitTrie
        from hf_coop.vocab.table_cache import unpack_bytes

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        table = TokenBytes(
            tuple(unpack_bytes(group("table."))),
            frozenset(arrays["special_ids"].tolist()),
            meta["scheme"],
            meta["adds_prefix_space"],
            tuple(meta["lossy_normalizers"]),
        )
        nested = cls(
            sub_strings=unpack_bytes(group("sub.")),
            control_token_ids=arrays["control_token_ids"].tolist(),
            vocab_size=meta["vocab_size"],
            order=arrays["order"],
            position=arrays["position"],
            tau_flat=arrays["tau_flat"],
            tau_offset=arrays["tau_offset"],
            tau_len=arrays["tau_len"],
            table=table,
            sub_name=meta["sub_name"],
        )
        nested._tries["cpu"] = SplitTrie(
            num_tokens=len(nested.order),
            num_sub_tokens=nested.num_sub_tokens,
            order=nested.order,
            position=nested.position,
            tau_len=nested.tau_len,
            tau_offset=nested.tau_offset,
            tau_flat=nested.tau_flat,
            **group("trie."),
        )
        return nested

    @property
    def num_sub_tokens(self) -> int:
        return len(self.sub_strings) + len(self.control_token_ids)

    @cached_property
    def sub_token_lengths(self) -> torch.Tensor:
        """Byte length of every sub-token (0 for the control sub-tokens)."""
        return torch.tensor([len(s) for s in self.sub_strings] + [0] * len(self.control_token_ids))

    @cached_property
    def control_sub_id(self) -> dict[int, int]:
        """Original control token id -> its atomic sub-token id."""
        return {tok: len(self.sub_strings) + k for k, tok in enumerate(self.control_token_ids)}

    def split(self, token_id: int) -> list[int]:
        """`τ_sub(token)` as sub-token ids."""
        p = int(self.position[token_id])
        start = int(self.tau_offset[p])
        return self.tau_flat[start : start + int(self.tau_len[p])].tolist()

    def sub_token_bytes(self, sub_id: int) -> bytes | None:
        return self.sub_strings[sub_id] if sub_id < len(self.sub_strings) else None

    def decode(self, sub_ids: Iterable[int]) -> bytes:
        """Bytes spelled by sub-token ids (control sub-tokens spell nothing)."""
        return b"".join(self.sub_token_bytes(i) or b"" for i in sub_ids)

    def encode_tokens(self, token_ids: Iterable[int]) -> list[int]:
        """The nested tokenization `T(v_1..v_n) = τ(v_1) ⊕ … ⊕ τ(v_n)`."""
        return [s for t in token_ids for s in self.split(int(t))]

    def fingerprint(self) -> str:
        return fingerprint({"sub": [s.hex() for s in self.sub_strings], "control": self.control_token_ids})
