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
