"""Portable Reward Tuning (arXiv 2502.12776): fine-tune once as a reward model through a frozen base, then
add that reward to any newer base with the same vocabulary or label set at inference."""

from .config import PRTConfig, PRTModelConfig, PRTTrainingArguments
from .core import eft_log_probs, proxy_tuning_log_probs, prt_log_probs
from .modeling import PRTCache, PRTModel, PRTModelForClassification
from .processors import (
    EFTLogitsProcessor,
    FollowerLM,
    FollowerLogitsProcessor,
    ProxyTuningLogitsProcessor,
    PRTLogitsProcessor,
)
from .reward_model import PRTRewardModel
from .trainer import PRTTrainer

__all__ = [
    "EFTLogitsProcessor",
    "FollowerLM",
    "FollowerLogitsProcessor",
    "PRTCache",
    "PRTConfig",
    "PRTModelConfig",
    "PRTLogitsProcessor",
    "PRTModel",
    "PRTModelForClassification",
    "PRTRewardModel",
    "PRTTrainer",
    "PRTTrainingArguments",
    "ProxyTuningLogitsProcessor",
    "eft_log_probs",
    "prt_log_probs",
    "proxy_tuning_log_probs",
]
