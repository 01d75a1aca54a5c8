"""Lossless vocabulary reduction (arXiv 2510.08102): causal LMs over smaller vocabularies, same texts."""

from .ensemble import (
    CommonVocabEnsemble,
    CommonVocabEnsembleConfig,
    CommonVocabLogitsProcessor,
    EnsembleScore,
    ensemble_logprob,
    load_ensemble,
)
from .marginal import PrefixScore, canonical_sub_sequence_logprob, prefix_logprob
from .mcv import MCVReport, maximal_common_vocabulary
from .reduced_lm import (
    MaxNewBytesCriteria,
    PromptError,
    ReducedVocabConfig,
    ReducedVocabLM,
    ReducedVocabTokenizer,
)
from .relative_cover import CoverSettings, CoverState
from .sub_vocabulary import NestedTable, SubVocabulary, SubVocabularyError
from .token_bytes import TokenBytes, TokenBytesError, spelled_bytes, token_bytes
