"""Tiny models shared by the PRT tests: a source base, a newer base of another architecture with a larger
head, and a random reward, all over the same byte-level tokenizer."""

import pytest

from hf_coop.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def tokenizer(byte_level_tokenizer):
    byte_level_tokenizer.padding_side = "left"
    return byte_level_tokenizer


@pytest.fixture(scope="module")
def source_base(tokenizer):
    return tiny_causal_lm(tokenizer, arch="llama", seed=0)


@pytest.fixture(scope="module")
def new_base(tokenizer):
    return tiny_causal_lm(tokenizer, arch="gpt2", seed=1, extra_head_rows=5)


@pytest.fixture(scope="module")
def reward(tokenizer):
    return tiny_causal_lm(tokenizer, arch="llama", seed=2, extra_head_rows=2)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return tokenizer(["The quick brown", "def add(a, b):\n    return"], return_tensors="pt", padding=True)
