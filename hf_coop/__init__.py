"""hf_coop: make Hugging Face models cooperate."""

__version__ = "0.1.0"

from .slt import (  # noqa: E402
    FrozenSLTConfig,
    FrozenSLTModel,
    apply_frozen_slt,
    inspect_checkpoint,
)
from .prt import (  # noqa: E402
    EFTLogitsProcessor,
    PRTConfig,
    PRTLogitsProcessor,
    PRTModel,
    PRTModelForClassification,
    PRTRewardModel,
    PRTTrainer,
    PRTTrainingArguments,
    ProxyTuningLogitsProcessor,
)
