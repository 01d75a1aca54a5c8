"""Build artefacts (nested tables with their tries, the MCV) are cached on disk by tokenizer fingerprint."""

import dataclasses

import pytest
import torch

from hf_coop.vocab import table_cache
from hf_coop.vocab.mcv import common_vocabulary, resolve_split
from hf_coop.vocab.sub_vocabulary import TRIE_ARRAYS, NestedTable, SubVocabulary


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_COOP_TABLES", str(tmp_path))
    monkeypatch.setattr(table_cache, "_memory", {})
    return tmp_path


def assert_same_table(a: NestedTable, b: NestedTable):
    for field in dataclasses.fields(NestedTable):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), field.name
        elif field.name != "_tries":
            assert x == y, field.name
    for name in TRIE_ARRAYS:
        assert torch.equal(getattr(a.trie("cpu"), name), getattr(b.trie("cpu"), name)), name


@pytest.mark.parametrize("spec", ["bytes", "max-bytes:3"])
def test_nested_table_round_trips_through_the_disk_cache(fresh_cache, byte_level_tokenizer, spec):
    sub = SubVocabulary.parse(spec, byte_level_tokenizer)
    built = NestedTable.build(byte_level_tokenizer, sub)
    first = sub.nested_table(byte_level_tokenizer)
    assert len(list(fresh_cache.iterdir())) == 1
    table_cache._memory.clear()
    from_disk = sub.nested_table(byte_level_tokenizer)
    assert from_disk is not first
    assert_same_table(built, from_disk)


def test_a_corrupt_cache_entry_is_rebuilt(fresh_cache, sentencepiece_tokenizer, caplog):
    sub = SubVocabulary.max_bytes(sentencepiece_tokenizer, 2)
    built = sub.nested_table(sentencepiece_tokenizer)
    (entry,) = fresh_cache.iterdir()
    (entry / "arrays.safetensors").write_bytes(b"not a safetensors file")
    table_cache._memory.clear()
    rebuilt = sub.nested_table(sentencepiece_tokenizer)
    assert "rebuilding" in caplog.text
    assert_same_table(built, rebuilt)


def test_common_vocabulary_and_common_split_tables_are_cached(
    fresh_cache, byte_level_tokenizer, sentencepiece_tokenizer
):
    pair = (byte_level_tokenizer, sentencepiece_tokenizer)
    mcv, common = common_vocabulary(*pair)
    split = resolve_split("common", mcv, pair)
    tables = [mcv.nested_table(t, split=split) for t in pair]
    table_cache._memory.clear()
    again, common_again = common_vocabulary(*pair)
    split_again = resolve_split("common", again, pair)
    assert again.strings == mcv.strings and common_again == common
    for tokenizer, table in zip(pair, tables):
        assert_same_table(table, again.nested_table(tokenizer, split=split_again))
    assert split_again._ranks is None  # a cache hit never parses the merges
