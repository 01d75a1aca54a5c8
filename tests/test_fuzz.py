"""Property-based checks on generated texts (ASCII, multi-byte characters, emoji, special-token strings,
whitespace runs, control characters) over three tokenizer families: a byte-level BPE, a byte-fallback
SentencePiece and a SentencePiece without byte fallback.

Every scorer either returns a finite number that respects canonical <= marginal and equals its batched
value, or raises one of hf_coop's own errors naming the input. The default run draws a few examples per
property; `pytest -m slow` draws many more. Both are derandomized, so CI sees the same examples every run; explore
new ones with `HF_COOP_FUZZ_RANDOM=1 pytest -m slow tests/test_fuzz.py`.
"""

import ast
import math
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_coop.errors import CoopError
from hf_coop.scoring import canonical_logprob, text_token_ids
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm, tiny_sentencepiece_tokenizer
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from hf_coop.vocab.scoring import ensemble_logprob, prefix_logprob
from hf_coop.vocab.token_bytes import token_bytes

PIECES = [
    "a", "The", " quick", "é", "漢", "😀", "<|endoftext|>", "<s>", "</s>", "<unk>", "  ", "\t", "\n\n", "\x00",
    "\x7f", "0", "+", "'",
]  # fmt: skip
# Short texts: the exact marginal over a byte-fallback tokenizer doubles its hypotheses at every byte.
MAX_BYTES = 9
TEXTS = (
    st.lists(st.sampled_from(PIECES) | st.text(min_size=1, max_size=2), min_size=1, max_size=4)
    .map("".join)
    .filter(lambda t: 0 < len(t.encode("utf-8")) <= MAX_BYTES)
)
FAMILIES = ("byte_level", "byte_fallback", "no_byte_fallback")
SAME_EXAMPLES = os.environ.get("HF_COOP_FUZZ_RANDOM") != "1"
FAST = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=SAME_EXAMPLES
)
LARGE = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=SAME_EXAMPLES
)


@pytest.fixture(scope="module")
def models():
    tokenizers = {
        "byte_level": tiny_byte_level_tokenizer(),
        "byte_fallback": tiny_sentencepiece_tokenizer(),
        "no_byte_fallback": tiny_sentencepiece_tokenizer(byte_fallback=False),
    }
    return {
        name: (tiny_causal_lm(tok, seed=i, dtype=torch.float64), tok)
        for i, (name, tok) in enumerate(tokenizers.items())
    }


def _refused_by_name(error: Exception, text: str) -> bool:
    """One of hf_coop's errors, whose message names a character of the text or the place it fails."""
    if not isinstance(error, CoopError):
        return False
    message = str(error)
    match = re.search(r"cannot spell the characters (\[.*?\]) of the text", message)
    if match:
        return all(char in text for char in ast.literal_eval(match.group(1)))
    return "sub-token" in message and "after" in message


def _check_scores(models, family: str, text: str) -> None:
    model, tokenizer = models[family]
    try:
        canonical = canonical_logprob(model, tokenizer, text)
    except Exception as error:  # noqa: BLE001 - the property is about which errors escape
        assert _refused_by_name(error, text), f"{type(error).__name__}: {error}"
        assert family == "no_byte_fallback"  # only a tokenizer without byte fallback cannot spell a text
        with pytest.raises(CoopError):
            prefix_logprob(model, tokenizer, text)
        return
    # the canonical tokens spell the text (with the dummy prefix space a SentencePiece tokenizer adds): they
    # are one of the tokenizations the marginal of those bytes sums
    spelled = token_bytes(tokenizer).decode(text_token_ids(tokenizer, text)).decode("utf-8")
    marginal = prefix_logprob(model, tokenizer, spelled)
    assert math.isfinite(canonical.nats) and math.isfinite(marginal.nats)
    assert canonical.nats <= marginal.nats + 1e-9
    assert marginal.truncated_mass == 0.0 and marginal.upper_nats == pytest.approx(marginal.nats, abs=1e-9)


def _check_batched_equals_alone(models, family: str, texts: list[str]) -> None:
    model, tokenizer = models[family]
    spellable = []
    for text in texts:
        try:
            spellable.append((text, prefix_logprob(model, tokenizer, text).nats))
        except CoopError as error:
            assert _refused_by_name(error, text), str(error)
    if spellable:
        batched = prefix_logprob(model, tokenizer, [t for t, _ in spellable])
        for (text, alone), together in zip(spellable, batched):
            assert together.nats == pytest.approx(alone, abs=1e-9), text


def _check_reduced_tokenizer_round_trip(models, family: str, text: str) -> None:
    """The reduced tokenizer's sub-tokens (canonical part and tail bytes alike) spell the bytes of the original
    tokens, whatever the prompt boundary cut."""
    model, tokenizer = models[family]
    for sub_vocab in ("bytes", "max-bytes:2"):
        reduced = ReducedVocabLM.from_model(model, tokenizer, sub_vocab, dtype="float64")
        ids = reduced.tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = token_bytes(tokenizer).decode(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert reduced.nested.decode(ids) == expected


@pytest.mark.parametrize("family", FAMILIES)
@FAST
@given(text=TEXTS)
def test_scores_are_finite_ordered_or_refused_by_name(models, family, text):
    _check_scores(models, family, text)


@pytest.mark.parametrize("family", FAMILIES)
@FAST
@given(texts=st.lists(TEXTS, min_size=2, max_size=4))
def test_batched_scores_equal_alone(models, family, texts):
    _check_batched_equals_alone(models, family, texts)


@pytest.mark.parametrize("family", FAMILIES)
@FAST
@given(text=TEXTS)
def test_reduced_tokenizer_spells_the_text(models, family, text):
    _check_reduced_tokenizer_round_trip(models, family, text)


@pytest.fixture(scope="module")
def ensemble_and_reloaded(models, tmp_path_factory):
    """A byte-level member with a byte-fallback one, saved and reloaded."""
    members = [models["byte_level"], models["byte_fallback"]]
    ensemble = CommonVocabEnsemble.from_models(
        [m for m, _ in members], [t for _, t in members], (2, 1), max_hypotheses=8, dtype="float64"
    )
    folder = tmp_path_factory.mktemp("ensemble")
    ensemble.save_pretrained(folder)
    return ensemble, CommonVocabEnsemble.from_pretrained(folder, members=members)


@FAST
@given(text=TEXTS)
def test_a_reloaded_ensemble_scores_every_text_as_the_original(ensemble_and_reloaded, text):
    ensemble, reloaded = ensemble_and_reloaded
    score = ensemble_logprob(ensemble, text)
    assert math.isfinite(score.nats) and score.nats < 0
    assert ensemble_logprob(reloaded, text).nats == pytest.approx(score.nats, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@LARGE
@given(text=TEXTS, others=st.lists(TEXTS, min_size=1, max_size=3))
def test_large_profile(models, family, text, others):
    _check_scores(models, family, text)
    _check_batched_equals_alone(models, family, [text, *others])
    _check_reduced_tokenizer_round_trip(models, family, text)
