"""hf_coop: make Hugging Face models cooperate."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ArtifactError,
    ConfigError,
    CoopError,
    InputError,
    NonFiniteLogitsError,
)
from .models import load_model, load_tokenizer  # noqa: E402
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
from .scoring import TextScore, canonical_logprob  # noqa: E402
from .slt import (  # noqa: E402
    FrozenSLTCallback,
    FrozenSLTConfig,
    FrozenSLTModel,
    apply_frozen_slt,
    inspect_checkpoint,
)
from .vocab import (  # noqa: E402
    PROMPT_BOUNDARIES,
    CommonVocabEnsemble,
    CommonVocabLogitsProcessor,
    MaxNewBytesCriteria,
    MCVReport,
    NestedTable,
    PrefixScore,
    ReducedVocabLM,
    SubVocabulary,
    TokenBytes,
    canonical_sub_sequence_logprob,
    ensemble_logprob,
    maximal_common_vocabulary,
    prefix_logprob,
    token_bytes,
)
