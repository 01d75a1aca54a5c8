import pytest

from hf_coop.testing import bundled_passage, tiny_corpus
from hf_coop.vocab.token_bytes import TokenBytesError, spelled_bytes, token_bytes

TRICKY = "Hello  wörld,\n\n\tcafé 🙂 naïve — “quotes” 12345 <0x41> Ġx ▁y  trailing  "


@pytest.mark.parametrize("fixture", ["byte_level_tokenizer", "sentencepiece_tokenizer"])
def test_token_bytes_concatenate_to_the_text(fixture, request):
    tokenizer = request.getfixturevalue(fixture)
    table = token_bytes(tokenizer)
    for text in [*tiny_corpus(), TRICKY, bundled_passage()]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert table.decode(ids) == spelled_bytes(tokenizer, text)


def test_prefix_space_and_normalizer_are_reported(byte_level_tokenizer, sentencepiece_tokenizer):
    byte_level = token_bytes(byte_level_tokenizer)
    assert not byte_level.adds_prefix_space and byte_level.lossy_normalizers == ()
    assert spelled_bytes(byte_level_tokenizer, TRICKY) == TRICKY.encode()

    sentencepiece = token_bytes(sentencepiece_tokenizer)
    assert sentencepiece.adds_prefix_space
    assert any("▁" in note for note in sentencepiece.lossy_normalizers)
    assert spelled_bytes(sentencepiece_tokenizer, "a ▁b") == b" a  b"


def test_special_tokens_have_no_bytes(byte_level_tokenizer, sentencepiece_tokenizer):
    for tokenizer in (byte_level_tokenizer, sentencepiece_tokenizer):
        table = token_bytes(tokenizer)
        assert len(table) == len(tokenizer)
        for token_id in tokenizer.all_special_ids:
            assert table[token_id] is None and token_id in table.special_ids
        assert all(b is not None for i, b in enumerate(table.byte_strings) if i not in table.special_ids)


def test_byte_fallback_tokens_are_single_bytes(sentencepiece_tokenizer):
    table = token_bytes(sentencepiece_tokenizer)
    for b in range(256):
        assert table[sentencepiece_tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>")] == bytes([b])


def test_every_byte_is_a_byte_level_token(byte_level_tokenizer):
    table = token_bytes(byte_level_tokenizer)
    assert {bytes([b]) for b in range(256)} <= set(table.byte_strings)


def test_wordpiece_tokenizer_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(TokenBytesError, match="WordPiece"):
        token_bytes(tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m", "gpt2"])
def test_token_bytes_on_real_tokenizers_over_a_megabyte(name):
    """The property on the real tokenizers over 1 MB of the King James Bible and 1 MB of Wikipedia."""
    from benchmarks.assets import gpt2_tokenizer, kjv_text, wikipedia_prose
    from hf_coop.models import load_tokenizer

    tokenizer = gpt2_tokenizer() if name == "gpt2" else load_tokenizer(name)
    table = token_bytes(tokenizer)
    corpus = kjv_text()[:1_000_000].split("\n") + wikipedia_prose(1_000_000).split("\n") + [TRICKY]
    assert sum(len(t.encode()) for t in corpus) > 1_900_000
    chunks = ["\n".join(corpus[i : i + 200]) for i in range(0, len(corpus), 200)]
    for chunk, ids in zip(chunks, tokenizer(chunks, add_special_tokens=False)["input_ids"]):
        assert table.decode(ids) == spelled_bytes(tokenizer, chunk)
