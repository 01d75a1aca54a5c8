import functools
import math

import pytest
import torch

from hf_coop.commands.score import read_text_argument
from hf_coop.errors import ConfigError, InputError, NonFiniteLogitsError
from hf_coop.scoring import canonical_logprob, start_token_id, text_token_ids
from hf_coop.testing import (
    bundled_passage,
    tiny_byte_level_tokenizer,
    tiny_causal_lm,
    tiny_sentencepiece_tokenizer,
)
from hf_coop.vocab.engine.scheduler import ZeroProbabilityError
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from hf_coop.vocab.scoring import prefix_logprob
from hf_coop.vocab.token_bytes import token_bytes


def _reference_logprob(model, tokenizer, text):
    ids = torch.tensor([[start_token_id(tokenizer)] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    logprobs = torch.log_softmax(model(ids).logits[0, :-1, : len(tokenizer)].double(), -1)
    return logprobs.gather(-1, ids[0, 1:, None]).sum().item()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_canonical_logprob_is_conditioned_on_the_start_token(byte_level_tokenizer, arch):
    model = tiny_causal_lm(byte_level_tokenizer, arch=arch, extra_head_rows=5, dtype=torch.float64)
    text = "It is a truth universally acknowledged."
    score = canonical_logprob(model, byte_level_tokenizer, text)
    assert score.nats == pytest.approx(_reference_logprob(model, byte_level_tokenizer, text), abs=1e-9)
    assert score.n_bytes == len(text.encode())
    assert score.bits_per_byte == pytest.approx(-score.nats / math.log(2) / score.n_bytes)


def test_one_window_equals_full_pass_and_windows_score_each_token_once(sentencepiece_tokenizer):
    model = tiny_causal_lm(sentencepiece_tokenizer, dtype=torch.float64)
    text = bundled_passage()
    with pytest.raises(ConfigError, match="window=4096 is longer than the model's 2048 positions"):
        canonical_logprob(model, sentencepiece_tokenizer, text, window=4096)
    model.config.max_position_embeddings = 4096  # rotary positions: the tiny model reads any length
    full = canonical_logprob(model, sentencepiece_tokenizer, text, window=4096)
    assert full.nats == pytest.approx(_reference_logprob(model, sentencepiece_tokenizer, text), abs=1e-8)
    # With stride = window - 1 every window scores tokens it sees with all the context since its start; a
    # 1-layer check: windows of 2 with stride 1 score each token given only its predecessor.
    ids = [start_token_id(sentencepiece_tokenizer)] + sentencepiece_tokenizer(text, add_special_tokens=False)[
        "input_ids"
    ]
    pairs = torch.tensor([ids[i : i + 2] for i in range(len(ids) - 1)])
    bigram = torch.log_softmax(model(pairs).logits[:, 0, : len(sentencepiece_tokenizer)].double(), -1)
    expected = bigram.gather(-1, pairs[:, 1:]).sum().item()
    assert canonical_logprob(model, sentencepiece_tokenizer, text, window=2, stride=1).nats == pytest.approx(
        expected, abs=1e-8
    )


def test_bad_inputs_raise_clear_errors(byte_level_tokenizer, tmp_path):
    model = tiny_causal_lm(byte_level_tokenizer)
    with pytest.raises(ValueError, match="empty"):
        canonical_logprob(model, byte_level_tokenizer, "")
    with pytest.raises(ValueError, match="stride"):
        canonical_logprob(model, byte_level_tokenizer, "abc", window=4, stride=4)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_text_argument(None, str(latin1))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_text_argument(None, str(tmp_path / "missing.txt"))


BAD_LOGITS = {
    "all -inf": lambda logits: torch.full_like(logits, -math.inf),
    "one +inf": lambda logits: logits.index_fill(-1, torch.tensor([5]), math.inf),
    "one NaN": lambda logits: logits.index_fill(-1, torch.tensor([5]), math.nan),
}


def _reduced_generate(model, tokenizer):
    reduced = ReducedVocabLM.from_model(model, tokenizer, "bytes")
    return reduced.generate(
        **reduced.tokenizer("abc", return_tensors="pt"), max_new_tokens=2, do_sample=False
    )


@pytest.mark.parametrize("bad", BAD_LOGITS)
@pytest.mark.parametrize(
    "use",
    {
        "canonical_logprob": lambda m, t: canonical_logprob(m, t, "some text"),
        "prefix_logprob": lambda m, t: prefix_logprob(m, t, "some text"),
        "ReducedVocabLM.generate": _reduced_generate,
    }.items(),
    ids=lambda item: item[0],
)
def test_non_finite_logits_are_refused_everywhere(byte_level_tokenizer, monkeypatch, bad, use):
    """All -inf (no distribution), one +inf (fp16 overflow) or one NaN: refused before the softmax turns
    them into a NaN score or a made-up token."""
    model = tiny_causal_lm(byte_level_tokenizer)
    forward = model.forward

    @functools.wraps(forward)
    def corrupted(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = BAD_LOGITS[bad](out.logits)
        return out

    monkeypatch.setattr(model, "forward", corrupted)
    with pytest.raises(NonFiniteLogitsError, match="NaN or infinite logits"):
        use[1](model, byte_level_tokenizer)


@pytest.mark.parametrize("text", ["a<|endoftext|>b", "<|im_end|>", "<s> and </s>"])
def test_special_token_strings_in_a_text_are_text(byte_level_tokenizer, sentencepiece_tokenizer, text):
    """A special-token string inside a scored text is read as its characters, so the canonical score is
    one tokenization among those the marginal sums: canonical <= marginal."""
    for tokenizer in (byte_level_tokenizer, sentencepiece_tokenizer):
        model = tiny_causal_lm(tokenizer, dtype=torch.float64)
        canonical = canonical_logprob(model, tokenizer, text)
        ids = text_token_ids(tokenizer, text)
        assert not set(ids) & set(tokenizer.all_special_ids)
        assert canonical.n_tokens == len(ids)
        spelled = token_bytes(tokenizer).decode(ids).decode("utf-8")  # with SentencePiece's prefix space
        assert canonical.nats <= prefix_logprob(model, tokenizer, spelled).nats + 1e-9


def test_characters_a_tokenizer_cannot_spell_are_refused_by_name():
    """Without byte fallback a character outside the alphabet becomes <unk>: scoring <unk> as the text would
    make "a 漢 b", "a 字 b" and "a 😀 b" score the same; each is refused, naming the character."""
    tokenizer = tiny_sentencepiece_tokenizer(byte_fallback=False)
    model = tiny_causal_lm(tokenizer, dtype=torch.float64)
    for char in ["漢", "字", "😀"]:
        with pytest.raises(InputError, match=f"cannot spell the characters \\['{char}'\\].*no byte fallback"):
            canonical_logprob(model, tokenizer, f"a {char} b")
        with pytest.raises(ZeroProbabilityError, match="exact recursion: no sequence of the model's tokens"):
            prefix_logprob(model, tokenizer, f"a {char} b")


def test_a_tokenizer_that_does_not_fit_the_model_is_named(byte_level_tokenizer, caplog):
    """More ids than the head: refused. Far fewer (a tenth of the head unused): warned, since heads are
    padded by a few rows, not by a tenth."""
    model = tiny_causal_lm(byte_level_tokenizer)
    with pytest.raises(ConfigError, match="head has 400 rows but the tokenizer has 480 tokens"):
        canonical_logprob(model, tiny_sentencepiece_tokenizer(), "some text")
    canonical_logprob(model, tiny_byte_level_tokenizer(300), "some text")
    assert "the tokenizer has 300 tokens but the model's output head 400 rows" in caplog.text
    caplog.clear()
    canonical_logprob(
        tiny_causal_lm(byte_level_tokenizer, extra_head_rows=8), byte_level_tokenizer, "some text"
    )
    assert "may belong to another model" not in caplog.text
