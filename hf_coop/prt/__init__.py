"""Portable Reward Tuning (arXiv 2502.12776): fine-tune once as a reward model through a frozen base, then
add that reward to any newer base at inference: over the same vocabulary or label set directly, across
tokenizers over their maximal common vocabulary (`CrossTokenizerPRTModel`)."""

from .config import PRTConfig, PRTModelConfig, PRTTrainingArguments
from .core import eft_log_probs, proxy_tuning_log_probs, prt_log_probs, transfer_log_probs
from .cross_tokenizer import CrossTokenizerPRTModel
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
    "CrossTokenizerPRTModel",
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
    "transfer_log_probs",
]
