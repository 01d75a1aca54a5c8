"""Exact oracles on tiny models: every token sequence is enumerated and compared with the recursion."""

import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

from hf_coop.scoring import start_token_id
from hf_coop.testing import tiny_causal_lm
from hf_coop.vocab.marginal import prefix_logprob
from hf_coop.vocab.reduced_lm import PromptError, ReducedVocabLM
from hf_coop.vocab.relative_cover import CoverSettings, CoverState
from hf_coop.vocab.sub_vocabulary import SubVocabulary, SubVocabularyError
from hf_coop.vocab.token_bytes import token_bytes

TEXTS = ["truth", "é a", " it is"]
PROMPTS = [
    "It is a truth",
    "The quick",
    "def add(a, b):\n",
    "Question: Tom has",
    "é",
    "a",
    "Mr. Bennet was so",
]


def original_prefix_logprob(model, tokenizer, text):
    """Enumerate every token sequence whose bytes start with `text` (covers); sum their probabilities."""
    table, data, n = token_bytes(tokenizer), text.encode(), len(tokenizer)
    covers = []

    @torch.no_grad()
    def walk(ids, pos, logw):
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1, :n].double(), -1)
        rest = data[pos:]
        for u in range(n):
            piece = table[u]
            if piece is None:
                continue
            if rest.startswith(piece) and len(piece) < len(rest):
                walk(ids + [u], pos + len(piece), logw + logprobs[u].item())
            elif piece.startswith(rest):
                covers.append(logw + logprobs[u].item())

    walk([start_token_id(tokenizer)], 0, 0.0)
    return torch.logsumexp(torch.tensor(covers, dtype=torch.float64), 0).item()


def reduced_prefix_logprob(reduced, prompt_ids, text):
    """The same sum over the *reduced* model's own conditionals, enumerating sub-token sequences."""
    data, covers = text.encode(), []

    def walk(state, pos, logw):
        logprobs = state.next_logprobs()
        assert torch.logsumexp(logprobs, 0).item() == pytest.approx(0.0, abs=1e-12)
        rest = data[pos:]
        for sub_id, piece in enumerate(reduced.nested.sub_strings):
            if logprobs[sub_id] == -math.inf:
                continue
            if rest.startswith(piece) and len(piece) < len(rest):
                child = state.fork()
                child.advance(sub_id)
                walk(child, pos + len(piece), logw + logprobs[sub_id].item())
            elif piece.startswith(rest):
                covers.append(logw + logprobs[sub_id].item())

    walk(CoverState(reduced.runner, prompt_ids, reduced.settings), 0, 0.0)
    return torch.logsumexp(torch.tensor(covers, dtype=torch.float64), 0).item()


@pytest.fixture(scope="module", params=["byte_level_tokenizer", "sentencepiece_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model64(request, tokenizer):
    return tiny_causal_lm(tokenizer, arch=request.param, dtype=torch.float64, extra_head_rows=3)


def _sub_vocabularies(tokenizer):
    return [
        SubVocabulary.bytes_only(),
        SubVocabulary.max_bytes(tokenizer, 2),
        SubVocabulary.max_bytes(tokenizer, 3),
        SubVocabulary.from_strings(["tr", "uth", " i", "t ", "is", "é"], name="explicit"),
    ]


def test_marginal_prefix_logprob_equals_enumeration(model64, tokenizer):
    for text in TEXTS:
        exact = original_prefix_logprob(model64, tokenizer, text)
        score = prefix_logprob(model64, tokenizer, text)
        assert score.nats == pytest.approx(exact, abs=1e-9)
        assert score.truncated_mass == 0.0 and score.upper_nats == score.nats


def test_reduced_models_give_every_text_the_original_marginal(model64, tokenizer):
    """Lossless: summing the reduced model's own conditionals over all its sub-token sequences gives the
    original model's all-tokenization probability, for bytes, max-bytes:N and an explicit sub-vocabulary."""
    prompt = [start_token_id(tokenizer)]
    for sub_vocab in _sub_vocabularies(tokenizer):
        reduced = ReducedVocabLM.from_model(model64, tokenizer, sub_vocab)
        for text in TEXTS[:2]:
            assert reduced_prefix_logprob(reduced, prompt, text) == pytest.approx(
                original_prefix_logprob(model64, tokenizer, text), abs=1e-9
            )


def test_conditionals_sum_to_one_and_empty_buckets_are_minus_inf(model64, tokenizer):
    reduced = ReducedVocabLM.from_model(model64, tokenizer, "max-bytes:3")
    state = CoverState(reduced.runner, [start_token_id(tokenizer)], reduced.settings)
    for sub_id in reduced.nested.encode_tokens(tokenizer("It is a", add_special_tokens=False)["input_ids"]):
        logprobs = state.next_logprobs()
        assert not torch.isnan(logprobs).any()
        assert torch.logsumexp(logprobs, 0).item() == pytest.approx(0.0, abs=1e-12)
        state.advance(sub_id)
    # With K-LVR most sub-tokens start none of the kept tokens: their buckets are -inf, never NaN.
    top2 = ReducedVocabLM.from_model(model64, tokenizer, "max-bytes:3", top_k=2)
    logprobs = CoverState(top2.runner, [start_token_id(tokenizer)], top2.settings).next_logprobs()
    assert torch.isinf(logprobs).sum() >= len(logprobs) - 2 and not torch.isnan(logprobs).any()
    assert torch.logsumexp(logprobs, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_top_k_of_full_vocabulary_equals_exact_mode(model64, tokenizer):
    exact = ReducedVocabLM.from_model(model64, tokenizer, "bytes")
    full_k = ReducedVocabLM.from_model(model64, tokenizer, "bytes", top_k=len(tokenizer))
    prompt = [start_token_id(tokenizer)]
    a, b = (
        CoverState(exact.runner, prompt, exact.settings),
        CoverState(full_k.runner, prompt, full_k.settings),
    )
    for byte in b"It is":
        torch.testing.assert_close(a.next_logprobs(), b.next_logprobs(), rtol=0, atol=1e-12)
        a.advance(byte)
        b.advance(byte)
    assert b.truncated_logmass == -math.inf


@pytest.mark.parametrize("settings", [CoverSettings(max_hypotheses=2), CoverSettings(prune_ratio=0.05)])
def test_truncated_mass_bounds_the_error(model64, tokenizer, settings):
    for text in TEXTS:
        exact = original_prefix_logprob(model64, tokenizer, text)
        score = prefix_logprob(model64, tokenizer, text, settings.max_hypotheses, settings.prune_ratio)
        assert score.nats <= exact + 1e-12 <= score.upper_nats + 2e-12
    top = ReducedVocabLM.from_model(model64, tokenizer, "bytes", top_k=3)
    state = CoverState(top.runner, [start_token_id(tokenizer)], top.settings)
    assert state.truncated_logmass > -math.inf  # three tokens never hold all the mass
    assert math.exp(state.kept_logmass) + math.exp(state.truncated_logmass) == pytest.approx(1.0, abs=1e-12)


def test_pruning_backs_up_when_the_text_leaves_every_kept_hypothesis(model64, tokenizer):
    """One hypothesis at a time: a word boundary the kept token cannot spell forces a back-up to the
    held-back boundary histories; the result stays a bound of the exact value."""
    data = b" it is"
    runner = ReducedVocabLM.from_model(model64, tokenizer, "bytes").runner
    state = CoverState(runner, [start_token_id(tokenizer)], CoverSettings(max_hypotheses=1))
    for byte in data:
        state.advance(byte)
    exact = original_prefix_logprob(model64, tokenizer, data.decode())
    assert state.back_ups > 0
    assert state.kept_logmass <= exact + 1e-12
    assert exact <= math.log(math.exp(state.kept_logmass) + math.exp(state.truncated_logmass)) + 1e-12
    forked = CoverState(runner, [start_token_id(tokenizer)], CoverSettings(max_hypotheses=1))
    for byte in data[:3]:
        forked.advance(byte)
    twin = forked.fork()
    for one in (forked, twin):  # each twin backs up on its own copies of the held-back histories
        for byte in data[3:]:
            one.advance(byte)
        assert one.kept_logmass == pytest.approx(state.kept_logmass, abs=1e-12)
    stuck = CoverState(runner, [start_token_id(tokenizer)], CoverSettings(max_hypotheses=1, backtrack=0))
    with pytest.raises(ValueError, match="backtrack"):
        for byte in data:
            stuck.advance(byte)


def _masked_greedy(model, tokenizer, prompt, max_new_tokens):
    """Plain greedy `generate`, with output-head rows beyond the tokenizer suppressed."""
    head = model.get_output_embeddings().weight.shape[0]
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        suppress_tokens=list(range(len(tokenizer), head)) or None,
    )
    return token_bytes(tokenizer).decode(out[0, enc["input_ids"].shape[1] :].tolist())


@pytest.mark.parametrize("sub_vocab", ["bytes", "max-bytes:3"])
def test_k1_greedy_equals_original_greedy(model64, tokenizer, sub_vocab):
    reduced = ReducedVocabLM.from_model(model64, tokenizer, sub_vocab, top_k=1)
    for prompt in PROMPTS:
        expected = _masked_greedy(model64, tokenizer, prompt, 10)
        enc = reduced.tokenizer(prompt, return_tensors="pt")
        out = reduced.generate(**enc, max_new_tokens=len(expected), do_sample=False)
        got = reduced.nested.decode(out[0, enc["input_ids"].shape[1] :].tolist())
        assert got[: len(expected)] == expected


def test_batch_of_prompts_equals_one_by_one(tokenizer):
    model = tiny_causal_lm(tokenizer, dtype=torch.float64)
    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", top_k=4)
    prompts = PROMPTS[:4]
    batch = reduced.tokenizer(prompts, return_tensors="pt")
    together = reduced.generate(**batch, max_new_tokens=12, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        reduced.reset()
        alone = reduced.generate(
            **reduced.tokenizer(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False
        )
        assert reduced.tokenizer.decode(together[row, width:]) == reduced.tokenizer.decode(alone[0, -12:])


def test_cached_step_equals_uncached_recomputation(model64, tokenizer):
    reduced = ReducedVocabLM.from_model(model64, tokenizer, "max-bytes:3", top_k=5)
    enc = reduced.tokenizer("It is a truth", return_tensors="pt")
    out = reduced.generate(**enc, max_new_tokens=8, do_sample=False)
    reduced.forward(out)  # one more cached step, advancing the states kept from generate
    cached = reduced._states[tuple(out[0].tolist())].next_logprobs()
    reduced.reset()
    uncached = reduced.forward(out).logits[0, 0].double()  # rebuilt from the prompt, sub-token by sub-token
    torch.testing.assert_close(cached.float().double(), uncached, rtol=0, atol=1e-6)


def test_generate_features_work(tokenizer):
    """Sampling with temperature/top-p, a streamer, a user logits processor and EOS all pass through."""
    model = tiny_causal_lm(tokenizer)
    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", top_k=20)
    enc = reduced.tokenizer(["It is", "The quick brown"], return_tensors="pt")
    torch.manual_seed(0)
    sampled = reduced.generate(**enc, max_new_tokens=6, do_sample=True, temperature=0.7, top_p=0.9)
    assert sampled.shape == (2, enc["input_ids"].shape[1] + 6)

    banned = reduced.nested.sub_strings.index(b"e")

    class BanE(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, banned] = -math.inf
            return scores

    out = reduced.generate(
        **enc, max_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList([BanE()])
    )
    assert banned not in out[:, enc["input_ids"].shape[1] :].tolist()

    class Capture(TextStreamer):
        text = ""

        def on_finalized_text(self, text, stream_end=False):
            Capture.text += text

    single = reduced.tokenizer("It is", return_tensors="pt")
    out = reduced.generate(
        **single, max_new_tokens=5, do_sample=False, streamer=Capture(reduced.tokenizer, skip_prompt=True)
    )
    assert Capture.text == reduced.tokenizer.decode(out[0, single["input_ids"].shape[1] :])


def test_chat_template_prompt_round_trips(byte_level_tokenizer):
    model = tiny_causal_lm(byte_level_tokenizer)
    reduced = ReducedVocabLM.from_model(model, byte_level_tokenizer, "bytes", top_k=1)
    messages = [{"role": "user", "content": "hi"}]
    enc = reduced.tokenizer.apply_chat_template(messages, return_tensors="pt")
    original = byte_level_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    original = original if isinstance(original, list) else original["input_ids"]
    assert reduced.tokenizer.original_ids_for(tuple(enc["input_ids"][0].tolist())) == list(original)


def test_bad_inputs_raise_clear_errors(byte_level_tokenizer):
    with pytest.raises(SubVocabularyError, match="all 256 single bytes"):
        SubVocabulary(frozenset({b"a", b"ab"}))
    with pytest.raises(SubVocabularyError, match="unknown sub-vocabulary"):
        SubVocabulary.parse("chars", byte_level_tokenizer)
    model = tiny_causal_lm(byte_level_tokenizer)
    reduced = ReducedVocabLM.from_model(model, byte_level_tokenizer, "max-bytes:3")
    with pytest.raises(PromptError, match="empty"):
        reduced.tokenizer("", add_special_tokens=False)
    # Sub-tokens that the original tokenizer would split differently cannot stand for a prompt.
    odd = [
        reduced.nested.sub_strings.index(b"t"),
        reduced.nested.sub_strings.index(b"h"),
        reduced.nested.sub_strings.index(b"e"),
    ]
    if byte_level_tokenizer("the", add_special_tokens=False)["input_ids"] != [ord("t"), ord("h"), ord("e")]:
        with pytest.raises(PromptError, match="round-trip"):
            reduced(torch.tensor([odd]))
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reduced.generate(**reduced.tokenizer("It is", return_tensors="pt"), max_new_tokens=2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_canonical_sub_sequence_sits_between_canonical_and_marginal(arch, byte_level_tokenizer):
    from hf_coop.scoring import canonical_logprob
    from hf_coop.vocab.marginal import canonical_sub_sequence_logprob

    model64 = tiny_causal_lm(byte_level_tokenizer, arch=arch, dtype=torch.float64)
    text = "It is a truth"
    canonical = canonical_logprob(model64, byte_level_tokenizer, text).nats
    marginal = prefix_logprob(model64, byte_level_tokenizer, text).nats
    bytes_table = SubVocabulary.bytes_only().nested_table(byte_level_tokenizer)
    three = SubVocabulary.max_bytes(byte_level_tokenizer, 3).nested_table(byte_level_tokenizer)
    over_bytes = canonical_sub_sequence_logprob(model64, byte_level_tokenizer, text, bytes_table).nats
    over_three = canonical_sub_sequence_logprob(model64, byte_level_tokenizer, text, three).nats
    assert over_bytes == pytest.approx(marginal, abs=1e-9)  # over bytes the canonical sequence is the text
    assert canonical <= over_three + 1e-9 <= marginal + 2e-9


def test_max_new_bytes_budget_stops_on_text_length(byte_level_tokenizer):
    from transformers import StoppingCriteriaList

    from hf_coop.vocab.reduced_lm import MaxNewBytesCriteria

    reduced = ReducedVocabLM.from_model(
        tiny_causal_lm(byte_level_tokenizer), byte_level_tokenizer, "max-bytes:3", top_k=1
    )
    enc = reduced.tokenizer(["It is", "The quick brown"], return_tensors="pt")
    width = enc["input_ids"].shape[1]
    budget = StoppingCriteriaList([MaxNewBytesCriteria(reduced.nested, width, 7)])
    out = reduced.generate(**enc, max_new_tokens=50, do_sample=False, stopping_criteria=budget)
    spelled = [len(reduced.nested.decode(row[width:].tolist())) for row in out]
    assert max(spelled) >= 7 and out.shape[1] - width < 50

    enc = reduced.tokenizer("It is", return_tensors="pt")
    width = enc["input_ids"].shape[1]
    free = reduced.generate(**enc, max_new_tokens=20, do_sample=False)[0, width:].tolist()
    text = reduced.nested.decode(free)
    stop = text[6:8]
    stopped = StoppingCriteriaList([MaxNewBytesCriteria(reduced.nested, width, 1000, stop_bytes=stop)])
    ids = reduced.generate(**enc, max_new_tokens=20, do_sample=False, stopping_criteria=stopped)[0, width:]
    assert stop in reduced.nested.decode(ids.tolist())
    assert stop not in reduced.nested.decode(ids[:-1].tolist())
    assert text.startswith(reduced.nested.decode(ids.tolist()))


def test_beam_search_rows_are_found_by_content(byte_level_tokenizer):
    """Beam search reorders and duplicates rows; each row's state follows its own sub-token sequence."""
    model = tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64)
    reduced = ReducedVocabLM.from_model(model, byte_level_tokenizer, "max-bytes:3", top_k=3)
    enc = reduced.tokenizer("It is a", return_tensors="pt")
    width = enc["input_ids"].shape[1]
    beams = reduced.generate(**enc, max_new_tokens=6, num_beams=3, num_return_sequences=3, do_sample=False)
    prompt = reduced.tokenizer.prompts[tuple(enc["input_ids"][0].tolist())]
    for row in beams:
        state = CoverState(reduced.runner, prompt, reduced.settings)
        total = 0.0
        for sub_id in row[width:].tolist():
            total += state.next_logprobs()[sub_id].item()
            state.advance(sub_id)
        assert total > -math.inf  # every returned beam is a sequence the reduced model can produce
