import pytest
import torch
import torch.nn.functional as F

from hf_coop.prt import (
    EFTLogitsProcessor,
    ProxyTuningLogitsProcessor,
    PRTLogitsProcessor,
    PRTModel,
)
from hf_coop.testing import tiny_causal_lm

STEPS = 6


def greedy(model, prompts, processors=(), **kwargs):
    return model.generate(
        **prompts, max_new_tokens=STEPS, do_sample=False, logits_processor=list(processors), **kwargs
    )


def full_next_token_logits(model, ids, mask):
    """Reference: an uncached forward over the whole left-padded sequence."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]


def test_zero_reward_leaves_generation_identical(new_base, tokenizer, prompts):
    zero = tiny_causal_lm(tokenizer, seed=3)
    torch.nn.init.zeros_(zero.lm_head.weight)
    processor = PRTLogitsProcessor(zero, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    assert torch.equal(greedy(new_base, prompts, [processor]), greedy(new_base, prompts))


def test_processor_equals_hand_computed_prt_at_every_step(new_base, reward, tokenizer, prompts):
    vocab, lam = len(tokenizer), 0.7
    processor = PRTLogitsProcessor(
        reward, attention_mask=prompts.attention_mask, reward_scale=lam, vocab_size=vocab
    )
    out = new_base.generate(
        **prompts,
        max_new_tokens=STEPS,
        do_sample=False,
        logits_processor=[processor],
        return_dict_in_generate=True,
        output_scores=True,
    )
    prompt_len = prompts.input_ids.shape[1]
    for step, scores in enumerate(out.scores):
        ids = out.sequences[:, : prompt_len + step]
        mask = torch.cat([prompts.attention_mask, torch.ones(ids.shape[0], step, dtype=torch.long)], 1)
        base_logits = full_next_token_logits(new_base, ids, mask)[:, :vocab]
        reward_logits = full_next_token_logits(reward, ids, mask)[:, :vocab]
        expected = torch.softmax(F.log_softmax(base_logits, -1) + reward_logits / lam, -1)
        torch.testing.assert_close(torch.softmax(scores, -1)[:, :vocab], expected, atol=1e-5, rtol=1e-4)
        assert torch.all(torch.isneginf(scores[:, vocab:])), "head rows beyond the tokenizer must be masked"


def test_processor_equals_prt_model_greedy(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    model = PRTModel(new_base, reward, vocab_size=len(tokenizer))
    assert torch.equal(greedy(new_base, prompts, [processor]), greedy(model, prompts))


def test_processor_sampling_equals_prt_model_sampling(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    model = PRTModel(new_base, reward, vocab_size=len(tokenizer))
    sample = {"max_new_tokens": STEPS, "do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    torch.manual_seed(7)
    with_processor = new_base.generate(**prompts, logits_processor=[processor], **sample)
    torch.manual_seed(7)
    assert torch.equal(with_processor, model.generate(**prompts, **sample))


def test_cached_equals_uncached(new_base, reward, tokenizer, prompts):
    outs = []
    for use_cache in (True, False):
        processor = PRTLogitsProcessor(
            reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer), use_cache=use_cache
        )
        outs.append(
            new_base.generate(
                **prompts,
                max_new_tokens=STEPS,
                do_sample=False,
                logits_processor=[processor],
                return_dict_in_generate=True,
                output_scores=True,
            )
        )
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for cached, uncached in zip(outs[0].scores, outs[1].scores, strict=True):
        torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_one_by_one(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    batch = greedy(new_base, prompts, [processor])[:, -STEPS:]
    for row in range(batch.shape[0]):
        keep = prompts.attention_mask[row].bool()
        single = {
            "input_ids": prompts.input_ids[row, keep][None],
            "attention_mask": torch.ones(1, int(keep.sum())),
        }
        processor = PRTLogitsProcessor(
            reward, attention_mask=single["attention_mask"], vocab_size=len(tokenizer)
        )
        assert torch.equal(greedy(new_base, single, [processor])[0, -STEPS:], batch[row])


def test_beam_search_is_refused_with_a_pointer_to_prt_model(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="PRTModel"):
        new_base.generate(**prompts, max_new_tokens=STEPS, num_beams=4, logits_processor=[processor])


def test_reusing_a_processor_needs_reset(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    first = greedy(new_base, prompts, [processor])
    with pytest.raises(ValueError, match="reset"):
        greedy(new_base, prompts, [processor])
    processor.reset()
    assert torch.equal(greedy(new_base, prompts, [processor]), first)


def test_wrong_attention_mask_is_refused(new_base, reward, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask[:, 1:])
    with pytest.raises(ValueError, match="attention mask has"):
        greedy(new_base, prompts, [processor])


def test_nan_reward_is_refused(new_base, tokenizer, prompts):
    broken = tiny_causal_lm(tokenizer, seed=4)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    processor = PRTLogitsProcessor(broken, attention_mask=prompts.attention_mask)
    with pytest.raises(ValueError, match="non-finite"):
        greedy(new_base, prompts, [processor])


def test_eft_with_identical_pair_and_proxy_tuning_with_zero_alpha_leave_generation_identical(
    new_base, source_base, reward, tokenizer, prompts
):
    reference = greedy(new_base, prompts)
    mask = prompts.attention_mask
    eft = EFTLogitsProcessor(source_base, source_base, attention_mask=mask, vocab_size=len(tokenizer))
    proxy = ProxyTuningLogitsProcessor(
        reward, source_base, alpha=0.0, attention_mask=mask, vocab_size=len(tokenizer)
    )
    assert torch.equal(greedy(new_base, prompts, [eft]), reference)
    assert torch.equal(greedy(new_base, prompts, [proxy]), reference)


def test_eft_processor_equals_hand_computed_first_step(new_base, source_base, reward, tokenizer, prompts):
    vocab, mask = len(tokenizer), prompts.attention_mask
    eft = EFTLogitsProcessor(reward, source_base, attention_mask=mask, vocab_size=vocab)
    out = new_base.generate(
        **prompts,
        max_new_tokens=1,
        do_sample=False,
        logits_processor=[eft],
        return_dict_in_generate=True,
        output_scores=True,
    )
    new, ft, base = (
        full_next_token_logits(m, prompts.input_ids, mask)[:, :vocab] for m in (new_base, reward, source_base)
    )
    expected = F.log_softmax(F.log_softmax(new, -1) + F.log_softmax(ft, -1) - F.log_softmax(base, -1), -1)
    torch.testing.assert_close(out.scores[0][:, :vocab], expected, atol=1e-5, rtol=1e-4)


def test_processor_follows_rows_expanded_by_num_return_sequences(new_base, reward, tokenizer, prompts):
    processor = PRTLogitsProcessor(reward, attention_mask=prompts.attention_mask, vocab_size=len(tokenizer))
    model = PRTModel(new_base, reward, vocab_size=len(tokenizer))
    sample = {"max_new_tokens": STEPS, "do_sample": True, "top_k": 0, "num_return_sequences": 3}
    torch.manual_seed(11)
    with_processor = new_base.generate(**prompts, logits_processor=[processor], **sample)
    torch.manual_seed(11)
    assert torch.equal(with_processor, model.generate(**prompts, **sample))
