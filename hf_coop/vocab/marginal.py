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
    back_ups: int = 0  # times pruning had dropped every hypothesis that spells the text (see CoverState)


def sub_sequence_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    nested: NestedTable,
    sub_ids: list[int],
    n_bytes: int,
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    progress: bool = False,
) -> PrefixScore:
    """log Π(sub_ids): the probability that the reduced model's sub-token stream starts with `sub_ids`,
    given the start token. Each boundary history's full next-token distribution is kept; only the set of
    hypotheses carried forward is pruned, and what pruning drops is counted in `truncated_mass`."""
    runner = ModelRunner(model, nested)
    state = CoverState(runner, [start_token_id(tokenizer)], CoverSettings(None, max_hypotheses, prune_ratio))
    for i in tqdm(
        range(len(sub_ids)), desc=f"scoring over {nested.sub_name}", unit="step", disable=not progress
    ):
        state.advance(sub_ids[i], evaluate=i + 1 < len(sub_ids))
    kept = state.kept_logmass
    return PrefixScore(
        nats=kept,
        n_bytes=n_bytes,
        n_tokens=len(sub_ids),
        truncated_mass=math.exp(state.truncated_logmass),
        upper_nats=logaddexp(kept, state.truncated_logmass),
        forward_calls=runner.forward_calls,
        histories_evaluated=runner.evaluated,
        back_ups=state.back_ups,
    )


def prefix_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    nested: NestedTable | None = None,
    progress: bool = False,
) -> PrefixScore:
    """log P(byte stream starts with `text`): the marginal over all tokenizations, the same for the original
    and every reduced model. Exact unless `max_hypotheses` / `prune_ratio` prune; then the exact value lies
    in [nats, upper_nats]."""
    data = check_text(text)
    nested = nested or SubVocabulary.bytes_only().nested_table(tokenizer)
    if nested.sub_name != "bytes":
        raise ValueError(
            "prefix_logprob steps byte by byte: pass a nested table of SubVocabulary.bytes_only()"
        )
    return sub_sequence_logprob(
        model, tokenizer, nested, list(data), len(data), max_hypotheses, prune_ratio, progress
    )


def canonical_sub_sequence_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    nested: NestedTable,
    max_hypotheses: int | None = None,
    prune_ratio: float = 0.0,
    progress: bool = False,
) -> PrefixScore:
    """The reduced model's log-probability of the text's canonical sub-token sequence `T(tokenizer(text))`:
    the sub-vocabulary analogue of canonical scoring (it sums every original tokenization whose nested
    split is that sequence, so canonical ≤ this ≤ marginal)."""
    data = check_text(text)
    sub_ids = nested.encode_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sub_sequence_logprob(
        model, tokenizer, nested, sub_ids, len(data), max_hypotheses, prune_ratio, progress
    )
