"""PRT and EFT across tokenizers (`hf_coop.prt.cross_tokenizer`): exact oracles on tiny float64 models."""

import contextlib
import copy

import pytest
import torch

from hf_coop.errors import ArtifactError, ConfigError
from hf_coop.prt import PRTConfig, PRTLogitsProcessor, PRTModel, PRTRewardModel
from hf_coop.prt.core import prt_log_probs, transfer_log_probs
from hf_coop.prt.cross_tokenizer import CrossTokenizerPRTModel
from hf_coop.prt.reward_model import reward_config_from_models
from hf_coop.testing import (
    CountForwards,
    random_lora_reward,
    rescore_alone,
    tail_steps,
    tiny_byte_level_tokenizer,
    tiny_causal_lm,
)
from hf_coop.vocab.ensemble import to_ensemble_vocab
from hf_coop.vocab.reduced_lm import eos_sub_ids
from hf_coop.vocab.token_bytes import token_bytes
from tests.oracles import oracle_next_logprobs

LAMBDA = 0.5
PROMPT = "The q"


@pytest.fixture(scope="module")
def old(byte_level_tokenizer):
    return tiny_causal_lm(byte_level_tokenizer, seed=0, dtype=torch.float64, extra_head_rows=2)


@pytest.fixture(scope="module")
def new(sentencepiece_tokenizer):
    return tiny_causal_lm(sentencepiece_tokenizer, arch="gemma3", seed=1, dtype=torch.float64)


@pytest.fixture(scope="module")
def reward(old, byte_level_tokenizer):
    return random_lora_reward(old, byte_level_tokenizer)


def build(new, new_tokenizer, reward, old_tokenizer, **kwargs):
    options = {"dtype": "float64", "max_hypotheses": None, "prune_ratio": 0.0, "prompt_boundary": "exact"}
    return PRTModel(
        new, reward, tokenizer=new_tokenizer, reward_tokenizer=old_tokenizer, **{**options, **kwargs}
    )


def greedy_path(model, prompt: str, n: int = 4) -> list[int]:
    inputs = model.tokenizer([prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def conditionals(model, prompt: str, path: list[int]) -> torch.Tensor:
    return rescore_alone(model, model.tokenizer([prompt], return_tensors="pt"), path).double()


class TunedView(torch.nn.Module):
    """π_θ's logits `log_softmax(f_old) + r/λ` as a model the enumeration oracle can call."""

    def __init__(self, old, reward, reward_scale):
        super().__init__()
        self.old, self.reward, self.reward_scale = old, reward, reward_scale

    def forward(self, input_ids):
        n = self.old.config.vocab_size
        base = torch.log_softmax(self.old(input_ids).logits.double(), -1)
        reward = self.reward(input_ids).logits.double()[..., :n]
        return type("Out", (), {"logits": base + reward / self.reward_scale})


def oracle_conditionals(model, networks, path: list[int], steps: int) -> torch.Tensor:
    """The transfer rule applied to enumeration oracles of (new, tuned, old), after each prefix of `path`.
    `networks`: (the model whose EOS ids count, the model scored) per distribution; the first is over the new
    tokenizer, the other two over the old one."""
    rows = []
    for step in range(steps):
        per_model = []
        for index, (network, scorer) in enumerate(networks):
            reduced = model.members[min(index, 1)]
            tokenizer = reduced.tokenizer.original
            prefix, tail = reduced.tokenizer.bounded(reduced.tokenizer.prompt(PROMPT))
            logprobs = oracle_next_logprobs(scorer, tokenizer, reduced.nested, prefix, tail, path[:step])
            eos = eos_sub_ids(network, tokenizer, reduced.nested)
            per_model.append(to_ensemble_vocab(logprobs[None], model.num_text, eos)[0])
        rows.append(transfer_log_probs(*per_model).double())
    return torch.stack(rows)


def test_the_rule_with_a_shared_tokenizer_is_prt():
    torch.manual_seed(0)
    new, base, reward = (torch.randn(3, 50, dtype=torch.float64) * 3 for _ in range(3))
    tuned = torch.log_softmax(torch.log_softmax(base, -1) + reward / LAMBDA, -1)
    got = transfer_log_probs(torch.log_softmax(new, -1), tuned, torch.log_softmax(base, -1))
    torch.testing.assert_close(got.double(), prt_log_probs(new, reward, LAMBDA).double(), rtol=0, atol=1e-5)


def test_a_byte_vocabulary_shared_by_all_reproduces_the_prt_processor():
    """Over a bytes-only tokenizer every text has one tokenization, so the MCV path is PRT's token-level rule:
    the cross-tokenizer model's conditionals equal the PRT processor's scores."""
    tokenizer = tiny_byte_level_tokenizer(vocab_size=258)  # the 256 bytes and the special tokens
    old = tiny_causal_lm(tokenizer, seed=0, dtype=torch.float64)
    new = tiny_causal_lm(tokenizer, arch="gpt2", seed=1, dtype=torch.float64)
    reward = random_lora_reward(old, tokenizer)
    model = CrossTokenizerPRTModel.from_models(
        new,
        tokenizer,
        None,
        tokenizer,
        reward.model,
        reward_scale=LAMBDA,
        max_hypotheses=None,
        prune_ratio=0.0,
        dtype="float64",
        prompt_boundary="canonical",
    )
    path = greedy_path(model, PROMPT, n=5)
    got = conditionals(model, PROMPT, path)
    nested = model.members[0].nested
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    table = token_bytes(tokenizer).byte_strings
    token_of = torch.tensor([table.index(data) for data in nested.sub_strings[: model.num_text]])
    for step, sub in enumerate([None, *path[:-1]]):
        if sub is not None:
            ids = torch.cat([ids, token_of[sub].view(1, 1)], dim=1)
        processor = PRTLogitsProcessor(reward, tokenizer=tokenizer)
        with torch.no_grad():
            scores = processor(ids, new(ids).logits[:, -1].double())[0].double()
        expected = torch.cat([scores[token_of], scores[[tokenizer.eos_token_id]]])
        expected = expected - torch.logsumexp(expected, 0)
        torch.testing.assert_close(got[step], expected, rtol=0, atol=1e-5)  # the processor runs in float32


def test_conditionals_equal_an_enumeration_over_every_tokenization(
    new, old, reward, byte_level_tokenizer, sentencepiece_tokenizer
):
    model = build(new, sentencepiece_tokenizer, reward, byte_level_tokenizer)
    assert isinstance(model, CrossTokenizerPRTModel)
    path = greedy_path(model, PROMPT, n=3)
    got = conditionals(model, PROMPT, path)
    tuned = TunedView(old, reward.model, LAMBDA)
    expected = oracle_conditionals(model, [(new, new), (old, tuned), (old, old)], path, len(got))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_a_lora_reward_runs_old_and_tuned_in_one_forward_equal_to_two(
    new, old, reward, byte_level_tokenizer, sentencepiece_tokenizer
):
    fused = build(
        new, sentencepiece_tokenizer, reward, byte_level_tokenizer, max_hypotheses=4, prune_ratio=1e-8
    )
    merged = copy.deepcopy(reward.model).merge_and_unload()
    separate = build(
        new,
        sentencepiece_tokenizer,
        PRTRewardModel(merged, reward.prt_config),
        byte_level_tokenizer,
        reward_base=old,
        max_hypotheses=4,
        prune_ratio=1e-8,
    )
    assert fused.pair.fused and not separate.pair.fused
    prompts = ["The q", "It is a truth", "The q"]
    results = []
    for model in (fused, separate):
        networks = {"new": new, "old": old, "lora": reward.model, "merged": merged}
        with contextlib.ExitStack() as stack:
            calls = {name: stack.enter_context(CountForwards(net)) for name, net in networks.items()}
            inputs = model.tokenizer(prompts, return_tensors="pt")
            cache = model.new_cache()
            out = model.generate(
                **inputs,
                cache=cache,
                max_new_tokens=4,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        results.append((out.sequences, torch.stack(out.scores)))
        new_forwards, pair_forwards = cache.scheduler.forward_calls
        assert calls["new"].calls == new_forwards
        if model is fused:  # one old-side forward per engine forward: the peft model, no other network
            assert calls["lora"].calls == pair_forwards
            assert calls["old"].calls == calls["merged"].calls == 0
        else:  # the base runs every engine forward, the reward where a forward holds a tuned row
            assert calls["old"].calls == pair_forwards and 0 < calls["merged"].calls <= pair_forwards
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-9)


def test_batched_rows_equal_each_row_alone(new, reward, byte_level_tokenizer, sentencepiece_tokenizer):
    model = build(
        new,
        sentencepiece_tokenizer,
        reward,
        byte_level_tokenizer,
        max_hypotheses=4,
        prune_ratio=1e-8,
        prompt_boundary="tail",
    )
    continued = "It is" + model.tokenizer.decode(
        greedy_path(model, "It is", n=2)
    )  # a prompt + its own output
    prompts = ["It is a truth", "It is", "It is a truth", "The quick brown fox", continued]
    inputs = model.tokenizer(prompts, return_tensors="pt")
    steps = 5
    with CountForwards(new) as new_calls, CountForwards(reward.model) as old_calls:
        batch = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[
            :, inputs["input_ids"].shape[1] :
        ]
    walk = [tail_steps(inputs["member_tail_bytes"][:, m]) for m in range(2)]
    # one forward of each model per step for all rows (and per byte of the prompts' tails): the old base and
    # its reward share the old side's one mixed-adapter forward
    assert new_calls.calls <= 1 + walk[0] + steps and old_calls.calls <= 1 + walk[1] + steps
    for row, prompt in enumerate(prompts):
        alone = model.tokenizer([prompt], return_tensors="pt")
        out = model.generate(**alone, max_new_tokens=steps, do_sample=False)[0, alone["input_ids"].shape[1] :]
        assert batch[row, : len(out)].tolist() == out.tolist()
    again = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(again, batch)  # the same object reused acts like a fresh one


def test_eft_across_tokenizers_is_the_same_rule_with_a_fine_tuned_model(
    new, old, reward, byte_level_tokenizer, sentencepiece_tokenizer
):
    finetuned = copy.deepcopy(reward.model).merge_and_unload()
    eft = CrossTokenizerPRTModel.from_models(
        new,
        sentencepiece_tokenizer,
        old,
        byte_level_tokenizer,
        finetuned,
        method="eft",
        max_hypotheses=None,
        prune_ratio=0.0,
        dtype="float64",
        prompt_boundary="exact",
    )
    path = greedy_path(eft, PROMPT, n=2)
    got = conditionals(eft, PROMPT, path)
    expected = oracle_conditionals(eft, [(new, new), (finetuned, finetuned), (old, old)], path, len(got))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_the_transfer_scale_is_validated_and_changes_the_distribution(
    new, reward, byte_level_tokenizer, sentencepiece_tokenizer
):
    model = build(
        new, sentencepiece_tokenizer, reward, byte_level_tokenizer, max_hypotheses=4, prune_ratio=1e-8
    )
    one = conditionals(model, PROMPT, [])
    model.transfer_scale = 2.0
    two = conditionals(model, PROMPT, [])
    assert not torch.allclose(one, two)
    model.transfer_scale = 0.0
    plain = conditionals(model, PROMPT, [])
    for bad in (float("nan"), "1"):
        with pytest.raises(ConfigError, match="transfer_scale"):
            model.transfer_scale = bad
    # a model built with s = 0 equals one whose s was set to 0
    new_only = CrossTokenizerPRTModel.from_models(
        new,
        sentencepiece_tokenizer,
        None,
        byte_level_tokenizer,
        reward.model,
        transfer_scale=0.0,
        max_hypotheses=4,
        prune_ratio=1e-8,
        dtype="float64",
        prompt_boundary="exact",
    )
    torch.testing.assert_close(conditionals(new_only, PROMPT, []), plain, rtol=0, atol=1e-12)


def test_a_saved_reward_reloaded_across_tokenizers_scores_the_same(
    tmp_path, new, old, byte_level_tokenizer, sentencepiece_tokenizer
):
    from tests.contracts import saved_model_folder

    old_saved, old_tokenizer = saved_model_folder(old, byte_level_tokenizer, tmp_path / "old")
    new_saved, new_tokenizer = saved_model_folder(new, sentencepiece_tokenizer, tmp_path / "new")
    reward = random_lora_reward(old_saved, old_tokenizer)
    model = PRTModel(new_saved, reward, tokenizer=new_tokenizer, dtype="float64", max_hypotheses=4)
    reward.save_pretrained(tmp_path / "reward")
    reloaded = PRTRewardModel.from_pretrained(
        tmp_path / "reward", dtype=torch.float64
    )  # its base and tokenizer from the config
    again = PRTModel(new_saved, reloaded, tokenizer=new_tokenizer, dtype="float64", max_hypotheses=4)
    path = greedy_path(model, PROMPT, n=3)
    torch.testing.assert_close(
        conditionals(again, PROMPT, path), conditionals(model, PROMPT, path), rtol=0, atol=0
    )
    model.save_pretrained(tmp_path / "prt")
    card = (tmp_path / "prt" / "README.md").read_text()
    assert "maximal common vocabulary" in card and "s = 1.0" in card
    loaded = PRTModel.from_pretrained(tmp_path / "prt", dtype=torch.float64)
    assert isinstance(loaded, CrossTokenizerPRTModel) and loaded.transfer_scale == 1.0
    torch.testing.assert_close(
        conditionals(loaded, PROMPT, path), conditionals(model, PROMPT, path), rtol=0, atol=0
    )


def test_a_reward_tokenizer_other_than_the_trained_one_is_refused_naming_both(
    new, reward, sentencepiece_tokenizer
):
    other = tiny_byte_level_tokenizer(vocab_size=300)
    with pytest.raises(
        ArtifactError, match=r"fingerprint \w+ .*trained over \w+ .*pass the tokenizer of the base"
    ):
        PRTModel(new, reward, tokenizer=sentencepiece_tokenizer, reward_tokenizer=other)


def test_a_reward_whose_base_tokenizer_cannot_be_found_is_refused(
    new, old, byte_level_tokenizer, sentencepiece_tokenizer
):
    network = tiny_causal_lm(byte_level_tokenizer, seed=4)
    config = reward_config_from_models(
        PRTConfig(base_model_name_or_path="/nowhere/old-base"), old, byte_level_tokenizer
    )
    with pytest.raises(ArtifactError, match="cannot be found .*/nowhere/old-base.*reward_tokenizer="):
        PRTModel(new, PRTRewardModel(network, config), tokenizer=sentencepiece_tokenizer)


def test_the_tokenizer_saved_beside_an_adapter_reward_is_found(
    tmp_path, new, old, byte_level_tokenizer, sentencepiece_tokenizer
):
    """A LoRA reward folder (no config.json, as `PRTTrainer.save_model` writes it) with its tokenizer, whose
    recorded base is gone: the tokenizer beside the reward is the one used."""
    reward = random_lora_reward(old, byte_level_tokenizer)
    reward.prt_config.base_model_name_or_path = "/nowhere/old-base"
    reward.save_pretrained(tmp_path / "reward")
    byte_level_tokenizer.save_pretrained(tmp_path / "reward")
    reloaded = PRTRewardModel.from_pretrained(tmp_path / "reward", base_model=copy.deepcopy(old))
    model = PRTModel(new, reloaded, tokenizer=sentencepiece_tokenizer, dtype="float64", max_hypotheses=4)
    expected = PRTModel(
        new,
        reward,
        tokenizer=sentencepiece_tokenizer,
        reward_tokenizer=byte_level_tokenizer,
        dtype="float64",
        max_hypotheses=4,
    )
    torch.testing.assert_close(
        conditionals(model, PROMPT, []), conditionals(expected, PROMPT, []), rtol=0, atol=0
    )


def test_a_plain_model_as_a_reward_across_tokenizers_is_refused_with_how_to_make_one(
    new, old, byte_level_tokenizer, sentencepiece_tokenizer
):
    with pytest.raises(ArtifactError, match="plain model .*PRTRewardModel"):
        PRTModel(new, old, tokenizer=sentencepiece_tokenizer)
    with pytest.raises(ConfigError, match="pass tokenizer="):
        PRTModel(new, PRTRewardModel(old, PRTConfig(vocab_size=len(byte_level_tokenizer))))


def test_the_logits_processor_points_to_the_model_across_tokenizers(reward, sentencepiece_tokenizer):
    with pytest.raises(ArtifactError, match=r"PRTModel\(new_base, reward, tokenizer="):
        PRTLogitsProcessor(reward, tokenizer=sentencepiece_tokenizer)
