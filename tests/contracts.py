"""Contract tests every artefact type applies (in the style of peft's `testing_common`): a test class derives
from `ArtefactContract` and says how to build, reload and run its artefact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import hf_coop.artefacts as artefacts
from hf_coop.artefacts import MANIFEST_FILE
from hf_coop.errors import ArtifactError


def saved_model_folder(model, tokenizer, folder: Path):
    """Save `model` and `tokenizer` and reload both, so the model records a path an artefact can refer to."""
    from hf_coop.models import load_model

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reloaded, reloaded_tokenizer = load_model(str(folder), dtype=model.dtype)
    return reloaded, reloaded_tokenizer


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


class ArtefactContract:
    """Save, load, equal outputs; a corrupt file refused, naming it; an interrupted save leaving the previous
    artefact intact; other files in the folder kept; push_to_hub uploading the same folder; and, where the type
    is registered, `AutoModelForCausalLM.from_pretrained`."""

    artefact: str  # the class name recorded in the manifest
    auto_loadable = False

    def build(self, tmp_path: Path, variant: int = 0):
        raise NotImplementedError

    def load(self, folder: Path):
        raise NotImplementedError

    def outputs(self, artefact) -> torch.Tensor:
        raise NotImplementedError

    def save(self, artefact, folder: Path) -> None:
        artefact.save_pretrained(folder)

    def test_save_load_gives_equal_outputs_and_a_manifest(self, tmp_path):
        artefact = self.build(tmp_path)
        self.save(artefact, tmp_path / "saved")
        assert (tmp_path / "saved" / MANIFEST_FILE).is_file()
        assert artefacts.verify_folder(tmp_path / "saved", self.artefact) is not None
        torch.testing.assert_close(
            self.outputs(self.load(tmp_path / "saved")), self.outputs(artefact), rtol=0, atol=0
        )

    def test_a_corrupt_file_is_refused_by_name(self, tmp_path):
        self.save(self.build(tmp_path), tmp_path / "saved")
        largest = max(
            (p for p in (tmp_path / "saved").rglob("*") if p.is_file() and p.name != MANIFEST_FILE),
            key=lambda p: p.stat().st_size,
        )
        data = bytearray(largest.read_bytes())
        data[-1] ^= 0xFF
        largest.write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=f"{largest.name} does not match its checksum"):
            self.load(tmp_path / "saved")

    def test_an_interrupted_save_leaves_the_previous_artefact(self, tmp_path, monkeypatch):
        first = self.build(tmp_path)
        self.save(first, tmp_path / "saved")
        before = _digests(tmp_path / "saved")

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt  # the process is stopped after the files, before the manifest

        monkeypatch.setattr(artefacts, "write_manifest", interrupted)
        with pytest.raises(KeyboardInterrupt):
            self.save(self.build(tmp_path, variant=1), tmp_path / "saved")
        monkeypatch.undo()
        assert _digests(tmp_path / "saved") == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")) == []
        torch.testing.assert_close(
            self.outputs(self.load(tmp_path / "saved")), self.outputs(first), rtol=0, atol=0
        )

    def test_other_files_in_the_folder_are_kept(self, tmp_path):
        (tmp_path / "saved").mkdir()
        (tmp_path / "saved" / "notes.txt").write_text("mine")
        artefact = self.build(tmp_path)
        self.save(artefact, tmp_path / "saved")
        self.save(artefact, tmp_path / "saved")
        assert (tmp_path / "saved" / "notes.txt").read_text() == "mine"

    def test_push_to_hub_uploads_the_saved_folder(self, tmp_path, mock_hub):
        artefact = self.build(tmp_path)
        artefact.push_to_hub("me/artefact")
        self.save(artefact, tmp_path / "saved")
        assert mock_hub["repo_id"] == "me/artefact"
        assert {MANIFEST_FILE, "README.md"} <= set(mock_hub)
        top_level = {p.name for p in (tmp_path / "saved").iterdir() if p.is_file()}
        assert top_level <= set(mock_hub)

    def test_auto_class_loads_it(self, tmp_path):
        if not self.auto_loadable:
            pytest.skip("not registered with AutoModelForCausalLM")
        from transformers import AutoModelForCausalLM

        artefact = self.build(tmp_path)
        self.save(artefact, tmp_path / "saved")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
        assert type(loaded) is type(artefact)
        torch.testing.assert_close(self.outputs(loaded), self.outputs(artefact), rtol=0, atol=0)


class GenerationContract:
    """`generate` as transformers users run it, on every generative artefact type: greedy rows of a batch equal
    each row alone (duplicates, prefixes, mixed lengths), a reused model samples as a fresh one, beam scores equal
    a rescoring of the returned sequences, streamers and stopping criteria see what is generated."""

    PROMPTS = ["It is a truth", "It is", "It is a truth", "The quick brown fox"]
    NEW_TOKENS = 5

    def model(self, tmp_path: Path):
        raise NotImplementedError

    def encode(self, model, prompts: list[str]) -> dict:
        return model.tokenizer(prompts, return_tensors="pt")

    def rescore(self, model, prompt: str, tokens: list[int]) -> float:
        """log p(tokens | prompt) with a fresh state."""
        from hf_coop.testing import rescore_alone

        rows = rescore_alone(model, self.encode(model, [prompt]), tokens)
        return sum(float(rows[i, t]) for i, t in enumerate(tokens[: len(rows)]))

    def _new(self, model, inputs, out):
        return out[:, inputs["input_ids"].shape[1] :]

    def test_greedy_rows_of_a_batch_equal_each_row_alone(self, tmp_path):
        model = self.model(tmp_path)
        inputs = self.encode(model, self.PROMPTS)
        batch = self._new(
            model, inputs, model.generate(**inputs, max_new_tokens=self.NEW_TOKENS, do_sample=False)
        )
        for row, prompt in enumerate(self.PROMPTS):
            alone_inputs = self.encode(model, [prompt])
            alone = self._new(
                model,
                alone_inputs,
                model.generate(**alone_inputs, max_new_tokens=self.NEW_TOKENS, do_sample=False),
            )
            assert batch[row, : alone.shape[1]].tolist() == alone[0].tolist(), prompt

    def test_a_reused_model_samples_as_a_fresh_one(self, tmp_path):
        model = self.model(tmp_path)
        inputs = self.encode(model, self.PROMPTS[:2])
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            runs.append(
                model.generate(
                    **inputs, max_new_tokens=self.NEW_TOKENS, do_sample=True, num_return_sequences=2
                )
            )
        assert runs[0].shape[0] == 4 and torch.equal(runs[0], runs[1])

    def test_beam_scores_equal_a_rescoring_of_the_sequences(self, tmp_path):
        model = self.model(tmp_path)
        prompt = self.PROMPTS[0]
        inputs = self.encode(model, [prompt])
        out = model.generate(
            **inputs,
            max_new_tokens=self.NEW_TOKENS,
            num_beams=3,
            num_return_sequences=2,
            length_penalty=0.0,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = model.generation_config.pad_token_id
        for row, sequence in enumerate(out.sequences):
            tokens = sequence[inputs["input_ids"].shape[1] :].tolist()
            while tokens and tokens[-1] == pad and pad not in eos:
                tokens.pop()
            assert float(out.sequences_scores[row]) == pytest.approx(
                self.rescore(model, prompt, tokens), abs=1e-4
            )

    def test_streamers_and_stopping_criteria_see_the_generated_tokens(self, tmp_path):
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class Collect(BaseStreamer):
            def __init__(self):
                self.chunks = []

            def put(self, value):
                self.chunks.append(value.flatten().tolist())

            def end(self):
                self.ended = True

        class AfterTwo(StoppingCriteria):
            def __init__(self, width):
                self.width = width

            def __call__(self, input_ids, scores, **kwargs):
                return torch.full(
                    (input_ids.shape[0],), input_ids.shape[1] - self.width >= 2, dtype=torch.bool
                )

        model = self.model(tmp_path)
        inputs = self.encode(model, self.PROMPTS[:1])
        streamer = Collect()
        width = inputs["input_ids"].shape[1]
        out = model.generate(
            **inputs,
            max_new_tokens=self.NEW_TOKENS,
            do_sample=False,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([AfterTwo(width)]),
        )
        assert out.shape[1] == width + 2 and streamer.ended
        assert streamer.chunks[0] == inputs["input_ids"][0].tolist()
        assert [t for chunk in streamer.chunks[1:] for t in chunk] == out[0, width:].tolist()
