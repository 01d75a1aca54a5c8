import math

import pytest
import torch

from hf_coop.commands.score import read_text_argument
from hf_coop.scoring import canonical_logprob, start_token_id
from hf_coop.testing import bundled_passage, tiny_causal_lm


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


def test_nan_logits_are_refused(byte_level_tokenizer):
    model = tiny_causal_lm(byte_level_tokenizer)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        canonical_logprob(model, byte_level_tokenizer, "some text")
