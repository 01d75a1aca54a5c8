"""hf_coop: make Hugging Face models cooperate."""

__version__ = "0.1.0"

from .prt import (  # noqa: E402
    EFTLogitsProcessor,
    ProxyTuningLogitsProcessor,
    PRTConfig,
    PRTLogitsProcessor,
    PRTModel,
    PRTModelForClassification,
    PRTRewardModel,
    PRTTrainer,
    PRTTrainingArguments,
)
from .slt import (  # noqa: E402
    FrozenSLTCallback,
    FrozenSLTConfig,
    FrozenSLTModel,
    apply_frozen_slt,
    inspect_checkpoint,
)
