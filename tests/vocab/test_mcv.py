"""Properties of the maximal common vocabulary: common, holds every byte, closed under merges, maximal."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_coop.commands import main
from hf_coop.testing import bundled_passage, tiny_byte_level_tokenizer, tiny_causal_lm
from hf_coop.vocab.mcv import (
    maximal_common_vocabulary,
    merge_closure,
    ordered_merges,
    producing_merges,
    resolve_split,
)
from hf_coop.vocab.sub_vocabulary import ALL_BYTES, NestedTable
from hf_coop.vocab.token_bytes import TokenBytesError, token_bytes


def byte_level_from_merges(merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose only multi-byte tokens are the results of `merges` (ASCII letters)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def members(byte_level_tokenizer, sentencepiece_tokenizer):
    return [byte_level_tokenizer, sentencepiece_tokenizer, tiny_byte_level_tokenizer(330)]


def _texts(tokenizer) -> set[bytes]:
    return {b for b in token_bytes(tokenizer).byte_strings if b}


def _is_closed(strings, tokenizers) -> bool:
    for tok in tokenizers:
        merges = producing_merges(ordered_merges(tok, token_bytes(tok)))
        for s in strings:
            if len(s) > 1 and s in merges and not any(a in strings and b in strings for a, b in merges[s]):
                return False
    return True


def test_mcv_is_common_holds_all_bytes_and_is_closed(members):
    for group in (members[:2], members):
        mcv, report = maximal_common_vocabulary(*group)
        assert ALL_BYTES <= mcv.strings and mcv.name == "mcv"
        for tok in group:
            assert mcv.strings - ALL_BYTES <= _texts(tok)
        assert _is_closed(mcv.strings, group)
        assert report.size == len(mcv.strings)


def test_closure_drops_tokens_built_from_outside_parents_and_is_maximal():
    a = byte_level_from_merges([("a", "b"), ("ab", "c"), ("x", "y")])
    b = byte_level_from_merges([("b", "c"), ("a", "bc"), ("x", "y")])
    # Lists both producing merges of "abc": kept when one of them stays inside (the maximal reading).
    both = byte_level_from_merges([("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc"), ("x", "y")])
    mcv, report = maximal_common_vocabulary(a, b)
    assert mcv.strings - ALL_BYTES == {b"xy"}  # "abc" is common but A builds it from "ab", which B lacks
    assert report.dropped_by_closure == 1 and report.common_strings == 256 + 2
    with_both, _ = maximal_common_vocabulary(both, a)
    assert {b"ab", b"abc", b"xy"} <= with_both.strings
    for group in ([a, b], [both, a, b]):
        common = set.intersection(*(_texts(t) for t in group))
        kept, _ = maximal_common_vocabulary(*group)
        for dropped in common - kept.strings:
            assert not _is_closed(kept.strings | {dropped}, group)  # adding any dropped token breaks closure


def test_merge_closure_is_a_fixpoint():
    merges = producing_merges([(b"a", b"b"), (b"ab", b"c"), (b"abc", b"d")])
    assert merge_closure({b"abc", b"abcd"}, [merges]) == set(ALL_BYTES)  # the chain falls step by step
    assert merge_closure({b"ab", b"abc", b"abcd"}, [merges]) == set(ALL_BYTES) | {b"ab", b"abc", b"abcd"}


def test_report_measures_boundary_agreement(members):
    text = bundled_passage()
    _, report = maximal_common_vocabulary(*members, text=text)
    assert 0.0 < report.boundary_agreement <= 1.0
    assert report.conflict_rate == pytest.approx(1 - report.boundary_agreement)
    assert report.text_bytes == len(text.encode()) and report.special_tokens_excluded == [3, 4, 3]
    _, same = maximal_common_vocabulary(members[0], members[0], text=text)
    assert same.boundary_agreement == 1.0 and same.dropped_by_closure == 0


def test_common_split_gives_identical_splits_for_identical_bytes(members):
    mcv, _ = maximal_common_vocabulary(*members)
    common = resolve_split("common", mcv, members)
    tables = [NestedTable.build(t, mcv, split=common) for t in members]
    for table in tables:
        for token_id, data in enumerate(table.table.byte_strings):
            if data:
                pieces = [table.sub_strings[s] for s in table.split(token_id)]
                assert b"".join(pieces) == data and pieces == (
                    [data] if data in mcv.strings else common(data)
                )


def test_tokenizer_without_byte_mapping_is_refused(byte_level_tokenizer):
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]")
    with pytest.raises(TokenBytesError, match="WordPiece"):
        maximal_common_vocabulary(byte_level_tokenizer, bert)
    with pytest.raises(ValueError, match="split must be one of"):
        maximal_common_vocabulary(byte_level_tokenizer, split="chars")


def test_mcv_cli_prints_the_report(tmp_path, capsys, byte_level_tokenizer, sentencepiece_tokenizer):
    folders = []
    for name, tok in (("a", byte_level_tokenizer), ("b", sentencepiece_tokenizer)):
        tiny_causal_lm(tok).save_pretrained(tmp_path / name)  # a model folder, as the CLI loads
        tok.save_pretrained(tmp_path / name)
        folders.append(str(tmp_path / name))
    (tmp_path / "text.txt").write_text(bundled_passage(), encoding="utf-8")
    assert main(["mcv", *folders, "--text", str(tmp_path / "text.txt"), "--split", "common", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["size"] > 256 and report["split"] == "common" and report["boundary_agreement"] > 0.5
