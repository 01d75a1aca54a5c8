"""hf_coop: make Hugging Face models cooperate.

Public names load on first use, so `import hf_coop` takes a fraction of a second (torch and transformers are
imported when a name that needs them is first used). Importing `hf_coop.vocab` registers the saved configs
(`hf_coop_reduced_vocab`, `hf_coop_common_vocab_ensemble`) with `AutoConfig` and `AutoModelForCausalLM`; it
happens at `import hf_coop` already when transformers is loaded, and on first use of a public name (the
error classes aside).
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "ArtifactError": "hf_coop.errors",
    "CommonVocabEnsemble": "hf_coop.vocab",
    "CommonVocabLogitsProcessor": "hf_coop.vocab",
    "ConfigError": "hf_coop.errors",
    "CoopError": "hf_coop.errors",
    "CrossTokenizerPRTModel": "hf_coop.prt",
    "EFTLogitsProcessor": "hf_coop.prt",
    "FrozenSLTCallback": "hf_coop.slt",
    "FrozenSLTConfig": "hf_coop.slt",
    "FrozenSLTModel": "hf_coop.slt",
    "InputError": "hf_coop.errors",
    "MCVReport": "hf_coop.vocab",
    "MaxNewBytesCriteria": "hf_coop.vocab",
    "NestedTable": "hf_coop.vocab",
    "NonFiniteLogitsError": "hf_coop.errors",
    "PROMPT_BOUNDARIES": "hf_coop.vocab",
    "PRTConfig": "hf_coop.prt",
    "PRTLogitsProcessor": "hf_coop.prt",
    "PRTModel": "hf_coop.prt",
    "PRTModelConfig": "hf_coop.prt",
    "PRTModelForClassification": "hf_coop.prt",
    "PRTRewardModel": "hf_coop.prt",
    "PRTTrainer": "hf_coop.prt",
    "PRTTrainingArguments": "hf_coop.prt",
    "PrefixScore": "hf_coop.vocab",
    "ProxyTuningLogitsProcessor": "hf_coop.prt",
    "ReducedVocabLM": "hf_coop.vocab",
    "SubVocabulary": "hf_coop.vocab",
    "TextScore": "hf_coop.scoring",
    "TokenBytes": "hf_coop.vocab",
    "apply_frozen_slt": "hf_coop.slt",
    "canonical_logprob": "hf_coop.scoring",
    "canonical_sub_sequence_logprob": "hf_coop.vocab",
    "ensemble_logprob": "hf_coop.vocab",
    "inspect_checkpoint": "hf_coop.slt",
    "load_model": "hf_coop.models",
    "load_tokenizer": "hf_coop.models",
    "maximal_common_vocabulary": "hf_coop.vocab",
    "prefix_logprob": "hf_coop.vocab",
    "token_bytes": "hf_coop.vocab",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_coop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    if module != "hf_coop.errors":  # the error classes stay light
        register_auto_classes()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM.from_pretrained(folder)` and `pipeline` know hf_coop's saved
    reduced models and ensembles (idempotent)."""
    importlib.import_module("hf_coop.vocab")


if "transformers" in sys.modules:
    register_auto_classes()
