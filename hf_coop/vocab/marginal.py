"""The exact prefix probability of a text under a causal LM, summed over all of its tokenizations.

`P(the model's byte stream starts with text | start token)`: every token sequence whose bytes begin with the
text counts, non-canonical splits and byte-fallback twins included, and the last token may run past the
text's end. By the lossless-reduction theorem this is the same number for the original model and for every
reduced model; it is computed with the relative-cover recursion over the byte sub-vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_coop.scoring import TextScore, check_text, start_token_id
from hf_coop.vocab.relative_cover import CoverSettings, CoverState, ModelRunner, logaddexp
from hf_coop.vocab.sub_vocabulary import NestedTable, SubVocabulary


@dataclasses.dataclass
class PrefixScore(TextScore):
    """`nats` is the kept (lower-bound) log-probability; the exact one lies below `upper_nats`."""

    truncated_mass: float = 0.0  # probability mass dropped by pruning (0 in exact mode)
    upper_nats: float = 0.0
    forward_calls: int = 0  # batched model calls
    histories_evaluated: int = 0


def prefix_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    nested: NestedTable | None = None,
    progress: bool = False,
) -> PrefixScore:
    """log P(byte stream starts with `text`), exact unless `max_hypotheses` / `prune_ratio` prune.

    Pruned hypotheses are counted in `truncated_mass`, so the exact value lies in [nats, upper_nats].
    """
    data = check_text(text)
    nested = nested or SubVocabulary.bytes_only().nested_table(tokenizer)
    if nested.sub_name != "bytes":
        raise ValueError(
            "prefix_logprob steps byte by byte: pass a nested table of SubVocabulary.bytes_only()"
        )
    runner = ModelRunner(model, nested)
    state = CoverState(runner, [start_token_id(tokenizer)], CoverSettings(None, max_hypotheses, prune_ratio))
    for i in tqdm(range(len(data)), desc="marginal", unit="B", disable=not progress):
        state.advance(data[i], evaluate=i + 1 < len(data))
    kept = state.kept_logmass
    return PrefixScore(
        nats=kept,
        n_bytes=len(data),
        n_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        truncated_mass=math.exp(state.truncated_logmass),
        upper_nats=logaddexp(kept, state.truncated_logmass),
        forward_calls=runner.forward_calls,
        histories_evaluated=runner.evaluated,
    )
