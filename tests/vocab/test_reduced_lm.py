"""Exact oracles on tiny models: every token sequence is enumerated and compared with the recursion."""

import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TextStreamer

from hf_coop.errors import InputError
from hf_coop.scoring import start_token_id
from hf_coop.testing import rescore_alone, tiny_causal_lm
from hf_coop.vocab.engine.scheduler import ZeroProbabilityError
from hf_coop.vocab.engine.settings import EngineSettings
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from hf_coop.vocab.scoring import prefix_logprob, sub_sequence_logprobs
from hf_coop.vocab.sub_vocabulary import SubVocabulary, SubVocabularyError
from hf_coop.vocab.token_bytes import token_bytes
from hf_coop.vocab.tokenizers import PromptError

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


def start_state(reduced, prompt_ids):
    """A fresh engine state for one prompt of original token ids, and its first next-token log-probs."""
    cache = reduced.new_cache()
    enc = reduced.tokenizer.from_original_ids([prompt_ids], return_tensors="pt")
    return cache, reduced(**enc, cache=cache).logits[:, 0].double()


def reduced_prefix_logprob(reduced, prompt_ids, text):
    """The same sum over the *reduced* model's own conditionals, enumerating sub-token sequences breadth
    first: every path of a level is one row of the engine (copied with `select_rows`, advanced together)."""
    data, covers = text.encode(), []
    cache, logprobs = start_state(reduced, prompt_ids)
    paths = [(0, 0.0)]  # (bytes spelled, log-prob) per row
    while paths:
        assert torch.allclose(torch.logsumexp(logprobs, 1), torch.zeros(len(paths), dtype=torch.float64))
        children = []
        for row, (pos, logw) in enumerate(paths):
            rest = data[pos:]
            for sub_id, piece in enumerate(reduced.nested.sub_strings):
                lp = float(logprobs[row, sub_id])
                if lp == -math.inf:
                    continue
                if rest.startswith(piece) and len(piece) < len(rest):
                    children.append((row, sub_id, pos + len(piece), logw + lp))
                elif piece.startswith(rest):
                    covers.append(logw + lp)
        if not children:
            break
        cache.scheduler.select_rows(torch.tensor([c[0] for c in children]))
        reduced.step_rows(cache, torch.tensor([c[1] for c in children]))
        logprobs = reduced.row_logprobs(cache).double()
        paths = [(pos, logw) for _, _, pos, logw in children]
    return torch.logsumexp(torch.tensor(covers, dtype=torch.float64), 0).item()


@pytest.fixture(scope="module", params=["byte_level_tokenizer", "sentencepiece_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])  # gemma3: a 4-token sliding window
def model64(request, tokenizer):
    return tiny_causal_lm(tokenizer, arch=request.param, dtype=torch.float64, extra_head_rows=3)


def exact(model, tokenizer, sub_vocab, **settings):
    return ReducedVocabLM.from_model(model, tokenizer, sub_vocab, dtype="float64", **settings)


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
        reduced = exact(model64, tokenizer, sub_vocab)
        for text in TEXTS[:2]:
            assert reduced_prefix_logprob(reduced, prompt, text) == pytest.approx(
                original_prefix_logprob(model64, tokenizer, text), abs=1e-9
            )


def test_conditionals_sum_to_one_and_empty_buckets_are_minus_inf(model64, tokenizer):
    reduced = exact(model64, tokenizer, "max-bytes:3")
    prompt = reduced.tokenizer.from_original_ids([[start_token_id(tokenizer)]], return_tensors="pt")
    path = reduced.nested.encode_tokens(tokenizer("It is a", add_special_tokens=False)["input_ids"])
    for logprobs in rescore_alone(reduced, prompt, path).double():
        assert not torch.isnan(logprobs).any()
        assert torch.logsumexp(logprobs, 0).item() == pytest.approx(0.0, abs=1e-12)
    # With K-LVR most sub-tokens start none of the kept tokens: their buckets are -inf, never NaN.
    top2 = exact(model64, tokenizer, "max-bytes:3", tokens_per_boundary=2)
    logprobs = start_state(top2, [start_token_id(tokenizer)])[1][0]
    assert torch.isinf(logprobs).sum() >= len(logprobs) - 2 and not torch.isnan(logprobs).any()
    assert torch.logsumexp(logprobs, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_top_k_of_full_vocabulary_equals_exact_mode(model64, tokenizer):
    prompt = [start_token_id(tokenizer)]
    path = list(b"It is")
    exact_model = exact(model64, tokenizer, "bytes")
    full_k = exact(model64, tokenizer, "bytes", tokens_per_boundary=len(tokenizer))
    inputs = exact_model.tokenizer.from_original_ids([prompt], return_tensors="pt")
    torch.testing.assert_close(
        rescore_alone(exact_model, inputs, path), rescore_alone(full_k, inputs, path), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("settings", [{"max_hypotheses": 2}, {"prune_ratio": 0.05}])
def test_truncated_mass_bounds_the_error(model64, tokenizer, settings):
    for text in TEXTS:
        exact_value = original_prefix_logprob(model64, tokenizer, text)
        score = prefix_logprob(model64, tokenizer, text, **settings)
        assert score.nats <= exact_value + 1e-12 <= score.upper_nats + 2e-12
    top = exact(model64, tokenizer, "bytes", tokens_per_boundary=3)
    cache, _ = start_state(top, [start_token_id(tokenizer)])
    cover = cache.scheduler.members[0].cover
    kept, truncated = float(cover.kept_logmass()[0]), float(cover.truncated[0])
    assert truncated > -math.inf  # three tokens never hold all the mass
    assert math.exp(kept) + math.exp(truncated) == pytest.approx(1.0, abs=1e-12)


def test_pruning_backs_up_when_the_text_leaves_every_kept_hypothesis(model64, tokenizer):
    """One hypothesis at a time: a word boundary the kept token cannot spell forces a back-up to the
    held-back boundary histories; the result stays a bound of the exact value, batched or alone."""
    texts = [" it is", "truth", " it is"]
    exact_values = [original_prefix_logprob(model64, tokenizer, t) for t in texts]
    together = prefix_logprob(model64, tokenizer, texts, max_hypotheses=1)
    assert together[0].back_ups > 0
    for text, value, score in zip(texts, exact_values, together):
        alone = prefix_logprob(model64, tokenizer, text, max_hypotheses=1)
        assert score.nats == pytest.approx(alone.nats, abs=1e-12)
        assert score.nats <= value + 1e-12 <= score.upper_nats + 2e-12
    stuck = EngineSettings(max_hypotheses=1, backtrack=0, dtype="float64")
    with pytest.raises(ZeroProbabilityError, match="backtrack"):
        prefix_logprob(model64, tokenizer, " it is", settings=stuck)


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
    """K=1 over a batch of prompts of mixed lengths reproduces each prompt's plain greedy text."""
    reduced = ReducedVocabLM.from_model(
        model64, tokenizer, sub_vocab, tokens_per_boundary=1, prompt_boundary="canonical"
    )
    enc = reduced.tokenizer(PROMPTS, return_tensors="pt")
    out = reduced.generate(**enc, max_new_tokens=30, do_sample=False)
    for row, prompt in enumerate(PROMPTS):
        expected = _masked_greedy(model64, tokenizer, prompt, 8)
        got = reduced.nested.decode(out[row, enc["input_ids"].shape[1] :].tolist())
        assert got[: len(expected)] == expected[: len(got)] and len(got) >= min(len(expected), 30)


def test_generate_features_work(tokenizer):
    """Sampling with temperature/top-p, a streamer, a user logits processor and EOS all pass through."""
    model = tiny_causal_lm(tokenizer)
    reduced = ReducedVocabLM.from_model(model, tokenizer, "max-bytes:3", tokens_per_boundary=20)
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
    reduced = ReducedVocabLM.from_model(model, byte_level_tokenizer, "bytes", tokens_per_boundary=1)
    messages = [{"role": "user", "content": "hi"}]
    enc = reduced.tokenizer.apply_chat_template(messages, return_tensors="pt")
    original = byte_level_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    original = original if isinstance(original, list) else original["input_ids"]
    assert enc["original_input_ids"][0].tolist() == list(original)
    assert reduced.tokenizer.prompt_for(enc["input_ids"][0].tolist())[0] == list(original)


def test_bad_inputs_raise_clear_errors(byte_level_tokenizer):
    with pytest.raises(SubVocabularyError, match="all 256 single bytes"):
        SubVocabulary(frozenset({b"a", b"ab"}))
    with pytest.raises(SubVocabularyError, match="unknown sub-vocabulary"):
        SubVocabulary.parse("chars", byte_level_tokenizer)
    model = tiny_causal_lm(byte_level_tokenizer)
    reduced = ReducedVocabLM.from_model(
        model, byte_level_tokenizer, "max-bytes:3", prompt_boundary="canonical"
    )
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
        # conditioned on as bytes, the same sub-tokens are simply the text "the"
        by_bytes = ReducedVocabLM.from_model(
            model, byte_level_tokenizer, "max-bytes:3", prompt_boundary="exact"
        )
        assert torch.allclose(
            by_bytes(torch.tensor([odd])).logits,
            by_bytes(**by_bytes.tokenizer("the", return_tensors="pt")).logits,
        )
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reduced.generate(**reduced.tokenizer("It is", return_tensors="pt"), max_new_tokens=2)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_canonical_sub_sequence_sits_between_canonical_and_marginal(arch, byte_level_tokenizer):
    from hf_coop.scoring import canonical_logprob
    from hf_coop.vocab.scoring import canonical_sub_sequence_logprob

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
        tiny_causal_lm(byte_level_tokenizer), byte_level_tokenizer, "max-bytes:3", tokens_per_boundary=1
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


@pytest.mark.parametrize("sub_vocab", ["bytes", "max-bytes:3"])
def test_labels_give_the_language_modelling_loss_batched_as_alone(sentencepiece_tokenizer, sub_vocab):
    """`reduced(ids, labels=ids).loss` is the mean -log p(sub-token | the ones before) over the labels: times
    the count it equals the exact log-probability of the sub-tokens after BOS (scored on its own path), and
    a batch of mixed lengths gives each row what it gets alone."""
    model = tiny_causal_lm(sentencepiece_tokenizer, dtype=torch.float64)
    reduced = exact(model, sentencepiece_tokenizer, sub_vocab)
    texts = ["It is", "é a", "The qu"]
    batch = reduced.tokenizer(texts, return_tensors="pt")
    out = reduced(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]
    )
    total, count = 0.0, 0
    for text in texts:
        ids = reduced.tokenizer(text, return_tensors="pt")["input_ids"]
        bos = len(reduced.nested.sub_strings) + reduced.nested.control_token_ids.index(
            sentencepiece_tokenizer.bos_token_id
        )
        assert ids[0, 0] == bos
        alone = reduced(input_ids=ids, labels=ids)
        (oracle,) = sub_sequence_logprobs(
            model, sentencepiece_tokenizer, reduced.nested, [ids[0, 1:].tolist()], [1], reduced.settings
        )
        n = ids.shape[1] - 1
        assert alone.loss.item() * n == pytest.approx(-oracle.nats, abs=1e-6)
        total, count = total + alone.loss.item() * n, count + n
    assert out.loss.item() == pytest.approx(total / count, abs=1e-6)
    assert out.logits.shape == (*batch["input_ids"].shape, reduced.config.vocab_size)
    masked = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    masked[:, :3] = -100  # a prompt left out of the loss, as in supervised fine-tuning
    partial = reduced(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=masked)
    assert partial.loss.item() != pytest.approx(out.loss.item())
    with pytest.raises(InputError, match=r"labels have shape \(3, \d+\) but input_ids"):
        reduced(input_ids=batch["input_ids"], labels=batch["input_ids"][:, 1:])


def test_tokenizer_options_are_honoured_or_refused(byte_level_tokenizer):
    reduced = ReducedVocabLM.from_model(tiny_causal_lm(byte_level_tokenizer), byte_level_tokenizer, "bytes")
    assert (
        reduced.tokenizer(["a", "abcdef"], padding=True, return_attention_mask=True)["attention_mask"][0][0]
        == 0
    )
    for kwargs, message in [
        (dict(truncation=True, max_length=2), "truncation is not supported"),
        (dict(padding="max_length", max_length=6), "padding='max_length' is not supported"),
        (dict(return_attention_mask=False), "return_attention_mask=False is not supported"),
        (dict(max_length=6), r"unsupported tokenizer arguments \['max_length'\]"),
    ]:
        with pytest.raises(PromptError, match=message):
            reduced.tokenizer("abc", **kwargs)


def test_empty_rows_and_texts_past_the_positions_are_refused(byte_level_tokenizer):
    reduced = ReducedVocabLM.from_model(tiny_causal_lm(byte_level_tokenizer), byte_level_tokenizer, "bytes")
    batch = reduced.tokenizer(["abc", "de"], return_tensors="pt")
    batch["attention_mask"][1] = 0
    with pytest.raises(InputError, match=r"rows \[1\] of the attention mask are all zeros"):
        reduced.generate(**batch, max_new_tokens=2)
    reduced.original.config.max_position_embeddings = 8
    with pytest.raises(InputError, match="past the model's 8 positions"):
        reduced.generate(**reduced.tokenizer("It is a truth", return_tensors="pt"), max_new_tokens=4)


def test_top_k_is_a_deprecated_name_for_tokens_per_boundary(byte_level_tokenizer):
    model = tiny_causal_lm(byte_level_tokenizer)
    with pytest.warns(FutureWarning, match="tokens_per_boundary"):
        reduced = ReducedVocabLM.from_model(model, byte_level_tokenizer, "bytes", top_k=2)
    assert reduced.settings.tokens_per_boundary == 2
