"""Every artefact type under the one contract (tests/contracts.py), plus the contract's own mechanics."""

import pytest
import torch

from hf_coop.artefacts import MANIFEST_FILE, atomic_save, local_folder, verify_folder
from hf_coop.errors import ArtifactError
from hf_coop.prt import PRTConfig, PRTModel, PRTRewardModel
from hf_coop.slt import FrozenSLTConfig, FrozenSLTModel, apply_frozen_slt
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm, tiny_sentencepiece_tokenizer
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from tests.contracts import ArtefactContract, saved_model_folder

PROMPT = "It is a truth"


def _logits(model, tokenizer, **kwargs):
    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt"), **kwargs).logits


class TestReducedVocabLM(ArtefactContract):
    artefact = "ReducedVocabLM"
    auto_loadable = True

    def build(self, tmp_path, variant=0):
        base, tokenizer = saved_model_folder(
            tiny_causal_lm(tiny_byte_level_tokenizer()), tiny_byte_level_tokenizer(), tmp_path / "base"
        )
        return ReducedVocabLM.from_model(
            base, tokenizer, "max-bytes:2", tokens_per_boundary=None if variant == 0 else 3
        )

    def load(self, folder):
        return ReducedVocabLM.from_pretrained(folder)

    def outputs(self, artefact):
        return _logits(artefact, artefact.tokenizer)

    def test_the_base_weights_are_never_copied_and_another_base_is_refused(self, tmp_path):
        reduced = self.build(tmp_path)
        reduced.save_pretrained(tmp_path / "saved")
        assert not list((tmp_path / "saved").glob("*.safetensors"))
        other = tiny_causal_lm(tiny_byte_level_tokenizer(), seed=3)
        with pytest.raises(
            ArtifactError, match="the base model has fingerprint .* pass the base model it was"
        ):
            ReducedVocabLM.from_pretrained(
                tmp_path / "saved", model=other, tokenizer=reduced.tokenizer.original
            )
        same = ReducedVocabLM.from_pretrained(tmp_path / "saved", model=reduced.original)
        assert same.original is reduced.original


class TestCommonVocabEnsemble(ArtefactContract):
    artefact = "CommonVocabEnsemble"
    auto_loadable = True

    def build(self, tmp_path, variant=0):
        members = [
            saved_model_folder(tiny_causal_lm(tok, seed=i), tok, tmp_path / f"member{i}")
            for i, tok in enumerate([tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()])
        ]
        return CommonVocabEnsemble.from_models(
            [m for m, _ in members], [t for _, t in members], weights=(1, 1 + variant), max_hypotheses=4
        )

    def load(self, folder):
        return CommonVocabEnsemble.from_pretrained(folder)

    def outputs(self, artefact):
        return _logits(artefact, artefact.tokenizer)


class TestPRTRewardModel(ArtefactContract):
    artefact = "PRTRewardModel"

    def build(self, tmp_path, variant=0):
        tokenizer = tiny_byte_level_tokenizer()
        return PRTRewardModel(tiny_causal_lm(tokenizer, seed=variant), PRTConfig(vocab_size=len(tokenizer)))

    def load(self, folder):
        return PRTRewardModel.from_pretrained(folder)

    def outputs(self, artefact):
        return _logits(artefact, tiny_byte_level_tokenizer())


class TestPRTModel(ArtefactContract):
    artefact = "PRTModel"

    def build(self, tmp_path, variant=0):
        new_base, tokenizer = saved_model_folder(
            tiny_causal_lm(tiny_byte_level_tokenizer(), arch="gpt2", seed=1),
            tiny_byte_level_tokenizer(),
            tmp_path / "new",
        )
        reward = PRTRewardModel(
            tiny_causal_lm(tokenizer, seed=2),
            PRTConfig(reward_scale=0.5 + variant, vocab_size=len(tokenizer)),
        )
        return PRTModel(new_base, reward, tokenizer=tokenizer)

    def load(self, folder):
        return PRTModel.from_pretrained(folder)

    def outputs(self, artefact):
        return _logits(artefact, tiny_byte_level_tokenizer())


class TestCrossTokenizerPRTModel(ArtefactContract):
    """A PRT model whose reward speaks another tokenizer (run over the common vocabulary)."""

    artefact = "PRTModel"

    def build(self, tmp_path, variant=0):
        from hf_coop.testing import random_lora_reward

        old, old_tokenizer = saved_model_folder(
            tiny_causal_lm(tiny_byte_level_tokenizer()), tiny_byte_level_tokenizer(), tmp_path / "old"
        )
        new, new_tokenizer = saved_model_folder(
            tiny_causal_lm(tiny_sentencepiece_tokenizer(), arch="gemma3", seed=1),
            tiny_sentencepiece_tokenizer(),
            tmp_path / "new",
        )
        reward = random_lora_reward(old, old_tokenizer, reward_scale=0.5 + variant)
        return PRTModel(new, reward, tokenizer=new_tokenizer, max_hypotheses=4)

    def load(self, folder):
        return PRTModel.from_pretrained(folder)

    def outputs(self, artefact):
        return _logits(artefact, artefact.tokenizer)


class TestFrozenSLTModel(ArtefactContract):
    artefact = "FrozenSLTModel"

    def build(self, tmp_path, variant=0):
        model = tiny_causal_lm(tiny_byte_level_tokenizer(), arch="gpt2")
        return apply_frozen_slt(
            model, FrozenSLTConfig(sparsity=0.5 + 0.1 * variant, target_modules=r".*\.(c_attn|c_fc)")
        )

    def load(self, folder):
        return FrozenSLTModel.from_pretrained(folder)  # the ticket rebuilds the architecture it records

    def test_a_ticket_loads_on_a_given_model_too_and_a_torch_module_needs_one(self, tmp_path):
        ticket = self.build(tmp_path)
        ticket.save_pretrained(tmp_path / "saved")
        given = tiny_causal_lm(tiny_byte_level_tokenizer(), arch="gpt2", seed=9)
        loaded = FrozenSLTModel.from_pretrained(given, tmp_path / "saved")
        assert loaded.base_model is given
        torch.testing.assert_close(self.outputs(loaded), self.outputs(ticket), rtol=0, atol=0)
        module = apply_frozen_slt(torch.nn.Sequential(torch.nn.Linear(4, 4)), FrozenSLTConfig())
        module.save_pretrained(tmp_path / "module")
        with pytest.raises(ArtifactError, match="saved from a plain torch module .* pass it"):
            FrozenSLTModel.from_pretrained(tmp_path / "module")

    def outputs(self, artefact):
        return _logits(artefact, tiny_byte_level_tokenizer())


def test_atomic_save_swaps_whole_folders_and_verify_names_the_file(tmp_path):
    with atomic_save(tmp_path / "a", "Thing") as staging:
        (staging / "x.bin").write_bytes(b"one")
        (staging / "sub").mkdir()
        (staging / "sub" / "y.json").write_text("{}")
    assert verify_folder(tmp_path / "a", "Thing")["files"].keys() == {"x.bin", "sub/y.json"}
    with pytest.raises(ArtifactError, match="holds a Thing, not a Other"):
        verify_folder(tmp_path / "a", "Other")
    (tmp_path / "a" / "sub" / "y.json").unlink()
    with pytest.raises(ArtifactError, match="y.json is missing"):
        verify_folder(tmp_path / "a")
    with pytest.raises(ArtifactError, match="is a file"), atomic_save(tmp_path / "a" / "x.bin", "Thing"):
        pass
    (tmp_path / "a" / MANIFEST_FILE).write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        verify_folder(tmp_path / "a")


def test_the_resolver_says_no_such_folder_for_local_paths(tmp_path):
    assert local_folder(tmp_path) == str(tmp_path)
    for typo in (str(tmp_path / "nope"), "./nope", "../nope", "~/nope"):
        with pytest.raises(ArtifactError, match="no such folder"):
            local_folder(typo)
    with pytest.raises(ArtifactError, match="has no config.json"):
        local_folder(tmp_path, must_hold="config.json")
