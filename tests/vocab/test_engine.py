"""The batched engine: every row of a batch gets exactly what it gets alone, one forward per model per step,
each unique token of the hypothesis trees stored once, nothing kept from one `generate` call to the next."""

import math

import pytest
import torch
from transformers import LogitsProcessor

from hf_coop.testing import CountForwards, rescore_alone, tail_steps, tiny_causal_lm
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.processor import CommonVocabLogitsProcessor
from hf_coop.vocab.reduced_lm import ReducedVocabLM

PROMPTS = ["It is a truth", "The quick", "def add(a, b):\n", "It is a truth", "é", "Mr. Bennet was so"]
SETTINGS = {  # exact with pruning (forced tokens keep positive mass), and K-LVR
    "pruned": {"max_hypotheses": 4, "prune_ratio": 1e-6},
    "top3": {"tokens_per_boundary": 3, "max_hypotheses": 6},
}


@pytest.fixture(scope="module", params=["byte_level_tokenizer", "sentencepiece_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def model64(tokenizer):
    return tiny_causal_lm(tokenizer, dtype=torch.float64, extra_head_rows=3)


@pytest.fixture(scope="module")
def pair(byte_level_tokenizer, sentencepiece_tokenizer):
    models = [
        tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64, extra_head_rows=3),
        tiny_causal_lm(sentencepiece_tokenizer, arch="gpt2", seed=1, dtype=torch.float64),
    ]
    return models, [byte_level_tokenizer, sentencepiece_tokenizer]


def reduced(model, tokenizer, sub_vocab="max-bytes:3", **settings):
    return ReducedVocabLM.from_model(model, tokenizer, sub_vocab, dtype="float64", **settings)


def assert_rows_equal_alone(model, prompts, out, repeat=1):
    """Each returned row's per-step logits equal the same tokens rescored alone with a fresh state."""
    width = len(out.sequences[0]) - len(out.logits)
    for row, sequence in enumerate(out.sequences):
        alone = model.tokenizer(prompts[row // repeat], return_tensors="pt")
        prompt_width = alone["input_ids"].shape[1]
        generated = sequence[width:].tolist()
        expected = rescore_alone(model, alone, generated)[: len(out.logits)]
        got = torch.stack([step[row] for step in out.logits[: len(expected)]]).double()
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(got)), (row, prompts[row // repeat])
        torch.testing.assert_close(got[finite], expected[finite].double(), rtol=0, atol=1e-5)
        assert sequence[width - prompt_width : width].tolist() == alone["input_ids"][0].tolist()


class ForceAtFirstStep(LogitsProcessor):
    """Force `token` on `row` at the first generated step."""

    def __init__(self, row: int, token: int):
        self.row, self.token, self.calls = row, token, 0

    def __call__(self, input_ids, scores):
        scores = scores.clone()  # generate records the raw logits: leave them untouched
        if self.calls == 0:
            forced = torch.full_like(scores[self.row], -math.inf)
            forced[self.token] = 0.0
            scores[self.row] = forced
        self.calls += 1
        return scores


def generate(model, prompts, **kwargs):
    enc = model.tokenizer(prompts, return_tensors="pt")
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("max_new_tokens", 8)
    return model.generate(**enc, output_logits=True, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("prompt_boundary", ["tail", "canonical"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reduced_batch_rows_equal_alone(model64, tokenizer, name, prompt_boundary):
    """Duplicates, a prompt that is another row's prompt plus text, mixed lengths (left padding); prompts
    read as tail bytes (each row walks its own) or as canonical tokens."""
    model = reduced(model64, tokenizer, prompt_boundary=prompt_boundary, **SETTINGS[name])
    first = generate(model, PROMPTS[:1])
    extended = PROMPTS[0] + model.tokenizer.decode(first.sequences[0, -8:-4])
    prompts = [*PROMPTS, extended]
    assert_rows_equal_alone(model, prompts, generate(model, prompts))


def test_reduced_forced_space_row_equals_alone(model64, tokenizer):
    """Rows whose sub-token content becomes equal while their histories differ keep their own states."""
    model = reduced(model64, tokenizer, "bytes", **SETTINGS["pruned"])
    prompts = ["It is ", "It is"]
    out = generate(model, prompts, logits_processor=[ForceAtFirstStep(1, ord(" "))])
    assert out.sequences[1, -8].item() == ord(" ")
    assert_rows_equal_alone(model, prompts, out)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reduced_sampling_with_return_sequences_equals_alone(model64, tokenizer, name):
    model = reduced(model64, tokenizer, **SETTINGS[name])
    torch.manual_seed(0)
    out = generate(model, PROMPTS[:3], do_sample=True, num_return_sequences=3, top_k=0)
    assert_rows_equal_alone(model, PROMPTS[:3], out, repeat=3)


BEAM_ATOL = 1e-5  # generate sums beam scores in float32: 8 steps of ~1.5 nats each


def rescored_total(model, prompt, tokens):
    """log p(tokens | prompt) summed over the steps, with a fresh state (up to and including an EOS)."""
    expected = rescore_alone(model, model.tokenizer(prompt, return_tensors="pt"), tokens)
    return sum(float(expected[i, t]) for i, t in enumerate(tokens[: len(expected)]))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reduced_beam_scores_equal_rescoring(model64, tokenizer, name):
    model = reduced(model64, tokenizer, **SETTINGS[name])
    prompts = PROMPTS[:2]
    out = generate(
        model, prompts, num_beams=4, num_return_sequences=4, length_penalty=0.0, output_scores=True
    )
    width = model.tokenizer(prompts, return_tensors="pt")["input_ids"].shape[1]
    pad = model.generation_config.pad_token_id
    for row, sequence in enumerate(out.sequences):
        tokens = sequence[width:].tolist()
        while tokens and tokens[-1] == pad and pad not in (model.generation_config.eos_token_id or []):
            tokens.pop()
        total = rescored_total(model, prompts[row // 4], tokens)
        assert float(out.sequences_scores[row]) == pytest.approx(total, abs=BEAM_ATOL)


def test_sliding_window_rows_equal_alone_past_the_window(tokenizer):
    """Gemma-3-style layers (window 4, then global): every slot stays stored; the window lives in the mask."""
    gemma = tiny_causal_lm(tokenizer, arch="gemma3", dtype=torch.float64)
    model = reduced(gemma, tokenizer, **SETTINGS["pruned"])
    assert_rows_equal_alone(model, PROMPTS, generate(model, PROMPTS))


def test_out_of_memory_names_max_batch(model64, tokenizer, monkeypatch):
    from hf_coop.vocab.engine.runner import EngineOutOfMemoryError

    model = reduced(model64, tokenizer, max_batch=3)
    monkeypatch.setattr(
        model64, "forward", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("oom"))
    )
    with pytest.raises(EngineOutOfMemoryError, match=r"lower max_batch \(now 3\)"):
        generate(model, PROMPTS[:2])


def test_second_generate_call_equals_a_fresh_model(model64, tokenizer):
    model = reduced(model64, tokenizer, **SETTINGS["top3"])
    first = generate(model, PROMPTS[:3]).sequences
    again = generate(model, PROMPTS[:3]).sequences
    fresh = generate(reduced(model64, tokenizer, **SETTINGS["top3"]), PROMPTS[:3]).sequences
    assert torch.equal(first, again) and torch.equal(again, fresh)


@pytest.mark.parametrize("prompt_boundary", ["canonical", "tail"])
def test_k1_batch_of_8_costs_one_forward_per_step(model64, tokenizer, prompt_boundary):
    # max_batch large enough that the tail walk (whole distributions, every tokenization) is not chunked
    model = reduced(
        model64, tokenizer, tokens_per_boundary=1, prompt_boundary=prompt_boundary, max_batch=4096
    )
    steps = 12
    # under "tail" the rows walk their tails' bytes first; rows of equal work share each forward (rows of
    # very unequal work may be split in row groups by the forward-cost model)
    prompts = (PROMPTS + PROMPTS)[:8] if prompt_boundary == "canonical" else ["It is a truth"] * 8
    enc = model.tokenizer(prompts, return_tensors="pt")
    with CountForwards(model64) as counter:
        model.generate(**enc, max_new_tokens=steps, do_sample=False)
    walk = tail_steps(enc["tail_bytes"]) if prompt_boundary == "tail" else 0
    assert counter.calls <= 1 + walk + steps


def test_more_rows_than_max_batch_are_chunked(model64, tokenizer):
    small = reduced(model64, tokenizer, max_batch=2, **SETTINGS["pruned"])
    out = generate(small, PROMPTS)
    assert_rows_equal_alone(small, PROMPTS, out)
    big = generate(reduced(model64, tokenizer, **SETTINGS["pruned"]), PROMPTS)
    assert torch.equal(out.sequences, big.sequences)


def test_kv_store_holds_each_unique_token_once(model64, tokenizer):
    model = reduced(model64, tokenizer, "bytes", max_hypotheses=8)
    cache = model.new_cache()
    enc = model.tokenizer(PROMPTS[:3], return_tensors="pt")
    model.generate(**enc, max_new_tokens=10, do_sample=False, cache=cache)
    member = cache.scheduler.members[0]
    live = member.cover.live_handles()
    member.cover.remap_handles(member.runner.compact(live))
    store = member.runner.store
    unique = set()
    for handle in torch.unique(member.cover.live_handles()).tolist():
        path = store.path(handle)
        row = int(store.h_row[handle])
        unique.update((row, tuple(path[:n])) for n in range(1, len(path) + 1))
    assert len(member.cover.hyps) > len(PROMPTS[:3])  # several hypotheses share each row's prefix
    assert store.cached_positions() == len(unique)


def test_ensemble_rows_equal_alone_and_one_forward_per_member_per_step(pair):
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, dtype="float64")
    prompts = [*PROMPTS[:4], PROMPTS[0] + " univ"]
    with CountForwards(models[0]) as first, CountForwards(models[1]) as second:
        out = generate(ensemble, prompts)
    tails = ensemble.tokenizer(prompts, return_tensors="pt")["member_tail_bytes"]
    for member, counter in enumerate((first, second)):
        assert counter.calls <= 1 + tail_steps(tails[:, member]) + 8
    assert_rows_equal_alone(ensemble, prompts, out)
    again = generate(ensemble, prompts)  # the same object again acts like a fresh one
    assert torch.equal(again.sequences, out.sequences)
    torch.manual_seed(1)
    sampled = generate(ensemble, prompts[:2], do_sample=True, num_return_sequences=3, top_k=0)
    assert_rows_equal_alone(ensemble, prompts[:2], sampled, repeat=3)
    forced = generate(ensemble, ["It is ", "It is"], logits_processor=[ForceAtFirstStep(1, ord(" "))])
    assert_rows_equal_alone(ensemble, ["It is ", "It is"], forced)


def test_ensemble_beam_scores_equal_rescoring(pair):
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(
        models, tokenizers, max_hypotheses=4, mode="product", dtype="float64"
    )
    out = generate(
        ensemble, PROMPTS[:2], num_beams=4, num_return_sequences=4, length_penalty=0.0, output_scores=True
    )
    width = ensemble.tokenizer(PROMPTS[:2], return_tensors="pt")["input_ids"].shape[1]
    for row, sequence in enumerate(out.sequences):
        tokens = sequence[width:].tolist()
        total = rescored_total(ensemble, PROMPTS[row // 4], tokens)
        assert float(out.sequences_scores[row]) == pytest.approx(total, abs=BEAM_ATOL)


@pytest.mark.parametrize("driver", [0, 1])
def test_processor_rows_equal_the_model_form(pair, driver):
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, dtype="float64")
    prompts = [*PROMPTS[:3], PROMPTS[0]]
    expected = generate(ensemble, prompts)
    width = expected.sequences.shape[1] - len(expected.logits)
    processor = CommonVocabLogitsProcessor(ensemble, driver=driver)
    for _ in range(2):  # a reused processor behaves like a fresh one
        inputs = processor.encode(prompts)
        out = models[driver].generate(
            **inputs, logits_processor=[processor], max_new_tokens=8, do_sample=False
        )
        for row in range(len(prompts)):
            want = ensemble.tokenizer.decode(expected.sequences[row, width:], skip_special_tokens=True)
            assert processor.decode(out[row, inputs["input_ids"].shape[1] :]) == want
    inputs = processor.encode(prompts[:2])
    torch.manual_seed(2)
    sampled = models[driver].generate(
        **inputs,
        logits_processor=[processor],
        max_new_tokens=5,
        do_sample=True,
        top_k=0,
        num_return_sequences=3,
        return_dict_in_generate=True,
        output_scores=True,
    )
    width = inputs["input_ids"].shape[1]
    for row, sequence in enumerate(sampled.sequences):  # each sampled row's scores equal its text alone
        path = processor.sub_of_token[sequence[width:]].tolist()
        alone = rescore_alone(ensemble, ensemble.tokenizer(prompts[row // 3], return_tensors="pt"), path)
        for step, token in enumerate(sequence[width : width + len(alone)].tolist()):
            got = float(sampled.scores[step][row, token])
            assert got == pytest.approx(float(alone[step, path[step]]), abs=1e-5)
    beams = models[driver].generate(
        **inputs,
        logits_processor=[processor],
        max_new_tokens=5,
        num_beams=3,
        do_sample=False,
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    model_beams = generate(
        ensemble, prompts[:2], num_beams=3, length_penalty=0.0, output_scores=True, max_new_tokens=5
    )
    torch.testing.assert_close(
        beams.sequences_scores,
        model_beams.sequences_scores.to(beams.sequences_scores),
        atol=BEAM_ATOL,
        rtol=0,
    )
