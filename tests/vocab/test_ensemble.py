"""Properties of `CommonVocabEnsemble` and `CommonVocabLogitsProcessor` on tiny models (float64, exact)."""

import copy
import json
import math
import re

import pytest
import torch
from transformers import TextStreamer

from hf_coop.errors import ArtifactError, InputError
from hf_coop.testing import (
    rescore_alone,
    tiny_byte_level_tokenizer,
    tiny_causal_lm,
    tiny_sentencepiece_tokenizer,
)
from hf_coop.vocab.ensemble import CommonVocabEnsemble, combine, load_ensemble, to_ensemble_vocab
from hf_coop.vocab.mcv import maximal_common_vocabulary, resolve_split
from hf_coop.vocab.processor import CommonVocabLogitsProcessor
from hf_coop.vocab.reduced_lm import MaxNewBytesCriteria, ReducedVocabLM, eos_sub_ids
from hf_coop.vocab.scoring import ensemble_logprob
from hf_coop.vocab.tokenizers import PromptError

PROMPTS = ["It is a truth", "The quick", "def add(a, b):\n"]


@pytest.fixture(scope="module")
def pair(byte_level_tokenizer, sentencepiece_tokenizer):
    """Two members with different tokenizers and architectures, float64."""
    return (
        [
            tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64, extra_head_rows=3),
            tiny_causal_lm(sentencepiece_tokenizer, arch="gpt2", seed=1, dtype=torch.float64),
        ],
        [byte_level_tokenizer, sentencepiece_tokenizer],
    )


def greedy_text(ensemble, prompt, n=8):
    enc = ensemble.tokenizer(prompt, return_tensors="pt")
    out = ensemble.generate(**enc, max_new_tokens=n, do_sample=False)
    return out[0, enc["input_ids"].shape[1] :].tolist()


def member_reference(ensemble, model, tokenizer):
    """The member alone, reduced to the ensemble's MCV with the same split, built independently."""
    mcv, _ = maximal_common_vocabulary(*(m.tokenizer.original for m in ensemble.members))
    split = resolve_split(ensemble.config.split, mcv, [m.tokenizer.original for m in ensemble.members])
    return ReducedVocabLM.from_model(
        model, tokenizer, mcv, split=split, max_hypotheses=ensemble.settings.max_hypotheses, dtype="float64"
    )


def reference_conditionals(ensemble, reduced, prompt, path):
    """The member's reduced conditionals over (MCV text ids, EOS), other control tokens conditioned away."""
    eos = eos_sub_ids(reduced.original, reduced.tokenizer.original, reduced.nested)
    logprobs = rescore_alone(reduced, reduced.tokenizer(prompt, return_tensors="pt"), path)
    return to_ensemble_vocab(logprobs.double(), ensemble.num_text, eos)


def ensemble_conditionals(ensemble, prompt, path):
    return rescore_alone(ensemble, ensemble.tokenizer(prompt, return_tensors="pt"), path).double()


def build(models, tokenizers, **kwargs):
    return CommonVocabEnsemble.from_models(models, tokenizers, dtype="float64", **kwargs)


@pytest.mark.parametrize("weights", [None, (1.0, 0.0)])
def test_single_member_equals_its_reduced_model(pair, weights):
    models, tokenizers = pair
    if weights is None:
        ensemble = build(models[:1], tokenizers[:1])
    else:
        ensemble = build(models, tokenizers, weights=weights)
    reduced = member_reference(ensemble, models[0], tokenizers[0])
    for prompt in PROMPTS[:2]:
        path = greedy_text(ensemble, prompt)
        torch.testing.assert_close(
            ensemble_conditionals(ensemble, prompt, path),
            reference_conditionals(ensemble, reduced, prompt, path),
            rtol=0,
            atol=1e-12,
        )
        # Greedy text: the reduced model with its non-EOS control tokens suppressed gives the same tokens.
        control = [
            i
            for i in range(ensemble.num_text, reduced.nested.num_sub_tokens)
            if i not in ensemble.member_eos[0]
        ]
        enc = reduced.tokenizer(prompt, return_tensors="pt")
        alone = reduced.generate(**enc, max_new_tokens=len(path), do_sample=False, suppress_tokens=control)
        assert alone[0, enc["input_ids"].shape[1] :].tolist() == path


@pytest.mark.parametrize("mode", ["mean", "product"])
def test_identical_members_equal_the_single_model(pair, mode):
    models, tokenizers = pair
    single = build(models[1:], tokenizers[1:], mode=mode)
    twins = build([models[1]] * 2, [tokenizers[1]] * 2, weights=(0.3, 0.7), mode=mode)
    path = greedy_text(single, PROMPTS[0])
    assert greedy_text(twins, PROMPTS[0]) == path
    torch.testing.assert_close(
        ensemble_conditionals(twins, PROMPTS[0], path),
        ensemble_conditionals(single, PROMPTS[0], path),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("mode", ["mean", "product"])
def test_conditionals_combine_the_members_reduced_conditionals(pair, mode):
    models, tokenizers = pair
    weights = (0.25, 0.75)
    ensemble = build(models, tokenizers, weights=weights, mode=mode)
    prompt = PROMPTS[2]
    path = greedy_text(ensemble, prompt, n=6)
    got = ensemble_conditionals(ensemble, prompt, path)
    a, b = (
        reference_conditionals(ensemble, member_reference(ensemble, models[i], tokenizers[i]), prompt, path)
        for i in range(2)
    )
    if mode == "mean":
        expected = torch.log(weights[0] * a.exp() + weights[1] * b.exp())
    else:
        product = weights[0] * a + weights[1] * b
        expected = product - torch.logsumexp(product, -1, keepdim=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.allclose(got.exp().sum(-1), torch.ones(len(path) + 1, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("mode", ["mean", "product"])
def test_combine_keeps_only_tokens_every_member_can_follow(mode):
    """A token one member gives probability zero (a byte outside its alphabet) would leave it without a
    distribution: both modes renormalise over the common support, and no common support is refused."""
    half = math.log(0.5)
    logprobs = torch.tensor([[[half, half, -math.inf]], [[-math.inf, half, half]]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        combine(logprobs, weights, mode), torch.tensor([[-math.inf, 0.0, -math.inf]], dtype=torch.float64)
    )
    disjoint = torch.tensor([[[0.0, -math.inf]], [[-math.inf, 0.0]]], dtype=torch.float64)
    with pytest.raises(InputError, match=r"rows \[0\].*no next token a positive probability in common"):
        combine(disjoint, weights, mode)


def test_generate_features_work(pair):
    """Sampling with temperature/top-p, a streamer, a byte budget and scoring pass through."""
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4)
    enc = ensemble.tokenizer(PROMPTS[:2], return_tensors="pt")
    torch.manual_seed(0)
    sampled = ensemble.generate(**enc, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9)
    assert sampled.shape[0] == 2

    class Capture(TextStreamer):
        text = ""

        def on_finalized_text(self, text, stream_end=False):
            Capture.text += text

    single = ensemble.tokenizer(PROMPTS[0], return_tensors="pt")
    width = single["input_ids"].shape[1]
    budget = MaxNewBytesCriteria(ensemble.members[0].nested, width, 6)
    out = ensemble.generate(
        **single,
        max_new_tokens=50,
        do_sample=False,
        streamer=Capture(ensemble.tokenizer, skip_prompt=True),
        stopping_criteria=[budget],
    )
    assert Capture.text == ensemble.tokenizer.decode(out[0, width:])
    assert (
        len(ensemble.members[0].nested.decode(out[0, width:].tolist()))
        >= 6
        > len(ensemble.members[0].nested.decode(out[0, width:-1].tolist()))
    )
    score = ensemble_logprob(ensemble, "It is a truth")
    assert score.nats < 0 and score.n_bytes == 13


def test_mixtures_in_one_pass_equal_separate_scores(pair):
    models, tokenizers = pair
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4)
    mixtures = [((1, 0), "mean"), ((0, 1), "mean"), ((1, 2), "mean"), ((1, 2), "product")]
    together = ensemble_logprob(ensemble, "It is a truth", 4, mixtures=mixtures)
    for (weights, mode), score in zip(mixtures, together, strict=True):
        ensemble.set_weights(weights)
        ensemble.config.mode = mode
        assert score.nats == pytest.approx(ensemble_logprob(ensemble, "It is a truth", 4).nats, abs=1e-9)
    with pytest.raises(ValueError, match="weights"):
        ensemble_logprob(ensemble, "It is", mixtures=[((0, 0), "mean")])
    byte_level = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, sub_vocab="bytes")
    assert len(byte_level.tokenizer) == 257 and len(greedy_text(byte_level, PROMPTS[0], n=3)) == 3


def test_save_load_round_trip_and_push_to_hub(tmp_path, pair, mock_hub):
    models, tokenizers = pair
    folders = []
    for i, (model, tok) in enumerate(zip(models, tokenizers)):
        model.save_pretrained(tmp_path / f"m{i}")
        tok.save_pretrained(tmp_path / f"m{i}")
        folders.append(str(tmp_path / f"m{i}"))
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, (2, 1), "product", 4, names=folders)
    ensemble.save_pretrained(tmp_path / "ens")
    card = (tmp_path / "ens" / "README.md").read_text()
    assert "Common-vocabulary ensemble" in card and folders[0] in card
    assert not list((tmp_path / "ens").glob("*.safetensors"))  # a config, never the members' weights
    reloaded = CommonVocabEnsemble.from_pretrained(tmp_path / "ens")
    assert reloaded.weights == pytest.approx([2 / 3, 1 / 3]) and reloaded.config.mode == "product"
    assert greedy_text(reloaded, PROMPTS[0]) == greedy_text(ensemble, PROMPTS[0])
    saved = reloaded.config.tokenizer_fingerprints
    other = tiny_byte_level_tokenizer(330)
    with pytest.raises(ArtifactError, match=f"member 0's tokenizer has fingerprint .* saved with {saved[0]}"):
        CommonVocabEnsemble.from_pretrained(
            tmp_path / "ens", members=[(models[0], other), (models[1], tokenizers[1])]
        )
    with pytest.raises(ArtifactError, match="another order"):
        CommonVocabEnsemble.from_pretrained(
            tmp_path / "ens", members=[(models[1], tokenizers[1]), (models[0], tokenizers[0])]
        )

    reloaded.push_to_hub("me/tiny-ensemble")
    assert mock_hub["repo_id"] == "me/tiny-ensemble" and {"config.json", "README.md"} <= set(mock_hub)
    assert mock_hub["README.md"].decode() == card  # the rendered card, not a generic one


def test_bad_inputs_raise_clear_errors(pair):
    models, tokenizers = pair
    for weights in [(-1.0, 2.0), (0.0, 0.0), (1.0,)]:
        with pytest.raises(ValueError, match="weights"):
            CommonVocabEnsemble.from_models(models, tokenizers, weights=weights)
    with pytest.raises(ValueError, match="mode"):
        CommonVocabEnsemble.from_models(models, tokenizers, mode="max")
    with pytest.raises(ValueError, match="meta device"):
        CommonVocabEnsemble.from_models([models[0], copy.deepcopy(models[1]).to("meta")], tokenizers)
    no_chat = copy.deepcopy(tokenizers[1])
    no_chat.chat_template = None
    ensemble = CommonVocabEnsemble.from_models(models, [tokenizers[0], no_chat])
    with pytest.raises(PromptError, match="member 1 .*no chat template"):
        ensemble.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    # ensemble ids given without each member's tokens: every member tokenizes their text itself
    enc = ensemble.tokenizer(["It is", "The quick"], return_tensors="pt")
    bare = ensemble(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(bare, ensemble(**enc).logits, rtol=0, atol=0)
    with pytest.raises(PromptError, match="no text"):
        ensemble.tokenizer("")


def test_cli_streams_scores_and_refuses_chat_without_template(tmp_path, pair, capsys):
    from hf_coop.commands import main

    models, tokenizers = pair
    folders = []
    for i, (model, tok) in enumerate(zip(models, tokenizers)):
        tok = copy.deepcopy(tok)
        tok.chat_template = None if i == 1 else tok.chat_template
        model.save_pretrained(tmp_path / f"m{i}")
        tok.save_pretrained(tmp_path / f"m{i}")
        folders += ["--model", str(tmp_path / f"m{i}")]
    assert main(["ensemble", "It is", "--max-new-tokens", "4", *folders, "--weights", "1", "3"]) == 0
    # the command is a thin shell: it prints what the library's ensemble, loaded the same way, generates
    library = load_ensemble(folders[1::2], weights=(1, 3))
    enc = library.tokenizer("It is", return_tensors="pt")
    out = library.generate(**enc, max_new_tokens=4, do_sample=False)
    expected = library.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert capsys.readouterr().out.rstrip("\n") == "It is" + expected
    members = [a if a != "--model" else "--ensemble" for a in folders]
    assert main(["score", *members, "--max-hypotheses", "4", "--json", "It is a truth"]) == 0
    scored = json.loads(capsys.readouterr().out)
    reference = ensemble_logprob(load_ensemble(folders[1::2], max_hypotheses=4), "It is a truth", 4)
    assert scored["nats"] == pytest.approx(reference.nats, abs=1e-6) and scored["n_bytes"] == 13
    assert main(["ensemble", *folders, "--chat", "hi"]) == 2
    err = capsys.readouterr().err
    assert "member 1" in err and "no chat template" in err
    assert main(["ensemble", "hi", *folders, "--weights", "0", "0"]) == 2
    assert "sum to a positive number" in capsys.readouterr().err
    assert main(["demo", *folders, "--max-new-tokens", "3", "--score-bytes", "40"]) == 0
    assert "maximal common vocabulary" in capsys.readouterr().out


@pytest.mark.slow
def test_real_pair_processor_equals_model_form_and_weights_select_a_member():
    from hf_coop.models import load_model

    loaded = [load_model("smollm2-135m-instruct"), load_model("gemma-3-270m")]
    models, tokenizers = [m for m, _ in loaded], [t for _, t in loaded]
    ensemble = CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, prune_ratio=1e-4)
    assert ensemble.config.mcv_size > 40_000
    prompt = "The capital of France is"
    path = greedy_text(ensemble, prompt, n=6)
    processor = CommonVocabLogitsProcessor(ensemble, driver=1)  # Gemma drives, SentencePiece ids
    inputs = processor.encode(prompt)
    out = models[1].generate(**inputs, logits_processor=[processor], max_new_tokens=6, do_sample=False)
    assert processor.decode(out[0, inputs["input_ids"].shape[1] :]) == ensemble.tokenizer.decode(path)
    # the prompt-boundary probe: both members read "Fr" as bytes, so the word is completed
    assert ensemble.tokenizer.decode(greedy_text(ensemble, "The capital of Fr", n=4)).startswith("ance")
    ensemble.set_weights((1, 0))
    smol = greedy_text(ensemble, prompt, n=6)
    plain = models[0].generate(
        **tokenizers[0](prompt, return_tensors="pt"), max_new_tokens=4, do_sample=False
    )
    expected = tokenizers[0].decode(plain[0, len(tokenizers[0](prompt)["input_ids"]) :])
    assert ensemble.tokenizer.decode(smol).startswith(expected[:8])


def test_members_sharing_a_tokenizer_reloaded_in_another_order_are_refused(tmp_path, byte_level_tokenizer):
    """Two models with one tokenizer: only the models' own fingerprints tell the order (the weights and
    names follow it), so a swapped reload is refused, not silently mixed up."""
    first, second = (tiny_causal_lm(byte_level_tokenizer, seed=s, dtype=torch.float64) for s in (0, 1))
    ensemble = build([first, second], [byte_level_tokenizer] * 2, weights=(3, 1), names=["first", "second"])
    ensemble.save_pretrained(tmp_path / "ens")
    with pytest.raises(ArtifactError, match=r"another order than saved \(model fingerprints"):
        CommonVocabEnsemble.from_pretrained(
            tmp_path / "ens", members=[(second, byte_level_tokenizer), (first, byte_level_tokenizer)]
        )
    same = CommonVocabEnsemble.from_pretrained(
        tmp_path / "ens", members=[(first, byte_level_tokenizer), (second, byte_level_tokenizer)]
    )
    assert greedy_text(same, PROMPTS[0]) == greedy_text(ensemble, PROMPTS[0])


def test_folders_that_hold_no_ensemble_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="no such folder: .*typo"):
        CommonVocabEnsemble.from_pretrained(str(tmp_path / "typo"))
    with pytest.raises(ArtifactError, match="has no config.json"):
        CommonVocabEnsemble.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def without_byte_fallback(byte_level_tokenizer):
    """A byte-level member and one whose tokenizer has no byte fallback (characters outside its alphabet
    become <unk>)."""
    sentencepiece = tiny_sentencepiece_tokenizer(byte_fallback=False)
    models = [
        tiny_causal_lm(sentencepiece, seed=1, dtype=torch.float64),
        tiny_causal_lm(byte_level_tokenizer, dtype=torch.float64),
    ]
    return models, [sentencepiece, byte_level_tokenizer]


def test_characters_a_member_cannot_spell_are_refused_not_scored_as_eos(without_byte_fallback, caplog):
    models, tokenizers = without_byte_fallback
    _, report = maximal_common_vocabulary(*tokenizers)
    assert len(report.unspellable_bytes[0]) > 100 and report.unspellable_bytes[1] == []
    ensemble = build(models, tokenizers, max_hypotheses=4)
    assert "member 0's tokenizer has no token holding" in caplog.text
    for order, member in (
        (ensemble, "member 0"),
        (build(models[::-1], tokenizers[::-1], max_hypotheses=4), "member 1"),
    ):
        for char in ["漢", "字", "😀"]:
            with pytest.raises(
                InputError, match=f"{member}.* cannot spell the characters {re.escape(str([char]))}"
            ):
                ensemble_logprob(order, f"a {char} b")
    assert ensemble_logprob(ensemble, "a b").nats < 0


@pytest.mark.parametrize("mode", ["mean", "product"])
def test_an_ensemble_never_generates_a_byte_one_member_cannot_spell(without_byte_fallback, mode):
    models, tokenizers = without_byte_fallback
    ensemble = build(models, tokenizers, mode=mode, max_hypotheses=4)
    allowed = set(ensemble.members[0].nested.table.spellable_bytes)
    enc = ensemble.tokenizer(["The quick", "It is"], return_tensors="pt")
    torch.manual_seed(0)
    out = ensemble.generate(**enc, max_new_tokens=12, do_sample=True, temperature=2.0, num_return_sequences=3)
    for row in out[:, enc["input_ids"].shape[1] :]:
        assert set(ensemble.tokenizer.decode_bytes(row)) <= allowed
