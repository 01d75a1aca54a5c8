"""Real-model checks (SmolLM2-135M-Instruct, Gemma-3-270M): run with `pytest -m slow`."""

import copy

import pytest

from hf_coop.models import load_model
from hf_coop.scoring import canonical_logprob
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from hf_coop.vocab.scoring import prefix_logprob

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, there was",
    "The three primary colors are",
    "Water boils at",
    "import numpy as np\n",
    "Question: What is 12 + 7?\nAnswer:",
    "The largest planet in the solar system",
    "In 1969, Neil Armstrong",
    "To make a cup of tea, first",
    "Photosynthesis is the process",
    "The French word for cat is",
    "SELECT name FROM users WHERE",
    "A haiku about autumn:\n",
    "The opposite of hot is",
    "My favourite café serves",
    "Dear Sir or Madam,\n\nI am writing",
    "The mitochondria is",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
]


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def real(request):
    return load_model(request.param)


def test_k1_greedy_equals_original_greedy_on_20_prompts(real):
    """All 20 prompts in one batch (mixed lengths, left padding) against each prompt's plain greedy."""
    model, tokenizer = real
    reduced = ReducedVocabLM.from_model(
        model, tokenizer, "max-bytes:3", tokens_per_boundary=1, prompt_boundary="canonical"
    )
    expected = []
    for prompt in PROMPTS:
        enc = tokenizer(prompt, return_tensors="pt")
        plain = model.generate(**enc, max_new_tokens=12, do_sample=False)
        expected.append(reduced.nested.table.decode(plain[0, enc["input_ids"].shape[1] :].tolist()))
    renc = reduced.tokenizer(PROMPTS, return_tensors="pt")
    out = reduced.generate(**renc, max_new_tokens=max(map(len, expected)), do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        got = reduced.nested.decode(out[row, renc["input_ids"].shape[1] :].tolist())
        assert got[: len(expected[row])] == expected[row], prompt


def test_marginal_covers_the_canonical_path_and_pruning_is_tight(real):
    model, tokenizer = real
    text = "It is a truth universally"
    canonical = canonical_logprob(model, tokenizer, text).nats
    pruned = prefix_logprob(model, tokenizer, text, max_hypotheses=64, prune_ratio=1e-8)
    assert pruned.nats >= canonical - 1e-4  # float32 model arithmetic
    # Exact mode forwards every segmentation (exponential in length): keep the exact check short. In float32
    # the two runs batch different trees (237 vs 9 histories on Gemma), which moves the model's arithmetic by
    # about 1.5e-5 nats (measured); in float64 pruning is tight to its truncated mass (3e-11 here).
    exact = prefix_logprob(model, tokenizer, text[:7])
    assert prefix_logprob(model, tokenizer, text[:7], 64, 1e-8).nats == pytest.approx(exact.nats, abs=5e-5)
    model64 = copy.deepcopy(model).double()
    exact = prefix_logprob(model64, tokenizer, text[:7])
    pruned = prefix_logprob(model64, tokenizer, text[:7], 64, 1e-8)
    assert pruned.nats <= exact.nats + 1e-9 <= pruned.upper_nats + 2e-9
    assert exact.nats - pruned.nats < 1e-8


@pytest.mark.parametrize("sub_vocab", ["original", "max-bytes:3"])
def test_a_prompt_cut_inside_a_word_is_completed(real, sub_vocab):
    """The prompt-boundary probe: canonical tokens read "The capital of Fr" as ending with the token " Fr";
    conditioned on its bytes the model completes the word, batched with a prompt ending in a space."""
    model, tokenizer = real
    reduced = ReducedVocabLM.from_model(
        model,
        tokenizer,
        sub_vocab,
        tokens_per_boundary=1,
        max_hypotheses=8,
        prune_ratio=1e-4,
        prompt_boundary="tail",
    )
    enc = reduced.tokenizer(["The capital of Fr", "The capital of France is "], return_tensors="pt")
    out = reduced.generate(**enc, max_new_tokens=8, do_sample=False)
    texts = reduced.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert texts[0].startswith("ance")
    # after a trailing space the text goes on with a word, not a second space; SmolLM2 names the capital,
    # while the Gemma-3-270M base model (tail and exact alike) continues "the capital of the country of"
    assert not texts[1].startswith(" ")
    if tokenizer.name_or_path.rstrip("/").endswith("smollm2-135m-instruct"):
        assert texts[1].startswith("Paris")
