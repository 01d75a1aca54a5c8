import math

import evaluate
import pytest
import torch

from hf_coop.metrics import BITS_PER_BYTE
from hf_coop.scoring import canonical_logprob
from hf_coop.testing import tiny_causal_lm
from hf_coop.vocab.scoring import prefix_logprob

TEXTS = ["It is a truth", "é a b"]


def test_bits_per_byte_loads_offline_with_evaluate_and_matches_the_scorers(byte_level_tokenizer):
    model = tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64)
    metric = evaluate.load(BITS_PER_BYTE)
    n_bytes = sum(len(t.encode()) for t in TEXTS)
    canonical = metric.compute(predictions=TEXTS, model=model, tokenizer=byte_level_tokenizer)
    expected = [canonical_logprob(model, byte_level_tokenizer, t).nats for t in TEXTS]
    assert canonical["nats"] == pytest.approx(expected, abs=1e-9)
    assert canonical["bits_per_byte"] == pytest.approx(-sum(expected) / (math.log(2) * n_bytes))
    marginal = metric.compute(predictions=TEXTS, model=model, tokenizer=byte_level_tokenizer, mode="marginal")
    assert marginal["nats"] == pytest.approx(
        [s.nats for s in prefix_logprob(model, byte_level_tokenizer, TEXTS)]
    )
    assert marginal["bits_per_byte"] <= canonical["bits_per_byte"] + 1e-12
    assert marginal["upper_bits_per_byte"] == pytest.approx(marginal["bits_per_byte"])
