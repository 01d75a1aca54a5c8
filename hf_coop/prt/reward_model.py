"""A PRT reward model as an artefact: the network plus its `PRTConfig`, saved, reloaded, checked, pushed."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from ..artefacts import (
    atomic_save,
    local_folder,
    looks_local,
    push_folder_to_hub,
    reading_weights,
    render_model_card,
    verify_folder,
)
from ..config_utils import ArtifactError, labels_fingerprint, vocab_fingerprint
from .config import PRTConfig, RewardScaleAlias

MODEL_CARD_TEMPLATE = "prt_reward_model.md"
ADAPTER_CONFIG = "adapter_config.json"


def auto_model_class(task_type: str, path: str | os.PathLike | None = None):
    """The class that loads a model of this PRT task type: the architecture named in `path`'s config.json
    when there is one (so image classifiers load too), else the causal-LM / sequence-classification Auto
    class."""
    if path is not None and os.path.isfile(os.path.join(path, "config.json")):
        import transformers

        architectures = json.loads(Path(path, "config.json").read_text(encoding="utf-8")).get("architectures")
        model_class = getattr(transformers, (architectures or [""])[0], None)
        if model_class is not None:
            return model_class
    return AutoModelForCausalLM if task_type == "causal_lm" else AutoModelForSequenceClassification


def _usage_snippet(config: PRTConfig) -> str:
    if config.task_type == "causal_lm":
        return (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "from hf_coop.prt import PRTModel, PRTRewardModel\n\n"
            'tokenizer = AutoTokenizer.from_pretrained("NEW_BASE")\n'
            'new_base = AutoModelForCausalLM.from_pretrained("NEW_BASE")\n'
            'reward = PRTRewardModel.from_pretrained("THIS_REPO", tokenizer=tokenizer)\n'
            "model = PRTModel(new_base, reward)\n"
            'inputs = tokenizer(["Question: ..."], return_tensors="pt")\n'
            "print(tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=64)))"
        )
    return (
        "from transformers import AutoModelForImageClassification\n"
        "from hf_coop.prt import PRTModelForClassification, PRTRewardModel\n\n"
        'new_base = AutoModelForImageClassification.from_pretrained("NEW_BASE")\n'
        'reward = PRTRewardModel.from_pretrained("THIS_REPO")\n'
        "model = PRTModelForClassification(new_base, reward)\n"
        "predictions = model(pixel_values=batch).logits.argmax(-1)"
    )


def render_reward_card(config: PRTConfig, training_summary: dict[str, Any] | None = None) -> str:
    """The model card (README.md) of a reward model, rendered from `model_cards/prt_reward_model.md`."""
    causal = config.task_type == "causal_lm"
    base = config.base_model_name_or_path
    rows = "".join(f"| {key} | {value} |\n" for key, value in (training_summary or {}).items())
    return render_model_card(
        MODEL_CARD_TEMPLATE,
        base_model_yaml=f"base_model: {base}" if base else "",
        base_model=base or "(unnamed)",
        task_type=config.task_type,
        output_space="vocabulary" if causal else "label set (labels are matched by name)",
        output_space_detail=(
            f"{config.vocab_size} tokens" if causal else ", ".join(config.label_names or [])
        ),
        reward_scale=config.reward_scale,
        entropy_weight=config.entropy_weight,
        fingerprint=(config.vocab_fingerprint if causal else config.labels_fingerprint) or "(none recorded)",
        training_rows=rows.rstrip("\n"),
        usage=_usage_snippet(config),
    )


def write_reward_metadata(
    save_directory: str | os.PathLike, config: PRTConfig, training_summary: dict[str, Any] | None = None
) -> None:
    """Write `prt_config.json` and the model card next to saved reward weights."""
    config.save_pretrained(save_directory)
    Path(save_directory, "README.md").write_text(
        render_reward_card(config, training_summary), encoding="utf-8"
    )


def check_output_space(
    config: PRTConfig, tokenizer=None, id2label: dict | None = None, who: str = "model"
) -> None:
    """Refuse a tokenizer or label set other than the one the reward was trained over, saying why."""
    if tokenizer is not None:
        if config.task_type != "causal_lm":
            raise ArtifactError(
                "this reward model is a classifier; it has no vocabulary to match a tokenizer"
            )
        if config.vocab_fingerprint is not None and vocab_fingerprint(tokenizer) != config.vocab_fingerprint:
            raise ArtifactError(
                f"the {who}'s tokenizer ({len(tokenizer)} tokens) is not the vocabulary this reward was "
                f"trained over ({config.vocab_size} tokens, fingerprint {config.vocab_fingerprint}): "
                "token ids would mean different strings. Across tokenizers PRT runs over their common vocabulary: "
                "PRTModel(new_base, reward, tokenizer=new_tokenizer) builds it (a logits processor cannot: it "
                "works in the new base's token ids)"
            )
    if id2label is not None:
        if config.task_type != "classification":
            raise ArtifactError("this reward model is a causal LM; it has no label set to match")
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        if config.label_names is not None and sorted(names) != sorted(config.label_names):
            raise ArtifactError(
                f"the {who}'s labels {names} are not the reward's labels {config.label_names}: "
                "PRT needs the same label set"
            )


class PRTRewardModel(
    RewardScaleAlias,
    torch.nn.Module,
    ModelHubMixin,
    library_name="hf_coop",
    tags=["hf_coop", "portable-reward-tuning"],
    paper_url="https://arxiv.org/abs/2502.12776",
):
    """A trained PRT reward `r_θ` with its `PRTConfig`; calling it returns the wrapped model's outputs.

    `save_pretrained` writes the transformers (or peft adapter) files, `prt_config.json` and a model card;
    `from_pretrained` reloads them and checks the tokenizer or labels you give against the saved fingerprint;
    `push_to_hub` is huggingface_hub's `ModelHubMixin` (it keeps the rendered card).
    """

    def __init__(self, model: PreTrainedModel, prt_config: PRTConfig):
        super().__init__()
        self.model = model
        self.prt_config = prt_config
        self.source_folder: str | None = None  # the folder it was loaded from, if any

    def load_base(self, base_model: PreTrainedModel | None = None, tokenizer=None):
        """(old base, its tokenizer): what the reward was trained through, for applying it across tokenizers.

        The tokenizer is `tokenizer`, else the one saved beside the reward, else the recorded base's; it must be
        the vocabulary the reward was trained over (fingerprint). The base is `base_model`, else None for a
        peft adapter (its adapter-free path is the base), else loaded from the recorded id."""
        config = self.prt_config
        if config.task_type != "causal_lm" or config.vocab_fingerprint is None:
            raise ArtifactError(
                "this reward records no vocabulary fingerprint, so the tokenizer it was trained over cannot be "
                "checked; train it with PRTTrainer(..., processing_class=tokenizer) or set "
                "prt_config.vocab_fingerprint = vocab_fingerprint(tokenizer)"
            )
        if tokenizer is None:
            tokenizer = self._find_base_tokenizer()
        found = vocab_fingerprint(tokenizer)
        if found != config.vocab_fingerprint:
            raise ArtifactError(
                f"the reward's base tokenizer has fingerprint {found} ({len(tokenizer)} tokens, "
                f"{getattr(tokenizer, 'name_or_path', '') or 'unnamed'}), but the reward was trained over "
                f"{config.vocab_fingerprint} ({config.vocab_size} tokens, base "
                f"{config.base_model_name_or_path}): pass the tokenizer of the base it was trained through"
            )
        if base_model is None and not hasattr(self.model, "peft_config"):
            base_model = self._load_recorded_base()
        return base_model, tokenizer

    def _find_base_tokenizer(self):
        from transformers import AutoTokenizer

        from ..models import resolve_model_path

        config = self.prt_config
        tried = []
        # the reward's own folder (an adapter folder holds no config.json), then the recorded base's
        for where, locate in (
            (self.source_folder, str),
            (config.base_model_name_or_path, resolve_model_path),
        ):
            if where is None:
                continue
            try:
                return AutoTokenizer.from_pretrained(locate(where))
            except Exception as error:  # noqa: BLE001 - every reason is reported below
                tried.append(f"{where}: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        raise ArtifactError(
            f"the tokenizer this reward was trained over (fingerprint {config.vocab_fingerprint}, "
            f"{config.vocab_size} tokens) cannot be found ({'; '.join(tried) or 'no base recorded'}); pass it: "
            "reward_tokenizer=AutoTokenizer.from_pretrained(<the reward's base>)"
        )

    def _load_recorded_base(self) -> PreTrainedModel:
        from ..models import resolve_model_path

        name = self.prt_config.base_model_name_or_path
        if name is None:
            raise ArtifactError(
                "this reward records no base model, which π_old needs across tokenizers; pass reward_base=..."
            )
        path = resolve_model_path(name)
        with reading_weights(path):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype)
        return model.to(self.model.device).eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    @property
    def reward_scale(self) -> float:
        return self.prt_config.reward_scale

    def check_compatible(self, tokenizer=None, id2label: dict | None = None, who: str = "model") -> None:
        """Raise `ArtifactError` unless `tokenizer` / `id2label` is the reward's own output space."""
        check_output_space(self.prt_config, tokenizer=tokenizer, id2label=id2label, who=who)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the reward (weights or adapter), `prt_config.json` and the card atomically, with a manifest;
        `push_to_hub=True, repo_id=...` uploads the same folder afterwards (huggingface_hub's arguments)."""
        push, repo_id = kwargs.pop("push_to_hub", False), kwargs.pop("repo_id", None)
        kwargs.pop("config", None)
        kwargs.pop("model_card_kwargs", None)
        with atomic_save(save_directory, type(self).__name__) as staging:
            self._save_pretrained(staging)
        if push:
            return self.push_to_hub(repo_id or Path(save_directory).name, **kwargs)
        return None

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload the saved folder (weights or adapter, config, card, manifest) as one commit, the same path every
        hf_coop artefact takes (`push_folder_to_hub` arguments: commit_message, private, token, revision,
        create_pr)."""
        return push_folder_to_hub(self.save_pretrained, repo_id, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        self.model.save_pretrained(save_directory)
        write_reward_metadata(save_directory, self.prt_config)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> PRTRewardModel:
        """Reload a reward from a folder or a Hub repo id (see `_from_pretrained` for the keyword arguments);
        a mistyped local path is answered "no such folder", not with a Hub repo-id error."""
        if looks_local(pretrained_model_name_or_path) and not os.path.isdir(pretrained_model_name_or_path):
            local_folder(pretrained_model_name_or_path)  # raises "no such folder"
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        base_model: PreTrainedModel | None = None,
        tokenizer=None,
        id2label: dict | None = None,
        **model_kwargs: Any,
    ) -> PRTRewardModel:
        """Reload a reward; `tokenizer` / `id2label` (the new base's) are checked against its fingerprint.

        A peft adapter folder needs the base it was trained on: `base_model`, else the recorded base id.
        """
        path = local_folder(
            model_id,
            revision,
            must_hold=PRTConfig.config_name,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
        verify_folder(path, cls.__name__)
        config = PRTConfig.from_pretrained(path)
        if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
            from peft import PeftModel

            if base_model is None:
                if config.base_model_name_or_path is None:
                    raise ArtifactError(
                        f"{path} holds a LoRA adapter but no base model id: pass base_model=..."
                    )
                from ..models import resolve_model_path  # demo model names map to converted folders

                base_path = resolve_model_path(config.base_model_name_or_path)
                with reading_weights(base_path):
                    base_model = auto_model_class(config.task_type, base_path).from_pretrained(
                        base_path, **model_kwargs
                    )
            with reading_weights(path):
                model = PeftModel.from_pretrained(base_model, path)
        else:
            with reading_weights(path):
                model = auto_model_class(config.task_type, path).from_pretrained(path, **model_kwargs)
        model.eval()
        _check_saved_consistency(config, model, path)
        reward = cls(model, config)
        reward.source_folder = path
        reward.check_compatible(tokenizer=tokenizer, id2label=id2label, who="given")
        return reward


def _check_saved_consistency(config: PRTConfig, model: PreTrainedModel, path: str) -> None:
    """Refuse a folder whose weights do not match its own `prt_config.json` (e.g. files mixed by hand)."""
    if config.task_type == "classification":
        saved = labels_fingerprint(model.config.id2label)
        if config.labels_fingerprint is not None and saved != config.labels_fingerprint:
            raise ArtifactError(
                f"{path}: the model's labels {model.config.id2label} do not match prt_config.json "
                f"(fingerprint {saved} != {config.labels_fingerprint}); the folder mixes two artefacts"
            )
    elif config.vocab_size is not None:
        head = model.get_output_embeddings().weight.shape[0]
        if head < config.vocab_size:
            raise ArtifactError(
                f"{path}: the model's head has {head} rows but prt_config.json says the vocabulary has "
                f"{config.vocab_size} tokens; the folder mixes two artefacts"
            )
    if os.path.isfile(os.path.join(path, "tokenizer.json")) and config.vocab_fingerprint is not None:
        from transformers import AutoTokenizer

        check_output_space(
            config, tokenizer=AutoTokenizer.from_pretrained(path), who=f"tokenizer saved in {path}"
        )


def reward_config_from_models(config: PRTConfig, base_model: PreTrainedModel, tokenizer=None) -> PRTConfig:
    """Fill the fields `PRTConfig` can learn from the source base and its tokenizer (unset ones only)."""
    updates: dict[str, Any] = {}
    if config.base_model_name_or_path is None:
        updates["base_model_name_or_path"] = getattr(base_model.config, "_name_or_path", None) or None
    if config.task_type == "causal_lm":
        if config.vocab_size is None:
            updates["vocab_size"] = len(tokenizer) if tokenizer is not None else base_model.config.vocab_size
        if config.vocab_fingerprint is None and tokenizer is not None:
            updates["vocab_fingerprint"] = vocab_fingerprint(tokenizer)
    else:
        if config.id2label is None:
            updates["id2label"] = {str(k): v for k, v in base_model.config.id2label.items()}
        if config.labels_fingerprint is None:
            updates["labels_fingerprint"] = labels_fingerprint(base_model.config.id2label)
    return dataclasses.replace(config, **updates)
