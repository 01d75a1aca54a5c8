"""`PRTTrainer`: fine-tune a reward model through a frozen base with the ordinary fine-tuning loss."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from ..artefacts import write_manifest
from ..errors import ConfigError, InputError, check_finite
from .config import PRTConfig, PRTTrainingArguments
from .core import prt_log_probs, reward_entropy
from .reward_model import auto_model_class, reward_config_from_models, write_reward_metadata

logger = logging.getLogger(__name__)


class PRTTrainer(Trainer):
    """Trains a PRT reward `r_θ` so that `softmax(log_softmax(f_base(x)) + r_θ(x)/λ)` fits the data.

    Loss (arXiv 2502.12776): `CE(log_softmax(f_base(x)) + r_θ(x)/λ, y) − α·H(softmax(r_θ(x)))`, per shifted
    position over the tokenizer's length for causal LMs (labels −100 are ignored), over the labels for
    classifiers. The base is put in eval mode with `requires_grad=False` (in place), is placed on the device
    by accelerate and is never handed to the optimizer. The loss is a sum over label tokens divided by `num_items_in_batch`, so
    gradient accumulation equals one large batch, also across processes.

    Args:
        base_model: the frozen source base `π_pt` (instance or model id).
        model: the reward model; by default a copy of the base (same architecture and initial weights).
        args: `PRTTrainingArguments` (or plain `TrainingArguments`).
        prt_config: λ, α, task type; fingerprints and the base id are filled in from the base and tokenizer.
        peft_config: wrap the reward in a peft adapter (e.g. `LoraConfig`) so only the adapter trains.
        Other arguments are `Trainer`'s.
    """

    def __init__(
        self,
        base_model: PreTrainedModel | str,
        model: PreTrainedModel | nn.Module | str | None = None,
        args: PRTTrainingArguments | None = None,
        prt_config: PRTConfig | None = None,
        peft_config: Any | None = None,
        processing_class: Any | None = None,
        **trainer_kwargs: Any,
    ):
        if args is None:
            name = base_model if isinstance(base_model, str) else "reward"
            args = PRTTrainingArguments(output_dir=f"{str(name).split('/')[-1]}-prt")
        init_kwargs = getattr(args, "base_model_init_kwargs", None) or {}
        if isinstance(base_model, str):
            task_type = prt_config.task_type if prt_config is not None else "causal_lm"
            base_model = auto_model_class(task_type).from_pretrained(base_model, **init_kwargs)
        base_task = "causal_lm" if base_model.can_generate() else "classification"
        if prt_config is None:
            prt_config = PRTConfig(task_type=base_task)
        elif prt_config.task_type != base_task:
            raise ConfigError(
                f"prt_config.task_type is {prt_config.task_type!r} but the base {type(base_model).__name__} is a "
                f"{'causal LM' if base_task == 'causal_lm' else 'classifier'}: pass "
                f"PRTConfig(task_type={base_task!r}, ...) (or leave prt_config out to have it inferred)"
            )
        if model is None:
            model = copy.deepcopy(base_model).requires_grad_(True)  # the base may already be frozen
        elif isinstance(model, str):
            model = auto_model_class(prt_config.task_type).from_pretrained(model, **init_kwargs)
        if model is base_model:
            raise ConfigError(
                "the reward model must be a separate copy of the base (pass model=None to copy it)"
            )
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)

        self.prt_config = reward_config_from_models(prt_config, base_model, processing_class)
        self.is_causal_lm = self.prt_config.task_type == "causal_lm"
        _check_reward_matches_base(self.prt_config, base_model, model)
        base_model.eval().requires_grad_(False)

        super().__init__(model=model, args=args, processing_class=processing_class, **trainer_kwargs)
        # The loss below is a token sum over num_items_in_batch: ask Trainer to count items and not to divide
        # again by the accumulation steps. Trainer counts a causal LM's shifted labels by itself (from the
        # reward model's `loss_type`, "ForCausalLM" for every transformers *ForCausalLM class).
        self.model_accepts_loss_kwargs = True
        self.base_model = self.accelerator.prepare_model(base_model, evaluation_mode=True)
        self._component_sums: dict[str, float] = {}
        self._component_count = 0
        self._warned_unlabelled = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = dict(inputs)
        if "labels" not in inputs:
            raise InputError(
                "PRTTrainer needs `labels` in every batch (for causal LMs: the input ids, -100 where no loss "
                "is wanted, e.g. via DataCollatorForLanguageModeling(tokenizer, mlm=False))"
            )
        labels = inputs.pop("labels")
        if self.is_causal_lm and "input_ids" in inputs and labels.shape != inputs["input_ids"].shape:
            raise InputError(
                f"labels have shape {tuple(labels.shape)} but input_ids {tuple(inputs['input_ids'].shape)}: PRT "
                "follows transformers' convention, labels aligned with input_ids (the shift happens inside), "
                "so pass the unshifted ids (-100 where no loss is wanted)"
            )
        reward_logits = model(**inputs).logits
        with torch.no_grad():
            base_logits = self.base_model(**inputs).logits
        config = self.prt_config
        vocab_size = config.vocab_size if self.is_causal_lm else None
        log_probs = prt_log_probs(base_logits, reward_logits, config.reward_scale, vocab_size)
        if self.is_causal_lm:
            scored, targets, reward_scored = log_probs[:, :-1], labels[:, 1:], reward_logits[:, :-1]
        else:
            scored, targets, reward_scored = log_probs, labels, reward_logits
        mask = targets != -100
        if bool((targets[mask] >= scored.shape[-1]).any()):
            raise InputError(
                f"a label id is >= {scored.shape[-1]}, the size of the output space the reward trains over"
            )
        if not bool(mask.any()):
            # nothing to train on in this micro-batch (every label -100): a zero loss that still reaches every
            # trainable parameter, so accumulation and DDP's gradient all-reduce go on as usual
            if not self._warned_unlabelled:
                logger.warning("a batch has no labelled tokens (every label is -100); it contributes no loss")
                self._warned_unlabelled = True
            loss = reward_logits.sum() * 0.0
            return (loss, {"logits": log_probs}) if return_outputs else loss
        token_nll = -scored.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        denominator = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        ce = (token_nll * mask).sum() / denominator
        loss = ce
        entropy = None
        if config.entropy_weight > 0:
            entropy = (reward_entropy(reward_scored, vocab_size) * mask).sum() / denominator
            loss = loss - config.entropy_weight * entropy
        if not bool(torch.isfinite(loss)):
            check_finite(base_logits, "the frozen base model")
            check_finite(reward_logits, "the reward model")
            raise ConfigError(
                f"PRT loss is {loss.item()} with finite logits; lower the learning rate or raise λ"
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens and DDP averages gradients over processes
            loss = loss * self.accelerator.num_processes
        if model.training and getattr(self.args, "log_loss_components", False):
            self._record_components(ce, entropy, num_items_in_batch, mask)
        if return_outputs:
            return loss, {"logits": log_probs}
        return loss

    def _record_components(self, ce, entropy, num_items_in_batch, mask) -> None:
        # per micro-batch means, so a logged value does not depend on how the batch was accumulated
        scale = float(num_items_in_batch) / max(int(mask.sum()), 1) if num_items_in_batch is not None else 1.0
        values = {"prt_ce": float(ce.detach()) * scale}
        if entropy is not None:
            values["prt_reward_entropy"] = float(entropy.detach()) * scale
        for key, value in values.items():
            self._component_sums[key] = self._component_sums.get(key, 0.0) + value
        self._component_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._component_count and "loss" in logs:
            logs.update({k: round(v / self._component_count, 6) for k, v in self._component_sums.items()})
            self._component_sums, self._component_count = {}, 0
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the reward (weights or adapter), the tokenizer, `prt_config.json`, the model card and a manifest
        of their checksums (Trainer writes the files in place, under DDP/FSDP from the main process, so this
        save is checksummed but not atomic; `PRTRewardModel.save_pretrained` is both)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            folder = output_dir or self.args.output_dir
            write_reward_metadata(folder, self.prt_config, self._training_summary())
            write_manifest(folder, "PRTRewardModel", top_level_only=True)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The PRT card instead of Trainer's generic one (used by `push_to_hub`)."""
        if self.is_world_process_zero():
            write_reward_metadata(self.args.output_dir, self.prt_config, self._training_summary())

    def _training_summary(self) -> dict[str, Any]:
        return {
            "training steps": self.state.global_step,
            "epochs": round(self.state.epoch or 0.0, 3),
            "learning rate": self.args.learning_rate,
            "adapter": "peft"
            if hasattr(self.accelerator.unwrap_model(self.model), "peft_config")
            else "none",
        }


def _check_reward_matches_base(config: PRTConfig, base_model: nn.Module, reward_model: nn.Module) -> None:
    """The reward must speak the base's output space: the same labels, or a head covering the vocabulary."""
    if config.task_type == "classification":
        base_labels = list(base_model.config.id2label.values())
        reward_labels = list(reward_model.config.id2label.values())
        if base_labels != reward_labels:
            raise ConfigError(
                f"the reward model's labels {reward_labels} differ from the base's {base_labels} (names and "
                "order must match: the reward is added to the base's log-probabilities label by label)"
            )
        return
    for who, member in (("base", base_model), ("reward", reward_model)):
        head = member.get_output_embeddings().weight.shape[0]
        if head < config.vocab_size:
            raise ConfigError(
                f"the {who} model's head has {head} rows but the tokenizer has {config.vocab_size} tokens; "
                "PRT needs both models to cover the same vocabulary"
            )


__all__ = ["PRTTrainer"]
