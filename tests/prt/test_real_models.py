"""A reward on SmolLM2-135M-Instruct steering Gemma-3-270M across tokenizers: run with `pytest -m slow`."""

import pytest
import torch

from hf_coop.models import load_model
from hf_coop.prt import PRTModel
from hf_coop.prt.cross_tokenizer import CrossTokenizerPRTModel
from hf_coop.testing import CountForwards, random_lora_reward, rescore_alone, tail_steps
from hf_coop.vocab.ensemble import CommonVocabEnsemble, normalise_on_common_support

pytestmark = pytest.mark.slow

PROMPTS = [
    "Q: 12 + 7 =\nA:",
    "The capital of France is",
    "Q: 12 + 7 =\nA:",
    "The capital",
    "Once upon a time, there was a little",
]


@pytest.fixture(scope="module")
def real():
    old, old_tokenizer = load_model("smollm2-135m-instruct")
    new, new_tokenizer = load_model("gemma-3-270m")
    return old, old_tokenizer, new, new_tokenizer, random_lora_reward(old, old_tokenizer)


def test_batched_rows_equal_each_row_alone_with_one_forward_per_model_and_step(real):
    """Duplicates, a prefix of another prompt and mixed lengths in one batch, at the default (bounded) engine
    settings; a reused model acts like a fresh one."""
    old, old_tokenizer, new, new_tokenizer, reward = real
    model = PRTModel(new, reward, tokenizer=new_tokenizer, reward_tokenizer=old_tokenizer)
    assert isinstance(model, CrossTokenizerPRTModel)
    inputs = model.tokenizer(PROMPTS, return_tensors="pt")
    steps = 6
    with CountForwards(new) as new_calls, CountForwards(reward.model) as old_calls:
        batch = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[
            :, inputs["input_ids"].shape[1] :
        ]
    walk = [tail_steps(inputs["member_tail_bytes"][:, m]) for m in range(2)]
    assert new_calls.calls <= 1 + walk[0] + steps and old_calls.calls <= 1 + walk[1] + steps
    for row, prompt in enumerate(PROMPTS):
        alone = model.tokenizer([prompt], return_tensors="pt")
        out = model.generate(**alone, max_new_tokens=steps, do_sample=False)[0, alone["input_ids"].shape[1] :]
        assert batch[row, : len(out)].tolist() == out.tolist(), prompt
    again = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(again, batch)


def test_with_no_transfer_it_is_the_new_model_over_the_common_vocabulary(real):
    """s = 0 leaves the new model over the MCV, renormalised over the tokens the old model can follow: each
    member's own distribution from the ensemble (weights 1, 0 and 0, 1), an independent code path; exact
    engine settings."""
    old, old_tokenizer, new, new_tokenizer, reward = real
    exact = {"max_hypotheses": None, "prune_ratio": 0.0, "prompt_boundary": "tail"}
    model = PRTModel(
        new, reward, tokenizer=new_tokenizer, reward_tokenizer=old_tokenizer, transfer_scale=0.0, **exact
    )
    prompt = "The capital of France is"
    inputs = model.tokenizer([prompt], return_tensors="pt")
    path = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    got = rescore_alone(model, inputs, path.tolist()).float()
    ensemble = CommonVocabEnsemble.from_models([new, old], [new_tokenizer, old_tokenizer], **exact)
    members = []
    for weights in ([1.0, 0.0], [0.0, 1.0]):  # a member of weight 0 is not run: each member alone
        ensemble.weights = weights
        enc = ensemble.tokenizer([prompt], return_tensors="pt")
        members.append(rescore_alone(ensemble, enc, path.tolist()).float())
    expected = normalise_on_common_support(members[0], torch.stack(members))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    model.transfer_scale = 1.0
    steered = rescore_alone(model, inputs, path.tolist()).float()
    both = torch.isfinite(steered) & torch.isfinite(got)
    assert torch.equal(both, torch.isfinite(got)) and (steered - got)[both].abs().max() > 0.1  # it steers
