"""The maximal common vocabulary (MCV) of several tokenizers.

The MCV is the largest set of byte strings that every vocabulary holds (control tokens excluded), plus all
256 single bytes, closed under each tokenizer's BPE merges: every multi-byte string that a tokenizer builds
by merges keeps at least one producing merge with both parents inside the set. Strings failing that are
dropped and the check repeats to a fixpoint; since a union of closed sets is closed, the fixpoint is the
largest closed subset (the "maximal reading": Llama-3 style tokenizers list several merges for one result).

Models reduced to the same MCV share its sub-token ids, so their next-sub-token distributions can be
combined (`hf_coop.vocab.ensemble`). Each member splits its own tokens into MCV tokens (`split=`); where
the members' splits of a text disagree, a member is asked to continue a segmentation it would not have
produced, so `MCVReport` measures the boundary agreement on a given text. `split="common"` applies one
merge order (the members' merges restricted to the MCV, ranked by their relative priority) to every
member's tokens, which raises that agreement.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase

from hf_coop.errors import ConfigError
from hf_coop.vocab.sub_vocabulary import ALL_BYTES, SubVocabulary, _piece_bytes
from hf_coop.vocab.token_bytes import TokenBytes, token_bytes

SPLITS = ("merges", "longest", "common")


def ordered_merges(tokenizer: PreTrainedTokenizerBase, table: TokenBytes) -> list[tuple[bytes, bytes]]:
    """The tokenizer's BPE merges as byte-string pairs, highest priority first."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    out = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        a, b = _piece_bytes(left, table.scheme), _piece_bytes(right, table.scheme)
        if a and b:
            out.append((a, b))
    return out


def producing_merges(merges: list[tuple[bytes, bytes]]) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Result -> every merge producing it, by priority."""
    table: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    for a, b in merges:
        table[a + b].append((a, b))
    return dict(table)


def merge_closure(
    strings: set[bytes], merge_tables: Sequence[dict[bytes, list[tuple[bytes, bytes]]]]
) -> set[bytes]:
    """The largest subset of `strings` (single bytes always kept) closed under every merge table: each kept
    multi-byte string that a table builds has one producing merge of that table with both parents kept."""
    kept = set(strings) | ALL_BYTES
    children: dict[bytes, set[bytes]] = defaultdict(set)
    for merges in merge_tables:
        for result, pairs in merges.items():
            for a, b in pairs:
                children[a].add(result)
                children[b].add(result)

    def closed(s: bytes) -> bool:
        return len(s) == 1 or all(
            s not in merges or any(a in kept and b in kept for a, b in merges[s]) for merges in merge_tables
        )

    pending = list(kept)
    while pending:
        s = pending.pop()
        if s in kept and not closed(s):
            kept.discard(s)
            pending.extend(children.get(s, ()))
    return kept


class CommonSplit:
    """One split function for every member: BPE over the token's bytes with the members' merges restricted
    to the MCV, ranked by relative priority (a merge's rank in its tokenizer divided by that tokenizer's
    number of merges; the best over members). Tokens with the same bytes get the same split in every member,
    and merges agree across members more often than with each tokenizer's own order."""

    def __init__(self, mcv: SubVocabulary, tokenizers: Sequence[PreTrainedTokenizerBase]):
        from hf_coop.vocab.table_cache import tokenizer_fingerprint

        # what the tables built with this split depend on (their cache key)
        self.key = {"common": [tokenizer_fingerprint(t) for t in tokenizers], "mcv": mcv.fingerprint()}
        self.mcv, self.tokenizers = mcv, list(tokenizers)
        self._ranks: dict[tuple[bytes, bytes], float] | None = None

    @property
    def ranks(self) -> dict[tuple[bytes, bytes], float]:
        """Built on first use: a table cache hit never needs the merges."""
        if self._ranks is None:
            self._ranks = self._build_ranks()
        return self._ranks

    def _build_ranks(self) -> dict[tuple[bytes, bytes], float]:
        mcv, ranks = self.mcv, {}
        for merges in (ordered_merges(t, token_bytes(t)) for t in self.tokenizers):
            for rank, (a, b) in enumerate(merges):
                if a in mcv.strings and b in mcv.strings and a + b in mcv.strings:
                    ranks[(a, b)] = min(ranks.get((a, b), 1.0), rank / len(merges))
        return ranks

    def __call__(self, data: bytes) -> list[bytes]:
        ranks = self.ranks
        pieces = [bytes([b]) for b in data]
        while len(pieces) > 1:
            best, where = None, -1
            for i in range(len(pieces) - 1):
                rank = ranks.get((pieces[i], pieces[i + 1]))
                if rank is not None and (best is None or rank < best):
                    best, where = rank, i
            if best is None:
                break
            pieces[where : where + 2] = [pieces[where] + pieces[where + 1]]
        return pieces


@dataclasses.dataclass
class MCVReport:
    """What the MCV holds and, on a text, how often the members' nested splits agree on token boundaries."""

    tokenizers: list[str]
    size: int  # MCV strings, all 256 bytes included
    common_strings: int  # byte strings in every vocabulary (before closure, bytes added)
    dropped_by_closure: int
    special_tokens_excluded: list[int]  # control tokens per tokenizer (never MCV members)
    split: str
    # per tokenizer, the single bytes no token of it holds (hex): with no byte fallback, characters outside
    # its alphabet; an ensemble never produces a byte that one of its members cannot spell
    unspellable_bytes: list[list[str]] = dataclasses.field(default_factory=list)
    mean_bytes_per_token: float | None = None  # over the text's MCV tokens (first member's split)
    original_boundary_agreement: float | None = None  # the original tokenizations, for reference
    boundary_agreement: float | None = None  # |boundaries shared by all| / |boundaries of any|
    conflict_rate: float | None = None  # 1 - boundary_agreement
    text_bytes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def unspellable_bytes(table: TokenBytes) -> list[str]:
    """The single bytes (hex) that no token of `table` holds."""
    return [f"{b:02x}" for b in range(256) if b not in table.spellable_bytes]


def _boundaries(table: TokenBytes, pieces: list[bytes], data: bytes) -> set[int]:
    """End offsets of `pieces` in `data` (a prefix space the tokenizer added is stripped)."""
    spelled = b"".join(pieces)
    shift = len(spelled) - len(data)
    if shift < 0 or spelled[shift:] != data:
        raise ConfigError(
            "a tokenizer does not spell this text byte for byte (a lossy normalizer?); measure agreement on "
            "text it keeps as is"
        )
    ends, pos = set(), 0
    for piece in pieces:
        pos += len(piece)
        if pos - shift > 0:
            ends.add(pos - shift)
    return ends


def _agreement(boundary_sets: list[set[int]]) -> float:
    union = set().union(*boundary_sets)
    return len(set.intersection(*boundary_sets)) / len(union) if union else 1.0


def _closed_common_strings(tokenizers: Sequence[PreTrainedTokenizerBase]) -> tuple[SubVocabulary, int]:
    """The MCV and the number of strings common to every vocabulary before the closure (bytes included)."""
    tables = [token_bytes(t) for t in tokenizers]  # TokenBytesError names a tokenizer with no byte mapping
    common = set.intersection(*({b for b in t.byte_strings if b} for t in tables))
    merge_lists = [ordered_merges(tok, table) for tok, table in zip(tokenizers, tables)]
    kept = merge_closure(common, [producing_merges(m) for m in merge_lists])
    return SubVocabulary(frozenset(kept), "mcv"), len(common | ALL_BYTES)


def common_vocabulary(*tokenizers: PreTrainedTokenizerBase) -> tuple[SubVocabulary, int]:
    """`(MCV, number of common strings before the closure)`, from the table cache when it was built before."""
    from hf_coop.vocab.table_cache import cached, pack_bytes, tokenizer_fingerprint, unpack_bytes

    def to_arrays(value):
        mcv, common = value
        return {f"mcv.{k}": v for k, v in pack_bytes(mcv.ordered()).items()}, {"common": common}

    def from_arrays(arrays, meta):
        strings = unpack_bytes({k[4:]: v for k, v in arrays.items() if k.startswith("mcv.")})
        return SubVocabulary(frozenset(strings), "mcv"), meta["common"]

    key = {"tokenizers": [tokenizer_fingerprint(t) for t in tokenizers]}
    return cached("mcv", key, lambda: _closed_common_strings(tokenizers), to_arrays, from_arrays)


def maximal_common_vocabulary(
    *tokenizers: PreTrainedTokenizerBase,
    split: str = "merges",
    text: str | None = None,
    names: Sequence[str] | None = None,
) -> tuple[SubVocabulary, MCVReport]:
    """The MCV of `tokenizers` (named "mcv") and its report; `text` adds the boundary agreement of the
    members' nested splits under `split` ("merges": each tokenizer's own; "longest"; "common")."""
    if not tokenizers:
        raise ConfigError("give at least one tokenizer")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    mcv, common = common_vocabulary(*tokenizers)
    report = MCVReport(
        tokenizers=list(names or [getattr(t, "name_or_path", type(t).__name__) for t in tokenizers]),
        size=len(mcv.strings),
        common_strings=common,
        dropped_by_closure=common - len(mcv.strings),
        special_tokens_excluded=[len(token_bytes(t).special_ids) for t in tokenizers],
        split=split,
        unspellable_bytes=[unspellable_bytes(token_bytes(t)) for t in tokenizers],
    )
    if text:
        splitter = resolve_split(split, mcv, tokenizers)
        data = text.encode("utf-8")
        original, nested = [], []
        for tok in tokenizers:
            table = token_bytes(tok)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            original.append(_boundaries(table, [table[i] or b"" for i in ids], data))
            n = mcv.nested_table(tok, split=splitter)
            pieces = [n.sub_strings[s] for s in n.encode_tokens(ids)]
            nested.append(_boundaries(table, pieces, data))
            if report.mean_bytes_per_token is None:
                report.mean_bytes_per_token = sum(map(len, pieces)) / max(len(pieces), 1)
        report.text_bytes = len(data)
        report.original_boundary_agreement = _agreement(original)
        report.boundary_agreement = _agreement(nested)
        report.conflict_rate = 1.0 - report.boundary_agreement
    return mcv, report


def resolve_split(
    split: str, mcv: SubVocabulary, tokenizers: Sequence[PreTrainedTokenizerBase]
) -> str | Callable[[bytes], list[bytes]]:
    """What `NestedTable.build` takes for a split name ("common" becomes one function shared by all)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "common":
        return split
    return CommonSplit(mcv, tokenizers)
