"""Lossless vocabulary reduction (arXiv 2510.08102): causal LMs over smaller vocabularies, same texts."""

from .engine.settings import EngineSettings
from .ensemble import CommonVocabEnsemble, CommonVocabEnsembleConfig, load_ensemble
from .mcv import MCVReport, maximal_common_vocabulary
from .processor import CommonVocabLogitsProcessor
from .prompt_boundary import PROMPT_BOUNDARIES, PromptSplitter
from .reduced_lm import MaxNewBytesCriteria, ReducedVocabConfig, ReducedVocabLM
from .scoring import (
    EnsembleScore,
    PrefixScore,
    canonical_sub_sequence_logprob,
    ensemble_logprob,
    prefix_logprob,
)
from .sub_vocabulary import NestedTable, SubVocabulary, SubVocabularyError
from .token_bytes import TokenBytes, TokenBytesError, spelled_bytes, token_bytes
from .tokenizers import CommonVocabTokenizer, PromptError, ReducedVocabTokenizer
