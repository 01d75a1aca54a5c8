"""Shared machinery for hf_coop artefacts: JSON configs that save and load themselves, fingerprints and
model cards. Every artefact is JSON + safetensors (never pickle), carries a format version, and names the
vocabulary or architecture it belongs to, so a mismatched load is refused instead of silently wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, ClassVar, TypeVar

import torch

from hf_coop.artefacts import local_folder
from hf_coop.errors import ArtifactError

logger = logging.getLogger(__name__)

T = TypeVar("T", bound="CoopConfig")


@dataclasses.dataclass
class CoopConfig:
    """Base for config dataclasses: `save_pretrained`, `from_pretrained`, `to_dict`, format versions.

    Subclasses set `config_name` (the JSON file name) and `format_version`. Unknown keys written by a newer
    hf_coop are ignored with a warning (as peft does); a newer format version is refused.
    """

    config_name: ClassVar[str] = "coop_config.json"
    format_version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format_version"] = self.format_version
        data["config_type"] = type(self).__name__
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, self.config_name), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        data = dict(data)
        version = data.pop("format_version", cls.format_version)
        config_type = data.pop("config_type", cls.__name__)
        if config_type != cls.__name__:
            raise ArtifactError(f"this file holds a {config_type}, not a {cls.__name__}")
        if not isinstance(version, int) or version > cls.format_version:
            raise ArtifactError(
                f"{cls.__name__} format version {version!r} is newer than this hf_coop reads "
                f"({cls.format_version}); upgrade hf_coop: pip install -U hf-coop"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            logger.warning(
                "%s: ignoring unknown keys %s (written by a newer hf_coop?)", cls.__name__, unknown
            )
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_pretrained(cls: type[T], path: str | os.PathLike, **overrides: Any) -> T:
        """Load from a folder (or a hub repo id, through huggingface_hub) holding `config_name`."""
        file = os.path.join(local_folder(path), cls.config_name)
        if not os.path.isfile(file):
            raise ArtifactError(f"{path} has no {cls.config_name}: it was not saved by {cls.__name__}")
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{file} is not valid JSON ({e}); the file is corrupt or truncated") from e
        data.update(overrides)
        return cls.from_dict(data)


def fingerprint(payload: Any) -> str:
    """A short stable sha256 of any JSON-serialisable payload."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def vocab_fingerprint(tokenizer) -> str:
    """Identifies a tokenizer's vocabulary: token strings by id and the special tokens."""
    vocab = tokenizer.get_vocab()
    return fingerprint(
        {"tokens": sorted(vocab.items(), key=lambda kv: kv[1]), "special": tokenizer.all_special_ids}
    )


def model_fingerprint(model) -> str:
    """Tells models apart cheaply: class, parameter count, embedding shape and the first 4096 embedding values
    rounded to bfloat16 (the same checkpoint loaded in another float dtype keeps its fingerprint)."""
    embeddings = model.get_input_embeddings().weight.detach()
    sample = embeddings.flatten()[:4096]
    sample = sample.to(torch.bfloat16).float().cpu() if sample.is_floating_point() else sample.cpu()
    return fingerprint(
        {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "embeddings": list(embeddings.shape),
            "sample": hashlib.sha256(sample.numpy().tobytes()).hexdigest(),
        }
    )


def labels_fingerprint(id2label: dict[int, str]) -> str:
    """Identifies a classifier's label set and order."""
    return fingerprint(sorted((int(k), str(v)) for k, v in id2label.items()))
