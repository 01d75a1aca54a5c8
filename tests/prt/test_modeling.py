import pytest
import torch
import torch.nn.functional as F

from hf_coop.config_utils import ArtifactError
from hf_coop.prt import PRTConfig, PRTModel, PRTModelForClassification, PRTRewardModel
from hf_coop.testing import tiny_causal_lm, tiny_sentencepiece_tokenizer, tiny_sequence_classifier


def test_beam_search_with_cache_equals_without(new_base, reward, tokenizer, prompts):
    model = PRTModel(new_base, reward, vocab_size=len(tokenizer))
    beams = {"max_new_tokens": 6, "num_beams": 3, "do_sample": False, "num_return_sequences": 2}
    assert torch.equal(
        model.generate(**prompts, **beams), model.generate(**prompts, use_cache=False, **beams)
    )


def test_logits_are_prt_over_the_tokenizer_with_extra_rows_masked(new_base, reward, tokenizer, prompts):
    vocab = len(tokenizer)
    model = PRTModel(new_base, reward, reward_scale=2.0, vocab_size=vocab)
    with torch.no_grad():
        logits = model(**prompts).logits
        base, r = new_base(**prompts).logits[..., :vocab], reward(**prompts).logits[..., :vocab]
    assert logits.shape[-1] == new_base.config.vocab_size
    torch.testing.assert_close(logits[..., :vocab], F.log_softmax(F.log_softmax(base, -1) + r / 2.0, -1))
    assert torch.isneginf(logits[..., vocab:]).all()


def test_reward_for_another_tokenizer_without_a_recorded_base_is_refused(new_base, reward, tokenizer):
    """Across tokenizers the reward's base tokenizer is needed; a reward that records none is refused."""
    from hf_coop.config_utils import vocab_fingerprint

    config = PRTConfig(vocab_size=len(tokenizer), vocab_fingerprint=vocab_fingerprint(tokenizer))
    with pytest.raises(ArtifactError, match="cannot be found .*no base recorded.*reward_tokenizer="):
        PRTModel(new_base, PRTRewardModel(reward, config), tokenizer=tiny_sentencepiece_tokenizer())


def test_head_smaller_than_the_vocabulary_is_refused(tokenizer, reward):
    small = tiny_causal_lm(tiny_sentencepiece_tokenizer(vocab_size=300))
    with pytest.raises(ArtifactError, match="do not cover"):
        PRTModel(small, reward, vocab_size=len(tokenizer))


def test_classifier_form_permutes_labels_by_name(tokenizer, prompts):
    new = tiny_sequence_classifier(tokenizer, labels=("a", "b", "c"), seed=1)
    reward = tiny_sequence_classifier(tokenizer, labels=("c", "a", "b"), seed=2)
    with torch.no_grad():
        combined = PRTModelForClassification(new, reward)(**prompts).logits
        base, r = new(**prompts).logits, reward(**prompts).logits
    expected = F.log_softmax(F.log_softmax(base, -1) + r[:, [1, 2, 0]], -1)
    torch.testing.assert_close(combined, expected)


def test_classifier_form_refuses_another_label_set(tokenizer):
    new = tiny_sequence_classifier(tokenizer, labels=("a", "b"))
    with pytest.raises(ArtifactError, match="same set"):
        PRTModelForClassification(new, tiny_sequence_classifier(tokenizer, labels=("a", "z")))
