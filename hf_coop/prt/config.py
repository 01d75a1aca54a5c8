"""Configuration of Portable Reward Tuning: what a reward needs to be reused, and the trainer's knobs."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, ClassVar

from transformers import TrainingArguments

from ..config_utils import CoopConfig
from ..errors import ConfigError, check_int, check_real

TASK_TYPES: tuple[str, ...] = ("causal_lm", "classification")


def resolve_reward_scale(reward_scale: float | None, temperature: float | None, who: str) -> float | None:
    """`reward_scale`, or the deprecated `temperature` it replaced (with a warning)."""
    if temperature is not None:
        warnings.warn(
            f"{who}(temperature=...) is deprecated: PRT's λ is now called `reward_scale`",
            FutureWarning,
            stacklevel=3,
        )
        return temperature if reward_scale is None else reward_scale
    return reward_scale


class RewardScaleAlias:
    """The deprecated read-only name `temperature` for `reward_scale`."""

    @property
    def temperature(self) -> float:
        warnings.warn(
            "`temperature` is deprecated: PRT's λ is now `reward_scale`", FutureWarning, stacklevel=2
        )
        return self.reward_scale


@dataclasses.dataclass
class PRTConfig(RewardScaleAlias, CoopConfig):
    """Saved next to a PRT reward model (`prt_config.json`); names the output space the reward speaks.

    At inference the reward is added to any new base's log-probabilities,
    `p = softmax(log_softmax(f_new(x)) + r(x) / λ)` (the inference rule of arXiv 2502.12776), so it only
    makes sense over the same vocabulary (causal LMs) or the same label set (classifiers, matched by
    name); the fingerprints let loaders refuse a mismatch instead of producing quietly wrong text.

    Args:
        reward_scale: λ in the paper; the reward is divided by it in training and inference.
        entropy_weight: α of the optional entropy regulariser; training minimises `CE − α·H(softmax(r))`.
        task_type: "causal_lm" (per-token reward over a vocabulary) or "classification" (over labels).
        base_model_name_or_path / base_model_revision: the source base the reward was trained through.
        vocab_size: number of token ids the reward covers (the tokenizer's length; heads may be larger).
        vocab_fingerprint: `config_utils.vocab_fingerprint` of the tokenizer (causal LMs).
        id2label: label names by index (classifiers); checked by name against a new base's labels.
        labels_fingerprint: `config_utils.labels_fingerprint(id2label)` (classifiers).
    """

    config_name: ClassVar[str] = "prt_config.json"
    format_version: ClassVar[int] = 1

    reward_scale: float = 1.0
    entropy_weight: float = 0.0
    task_type: str = "causal_lm"
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    vocab_size: int | None = None
    vocab_fingerprint: str | None = None
    id2label: dict[str, str] | None = None
    labels_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ConfigError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        check_real("reward_scale (λ)", self.reward_scale, low=0.0, open_low=True)
        check_real("entropy_weight (α)", self.entropy_weight, low=0.0)
        check_int("vocab_size", self.vocab_size, minimum=1, optional=True)
        if self.id2label is not None:
            # JSON keys are strings; keep them so, whatever the caller passed
            self.id2label = {str(k): str(v) for k, v in self.id2label.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PRTConfig:
        data = dict(data)
        if "temperature" in data:  # written by hf_coop before λ was renamed
            data.setdefault("reward_scale", data.pop("temperature"))
        return super().from_dict(data)

    @property
    def label_names(self) -> list[str] | None:
        """Label names in index order, or None for causal LMs."""
        if self.id2label is None:
            return None
        return [self.id2label[str(i)] for i in range(len(self.id2label))]


def _accept_temperature(init):
    """Let a dataclass `__init__` take the deprecated `temperature=` for `reward_scale`."""

    @functools.wraps(init)
    def __init__(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> None:
        if temperature is not None:
            kwargs["reward_scale"] = resolve_reward_scale(
                kwargs.get("reward_scale"), temperature, type(self).__name__
            )
        init(self, *args, **kwargs)

    return __init__


PRTConfig.__init__ = _accept_temperature(PRTConfig.__init__)


@dataclasses.dataclass
class PRTModelConfig(CoopConfig):
    """Saved by `PRTModel.save_pretrained` (`prt_model.json`): the new base by id or folder and fingerprint;
    λ and the vocabulary size used at inference; across tokenizers also s, the engine settings, the prompt
    boundary and the MCV's fingerprint. The reward is saved beside it, in `reward/`."""

    config_name: ClassVar[str] = "prt_model.json"
    format_version: ClassVar[int] = 1

    new_base_name_or_path: str | None = None
    new_base_fingerprint: str | None = None
    reward_scale: float = 1.0
    vocab_size: int | None = None
    # set when the reward speaks another tokenizer (the model runs over the MCV of both)
    transfer_scale: float | None = None
    cross_tokenizer_engine: dict[str, Any] | None = None
    prompt_boundary: str | None = None
    mcv_fingerprint: str | None = None


@dataclasses.dataclass
class PRTTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knobs only `PRTTrainer` reads (the method's own ones live in `PRTConfig`).

    Args:
        base_model_init_kwargs: keyword arguments for `from_pretrained` when the base is given as a model id.
        log_loss_components: also log the cross-entropy and the reward entropy separately (`prt_ce`,
            `prt_reward_entropy`), averaged over the logging interval.
    """

    base_model_init_kwargs: dict[str, Any] | None = dataclasses.field(
        default=None, metadata={"help": "kwargs for from_pretrained when the base model is given by id."}
    )
    log_loss_components: bool = dataclasses.field(
        default=True, metadata={"help": "Log cross-entropy and reward entropy separately."}
    )

    def __post_init__(self) -> None:
        # the reward model's forward has no `labels` use here: the trainer pops them; eval must still see them
        if self.label_names is None:
            self.label_names = ["labels"]
        super().__post_init__()
