import pytest
import torch
import torch.nn.functional as F

from hf_coop.errors import check_finite
from hf_coop.prt.core import eft_log_probs, pad_vocab, proxy_tuning_log_probs, prt_log_probs


def test_prt_log_probs_equals_formula_over_the_shared_vocabulary():
    torch.manual_seed(0)
    base, reward = torch.randn(3, 12), torch.randn(3, 10)
    expected = F.log_softmax(F.log_softmax(base[:, :8], -1) + reward[:, :8] / 0.5, -1)
    torch.testing.assert_close(prt_log_probs(base, reward, reward_scale=0.5, vocab_size=8), expected)


def test_zero_reward_gives_the_base_distribution():
    base = torch.randn(2, 7)
    torch.testing.assert_close(prt_log_probs(base, torch.zeros(2, 7)), F.log_softmax(base, -1))


def test_eft_with_identical_pair_is_the_new_model_and_proxy_tuning_is_linear_in_scores():
    new, ft, base = torch.randn(3, 2, 6).unbind(0)
    torch.testing.assert_close(eft_log_probs(new, base, base), F.log_softmax(new, -1))
    torch.testing.assert_close(
        proxy_tuning_log_probs(new, ft, base, 0.5), F.log_softmax(new + 0.5 * (ft - base), -1)
    )


def test_pad_vocab_gives_extra_head_rows_probability_zero():
    padded = pad_vocab(F.log_softmax(torch.randn(2, 4), -1), 6)
    assert padded.shape == (2, 6) and torch.isneginf(padded[:, 4:]).all()
    torch.testing.assert_close(padded.exp().sum(-1), torch.ones(2))


def test_vocab_larger_than_a_head_is_refused():
    with pytest.raises(ValueError, match="do not share this tokenizer"):
        prt_log_probs(torch.randn(1, 5), torch.randn(1, 5), vocab_size=6)


def test_nan_logits_are_refused_with_the_culprit_named():
    with pytest.raises(ValueError, match="the reward model produced 1 non-finite"):
        check_finite(torch.tensor([0.0, float("nan")]), "the reward model")
    check_finite(torch.tensor([0.0, float("-inf")]), "scores", allow_neg_inf=True)


def test_temperature_is_a_deprecated_name_for_reward_scale(tmp_path, byte_level_tokenizer):
    """λ was called `temperature`: the old keyword and attribute still work, with a FutureWarning, and a config
    saved under the old name loads its value."""
    import json

    from hf_coop.prt import PRTConfig, PRTModel
    from hf_coop.testing import tiny_causal_lm

    with pytest.warns(FutureWarning, match="reward_scale"):
        config = PRTConfig(temperature=0.25)
    assert config.reward_scale == 0.25
    with pytest.warns(FutureWarning, match="reward_scale"):
        assert config.temperature == 0.25
    (tmp_path / "prt_config.json").write_text(json.dumps({"temperature": 0.5, "format_version": 1}))
    assert PRTConfig.from_pretrained(tmp_path).reward_scale == 0.5
    model = tiny_causal_lm(byte_level_tokenizer)
    with pytest.warns(FutureWarning, match="PRTModel\\(temperature=...\\) is deprecated"):
        prt = PRTModel(model, tiny_causal_lm(byte_level_tokenizer, seed=1), temperature=3.0)
    assert prt.reward_scale == 3.0
