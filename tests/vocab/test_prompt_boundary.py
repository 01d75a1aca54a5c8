"""Prompts conditioned on their bytes: exact oracles that enumerate every tokenization of a prompt."""

import pytest
import torch

from hf_coop.testing import tiny_causal_lm
from hf_coop.vocab.ensemble import CommonVocabEnsemble, to_ensemble_vocab
from hf_coop.vocab.processor import CommonVocabLogitsProcessor
from hf_coop.vocab.prompt_boundary import PromptError, PromptSplitter
from hf_coop.vocab.reduced_lm import ReducedVocabConfig, ReducedVocabLM, eos_sub_ids
from hf_coop.vocab.token_bytes import spelled_bytes
from tests.oracles import oracle_next_logprobs

PROMPTS = ["It is a tru", "The qu", "é", "Mr. Bennet was so", "a b "]


@pytest.fixture(scope="module", params=["byte_level_tokenizer", "sentencepiece_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model64(request, tokenizer):
    return tiny_causal_lm(tokenizer, arch=request.param, dtype=torch.float64, extra_head_rows=3)


def reduce(model, tokenizer, sub_vocab="bytes", prompt_boundary="exact", **settings):
    return ReducedVocabLM.from_model(
        model, tokenizer, sub_vocab, dtype="float64", prompt_boundary=prompt_boundary, **settings
    )


def engine_next_logprobs(reduced, prompts) -> torch.Tensor:
    enc = reduced.tokenizer(prompts, return_tensors="pt")
    return reduced(**enc).logits[:, 0].double()


def assert_close(got, want):
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    assert torch.allclose(got[finite], want[finite], atol=1e-9)


def bounded(reduced, prompt):
    return reduced.tokenizer.bounded(reduced.tokenizer.prompt(prompt))


@pytest.mark.parametrize("sub_vocab", ["bytes", "max-bytes:2"])
def test_exact_equals_enumeration_of_every_tokenization(model64, tokenizer, sub_vocab):
    reduced = reduce(model64, tokenizer, sub_vocab)
    for prompt in ["The q", "é", "a b "]:
        prefix, tail = bounded(reduced, prompt)
        assert len(prefix) == 1 and tail  # the BOS token, then every byte of the text
        want = oracle_next_logprobs(model64, tokenizer, reduced.nested, prefix, tail)
        assert_close(engine_next_logprobs(reduced, [prompt])[0], want)


def test_tail_equals_enumeration_after_the_canonical_cut(model64, tokenizer):
    reduced = reduce(model64, tokenizer, "max-bytes:2", prompt_boundary="tail")
    exact_model = reduce(model64, tokenizer, "max-bytes:2")
    for prompt in PROMPTS:
        prefix, tail = bounded(reduced, prompt)
        want = oracle_next_logprobs(model64, tokenizer, reduced.nested, prefix, tail)
        got = engine_next_logprobs(reduced, [prompt])[0]
        assert_close(got, want)
    # a word that starts a vocabulary token: nothing before the cut, so "tail" is "exact"
    words = [
        w for w in ["th", " t", " qu", "Th", "is", "a"] if bounded(reduced, w)[0] == [tokenizer.bos_token_id]
    ]
    assert len(words) >= 2
    for word in words:
        assert bounded(reduced, word) == bounded(exact_model, word)
        assert_close(engine_next_logprobs(reduced, [word])[0], engine_next_logprobs(exact_model, [word])[0])


def test_batched_prompts_equal_alone_with_their_own_cuts(model64, tokenizer):
    reduced = reduce(model64, tokenizer, "max-bytes:2", prompt_boundary="tail")
    prompts = [*PROMPTS, "It is a tru", "It is", "é".encode()[:1], b"caf\xc3"]
    batch = engine_next_logprobs(reduced, prompts)
    for row, prompt in enumerate(prompts):
        assert_close(batch[row], engine_next_logprobs(reduced, [prompt])[0])


def test_a_prompt_ending_inside_a_utf8_character(model64, tokenizer):
    reduced = reduce(model64, tokenizer, "bytes")
    prompt = "café".encode()[:-1]
    prefix, tail = bounded(reduced, prompt)
    assert tail.endswith(b"\xc3")
    logprobs = engine_next_logprobs(reduced, [prompt])[0]
    assert_close(logprobs, oracle_next_logprobs(model64, tokenizer, reduced.nested, prefix, tail))
    canonical = reduce(model64, tokenizer, "bytes", prompt_boundary="canonical")
    with pytest.raises(PromptError, match="inside a UTF-8 character"):
        canonical.tokenizer(prompt)


def test_canonical_keeps_the_tokens_and_tail_cuts_at_a_token_start(model64, tokenizer):
    canonical = reduce(model64, tokenizer, "bytes", prompt_boundary="canonical")
    enc = canonical.tokenizer("It is a tru")
    assert "tail_bytes" not in enc
    assert enc["original_input_ids"] == tokenizer("It is a tru")["input_ids"]
    table = canonical.nested.table
    splitter = PromptSplitter(table, tokenizer.bos_token_id, "tail")
    tokens = [t for t in table.byte_strings if t]

    def covers_the_end(text: bytes, start: int) -> bool:  # a token could start at `start` and reach the end
        return any(t.startswith(text[start:]) for t in tokens)

    for prompt in ["Mr. Bennet was so", "It is a tru", "def add(a, b):\n", "x = 12345"]:
        ids = tokenizer(prompt)["input_ids"]
        prefix, tail = splitter.split(ids)
        text, cut = table.decode(ids), len(table.decode(prefix))
        assert table.decode(prefix) + tail == text and prefix == ids[: len(prefix)]
        # no token that could cover the prompt's end starts before the cut ...
        assert not any(covers_the_end(text, p) for p in range(cut))
        # ... and the cut is the latest canonical token start with that property
        if len(prefix) < len(ids):
            next_start = cut + len(table[ids[len(prefix)]])
            assert any(covers_the_end(text, p) for p in range(cut, next_start))


def test_a_prompt_of_special_tokens_only_is_conditioned_on_them(model64, tokenizer):
    reduced = reduce(model64, tokenizer, "bytes")
    bos = tokenizer.bos_token_id
    assert reduced.tokenizer.bounded(([bos], b"", 0)) == ([bos], b"")
    enc = reduced.tokenizer.from_bounded([([bos], b"")], return_tensors="pt")
    reference = reduce(model64, tokenizer, "bytes", prompt_boundary="canonical")
    ref = reference.tokenizer.from_original_ids([[bos]], return_tensors="pt")
    assert_close(reduced(**enc).logits[0, 0].double(), reference(**ref).logits[0, 0].double())


def test_the_mode_is_saved_and_unknown_modes_are_refused(model64, tokenizer, tmp_path):
    reduced = reduce(model64, tokenizer, "bytes", prompt_boundary="exact")
    reduced.config.save_pretrained(tmp_path)
    assert ReducedVocabConfig.from_pretrained(tmp_path).prompt_boundary == "exact"
    with pytest.raises(ValueError, match="'tail', 'exact', 'canonical'"):
        reduce(model64, tokenizer, "bytes", prompt_boundary="healing")


def test_a_partial_assistant_turn_is_conditioned_on_as_bytes(tokenizer):
    model = tiny_causal_lm(tokenizer, dtype=torch.float64)
    reduced = reduce(model, tokenizer, "max-bytes:2")
    chat = [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "The capital of Fr"}]
    enc = reduced.tokenizer.apply_chat_template(
        chat, add_generation_prompt=False, continue_final_message=True
    )
    # exactly the message's bytes (no SentencePiece dummy prefix space), after the template's own tokens
    assert bytes(b for b in enc["tail_bytes"] if b >= 0) == b"The capital of Fr"
    template = tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    head = tokenizer(template[: -len("The capital of Fr")], add_special_tokens=False)["input_ids"]
    assert enc["original_input_ids"] == head
    # without a partial turn the generation prompt stays canonical, with no tail
    enc = reduced.tokenizer.apply_chat_template(chat[:1])
    assert all(b < 0 for b in enc["tail_bytes"])
    assert enc["original_input_ids"] == list(
        tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    # "canonical" keeps the template's own tokens, partial turn included
    canonical = reduce(model, tokenizer, "max-bytes:2", prompt_boundary="canonical")
    enc = canonical.tokenizer.apply_chat_template(
        chat, add_generation_prompt=False, continue_final_message=True
    )
    assert enc["original_input_ids"] == list(
        tokenizer.apply_chat_template(chat, tokenize=True, continue_final_message=True)["input_ids"]
    )


def test_identity_reduction_is_exact_token_healing(model64, tokenizer):
    """`sub_vocab="original"`: canonical prompts give the plain model's greedy text; "tail" prompts give the
    oracle's distribution over the model's own tokens."""
    healing = reduce(model64, tokenizer, "original", prompt_boundary="tail", tokens_per_boundary=1)
    plain = reduce(model64, tokenizer, "original", prompt_boundary="canonical", tokens_per_boundary=1)
    prompt = "It is a tru"
    enc = plain.tokenizer(prompt, return_tensors="pt")
    out = plain.generate(**enc, max_new_tokens=6, do_sample=False)
    ids = tokenizer(prompt, return_tensors="pt")
    want = model64.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert plain.tokenizer.decode(out[0]) == tokenizer.decode(want[0], skip_special_tokens=False).replace(
        tokenizer.decode(ids["input_ids"][0]), prompt, 1
    ) or plain.nested.table.decode(want[0].tolist()) == plain.nested.decode(out[0].tolist())
    prefix, tail = bounded(healing, prompt)
    exact_healing = reduce(model64, tokenizer, "original", prompt_boundary="tail")
    assert_close(
        engine_next_logprobs(exact_healing, [prompt])[0],
        oracle_next_logprobs(model64, tokenizer, healing.nested, prefix, tail),
    )


def test_context_scores_are_ratios_of_byte_marginals(model64, tokenizer):
    from hf_coop.vocab.scoring import prefix_logprob

    context, text = "a tr", "uth"
    spelled = spelled_bytes(tokenizer, context).decode()  # a SentencePiece dummy prefix space included
    joint = prefix_logprob(model64, tokenizer, spelled + text).nats
    alone = prefix_logprob(model64, tokenizer, spelled).nats
    given = prefix_logprob(model64, tokenizer, [text, text], context=context, prompt_boundary="exact")
    assert given[0].nats == pytest.approx(joint - alone, abs=1e-9)
    assert given[1].nats == pytest.approx(given[0].nats, abs=1e-12)
    # pruned (context and text alike), the exact conditional stays bracketed
    pruned = prefix_logprob(
        model64, tokenizer, text, context=context, prompt_boundary="exact", max_hypotheses=2
    )
    assert pruned.truncated_mass > 0
    assert pruned.nats <= joint - alone + 1e-12 <= pruned.upper_nats + 2e-12


@pytest.fixture(scope="module")
def pair(byte_level_tokenizer, sentencepiece_tokenizer):
    return (
        [
            tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64),
            tiny_causal_lm(sentencepiece_tokenizer, arch="gpt2", seed=1, dtype=torch.float64),
        ],
        [byte_level_tokenizer, sentencepiece_tokenizer],
    )


def test_ensemble_members_condition_on_the_same_prompt_bytes(pair):
    """Each member conditions on the prompt's bytes at its own cut; a one-member mixture equals that
    member reduced to the MCV alone, and batched rows (bytes prompts included) equal alone."""
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, dtype="float64", prompt_boundary="exact")
    prompts = ["The qu", "é", b"caf\xc3", "a b "]
    enc = ensemble.tokenizer(prompts, return_tensors="pt")
    for row, prompt in enumerate(prompts):
        tails = [bytes(b for b in enc["member_tail_bytes"][row, m].tolist() if b >= 0) for m in range(2)]
        assert tails[0].endswith(prompt if isinstance(prompt, bytes) else prompt.encode())
        assert tails[1].endswith(prompt if isinstance(prompt, bytes) else prompt.encode())
    batch = ensemble(**enc).logits[:, 0].double()
    for row, prompt in enumerate(prompts):
        alone = ensemble(**ensemble.tokenizer([prompt], return_tensors="pt")).logits[0, 0].double()
        assert_close(batch[row], alone)
    ensemble.set_weights([1.0, 0.0])
    member = ensemble.members[0]
    eos = eos_sub_ids(member.original, member.tokenizer.original, member.nested)
    for prompt in prompts[:2]:
        alone = member(**member.tokenizer([prompt], return_tensors="pt")).logits[:, 0].double()
        want = to_ensemble_vocab(alone, ensemble.num_text, eos)[0]
        assert_close(
            ensemble(**ensemble.tokenizer([prompt], return_tensors="pt")).logits[0, 0].double(), want
        )


def test_processor_follows_the_prompt_bytes(pair):
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, dtype="float64")
    prompts = ["It is a tru", "The qu", "é"]
    enc = ensemble.tokenizer(prompts, return_tensors="pt")
    expected = ensemble.generate(**enc, max_new_tokens=6, do_sample=False)
    processor = CommonVocabLogitsProcessor(ensemble, driver=0)
    inputs = processor.encode(prompts)
    out = models[0].generate(
        **inputs,
        logits_processor=[processor],
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=processor.pad_token_id,
    )
    width = enc["input_ids"].shape[1]
    for row in range(len(prompts)):
        want = ensemble.tokenizer.decode(expected[row, width:], skip_special_tokens=True)
        assert processor.decode(out[row, inputs["input_ids"].shape[1] :])[: len(want)] == want
